//! Large files in parallel Range chunks, resumable across runs.
//!
//! The file is cut into `chunk_size` chunks; connections each take the next missing chunk, ask
//! for `Range: bytes={start}-{end}` and write what arrives in place (positioned `pwritev` of the
//! body frames as they came) into `part`, which is created at its final length (its blocks
//! reserved where the filesystem can). Each connection holds at most about
//! [`WRITE_BUFFER_BYTES`] of frames, so memory does not grow with the file.
//! Four connections start; up to `connections_per_file` join once four chunks in a row arrive
//! slower than 60 MB/s each, the sign of a per-connection cap (CDNs on long links), unless kmm
//! is keeping a core busy meanwhile (then the machine is the limit). That is a probe: once an
//! extra connection has finished a chunk, the aggregate rate over the next [`PROBE_WINDOW`]
//! must be 25% above the rate before, or the extra connections stop after their current chunk.
//! A link shared by every connection, or a busy machine, also makes chunks slow, and there more
//! connections only cost CPU and memory.
//!
//! Verification without a second download: a hashing thread follows the contiguous prefix of
//! completed chunks and maps those bytes (from the page cache, moments after they were written;
//! [`HASH_WINDOW_BYTES`] at a time) through the file's [`ContentHasher`], so sha256 / git sha1
//! see the bytes in order
//! while later chunks are still arriving. The hash is checked once the last chunk lands.
//!
//! Resume across runs: after each completed chunk, `<part>.state` is rewritten atomically
//! (temp file + rename) with the expected hash and size, the chunk size and the completed
//! chunks. A later run trusts it only if everything matches (same hash, size, a `part` of the
//! full length, known format); anything else starts over. Correctness does not depend on the
//! state being right: the whole-file hash at the end catches any bad chunk, and the caller then
//! discards the file and fetches it once more. A killed run loses at most the chunks that were
//! in flight.
//!
//! In-run retries per chunk: a dropped or stalled body continues from the chunk's last written
//! byte; 408/429/5xx back off (honouring `Retry-After`) as [`super::retry`] says; a server that
//! answers a Range with a full `200` makes [`fetch`] return `Ok(false)` so the caller falls back
//! to one sequential stream.
//!
//! Edges: writes only `part` and its state file; the rename into the store belongs to `apply`.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use reqwest::header;
use serde::{Deserialize, Serialize};
use url::Url;

use super::errors::{self, Target, Transient};
use super::{HubClient, SendError, redact_url, retry, urls};
use crate::error::{Error, Result};
use crate::upstream::{ContentHasher, UpstreamFile};

/// 16 MiB: big enough that a request's latency is noise, small enough that a kill loses little.
pub const DEFAULT_CHUNK_SIZE: u64 = 16 << 20;
/// Files from 64 MiB on are fetched in chunks; smaller ones in one stream.
pub const DEFAULT_PARALLEL_MIN_SIZE: u64 = 64 << 20;
/// Most connections per large file.
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Connections a large file starts with. More (up to the configured most) join only when a
/// connection turns out to be slow (a per-connection cap, as CDNs apply on long links): on a
/// fast link extra connections only cost CPU.
const START_CONNECTIONS: usize = 4;
/// [`START_CONNECTIONS`] chunks in a row that arrived slower than this per connection let the
/// extra connections join (unless the CPU is busy, see [`SlowRun`]).
const SLOW_CONNECTION_BYTES_PER_SEC: f64 = 60e6;
/// Cores kmm keeps busy (CPU seconds per second) from which slow chunks mean a busy machine
/// rather than a capped link. Measured on a 2-core VM: four connections capped at 50 MB/s each
/// keep kmm at 0.25-0.28 cores; once the VM's page-cache writes turn slow, kmm's slow chunks
/// come with 1.2-1.3 cores busy.
const BUSY_CORES: f64 = 0.75;
/// How long the extra connections run before the aggregate rate decides whether they stay.
const PROBE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// The aggregate rate with the extra connections must beat the rate before by this factor.
const PROBE_GAIN: f64 = 1.25;
/// Bytes a connection gathers before one positioned write.
const WRITE_BUFFER_BYTES: usize = 512 << 10;
/// Bytes the hasher maps (or reads) at a time.
const HASH_WINDOW_BYTES: u64 = 8 << 20;
const STATE_VERSION: u32 = 1;

