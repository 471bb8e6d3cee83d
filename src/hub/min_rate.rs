//! The minimum-rate rule of file downloads (curl's `--speed-limit`/`--speed-time`): a body
//! that brings fewer than `bytes_per_sec × window` bytes during the last `window` is dropped as
//! stalled, however regularly its bytes trickle in.
//!
//! The read timeout alone cannot catch such a body: it restarts on every byte, so a hub that
//! sends one byte every two seconds would keep kmm busy forever. [`RateWatch`] keeps what one
//! response brought over a sliding window (in [`SLOTS`] slots per window, so its memory is
//! bounded whatever the rate) and says when the window would drop below the minimum if nothing
//! more arrives; [`next_chunk`] reads the body until that moment and then gives up on the
//! response, which drops its connection. The window starts when the response's headers have
//! arrived: a body gets one whole window before it is judged, so a short chunk that ends
//! earlier is never judged at all.
//!
//! Each attempt gets a fresh watch (and, since the stalled response was dropped unread, a fresh
//! connection). How many stalled attempts a download loop may retry is the retry budget's
//! business ([`super::retry::RetryBudget::after_stall`]).
//!
//! Edges: pure bookkeeping plus a timed read of a response body; no I/O of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Slots per window: a slot's bytes count until its last byte is a whole window old, so a
/// body is judged at most `window / SLOTS` late and never early.
const SLOTS: u32 = 16;

/// At least `bytes_per_sec` on average over every `window` of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MinRate {
    pub bytes_per_sec: u64,
    pub window: Duration,
}

impl MinRate {
    /// The rule, or `None` when it is off (a zero rate or a zero window).
    pub(crate) fn new(bytes_per_sec: u64, window: Duration) -> Option<MinRate> {
        (bytes_per_sec > 0 && !window.is_zero()).then_some(MinRate {
            bytes_per_sec,
            window,
        })
    }

    /// The bytes one window must bring.
    pub(crate) fn window_bytes(&self) -> f64 {
        self.bytes_per_sec as f64 * self.window.as_secs_f64()
    }
}

/// Bytes that arrived close together: counted as having arrived at `last`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    first: Instant,
    last: Instant,
    bytes: u64,
}

/// What one response has brought, over its last window.
#[derive(Debug, Clone)]
pub(crate) struct RateWatch {
    rule: MinRate,
    started: Instant,
    slots: VecDeque<Slot>,
    /// Every byte of the response so far.
    total: u64,
}

/// A response dropped for being below the minimum rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Stall {
    /// Bytes in the last window.
    pub bytes: u64,
    pub rule: MinRate,
    /// Before it slowed down, the response brought at least one window's worth of bytes at the
    /// minimum rate: the link had been healthy (see `RetryBudget::after_stall`).
    pub healthy: bool,
}

impl std::fmt::Display for Stall {
    /// `stalled at 1 B/s over the last 30s, below the 1.0 kB/s minimum`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let observed = self.bytes as f64 / self.rule.window.as_secs_f64();
        write!(
            f,
            "stalled at {} over the last {}, below the {} minimum",
            format_rate(observed),
            humantime::format_duration(self.rule.window),
            format_rate(self.rule.bytes_per_sec as f64)
        )
    }
}

impl RateWatch {
    /// A watch over a body whose headers arrived at `now`.
    pub(crate) fn start(rule: MinRate, now: Instant) -> RateWatch {
        RateWatch {
            rule,
            started: now,
            slots: VecDeque::with_capacity(SLOTS as usize + 2),
            total: 0,
        }
    }

    fn slot_length(&self) -> Duration {
        self.rule.window / SLOTS
    }

    /// `bytes` arrived at `now`.
    pub(crate) fn record(&mut self, bytes: u64, now: Instant) {
        self.total += bytes;
        let slot_length = self.slot_length();
        match self.slots.back_mut() {
            Some(slot) if now.saturating_duration_since(slot.first) < slot_length => {
                slot.last = slot.last.max(now);
                slot.bytes += bytes;
            }
            _ => self.slots.push_back(Slot {
                first: now,
                last: now,
                bytes,
            }),
        }
        // Slots a whole window old never count again.
        while self
            .slots
            .front()
            .is_some_and(|slot| now.saturating_duration_since(slot.last) >= self.rule.window)
        {
            self.slots.pop_front();
        }
    }

