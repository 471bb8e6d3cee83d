//! Large files in parallel Range chunks, resumable across runs.
//!
//! The file is cut into `chunk_size` chunks; connections each take the next missing chunk, ask
//! for `Range: bytes={start}-{end}` and gather what arrives in a chunk buffer, writing it out in
//! place (positioned writes, direct to the disk where possible) into `part`, which is created at
//! its final length (its blocks reserved where the filesystem can); see [`super::chunk_io`].
//! Four connections start; up to `connections_per_file` join once at least four chunks in a
//! row, over at least [`SLOW_RUN_TIME`], arrive slower than 60 MB/s each, the sign of a
//! per-connection cap (CDNs on long links), unless kmm is keeping a core busy meanwhile (then
//! the machine is the limit). That is a probe: once an
//! extra connection has finished a chunk, the aggregate rate over the next [`PROBE_WINDOW`]
//! must be 25% above the rate before, or the extra connections stop after their current chunk.
//! A link shared by every connection, or a busy machine, also makes chunks slow, and there more
//! connections only cost CPU and memory.
//!
//! Verification without a second download and without reading back: once a chunk is written,
//! its buffer goes to a hashing thread that runs the chunks through the file's
//! [`crate::upstream::ContentHasher`] in file order (sha256 / git sha1 need the bytes in
//! order) while later chunks are still arriving. Connections take chunks only up to
//! [`SPARE_CHUNKS`] past one per connection beyond the first chunk not hashed yet, so memory is
//! about (connections + [`SPARE_CHUNKS`]) chunks whatever the file's size. The hash is checked
//! once the last chunk lands.
//!
//! Resume across runs: after each completed chunk, `<part>.state` is rewritten atomically
//! (temp file + rename) with the expected hash and size, the chunk size and the completed
//! chunks. A later run trusts it only if everything matches (same hash, size, a `part` of the
//! full length, known format); anything else starts over. Correctness does not depend on the
//! state being right: the whole-file hash at the end catches any bad chunk, and the caller then
//! discards the file and fetches it once more. A killed run loses at most the chunks that were
//! in flight.
//!
//! In-run retries per chunk: a dropped or stalled body (the read timeout, or below the minimum
//! rate of [`super::min_rate`], judged per response) continues on a fresh connection from the
//! chunk's last received byte; 408/429/5xx back off (honouring `Retry-After`) as [`super::retry`] says; a server that
//! answers a Range with a full `200` makes [`fetch`] return `Ok(false)` so the caller falls back
//! to one sequential stream.
//!
//! Edges: writes only `part` and its state file; the rename into the store belongs to `apply`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use url::Url;

use super::chunk_io::{
    BufferPool, ChunkBuffer, ChunkLayout, HashFrontier, PartWriter, chunk_range, hash_in_order,
};
use super::errors::{self, Target, Transient};
use super::min_rate::{self, RateWatch, Read, Stall};
use super::response::{Failed, classify_failure, content_range};
use super::retry::RetryBudget;
use super::{HubClient, SendError, redact_url};
use crate::error::{Error, Result};
use crate::upstream::UpstreamFile;

/// 4 MiB: big enough that a request's cost is noise (measured against 2 MiB: a 2 GiB file 3.0 s
/// instead of 3.5 s, a 512 MiB file over connections capped at 50 MB/s 429 MB/s instead of
/// 362), small enough that the chunks held in memory until hashed stay a few dozen megabytes.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Files from 64 MiB on are fetched in chunks; smaller ones in one stream.
pub const DEFAULT_PARALLEL_MIN_SIZE: u64 = 64 << 20;
/// Most connections per large file.
pub const DEFAULT_CONNECTIONS: usize = 16;
/// Connections a large file starts with. More (up to the configured most) join only when a
/// connection turns out to be slow (a per-connection cap, as CDNs apply on long links): on a
/// fast link extra connections only cost CPU.
const START_CONNECTIONS: usize = 4;
/// A run of chunks in a row that arrived slower than this per connection lets the extra
/// connections join (unless the CPU is busy, see [`SlowRun`]).
const SLOW_CONNECTION_BYTES_PER_SEC: f64 = 60e6;
/// How long a run of slow chunks (at least [`START_CONNECTIONS`]) must last before extra
/// connections are tried: small chunks slowed together by a busy moment are no sign of a cap.
const SLOW_RUN_TIME: std::time::Duration = std::time::Duration::from_millis(250);
/// Cores kmm keeps busy (CPU seconds per second) from which slow chunks mean a busy machine
/// rather than a capped link. Measured on a 2-core VM: four connections capped at 50 MB/s each
/// keep kmm at 0.25-0.28 cores; once the VM's page-cache writes turn slow, kmm's slow chunks
/// come with 1.2-1.3 cores busy.
const BUSY_CORES: f64 = 0.75;
/// How long the extra connections run before the aggregate rate decides whether they stay.
const PROBE_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
/// The aggregate rate with the extra connections must beat the rate before by this factor.
const PROBE_GAIN: f64 = 1.25;
/// Chunks a connection may take past one per allowed connection beyond the first chunk not
/// hashed yet: room for a connection that finished early, so it need not wait for the slowest.
const SPARE_CHUNKS: usize = 2;
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

