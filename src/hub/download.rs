//! One file from `/{repo}/resolve/{commit}/{path}` into one destination file, verified.
//!
//! The body is streamed through a buffered writer and the file's [`ContentHasher`] as it lands,
//! so verification costs no second read. A dropped connection, a stalled body (the client's
//! read timeout, or a body below the minimum rate of [`super::min_rate`], whose connection is
//! dropped), 408/429/5xx are retried: with `Range: bytes={written}-` against the URL that
//! last served bytes (the CDN for LFS files, whose signed URL carries no token), and from zero
//! when the server answers a range with a plain `200` or `416`. A signed CDN URL that has
//! expired (401/403/404/410 on a retry) sends the next attempt back through the resolve URL.
//!
//! Retry budget: `max_retries` consecutive failures without new bytes; an attempt that made
//! progress resets that count (as `huggingface_hub` does), and the total number of attempts is
//! capped at four times the budget so a server that trickles a few bytes per connection still
//! ends in `E_NET`. Stalls below the minimum rate have their own, smaller count (see
//! [`super::retry::MAX_STALL_RETRIES`]), so a trickling hub ends within a few windows.
//!
//! The size in the listing is a hard limit: a byte beyond it is `E_VERIFY` at once and never
//! written. At the end the hash must match, else `E_VERIFY`. On every error [`download`] removes
//! `dest`.
//!
//! Writes go through a synchronous, 256 KiB-buffered `fs_err` file (so I/O errors name the
//! path): each write lands in the page cache in microseconds, which is cheaper than handing
//! every chunk to a blocking thread.
//!
//! [`download_resumable`] (what `apply` uses) differs in what survives a failure: network and
//! disk errors keep the partial file for a later run, which hashes the bytes already there and
//! continues with `Range` (large files go through [`super::chunked`] instead); wrong bytes are
//! discarded and the file is fetched once more before `E_VERIFY`.
//!
//! Edges: writes only `dest`; durability (fsync) and the final rename belong to `apply`.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::header;
use tracing::Instrument;
use url::Url;

use super::errors::{self, Target, Transient};
use super::min_rate::{self, RateWatch, Read, Stall};
use super::response::{Failed, classify_failure, content_range};
use super::retry::RetryBudget;
use super::{FileOrigin, HubClient, SendError, chunked, redact_url};
use crate::error::{Error, ErrorCode, Result};
use crate::upstream::{ContentHasher, FileHash, UpstreamFile};

const WRITE_BUFFER_BYTES: usize = 256 << 10;

