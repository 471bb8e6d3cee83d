//! The fake Hugging Face hub used by tests, benchmarks and demos: real HTTP on 127.0.0.1, two
//! origins (the API and a CDN for LFS bytes), fault injection and a request log.
//!
//! It implements the checklist of hf-protocol.md §14 on its own, from the protocol notes, and
//! depends on no kmm code, so that kmm is tested against an independent reading of the protocol.
//! Its fidelity is checked by `tests/it/fake_hub_selftest.rs` and, with the real Python client
//! (`huggingface_hub`), by `tests/it/interop.rs`.
//!
//! Edges: `repo` (builder + hashed view), `server` (the two axum apps and the protocol),
//! `faults` (what can go wrong on purpose), `fixtures` (repos from a folder on disk),
//! `zero_copy` (the CDN with `sendfile`, for benchmarks). This file
//! owns the lifecycle: a dedicated thread with its own tokio runtime, so that sync tests and
//! async tests can both start a hub, and `Drop` stops it.
//!
//! Tokens: any bearer token starting with `hf_` is a valid account; anything else is an invalid
//! credential (401 on every API request). Repos decide which valid tokens they admit.

pub mod faults;
pub mod fixtures;
pub mod repo;
pub mod server;
pub mod zero_copy;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

pub use faults::Fault;
#[allow(unused_imports)] // re-exported for tests; not every user needs every item
pub use repo::{FileSpec, GatedMode, RepoSpec, git_blob_sha1, lfs_pointer, sha256_hex};

use server::HubState;

/// Which of the two listeners received a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Api,
    Cdn,
}

/// One request as received, with the status it got (0 while it is still being answered).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub server: ServerKind,
    pub method: String,
    /// Raw path as received (still percent-encoded).
    pub path: String,
    /// Raw query ("" if none).
    pub query: String,
    /// Header names are lowercase.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// File-content bytes sent for this request so far. Bytes a killed client's connection
    /// still produces count here, not against a later request, so a test can measure exactly
    /// what one run fetched (see [`FakeHub::body_bytes_served_since`]).
    pub body_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl LoggedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `/resolve/` request or any CDN request: a request for file bytes or file metadata.
    pub fn is_file_request(&self) -> bool {
        self.server == ServerKind::Cdn || self.path.contains("/resolve/")
    }
}

/// Page sizes of the paginated endpoints. The Hub's are 1000 for listings and trees and 50 for
/// trees with `expand=true`; tests lower them to exercise pagination with a handful of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageSizes {
    pub models: usize,
    pub tree: usize,
    pub tree_expand: usize,
}

impl Default for PageSizes {
    fn default() -> Self {
        PageSizes {
            models: 1000,
            tree: 1000,
            tree_expand: 50,
        }
    }
}

/// How the CDN listener sends file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdnMode {
    /// A streamed body: supports every [`Fault`] (throttling, drops, wrong bytes).
    Streaming,
    /// `sendfile` from fixture files, as production CDNs serve; no faults ([`zero_copy`]).
    ZeroCopy,
}

/// A running fake hub. Dropping it stops both listeners.
pub struct FakeHub {
    state: Arc<HubState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Starts a hub on two free loopback ports. Panics if loopback ports cannot be bound.
    pub fn start(repos: Vec<RepoSpec>) -> FakeHub {
        FakeHub::start_on(repos, 0, 0).expect("fake hub: bind 127.0.0.1")
    }

    /// Starts a hub on the given ports (0 = any free port). Both listeners are bound when this
    /// returns, so the URLs are immediately usable.
    pub fn start_on(
        repos: Vec<RepoSpec>,
        api_port: u16,
        cdn_port: u16,
    ) -> std::io::Result<FakeHub> {
        FakeHub::start_with(repos, api_port, cdn_port, CdnMode::Streaming)
    }

    /// [`FakeHub::start_on`] with a choice of CDN.
    pub fn start_with(
        repos: Vec<RepoSpec>,
        api_port: u16,
        cdn_port: u16,
        cdn_mode: CdnMode,
    ) -> std::io::Result<FakeHub> {
        let api = std::net::TcpListener::bind(("127.0.0.1", api_port))?;
        let cdn = std::net::TcpListener::bind(("127.0.0.1", cdn_port))?;
        api.set_nonblocking(true)?;
        cdn.set_nonblocking(true)?;
        let state = Arc::new(HubState::new(
            format!("http://{}", api.local_addr()?),
            format!("http://{}", cdn.local_addr()?),
        ));
        for repo in repos {
            state.put_repo(repo);
        }
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new().name("fake-hub".to_string()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("fake hub: tokio runtime");
            runtime.block_on(async move {
                let api = tokio::net::TcpListener::from_std(api).expect("fake hub: api listener");
                let cdn = tokio::net::TcpListener::from_std(cdn).expect("fake hub: cdn listener");
                let api_app = server::api_router(thread_state.clone());
                let cdn_server = async move {
                    match cdn_mode {
                        CdnMode::Streaming => {
                            axum::serve(cdn, server::cdn_router(thread_state)).await
                        }
                        CdnMode::ZeroCopy => zero_copy::serve(cdn, thread_state).await,
                    }
                };
                tokio::select! {
                    result = axum::serve(api, api_app).into_future() => result.expect("fake hub: api server"),
                    result = cdn_server => result.expect("fake hub: cdn server"),
                    _ = stopped => {}
                }
            });
            // Open keep-alive connections must not hold the test up: drop them with the runtime.
            runtime.shutdown_background();
        })?;
        Ok(FakeHub {
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The endpoint to give clients, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        self.state.api_url.clone()
    }

    /// The CDN origin that serves LFS bytes (another port, hence another origin).
    pub fn cdn_url(&self) -> String {
        self.state.cdn_url.clone()
    }

    /// Adds a repo, or replaces the one with the same id (e.g. to add a commit on main).
    pub fn put_repo(&self, repo: RepoSpec) {
        self.state.put_repo(repo);
    }

    /// Requests received by both servers, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.log.lock().unwrap().clear();
    }

    pub fn add_fault(&self, fault: Fault) {
        self.state.faults.lock().unwrap().add(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// File-content bytes sent so far by resolve GETs and CDN GETs.
    pub fn body_bytes_served(&self) -> u64 {
        self.state.served.load(Ordering::Relaxed)
    }

    /// For each file body sent so far, in the order they started: how many file bodies were
    /// being sent (itself included) when it started.
    pub fn file_bodies_in_flight_at_start(&self) -> Vec<usize> {
        self.state.concurrency.at_start.lock().unwrap().clone()
    }

    /// File-content bytes sent for the requests logged at index `first` and later (take
    /// `requests().len()` before a run), whenever the bytes were sent.
    pub fn body_bytes_served_since(&self, first: usize) -> u64 {
        let log = self.state.log.lock().unwrap();
        log.iter()
            .skip(first)
            .map(|request| request.body_bytes.load(Ordering::Relaxed))
            .sum()
    }

    pub fn set_page_sizes(&self, sizes: PageSizes) {
        *self.state.page_sizes.lock().unwrap() = sizes;
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
