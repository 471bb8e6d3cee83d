//! The HTTP side of the fake hub: two axum apps over one shared state.
//!
//! The API app answers what hf-protocol.md §14 lists (listing, info, tree, refs, auth-check,
//! resolve/raw, errors, legacy-id redirects); the CDN app serves LFS bytes by sha256 on another
//! origin, as the Hub's signed CDN URLs do. Paths are parsed by hand from the raw (still
//! percent-encoded) URI rather than with axum's router, because revisions and tree paths arrive
//! either as one `%2F`-joined segment or as real segments and both must be accepted.
//!
//! Auth rules (hf-protocol.md §6.6): a bearer token starting with `hf_` is a valid account; any
//! other bearer value is rejected everywhere on the API origin with 401 "Invalid credentials in
//! Authorization header". A private repo is visible only to its allowed tokens (otherwise 401
//! `RepoNotFound` anonymous, 404 with a token). A gated repo's metadata is public; its files and
//! `auth-check` need an allowed token (401 `GatedRepo` anonymous, 403 with another token).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};

use super::faults::{FaultSet, file_body};
use super::repo::{Commit, Repo, RepoFile, RepoSpec};
use super::{LoggedRequest, PageSizes, ServerKind};

/// Characters left unencoded in a path segment we emit (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const INVALID_CREDENTIALS: &str = "Invalid credentials in Authorization header";

/// Everything both apps share. Locks are std mutexes held only for short, await-free sections.
pub(crate) struct HubState {
    pub api_url: String,
    pub cdn_url: String,
    pub catalog: RwLock<Catalog>,
    pub log: Mutex<Vec<LoggedRequest>>,
    pub faults: Mutex<FaultSet>,
    pub served: Arc<AtomicU64>,
    pub concurrency: Arc<super::faults::Concurrency>,
    pub page_sizes: Mutex<PageSizes>,
    request_counter: AtomicU64,
}

/// Repos by canonical id, legacy aliases, and every LFS blob ever served (the CDN is
/// content-addressed, so a URL handed out before `put_repo` keeps working).
#[derive(Default)]
pub(crate) struct Catalog {
    pub repos: BTreeMap<String, Arc<Repo>>,
    pub aliases: BTreeMap<String, String>,
    pub blobs: HashMap<String, Bytes>,
    /// Files on disk holding blobs, by sha256 (fixture folders), for the zero-copy CDN.
    pub blob_sources: HashMap<String, std::path::PathBuf>,
}

impl HubState {
    pub fn new(api_url: String, cdn_url: String) -> HubState {
        HubState {
            api_url,
            cdn_url,
            catalog: RwLock::new(Catalog::default()),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultSet::default()),
            served: Arc::new(AtomicU64::new(0)),
            concurrency: Arc::default(),
            page_sizes: Mutex::new(PageSizes::default()),
            request_counter: AtomicU64::new(0),
        }
    }

    pub fn put_repo(&self, spec: RepoSpec) {
        let repo = Arc::new(Repo::build(spec));
        let mut catalog = self.catalog.write().unwrap();
        for commit in &repo.commits {
            for file in commit.files.values().filter(|f| f.lfs) {
                catalog
                    .blobs
                    .insert(file.sha256.clone(), file.content.clone());
                if let Some(source) = &file.source {
                    catalog
                        .blob_sources
                        .insert(file.sha256.clone(), source.clone());
                }
            }
        }
        catalog
            .aliases
            .retain(|_, canonical| canonical != repo.id());
        for alias in &repo.spec.aliases {
            catalog.aliases.insert(alias.clone(), repo.id().to_string());
        }
        catalog.repos.insert(repo.id().to_string(), repo);
    }
}

pub(crate) fn api_router(state: Arc<HubState>) -> Router {
    Router::new().fallback(api_entry).with_state(state)
}

pub(crate) fn cdn_router(state: Arc<HubState>) -> Router {
    Router::new().fallback(cdn_entry).with_state(state)
}

/// One request as the handlers see it.
pub(super) struct Ctx {
    pub(super) method: Method,
    raw_path: String,
    raw_query: String,
    decoded_path: String,
    pub(super) headers: HeaderMap,
    query: Vec<(String, String)>,
    /// File-content bytes sent for this request (shared with its log entry).
    pub(super) body_bytes: Arc<AtomicU64>,
}

impl Ctx {
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn params(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn flag(&self, key: &str) -> bool {
        self.param(key)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"))
    }

    /// Raw path segments after the leading `/`, still percent-encoded.
    fn raw_segments(&self) -> Vec<&str> {
        self.raw_path.trim_start_matches('/').split('/').collect()
    }

    fn caller(&self) -> Caller {
        let Some(value) = self
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Caller::Anonymous;
        };
        match value.strip_prefix("Bearer ").map(str::trim) {
            Some(token) if token.starts_with("hf_") => Caller::Token(token.to_string()),
            _ => Caller::Invalid,
        }
    }