/// `<part>.state`.
pub fn state_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".state");
    PathBuf::from(name)
}

/// Removes the state file of `part`, if any.
pub fn remove_state(part: &Path) {
    let path = state_path(part);
    if let Err(err) = fs_err::remove_file(&path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("could not remove {}: {err}", path.display());
    }
}

/// What survives a kill: which chunks of which file are in `part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkState {
    pub version: u32,
    /// `sha256:<hex>` / `git-sha1:<hex>` of the whole file.
    pub hash: String,
    pub size: u64,
    pub chunk_size: u64,
    /// Indices of the chunks completely written.
    pub done: Vec<u64>,
}

impl ChunkState {
    /// The state for `file` if `part` and its state file describe a usable partial download.
    pub fn load_valid(part: &Path, file: &UpstreamFile) -> Option<ChunkState> {
        let text = std::fs::read(state_path(part)).ok()?;
        let state: ChunkState = serde_json::from_slice(&text).ok()?;
        let part_len = std::fs::metadata(part).ok()?.len();
        let chunks = state.chunk_count();
        let valid = state.version == STATE_VERSION
            && state.hash == file.hash.display()
            && state.size == file.size
            && state.chunk_size > 0
            && part_len == file.size
            && state.done.iter().all(|&index| index < chunks);
        valid.then_some(state)
    }

    fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Bytes of the file the completed chunks hold.
    pub fn done_bytes(&self) -> u64 {
        self.done
            .iter()
            .map(|&index| {
                chunk_range(index, self.chunk_size, self.size).1
                    - chunk_range(index, self.chunk_size, self.size).0
                    + 1
            })
            .sum()
    }

    fn save(&self, part: &Path) -> Result<()> {
        let path = state_path(part);
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let body = serde_json::to_vec(self).expect("state serializes");
        fs_err::write(&tmp, body)
            .and_then(|()| fs_err::rename(&tmp, &path))
            .map_err(|err| Error::io(format!("recording progress in `{}`", path.display()), &err))
    }
}

/// Bytes already in a resumable partial download of `file` at `part` (0 when there is none).
pub fn partial_bytes(part: &Path, file: &UpstreamFile) -> u64 {
    if let Some(state) = ChunkState::load_valid(part, file) {
        return state.done_bytes();
    }
    // A sequential partial without a state file holds its length in valid bytes.
    if state_path(part).exists() {
        return 0;
    }
    std::fs::metadata(part)
        .map(|meta| meta.len())
        .ok()
        .filter(|&len| len <= file.size)
        .unwrap_or(0)
}

/// Inclusive byte range of chunk `index`.
fn chunk_range(index: u64, chunk_size: u64, size: u64) -> (u64, u64) {
    let start = index * chunk_size;
    (start, (start + chunk_size).min(size) - 1)
}

/// Shared by the connections of one download.
struct Shared {
    done: Vec<bool>,
    pending: VecDeque<u64>,
    /// The URL that last served bytes (the CDN for LFS files).
    url: Url,
    state: ChunkState,
    /// Length of the completed prefix already sent to the hasher.
    prefix: u64,
}

