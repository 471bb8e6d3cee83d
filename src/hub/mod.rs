//! Hugging Face Hub HTTP client (read side): model info, tree listing, resolve/download.
//!
//! Speaks the protocol written down in `../shared/hf-protocol.md`: revision -> commit through
//! `GET /api/models/{repo}/revision/{rev}`, recursive tree listing with `Link` pagination,
//! `/{repo}/resolve/{commit}/{path}` with redirects to a CDN on another origin, Range requests,
//! retries with backoff on 408/429/5xx and dropped connections (honouring `Retry-After`), and
//! the Hub's `X-Error-Code` errors mapped to kmm codes (`RepoNotFound`/`RevisionNotFound`/
//! `EntryNotFound` -> `E_NOT_FOUND`; `GatedRepo`, 401, 403 -> `E_LICENSE`/`E_PERM` with a hint
//! about `HF_TOKEN`; connection failures -> `E_NET`).
//!
//! The token is sent only to the endpoint's own origin, dropped on redirects elsewhere, and never
//! printed, logged or put in an error (URLs in messages go through [`redact_url`]).
//!
//! Redirects are followed by hand (at most 10 hops) so that this rule holds on every hop and a
//! legacy id (`gpt2`) works through the hub's 307 to the canonical repo.
//!
//! Submodules: `urls` (encoding, `Link`, redaction), `retry` (which failures are retried and
//! how long to wait), `errors` (status/headers -> `E_*`), `parse` (JSON -> kmm types, path
//! checks), `download` (streaming, resume, verification), `chunked` (parallel Range chunks of
//! large files, resumable across runs through a state file beside the partial download),
//! `chunk_io` (chunk buffers, direct or buffered positioned writes, hashing in file order),
//! `min_rate` (the minimum-rate rule that drops a trickling body, as curl's `--speed-limit`).
//!
//! Edges: talks HTTP and writes only the single destination file it is given by `apply`; it never
//! touches the registry or the layout.

mod adaptive;
mod chunk_io;
mod chunked;
mod download;
mod errors;
mod min_rate;
mod parse;
mod response;
mod retry;
mod urls;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use tracing::Instrument;
use url::Url;

use crate::error::{Error, Result};
use crate::upstream::UpstreamFile;
use errors::{Target, Transient};

pub use chunked::{partial_bytes as partial_download_bytes, state_path as partial_state_path};
pub use urls::redact_url;

/// A token that never shows up in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Default minimum rate of a file download, bytes per second ([`HubConfig::min_rate_window`]).
pub const DEFAULT_MIN_RATE: u64 = 1024;
/// Default window over which the minimum rate is measured.
pub const DEFAULT_MIN_RATE_WINDOW: Duration = Duration::from_secs(30);

/// How to reach a hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL without trailing slash, e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    pub token: Option<Token>,
    pub user_agent: String,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    /// First backoff delay; doubled per retry with jitter, capped. Tests set it small.
    pub retry_base_delay: Duration,
    pub connect_timeout: Duration,
    /// A body that stalls this long is treated as a dropped connection.
    pub read_timeout: Duration,
    /// The minimum rate of file downloads (curl's `--speed-limit`/`--speed-time`): a response
    /// whose body brings fewer than `min_rate_bytes_per_sec × min_rate_window` bytes during
    /// the last `min_rate_window` is dropped and the download continues on a fresh connection;
    /// a few such stalls in a row end it in `E_NET` (see `retry::MAX_STALL_RETRIES`). The read
    /// timeout alone restarts on every byte, so it never ends a hub that trickles. 0 (either
    /// field) turns the rule off.
    pub min_rate_bytes_per_sec: u64,
    pub min_rate_window: Duration,
    /// Resumable downloads ([`HubClient::download_resumable`]): files of at least
    /// `parallel_min_size` bytes are fetched in `chunk_size` Range chunks over up to
    /// `connections_per_file` connections.
    pub chunk_size: u64,
    pub parallel_min_size: u64,
    pub connections_per_file: usize,
    /// Chunked downloads write block-aligned bytes with `O_DIRECT` (Linux), past the page
    /// cache; off, every write goes through the page cache.
    pub direct_io: bool,
    /// How long retries of overload answers (429, 502, 503, 504) go on without progress (see
    /// `retry::RetryBudget`); other failures are retried `max_retries` times.
    pub retry_budget: Duration,
    /// PEM bundles whose certificates are trusted besides the bundled roots and the system
    /// store, each with the variable that named it (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
    /// `CURL_CA_BUNDLE`), for mirrors behind a private CA.
    pub ca_bundles: Vec<(String, PathBuf)>,
    /// The proxy variables that are set (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, lower case
    /// too) with their values, credentials removed: reqwest reads them itself; kmm only names
    /// the proxy when a connection fails, since a proxy that is down looks like a hub that is.
    pub proxies: Vec<(String, String)>,
}