/// Shared by the connections of one download.
struct Shared {
    done: Vec<bool>,
    pending: VecDeque<u64>,
    /// The URL that last served bytes (the CDN for LFS files).
    url: Url,
    state: ChunkState,
}

/// Fetches `file` into `part` in chunks. `Ok(true)`: `part` holds the verified file.
/// `Ok(false)`: the server does not do ranges; nothing useful is in `part`.
pub(super) async fn fetch(
    client: &HubClient,
    origin: &super::FileOrigin<'_>,
    file: &UpstreamFile,
    part: &Path,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<bool> {
    let io_error =
        |what: &str, err: &std::io::Error| Error::io(format!("{what} `{}`", part.display()), err);
    let state = resume_or_start(client, file, part)?;
    let writer = Arc::new(
        PartWriter::open(part, client.config.direct_io).map_err(|e| io_error("opening", &e))?,
    );
    let chunks = state.chunk_count();
    let mut done = vec![false; chunks as usize];
    for &index in &state.done {
        done[index as usize] = true;
    }
    let pending: VecDeque<u64> = (0..chunks).filter(|&i| !done[i as usize]).collect();
    let (repo_id, commit) = (origin.repo_id, origin.commit);
    let resolve = origin.url.clone();
    let chunk_size = state.chunk_size;
    let connections = client.config.connections_per_file.min(pending.len()).max(1);
    let start_connections = START_CONNECTIONS.min(connections);
    let shared = Mutex::new(Shared {
        done,
        pending,
        url: resolve.clone(),
        state,
    });

    // The hasher takes the written chunks in file order on its own thread.
    let layout = ChunkLayout {
        size: file.size,
        chunk_size,
        done_at_start: shared.lock().expect("chunk state lock").done.clone(),
    };
    let pool = Arc::new(BufferPool::new(chunk_size));
    let frontier = Arc::new(HashFrontier::new());
    let (arrivals_tx, arrivals_rx) = mpsc::channel::<(u64, ChunkBuffer)>();
    let hasher = {
        let (writer, pool, frontier, expected) = (
            writer.clone(),
            pool.clone(),
            frontier.clone(),
            file.hash.clone(),
        );
        tokio::task::spawn_blocking(move || {
            hash_in_order(
                writer.file(),
                &expected,
                &layout,
                arrivals_rx,
                &pool,
                &frontier,
            )
        })
    };

    let target = Target::file(repo_id, commit, &file.path);
    let context = ChunkContext {
        client,
        file,
        part,
        writer: &writer,
        shared: &shared,
        resolve: &resolve,
        target: &target,
        chunk_size,
        arrivals: arrivals_tx,
        pool: &pool,
        frontier: &frontier,
        on_progress,
        start_connections,
        connections,
        allowed: AtomicUsize::new(start_connections),
        received: AtomicU64::new(0),
        started: Instant::now(),
        cpu_at_start: crate::sys::process_cpu_time(),
        probe: Mutex::new(Probe::NotYet {
            slow_run: SlowChunks::default(),
        }),
        changed: tokio::sync::Notify::new(),
    };
    let workers = (0..connections).map(|number| context.worker(number));
    let outcome = futures_util::future::try_join_all(workers).await;
    tracing::debug!(file = %file.path, direct = writer.is_direct(), "chunks fetched");
    // The hasher stops once every chunk is hashed or the senders are gone.
    drop(context);
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

/// The chunk state of an earlier run's `part` when it matches `file`, else a fresh `part`
/// sized for the whole file (a full disk fails here, before any byte) and a state saved
/// beside it.
fn resume_or_start(client: &HubClient, file: &UpstreamFile, part: &Path) -> Result<ChunkState> {
    let io_error =
        |what: &str, err: &std::io::Error| Error::io(format!("{what} `{}`", part.display()), err);
    if let Some(state) = ChunkState::load_valid(part, file) {
        tracing::debug!(file = %file.path, chunks_done = state.done.len(), "resuming a chunked download");
        return Ok(state);
    }
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
    Ok(state)
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
    writer: &'a Arc<PartWriter>,
    shared: &'a Mutex<Shared>,
    resolve: &'a Url,
    target: &'a Target<'a>,
    chunk_size: u64,
    /// Written chunks, to the hasher.
    arrivals: mpsc::Sender<(u64, ChunkBuffer)>,
    pool: &'a BufferPool,
    frontier: &'a HashFrontier,
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
        slow_run: SlowChunks,
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
            let Some(index) = self.next_chunk_in_window().await else {
                return Ok(());
            };
            let mut buffer = self.pool.take();
            let started = Instant::now();
            self.fetch_chunk(index, &mut buffer).await?;
            let rate = buffer.filled() as f64 / started.elapsed().as_secs_f64().max(1e-6);
            self.adapt(number, started, rate);
            let buffer = self.write_chunk(index, buffer).await?;
            {
                let mut shared = self.shared.lock().expect("chunk state lock");
                shared.done[index as usize] = true;
                shared.state.done.push(index);
                shared.state.save(self.part)?;
            }
            // The hasher is gone only if it failed; its error is reported after the workers.
            let _ = self.arrivals.send((index, buffer));
        }
        Ok(())
    }

    /// Writes a complete chunk at its place on the blocking pool: a direct write waits for the
    /// disk, and meanwhile the other connections keep reading on this thread.
    async fn write_chunk(
        &self,
        index: u64,
        buffer: ChunkBuffer,
    ) -> std::result::Result<ChunkBuffer, ChunkError> {
        let (start, _) = chunk_range(index, self.chunk_size, self.file.size);
        let writer = self.writer.clone();
        let (buffer, written) = tokio::task::spawn_blocking(move || {
            let written = writer.write_at(buffer.bytes(), start);
            (buffer, written)
        })
        .await
        .map_err(|e| Error::internal(format!("the writing task failed: {e}")))?;
        written.map_err(|err| Error::io(format!("writing `{}`", self.part.display()), &err))?;
        Ok(buffer)
    }

    /// The next missing chunk once it lies within the window past the hashing frontier (see
    /// [`SPARE_CHUNKS`]); `None` when no chunk is left.
    async fn next_chunk_in_window(&self) -> Option<u64> {
        loop {
            let moved = self.frontier.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            {
                let mut shared = self.shared.lock().expect("chunk state lock");
                let next = *shared.pending.front()?;
                let window = (self.allowed.load(Ordering::Relaxed) + SPARE_CHUNKS) as u64;
                if next < self.frontier.next() + window {
                    return shared.pending.pop_front();
                }
            }
            moved.await;
        }
    }

    /// After each chunk: starts the probe when the chunk was slow, and once the probe has run
    /// [`PROBE_WINDOW`], keeps the extra connections only if the aggregate rate rose.
    fn adapt(&self, number: usize, chunk_started: Instant, chunk_rate: f64) {
        let mut probe = self.probe.lock().expect("probe lock");
        let received = self.received.load(Ordering::Relaxed);
        match *probe {
            Probe::NotYet { slow_run } => {
                if self.connections <= self.start_connections {
                    return;
                }
                let mut cores_busy = None;
                match after_chunk(slow_run, chunk_started, Instant::now(), chunk_rate, || {
                    cores_busy = self.cores_busy();
                    cores_busy
                }) {
                    SlowRun::Counting(slow_run) => {
                        *probe = Probe::NotYet { slow_run };
                        return;
                    }
                    SlowRun::MachineBusy => {
                        tracing::debug!(file = %self.file.path, chunk_rate, ?cores_busy, "slow chunks, but the CPU is busy: no more connections");
                        *probe = Probe::NotYet {
                            slow_run: SlowChunks::default(),
                        };
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

    /// One chunk into `buffer` (and the part file), with retries that continue from its last
    /// received byte.
    async fn fetch_chunk(
        &self,
        index: u64,
        buffer: &mut ChunkBuffer,
    ) -> std::result::Result<(), ChunkError> {
        let (start, end) = chunk_range(index, self.chunk_size, self.file.size);
        let config = &self.client.config;
        let mut budget = RetryBudget::new(
            config.max_retries,
            config.retry_base_delay,
            config.retry_budget,
        );
        loop {
            budget.start_attempt();
            let before = buffer.filled();
            let url = self.shared.lock().expect("chunk state lock").url.clone();
            let outcome = self.attempt(&url, start, end, buffer).await;
            let progressed = buffer.filled() > before;
            let (transient, delay) = match outcome {
                Ok(()) => return Ok(()),
                Err(Step::NoRanges) => return Err(ChunkError::NoRanges),
                Err(Step::Fatal(error)) => return Err(ChunkError::Fatal(error)),
                Err(Step::Retry(transient, retry_after)) => {
                    let delay = budget.after(&transient, progressed, retry_after);
                    (transient, delay)
                }
                Err(Step::Stalled(stall)) => (
                    Transient::Stalled(stall.to_string()),
                    budget.after_stall(progressed, stall.healthy),
                ),
            };
            let Some(delay) = delay else {
                return Err(ChunkError::Fatal(errors::retries_exhausted(
                    self.target,
                    &redact_url(url.as_str()),
                    budget.attempts(),
                    &transient,
                )));
            };
            tracing::debug!(file = %self.file.path, chunk = index, attempt = budget.attempts(), failure = ?transient, ?delay, "retrying a chunk");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        url: &Url,
        start: u64,
        end: u64,
        buffer: &mut ChunkBuffer,
    ) -> std::result::Result<(), Step> {
        let from = start + buffer.filled() as u64;
        // Permits are the endpoint's (the resolve URL's), whichever CDN serves the bytes.
        let host = self.resolve.origin().ascii_serialization();
        let permit = self.client.limits.acquire(&host).await;
        let outcome = self
            .attempt_with_permit(url, from, start, end, buffer)
            .await;
        match &outcome {
            Ok(()) => self.client.limits.completed(&host),
            Err(Step::Retry(Transient::Status(429), _)) => self.client.limits.overloaded(&permit),
            Err(_) => {}
        }
        outcome
    }

    async fn attempt_with_permit(
        &self,
        url: &Url,
        from: u64,
        start: u64,
        end: u64,
        buffer: &mut ChunkBuffer,
    ) -> std::result::Result<(), Step> {
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
            206 => match content_range(response.headers()) {
                Some(range) if range.start == from && range.end == end => {
                    if let Some(total) = range.total.filter(|total| *total != self.file.size) {
                        return Err(Step::Fatal(super::size_mismatch(
                            self.file,
                            format!("the server announces {:?} bytes", Some(total)),
                        )));
                    }
                }
                _ => return Err(Step::NoRanges),
            },
            200 => return Err(Step::NoRanges),
            _ => {
                let from_resolve_url = url == self.resolve;
                let secret = self.client.secret();
                return Err(
                    match classify_failure(response, status, from_resolve_url, self.target, secret)
                        .await
                    {
                        Failed::Retry(transient, after) => Step::Retry(transient, after),
                        Failed::ResolveAgain(transient) => {
                            self.shared.lock().expect("chunk state lock").url =
                                self.resolve.clone();
                            Step::Retry(transient, None)
                        }
                        Failed::Fatal(error) => Step::Fatal(error),
                    },
                );
            }
        }
        if response.url() != url {
            self.shared.lock().expect("chunk state lock").url = response.url().clone();
        }
        let length = end - start + 1;
        let mut watch = self
            .client
            .min_rate()
            .map(|rule| RateWatch::start(rule, Instant::now()));
        let result = loop {
            match min_rate::next_chunk(&mut response, watch.as_mut()).await {
                Read::Bytes(bytes) => {
                    if (buffer.filled() + bytes.len()) as u64 > length {
                        break Err(Step::Fatal(Error::verify(format!(
                            "`{}`: the server sent more bytes than the range asked for",
                            self.file.path
                        ))));
                    }
                    (self.on_progress)(bytes.len() as u64);
                    self.received
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    buffer.append(&bytes);
                }
                Read::End => break Ok(()),
                // Bytes that arrived before a drop or a stall stay in the buffer for the retry;
                // a stalled response is dropped unread, and its connection with it.
                Read::Failed(err) => break Err(Step::Retry(Transient::from_reqwest(&err), None)),
                Read::Stalled(stall) => break Err(Step::Stalled(stall)),
            }
        };
        result?;
        if (buffer.filled() as u64) < length {
            return Err(Step::Retry(
                Transient::Interrupted(format!(
                    "the body ended after {} of {length} bytes of a chunk",
                    buffer.filled()
                )),
                None,
            ));
        }
        Ok(())
    }
}

/// The slow chunks since the last fast one.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct SlowChunks {
    chunks: usize,
    /// When the first of them started.
    since: Option<Instant>,
}

/// What one more chunk at `chunk_rate` says about adding connections.
#[derive(Debug, PartialEq)]
enum SlowRun {
    /// The run of slow chunks in a row so far (a fast chunk ends it).
    Counting(SlowChunks),
    /// A long enough run while kmm keeps [`BUSY_CORES`] busy: the machine, not the link, is
    /// the limit (on a slow VM page-cache writes cost several times their usual CPU), and more
    /// connections would only add work. The run starts over.
    MachineBusy,
    /// A long enough run with CPU to spare: the sign of a per-connection cap, so extra
    /// connections are tried.
    TryMore,
}

/// The verdict once a chunk that started at `chunk_started` arrived (by `now`) at `chunk_rate`.
/// `cores_busy` (CPU seconds per second kmm has used, `None` if unknown) is asked only once
/// the run is long enough.
fn after_chunk(
    run: SlowChunks,
    chunk_started: Instant,
    now: Instant,
    chunk_rate: f64,
    cores_busy: impl FnOnce() -> Option<f64>,
) -> SlowRun {
    if chunk_rate >= SLOW_CONNECTION_BYTES_PER_SEC {
        return SlowRun::Counting(SlowChunks::default());
    }
    let since = run
        .since
        .map_or(chunk_started, |since| since.min(chunk_started));
    let run = SlowChunks {
        chunks: run.chunks + 1,
        since: Some(since),
    };
    if run.chunks < START_CONNECTIONS || now.duration_since(since) < SLOW_RUN_TIME {
        SlowRun::Counting(run)
    } else if cores_busy().is_some_and(|cores| cores >= BUSY_CORES) {
        SlowRun::MachineBusy
    } else {
        SlowRun::TryMore
    }
}

enum Step {
    Retry(Transient, Option<std::time::Duration>),
    /// Dropped below the minimum rate.
    Stalled(Stall),
    NoRanges,
    Fatal(Error),
}

impl From<Error> for Step {
    fn from(error: Error) -> Self {
        Step::Fatal(error)
    }
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
    fn extra_connections_wait_for_a_run_of_slow_chunks_with_cpu_to_spare() {
        let (slow, fast) = (
            SLOW_CONNECTION_BYTES_PER_SEC / 2.0,
            SLOW_CONNECTION_BYTES_PER_SEC,
        );
        let idle = || Some(0.1);
        let unasked = || -> Option<f64> { panic!("the CPU is read only at the end of a run") };
        let now = Instant::now();
        let long_ago = now - SLOW_RUN_TIME * 2;
        // Three slow chunks, then a fast one: the run starts over.
        let mut run = SlowChunks::default();
        for chunks in 1..=3 {
            let SlowRun::Counting(next) = after_chunk(run, long_ago, now, slow, unasked) else {
                panic!("still counting");
            };
            assert_eq!(next.chunks, chunks);
            run = next;
        }
        assert_eq!(
            after_chunk(run, long_ago, now, fast, unasked),
            SlowRun::Counting(SlowChunks::default())
        );
        // The fourth slow chunk of a long run: more connections, unless kmm keeps a core busy.
        assert_eq!(after_chunk(run, now, now, slow, idle), SlowRun::TryMore);
        assert_eq!(after_chunk(run, now, now, slow, || None), SlowRun::TryMore);
        assert_eq!(
            after_chunk(run, now, now, slow, || Some(1.3)),
            SlowRun::MachineBusy
        );
        assert_eq!(
            after_chunk(run, now, now, slow, || Some(BUSY_CORES)),
            SlowRun::MachineBusy
        );
        // Many slow chunks that all started just now: not long enough yet.
        let mut run = SlowChunks::default();
        for _ in 0..START_CONNECTIONS * 8 {
            match after_chunk(run, now, now, slow, unasked) {
                SlowRun::Counting(next) => run = next,
                other => panic!("{other:?} within {SLOW_RUN_TIME:?}"),
            }
        }
    }
}