    /// The URL of the next page: this request with every parameter kept and the cursor replaced.
    fn next_page_url(&self, api_url: &str, offset: usize) -> String {
        let mut pairs: Vec<&str> = self
            .raw_query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .collect();
        let cursor = format!("cursor={}", encode_cursor(offset));
        pairs.push(&cursor);
        format!("{api_url}{}?{}", self.raw_path, pairs.join("&"))
    }
}

enum Caller {
    Anonymous,
    Token(String),
    Invalid,
}

impl Caller {
    fn may_access(&self, repo: &Repo) -> bool {
        matches!(self, Caller::Token(token) if repo.allows(token))
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn encode_cursor(offset: usize) -> String {
    hex::encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    text.strip_prefix("offset:")?.parse().ok()
}

/// Logs the request on arrival and returns its log index.
pub(super) fn begin(state: &HubState, server: ServerKind, request: &Request) -> (usize, Ctx) {
    let raw_path = request.uri().path().to_string();
    let raw_query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let logged = LoggedRequest {
        server,
        method: request.method().to_string(),
        path: raw_path.clone(),
        query: raw_query.clone(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        status: 0,
        body_bytes: Arc::new(AtomicU64::new(0)),
    };
    let body_bytes = logged.body_bytes.clone();
    let index = {
        let mut log = state.log.lock().unwrap();
        log.push(logged);
        log.len() - 1
    };
    let ctx = Ctx {
        method: request.method().clone(),
        decoded_path: decode(&raw_path),
        query: url::form_urlencoded::parse(raw_query.as_bytes())
            .into_owned()
            .collect(),
        raw_path,
        raw_query,
        headers,
        body_bytes,
    };
    (index, ctx)
}

pub(super) fn finish(state: &HubState, index: usize, mut response: Response) -> Response {
    let id = state.request_counter.fetch_add(1, Ordering::Relaxed);
    response.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&format!("Root=1-fakehub-{id:08x}")).unwrap(),
    );
    // clear_requests() may have emptied the log meanwhile; then there is nothing to update.
    if let Some(entry) = state.log.lock().unwrap().get_mut(index) {
        entry.status = response.status().as_u16();
    }
    response
}

/// Latency and status faults, common to both servers.
async fn request_faults(state: &HubState, ctx: &Ctx, bucket: &str) -> Option<Response> {
    let latency = state.faults.lock().unwrap().take_latency(&ctx.decoded_path);
    if let Some(millis) = latency {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
    let raw = state.faults.lock().unwrap().take_raw(&ctx.decoded_path);
    if let Some(raw) = raw {
        return Some(raw_response(state, raw));
    }
    let crowded = state.faults.lock().unwrap().crowded_limit();
    let is_file = bucket == "cdn" || ctx.raw_path.contains("/resolve/");
    let injected = match crowded {
        Some(max) if is_file && ctx.method == Method::GET && state.concurrency.now() >= max => {
            Some((429, None))
        }
        _ => state.faults.lock().unwrap().take_status(&ctx.decoded_path),
    };
    let (status, retry_after) = injected?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(
        status,
        json!({"error": format!("fake hub: injected {}", status.as_u16())}),
    );
    let headers = response.headers_mut();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let reset = retry_after.unwrap_or(1);
        set(headers, "ratelimit", &format!("\"{bucket}\";r=0;t={reset}"));
        set(
            headers,
            "ratelimit-policy",
            &format!("\"fixed window\";\"{bucket}\";q=500;w=300"),
        );
    }
    if let Some(seconds) = retry_after {
        set(headers, "retry-after", &seconds.to_string());
    }
    Some(response)
}

/// A [`Fault::Raw`] answer, sent as given (only `{api}`/`{cdn}` in header values replaced).
fn raw_response(state: &HubState, raw: super::faults::RawAnswer) -> Response {
    let mut response = Response::new(Body::from(raw.body));
    *response.status_mut() =
        StatusCode::from_u16(raw.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in &raw.headers {
        let value = value
            .replace("{api}", &state.api_url)
            .replace("{cdn}", &state.cdn_url);
        set(headers, name, &value);
    }
    response
}

async fn api_entry(State(state): State<Arc<HubState>>, request: Request) -> Response {
    let (index, ctx) = begin(&state, ServerKind::Api, &request);
    let bucket = if ctx.raw_path.starts_with("/api/") {
        "api"
    } else {
        "resolvers"
    };
    let mut response = match request_faults(&state, &ctx, bucket).await {
        Some(injected) => injected,
        None => api_route(&state, &ctx),
    };
    let headers = response.headers_mut();
    if !headers.contains_key("ratelimit") {
        set(headers, "ratelimit", &format!("\"{bucket}\";r=499;t=300"));
        set(
            headers,
            "ratelimit-policy",
            &format!("\"fixed window\";\"{bucket}\";q=500;w=300"),
        );
    }
    if ctx.method == Method::HEAD {
        response = without_body(response);
    }
    finish(&state, index, response)
}

async fn cdn_entry(State(state): State<Arc<HubState>>, request: Request) -> Response {
    let (index, ctx) = begin(&state, ServerKind::Cdn, &request);
    let response = match request_faults(&state, &ctx, "cdn").await {
        Some(injected) => injected,
        None => cdn_route(&state, &ctx),
    };
    let response = if ctx.method == Method::HEAD {
        without_body(response)
    } else {
        response
    };
    finish(&state, index, response)
}

fn api_route(state: &HubState, ctx: &Ctx) -> Response {
    if ctx.method != Method::GET && ctx.method != Method::HEAD {
        return hub_error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "Method not allowed on the fake hub",
        );
    }
    let caller = ctx.caller();
    if matches!(caller, Caller::Invalid) {
        return hub_error(StatusCode::UNAUTHORIZED, None, INVALID_CREDENTIALS);
    }
    let segments = ctx.raw_segments();
    match segments.as_slice() {
        ["api", "agent-harnesses"] => hub_error(StatusCode::NOT_FOUND, None, "Not Found"),
        ["api", "models"] => list_models(state, ctx, &caller),
        ["api", "models", rest @ ..] if !rest.is_empty() => model_api(state, ctx, &caller, rest),
        _ => file_route(state, ctx, &caller, &segments),
    }
}

/// Where a repo id ends in a list of path segments.
enum Located {
    Found(Arc<Repo>, usize),
    Redirect(String, usize),
    Missing,
}

/// Finds the repo named by the first one or two segments. Two-segment ids win; a known alias or
/// an id differing only in case is redirected to its canonical id, as the Hub does.
fn locate(state: &HubState, segments: &[&str]) -> Located {
    let catalog = state.catalog.read().unwrap();
    for consumed in [2, 1] {
        if segments.len() < consumed {
            continue;
        }
        let id = segments[..consumed]
            .iter()
            .map(|s| decode(s))
            .collect::<Vec<_>>()
            .join("/");
        if let Some(repo) = catalog.repos.get(&id) {
            return Located::Found(repo.clone(), consumed);
        }
        if let Some(canonical) = catalog.aliases.get(&id) {
            return Located::Redirect(canonical.clone(), consumed);
        }
        if let Some(canonical) = catalog
            .repos
            .keys()
            .find(|known| known.eq_ignore_ascii_case(&id))
        {
            return Located::Redirect(canonical.clone(), consumed);
        }
    }
    Located::Missing
}

/// 307 to the same URL with the repo id replaced by `canonical` (relative, query kept).
fn redirect_to_canonical(ctx: &Ctx, prefix: &str, canonical: &str, rest: &[&str]) -> Response {
    let mut location = format!("{prefix}/{}", encode_path(canonical));
    for segment in rest {
        location.push('/');
        location.push_str(segment);
    }
    if !ctx.raw_query.is_empty() {
        location.push('?');
        location.push_str(&ctx.raw_query);
    }
    let mut response = Response::new(Body::from(format!(
        "Temporary Redirect. Redirecting to {location}"
    )));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    set(response.headers_mut(), "location", &location);
    set(
        response.headers_mut(),
        "content-type",
        "text/plain; charset=utf-8",
    );
    response
}

fn repo_not_found(caller: &Caller) -> Response {
    let status = if matches!(caller, Caller::Token(_)) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::UNAUTHORIZED
    };
    hub_error(status, Some("RepoNotFound"), "Repository not found")
}