impl HubClient {
    /// Downloads `file` of `repo_id` at `commit` into `dest` (created or truncated), hashing as
    /// the bytes land; resumes dropped connections with `Range` within this call; returns only
    /// when `dest` holds exactly `file.size` bytes with `file.hash`. Wrong bytes: `E_VERIFY`.
    /// On any error `dest` is removed. `on_progress` receives the number of new bytes written
    /// (a server that ignores `Range` makes the download restart, so the sum can exceed the
    /// size).
    pub async fn download(
        &self,
        repo_id: &str,
        commit: &str,
        file: &UpstreamFile,
        dest: &Path,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let span =
            tracing::info_span!("download", repo = repo_id, file = %file.path, size = file.size);
        let origin = self.resolve_origin(repo_id, commit, file)?;
        let result = fetch_into(self, &origin, file, dest, false, on_progress)
            .instrument(span)
            .await;
        if result.is_err()
            && let Err(err) = fs_err::remove_file(dest)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove the failed download: {err}");
        }
        result
    }

    /// Downloads `file` into `part` so that an interrupted download can be continued, by this
    /// call (dropped connections) or by a later one (a killed process): see
    /// [`chunked`](self) for the state file beside `part`. Large files come in parallel Range
    /// chunks. Network errors keep `part` for the next run; wrong bytes (`E_VERIFY`) discard it
    /// and fetch the file once more before giving up. On success `part` holds the verified
    /// bytes and the state file is gone.
    pub async fn download_resumable(
        &self,
        repo_id: &str,
        commit: &str,
        file: &UpstreamFile,
        part: &Path,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let origin = self.resolve_origin(repo_id, commit, file)?;
        self.download_resumable_from(&origin, file, part, on_progress)
            .await
    }

    /// [`HubClient::download_resumable`] from another URL than the hub's resolve URL: a
    /// presigned URL of the fleet's shared store, read by the same engine (ranges in parallel,
    /// resumable, verified, stalls and 429s handled). `repo_id` and `commit` only name the
    /// file in messages. The URL's query (a signature) is never shown.
    pub async fn download_resumable_from_url(
        &self,
        url: Url,
        repo_id: &str,
        commit: &str,
        file: &UpstreamFile,
        part: &Path,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let origin = FileOrigin {
            url,
            repo_id,
            commit,
        };
        self.download_resumable_from(&origin, file, part, on_progress)
            .await
    }

    /// The hub's resolve URL of `file` at `commit`, as a download's origin.
    fn resolve_origin<'a>(
        &self,
        repo_id: &'a str,
        commit: &'a str,
        file: &UpstreamFile,
    ) -> Result<FileOrigin<'a>> {
        Ok(FileOrigin {
            url: self.resolve_url(repo_id, commit, &file.path)?,
            repo_id,
            commit,
        })
    }

    async fn download_resumable_from(
        &self,
        origin: &FileOrigin<'_>,
        file: &UpstreamFile,
        part: &Path,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let (client, repo_id) = (self, origin.repo_id);
        let span =
            tracing::info_span!("download", repo = repo_id, file = %file.path, size = file.size);
        async {
            let mut verify_failures = 0;
            loop {
                let parallel = file.size >= client.config.parallel_min_size
                    && file.size > client.config.chunk_size
                    && client.config.connections_per_file > 0;
                let mut result = if parallel {
                    chunked::fetch(client, origin, file, part, on_progress).await
                } else {
                    Ok(false)
                };
                if matches!(result, Ok(false)) {
                    // Small file, or a server that ignores Range: one sequential stream that
                    // continues from what an earlier run left in `part`.
                    result = fetch_into(client, origin, file, part, true, on_progress)
                        .await
                        .map(|()| true);
                }
                match result {
                    Ok(_) => {
                        chunked::remove_state(part);
                        return Ok(());
                    }
                    Err(error) if error.code() == ErrorCode::Verify => {
                        // The bytes on disk are wrong: none of them can be trusted for a resume.
                        chunked::remove_state(part);
                        if let Err(err) = fs_err::remove_file(part)
                            && err.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!("could not remove the bad download: {err}");
                        }
                        verify_failures += 1;
                        if verify_failures > 1 {
                            return Err(error);
                        }
                        tracing::warn!(file = %file.path, "{error}; fetching the file once more");
                    }
                    // Network, disk, ...: `part` and its state stay for the next run.
                    Err(error) => return Err(error),
                }
            }
        }
        .instrument(span)
        .await
    }
}

async fn fetch_into(
    client: &HubClient,
    origin: &FileOrigin<'_>,
    file: &UpstreamFile,
    dest: &Path,
    resume: bool,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<()> {
    let (repo_id, commit) = (origin.repo_id, origin.commit);
    let target = Target::file(repo_id, commit, &file.path);
    let resolve = origin.url.clone();
    let mut state = Transfer {
        sink: if resume {
            Sink::resume(file, dest)?
        } else {
            Sink::create(file, dest)?
        },
        url: resolve.clone(),
        resolve,
        ranges_supported: true,
        target,
        file,
    };
    let mut budget = RetryBudget::new(
        client.config.max_retries,
        client.config.retry_base_delay,
        client.config.retry_budget,
    );
    // An earlier run got every byte but stopped before the rename: only the hash is left.
    let complete = resume && state.sink.written == file.size && file.size > 0;
    loop {
        if complete {
            break;
        }
        budget.start_attempt();
        let before = state.sink.written;
        // Permits are the endpoint's (the resolve URL's), whichever CDN serves the bytes.
        let host = state.resolve.origin().ascii_serialization();
        let outcome = {
            let permit = client.limits.acquire(&host).await;
            let outcome = state.attempt(client, on_progress).await;
            match &outcome {
                Ok(()) => client.limits.completed(&host),
                Err(Step::Retry(Transient::Status(429), _)) => client.limits.overloaded(&permit),
                Err(_) => {}
            }
            outcome
        };
        let progressed = state.sink.written > before;
        let (transient, delay) = match outcome {
            Ok(()) => break,
            Err(Step::Fatal(error)) => return Err(error),
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
            return Err(errors::retries_exhausted(
                &state.target,
                &redact_url(state.url.as_str()),
                budget.attempts(),
                &transient,
            ));
        };
        tracing::debug!(
            file = %file.path,
            attempt = budget.attempts(),
            written = state.sink.written,
            failure = ?transient,
            ?delay,
            "retrying download"
        );
        tokio::time::sleep(delay).await;
    }
    let actual = state.sink.finish()?;
    super::check_served_hash(file, repo_id, commit, &actual)
}

/// Why one attempt stopped short of the whole file.
enum Step {
    Retry(Transient, Option<Duration>),
    /// Dropped below the minimum rate.
    Stalled(Stall),
    Fatal(Error),
}

impl From<Error> for Step {
    fn from(error: Error) -> Self {
        Step::Fatal(error)
    }
}

/// What carries over from one attempt to the next.
struct Transfer<'a> {
    sink: Sink<'a>,
    /// Where the next attempt goes: the resolve URL, or the URL that last served bytes.
    url: Url,
    resolve: Url,
    /// False once a server said `Accept-Ranges: none`.
    ranges_supported: bool,
    target: Target<'a>,
    file: &'a UpstreamFile,
}