    /// Bytes counted in the window that ends at `now`.
    pub(crate) fn bytes_in_window(&self, now: Instant) -> u64 {
        self.slots
            .iter()
            .filter(|slot| now.saturating_duration_since(slot.last) < self.rule.window)
            .map(|slot| slot.bytes)
            .sum()
    }

    /// The stall, if the body has run a whole window and the last one brought too little.
    pub(crate) fn check(&self, now: Instant) -> Option<Stall> {
        if now.saturating_duration_since(self.started) < self.rule.window {
            return None;
        }
        let bytes = self.bytes_in_window(now);
        ((bytes as f64) < self.rule.window_bytes()).then_some(Stall {
            bytes,
            rule: self.rule,
            healthy: self.total as f64 >= self.rule.window_bytes(),
        })
    }

    /// The first moment [`Self::check`] reports a stall if no more bytes arrive: once the first
    /// window is over, each time a slot ages out of the window.
    pub(crate) fn deadline(&self) -> Instant {
        let first = self.started + self.rule.window;
        let candidates = std::iter::once(first).chain(
            self.slots
                .iter()
                .map(|slot| slot.last + self.rule.window)
                .filter(|&at| at > first),
        );
        let mut last = first;
        for at in candidates {
            if self.check(at).is_some() {
                return at;
            }
            last = at;
        }
        // Not reached: once every slot has aged out the window holds no bytes, which is a
        // stall. A deadline one window later keeps the function total all the same.
        last + self.rule.window
    }
}

/// What one timed read of a body brought (`B`: the body's bytes type).
pub(crate) enum Read<B> {
    Bytes(B),
    End,
    Failed(reqwest::Error),
    Stalled(Stall),
}

/// The next piece of `response`'s body, unless `watch` (if the rule is on) says the body has
/// stalled before it arrives. The bytes are recorded in `watch`.
pub(crate) async fn next_chunk(
    response: &mut reqwest::Response,
    watch: Option<&mut RateWatch>,
) -> Read<impl std::ops::Deref<Target = [u8]>> {
    let Some(watch) = watch else {
        return match response.chunk().await {
            Ok(Some(bytes)) => Read::Bytes(bytes),
            Ok(None) => Read::End,
            Err(err) => Read::Failed(err),
        };
    };
    loop {
        let deadline = tokio::time::Instant::from_std(watch.deadline());
        // `chunk` keeps no state of its own between polls (the body does), so a read given
        // up at the deadline loses no bytes.
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                watch.record(bytes.len() as u64, Instant::now());
                return Read::Bytes(bytes);
            }
            Ok(Ok(None)) => return Read::End,
            Ok(Err(err)) => return Read::Failed(err),
            Err(_) => {
                if let Some(stall) = watch.check(Instant::now()) {
                    return Read::Stalled(stall);
                }
            }
        }
    }
}