/// The refusal, if any: private repos hide from callers without an allowed token; gated repos
/// guard their files.
fn denied_access(state: &HubState, repo: &Repo, caller: &Caller, files: bool) -> Option<Response> {
    if repo.spec.private && !caller.may_access(repo) {
        return Some(repo_not_found(caller));
    }
    if files && repo.spec.gated.is_some() && !caller.may_access(repo) {
        let id = repo.id();
        return Some(match caller {
            Caller::Token(_) => hub_error(
                StatusCode::FORBIDDEN,
                Some("GatedRepo"),
                &format!(
                    "Access to model {id} is restricted and you are not in the authorized list. Visit {}/{id} to ask for access.",
                    state.api_url
                ),
            ),
            _ => hub_error(
                StatusCode::UNAUTHORIZED,
                Some("GatedRepo"),
                &format!(
                    "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
                ),
            ),
        });
    }
    None
}

fn revision_not_found(revision: &str) -> Response {
    hub_error(
        StatusCode::NOT_FOUND,
        Some("RevisionNotFound"),
        &format!("Invalid rev id: {revision}"),
    )
}

fn entry_not_found(commit: &Commit, message: &str) -> Response {
    let mut response = hub_error(StatusCode::NOT_FOUND, Some("EntryNotFound"), message);
    set(response.headers_mut(), "x-repo-commit", &commit.sha);
    response
}