/// Fetches `file` into `part` in chunks. `Ok(true)`: `part` holds the verified file.
/// `Ok(false)`: the server does not do ranges; nothing useful is in `part`.
pub(super) async fn fetch(
    client: &HubClient,
    repo_id: &str,
    commit: &str,
    file: &UpstreamFile,
    part: &Path,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<bool> {
    let io_error =
        |what: &str, err: &std::io::Error| Error::io(format!("{what} `{}`", part.display()), err);
    let state = match ChunkState::load_valid(part, file) {
        Some(state) => {
            tracing::debug!(file = %file.path, chunks_done = state.done.len(), "resuming a chunked download");
            state
        }
        None => {
            remove_state(part);
            let handle = fs_err::File::create(part).map_err(|e| io_error("creating", &e))?;
            preallocate(handle.file(), file.size).map_err(|e| io_error("sizing", &e))?;
            let state = ChunkState {
                version: STATE_VERSION,
                hash: file.hash.display(),
                size: file.size,
                chunk_size: client.config.chunk_size,
                done: Vec::new(),
            };
            state.save(part)?;
            state
        }
    };
    let handle = Arc::new(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(part)
            .map_err(|e| io_error("opening", &e))?,
    );
    let chunks = state.chunk_count();
    let mut done = vec![false; chunks as usize];
    for &index in &state.done {
        done[index as usize] = true;
    }
    let pending: VecDeque<u64> = (0..chunks).filter(|&i| !done[i as usize]).collect();
    let resolve = client.parse_url(&urls::resolve_url(
        client.endpoint(),
        repo_id,
        commit,
        &file.path,
    ))?;
    let chunk_size = state.chunk_size;
    let connections = client.config.connections_per_file.min(pending.len()).max(1);
    let start_connections = START_CONNECTIONS.min(connections);
    let shared = Mutex::new(Shared {
        done,
        pending,
        url: resolve.clone(),
        state,
        prefix: 0,
    });

    // The hasher follows the completed prefix on its own thread.
    let (prefix_tx, prefix_rx) = mpsc::channel::<u64>();
    let hasher_file = handle.clone();
    let hasher_target = (file.hash.clone(), file.size);
    let hasher = tokio::task::spawn_blocking(move || {
        hash_prefix(&hasher_file, &hasher_target.0, hasher_target.1, prefix_rx)
    });
    advance_prefix(&shared, &prefix_tx);

    let target = Target::file(repo_id, commit, &file.path);
    let context = ChunkContext {
        client,
        file,
        part,
        handle: &handle,
        shared: &shared,
        resolve: &resolve,
        target: &target,
        chunk_size,
        prefix_tx: &prefix_tx,
        on_progress,
        start_connections,
        connections,
        allowed: AtomicUsize::new(start_connections),
        received: AtomicU64::new(0),
        started: Instant::now(),
        cpu_at_start: crate::sys::process_cpu_time(),
        probe: Mutex::new(Probe::NotYet { slow_in_a_row: 0 }),
        changed: tokio::sync::Notify::new(),
    };
    let workers = (0..connections).map(|number| context.worker(number));
    let outcome = futures_util::future::try_join_all(workers).await;
    drop(prefix_tx);
    let hashed = hasher
        .await
        .map_err(|e| Error::internal(format!("the hashing task failed: {e}")))?;
    match outcome {
        Err(ChunkError::NoRanges) => {
            remove_state(part);
            return Ok(false);
        }
        Err(ChunkError::Fatal(error)) => return Err(error),
        Ok(_) => {}
    }
    let (hashed_bytes, actual) = hashed.map_err(|e| io_error("reading back", &e))?;
    if hashed_bytes != file.size {
        return Err(Error::internal(format!(
            "hashed {hashed_bytes} of {} bytes of `{}`",
            file.size, file.path
        )));
    }
    super::check_served_hash(file, repo_id, commit, &actual)?;
    Ok(true)
}

/// Gives `file` its final length. On Linux the blocks are reserved up front (`fallocate`):
/// a full disk fails here, before the first byte, and the filesystem skips its per-page
/// delayed-allocation bookkeeping while the chunks land. Where that is not supported, the file
/// is only extended (sparse).
fn preallocate(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for writing; fallocate only changes the file's extents.
        let reserved = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
        if reserved == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
    }
    file.set_len(size)
}

/// Sends the hasher the new end of the completed prefix, if it grew.
fn advance_prefix(shared: &Mutex<Shared>, prefix_tx: &mpsc::Sender<u64>) {
    let mut shared = shared.lock().expect("chunk state lock");
    let chunk_size = shared.state.chunk_size;
    let size = shared.state.size;
    let first_missing = shared
        .done
        .iter()
        .position(|done| !done)
        .map(|index| index as u64 * chunk_size)
        .unwrap_or(size);
    if first_missing > shared.prefix {
        shared.prefix = first_missing;
        let _ = prefix_tx.send(first_missing);
    }
}

