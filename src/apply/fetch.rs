//! The `Fetch` action: one upstream file into the content store `models/.kmm/downloads/<hash>`,
//! from the cheapest source that has exactly those bytes.
//!
//! 1. Already in the store (a previous run fetched it): nothing to do.
//! 2. The local Hugging Face cache has a blob with that hash and size: hard-linked (or copied)
//!    to `<hash>.hfcache`, verified against the hash, renamed to `<hash>`. The link gets its own
//!    name so that no later download can ever write into the cache's blob through it.
//! 3. Offline: `E_NET` (see [`Engine::check_offline`], which lists every missing file first).
//! 4. The fleet's shared tier ([`crate::shared`]): read into `<hash>.tier`, verified, renamed.
//!    When it lacks the file, this host takes the file's lease and downloads it (then
//!    publishes it), or waits for the host holding the lease to publish it. A bad object is
//!    downloaded and replaced.
//! 5. The network, into `<hash>.part` via [`HubClient::download_resumable`]: a partial download
//!    an earlier run left (and its `.state` file) is continued; network and disk errors keep it
//!    for the next run; wrong bytes are discarded and fetched once more, then `E_VERIFY`.
//!
//! Partials no plan needs any more are deleted by [`Engine::remove_stale_partials`] when the plan
//! is a reconcile of the whole manifest (apply holds the store lock, so no other kmm process is
//! writing them). A narrower plan (`kmm download`, `kmm gc`) cannot tell another declared
//! model's partial from a stale one, so it leaves them (`kmm gc` has its own rule).
//!
//! Edges: writes only under `models/.kmm/downloads/`; never into the Hugging Face cache.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracing::Instrument as _;

use super::{Engine, fsops, spawn_blocking};
use crate::error::{Error, Result};
use crate::hf_cache::HfCache;
use crate::hub::{partial_download_bytes, partial_state_path};
use crate::plan::{Action, Plan};
use crate::shared::{SharedStore, TierRead, lease::Acquired, tier_part_path};
use crate::store::StorePaths;
use crate::upstream::{HASH_BUFFER_LEN, UpstreamFile, hash_reader};

/// Where files may come from besides the network, and what happens to partial downloads.
#[derive(Debug, Clone, Default)]
pub struct FetchSources {
    /// A local Hugging Face cache to take files from before downloading them.
    pub hf_cache: Option<HfCache>,
    /// The fleet's shared tier: read before the network, published to after it.
    pub shared: Option<std::sync::Arc<SharedStore>>,
    /// Delete partial downloads this plan does not fetch: only right when the plan covers
    /// every declared model.
    pub remove_stale_partials: bool,
}

/// Suffixes of files in the downloads folder that belong to an unfinished fetch.
pub(super) const PARTIAL_SUFFIXES: [&str; 5] = [
    ".part",
    ".part.state",
    ".part.state.tmp",
    ".hfcache",
    ".tier",
];

/// Bytes the plan's fetches still need on the disk of the models directory: the size of every
/// file not already in the store, minus what partial downloads already hold or have reserved
/// (large downloads reserve their full length up front) and minus files that can be
/// hard-linked from a Hugging Face cache on the same filesystem.
pub fn disk_bytes_needed(plan: &Plan, paths: &StorePaths, sources: &FetchSources) -> u64 {
    let downloads = paths.downloads_dir();
    let models_dev = device_of(paths.root());
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for planned in &plan.actions {
        let Action::Fetch { model, file, .. } = &planned.action else {
            continue;
        };
        if !seen.insert(file.hash.hex().to_string()) {
            continue;
        }
        if have(&downloads.join(file.hash.hex()), file) {
            continue;
        }
        let linkable = sources
            .hf_cache
            .as_ref()
            .and_then(|cache| cache.blob(model, file))
            .is_some_and(|blob| models_dev.is_some() && device_of(&blob) == models_dev);
        if linkable {
            continue;
        }
        let part = downloads.join(format!("{}.part", file.hash.hex()));
        let held = partial_download_bytes(&part, file).max(reserved_bytes(&part));
        total += file.size - held.min(file.size);
    }
    total
}