fn model_api(state: &HubState, ctx: &Ctx, caller: &Caller, segments: &[&str]) -> Response {
    let (repo, consumed) = match locate(state, segments) {
        Located::Found(repo, consumed) => (repo, consumed),
        Located::Redirect(canonical, consumed) => {
            return redirect_to_canonical(ctx, "/api/models", &canonical, &segments[consumed..]);
        }
        Located::Missing => return repo_not_found(caller),
    };
    let rest: Vec<String> = segments[consumed..].iter().map(|s| decode(s)).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let files_needed = matches!(rest.first(), Some(&"auth-check"));
    if let Some(denied) = denied_access(state, &repo, caller, files_needed) {
        return denied;
    }
    match rest.as_slice() {
        [] => model_info(ctx, &repo, repo.head()),
        ["revision", revision @ ..] if !revision.is_empty() => {
            let revision = revision.join("/");
            match repo.resolve_revision(&revision) {
                Some(commit) => model_info(ctx, &repo, commit),
                None => revision_not_found(&revision),
            }
        }
        ["tree", revision, path @ ..] => match repo.resolve_revision(revision) {
            Some(commit) => tree(state, ctx, &repo, commit, &path.join("/")),
            None => revision_not_found(revision),
        },
        ["refs"] => refs(ctx, &repo),
        ["auth-check"] => json_response(StatusCode::OK, json!({})),
        _ => hub_error(StatusCode::NOT_FOUND, None, "Not Found"),
    }
}

/// Every property the Hub may report for a model, in the Hub's order. Callers pick a subset.
fn model_properties(repo: &Repo, commit: &Commit, blobs: bool) -> Vec<(&'static str, Value)> {
    let id = repo.id();
    let head = repo.head();
    let siblings: Vec<Value> = commit
        .files
        .values()
        .map(|file| sibling(file, blobs))
        .collect();
    let mut properties = vec![
        (
            "_id",
            // A Mongo-style 24-hex id, stable per repo.
            Value::from(super::repo::git_blob_sha1(id.as_bytes())[..24].to_string()),
        ),
        ("id", Value::from(id)),
        ("modelId", Value::from(id)),
    ];
    if let Some(owner) = repo.spec.owner() {
        properties.push(("author", Value::from(owner)));
    }
    properties.extend([
        ("sha", Value::from(commit.sha.as_str())),
        ("lastModified", Value::from(head.date.as_str())),
        ("createdAt", Value::from(repo.created_at.as_str())),
        ("private", Value::from(repo.spec.private)),
        (
            "gated",
            repo.spec
                .gated
                .map_or(Value::Bool(false), |mode| Value::from(mode.as_str())),
        ),
        ("disabled", Value::from(false)),
        ("downloads", Value::from(repo.spec.downloads)),
        ("downloadsAllTime", Value::from(repo.spec.downloads)),
        ("likes", Value::from(repo.spec.likes)),
        ("trendingScore", Value::from(0)),
        ("tags", Value::from(repo.tags())),
    ]);
    if let Some(pipeline) = &repo.spec.pipeline_tag {
        properties.push(("pipeline_tag", Value::from(pipeline.as_str())));
    }
    if let Some(library) = repo.library_name() {
        properties.push(("library_name", Value::from(library)));
    }
    let card = repo.card_data();
    if !card.is_empty() {
        properties.push(("cardData", Value::Object(card)));
    }
    if let Some(config) = commit
        .files
        .get("config.json")
        .and_then(|f| serde_json::from_slice::<Value>(&f.content).ok())
        && config.is_object()
    {
        properties.push(("config", config));
    }
    properties.push(("siblings", Value::from(siblings)));
    properties.push(("spaces", json!([])));
    properties.push((
        "usedStorage",
        Value::from(commit.files.values().map(RepoFile::size).sum::<u64>()),
    ));
    properties
}

fn sibling(file: &RepoFile, blobs: bool) -> Value {
    if !blobs {
        return json!({"rfilename": file.path});
    }
    let mut entry = json!({"rfilename": file.path, "size": file.size(), "blobId": file.blob_id});
    if file.lfs {
        entry["lfs"] =
            json!({"sha256": file.sha256, "size": file.size(), "pointerSize": file.pointer.len()});
    }
    entry
}

