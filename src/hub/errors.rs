//! Hub responses and transport failures mapped to kmm errors (hf-protocol.md §6.5, §6.6).
//!
//! `X-Error-Code` decides first (it is the only source on HEAD and the most precise one):
//! `RepoNotFound`/`RevisionNotFound`/`EntryNotFound` -> `E_NOT_FOUND`, `GatedRepo` ->
//! `E_LICENSE`. Then the status: a 401 "Invalid credentials in Authorization header" is a bad
//! token (`E_PERM`), other 401/403 are `E_PERM`, a bare 404 is `E_NOT_FOUND`, 429 and the rest
//! are `E_NET`. Server-provided text is shortened and scrubbed of the token before it is kept,
//! because a misbehaving mirror could echo the `Authorization` header back.
//!
//! Edges: builds `Error` values only; no I/O.

use reqwest::header::HeaderMap;

use crate::error::Error;

/// What a request was about, for messages ("file `x` not found in `org/m` at `main`").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub repo: &'a str,
    pub revision: Option<&'a str>,
    pub file: Option<&'a str>,
}

impl<'a> Target<'a> {
    pub fn repo(repo: &'a str) -> Self {
        Target {
            repo,
            revision: None,
            file: None,
        }
    }
    pub fn revision(repo: &'a str, revision: &'a str) -> Self {
        Target {
            repo,
            revision: Some(revision),
            file: None,
        }
    }
    pub fn file(repo: &'a str, revision: &'a str, file: &'a str) -> Self {
        Target {
            repo,
            revision: Some(revision),
            file: Some(file),
        }
    }

    /// "file `x` of `org/m`" / "revision `main` of `org/m`" / "`org/m`".
    pub fn describe(&self) -> String {
        match (self.file, self.revision) {
            (Some(file), _) => format!("file `{file}` of `{}`", self.repo),
            (None, Some(revision)) => format!("revision `{revision}` of `{}`", self.repo),
            (None, None) if self.repo.is_empty() => "the model listing".to_string(),
            (None, None) => format!("`{}`", self.repo),
        }
    }
}

pub(crate) const TOKEN_HINT: &str =
    "set HF_TOKEN (or HF_TOKEN_PATH) to a token that may read this repository";
pub(crate) const INVALID_TOKEN_HINT: &str = "the token from HF_TOKEN / HF_TOKEN_PATH is invalid or expired: replace it, or unset it to access public models anonymously";
pub(crate) const GATED_HINT: &str = "request access on the model page and set HF_TOKEN";
pub(crate) const CERTIFICATE_HINT: &str = "for a hub or mirror behind a private CA, point SSL_CERT_FILE (or REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) at its PEM bundle, or SSL_CERT_DIR at a folder of certificates; kmm trusts those, the system store and its bundled roots";
pub(crate) const ENDPOINT_HINT: &str =
    "check the network connection and the hub address (`--mirror`, `HF_ENDPOINT`)";
pub(crate) const STALL_HINT: &str = "the hub or mirror sends too slowly; retry later, or on a slow link lower the minimum rate with KMM_HUB_MIN_RATE (bytes per second, 0 turns the rule off) or lengthen KMM_HUB_MIN_RATE_TIME";
pub(crate) const RATE_LIMIT_HINT: &str = "the hub is rate limiting this machine: wait a few minutes and retry (a token in HF_TOKEN raises the limit)";

const INVALID_CREDENTIALS: &str = "Invalid credentials in Authorization header";