impl HubConfig {
    /// Defaults for `endpoint` (5 retries, 1 s base delay, 10 s connect, 30 s read timeouts,
    /// downloads below 1 kB/s for 30 s are stalled).
    /// The CLI takes overrides from `KMM_HUB_*` (see [`crate::ops::settings`]); a library
    /// caller sets the fields.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self::defaults(endpoint)
    }

    fn defaults(endpoint: impl Into<String>) -> Self {
        HubConfig {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            user_agent: format!("kmm/{}", env!("CARGO_PKG_VERSION")),
            max_retries: 5,
            retry_base_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            min_rate_bytes_per_sec: DEFAULT_MIN_RATE,
            min_rate_window: DEFAULT_MIN_RATE_WINDOW,
            chunk_size: chunked::DEFAULT_CHUNK_SIZE,
            parallel_min_size: chunked::DEFAULT_PARALLEL_MIN_SIZE,
            connections_per_file: chunked::DEFAULT_CONNECTIONS,
            direct_io: true,
            ca_bundles: Vec::new(),
            proxies: Vec::new(),
            retry_budget: retry::DEFAULT_RETRY_BUDGET,
        }
    }
}

/// The certificates of each configured PEM bundle; one that cannot be read or holds none is
/// `E_ARGS` naming its variable (kmm would otherwise fail later with a certificate error that
/// hides the typo).
fn extra_roots(bundles: &[(String, PathBuf)]) -> Result<Vec<reqwest::Certificate>> {
    let mut roots = Vec::new();
    for (variable, path) in bundles {
        let bad = |why: String| {
            Error::args(format!("{variable}=`{}` {why}", path.display())).with_hint(format!(
                "point {variable} at a PEM file of CA certificates, or unset it"
            ))
        };
        let bytes = fs_err::read(path).map_err(|error| bad(format!("cannot be read: {error}")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&bytes)
            .ok()
            .filter(|certificates| !certificates.is_empty())
            .ok_or_else(|| bad("holds no PEM certificate".to_string()))?;
        roots.extend(certificates);
    }
    Ok(roots)
}

/// Whether a repository is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gated {
    No,
    Auto,
    Manual,
}

/// What `GET /api/models/{repo}/revision/{rev}` says.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Canonical id (after the hub's redirect of a legacy id).
    pub id: String,
    /// The commit the revision resolves to.
    pub sha: String,
    pub gated: Gated,
    pub private: bool,
    /// `cardData.license` (first entry when a list), else a `license:` tag.
    pub license: Option<String>,
    pub tags: Vec<String>,
    /// `cardData.license_name` (the name of an `other` license), if any.
    pub license_name: Option<String>,
    /// `pipeline_tag`, e.g. `text-generation`.
    pub pipeline_tag: Option<String>,
    /// `library_name`, e.g. `transformers` or `gguf`.
    pub library_name: Option<String>,
}

/// A `GET /api/models` query: repeated `(key, value)` parameters (`search`, `author`,
/// `filter`, `sort`, `full`, ...) sent as given, and a cap on how many models to collect
/// across pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelQuery {
    params: Vec<(String, String)>,
    limit: usize,
}

impl ModelQuery {
    /// A query that returns at most `limit` models.
    pub fn new(limit: usize) -> Self {
        ModelQuery {
            params: Vec::new(),
            limit,
        }
    }

    /// Adds a parameter; repeat a key for list-valued parameters (`filter`, `expand`).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((key.into(), value.into()));
        self
    }
}

/// Redirect hops followed per request before giving up with "redirect loop".
const MAX_REDIRECTS: usize = 10;

/// The hint of every `E_VERIFY` about served bytes (wrong size or hash). The expected identity
/// may come from `kari-models.lock`, which keeps what the hub listed when it was written: after
/// a hub that lied, or a file that really changed upstream, only re-locking helps (found by
/// `tests/it/hostile_hub.rs`).
pub(crate) const VERIFY_HINT: &str = "the hub or mirror served other bytes than it lists (or than kari-models.lock recorded); retry, check the mirror if it persists, and if the file really changed upstream run `kmm lock --update <id>`";

/// `E_VERIFY`: the server serves `file` with another size than the listing (or lock) says.
fn size_mismatch(file: &UpstreamFile, why: String) -> Error {
    Error::verify(format!(
        "`{}` is not the {} bytes the hub lists",
        file.path, file.size
    ))
    .caused_by(why)
    .with_hint(VERIFY_HINT)
}

/// `E_VERIFY` unless the bytes served for `file` hashed to what the listing (or lock) says.
fn check_served_hash(
    file: &UpstreamFile,
    repo_id: &str,
    commit: &str,
    actual: &crate::upstream::FileHash,
) -> Result<()> {
    if *actual == file.hash {
        return Ok(());
    }
    Err(Error::verify(format!(
        "`{}` of `{repo_id}` at `{commit}` does not match its upstream hash",
        file.path
    ))
    .caused_by(format!(
        "expected {}, got {}",
        file.hash.display(),
        actual.display()
    ))
    .with_hint(VERIFY_HINT))
}