fn select(properties: Vec<(&'static str, Value)>, keep: impl Fn(&str) -> bool) -> Value {
    Value::Object(
        properties
            .into_iter()
            .filter(|(key, _)| keep(key))
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn expand_list(ctx: &Ctx) -> Vec<&str> {
    let mut expand = ctx.params("expand");
    expand.extend(ctx.params("expand[]"));
    expand
}

fn model_info(ctx: &Ctx, repo: &Repo, commit: &Commit) -> Response {
    let properties = model_properties(repo, commit, ctx.flag("blobs"));
    let expand = expand_list(ctx);
    let body = if expand.is_empty() {
        select(properties, |_| true)
    } else {
        select(properties, |key| {
            key == "_id" || key == "id" || expand.contains(&key)
        })
    };
    json_response(StatusCode::OK, body)
}

fn list_models(state: &HubState, ctx: &Ctx, caller: &Caller) -> Response {
    let repos: Vec<Arc<Repo>> = state
        .catalog
        .read()
        .unwrap()
        .repos
        .values()
        .cloned()
        .collect();
    let search = ctx.param("search").map(str::to_lowercase);
    let author = ctx.param("author");
    let filters = ctx.params("filter");
    let mut matching: Vec<Arc<Repo>> = repos
        .into_iter()
        .filter(|repo| !repo.spec.private || caller.may_access(repo))
        .filter(|repo| {
            search
                .as_ref()
                .is_none_or(|s| repo.id().to_lowercase().contains(s))
        })
        .filter(|repo| {
            author.is_none_or(|a| repo.spec.owner().is_some_and(|o| o.eq_ignore_ascii_case(a)))
        })
        .filter(|repo| {
            let tags = repo.tags();
            filters
                .iter()
                .all(|f| tags.iter().any(|t| t == f) || repo.id() == *f)
        })
        .filter(|repo| {
            ctx.param("pipeline_tag")
                .is_none_or(|p| repo.spec.pipeline_tag.as_deref() == Some(p))
        })
        .filter(|repo| {
            ctx.param("library")
                .is_none_or(|l| repo.library_name() == Some(l))
        })
        .filter(|repo| {
            ctx.param("gated")
                .is_none_or(|g| repo.spec.gated.is_some() == g.eq_ignore_ascii_case("true"))
        })
        .collect();
    let sort = ctx.param("sort").unwrap_or("id");
    let key = |repo: &Repo| -> (u64, String) {
        match sort {
            "downloads" => (repo.spec.downloads, String::new()),
            "likes" => (repo.spec.likes, String::new()),
            "lastModified" | "last_modified" => (0, repo.head().date.clone()),
            "createdAt" | "created_at" => (0, repo.created_at.clone()),
            _ => (0, String::new()),
        }
    };
    matching.sort_by(|a, b| a.id().cmp(b.id()));
    if sort != "id" {
        // The Hub sorts descending; only an explicit `direction` other than -1 asks for ascending.
        let ascending = ctx.param("direction").is_some_and(|d| d != "-1");
        matching.sort_by(|a, b| {
            if ascending {
                key(a).cmp(&key(b))
            } else {
                key(b).cmp(&key(a))
            }
        });
    }

    let offset = match ctx.param("cursor") {
        None => 0,
        Some(cursor) => match decode_cursor(cursor) {
            Some(offset) => offset,
            None => return hub_error(StatusCode::BAD_REQUEST, None, "Invalid cursor"),
        },
    };
    let cap = state.page_sizes.lock().unwrap().models.max(1);
    let page_size = ctx
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .map_or(cap, |l| l.min(cap));
    let page: Vec<&Arc<Repo>> = matching.iter().skip(offset).take(page_size).collect();

    let full = ctx.flag("full");
    let card_data = ctx.flag("cardData");
    let config = ctx.flag("config");
    let expand = expand_list(ctx);
    const DEFAULT: [&str; 11] = [
        "_id",
        "id",
        "likes",
        "trendingScore",
        "private",
        "downloads",
        "tags",
        "pipeline_tag",
        "library_name",
        "createdAt",
        "modelId",
    ];
    const FULL: [&str; 6] = [
        "author",
        "sha",
        "lastModified",
        "gated",
        "disabled",
        "siblings",
    ];
    let items: Vec<Value> = page
        .iter()
        .map(|repo| {
            let properties = model_properties(repo, repo.head(), false);
            if !expand.is_empty() {
                return select(properties, |key| {
                    key == "_id" || key == "id" || expand.contains(&key)
                });
            }
            select(properties, |key| {
                DEFAULT.contains(&key)
                    || (full && FULL.contains(&key))
                    || (card_data && key == "cardData")
                    || (config && key == "config")
            })
        })
        .collect();
    let mut response = json_response(StatusCode::OK, Value::from(items));
    if offset + page_size < matching.len() {
        let next = ctx.next_page_url(&state.api_url, offset + page_size);
        set(
            response.headers_mut(),
            "link",
            &format!("<{next}>; rel=\"next\""),
        );
    }
    response
}

fn tree(state: &HubState, ctx: &Ctx, repo: &Repo, commit: &Commit, path: &str) -> Response {
    let path = path.trim_matches('/');
    if !path.is_empty() && !commit.dirs.contains_key(path) {
        return entry_not_found(
            commit,
            &format!("{path} does not exist on \"{}\"", commit.sha),
        );
    }
    let recursive = ctx.flag("recursive");
    let expand = ctx.flag("expand");
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let included = |candidate: &str| -> bool {
        candidate
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| !rest.is_empty() && (recursive || !rest.contains('/')))
    };
    let mut entries: Vec<(String, Value)> = Vec::new();
    for (dir, oid) in commit.dirs.iter().filter(|(dir, _)| included(dir)) {
        entries.push((
            dir.clone(),
            json!({"type": "directory", "oid": oid, "size": 0, "path": dir}),
        ));
    }
    for file in commit.files.values().filter(|file| included(&file.path)) {
        let mut entry =
            json!({"type": "file", "oid": file.blob_id, "size": file.size(), "path": file.path});
        if file.lfs {
            entry["lfs"] =
                json!({"oid": file.sha256, "size": file.size(), "pointerSize": file.pointer.len()});
        }
        entries.push((file.path.clone(), entry));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));

    let offset = match ctx.param("cursor") {
        None => 0,
        Some(cursor) => match decode_cursor(cursor) {
            Some(offset) => offset,
            None => return hub_error(StatusCode::BAD_REQUEST, None, "Invalid cursor"),
        },
    };
    let sizes = *state.page_sizes.lock().unwrap();
    let page_size = if expand {
        sizes.tree_expand
    } else {
        sizes.tree
    }
    .max(1);
    let total = entries.len();
    let page: Vec<Value> = entries
        .into_iter()
        .skip(offset)
        .take(page_size)
        .map(|(path, mut entry)| {
            if expand {
                let index = match commit.files.get(&path) {
                    Some(file) => file.last_commit,
                    None => commit.dir_last_commit(&path),
                };
                let last = &repo.commits[index];
                entry["lastCommit"] =
                    json!({"id": last.sha, "title": last.title, "date": last.date});
                if commit.files.contains_key(&path) {
                    entry["securityFileStatus"] = json!({
                        "status": "safe",
                        "avScan": {"virusFound": false, "virusNames": null},
                        "pickleImportScan": {"highestSafetyLevel": "innocuous", "imports": []},
                    });
                }
            }
            entry
        })
        .collect();
    let mut response = json_response(StatusCode::OK, Value::from(page));
    if offset + page_size < total {
        let next = ctx.next_page_url(&state.api_url, offset + page_size);
        set(
            response.headers_mut(),
            "link",
            &format!("<{next}>; rel=\"next\""),
        );
    }
    response
}

fn refs(ctx: &Ctx, repo: &Repo) -> Response {
    let branch = |name: &str, commit: &Commit| json!({"name": name, "ref": format!("refs/heads/{name}"), "targetCommit": commit.sha});
    let mut branches = vec![branch("main", repo.head())];
    for (name, index) in &repo.spec.branches {
        branches.push(branch(name, &repo.commits[*index]));
    }
    let tags: Vec<Value> = repo
        .spec
        .tags
        .iter()
        .map(|(name, index)| json!({"name": name, "ref": format!("refs/tags/{name}"), "targetCommit": repo.commits[*index].sha}))
        .collect();
    let mut body = json!({"branches": branches, "converts": [], "tags": tags});
    if ctx.flag("include_prs") {
        body["pullRequests"] = json!([]);
    }
    json_response(StatusCode::OK, body)
}

/// `/{repo}/resolve/{rev}/{path}` and `/{repo}/raw/{rev}/{path}`.
fn file_route(state: &HubState, ctx: &Ctx, caller: &Caller, segments: &[&str]) -> Response {
    let is_file_route = |i: usize| {
        segments
            .get(i)
            .is_some_and(|s| *s == "resolve" || *s == "raw")
    };
    if !is_file_route(1) && !is_file_route(2) {
        return hub_error(StatusCode::NOT_FOUND, None, "Not Found");
    }
    let (repo, consumed) = match locate(state, segments) {
        Located::Found(repo, consumed) if is_file_route(consumed) => (repo, consumed),
        Located::Redirect(canonical, consumed) if is_file_route(consumed) => {
            return redirect_to_canonical(ctx, "", &canonical, &segments[consumed..]);
        }
        _ => return repo_not_found(caller),
    };
    if let Some(denied) = denied_access(state, &repo, caller, true) {
        return denied;
    }
    let raw = segments[consumed] == "raw";
    let Some(revision) = segments.get(consumed + 1).map(|s| decode(s)) else {
        return hub_error(StatusCode::NOT_FOUND, None, "Not Found");
    };
    let Some(commit) = repo.resolve_revision(&revision) else {
        return revision_not_found(&revision);
    };
    let path = segments[consumed + 2..]
        .iter()
        .map(|s| decode(s))
        .collect::<Vec<_>>()
        .join("/");
    let Some(file) = commit.files.get(&path) else {
        return entry_not_found(commit, "Entry not found");
    };

    if raw {
        let content = if file.lfs {
            Bytes::from(file.pointer.clone())
        } else {
            file.content.clone()
        };
        let mut headers = HeaderMap::new();
        set(&mut headers, "x-repo-commit", &commit.sha);
        set(&mut headers, "etag", &format!("\"{}\"", file.blob_id));
        set(
            &mut headers,
            "content-type",
            content_type(&file.path, &content),
        );
        return serve_content(state, ctx, content, headers);
    }
    if file.lfs {
        let location = format!(
            "{}/lfs/{}/{}/{}",
            state.cdn_url,
            encode_path(repo.id()),
            file.sha256,
            encode_path(&file.path)
        );
        let body = format!("Found. Redirecting to {location}");
        let mut response = Response::new(Body::from(body.clone()));
        *response.status_mut() = StatusCode::FOUND;
        let headers = response.headers_mut();
        set(headers, "location", &location);
        set(headers, "x-repo-commit", &commit.sha);
        set(headers, "x-linked-etag", &format!("\"{}\"", file.sha256));
        set(headers, "x-linked-size", &file.size().to_string());
        // The Hub's own ETag on a redirect is not the content hash; clients must prefer X-Linked-Etag.
        set(headers, "etag", &format!("\"{}\"", file.blob_id));
        set(headers, "content-type", "text/plain; charset=utf-8");
        set(headers, "content-length", &body.len().to_string());
        return response;
    }
    let etag = format!("\"{}\"", file.blob_id);
    let mut headers = HeaderMap::new();
    set(&mut headers, "x-repo-commit", &commit.sha);
    set(&mut headers, "etag", &etag);
    set(
        &mut headers,
        "content-type",
        content_type(&file.path, &file.content),
    );
    let revalidated = ctx
        .headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim().trim_start_matches("W/") == etag)
        });
    if revalidated {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = headers;
        return response;
    }
    serve_content(state, ctx, file.content.clone(), headers)
}