/// Maps a final (non-retryable, or retried to exhaustion) error response.
pub(crate) fn error_from_status(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    target: &Target<'_>,
    url: &str,
    secret: Option<&str>,
) -> Error {
    let error_code = header_str(headers, "x-error-code");
    let server_message = server_message(headers, body, secret);
    let repo = target.repo;
    let revision = target.revision.unwrap_or("main");
    let error = match error_code.as_deref() {
        Some("RepoNotFound") => Error::not_found(format!("repository `{repo}` not found"))
            .with_hint("check the model id; for a private repository set HF_TOKEN to a token that may read it"),
        Some("RevisionNotFound") => Error::not_found(format!(
            "revision `{revision}` not found in `{repo}`"
        ))
        .with_hint("check `revision`: a branch, a tag, `refs/pr/N` or a full 40-hex commit"),
        Some("EntryNotFound") => Error::not_found(format!(
            "file `{}` not found in `{repo}` at `{revision}`",
            target.file.unwrap_or("?")
        )),
        Some("GatedRepo") => {
            let what = if status == 401 {
                "downloading it needs a token with approved access"
            } else {
                "this token has not been granted access"
            };
            Error::license(format!("`{repo}` is a gated model: {what}")).with_hint(GATED_HINT)
        }
        _ if status == 401
            && server_message
                .as_deref()
                .is_some_and(|m| m.contains(INVALID_CREDENTIALS)) =>
        {
            Error::perm("the hub rejected the token (invalid credentials)")
                .with_hint(INVALID_TOKEN_HINT)
        }
        _ if status == 401 || status == 403 => Error::perm(format!(
            "access to {} denied (HTTP {status})",
            target.describe()
        ))
        .with_hint(TOKEN_HINT),
        _ if status == 404 => Error::not_found(match target.file {
            Some(file) => format!("file `{file}` not found in `{repo}` at `{revision}`"),
            None if repo.is_empty() => "not found".to_string(),
            None => format!("`{repo}` at `{revision}` not found"),
        })
        .with_hint("check the model id and revision"),
        _ if status == 429 => Error::net(format!(
            "rate limited while getting {}",
            target.describe()
        ))
        .with_hint(RATE_LIMIT_HINT),
        _ => Error::net(format!(
            "unexpected answer while getting {}",
            target.describe()
        ))
        .with_hint(ENDPOINT_HINT),
    };
    let error = error.caused_by(format!("HTTP {status} from {url}"));
    match server_message {
        Some(message) => error.caused_by(message),
        None => error,
    }
}

/// The last failure before retries ran out.
#[derive(Debug, Clone)]
pub(crate) enum Transient {
    Status(u16),
    /// Connection refused, DNS, TLS: the endpoint itself is not reachable.
    Connect(String),
    /// The connection broke, stalled or ended early after it was established.
    Interrupted(String),
    /// The body came in below the minimum rate ([`super::min_rate`]): what it brought.
    Stalled(String),
}

impl Transient {
    pub fn from_reqwest(err: &reqwest::Error) -> Self {
        let detail = describe_transport(err);
        if err.is_connect() {
            Transient::Connect(detail)
        } else {
            Transient::Interrupted(detail)
        }
    }
}

/// `E_NET` after `attempts` tries, naming what, where and why.
pub(crate) fn retries_exhausted(
    target: &Target<'_>,
    url: &str,
    attempts: u32,
    last: &Transient,
) -> Error {
    let tries = if attempts == 1 {
        "1 attempt".to_string()
    } else {
        format!("{attempts} attempts")
    };
    match last {
        Transient::Status(429) => Error::net(format!(
            "rate limited: could not get {} from {url} after {tries}",
            target.describe()
        ))
        .with_hint(RATE_LIMIT_HINT)
        .caused_by("HTTP 429 Too Many Requests"),
        Transient::Status(status) => Error::net(format!(
            "could not get {} from {url} after {tries}",
            target.describe()
        ))
        .with_hint("the hub or mirror keeps failing; retry later")
        .caused_by(format!("HTTP {status}")),
        Transient::Connect(detail) => Error::net(format!(
            "cannot reach the hub for {} at {url} after {tries}",
            target.describe()
        ))
        .with_hint(ENDPOINT_HINT)
        .caused_by(detail.clone()),
        Transient::Interrupted(detail) => Error::net(format!(
            "could not get {} from {url} after {tries}",
            target.describe()
        ))
        .with_hint(ENDPOINT_HINT)
        .caused_by(detail.clone()),
        // The rate goes in the message itself: it is the answer to "why did it give up".
        Transient::Stalled(detail) => Error::net(format!(
            "could not get {} from {url} after {tries}: {detail}",
            target.describe()
        ))
        .with_hint(STALL_HINT),
    }
}

