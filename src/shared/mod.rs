//! The shared tier: an S3-compatible bucket that every host of a fleet reads verified files
//! from and publishes verified files to, so that each file leaves the hub once.
//!
//! ```text
//! PREFIX/blobs/sha256/<hex>      LFS files, by content hash (immutable)
//! PREFIX/blobs/sha1/<hex>        other files, by git blob hash
//! PREFIX/leases/<algo>/<hex>     "I am fetching this from the hub" (lease.rs)
//! PREFIX/nodes/<node>.json       each host's last apply (nodes.rs)
//! ```
//!
//! Objects are created only from bytes already verified against the lock's hash, with a
//! conditional create (`If-None-Match: *`) or a multipart upload, which S3 shows only once it is
//! complete: a killed host leaves no visible partial object. Reads go through presigned URLs
//! to the hub client's own chunk engine (ranged, parallel, resumable, verified against the
//! lock's hash before anything is installed); a bad object is replaced by the next host that
//! fetches the file from the hub.
//!
//! A tier that cannot be used (unreachable, no bucket, credentials refused) costs one warning
//! and the rest of the run goes to the hub, unless the tier is required (`E_NET`).
//!
//! Edges: talks only to the configured bucket (through `object_store`, on the same reqwest and
//! rustls as the hub client); writes nothing locally (the hub client writes what it reads).
//! Never prints: warnings go through `tracing`.

mod config;
pub mod lease;
pub mod nodes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

pub use config::{
    AWS_VARIABLES, AwsVariables, SharedStoreConfig, TierTimings, check_node_name, parse_url,
};

use crate::error::{Error, Result};
use crate::upstream::{FileHash, UpstreamFile};

/// How long a presigned read URL is valid: longer than any one file takes.
const READ_URL_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Part size of multipart uploads, and parts in flight per upload.
const PART_SIZE: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// A connected shared tier.
pub struct SharedStore {
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    url: String,
    required: bool,
    node: String,
    timings: TierTimings,
    proxies: Vec<(String, String)>,
    /// Why the tier stopped being used in this run (set once, with one warning).
    broken: Mutex<Option<String>>,
}