/// Disk space allocated to `path` (0 when it does not exist).
fn reserved_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |meta| meta.blocks() * 512)
}

fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut probe = path;
    loop {
        if let Ok(meta) = std::fs::metadata(probe) {
            return Some(meta.dev());
        }
        probe = probe.parent()?;
    }
}

fn have(path: &Path, file: &UpstreamFile) -> bool {
    fs_err::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() == file.size)
}

impl Engine<'_> {
    /// Offline and something must come from the network: fail before touching anything, naming
    /// every file that is neither in the store nor in the Hugging Face cache.
    pub(super) fn check_offline(&self) -> Result<()> {
        if self.ctx.hub.is_some() {
            return Ok(());
        }
        let missing: Vec<String> = self
            .plan
            .actions
            .iter()
            .filter_map(|planned| match &planned.action {
                Action::Fetch { model, file, .. }
                    if !self.have_download(file) && self.cached_blob(model, file).is_none() =>
                {
                    Some(format!("{model}/{}", file.path))
                }
                _ => None,
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let files = if missing.len() == 1 { "file" } else { "files" };
        Err(Error::net(format!(
            "offline: {} {files} must be downloaded",
            missing.len()
        ))
        .caused_by(format!("not in the store or the Hugging Face cache: {}", missing.join(", ")))
        .with_hint(
            "drop --offline (and unset HF_HUB_OFFLINE) to download them, or fill the Hugging Face cache (HF_HUB_CACHE) first",
        ))
    }

    /// The content hashes (hex) of the files this plan fetches.
    pub(super) fn fetched_hashes(&self) -> BTreeSet<&str> {
        self.plan
            .actions
            .iter()
            .filter_map(|planned| match &planned.action {
                Action::Fetch { file, .. } => Some(file.hash.hex()),
                _ => None,
            })
            .collect()
    }

    /// Deletes partial downloads (and their state files) whose hash this plan does not fetch.
    pub(super) fn remove_stale_partials(&self) -> Result<()> {
        let needed = self.fetched_hashes();
        let entries = fs_err::read_dir(&self.downloads)
            .map_err(|e| Error::io(format!("listing {}", self.downloads.display()), &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hash) = PARTIAL_SUFFIXES
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
            else {
                continue;
            };
            if needed.contains(hash) {
                continue;
            }
            let path = entry.path();
            match fs_err::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale partial download")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), &e)),
            }
        }
        Ok(())
    }

    /// A store download written in a boot that may have ended in a crash: hashed again, and
    /// deleted (so that it is downloaded again) when its bytes are not what its name says.
    async fn still_intact(&self, download: &Path, file: &UpstreamFile) -> Result<bool> {
        let (download, file) = (download.to_path_buf(), file.clone());
        spawn_blocking(move || {
            if hash_file(&download, &file).is_ok_and(|hash| hash == file.hash) {
                return Ok(true);
            }
            tracing::warn!(
                "`{}` was damaged before it reached the disk; downloading it again",
                download.display()
            );
            fs_err::remove_file(&download)
                .map_err(|e| Error::io(format!("removing {}", download.display()), &e))?;
            Ok(false)
        })
        .await
    }

    fn cached_blob(&self, model: &str, file: &UpstreamFile) -> Option<PathBuf> {
        self.sources.hf_cache.as_ref()?.blob(model, file)
    }

    pub(super) async fn fetch(&self, model: &str, commit: &str, file: &UpstreamFile) -> Result<()> {
        let reporter = self.ctx.reporter;
        let dest = self.download_path(&file.hash);
        if self.have_download(file)
            && (!self.unconfirmed.contains(file.hash.hex())
                || self.still_intact(&dest, file).await?)
        {
            reporter.step(&format!("{model}: {} already downloaded", file.path));
            return Ok(());
        }
        if let Some(blob) = self.cached_blob(model, file) {
            let span = tracing::info_span!("hf_cache", model, path = %file.path);
            let taken = take_from_cache(blob, dest.clone(), file.clone())
                .instrument(span)
                .await?;
            if taken {
                reporter.step(&format!(
                    "{model}: {} taken from the Hugging Face cache",
                    file.path
                ));
                if let Some(tier) = &self.sources.shared {
                    tier.publish(file, &dest, false).await?;
                }
                return Ok(());
            }
        }
        let Some(hub) = self.ctx.hub else {
            return Err(Error::net(format!(
                "offline: {} of {model} must be downloaded",
                file.path
            ))
            .with_hint("drop --offline (and unset HF_HUB_OFFLINE) to download it"));
        };
        let mut replace = false;
        let mut lease = None;
        if let Some(tier) = &self.sources.shared {
            match self
                .read_from_tier(tier, hub, model, commit, file, &dest)
                .await?
            {
                TierRead::Installed => return Ok(()),
                TierRead::Bad(why) => {
                    tracing::warn!(
                        "the shared store's copy of {model}/{} is bad ({why}); downloading it and replacing the copy",
                        file.path
                    );
                    replace = true;
                }
                TierRead::Missing | TierRead::Unusable => {}
            }
            // A bad object is replaced by whoever finds it: no lease, whose holder would
            // publish the same good bytes.
            if !replace {
                let waiting = |holder: &str| {
                    reporter.step(&format!(
                        "{model}: waiting for {holder} to publish {} to the shared store",
                        file.path
                    ))
                };
                match tier.lease_or_wait(file, &waiting).await? {
                    Acquired::Mine(held) => lease = Some(held),
                    Acquired::Published => {
                        if self
                            .read_from_tier(tier, hub, model, commit, file, &dest)
                            .await?
                            == TierRead::Installed
                        {
                            return Ok(());
                        }
                    }
                    Acquired::GaveUp { holder } => reporter.step(&format!(
                        "{model}: {holder} did not publish {} in time; downloading it",
                        file.path
                    )),
                    Acquired::Unusable => {}
                }
            }
        }
        let mut outcome = self.download(hub, model, commit, file, &dest).await;
        if outcome.is_ok()
            && let Some(tier) = &self.sources.shared
        {
            outcome = tier.publish(file, &dest, replace).await;
        }
        // After the publish, or on failure so the next host need not wait for the TTL.
        if let Some(held) = lease {
            held.release().await;
        }
        outcome
    }

    /// `file` from the shared tier into the store, read by the hub client's chunk engine from a
    /// presigned URL and verified; anything but `Installed` leaves nothing behind except a
    /// resumable `.tier` partial after a network failure.
    async fn read_from_tier(
        &self,
        tier: &SharedStore,
        hub: &crate::hub::HubClient,
        model: &str,
        commit: &str,
        file: &UpstreamFile,
        dest: &Path,
    ) -> Result<TierRead> {
        let url = match tier.read_url(file).await? {
            Ok(url) => url,
            Err(outcome) => return Ok(outcome),
        };
        let reporter = self.ctx.reporter;
        let part = tier_part_path(&self.downloads, &file.hash);
        reporter.download_started(model, &file.path, file.size);
        let progress = |bytes: u64| reporter.download_progress(model, &file.path, bytes);
        let read = hub
            .download_resumable_from_url(url, model, commit, file, &part, &progress)
            .instrument(tracing::info_span!("shared_store", model, path = %file.path))
            .await;
        match read {
            Ok(()) => {}
            Err(error) if error.code() == crate::error::ErrorCode::Verify => {
                let _ = fs_err::remove_file(&part);
                return Ok(TierRead::Bad(error.to_string()));
            }
            Err(error) => {
                tier.failed_because(format!("reading a blob: {error}"))?;
                return Ok(TierRead::Unusable);
            }
        }
        self.store_verified(&part, dest)?;
        reporter.download_finished(model, &file.path);
        reporter.step(&format!(
            "{model}: {} taken from the shared store",
            file.path
        ));
        let mut report = self.report.lock().expect("report lock");
        report.files_from_shared_store += 1;
        report.bytes_from_shared_store += file.size;
        Ok(TierRead::Installed)
    }

    /// Renames a verified partial into the store under its hash. The client leaves durability
    /// to us: either the journal names these bytes (see `crate::durability`) or they reach the
    /// disk before the name.
    fn store_verified(&self, part: &Path, dest: &Path) -> Result<()> {
        if !self.defer_sync {
            fs_err::File::open(part)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(format!("syncing {}", part.display()), &e))?;
        }
        fs_err::rename(part, dest).map_err(|e| Error::io(format!("storing {}", dest.display()), &e))
    }

    /// `file` from the hub into the store (resumable, verified).
    async fn download(
        &self,
        hub: &crate::hub::HubClient,
        model: &str,
        commit: &str,
        file: &UpstreamFile,
        dest: &Path,
    ) -> Result<()> {
        let reporter = self.ctx.reporter;
        let part = self.downloads.join(format!("{}.part", file.hash.hex()));
        reporter.download_started(model, &file.path, file.size);
        let progress = |bytes: u64| reporter.download_progress(model, &file.path, bytes);
        hub.download_resumable(model, commit, file, &part, &progress)
            .instrument(tracing::info_span!("download", model, path = %file.path, size = file.size))
            .await?;
        {
            let _span = tracing::info_span!("verify", model, path = %file.path).entered();
            // The client verified the hash; the size check guards the rename.
            let size = fs_err::metadata(&part)
                .map_err(|e| Error::io(format!("reading {}", part.display()), &e))?
                .len();
            if size != file.size {
                let _ = fs_err::remove_file(&part);
                let _ = fs_err::remove_file(partial_state_path(&part));
                return Err(Error::verify(format!(
                    "{} of {model}: downloaded {size} bytes, expected {}",
                    file.path, file.size
                )));
            }
            self.store_verified(&part, dest)?;
        }
        reporter.download_finished(model, &file.path);
        let mut report = self.report.lock().expect("report lock");
        report.files_downloaded += 1;
        report.bytes_downloaded += file.size;
        Ok(())
    }
}

