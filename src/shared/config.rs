//! Where the shared tier is and how to reach it: an `s3://BUCKET/PREFIX` URL, the standard AWS
//! variables (endpoint, region, credentials), the node name this host reports under, and the
//! timings of leases and waits.
//!
//! Edges: plain data and parsing; no I/O. Secrets live only in [`AwsVariables`], whose `Debug`
//! prints names, never values, so no `{:?}` of the settings can leak a key.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// The AWS variables kmm passes to the S3 client, in the order they are read. Any
/// S3-compatible store: set `AWS_ENDPOINT_URL` (and `AWS_ALLOW_HTTP=true` for plain HTTP).
pub const AWS_VARIABLES: [&str; 14] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// The AWS variables that are set. Values are secrets (keys, session tokens): never printed.
#[derive(Clone, Default)]
pub struct AwsVariables(pub(super) Vec<(&'static str, String)>);

impl AwsVariables {
    /// The set variables among [`AWS_VARIABLES`], read through `lookup`.
    pub fn read(lookup: &dyn Fn(&str) -> Option<String>) -> AwsVariables {
        AwsVariables(
            AWS_VARIABLES
                .iter()
                .filter_map(|name| {
                    lookup(name)
                        .filter(|value| !value.trim().is_empty())
                        .map(|value| (*name, value))
                })
                .collect(),
        )
    }

    /// The value of `name`, when set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every secret value, so callers can check that none reaches an output.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(|(name, _)| {
                matches!(
                    *name,
                    "AWS_SECRET_ACCESS_KEY" | "AWS_SESSION_TOKEN" | "AWS_ACCESS_KEY_ID"
                )
            })
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Debug for AwsVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| *name))
            .finish()
    }
}

/// Timings of the shared tier (defaults for a fleet; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierTimings {
    /// A lease not renewed for this long is taken over (`KMM_SHARED_STORE_LEASE_TTL`).
    pub lease_ttl: Duration,
    /// How long a host waits for another host's lease before it downloads from the hub itself
    /// (`KMM_SHARED_STORE_WAIT`).
    pub max_wait: Duration,
    /// Files from this size on are published as parallel multipart uploads
    /// (`KMM_SHARED_STORE_MULTIPART_MIN`).
    pub multipart_min: u64,
    /// How long one request to the tier may take before the tier counts as unreachable.
    pub request_timeout: Duration,
}

impl Default for TierTimings {
    fn default() -> Self {
        TierTimings {
            lease_ttl: Duration::from_secs(30),
            max_wait: Duration::from_secs(30 * 60),
            multipart_min: 16 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The shared tier as the settings name it.
#[derive(Debug, Clone)]
pub struct SharedStoreConfig {
    /// `s3://BUCKET/PREFIX` as given (it holds no credentials: they are refused in the URL).
    pub url: String,
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `--require-shared-store`: a tier that cannot be used is `E_NET`, not a warning.
    pub required: bool,
    pub aws: AwsVariables,
    /// PEM bundles trusted besides the system store (`SSL_CERT_FILE`, ...).
    pub ca_bundles: Vec<PathBuf>,
    /// The proxy variables that are set, values without credentials: a tier that cannot be
    /// reached through a proxy names it.
    pub proxies: Vec<(String, String)>,
    /// The name this host reports under in `PREFIX/nodes/` and holds leases as.
    pub node_name: String,
    pub timings: TierTimings,
}

/// Parses `s3://BUCKET[/PREFIX]`; `origin` names where it came from in errors.
pub fn parse_url(text: &str, origin: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        Error::args(format!("{origin} `{}` {why}", redact(text))).with_hint(
            "write it as s3://BUCKET/PREFIX; the endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    };
    let Some(rest) = text.trim().strip_prefix("s3://") else {
        return Err(bad("is not an s3:// URL"));
    };
    if rest.contains(['?', '#']) {
        return Err(bad("has a query or fragment"));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') {
        return Err(bad(
            "holds credentials; set them in AWS_* variables instead",
        ));
    }
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !valid_bucket {
        return Err(bad(
            "does not name a bucket (3 to 63 lowercase letters, digits, `-` and `.`)",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|part| part == "." || part == "..")
        || prefix.contains("//")
        || prefix.chars().any(char::is_control)
    {
        return Err(bad("has an empty, `.` or `..` part in its prefix"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// `text` with anything between `://` and an `@` hidden, for error messages.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &text[..scheme], &text[at..])
        }
        _ => text.to_string(),
    }
}

/// A node name fit for an object key: letters, digits, `.`, `_` and `-`; anything else
/// becomes `-`. Empty names are `E_ARGS`.
pub fn check_node_name(name: &str, origin: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.len() > 253 {
        return Err(Error::args(format!(
            "{origin} must be 1 to 253 characters, got {}",
            name.len()
        )));
    }
    Ok(name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        assert_eq!(
            parse_url("s3://fleet-models/kmm/", "--shared-store").unwrap(),
            ("fleet-models".into(), "kmm".into())
        );
        assert_eq!(
            parse_url("s3://bucket", "x").unwrap(),
            ("bucket".into(), String::new())
        );
        for bad in [
            "http://bucket/x",
            "s3://B/x",
            "s3://ab",
            "s3://key:secret@bucket/x",
            "s3://bucket/a/../b",
            "s3://bucket/x?y",
        ] {
            let error = parse_url(bad, "--shared-store").unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Args, "{bad}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn debug_output_names_variables_but_never_their_values() {
        let values = [
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
        ];
        let aws = AwsVariables::read(&|name| {
            values
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        });
        let shown = format!("{aws:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY"), "{shown}");
        assert!(!shown.contains("very-secret") && !shown.contains("AKIDEXAMPLE"));
        assert_eq!(aws.get("AWS_SECRET_ACCESS_KEY"), Some("very-secret"));
    }

    #[test]
    fn node_names_become_object_key_safe() {
        assert_eq!(
            check_node_name("gpu node/7", "KMM_NODE_NAME").unwrap(),
            "gpu-node-7"
        );
        assert!(check_node_name("  ", "KMM_NODE_NAME").is_err());
    }
}