/// Caps on bodies held in memory: a hub (or a broken mirror) answering with gigabytes of JSON
/// is an error, not an out-of-memory kill.
const MAX_LISTING_PAGE_BYTES: usize = 64 << 20;
const MAX_INFO_BYTES: usize = 16 << 20;
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;
/// Guard against a server whose `Link` pages never end.
const MAX_PAGES: usize = 100_000;

/// Where a download starts: the hub's resolve URL of a file at a commit, or a URL given
/// (a presigned URL of the shared store); `repo_id` and `commit` name the file in messages.
pub(crate) struct FileOrigin<'a> {
    pub url: Url,
    pub repo_id: &'a str,
    pub commit: &'a str,
}

/// Client for one hub endpoint. Cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct HubClient {
    config: HubConfig,
    http: reqwest::Client,
    /// The endpoint's origin: the only one that ever sees the token.
    origin: url::Origin,
    /// Per origin (`scheme://host:port`), when a 429's `Retry-After` lets requests to it go
    /// again: every request of this client to that host waits until then, not only the one
    /// that was told (shared by clones).
    paused_until: std::sync::Arc<std::sync::Mutex<BTreeMap<String, tokio::time::Instant>>>,
    /// Per origin, how many file bodies may be in flight: halved on 429, grown back slowly.
    pub(crate) limits: std::sync::Arc<adaptive::ConnectionLimits>,
}