/// Hashes `[0, prefix)` as the prefix grows, until the sender is dropped. Returns how many bytes
/// were hashed and the hash.
fn hash_prefix(
    file: &std::fs::File,
    expected: &crate::upstream::FileHash,
    size: u64,
    prefixes: mpsc::Receiver<u64>,
) -> std::io::Result<(u64, crate::upstream::FileHash)> {
    let mut hasher = ContentHasher::for_hash(expected, size);
    let mut hashed = 0u64;
    let mut buffer = Vec::new();
    while let Ok(mut target) = prefixes.recv() {
        while let Ok(newer) = prefixes.try_recv() {
            target = newer;
        }
        while hashed < target {
            let want = HASH_WINDOW_BYTES.min(target - hashed) as usize;
            // Mapped, the hasher reads the page cache where it is instead of copying it out
            // first (that copy was 6% of a 2 GiB download's CPU time); the window bounds what
            // the mapping adds to the resident set. Reading is the fallback where mapping fails.
            // SAFETY: the part file is kmm's own, created at its full length and never
            // truncated while the download runs (the store lock keeps other kmm processes out),
            // and this range was written by completed chunks that nothing writes again.
            let mapped = unsafe {
                memmap2::MmapOptions::new()
                    .offset(hashed)
                    .len(want)
                    .map(file)
            };
            match mapped {
                Ok(window) => hasher.update(&window),
                Err(_) => {
                    buffer.resize(want, 0);
                    file.read_exact_at(&mut buffer, hashed)?;
                    hasher.update(&buffer);
                }
            }
            hashed += want as u64;
        }
    }
    Ok((hashed, hasher.finish()))
}

enum ChunkError {
    NoRanges,
    Fatal(Error),
}

impl From<Error> for ChunkError {
    fn from(error: Error) -> Self {
        ChunkError::Fatal(error)
    }
}

struct ChunkContext<'a> {
    client: &'a HubClient,
    file: &'a UpstreamFile,
    part: &'a Path,
    handle: &'a std::fs::File,
    shared: &'a Mutex<Shared>,
    resolve: &'a Url,
    target: &'a Target<'a>,
    chunk_size: u64,
    prefix_tx: &'a mpsc::Sender<u64>,
    on_progress: &'a (dyn Fn(u64) + Send + Sync),
    start_connections: usize,
    connections: usize,
    /// Connections numbered below this may take chunks; the others wait (or stop).
    allowed: AtomicUsize,
    /// Body bytes received by all connections, for the aggregate rate.
    received: AtomicU64,
    started: Instant,
    /// Process CPU time when the download started, to tell a busy machine from a slow link.
    cpu_at_start: Option<std::time::Duration>,
    probe: Mutex<Probe>,
    /// Wakes connections waiting for `allowed` to grow (or for the work to run out).
    changed: tokio::sync::Notify,
}

/// Whether more connections were tried (see the module docs).
#[derive(Clone, Copy)]
enum Probe {
    /// Counts the slow chunks since the last fast one: one slow chunk alone is no sign of a
    /// cap (the first ones also pay for connecting, and a busy moment slows any chunk).
    NotYet {
        slow_in_a_row: usize,
    },
    /// The extra connections are starting; `rate_before` is the rate the first ones reached.
    Joining {
        rate_before: f64,
    },
    Running {
        since: Instant,
        received_before: u64,
        rate_before: f64,
    },
    Decided,
}