/// The sha256 a CDN path names: its 64-hex segment.
fn cdn_sha(segments: &[String]) -> Option<&String> {
    segments
        .iter()
        .find(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The blob a CDN path names, and the file on disk holding it if known.
pub(super) fn cdn_blob(state: &HubState, ctx: &Ctx) -> Option<(Bytes, Option<std::path::PathBuf>)> {
    let segments: Vec<String> = ctx.raw_segments().iter().map(|s| decode(s)).collect();
    let sha = cdn_sha(&segments)?;
    let catalog = state.catalog.read().unwrap();
    let blob = catalog.blobs.get(sha)?.clone();
    Some((blob, catalog.blob_sources.get(sha).cloned()))
}

pub(super) fn cdn_route(state: &HubState, ctx: &Ctx) -> Response {
    let segments: Vec<String> = ctx.raw_segments().iter().map(|s| decode(s)).collect();
    let sha = cdn_sha(&segments);
    let blob = sha.and_then(|sha| state.catalog.read().unwrap().blobs.get(sha).cloned());
    let (Some(sha), Some(content), Some("lfs")) = (sha, blob, segments.first().map(String::as_str))
    else {
        let mut response = Response::new(Body::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
        ));
        *response.status_mut() = StatusCode::NOT_FOUND;
        set(response.headers_mut(), "content-type", "application/xml");
        return response;
    };
    let name = segments.last().cloned().unwrap_or_default();
    let mut headers = HeaderMap::new();
    // A CDN ETag is never the sha256 (hf-protocol.md §10): derive something else from it.
    set(
        &mut headers,
        "etag",
        &format!("\"{}\"", &super::repo::git_blob_sha1(sha.as_bytes())[..32]),
    );
    set(&mut headers, "content-type", "application/octet-stream");
    set(
        &mut headers,
        "content-disposition",
        &format!(
            "inline; filename*=UTF-8''{}; filename=\"{}\";",
            utf8_percent_encode(&name, SEGMENT),
            name.replace('"', "")
        ),
    );
    serve_content(state, ctx, content, headers)
}

pub(super) enum RangeRequest {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range, as servers commonly implement RFC 9110: a malformed or multi-range header is
/// ignored (full body), an end past the file is clamped, a start at or past the end is 416.
pub(super) fn parse_range(value: Option<&str>, total: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    match (start.trim(), end.trim()) {
        ("", suffix) => match suffix.parse::<u64>() {
            Ok(0) | Err(_) if total == 0 => RangeRequest::Unsatisfiable,
            Ok(0) => RangeRequest::Unsatisfiable,
            Ok(n) => RangeRequest::Partial(total.saturating_sub(n), total - 1),
            Err(_) => RangeRequest::Full,
        },
        (start, end) => {
            let Ok(start) = start.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if end.is_empty() {
                u64::MAX
            } else {
                match end.parse::<u64>() {
                    Ok(end) => end,
                    Err(_) => return RangeRequest::Full,
                }
            };
            if end < start {
                RangeRequest::Full
            } else if start >= total {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, end.min(total - 1))
            }
        }
    }
}

/// 200/206/416 for file bytes, with exact `Content-Length`; HEAD gets the headers only.
fn serve_content(state: &HubState, ctx: &Ctx, content: Bytes, mut headers: HeaderMap) -> Response {
    let total = content.len() as u64;
    set(&mut headers, "accept-ranges", "bytes");
    let range = parse_range(
        ctx.headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        total,
    );
    let (status, slice) = match range {
        RangeRequest::Full => (StatusCode::OK, content),
        RangeRequest::Partial(start, end) => {
            set(
                &mut headers,
                "content-range",
                &format!("bytes {start}-{end}/{total}"),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                content.slice(start as usize..=end as usize),
            )
        }
        RangeRequest::Unsatisfiable => {
            set(&mut headers, "content-range", &format!("bytes */{total}"));
            let mut response = hub_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                None,
                "Requested Range Not Satisfiable",
            );
            for (name, value) in &headers {
                if name != header::CONTENT_TYPE {
                    response.headers_mut().insert(name.clone(), value.clone());
                }
            }
            return response;
        }
    };
    set(&mut headers, "content-length", &slice.len().to_string());
    let body = if ctx.method == Method::HEAD || slice.is_empty() {
        Body::empty()
    } else {
        let faults = state
            .faults
            .lock()
            .unwrap()
            .take_body_faults(&ctx.decoded_path);
        file_body(
            slice,
            faults,
            [state.served.clone(), ctx.body_bytes.clone()],
            state.concurrency.clone(),
        )
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Drops the body of a HEAD answer but keeps its `Content-Length`, which describes the GET.
fn without_body(response: Response) -> Response {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::empty())
}

fn content_type(path: &str, content: &[u8]) -> &'static str {
    if path.ends_with(".json") {
        "application/json"
    } else if std::str::from_utf8(content).is_ok() && !content.contains(&0) {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    headers.insert(
        HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
        HeaderValue::from_str(value).expect("header values are ASCII"),
    );
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let bytes = serde_json::to_vec(&body).expect("serializable");
    let mut response = Response::new(Body::from(bytes.clone()));
    *response.status_mut() = status;
    set(
        response.headers_mut(),
        "content-type",
        "application/json; charset=utf-8",
    );
    set(
        response.headers_mut(),
        "content-length",
        &bytes.len().to_string(),
    );
    response
}

/// An error as the Hub sends it: `X-Error-Code` (when the Hub has one), `X-Error-Message`, JSON body.
fn hub_error(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let mut response = json_response(status, json!({"error": message}));
    if let Some(code) = code {
        set(response.headers_mut(), "x-error-code", code);
    }
    set(response.headers_mut(), "x-error-message", message);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_protocol_checklist() {
        assert!(matches!(
            parse_range(Some("bytes=0-0"), 10),
            RangeRequest::Partial(0, 0)
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-"), 10),
            RangeRequest::Partial(5, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=5-100"), 10),
            RangeRequest::Partial(5, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=-3"), 10),
            RangeRequest::Partial(7, 9)
        ));
        assert!(matches!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        ));
        assert!(matches!(
            parse_range(Some("bytes=0-1,4-5"), 10),
            RangeRequest::Full
        ));
        assert!(matches!(
            parse_range(Some("items=0-1"), 10),
            RangeRequest::Full
        ));
        assert!(matches!(parse_range(None, 10), RangeRequest::Full));
    }

    #[test]
    fn cursors_round_trip() {
        assert_eq!(decode_cursor(&encode_cursor(1234)), Some(1234));
        assert_eq!(decode_cursor("zz"), None);
    }
}