/// A successful API answer, fully read.
struct Fetched {
    /// The URL that answered, after redirects (base for relative `Link`s).
    url: Url,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why one request did not produce a response worth reading.
pub(crate) enum SendError {
    /// Worth another try (connection refused, reset, timed out).
    Transport(Transient),
    /// Retrying cannot help (redirect loop, unusable `Location`, unsendable token).
    Fatal(Error),
}

enum ReadError {
    TooLarge,
    Transport(Transient),
}

impl HubClient {
    /// Builds the shared connection pool. An endpoint that is not an `http(s)` URL is `E_ARGS`.
    pub fn new(mut config: HubConfig) -> Result<HubClient> {
        config.endpoint = config.endpoint.trim_end_matches('/').to_string();
        let bad_endpoint = || {
            Error::args(format!(
                "the hub endpoint `{}` is not an http(s) URL",
                redact_url(&config.endpoint)
            ))
            .with_hint("check `--mirror`, `HF_ENDPOINT` or `endpoint` in the manifest")
        };
        let endpoint = Url::parse(&config.endpoint).map_err(|_| bad_endpoint())?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.cannot_be_a_base() {
            return Err(bad_endpoint());
        }
        let mut builder = reqwest::Client::builder();
        for root in extra_roots(&config.ca_bundles)? {
            builder = builder.add_root_certificate(root);
        }
        let http = builder
            .user_agent(config.user_agent.clone())
            // Redirects are followed by hand so that the token never leaves the endpoint's
            // origin and hops are counted (see `send`).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(|err| {
                Error::internal("cannot set up the HTTP client").caused_by(err.to_string())
            })?;
        Ok(HubClient {
            paused_until: Default::default(),
            limits: Default::default(),
            origin: endpoint.origin(),
            config,
            http,
        })
    }

    /// The minimum-rate rule of file downloads, if it is on.
    fn min_rate(&self) -> Option<min_rate::MinRate> {
        min_rate::MinRate::new(
            self.config.min_rate_bytes_per_sec,
            self.config.min_rate_window,
        )
    }

    pub fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    /// Whether a token is configured (gated repos need one).
    pub fn has_token(&self) -> bool {
        self.config.token.is_some()
    }

    /// Checks that the endpoint answers HTTP at all (any status, within the connect timeout).
    /// Connection failure: `E_NET`.
    pub async fn ping(&self) -> Result<()> {
        let url = self.parse_url(&format!("{}/", self.config.endpoint))?;
        let shown = redact_url(url.as_str());
        match self
            .http
            .get(url)
            .timeout(self.config.connect_timeout)
            .send()
            .await
        {
            Ok(response) => {
                tracing::debug!(method = "GET", url = %shown, status = response.status().as_u16(), "hub ping");
                Ok(())
            }
            Err(err) => Err(Error::net(format!("cannot reach the hub at {shown}"))
                .with_hint(errors::ENDPOINT_HINT)
                .caused_by(errors::describe_transport(&err))),
        }
    }

    /// Resolves `revision` (branch, tag, `refs/pr/N` or commit) of `repo_id` to a commit.
    /// A legacy id without owner follows the hub's redirect; [`ModelInfo::id`] is canonical.
    pub async fn model_info(&self, repo_id: &str, revision: &str) -> Result<ModelInfo> {
        let span = tracing::info_span!("resolve", repo = repo_id, revision);
        async {
            let url = self.parse_url(&urls::model_info_url(
                &self.config.endpoint,
                repo_id,
                revision,
            ))?;
            let target = Target::revision(repo_id, revision);
            let fetched = self.get_bytes(url, &target, MAX_INFO_BYTES).await?;
            parse::model_info(&fetched.body, repo_id, &redact_url(fetched.url.as_str()))
        }
        .instrument(span)
        .await
    }

    /// Every file of `repo_id` at `commit` (recursive tree, all pages), sorted by path. Paths are
    /// checked with the rules of [`crate::layout::check_repo_path`]; a bad or duplicate path is
    /// `E_SCHEMA`.
    pub async fn list_tree(&self, repo_id: &str, commit: &str) -> Result<Vec<UpstreamFile>> {
        let span = tracing::info_span!("resolve", repo = repo_id, revision = commit);
        async {
            let first = self.parse_url(&urls::tree_url(&self.config.endpoint, repo_id, commit))?;
            let first_shown = first.clone();
            let target = Target::revision(repo_id, commit);
            let mut files = BTreeMap::new();
            let mut pages = self.pages(first, &target, MAX_LISTING_PAGE_BYTES);
            while let Some(fetched) = pages.next_page().await? {
                parse::tree_page(&fetched.body, &redact_url(fetched.url.as_str()), &mut files)?;
            }
            parse::check_no_file_is_a_folder(&files, &redact_url(first_shown.as_str()))?;
            Ok(files.into_values().collect())
        }
        .instrument(span)
        .await
    }

    /// The proxy variable (and its value) that applies to `scheme`, as reqwest picks it: the
    /// scheme's own (`HTTPS_PROXY` or `HTTP_PROXY`, either case), else `ALL_PROXY`.
    fn proxy_for(&self, scheme: &str) -> Option<&(String, String)> {
        let own = if scheme == "https" {
            "https_proxy"
        } else {
            "http_proxy"
        };
        let named = |wanted: &str| {
            self.config
                .proxies
                .iter()
                .find(|(variable, _)| variable.eq_ignore_ascii_case(wanted))
        };
        named(own).or_else(|| named("all_proxy"))
    }

    /// Waits until requests to `host` may go again (see [`HubClient::paused_until`]).
    async fn wait_while_paused(&self, host: &str) {
        loop {
            let until = self
                .paused_until
                .lock()
                .expect("pause lock")
                .get(host)
                .copied();
            match until {
                Some(until) if until > tokio::time::Instant::now() => {
                    tracing::debug!(host, "waiting out the hub's Retry-After");
                    tokio::time::sleep_until(until).await;
                }
                _ => return,
            }
        }
    }

    /// Holds every request to `host` for `wait` (a later deadline wins over an earlier one).
    fn pause(&self, host: &str, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("pause lock");
        let entry = paused.entry(host.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// A fresh retry budget for one request loop, from the configuration.
    fn retry_budget(&self) -> retry::RetryBudget {
        retry::RetryBudget::new(
            self.config.max_retries,
            self.config.retry_base_delay,
            self.config.retry_budget,
        )
    }

    /// An answer that is neither a success nor handled by the caller: a retryable status gives
    /// what to retry on (and any `Retry-After`); any other is the error it means (`E_NOT_FOUND`,
    /// `E_LICENSE`, ...), with the final URL redacted.
    async fn unsuccessful(
        &self,
        response: reqwest::Response,
        target: &Target<'_>,
    ) -> Result<(Transient, Option<std::time::Duration>)> {
        let status = response.status().as_u16();
        if retry::is_retryable_status(status) {
            return Ok((
                Transient::Status(status),
                retry::parse_retry_after(response.headers()),
            ));
        }
        let final_url = redact_url(response.url().as_str());
        let headers = response.headers().clone();
        let body = read_capped(response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        Err(errors::error_from_status(
            status,
            &headers,
            &body,
            target,
            &final_url,
            self.secret(),
        ))
    }

    /// Bytes `start .. start + len` of `path` in `repo_id` at `commit` (fewer at the end of the
    /// file, none past it), for reading file headers without downloading the file. Goes through
    /// `/resolve/` and follows the CDN redirect like [`Self::download`] (the token stays on the
    /// endpoint's origin). A server that ignores `Range` and answers `200` is read only as far as
    /// needed, then the connection is dropped. Retried like API requests.
    pub async fn fetch_range(
        &self,
        repo_id: &str,
        commit: &str,
        path: &str,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self.resolve_url(repo_id, commit, path)?;
        let target = Target::file(repo_id, commit, path);
        let shown = redact_url(url.as_str());
        let range = (start, Some(start + len - 1));
        let mut budget = self.retry_budget();
        loop {
            budget.start_attempt();
            let (transient, retry_after) = match self.send_range(url.clone(), Some(range)).await {
                Err(SendError::Fatal(error)) => return Err(error),
                Err(SendError::Transport(transient)) => (transient, None),
                Ok(response) if matches!(response.status().as_u16(), 200 | 206) => {
                    let skip = if response.status().as_u16() == 200 {
                        start
                    } else {
                        0
                    };
                    match read_window(response, skip, len).await {
                        Ok(bytes) => return Ok(bytes),
                        Err(transient) => (transient, None),
                    }
                }
                Ok(response) if response.status().as_u16() == 416 => return Ok(Vec::new()),
                Ok(response) => self.unsuccessful(response, &target).await?,
            };
            let Some(delay) = budget.after(&transient, false, retry_after) else {
                return Err(errors::retries_exhausted(
                    &target,
                    &shown,
                    budget.attempts(),
                    &transient,
                ));
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Models from `GET /api/models` with the query's parameters, following `Link` pages until
    /// `query`'s limit is reached or the listing ends.
    pub async fn list_models(&self, query: &ModelQuery) -> Result<Vec<serde_json::Value>> {
        let mut models = Vec::new();
        if query.limit == 0 {
            return Ok(models);
        }
        let mut first = self.parse_url(&format!("{}/api/models", self.config.endpoint))?;
        {
            let mut pairs = first.query_pairs_mut();
            for (key, value) in &query.params {
                pairs.append_pair(key, value);
            }
            if !query.params.iter().any(|(key, _)| key == "limit") {
                pairs.append_pair("limit", &query.limit.min(1000).to_string());
            }
        }
        let target = Target::repo("");
        let mut pages = self.pages(first, &target, MAX_LISTING_PAGE_BYTES);
        while models.len() < query.limit {
            let Some(fetched) = pages.next_page().await? else {
                break;
            };
            let page: Vec<serde_json::Value> =
                serde_json::from_slice(&fetched.body).map_err(|err| {
                    Error::schema(format!(
                        "the hub's model listing from {} is not a JSON array",
                        redact_url(fetched.url.as_str())
                    ))
                    .caused_by(err.to_string())
                })?;
            models.extend(page);
        }
        models.truncate(query.limit);
        Ok(models)
    }

    /// `GET /api/models/{repo}/auth-check`: `Ok` when this client (with its token, if any) may
    /// download `repo_id`, else the mapped error (`E_LICENSE` for a gated repo, `E_NOT_FOUND`,
    /// `E_PERM`).
    pub async fn auth_check(&self, repo_id: &str) -> Result<()> {
        let url = self.parse_url(&urls::auth_check_url(&self.config.endpoint, repo_id))?;
        self.get_bytes(url, &Target::repo(repo_id), MAX_ERROR_BODY_BYTES)
            .await
            .map(|_| ())
    }

    /// The resolve URL of `path` in `repo_id` at `commit` on this client's endpoint: where
    /// every download of a file starts (the hub answers it or redirects to its CDN).
    fn resolve_url(&self, repo_id: &str, commit: &str, path: &str) -> Result<Url> {
        self.parse_url(&urls::resolve_url(
            &self.config.endpoint,
            repo_id,
            commit,
            path,
        ))
    }

    fn parse_url(&self, url: &str) -> Result<Url> {
        Url::parse(url).map_err(|err| {
            Error::internal(format!("built an invalid URL `{}`", redact_url(url)))
                .caused_by(err.to_string())
        })
    }

    fn secret(&self) -> Option<&str> {
        self.config.token.as_ref().map(Token::expose)
    }

    /// One GET, following up to [`MAX_REDIRECTS`] redirects by hand. The token goes only to
    /// URLs on the endpoint's origin (relative and same-origin redirects keep it, a redirect to
    /// the CDN drops it). `range_from` adds `Range: bytes={n}-`. The returned response's
    /// `url()` is the URL that finally answered.
    pub(crate) async fn send(
        &self,
        start: Url,
        range_from: Option<u64>,
    ) -> std::result::Result<reqwest::Response, SendError> {
        self.send_range(start, range_from.map(|from| (from, None)))
            .await
    }

    /// [`HubClient::send`] with an optional inclusive end: `Range: bytes={from}-{to}`.
    pub(crate) async fn send_range(
        &self,
        start: Url,
        range: Option<(u64, Option<u64>)>,
    ) -> std::result::Result<reqwest::Response, SendError> {
        let mut url = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.http.get(url.clone());
            if let Some(token) = &self.config.token
                && url.origin() == self.origin
            {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        SendError::Fatal(
                            Error::args("the token contains characters not allowed in a header")
                                .with_hint("check HF_TOKEN / HF_TOKEN_PATH"),
                        )
                    })?;
                value.set_sensitive(true);
                request = request.header(header::AUTHORIZATION, value);
            }
            match range {
                Some((from, Some(to))) => {
                    request = request.header(header::RANGE, format!("bytes={from}-{to}"));
                }
                Some((from, None)) => {
                    request = request.header(header::RANGE, format!("bytes={from}-"));
                }
                None => {}
            }
            let shown = redact_url(url.as_str());
            let host = url.origin().ascii_serialization();
            self.wait_while_paused(&host).await;
            let response = match request.send().await {
                Ok(response) => response,
                Err(err) => {
                    // Retrying cannot make a certificate trusted: fail at once, saying how to.
                    if let Some(error) = errors::certificate_error(&err, &shown) {
                        return Err(SendError::Fatal(error));
                    }
                    let transient = match Transient::from_reqwest(&err) {
                        Transient::Connect(detail) => match self.proxy_for(url.scheme()) {
                            Some((variable, proxy)) => Transient::Connect(format!(
                                "{detail} (through the proxy `{proxy}` that {variable} names: is it up?)"
                            )),
                            None => Transient::Connect(detail),
                        },
                        other => other,
                    };
                    tracing::debug!(method = "GET", url = %shown, error = ?transient, "hub request failed");
                    return Err(SendError::Transport(transient));
                }
            };
            let status = response.status();
            tracing::debug!(method = "GET", url = %shown, status = status.as_u16(), "hub request");
            if status.as_u16() == 429
                && let Some(wait) = retry::parse_retry_after(response.headers())
            {
                self.pause(&host, wait.min(retry::MAX_RETRY_AFTER));
            }
            let is_followed_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|value| value.to_str().ok());
            let Some(location) = location.filter(|_| is_followed_redirect) else {
                return Ok(response);
            };
            let next = url
                .join(location)
                .ok()
                .filter(|next| matches!(next.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    SendError::Fatal(
                        Error::net(format!("{shown} redirected to an unusable location"))
                            .caused_by(redact_url(location)),
                    )
                })?;
            url = next;
        }
        Err(SendError::Fatal(
            Error::net(format!(
                "redirect loop: more than {MAX_REDIRECTS} redirects starting at {}",
                redact_url(start.as_str())
            ))
            .with_hint(errors::ENDPOINT_HINT),
        ))
    }

    /// A GET of a small API document with retries on the retryable conditions of
    /// [`retry`]; any other error status is mapped with [`errors::error_from_status`].
    async fn get_bytes(&self, url: Url, target: &Target<'_>, max_bytes: usize) -> Result<Fetched> {
        let shown = redact_url(url.as_str());
        let mut budget = self.retry_budget();
        loop {
            budget.start_attempt();
            let (transient, retry_after) = match self.send(url.clone(), None).await {
                Err(SendError::Fatal(error)) => return Err(error),
                Err(SendError::Transport(transient)) => (transient, None),
                Ok(response) if response.status().is_success() => {
                    let final_url = response.url().clone();
                    let headers = response.headers().clone();
                    match read_capped(response, max_bytes).await {
                        Ok(body) => {
                            return Ok(Fetched {
                                url: final_url,
                                headers,
                                body,
                            });
                        }
                        Err(ReadError::TooLarge) => {
                            return Err(Error::schema(format!(
                                "the hub's answer from {} is larger than {} MiB",
                                redact_url(final_url.as_str()),
                                max_bytes >> 20
                            )));
                        }
                        Err(ReadError::Transport(transient)) => (transient, None),
                    }
                }
                Ok(response) => self.unsuccessful(response, target).await?,
            };
            let Some(delay) = budget.after(&transient, false, retry_after) else {
                return Err(errors::retries_exhausted(
                    target,
                    &shown,
                    budget.attempts(),
                    &transient,
                ));
            };
            tracing::debug!(url = %shown, attempt = budget.attempts(), failure = ?transient, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The pages of a `Link`-paginated listing starting at `first`, each fetched (with
    /// retries) when asked for; next links are followed verbatim.
    fn pages<'a>(&'a self, first: Url, target: &'a Target<'a>, max_bytes: usize) -> Pages<'a> {
        Pages {
            client: self,
            next: Some(first),
            seen: HashSet::new(),
            target,
            max_bytes,
        }
    }
}

/// A `Link`-paginated listing, read one page at a time.
struct Pages<'a> {
    client: &'a HubClient,
    next: Option<Url>,
    seen: HashSet<Url>,
    target: &'a Target<'a>,
    max_bytes: usize,
}

impl Pages<'_> {
    /// The next page, or `None` after the last one (no `rel="next"` link).
    async fn next_page(&mut self) -> Result<Option<Fetched>> {
        let Some(url) = self.next.take() else {
            return Ok(None);
        };
        if !self.seen.insert(url.clone()) || self.seen.len() > MAX_PAGES {
            return Err(Error::schema(format!(
                "the hub's pagination does not end (page {} again, or too many pages)",
                redact_url(url.as_str())
            )));
        }
        let fetched = self
            .client
            .get_bytes(url, self.target, self.max_bytes)
            .await?;
        self.next = urls::next_link(
            fetched
                .headers
                .get_all(header::LINK)
                .iter()
                .filter_map(|value| value.to_str().ok()),
            &fetched.url,
        );
        Ok(Some(fetched))
    }
}

/// Skips `skip` bytes of a body, then keeps at most `len` bytes; stops reading once it has them.
async fn read_window(
    mut response: reqwest::Response,
    mut skip: u64,
    len: u64,
) -> std::result::Result<Vec<u8>, Transient> {
    let mut body = Vec::new();
    while (body.len() as u64) < len {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let mut chunk = &chunk[..];
                let skipped = skip.min(chunk.len() as u64);
                chunk = &chunk[skipped as usize..];
                skip -= skipped;
                let room = (len - body.len() as u64).min(chunk.len() as u64) as usize;
                body.extend_from_slice(&chunk[..room]);
            }
            Ok(None) => break,
            Err(err) => return Err(Transient::from_reqwest(&err)),
        }
    }
    Ok(body)
}