/// `1 B/s`, `0.5 B/s`, `1.0 kB/s`, `12.3 MB/s` (decimal units, as sizes are shown).
pub(crate) fn format_rate(bytes_per_sec: f64) -> String {
    const UNITS: [(&str, f64); 3] = [("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)];
    for (unit, scale) in UNITS {
        // Rounded to tenths first so 999_999 B/s reads `1.0 MB/s`.
        let tenths = (bytes_per_sec * 10.0 / scale).round();
        if tenths >= 10.0 {
            return format!("{:.1} {unit}", tenths / 10.0);
        }
    }
    if bytes_per_sec >= 10.0 {
        return format!("{bytes_per_sec:.0} B/s");
    }
    let tenths = format!("{bytes_per_sec:.1}");
    format!("{} B/s", tenths.strip_suffix(".0").unwrap_or(&tenths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(bytes_per_sec: u64, secs: u64) -> MinRate {
        MinRate::new(bytes_per_sec, Duration::from_secs(secs)).unwrap()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_zero_rate_or_window_turns_the_rule_off() {
        assert_eq!(MinRate::new(0, Duration::from_secs(30)), None);
        assert_eq!(MinRate::new(1024, Duration::ZERO), None);
        assert_eq!(rule(1024, 30).window_bytes(), 30_720.0);
    }

    #[test]
    fn a_trickle_is_a_stall_once_a_whole_window_has_run() {
        let t0 = Instant::now();
        let mut watch = RateWatch::start(rule(1024, 30), t0);
        // One byte every two seconds: the read timeout never fires, the rate rule does.
        for n in 1..=20u32 {
            let now = t0 + Duration::from_secs(2 * u64::from(n));
            watch.record(1, now);
            if now < t0 + Duration::from_secs(30) {
                assert_eq!(watch.check(now), None, "judged before a whole window");
            }
        }
        let now = t0 + Duration::from_secs(40);
        let stall = watch.check(now).expect("stalled");
        assert_eq!(stall.bytes, 15, "the bytes of the last 30 s only");
        assert!(!stall.healthy);
        assert_eq!(
            stall.to_string(),
            "stalled at 0.5 B/s over the last 30s, below the 1.0 kB/s minimum"
        );
    }

    #[test]
    fn a_body_at_the_minimum_rate_is_never_judged_stalled() {
        let t0 = Instant::now();
        let mut watch = RateWatch::start(rule(1000, 10), t0);
        // 100 bytes every 100 ms: exactly the minimum, for a minute.
        for n in 1..=600u64 {
            let now = t0 + Duration::from_millis(100 * n);
            watch.record(100, now);
            assert_eq!(watch.check(now), None, "at {n}");
            assert!(watch.deadline() > now);
        }
        // The slots stay bounded whatever the number of reads.
        assert!(
            watch.slots.len() <= SLOTS as usize + 1,
            "{}",
            watch.slots.len()
        );
    }

    #[test]
    fn a_burst_then_silence_stalls_when_the_burst_ages_out() {
        let t0 = Instant::now();
        let mut watch = RateWatch::start(rule(1000, 10), t0);
        // 50 kB in the first second, then nothing: the window holds enough until the burst
        // is ten seconds old.
        watch.record(50_000, t0 + secs(1.0));
        assert_eq!(watch.check(t0 + secs(10.5)), None);
        assert_eq!(watch.deadline(), t0 + secs(11.0));
        let stall = watch.check(t0 + secs(11.0)).expect("stalled");
        assert_eq!(stall.bytes, 0);
        assert!(stall.healthy, "the response had been fast before");
    }

    #[test]
    fn the_deadline_is_the_first_window_end_for_a_slow_body() {
        let t0 = Instant::now();
        let mut watch = RateWatch::start(rule(1024, 1), t0);
        assert_eq!(watch.deadline(), t0 + secs(1.0));
        watch.record(5, t0 + secs(0.2));
        assert_eq!(watch.deadline(), t0 + secs(1.0));
        assert!(watch.check(watch.deadline()).is_some());
        assert_eq!(watch.check(t0 + secs(0.99)), None);
    }

    #[test]
    fn the_deadline_waits_for_enough_bytes_to_age_out() {
        let t0 = Instant::now();
        let mut watch = RateWatch::start(rule(10, 10), t0);
        // 60 bytes at 2 s, 60 more at 9 s: 100 needed per window.
        watch.record(60, t0 + secs(2.0));
        watch.record(60, t0 + secs(9.0));
        // At 10 s the window holds 120; the first 60 age out at 12 s, leaving 60 < 100.
        assert_eq!(watch.check(t0 + secs(10.0)), None);
        assert_eq!(watch.deadline(), t0 + secs(12.0));
        assert_eq!(watch.check(t0 + secs(12.0)).map(|s| s.bytes), Some(60));
        // More bytes move it on.
        watch.record(50, t0 + secs(11.0));
        assert_eq!(watch.deadline(), t0 + secs(19.0));
    }

    #[test]
    fn rates_read_like_sizes() {
        assert_eq!(format_rate(0.0), "0 B/s");
        assert_eq!(format_rate(1.0), "1 B/s");
        assert_eq!(format_rate(0.5), "0.5 B/s");
        assert_eq!(format_rate(31.0 / 30.0), "1 B/s");
        assert_eq!(format_rate(512.0), "512 B/s");
        assert_eq!(format_rate(1024.0), "1.0 kB/s");
        assert_eq!(format_rate(999_999.0), "1.0 MB/s");
        assert_eq!(format_rate(12_340_000.0), "12.3 MB/s");
    }
}
