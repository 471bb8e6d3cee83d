//! Origin once: before a host downloads a file the tier lacks, it takes the file's lease, an
//! object `PREFIX/leases/<algo>/<hex>` created only if absent (`If-None-Match: *`), naming the
//! holder and when the lease runs out. The holder renews it while it downloads (a heartbeat,
//! `If-Match` on the lease's ETag) and deletes it once the file is published. Other hosts wait
//! for the blob instead of downloading it; a lease that ran out (its holder was killed) is taken
//! over with `If-Match` on the stale lease, so two waiters cannot both take it; after
//! `max_wait` a waiter gives up and downloads the file itself.
//!
//! Hosts compare `expires_at_ms` with their own clock: clocks must agree to well within the
//! lease TTL (NTP does).
//!
//! Edges: only `PREFIX/leases/` and HEAD requests on `PREFIX/blobs/`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore as _, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{SharedStore, hash_kind};
use crate::error::Result;
use crate::upstream::UpstreamFile;

/// What a lease object holds: who fetches the file, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    pub pid: u32,
    /// The file, for a person reading the bucket.
    pub file: String,
    /// Milliseconds since the Unix epoch after which the lease may be taken over.
    pub expires_at_ms: u64,
}

/// What [`SharedStore::lease_or_wait`] came to.
pub enum Acquired {
    /// This host holds the lease: download the file, publish it, then [`Lease::release`].
    Mine(Lease),
    /// Another host published the file while this one waited: read it from the tier.
    Published,
    /// The holder did not publish within the wait: download the file without a lease.
    GaveUp { holder: String },
    /// The tier cannot be used in this run.
    Unusable,
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    store: std::sync::Arc<object_store::aws::AmazonS3>,
    key: ObjectPath,
    heartbeat: tokio::task::JoinHandle<()>,
    version: std::sync::Arc<std::sync::Mutex<UpdateVersion>>,
}

impl Lease {
    /// Stops the heartbeat and deletes the lease (when it is still this host's).
    pub async fn release(self) {
        self.heartbeat.abort();
        let current = self.store.head(&self.key).await;
        let ours = self.version.lock().expect("lease version").e_tag.clone();
        if current.is_ok_and(|meta| meta.e_tag == ours) {
            let _ = self.store.delete(&self.key).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A failed download drops its lease unreleased: it runs out after the TTL, and the
        // next host takes it over.
        self.heartbeat.abort();
    }
}

/// The lease object of `holder` for `file`, running out `ttl` from now.
fn lease_payload(holder: &str, file: &str, ttl: Duration) -> PutPayload {
    let body = LeaseBody {
        holder: holder.to_string(),
        pid: std::process::id(),
        file: file.to_string(),
        expires_at_ms: now_ms() + ttl.as_millis() as u64,
    };
    PutPayload::from(serde_json::to_vec(&body).expect("a lease serializes"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl SharedStore {
    fn lease_key(&self, file: &UpstreamFile) -> ObjectPath {
        self.key(&["leases", hash_kind(&file.hash), file.hash.hex()])
    }

    fn lease_body(&self, file: &UpstreamFile) -> PutPayload {
        lease_payload(&self.node, &file.path, self.timings.lease_ttl)
    }

    /// Takes the lease of `file`, or waits for the host that holds it to publish the file.
    /// `waiting` is told the holder's name once, when the wait starts.
    pub async fn lease_or_wait(
        &self,
        file: &UpstreamFile,
        waiting: &(dyn Fn(&str) + Sync),
    ) -> Result<Acquired> {
        if !self.usable() {
            return Ok(Acquired::Unusable);
        }
        let key = self.lease_key(file);
        let poll =
            (self.timings.lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let started = Instant::now();
        let mut told = false;
        // The stale lease this host may take over, by its version.
        let mut stale: Option<UpdateVersion> = None;
        loop {
            let mode = match stale.take() {
                Some(version) => PutMode::Update(version),
                None => PutMode::Create,
            };
            let options = PutOptions {
                mode,
                ..PutOptions::default()
            };
            match self
                .store
                .put_opts(&key, self.lease_body(file), options)
                .await
            {
                Ok(put) => {
                    let version = UpdateVersion {
                        e_tag: put.e_tag,
                        version: put.version,
                    };
                    let lease = self.start_heartbeat(key, file, version);
                    // The holder before this host may have published and released the lease
                    // since this host last looked: then there is nothing to fetch.
                    if self.blob_size(&file.hash).await? == Some(file.size) {
                        lease.release().await;
                        return Ok(Acquired::Published);
                    }
                    return Ok(Acquired::Mine(lease));
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(error) => {
                    self.failed("taking a lease", &error)?;
                    return Ok(Acquired::Unusable);
                }
            }
            if self.blob_size(&file.hash).await? == Some(file.size) {
                return Ok(Acquired::Published);
            }
            let holder = match self.store.get(&key).await {
                Ok(got) => {
                    let version = UpdateVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let body = got.bytes().await.ok();
                    match body.and_then(|bytes| serde_json::from_slice::<LeaseBody>(&bytes).ok()) {
                        Some(lease) if lease.expires_at_ms > now_ms() => lease.holder,
                        // Ran out (its holder stopped renewing it) or unreadable: take it over.
                        expired => {
                            tracing::debug!(
                                holder = expired.as_ref().map_or("?", |lease| lease.holder.as_str()),
                                path = %file.path,
                                "taking over an expired lease"
                            );
                            stale = Some(version);
                            continue;
                        }
                    }
                }
                // Released between the two requests: try to take it again.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(error) => {
                    self.failed("reading a lease", &error)?;
                    return Ok(Acquired::Unusable);
                }
            };
            if !told {
                waiting(&holder);
                told = true;
            }
            if started.elapsed() >= self.timings.max_wait {
                return Ok(Acquired::GaveUp { holder });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Renews the lease every third of its TTL until it is released; a renewal refused
    /// because another host took the lease over ends the heartbeat (both hosts then download
    /// the file; the tier keeps one copy).
    fn start_heartbeat(
        &self,
        key: ObjectPath,
        file: &UpstreamFile,
        version: UpdateVersion,
    ) -> Lease {
        let version = std::sync::Arc::new(std::sync::Mutex::new(version));
        let every = self.timings.lease_ttl / 3;
        let (store, beat_key, shared_version) = (self.store.clone(), key.clone(), version.clone());
        let body = {
            let (node, path, ttl) = (self.node.clone(), file.path.clone(), self.timings.lease_ttl);
            move || lease_payload(&node, &path, ttl)
        };
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let current = shared_version.lock().expect("lease version").clone();
                let options = PutOptions {
                    mode: PutMode::Update(current),
                    ..PutOptions::default()
                };
                match store.put_opts(&beat_key, body(), options).await {
                    Ok(put) => {
                        *shared_version.lock().expect("lease version") = UpdateVersion {
                            e_tag: put.e_tag,
                            version: put.version,
                        };
                    }
                    Err(error) => {
                        tracing::debug!(key = %beat_key, "lease renewal failed: {error}");
                        if matches!(error, object_store::Error::Precondition { .. }) {
                            return;
                        }
                    }
                }
            }
        });
        Lease {
            store: self.store.clone(),
            key,
            heartbeat,
            version,
        }
    }
}