impl ChunkContext<'_> {
    /// Takes missing chunks until none is left. Connection `number` first waits until it is
    /// allowed (a slow chunk says that more connections may help, or the work runs out), and
    /// stops when it no longer is.
    async fn worker(&self, number: usize) -> std::result::Result<(), ChunkError> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if number < self.allowed.load(Ordering::Relaxed) {
                break;
            }
            if matches!(*self.probe.lock().expect("probe lock"), Probe::Decided)
                || self
                    .shared
                    .lock()
                    .expect("chunk state lock")
                    .pending
                    .is_empty()
            {
                return Ok(());
            }
            notified.await;
        }
        let result = self.take_chunks(number).await;
        // Waiting connections re-check: the work may have run out (or failed).
        if result.is_err() {
            self.shared
                .lock()
                .expect("chunk state lock")
                .pending
                .clear();
        }
        self.changed.notify_waiters();
        result
    }

    async fn take_chunks(&self, number: usize) -> std::result::Result<(), ChunkError> {
        while number < self.allowed.load(Ordering::Relaxed) {
            let next = self
                .shared
                .lock()
                .expect("chunk state lock")
                .pending
                .pop_front();
            let Some(index) = next else {
                return Ok(());
            };
            let started = Instant::now();
            self.fetch_chunk(index).await?;
            let (start, end) = chunk_range(index, self.chunk_size, self.file.size);
            let rate = (end - start + 1) as f64 / started.elapsed().as_secs_f64().max(1e-6);
            self.adapt(number, rate);
            {
                let mut shared = self.shared.lock().expect("chunk state lock");
                shared.done[index as usize] = true;
                shared.state.done.push(index);
                shared.state.save(self.part)?;
            }
            advance_prefix(self.shared, self.prefix_tx);
        }
        Ok(())
    }

    /// After each chunk: starts the probe when the chunk was slow, and once the probe has run
    /// [`PROBE_WINDOW`], keeps the extra connections only if the aggregate rate rose.
    fn adapt(&self, number: usize, chunk_rate: f64) {
        let mut probe = self.probe.lock().expect("probe lock");
        let received = self.received.load(Ordering::Relaxed);
        match *probe {
            Probe::NotYet { slow_in_a_row } => {
                if self.connections <= self.start_connections {
                    return;
                }
                let mut cores_busy = None;
                match after_chunk(slow_in_a_row, chunk_rate, || {
                    cores_busy = self.cores_busy();
                    cores_busy
                }) {
                    SlowRun::Counting(slow_in_a_row) => {
                        *probe = Probe::NotYet { slow_in_a_row };
                        return;
                    }
                    SlowRun::MachineBusy => {
                        tracing::debug!(file = %self.file.path, chunk_rate, ?cores_busy, "slow chunks, but the CPU is busy: no more connections");
                        *probe = Probe::NotYet { slow_in_a_row: 0 };
                        return;
                    }
                    SlowRun::TryMore => {}
                }
                let elapsed = self.started.elapsed().as_secs_f64().max(1e-6);
                *probe = Probe::Joining {
                    rate_before: received as f64 / elapsed,
                };
                tracing::debug!(file = %self.file.path, chunk_rate, ?cores_busy, "slow connections: trying more");
                self.allowed.store(self.connections, Ordering::Relaxed);
                self.changed.notify_waiters();
            }
            // The window opens once an extra connection has finished a whole chunk, so that
            // connecting and starting the new requests are not counted against them.
            Probe::Joining { rate_before } => {
                if number >= self.start_connections {
                    *probe = Probe::Running {
                        since: Instant::now(),
                        received_before: received,
                        rate_before,
                    };
                }
            }
            Probe::Running {
                since,
                received_before,
                rate_before,
            } => {
                let elapsed = since.elapsed();
                if elapsed < PROBE_WINDOW {
                    return;
                }
                let rate = (received - received_before) as f64 / elapsed.as_secs_f64();
                *probe = Probe::Decided;
                if rate < rate_before * PROBE_GAIN {
                    tracing::debug!(file = %self.file.path, rate, rate_before, "more connections did not help");
                    self.allowed
                        .store(self.start_connections, Ordering::Relaxed);
                }
                self.changed.notify_waiters();
            }
            Probe::Decided => {}
        }
    }

    /// Cores this process has kept busy on average since the download started.
    fn cores_busy(&self) -> Option<f64> {
        let used = crate::sys::process_cpu_time()?.checked_sub(self.cpu_at_start?)?;
        Some(used.as_secs_f64() / self.started.elapsed().as_secs_f64().max(1e-3))
    }

    /// One chunk, with retries that continue from its last written byte.
    async fn fetch_chunk(&self, index: u64) -> std::result::Result<(), ChunkError> {
        let (start, end) = chunk_range(index, self.chunk_size, self.file.size);
        let max_retries = self.client.config.max_retries;
        let max_attempts = max_retries.saturating_add(1).saturating_mul(4);
        let mut attempts = 0u32;
        let mut failures_without_progress = 0u32;
        let mut written = 0u64;
        loop {
            attempts += 1;
            let before = written;
            let url = self.shared.lock().expect("chunk state lock").url.clone();
            let (transient, retry_after) = match self.attempt(&url, start, end, &mut written).await
            {
                Ok(()) => return Ok(()),
                Err(Step::NoRanges) => return Err(ChunkError::NoRanges),
                Err(Step::Fatal(error)) => return Err(ChunkError::Fatal(error)),
                Err(Step::Retry(transient, retry_after)) => (transient, retry_after),
            };
            if written > before {
                failures_without_progress = 0;
            } else {
                failures_without_progress += 1;
            }
            if failures_without_progress > max_retries
                || attempts >= max_attempts
                || retry_after.is_some_and(|wait| wait > retry::MAX_RETRY_AFTER)
            {
                return Err(ChunkError::Fatal(errors::retries_exhausted(
                    self.target,
                    &redact_url(url.as_str()),
                    attempts,
                    &transient,
                )));
            }
            let delay = retry::delay_before_retry(
                self.client.config.retry_base_delay,
                failures_without_progress.saturating_sub(1),
                retry_after,
            );
            tracing::debug!(file = %self.file.path, chunk = index, attempt = attempts, failure = ?transient, ?delay, "retrying a chunk");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        start: u64,
        end: u64,
        written: &mut u64,
    ) -> std::result::Result<(), Step> {
        let from = start + *written;
        let mut response = match self
            .client
            .send_range(url.clone(), Some((from, Some(end))))
            .await
        {
            Ok(response) => response,
            Err(SendError::Fatal(error)) => return Err(Step::Fatal(error)),
            Err(SendError::Transport(transient)) => return Err(Step::Retry(transient, None)),
        };
        let status = response.status().as_u16();
        match status {
            206 => {
                let content_range = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(parse_content_range);
                match content_range {
                    Some((got_start, got_end, total)) if got_start == from && got_end == end => {
                        if total.is_some_and(|total| total != self.file.size) {
                            return Err(Step::Fatal(super::size_mismatch(
                                self.file,
                                format!("the server announces {total:?} bytes"),
                            )));
                        }
                    }
                    _ => return Err(Step::NoRanges),
                }
            }
            200 => return Err(Step::NoRanges),
            _ if retry::is_retryable_status(status) => {
                return Err(Step::Retry(
                    Transient::Status(status),
                    retry::parse_retry_after(response.headers()),
                ));
            }
            401 | 403 | 404 | 410 if url != self.resolve => {
                // The signed CDN URL has expired: resolve again.
                self.shared.lock().expect("chunk state lock").url = self.resolve.clone();
                return Err(Step::Retry(Transient::Status(status), None));
            }
            _ => {
                let final_url = redact_url(response.url().as_str());
                let headers = response.headers().clone();
                let body = response.bytes().await.unwrap_or_default();
                return Err(Step::Fatal(errors::error_from_status(
                    status,
                    &headers,
                    &body[..body.len().min(64 << 10)],
                    self.target,
                    &final_url,
                    self.client.secret(),
                )));
            }
        }
        if response.url() != url {
            self.shared.lock().expect("chunk state lock").url = response.url().clone();
        }
        let length = end - start + 1;
        // The frames as they came (no copy): written together once they add up.
        let mut buffer = Frames::default();
        let result = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    if *written + (buffer.len + bytes.len()) as u64 > length {
                        break Err(Step::Fatal(Error::verify(format!(
                            "`{}`: the server sent more bytes than the range asked for",
                            self.file.path
                        ))));
                    }
                    (self.on_progress)(bytes.len() as u64);
                    self.received
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    buffer.push(bytes);
                    if buffer.len >= WRITE_BUFFER_BYTES || buffer.frames.len() >= MAX_FRAMES {
                        self.flush(&mut buffer, start, written)?;
                    }
                }
                Ok(None) => break Ok(()),
                Err(err) => break Err(Step::Retry(Transient::from_reqwest(&err), None)),
            }
        };
        // Bytes that arrived before a drop are good: keep them for the retry.
        self.flush(&mut buffer, start, written)?;
        result?;
        if *written < length {
            return Err(Step::Retry(
                Transient::Interrupted(format!(
                    "the body ended after {} of {length} bytes of a chunk",
                    *written
                )),
                None,
            ));
        }
        Ok(())
    }

    fn flush(&self, buffer: &mut Frames, start: u64, written: &mut u64) -> Result<()> {
        if buffer.len == 0 {
            return Ok(());
        }
        write_all_vectored_at(self.handle, &buffer.frames, start + *written)
            .map_err(|err| Error::io(format!("writing `{}`", self.part.display()), &err))?;
        *written += buffer.len as u64;
        buffer.frames.clear();
        buffer.len = 0;
        Ok(())
    }
}