impl Transfer<'_> {
    async fn attempt(
        &mut self,
        client: &HubClient,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> std::result::Result<(), Step> {
        let resume_from = self.sink.written;
        if resume_from > 0 && !self.ranges_supported {
            self.sink.restart()?;
        }
        let range = (self.sink.written > 0).then_some(self.sink.written);
        let mut response = match client.send(self.url.clone(), range).await {
            Ok(response) => response,
            Err(SendError::Fatal(error)) => return Err(Step::Fatal(error)),
            Err(SendError::Transport(transient)) => return Err(Step::Retry(transient, None)),
        };
        let status = response.status().as_u16();
        let announced_total = match status {
            200 => {
                // A full body, also in answer to a Range request: start over.
                self.sink.restart()?;
                response.content_length()
            }
            206 => match content_range(response.headers()) {
                Some(range) if range.start == self.sink.written => range.total,
                _ => {
                    self.sink.restart()?;
                    return Err(Step::Retry(
                        Transient::Interrupted(format!(
                            "the server answered `Range: bytes={}-` with another range",
                            resume_from
                        )),
                        None,
                    ));
                }
            },
            416 => {
                self.sink.restart()?;
                return Err(Step::Retry(Transient::Status(416), None));
            }
            _ => {
                let from_resolve_url = self.url == self.resolve;
                let failed = classify_failure(
                    response,
                    status,
                    from_resolve_url,
                    &self.target,
                    client.secret(),
                )
                .await;
                return Err(match failed {
                    Failed::Retry(transient, after) => Step::Retry(transient, after),
                    Failed::ResolveAgain(transient) => {
                        self.url = self.resolve.clone();
                        Step::Retry(transient, None)
                    }
                    Failed::Fatal(error) => Step::Fatal(error),
                });
            }
        };
        if let Some(total) = announced_total
            && total != self.file.size
        {
            return Err(Step::Fatal(super::size_mismatch(
                self.file,
                format!(
                    "the server announces {total} bytes, the listing {}",
                    self.file.size
                ),
            )));
        }
        self.url = response.url().clone();
        if response
            .headers()
            .get(header::ACCEPT_RANGES)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim().eq_ignore_ascii_case("none"))
        {
            self.ranges_supported = false;
        }
        let mut watch = client
            .min_rate()
            .map(|rule| RateWatch::start(rule, std::time::Instant::now()));
        loop {
            match min_rate::next_chunk(&mut response, watch.as_mut()).await {
                Read::Bytes(bytes) => {
                    self.sink.write(&bytes)?;
                    on_progress(bytes.len() as u64);
                }
                Read::End => break,
                Read::Failed(err) => return Err(Step::Retry(Transient::from_reqwest(&err), None)),
                // Returning drops the response unread, and with it the connection.
                Read::Stalled(stall) => return Err(Step::Stalled(stall)),
            }
        }
        if self.sink.written < self.file.size {
            return Err(Step::Retry(
                Transient::Interrupted(format!(
                    "the body ended after {} of {} bytes",
                    self.sink.written, self.file.size
                )),
                None,
            ));
        }
        Ok(())
    }
}

/// The destination file and the running hash of what it holds.
struct Sink<'a> {
    writer: BufWriter<fs_err::File>,
    hasher: ContentHasher,
    written: u64,
    file: &'a UpstreamFile,
    dest: &'a Path,
}