/// `E_NET` for a request that failed because the server's TLS certificate is not trusted (an
/// unknown issuer: a private CA; expired; another name), with a hint naming the variables that
/// add trust; `None` for any other failure.
pub(crate) fn certificate_error(err: &reqwest::Error, url: &str) -> Option<Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = cause {
        if let Some(rustls::Error::InvalidCertificate(why)) = find_rustls(current) {
            return Some(
                Error::net(format!("the TLS certificate of {url} is not trusted"))
                    .with_hint(CERTIFICATE_HINT)
                    .caused_by(format!("{why:?}")),
            );
        }
        cause = current.source();
    }
    None
}

/// The rustls error `error` is, or wraps: rustls errors reach us inside `io::Error`s (nested:
/// the TLS stream's, then the connector's), whose `source` skips what they wrap.
fn find_rustls<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(found) = error.downcast_ref::<rustls::Error>() {
        return Some(found);
    }
    let inner = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    find_rustls(inner)
}

/// The cause chain of a transport error, without the URL reqwest would add (it may carry a
/// signed query string).
pub(crate) fn describe_transport(err: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let top = if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        "connection failed".to_string()
    } else if err.is_body() || err.is_decode() {
        "connection broke while reading the body".to_string()
    } else {
        "request failed".to_string()
    };
    parts.push(top);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `X-Error-Message`, else the JSON body's `error` (a string or a list) or
