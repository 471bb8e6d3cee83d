//! When and how long to wait before trying a Hub request again.
//!
//! Retryable: dropped or refused connections, stalled bodies (the read timeout, or below the
//! minimum rate, which has a budget of its own: [`MAX_STALL_RETRIES`]), and HTTP 408, 429,
//! 500, 502, 503, 504 (the set `huggingface_hub`'s `http_backoff` uses, hf-protocol.md §6.7).
//! The wait is the server's `Retry-After` (integer seconds) when it sends one, else exponential
//! backoff from the configured base delay with "equal jitter" (half fixed, half random) so
//! that a fleet of kmm processes behind one mirror does not retry in lockstep, capped at
//! [`MAX_BACKOFF`].
//!
//! Edges: pure policy; the sleeping happens in the callers.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Longest computed backoff between two attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Longest `Retry-After` we are willing to sleep; beyond it the caller gives up at once rather
/// than hang a CLI run for an hour.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// A live server saying "not now" (rate limited, overloaded, a gateway without a backend): such
/// answers are retried on a time budget without progress ([`RetryBudget`]), not on a count, since
/// a fleet behind one rate-limited hub sees many of them while every file still gets through.
pub(crate) fn is_overload_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// Default time budget of retries on overload answers without progress.
pub(crate) const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(120);

/// Most retries after attempts dropped by the minimum-rate rule ([`super::min_rate`]), in a
/// row, in one download loop (fewer when `max_retries` is lower).
///
/// A stalled attempt usually brought a few bytes, so the count of failures without progress
/// never stops a trickling hub, and the cap on all attempts would let it run for
/// `4 × (max_retries + 1)` windows (twelve minutes at the defaults). Stalls are counted on
/// their own instead: each costs a whole window, so the count is what bounds the time. Three
/// retries, four stalled windows: with the defaults (30 s, 1 s base delay, backoff doubling
/// per stall) a hub that sends 1 B/s ends the download in `E_NET` after 4 × 30 s plus at most
/// 7 s of backoff and the reconnects, within two and a half minutes; a fifth window would not
/// be.
/// A count rather than a time budget, so that a longer configured window scales the bound
/// with it instead of cutting the retries off.
///
/// "In a row": an attempt that before it stalled brought a whole window's worth of bytes at
/// the minimum rate starts the count over (it is the first stall of a new run), so a long
/// download over a link that stalls now and then is not failed for stalls an hour apart.
/// Such a server is still bounded by the cap on all attempts.
pub(crate) const MAX_STALL_RETRIES: u32 = 3;

/// The retry budget of one request loop (an API request, a single stream, or one chunk): at
/// most `max_retries` failed attempts in a row that brought no bytes, at most
/// [`MAX_STALL_RETRIES`] stalls in a row, and at most four times `max_retries + 1` attempts
/// in all, so a link that drops every few bytes still ends. Overload answers
/// ([`is_overload_status`]) are not counted: they are retried until `overload_budget` has passed
/// without progress (a success or bytes), so a storm of 429s and 503s that lets some requests
/// through never fails a file that is still getting its turn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryBudget {
    max_retries: u32,
    max_attempts: u32,
    max_stall_retries: u32,
    base_delay: Duration,
    attempts: u32,
    failures_without_progress: u32,
    stalls: u32,
    overload_budget: Duration,
    overloads_in_row: u32,
    /// Attempts answered with an overload status: not counted against `max_attempts`.
    overload_attempts: u32,
    last_progress: std::time::Instant,
}

impl RetryBudget {
    pub(crate) fn new(
        max_retries: u32,
        base_delay: Duration,
        overload_budget: Duration,
    ) -> RetryBudget {
        RetryBudget {
            max_retries,
            max_attempts: max_retries.saturating_add(1).saturating_mul(4),
            max_stall_retries: max_retries.min(MAX_STALL_RETRIES),
            base_delay,
            attempts: 0,
            failures_without_progress: 0,
            stalls: 0,
            overload_budget,
            overloads_in_row: 0,
            overload_attempts: 0,
            last_progress: std::time::Instant::now(),
        }
    }