/// Copies (reflinks where it can) a Hugging Face cache blob into the store and verifies it. `Ok(false)`: the
/// blob does not hold the bytes its name promises (nothing is left behind; download instead).
async fn take_from_cache(blob: PathBuf, dest: PathBuf, file: UpstreamFile) -> Result<bool> {
    spawn_blocking(move || {
        let mut name = dest.as_os_str().to_owned();
        name.push(".hfcache");
        let staged = PathBuf::from(name);
        let _ = fs_err::remove_file(&staged);
        // A copy (or reflink), not a hard link: the cache is another tool's store, and an edit
        // to the installed model must not change its blob.
        fsops::place(&blob, &staged, fsops::Placement::Copy)?;
        let actual = hash_file(&staged, &file);
        match actual {
            Ok(hash) if hash == file.hash => {
                fs_err::rename(&staged, &dest)
                    .map_err(|e| Error::io(format!("storing {}", dest.display()), &e))?;
                Ok(true)
            }
            other => {
                let _ = fs_err::remove_file(&staged);
                tracing::warn!(
                    blob = %blob.display(),
                    "a Hugging Face cache blob does not match its hash ({}); downloading instead",
                    match other {
                        Ok(hash) => hash.display(),
                        Err(error) => error.to_string(),
                    }
                );
                Ok(false)
            }
        }
    })
    .await
}

fn hash_file(path: &Path, file: &UpstreamFile) -> Result<crate::upstream::FileHash> {
    let failed = |e: &std::io::Error| Error::io(format!("reading {}", path.display()), e);
    let mut reader = fs_err::File::open(path).map_err(|e| failed(&e))?;
    let mut buffer = vec![0u8; HASH_BUFFER_LEN];
    let (total, hash) =
        hash_reader(&mut reader, &file.hash, file.size, &mut buffer).map_err(|e| failed(&e))?;
    if total != file.size {
        return Err(Error::verify(format!(
            "{} has {total} bytes, expected {}",
            path.display(),
            file.size
        )));
    }
    Ok(hash)
}