/// What a read of one file from the tier gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierRead {
    /// The verified bytes are at the destination.
    Installed,
    /// The tier has no object for this file.
    Missing,
    /// The object's bytes are not the file's (it is replaced once the file is fetched).
    Bad(String),
    /// The tier cannot be used in this run.
    Unusable,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", &self.url)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// The client for `config` (nothing is sent yet). A configuration the client refuses (a
    /// bad endpoint URL, an unreadable CA bundle) is `E_ARGS`.
    pub fn open(config: &SharedStoreConfig) -> Result<SharedStore> {
        let mut client = ClientOptions::new()
            .with_timeout(config.timings.request_timeout)
            .with_connect_timeout(Duration::from_secs(5));
        for bundle in &config.ca_bundles {
            let pem = fs_err::read(bundle)
                .map_err(|e| Error::io(format!("reading {}", bundle.display()), &e))?;
            let certificates = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::args(format!("{} is not a PEM bundle: {e}", bundle.display()))
            })?;
            for certificate in certificates {
                client = client.with_root_certificate(certificate);
            }
        }
        // Few, quick retries: a tier that does not answer is skipped for the hub, and the
        // hub client has its own budget for overload.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        // Client options first: `AWS_ALLOW_HTTP` below is one of them.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_client_options(client)
            .with_retry(retry);
        for (name, value) in &config.aws.0 {
            let key: AmazonS3ConfigKey = name
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| Error::internal(format!("{name} is not an S3 setting")))?;
            builder = builder.with_config(key, value);
        }
        let store = builder.build().map_err(|e| {
            Error::args(format!("the shared store {} cannot be set up", config.url))
                .caused_by(without_secrets(&e.to_string(), &config.aws))
                .with_hint("check AWS_ENDPOINT_URL, AWS_REGION and the credentials variables")
        })?;
        Ok(SharedStore {
            store: Arc::new(store),
            prefix: ObjectPath::from(config.prefix.as_str()),
            url: config.url.clone(),
            required: config.required,
            node: config.node_name.clone(),
            timings: config.timings,
            proxies: config.proxies.clone(),
            broken: Mutex::new(None),
        })
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The name this host holds leases and reports as.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn timings(&self) -> TierTimings {
        self.timings
    }

    /// False once the tier failed in this run.
    pub fn usable(&self) -> bool {
        self.broken.lock().expect("tier state").is_none()
    }

    /// One listing request: is the bucket there and are the credentials good? A failure is
    /// the run's one warning (or `E_NET` when the tier is required).
    pub async fn probe(&self) -> Result<()> {
        let blobs = self.key(&["blobs"]);
        let mut listing = self.store.list(Some(&blobs));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(error)) => self.failed("listing the bucket", &error),
        }
    }

    /// Records that the tier cannot be used: the first time, one warning (the run goes on from
    /// the hub); when the tier is required, `E_NET`.
    pub fn failed(&self, what: &str, error: &object_store::Error) -> Result<()> {
        self.failed_because(format!("{what}: {}", describe(error)))
    }

    /// [`SharedStore::failed`] for a reason already worded (a read by the hub client).
    pub fn failed_because(&self, mut reason: String) -> Result<()> {
        if let Some((name, proxy)) = self.proxies.first() {
            reason.push_str(&format!(" (through the proxy {proxy} from {name})"));
        }
        if self.required {
            return Err(Error::net(format!(
                "the shared store {} cannot be used",
                self.url
            ))
            .caused_by(reason)
            .with_hint(
                "it is required (--require-shared-store or require_shared_store); check AWS_ENDPOINT_URL, the bucket and the credentials, or drop the requirement to fall back to the hub",
            ));
        }
        let mut broken = self.broken.lock().expect("tier state");
        if broken.is_none() {
            tracing::warn!(
                "the shared store {} cannot be used ({reason}); taking files from the hub",
                self.url
            );
            *broken = Some(reason);
        }
        Ok(())
    }

    /// Why the tier is not used in this run, if it is not.
    pub fn broken_reason(&self) -> Option<String> {
        self.broken.lock().expect("tier state").clone()
    }

    pub(crate) fn key(&self, parts: &[&str]) -> ObjectPath {
        let mut key = self.prefix.clone();
        for part in parts {
            key = key.child(*part);
        }
        key
    }

    fn blob_key(&self, hash: &FileHash) -> ObjectPath {
        self.key(&["blobs", hash_kind(hash), hash.hex()])
    }

    /// The size of the tier's object for `hash`, `None` when there is none (or the tier
    /// cannot be used).
    pub async fn blob_size(&self, hash: &FileHash) -> Result<Option<u64>> {
        if !self.usable() {
            return Ok(None);
        }
        match self.store.head(&self.blob_key(hash)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => {
                self.failed("looking up a blob", &error)?;
                Ok(None)
            }
        }
    }

    /// Where to read `file` from: a presigned GET URL of its object, valid for
    /// [`READ_URL_LIFETIME`], for the hub client's chunk engine (ranges in parallel, resumable,
    /// verified, stalls and 429s handled as for the hub). Its query is a signature: it is never
    /// shown. `Missing` when there is no object, `Bad` when its size is wrong.
    pub async fn read_url(
        &self,
        file: &UpstreamFile,
    ) -> Result<std::result::Result<url::Url, TierRead>> {
        match self.blob_size(&file.hash).await? {
            None if !self.usable() => return Ok(Err(TierRead::Unusable)),
            None => return Ok(Err(TierRead::Missing)),
            Some(size) if size != file.size => {
                return Ok(Err(TierRead::Bad(format!(
                    "the object has {size} bytes, the file {}",
                    file.size
                ))));
            }
            Some(_) => {}
        }
        use object_store::signer::Signer as _;
        match self
            .store
            .signed_url(
                reqwest::Method::GET,
                &self.blob_key(&file.hash),
                READ_URL_LIFETIME,
            )
            .await
        {
            Ok(url) => Ok(Ok(url)),
            Err(error) => {
                self.failed("signing a read", &error)?;
                Ok(Err(TierRead::Unusable))
            }
        }
    }

    /// Publishes the verified file at `path` as the object for `file` (a tier that already
    /// has it is left alone unless `replace`, for an object found bad). Failures cost the
    /// run's one warning and are otherwise ignored: the host has its file.
    pub async fn publish(&self, file: &UpstreamFile, path: &Path, replace: bool) -> Result<()> {
        if !self.usable() {
            return Ok(());
        }
        let key = self.blob_key(&file.hash);
        if !replace && self.blob_size(&file.hash).await? == Some(file.size) {
            return Ok(());
        }
        let outcome = if file.size >= self.timings.multipart_min {
            self.put_multipart(&key, path).await
        } else {
            self.put_whole(&key, path, replace).await
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(path = %file.path, key = %key, "published to the shared store");
                Ok(())
            }
            // Another host published the same bytes first.
            Err(PublishError::Store(object_store::Error::AlreadyExists { .. })) => Ok(()),
            Err(PublishError::Store(error)) => self.failed("publishing a blob", &error),
            Err(PublishError::Local(error)) => Err(error),
        }
    }

    async fn put_whole(
        &self,
        key: &ObjectPath,
        path: &Path,
        replace: bool,
    ) -> std::result::Result<(), PublishError> {
        let bytes = fs_err::read(path).map_err(|e| {
            PublishError::Local(Error::io(format!("reading {}", path.display()), &e))
        })?;
        let mode = if replace {
            PutMode::Overwrite
        } else {
            PutMode::Create
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.store
            .put_opts(key, PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(PublishError::Store)
    }

    /// A multipart upload: parts in parallel, visible only once completed. A failure aborts
    /// the upload so no parts are left behind (a killed host's parts are the bucket's
    /// lifecycle rule's to expire; they are never visible as an object).
    async fn put_multipart(
        &self,
        key: &ObjectPath,
        path: &Path,
    ) -> std::result::Result<(), PublishError> {
        let upload = self
            .store
            .put_multipart(key)
            .await
            .map_err(PublishError::Store)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let local = |e: std::io::Error| {
            PublishError::Local(Error::io(format!("reading {}", path.display()), &e))
        };
        let mut input = tokio::fs::File::open(path).await.map_err(local)?;
        let mut buffer = vec![0u8; PART_SIZE];
        loop {
            use tokio::io::AsyncReadExt as _;
            let mut filled = 0;
            while filled < buffer.len() {
                let read = input.read(&mut buffer[filled..]).await.map_err(local)?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            if filled == 0 {
                break;
            }
            if let Err(error) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                writer.abort().await.ok();
                return Err(PublishError::Store(error));
            }
            writer.write(&buffer[..filled]);
            if filled < buffer.len() {
                break;
            }
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(PublishError::Store)
    }

    /// Lists the objects under `PREFIX/<folder>/`.
    pub(crate) async fn list(&self, folder: &str) -> object_store::Result<Vec<ObjectPath>> {
        let prefix = self.key(&[folder]);
        self.store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
    }
}

enum PublishError {
    Store(object_store::Error),
    Local(Error),
}

/// `sha256` for LFS hashes, `sha1` for git blob hashes: the folder under `blobs/`.
pub fn hash_kind(hash: &FileHash) -> &'static str {
    if hash.is_lfs() { "sha256" } else { "sha1" }
}

/// An S3 error on one line: the status and the store's error code where it sent them (an XML
/// body is cut down to its `<Code>`), "the credentials were refused" for 401/403, "the bucket
/// does not exist" for `NoSuchBucket`; never a request's headers.
fn describe(error: &object_store::Error) -> String {
    let text = error.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_string())
    };
    let status = text.find("status code: ").map(|at| {
        let rest = &text[at + "status code: ".len()..];
        rest.split(':').next().unwrap_or(rest).trim().to_string()
    });
    let code = tag("Code");
    let detail = match (&status, &code) {
        (Some(status), Some(code)) => format!("{status}, {code}"),
        (Some(status), None) => status.clone(),
        (None, Some(code)) => code.clone(),
        (None, None) => String::new(),
    };
    let refused = matches!(
        error,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || status
        .as_deref()
        .is_some_and(|status| status.starts_with("401") || status.starts_with("403"));
    if code.as_deref() == Some("NoSuchBucket") {
        return format!("the bucket does not exist ({detail})");
    }
    if refused {
        return format!("the credentials were refused ({detail})");
    }
    if matches!(error, object_store::Error::NotFound { .. }) {
        return "not found".to_string();
    }
    if !detail.is_empty() {
        return detail;
    }
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// `text` with every secret of `aws` blotted out.
pub fn without_secrets(text: &str, aws: &AwsVariables) -> String {
    let mut text = text.to_string();
    for secret in aws.secret_values() {
        if !secret.is_empty() {
            text = text.replace(secret, "***");
        }
    }
    text
}

/// Where the store's downloads folder keeps a file being read from the tier.
pub fn tier_part_path(downloads: &Path, hash: &FileHash) -> PathBuf {
    downloads.join(format!("{}.tier", hash.hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn s3_errors_are_one_line_with_their_status_and_code() {
        let refused = generic(
            "Error performing list request: Error performing GET http://x/b?list-type=2 in 33ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>",
        );
        assert_eq!(
            describe(&refused),
            "the credentials were refused (403 Forbidden, SignatureDoesNotMatch)"
        );
        let missing = generic(
            "Server returned non-2xx status code: 404 Not Found: <?xml?>\n<Error><Code>NoSuchBucket</Code></Error>",
        );
        assert_eq!(
            describe(&missing),
            "the bucket does not exist (404 Not Found, NoSuchBucket)"
        );
        let down =
            generic("error sending request for url (http://127.0.0.1:9/b)\ncaused by: refused");
        assert_eq!(
            describe(&down),
            "Generic S3 error: error sending request for url (http://127.0.0.1:9/b)"
        );
    }
}