    /// After an attempt the server answered with an overload status: how long to wait, or
    /// `None` once `overload_budget` has passed since the last progress (or the server asks
    /// for a wait longer than [`MAX_RETRY_AFTER`]).
    pub(crate) fn after_overload(
        &mut self,
        progressed: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if progressed {
            self.last_progress = std::time::Instant::now();
            self.overloads_in_row = 0;
        }
        self.overloads_in_row += 1;
        self.overload_attempts += 1;
        if self.last_progress.elapsed() >= self.overload_budget
            || retry_after.is_some_and(|wait| wait > MAX_RETRY_AFTER)
        {
            return None;
        }
        // Never sooner than our own backoff, even for `Retry-After: 0`: on a time budget, a
        // server that keeps saying "now" must not be hammered.
        let backoff = delay_before_retry(self.base_delay, self.overloads_in_row - 1, None);
        Some(retry_after.map_or(backoff, |wait| wait.max(backoff)))
    }

    /// [`Self::after_overload`] for an overload status, else [`Self::after_failure`].
    pub(crate) fn after(
        &mut self,
        failure: &super::errors::Transient,
        progressed: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        match failure {
            super::errors::Transient::Status(status) if is_overload_status(*status) => {
                self.after_overload(progressed, retry_after)
            }
            _ => self.after_failure(progressed, retry_after),
        }
    }

    /// After an attempt dropped by the minimum-rate rule (`progressed`: it brought bytes;
    /// `healthy`: a window's worth of them before it slowed down): how long to wait before the
    /// next attempt, or `None` when the budget (stalls in a row included) is spent.
    pub(crate) fn after_stall(&mut self, progressed: bool, healthy: bool) -> Option<Duration> {
        self.stalls = if healthy { 1 } else { self.stalls + 1 };
        if self.stalls > self.max_stall_retries {
            return None;
        }
        let delay = self.after_failure(progressed, None)?;
        Some(delay.max(delay_before_retry(
            self.base_delay,
            self.stalls.saturating_sub(1),
            None,
        )))
    }

    /// Counts an attempt about to start.
    pub(crate) fn start_attempt(&mut self) {
        self.attempts += 1;
    }

    /// Attempts started so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After a failed attempt (`progressed`: it brought bytes): how long to wait before the
    /// next one, or `None` when the budget is spent (or the server asks for a wait longer than
    /// [`MAX_RETRY_AFTER`]).
    pub(crate) fn after_failure(
        &mut self,
        progressed: bool,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if progressed {
            self.failures_without_progress = 0;
            self.last_progress = std::time::Instant::now();
        } else {
            self.failures_without_progress += 1;
        }
        if self.failures_without_progress > self.max_retries
            || self.attempts - self.overload_attempts.min(self.attempts) >= self.max_attempts
            || retry_after.is_some_and(|wait| wait > MAX_RETRY_AFTER)
        {
            return None;
        }
        Some(delay_before_retry(
            self.base_delay,
            self.failures_without_progress.saturating_sub(1),
            retry_after,
        ))
    }
}

/// `Retry-After` as integer seconds (the only form the Hub sends; HTTP dates are ignored and
/// fall back to backoff).
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    value.parse::<u64>().ok().map(Duration::from_secs)
}

/// Backoff before retry number `retry` (0 for the first retry): `base * 2^retry`, capped, of
/// which the upper half is scaled by `jitter` in `[0, 1)`.
pub(crate) fn backoff_delay(base: Duration, retry: u32, jitter: f64) -> Duration {
    let factor = 1u32 << retry.min(20);
    let full = base.saturating_mul(factor).min(MAX_BACKOFF);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The wait before retry number `retry`: the server's `Retry-After` if any, else backoff.
pub(crate) fn delay_before_retry(
    base: Duration,
    retry: u32,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(wait) => wait.min(MAX_RETRY_AFTER),
        None => backoff_delay(base, retry, random_unit()),
    }
}