/// Reads a whole body, refusing more than `max_bytes`.
async fn read_capped(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> std::result::Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|len| len > max_bytes as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_bytes {
                    return Err(ReadError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => return Err(ReadError::Transport(Transient::from_reqwest(&err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn token_never_shows_in_debug() {
        let mut config = HubConfig::new("http://127.0.0.1:9/");
        config.token = Some(Token::new("hf_SECRET_test_token"));
        let client = HubClient::new(config).unwrap();
        assert_eq!(client.endpoint(), "http://127.0.0.1:9");
        let debug = format!("{client:?}");
        assert!(!debug.contains("hf_SECRET_test_token"), "{debug}");
        assert!(debug.contains("Token(<redacted>)"));
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        for bad in ["", "huggingface.co", "ftp://hub.test", "mailto:x@y"] {
            let error = HubClient::new(HubConfig::new(bad)).unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Args, "{bad}");
        }
        let error =
            HubClient::new(HubConfig::new("ftp://user:hf_SECRET@hub.test/?t=1")).unwrap_err();
        assert!(!format!("{error:?}").contains("hf_SECRET"));
    }

    /// What the one-trick loopback server below answers.
    #[derive(Clone)]
    enum Reply {
        /// These bytes, then close.
        Raw(&'static [u8]),
        /// This head, then 1 MiB chunks until the client hangs up.
        Endless(&'static [u8]),
        /// This head and a few body bytes, then silence.
        Stall(&'static [u8]),
        /// This head, then one body byte every 20 ms until the client hangs up.
        Trickle(&'static [u8]),
    }

    /// An HTTP/1.1 server on 127.0.0.1 for the cases the fake hub cannot produce (redirect
    /// loops, endless and stalled bodies). Counts the requests it receives.
    async fn serve(reply: Reply) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    match reply {
                        Reply::Raw(bytes) => {
                            let _ = stream.write_all(bytes).await;
                        }
                        Reply::Endless(head) => {
                            let chunk = vec![b' '; 1 << 20];
                            if stream.write_all(head).await.is_ok() {
                                while stream.write_all(&chunk).await.is_ok() {}
                            }
                        }
                        Reply::Stall(head) => {
                            let _ = stream.write_all(head).await;
                            let _ = stream.write_all(b"0123456789").await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Reply::Trickle(head) => {
                            let _ = stream.write_all(head).await;
                            while stream.write_all(b"x").await.is_ok() {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                });
            }
        });
        (url, count)
    }

    fn quick_client(url: &str) -> HubClient {
        let mut config = HubConfig::new(url);
        config.token = Some(Token::new("hf_SECRET_test_token"));
        config.max_retries = 2;
        config.retry_base_delay = Duration::from_millis(1);
        config.read_timeout = Duration::from_millis(200);
        HubClient::new(config).unwrap()
    }

    const SHA: &str = "e7da7f221d5bf496a48136c0cd264e630fe9fcc8";

    #[tokio::test]
    async fn a_429_with_retry_after_holds_every_request_to_its_host_and_ends_on_the_time_budget() {
        let (url, count) = serve(Reply::Raw(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ))
        .await;
        let mut config = HubConfig::new(&url);
        config.retry_base_delay = Duration::from_millis(1);
        config.max_retries = 0; // overload answers are not counted: only the budget ends them
        config.retry_budget = Duration::from_millis(1500);
        let client = HubClient::new(config).unwrap();
        let started = std::time::Instant::now();
        let error = client.model_info("org/m", "main").await.unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Net);
        assert!(error.message().contains("rate limited"), "{error}");
        // Each retry waited out the second the server asked for.
        let requests = count.load(Ordering::SeqCst);
        assert!((2..=3).contains(&requests), "{requests} requests");
        assert!(started.elapsed() >= Duration::from_secs(requests as u64 - 1));
        // A clone shares the pause: its request to the same host waits too.
        let host = Url::parse(&url).unwrap().origin().ascii_serialization();
        client.clone().pause(&host, Duration::from_millis(300));
        let waited = std::time::Instant::now();
        client.wait_while_paused(&host).await;
        assert!(waited.elapsed() >= Duration::from_millis(300));
        assert!(
            !client
                .paused_until
                .lock()
                .unwrap()
                .contains_key("http://127.0.0.1:1")
        );
    }

    #[tokio::test]
    async fn redirect_loops_end_in_e_net() {
        let (url, count) = serve(Reply::Raw(
            b"HTTP/1.1 302 Found\r\nLocation: /again?sig=x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ))
        .await;
        let error = quick_client(&url)
            .model_info("org/m", "main")
            .await
            .unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Net);
        assert!(error.message().contains("redirect loop"), "{error}");
        assert_eq!(count.load(Ordering::SeqCst), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn endless_and_garbage_listings_are_e_schema() {
        // The tree listing of a server that answers `reply`: its error and the server's URL.
        async fn listing_error(reply: Reply) -> (Error, String) {
            let (url, _) = serve(reply).await;
            let error = quick_client(&url)
                .list_tree("org/m", SHA)
                .await
                .unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Schema);
            (error, url)
        }
        let (error, _) = listing_error(Reply::Endless(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[",
        ))
        .await;
        assert!(error.message().contains("larger than 64 MiB"), "{error}");

        let (error, url) = listing_error(Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n[{,]}",
        ))
        .await;
        assert!(
            error
                .message()
                .contains(&format!("{url}/api/models/org/m/tree/{SHA}"))
        );
        assert!(
            !error.message().contains("recursive"),
            "query is redacted: {error}"
        );
    }

    #[tokio::test]
    async fn a_stalled_body_is_retried_then_e_net() {
        let (url, count) = serve(Reply::Stall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let file = UpstreamFile {
            path: "f.bin".into(),
            size: 100,
            hash: crate::upstream::FileHash::GitSha1(SHA.into()),
        };
        let error = quick_client(&url)
            .download("org/m", SHA, &file, &dest, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Net);
        assert!(error.message().contains("f.bin"), "{error}");
        // The first attempt made progress (10 bytes), so it does not count against the
        // budget; the next three (`Range` answered with a full `200`, so no net progress) do.
        assert!(error.message().contains("4 attempts"), "{error}");
        assert!(
            error.causes().iter().any(|c| c.contains("timed out")),
            "{error:?}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 4);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_trickling_body_is_dropped_below_the_minimum_rate_on_fresh_connections() {
        // Keep-alive: only dropping the stalled response makes the client connect again.
        let (url, count) = serve(Reply::Trickle(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let file = UpstreamFile {
            path: "f.bin".into(),
            size: 100,
            hash: crate::upstream::FileHash::GitSha1(SHA.into()),
        };
        let mut client = quick_client(&url);
        // 50 B/s, a byte every 20 ms: never silent for the 200 ms read timeout.
        client.config.min_rate_bytes_per_sec = 1000;
        client.config.min_rate_window = Duration::from_millis(200);
        let error = client
            .download("org/m", SHA, &file, &dest, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Net);
        let message = error.message();
        assert!(message.contains("file `f.bin` of `org/m`"), "{error}");
        assert!(message.contains("after 3 attempts"), "{error}");
        assert!(message.contains("B/s over the last 200ms"), "{error}");
        assert!(message.contains("below the 1.0 kB/s minimum"), "{error}");
        assert!(error.hint().unwrap().contains("KMM_HUB_MIN_RATE_TIME"));
        // Two retries (`max_retries`), each on a connection of its own.
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn fetch_range_cuts_the_window_out_of_a_full_answer() {
        // A server that ignores `Range` and sends the whole file with 200.
        let (url, count) = serve(Reply::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
        ))
        .await;
        let client = quick_client(&url);
        let bytes = client
            .fetch_range("org/m", SHA, "f.bin", 3, 4)
            .await
            .unwrap();
        assert_eq!(bytes, b"3456");
        // Asking past the end gives what there is.
        let bytes = client
            .fetch_range("org/m", SHA, "f.bin", 8, 100)
            .await
            .unwrap();
        assert_eq!(bytes, b"89");
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert!(
            client
                .fetch_range("org/m", SHA, "f.bin", 0, 0)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn model_query_collects_params() {
        let query = ModelQuery::new(5)
            .param("search", "bert")
            .param("filter", "a")
            .param("filter", "b");
        assert_eq!(query.limit, 5);
        assert_eq!(query.params.len(), 3);
    }
}