/// What one more chunk at `chunk_rate` says about adding connections.
#[derive(Debug, PartialEq)]
enum SlowRun {
    /// The run of slow chunks in a row so far (a fast chunk ends it).
    Counting(usize),
    /// [`START_CONNECTIONS`] slow chunks in a row while kmm keeps [`BUSY_CORES`] busy: the
    /// machine, not the link, is the limit (on a slow VM page-cache writes cost several times
    /// their usual CPU), and more connections would only add work. The run starts over.
    MachineBusy,
    /// [`START_CONNECTIONS`] slow chunks in a row with CPU to spare: the sign of a
    /// per-connection cap, so extra connections are tried.
    TryMore,
}

/// `cores_busy` (CPU seconds per second kmm has used, `None` if unknown) is asked only once
/// the run is long enough.
fn after_chunk(
    slow_in_a_row: usize,
    chunk_rate: f64,
    cores_busy: impl FnOnce() -> Option<f64>,
) -> SlowRun {
    if chunk_rate >= SLOW_CONNECTION_BYTES_PER_SEC {
        return SlowRun::Counting(0);
    }
    let slow_in_a_row = slow_in_a_row + 1;
    if slow_in_a_row < START_CONNECTIONS {
        SlowRun::Counting(slow_in_a_row)
    } else if cores_busy().is_some_and(|cores| cores >= BUSY_CORES) {
        SlowRun::MachineBusy
    } else {
        SlowRun::TryMore
    }
}