/// `errors[].message`; shortened, and with the token replaced if a server echoed it.
fn server_message(headers: &HeaderMap, body: &[u8], secret: Option<&str>) -> Option<String> {
    let message = header_str(headers, "x-error-message").or_else(|| {
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        match json.get("error") {
            Some(serde_json::Value::String(text)) => Some(text.clone()),
            Some(serde_json::Value::Array(items)) => Some(
                items
                    .iter()
                    .filter_map(|item| item.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => json
                .get("errors")?
                .as_array()?
                .iter()
                .filter_map(|item| item.get("message")?.as_str())
                .next()
                .map(str::to_string),
        }
    })?;
    Some(scrub(&shorten(&message, 300), secret))
}

/// Replaces every occurrence of the token.
pub(crate) fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(secret) if !secret.is_empty() => text.replace(secret, "<redacted>"),
        _ => text.to_string(),
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    let single_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if single_line.chars().count() <= max_chars {
        single_line
    } else {
        let cut: String = single_line.chars().take(max_chars).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    const URL: &str = "http://hub.test/api/models/org/m/revision/main";

    #[test]
    fn hub_error_codes_decide_first() {
        let target = Target::file("org/m", "main", "config.json");
        let cases = [
            (
                401,
                "RepoNotFound",
                ErrorCode::NotFound,
                "repository `org/m`",
            ),
            (
                404,
                "RepoNotFound",
                ErrorCode::NotFound,
                "repository `org/m`",
            ),
            (
                404,
                "RevisionNotFound",
                ErrorCode::NotFound,
                "revision `main`",
            ),
            (
                404,
                "EntryNotFound",
                ErrorCode::NotFound,
                "file `config.json`",
            ),
            (401, "GatedRepo", ErrorCode::License, "gated"),
            (403, "GatedRepo", ErrorCode::License, "gated"),
        ];
        for (status, code, expected, needle) in cases {
            let error = error_from_status(
                status,
                &headers(&[("x-error-code", code)]),
                b"",
                &target,
                URL,
                None,
            );
            assert_eq!(error.code(), expected, "{status} {code}");
            assert!(error.message().contains(needle), "{}", error.message());
            assert!(error.causes().iter().any(|c| c.contains(URL)));
        }
        let gated = error_from_status(
            403,
            &headers(&[("x-error-code", "GatedRepo")]),
            b"",
            &target,
            URL,
            None,
        );
        assert_eq!(gated.hint(), Some(GATED_HINT));
        let missing = error_from_status(
            401,
            &headers(&[("x-error-code", "RepoNotFound")]),
            b"",
            &target,
            URL,
            None,
        );
        assert!(missing.hint().unwrap().contains("HF_TOKEN"));
    }

    #[test]
    fn invalid_token_is_a_permission_error() {
        let error = error_from_status(
            401,
            &headers(&[(
                "x-error-message",
                "Invalid credentials in Authorization header",
            )]),
            b"",
            &Target::revision("org/m", "main"),
            URL,
            None,
        );
        assert_eq!(error.code(), ErrorCode::Perm);
        assert!(error.hint().unwrap().contains("HF_TOKEN_PATH"));
        // Also when the message only comes in the JSON body.
        let from_body = error_from_status(
            401,
            &HeaderMap::new(),
            br#"{"error":"Invalid credentials in Authorization header"}"#,
            &Target::revision("org/m", "main"),
            URL,
            None,
        );
        assert_eq!(from_body.code(), ErrorCode::Perm);
        assert!(from_body.message().contains("rejected the token"));
    }

    #[test]
    fn statuses_without_error_code() {
        let target = Target::revision("org/m", "v1");
        let map =
            |status| error_from_status(status, &HeaderMap::new(), b"", &target, URL, None).code();
        assert_eq!(map(401), ErrorCode::Perm);
        assert_eq!(map(403), ErrorCode::Perm);
        assert_eq!(map(404), ErrorCode::NotFound);
        assert_eq!(map(429), ErrorCode::Net);
        assert_eq!(map(400), ErrorCode::Net);
        assert_eq!(map(501), ErrorCode::Net);
    }

    #[test]
    fn server_messages_are_kept_short_and_scrubbed() {
        let body = format!(
            r#"{{"error":"token hf_SECRET_test_token is not valid{}"}}"#,
            "x".repeat(1000)
        );
        let error = error_from_status(
            400,
            &HeaderMap::new(),
            body.as_bytes(),
            &Target::repo("org/m"),
            URL,
            Some("hf_SECRET_test_token"),
        );
        let text = format!("{error} {error:?}");
        assert!(!text.contains("hf_SECRET_test_token"));
        assert!(text.contains("<redacted>"));
        assert!(error.causes().iter().all(|c| c.len() < 400));
        let listed = error_from_status(
            404,
            &HeaderMap::new(),
            br#"{"error":["one","two"]}"#,
            &Target::repo("org/m"),
            URL,
            None,
        );
        assert!(listed.causes().contains(&"one; two".to_string()));
    }

    #[test]
    fn exhausted_retries_name_url_and_attempts() {
        let target = Target::file("org/m", "abc", "model.bin");
        let error = retries_exhausted(&target, "http://hub.test/x", 4, &Transient::Status(500));
        assert_eq!(error.code(), ErrorCode::Net);
        assert!(error.message().contains("file `model.bin`"));
        assert!(error.message().contains("http://hub.test/x"));
        assert!(error.message().contains("4 attempts"));
        let limited = retries_exhausted(&target, "u", 6, &Transient::Status(429));
        assert!(limited.message().contains("rate limited"));
        assert_eq!(limited.hint(), Some(RATE_LIMIT_HINT));
        let refused = retries_exhausted(
            &target,
            "u",
            1,
            &Transient::Connect("connection refused".into()),
        );
        assert!(refused.hint().unwrap().contains("--mirror"));
        assert!(refused.message().contains("1 attempt"));
        let stalled = retries_exhausted(
            &target,
            "u",
            4,
            &Transient::Stalled(
                "stalled at 1 B/s over the last 30s, below the 1.0 kB/s minimum".into(),
            ),
        );
        assert_eq!(stalled.code(), ErrorCode::Net);
        assert!(stalled.message().contains("file `model.bin` of `org/m`"));
        assert!(stalled.message().contains("stalled at 1 B/s"));
        assert!(stalled.hint().unwrap().contains("KMM_HUB_MIN_RATE"));
    }
}
