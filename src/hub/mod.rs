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
//! Edges: talks HTTP and writes only the single destination file it is given by `apply`; it never
//! touches the registry or the layout.

use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::upstream::UpstreamFile;

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
}

impl HubConfig {
    /// Defaults for `endpoint` (5 retries, 1 s base delay, 10 s connect, 30 s read timeouts).
    pub fn new(endpoint: impl Into<String>) -> Self {
        HubConfig {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            user_agent: format!("kmm/{}", env!("CARGO_PKG_VERSION")),
            max_retries: 5,
            retry_base_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
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
}

/// Client for one hub endpoint. Cheap to clone (shares the connection pool).
#[derive(Debug, Clone)]
pub struct HubClient {
    config: HubConfig,
}

impl HubClient {
    pub fn new(config: HubConfig) -> Result<HubClient> {
        Ok(HubClient { config })
    }

    pub fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    /// Checks that the endpoint answers HTTP at all (any status). Connection failure: `E_NET`.
    pub async fn ping(&self) -> Result<()> {
        todo!()
    }

    /// Resolves `revision` (branch, tag, `refs/pr/N` or commit) of `repo_id` to a commit.
    pub async fn model_info(&self, repo_id: &str, revision: &str) -> Result<ModelInfo> {
        todo!("{repo_id} {revision}")
    }

    /// Every file of `repo_id` at `commit` (recursive tree, all pages), sorted by path. Paths are
    /// checked with [`crate::layout::check_repo_path`]; a bad or duplicate path is `E_SCHEMA`.
    pub async fn list_tree(&self, repo_id: &str, commit: &str) -> Result<Vec<UpstreamFile>> {
        todo!("{repo_id} {commit}")
    }

    /// Downloads `file` of `repo_id` at `commit` into `dest` (created or truncated), hashing as
    /// the bytes land; resumes dropped connections with `Range` within this call; returns only
    /// when `dest` holds exactly `file.size` bytes with `file.hash`. Wrong bytes: `E_VERIFY`
    /// (and `dest` is removed). `on_progress` receives the number of new bytes written.
    pub async fn download(
        &self,
        repo_id: &str,
        commit: &str,
        file: &UpstreamFile,
        dest: &Path,
        on_progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        todo!("{repo_id} {commit} {file:?} {dest:?} {:p}", on_progress)
    }
}

/// A URL fit for messages and logs: no userinfo, no query string (signed CDN URLs carry
/// credentials there).
pub fn redact_url(url: &str) -> String {
    todo!("{url}")
}