/// A random number in `[0, 1)` from the standard library's randomly keyed hasher: jitter needs
/// no cryptographic quality, only that processes differ.
fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(status), "{status}");
        }
        for status in [200, 206, 301, 400, 401, 403, 404, 416, 501] {
            assert!(!is_retryable_status(status), "{status}");
        }
    }

    #[test]
    fn retry_after_is_integer_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "-1".parse().unwrap());
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        // Without jitter: half of the exponential delay; with full jitter: all of it.
        assert_eq!(backoff_delay(base, 0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(base, 0, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(base, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff_delay(base, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(base, 3, 0.5), Duration::from_millis(600));
        assert_eq!(backoff_delay(base, 10, 1.0), MAX_BACKOFF);
        assert_eq!(backoff_delay(base, 10, 0.0), MAX_BACKOFF / 2);
        assert_eq!(
            backoff_delay(Duration::from_secs(1), 1000, 1.0),
            MAX_BACKOFF
        );
    }

    #[test]
    fn random_jitter_stays_in_bounds() {
        let base = Duration::from_millis(400);
        for retry in 0..6 {
            let delay = delay_before_retry(base, retry, None);
            assert!(delay >= backoff_delay(base, retry, 0.0), "{delay:?}");
            assert!(delay <= backoff_delay(base, retry, 1.0), "{delay:?}");
        }
    }

    #[test]
    fn stalls_in_a_row_end_the_loop_even_when_each_brought_bytes() {
        let base = Duration::from_millis(1);
        let mut budget = RetryBudget::new(5, base, DEFAULT_RETRY_BUDGET);
        for _ in 0..MAX_STALL_RETRIES {
            budget.start_attempt();
            assert!(budget.after_stall(true, false).is_some());
        }
        budget.start_attempt();
        assert_eq!(budget.after_stall(true, false), None);
        assert_eq!(budget.attempts(), MAX_STALL_RETRIES + 1);

        // Fewer retries configured: fewer stalls too; none at all with no retries.
        let mut budget = RetryBudget::new(1, base, DEFAULT_RETRY_BUDGET);
        budget.start_attempt();
        assert!(budget.after_stall(true, false).is_some());
        budget.start_attempt();
        assert_eq!(budget.after_stall(true, false), None);
        let mut budget = RetryBudget::new(0, base, DEFAULT_RETRY_BUDGET);
        budget.start_attempt();
        assert_eq!(budget.after_stall(true, false), None);

        // A stall after a healthy stretch starts the count over; other failures leave it.
        let mut budget = RetryBudget::new(5, base, DEFAULT_RETRY_BUDGET);
        for _ in 0..MAX_STALL_RETRIES {
            budget.start_attempt();
            assert!(budget.after_stall(true, false).is_some());
        }
        budget.start_attempt();
        assert!(budget.after_stall(true, true).is_some());
        budget.start_attempt();
        assert!(budget.after_failure(false, None).is_some());
        for _ in 1..MAX_STALL_RETRIES {
            budget.start_attempt();
            assert!(budget.after_stall(true, false).is_some());
        }
        budget.start_attempt();
        assert_eq!(budget.after_stall(true, false), None);
    }

    #[test]
    fn stalls_that_bring_nothing_also_spend_the_plain_budget() {
        let mut budget = RetryBudget::new(1, Duration::from_millis(1), DEFAULT_RETRY_BUDGET);
        budget.start_attempt();
        assert!(budget.after_failure(false, None).is_some());
        budget.start_attempt();
        // The second failure in a row without bytes: over `max_retries` whatever the stalls.
        assert_eq!(budget.after_stall(false, true), None);
    }

    #[test]
    fn retry_after_wins_but_is_bounded() {
        let base = Duration::from_millis(10);
        assert_eq!(
            delay_before_retry(base, 0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            delay_before_retry(base, 0, Some(Duration::from_secs(100_000))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn overload_answers_are_retried_on_a_time_budget_not_a_count() {
        use crate::hub::errors::Transient;
        let mut budget = RetryBudget::new(0, Duration::from_millis(1), Duration::from_millis(50));
        for _ in 0..20 {
            budget.start_attempt();
            assert!(budget.after(&Transient::Status(429), false, None).is_some());
            assert!(budget.after(&Transient::Status(503), false, None).is_some());
        }
        // Other failures keep their count: with no retries, the first one ends the loop.
        assert!(
            budget
                .clone()
                .after(&Transient::Status(500), false, None)
                .is_none()
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(budget.after(&Transient::Status(429), false, None).is_none());
        // Progress starts the budget over.
        assert!(budget.after(&Transient::Status(429), true, None).is_some());
    }
}