impl<'a> Sink<'a> {
    fn create(file: &'a UpstreamFile, dest: &'a Path) -> Result<Self> {
        let handle = fs_err::File::create(dest)
            .map_err(|err| Error::io(format!("creating `{}`", dest.display()), &err))?;
        Ok(Sink {
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, handle),
            hasher: ContentHasher::for_hash(&file.hash, file.size),
            written: 0,
            file,
            dest,
        })
    }

    /// Continues a sequential download an earlier run left in `dest`: its bytes are the
    /// file's first ones (verified with the rest at the end), so they are hashed and kept.
    /// A file longer than the listing, or one that belongs to a chunked download (a state
    /// file beside it), starts over.
    fn resume(file: &'a UpstreamFile, dest: &'a Path) -> Result<Self> {
        let chunked = super::chunked::state_path(dest).exists();
        super::chunked::remove_state(dest);
        let handle = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dest)
            .map_err(|err| Error::io(format!("opening `{}`", dest.display()), &err))?;
        let mut sink = Sink {
            writer: BufWriter::with_capacity(WRITE_BUFFER_BYTES, handle),
            hasher: ContentHasher::for_hash(&file.hash, file.size),
            written: 0,
            file,
            dest,
        };
        let len = sink
            .writer
            .get_ref()
            .metadata()
            .map_err(|err| sink.io_error(&err))?
            .len();
        if chunked || len > file.size {
            sink.writer
                .get_ref()
                .set_len(0)
                .map_err(|err| sink.io_error(&err))?;
            return Ok(sink);
        }
        if len > 0 {
            let mut reader = std::io::BufReader::with_capacity(
                WRITE_BUFFER_BYTES,
                sink.writer
                    .get_ref()
                    .file()
                    .try_clone()
                    .map_err(|err| sink.io_error(&err))?,
            );
            let mut left = len;
            let mut buffer = vec![0u8; WRITE_BUFFER_BYTES];
            while left > 0 {
                let want = buffer.len().min(left as usize);
                std::io::Read::read_exact(&mut reader, &mut buffer[..want])
                    .map_err(|err| sink.io_error(&err))?;
                sink.hasher.update(&buffer[..want]);
                left -= want as u64;
            }
            sink.writer
                .seek(SeekFrom::Start(len))
                .map_err(|err| sink.io_error(&err))?;
            sink.written = len;
            tracing::debug!(file = %file.path, resumed_at = len, "continuing a partial download");
        }
        Ok(sink)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.written + bytes.len() as u64 > self.file.size {
            return Err(super::size_mismatch(
                self.file,
                "the server sent more bytes than the listing".to_string(),
            ));
        }
        self.writer
            .write_all(bytes)
            .map_err(|err| self.io_error(&err))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Empties the file and the hash: the next bytes are the file's first.
    fn restart(&mut self) -> Result<()> {
        if self.written == 0 {
            return Ok(());
        }
        self.writer
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.writer.get_ref().set_len(0))
            .map_err(|err| self.io_error(&err))?;
        self.hasher = ContentHasher::for_hash(&self.file.hash, self.file.size);
        self.written = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<FileHash> {
        self.writer.flush().map_err(|err| self.io_error(&err))?;
        Ok(self.hasher.finish())
    }

    fn io_error(&self, err: &std::io::Error) -> Error {
        Error::io(format!("writing `{}`", self.dest.display()), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::git_sha1_hex;

    #[test]
    fn sink_refuses_bytes_beyond_the_size_and_restarts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let content = b"hello world";
        let file = UpstreamFile {
            path: "f".into(),
            size: content.len() as u64,
            hash: FileHash::GitSha1(git_sha1_hex(content)),
        };
        let mut sink = Sink::create(&file, &dest).unwrap();
        sink.write(b"garbage").unwrap();
        sink.restart().unwrap();
        sink.write(&content[..5]).unwrap();
        sink.write(&content[5..]).unwrap();
        let error = sink.write(b"!").unwrap_err();
        assert_eq!(error.code(), ErrorCode::Verify);
        assert_eq!(sink.written, content.len() as u64);
        assert_eq!(sink.finish().unwrap(), file.hash);
        assert_eq!(fs_err::read(&dest).unwrap(), content);
    }

    #[test]
    fn a_sequential_partial_is_continued_and_a_chunked_one_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.part");
        let content = b"hello resumable world";
        let file = UpstreamFile {
            path: "f".into(),
            size: content.len() as u64,
            hash: FileHash::GitSha1(git_sha1_hex(content)),
        };
        fs_err::write(&dest, &content[..7]).unwrap();
        let mut sink = Sink::resume(&file, &dest).unwrap();
        assert_eq!(sink.written, 7);
        sink.write(&content[7..]).unwrap();
        assert_eq!(sink.finish().unwrap(), file.hash);
        assert_eq!(fs_err::read(&dest).unwrap(), content);

        // A state file beside it: the bytes belong to a chunked download, not a prefix.
        fs_err::write(chunked::state_path(&dest), b"{}").unwrap();
        let sink = Sink::resume(&file, &dest).unwrap();
        assert_eq!(sink.written, 0);
        assert!(!chunked::state_path(&dest).exists());
        drop(sink);
        assert_eq!(fs_err::metadata(&dest).unwrap().len(), 0);

        // Longer than the listing: start over.
        fs_err::write(&dest, b"far too long for this file, really").unwrap();
        assert_eq!(Sink::resume(&file, &dest).unwrap().written, 0);
    }
}