/// Most frames gathered into one positioned write, and most given to one `pwritev` (Linux and
/// macOS take 1024, more is `EINVAL`).
const MAX_FRAMES: usize = 256;

/// Body frames waiting to be written, and how many bytes they hold.
#[derive(Default)]
struct Frames {
    frames: Vec<bytes::Bytes>,
    len: usize,
}

impl Frames {
    fn push(&mut self, frame: bytes::Bytes) {
        self.len += frame.len();
        self.frames.push(frame);
    }
}

/// Writes `frames` back to back at `offset` with positioned vectored writes (`pwritev`): one
/// system call for many frames, without first copying them into one buffer (that copy was 7%
/// of a 2 GiB download's CPU time).
fn write_all_vectored_at(
    file: &std::fs::File,
    frames: &[bytes::Bytes],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices: Vec<&[u8]> = frames.iter().map(|frame| &frame[..]).collect();
    let mut first = 0;
    while first < slices.len() {
        let iovecs: Vec<libc::iovec> = slices[first..]
            .iter()
            .take(MAX_FRAMES)
            .map(|slice| libc::iovec {
                iov_base: slice.as_ptr() as *mut libc::c_void,
                iov_len: slice.len(),
            })
            .collect();
        let count = iovecs.len() as libc::c_int;
        // SAFETY: every iovec points into a live slice of `frames` (borrowed for the call) and
        // the descriptor is open; pwritev only reads that memory.
        let wrote = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iovecs.as_ptr(),
                count,
                offset as libc::off_t,
            )
        };
        if wrote < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if wrote == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = wrote as usize;
        offset += left as u64;
        // Skip what was written; a short write resumes inside a frame.
        while first < slices.len() && left >= slices[first].len() {
            left -= slices[first].len();
            first += 1;
        }
        if left > 0 {
            slices[first] = &slices[first][left..];
        }
    }
    Ok(())
}

enum Step {
    Retry(Transient, Option<std::time::Duration>),
    NoRanges,
    Fatal(Error),
}

impl From<Error> for Step {
    fn from(error: Error) -> Self {
        Step::Fatal(error)
    }
}

