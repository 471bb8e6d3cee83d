//! What a download response says, read the same way by both download loops (`download`, one
//! stream; `chunked`, ranged connections): its `Content-Range`, and a response that did not
//! bring the bytes classified into retry, resolve again, or give up.
//!
//! Edges: reads the response (a failed one's body, for the error text); imports only the hub's
//! error and retry policy.

use std::time::Duration;

use reqwest::header::{self, HeaderMap};

use super::errors::{self, Target, Transient};
use super::{redact_url, retry};
use crate::error::Error;

/// A `Content-Range: bytes {start}-{end}/{total|*}` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub(super) start: u64,
    pub(super) end: u64,
    /// `None` for `*` (the server does not say).
    pub(super) total: Option<u64>,
}

/// The response's `Content-Range`, if it has a well-formed one.
pub(super) fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    headers
        .get(header::CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_content_range)
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some(ContentRange {
        start: start.trim().parse().ok()?,
        end: end.trim().parse().ok()?,
        total,
    })
}

/// What a download response without the bytes (not 200/206) means for the attempt.
#[derive(Debug)]
pub(super) enum Failed {
    /// Worth another attempt (408, 429, 5xx), after the server's `Retry-After` if it sent one.
    Retry(Transient, Option<Duration>),
    /// 401/403/404/410 from a URL other than the resolve URL: a signed CDN URL of an earlier
    /// attempt has expired, so the next attempt resolves again.
    ResolveAgain(Transient),
    Fatal(Error),
}

/// Classifies `response` with status `status`; `from_resolve_url` is whether the request went
/// to the hub's resolve URL (then a 401/403/404 is the hub's answer, not an expired link).
pub(super) async fn classify_failure(
    response: reqwest::Response,
    status: u16,
    from_resolve_url: bool,
    target: &Target<'_>,
    secret: Option<&str>,
) -> Failed {
    if retry::is_retryable_status(status) {
        return Failed::Retry(
            Transient::Status(status),
            retry::parse_retry_after(response.headers()),
        );
    }
    if matches!(status, 401 | 403 | 404 | 410) && !from_resolve_url {
        return Failed::ResolveAgain(Transient::Status(status));
    }
    let final_url = redact_url(response.url().as_str());
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    Failed::Fatal(errors::error_from_status(
        status,
        &headers,
        &body[..body.len().min(64 << 10)],
        target,
        &final_url,
        secret,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        let range = |start, end, total| Some(ContentRange { start, end, total });
        assert_eq!(
            parse_content_range("bytes 100-199/300"),
            range(100, 199, Some(300))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), range(0, 0, None));
        assert_eq!(parse_content_range("bytes */300"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes x-1/2"), None);
    }
}