/// `Content-Range: bytes {start}-{end}/{total|*}` -> (start, end, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{FileHash, sha256_hex};

    fn file(size: u64) -> UpstreamFile {
        UpstreamFile {
            path: "big.bin".into(),
            size,
            hash: FileHash::Sha256(sha256_hex(b"x")),
        }
    }

    #[test]
    fn chunk_ranges_cover_the_file() {
        assert_eq!(chunk_range(0, 10, 25), (0, 9));
        assert_eq!(chunk_range(2, 10, 25), (20, 24));
        let state = ChunkState {
            version: STATE_VERSION,
            hash: String::new(),
            size: 25,
            chunk_size: 10,
            done: vec![0, 2],
        };
        assert_eq!(state.chunk_count(), 3);
        assert_eq!(state.done_bytes(), 15);
    }

    #[test]
    fn the_state_is_trusted_only_when_everything_matches() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("x.part");
        let wanted = file(30);
        let state = ChunkState {
            version: STATE_VERSION,
            hash: wanted.hash.display(),
            size: 30,
            chunk_size: 10,
            done: vec![1],
        };
        // No part file yet.
        state.save(&part).unwrap();
        assert_eq!(ChunkState::load_valid(&part, &wanted), None);
        fs_err::write(&part, vec![0u8; 30]).unwrap();
        assert_eq!(ChunkState::load_valid(&part, &wanted), Some(state.clone()));
        assert_eq!(partial_bytes(&part, &wanted), 10);
        // Another file, another size, a bad chunk index, a short part, garbage: start over.
        let mut other = wanted.clone();
        other.hash = FileHash::Sha256(sha256_hex(b"y"));
        assert_eq!(ChunkState::load_valid(&part, &other), None);
        assert_eq!(ChunkState::load_valid(&part, &file(31)), None);
        let mut bad = state.clone();
        bad.done = vec![3];
        bad.save(&part).unwrap();
        assert_eq!(ChunkState::load_valid(&part, &wanted), None);
        state.save(&part).unwrap();
        fs_err::write(&part, vec![0u8; 29]).unwrap();
        assert_eq!(ChunkState::load_valid(&part, &wanted), None);
        fs_err::write(&part, vec![0u8; 30]).unwrap();
        fs_err::write(state_path(&part), b"{not json").unwrap();
        assert_eq!(ChunkState::load_valid(&part, &wanted), None);
        assert_eq!(partial_bytes(&part, &wanted), 0);
        remove_state(&part);
        // Without a state file, a sequential partial counts by its length.
        assert_eq!(partial_bytes(&part, &wanted), 30);
    }

    #[test]
    fn vectored_writes_land_every_frame_in_order_at_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part");
        let file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.set_len(10).unwrap();
        // More frames than one call takes on some systems, of uneven sizes, some empty.
        let frames: Vec<bytes::Bytes> = (0..3000u32)
            .map(|i| bytes::Bytes::from(vec![(i % 251) as u8; (i % 7) as usize]))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        write_all_vectored_at(&file, &frames, 10).unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(&written[..10], &[0u8; 10]);
        assert_eq!(&written[10..], &expected[..]);
    }

    #[test]
    fn extra_connections_wait_for_a_run_of_slow_chunks_with_cpu_to_spare() {
        let (slow, fast) = (
            SLOW_CONNECTION_BYTES_PER_SEC / 2.0,
            SLOW_CONNECTION_BYTES_PER_SEC,
        );
        let idle = || Some(0.1);
        let unasked = || -> Option<f64> { panic!("the CPU is read only at the end of a run") };
        // Three slow chunks, then a fast one: the run starts over.
        let mut run = 0;
        for expected in 1..=3 {
            assert_eq!(after_chunk(run, slow, unasked), SlowRun::Counting(expected));
            run = expected;
        }
        assert_eq!(after_chunk(run, fast, unasked), SlowRun::Counting(0));
        // The fourth slow chunk in a row: more connections, unless kmm keeps a core busy.
        assert_eq!(after_chunk(3, slow, idle), SlowRun::TryMore);
        assert_eq!(after_chunk(3, slow, || None), SlowRun::TryMore);
        assert_eq!(after_chunk(3, slow, || Some(1.3)), SlowRun::MachineBusy);
        assert_eq!(
            after_chunk(3, slow, || Some(BUSY_CORES)),
            SlowRun::MachineBusy
        );
    }

    #[test]
    fn content_ranges_with_ends() {
        assert_eq!(
            parse_content_range("bytes 10-19/30"),
            Some((10, 19, Some(30)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes */30"), None);
    }
}
