//! The library API: the older Python tool's programmatic helpers (`list_models_for_owner`,
//! `get_model_files`, `resolve_install_root`, `download_snapshot`, `update_registry`,
//! `load_registry`, `copy_shared_configs`, `parse_owner_repo`, `is_gguf_repo`) as documented
//! Rust functions.
//!
//! Each is a thin face over the engine, not a second implementation: listing and file lists
//! come from [`crate::hub`], routing from [`crate::layout`], installs go through the
//! one reconcile pipeline, [`crate::ops`], under the store lock (so `download_snapshot`
//! checks the quota and free disk, stages, verifies, swaps in whole, mirrors `config.json` and
//! writes the registry record exactly as `kmm download` does), and registry writes go through
//! [`crate::registry`] under [`crate::store::StoreLock`].
//!
//! ```no_run
//! # async fn demo() -> kmm::Result<()> {
//! use kmm::api;
//! use kmm::hub::{HubClient, HubConfig};
//!
//! let hub = HubClient::new(HubConfig::new("https://huggingface.co"))?;
//! let models = api::list_models_for_owner(&hub, "TinyLlama", &api::ListOptions::new(10)).await?;
//! let files = api::get_model_files(&hub, "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", None).await?;
//! let installed = api::download_snapshot(
//!     &hub,
//!     std::path::Path::new("models"),
//!     "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
//!     &api::DownloadOptions { include: vec!["*Q4_K_M*".into()], ..Default::default() },
//! )
//! .await?;
//! println!("{} models, {} files, installed in {}", models.len(), files.files.len(),
//!     installed.install_dir.display());
//! # Ok(()) }
//! ```
//!
//! Edges: no printing, no environment: callers pass the hub client and the models directory.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apply::ApplyReport;
use crate::error::{Error, Result};
use crate::hub::{HubClient, ModelQuery};
use crate::layout::{self, Library};
use crate::manifest::{Manifest, ModelSpec};
use crate::ops::{self, Session, Settings};
use crate::registry::{Record, RecordFile, Registry, Selection};
use crate::store::{StoreLock, StorePaths};
use crate::upstream::UpstreamFile;

/// Sort orders of the hub's model listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SortKey {
    Downloads,
    Likes,
    LastModified,
    CreatedAt,
}

impl SortKey {
    /// The hub's name for it (`downloads`, `likes`, `lastModified`, `createdAt`).
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Downloads => "downloads",
            SortKey::Likes => "likes",
            SortKey::LastModified => "lastModified",
            SortKey::CreatedAt => "createdAt",
        }
    }

    /// Parses the hub's name (also `last_modified` / `created_at`).
    pub fn parse(text: &str) -> Option<SortKey> {
        match text {
            "downloads" => Some(SortKey::Downloads),
            "likes" => Some(SortKey::Likes),
            "lastModified" | "last_modified" => Some(SortKey::LastModified),
            "createdAt" | "created_at" => Some(SortKey::CreatedAt),
            _ => None,
        }
    }
}

/// How to list an owner's models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Substring of the id (the hub's `search`).
    pub search: Option<String>,
    pub sort: Option<SortKey>,
    /// `-1` descending (the hub's default), `1` ascending.
    pub direction: Option<i8>,
    /// At most this many models, across as many pages as it takes.
    pub limit: usize,
}

impl ListOptions {
    pub fn new(limit: usize) -> ListOptions {
        ListOptions {
            search: None,
            sort: None,
            direction: None,
            limit,
        }
    }
}

/// One model of a listing. Fields the hub did not send are `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub id: String,
    pub downloads: Option<u64>,
    pub likes: Option<u64>,
    pub last_modified: Option<String>,
    pub created_at: Option<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    /// `false`, `"auto"` or `"manual"` as the hub says, normalised to a string: `"no"`,
    /// `"auto"`, `"manual"`.
    pub gated: String,
    pub private: bool,
}

/// The models of `owner` (the hub's `author`), with `full=true` so that last-modified dates and
/// gating come along; follows `Link` pages until `options.limit` models are collected.
pub async fn list_models_for_owner(
    hub: &HubClient,
    owner: &str,
    options: &ListOptions,
) -> Result<Vec<ModelSummary>> {
    let mut query = ModelQuery::new(options.limit)
        .param("author", owner)
        .param("full", "true");
    if let Some(search) = &options.search {
        query = query.param("search", search);
    }
    if let Some(sort) = options.sort {
        query = query.param("sort", sort.as_str());
    }
    if let Some(direction) = options.direction {
        query = query.param("direction", direction.to_string());
    }
    let models = hub
        .list_models(&query)
        .await
        .map_err(|error| error.context(format!("listing the models of `{owner}`")))?;
    models.iter().map(summary_of).collect()
}

fn summary_of(value: &serde_json::Value) -> Result<ModelSummary> {
    // Printed by `kmm list`/`browse`: no control character from the hub reaches a terminal.
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(layout::printable)
    };
    let id = text("id")
        .or_else(|| text("modelId"))
        .ok_or_else(|| Error::schema("the hub's model listing has an entry without `id`"))?;
    // Listed ids are printed and may be routed to a folder (`kmm browse`): refuse unsafe ones
    // (found by tests/it/hostile_hub.rs).
    crate::layout::check_repo_id(&id).map_err(|why| {
        Error::schema(format!(
            "the hub's model listing has an unsafe id `{}`",
            layout::shown(&id)
        ))
        .caused_by(why)
    })?;
    let gated = match value.get("gated") {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => "no",
        Some(serde_json::Value::String(mode)) if mode.eq_ignore_ascii_case("auto") => "auto",
        Some(_) => "manual",
    };
    Ok(ModelSummary {
        id,
        downloads: value.get("downloads").and_then(|v| v.as_u64()),
        likes: value.get("likes").and_then(|v| v.as_u64()),
        last_modified: text("lastModified"),
        created_at: text("createdAt"),
        pipeline_tag: text("pipeline_tag"),
        library_name: text("library_name"),
        gated: gated.to_string(),
        private: value
            .get("private")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
    })
}

/// A repo's files at one commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoFiles {
    /// Canonical id (a legacy id such as `gpt2` becomes `openai-community/gpt2`).
    pub id: String,
    pub revision: String,
    pub commit: String,
    pub info: crate::hub::ModelInfo,
    /// Every file, sorted by path, with size and upstream hash (sha256 = LFS).
    pub files: Vec<UpstreamFile>,
}

/// Resolves `revision` (default `main`) of `repo_id` and lists every file of that commit.
pub async fn get_model_files(
    hub: &HubClient,
    repo_id: &str,
    revision: Option<&str>,
) -> Result<RepoFiles> {
    let revision = revision.unwrap_or("main");
    let info = hub.model_info(repo_id, revision).await?;
    let files = hub.list_tree(&info.id, &info.sha).await?;
    Ok(RepoFiles {
        id: info.id.clone(),
        revision: revision.to_string(),
        commit: info.sha.clone(),
        info,
        files,
    })
}

/// Where `repo_id` is installed under `models_dir` given its files (GGUF -> `llama-cpp/`, else
/// `transformers/`, `distilbert-base-uncased` its own folder), or `library` when given.
pub fn resolve_install_root(
    models_dir: &Path,
    repo_id: &str,
    library: Option<Library>,
    files: &[UpstreamFile],
) -> PathBuf {
    models_dir.join(layout::route(repo_id, library, files).install_dir)
}

/// What [`download_snapshot`] installs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownloadOptions {
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub library: Option<Library>,
    /// Files downloaded in parallel; `None` is 8.
    pub max_workers: Option<usize>,
    /// The store's size limit in GB, as `quota_gb` in the manifest: an install that would
    /// pass it is `E_QUOTA` (no other model is evicted for it), before any download.
    pub quota_gb: Option<f64>,
    /// Within a run, a dropped connection always resumes with a `Range` request. Across runs:
    /// `true` leaves partial files of an interrupted run (`models/.kmm/downloads/*.part`) to
    /// the engine, `false` deletes this model's partial files first. Note: the hub client
    /// currently restarts a leftover `.part` from byte 0 either way, so today `false` only
    /// cleans up early; finished, verified downloads of an interrupted run are always reused.
    pub resume: bool,
}

/// The result of [`download_snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub id: String,
    pub commit: String,
    pub library: Library,
    /// Absolute.
    pub install_dir: PathBuf,
    pub report: ApplyReport,
}

/// Installs one model into `models_dir` the way `kmm download` does: resolve, plan a
/// one-model desired state (other installed models are left alone), and apply it under the
/// store lock: verified downloads, whole-folder swap, `config.json` mirrored to `configs/`, and
/// the registry record written. An installed model at the same commit and selection costs no
/// download. Gated repos need the client's token and a license acceptance in the registry.
pub async fn download_snapshot(
    hub: &HubClient,
    models_dir: &Path,
    repo_id: &str,
    options: &DownloadOptions,
) -> Result<Installed> {
    let mut spec = ModelSpec::new(repo_id);
    layout::check_repo_id(repo_id)
        .map_err(|why| Error::args(format!("`{repo_id}` is not a repo id: {why}")))?;
    if let Some(revision) = &options.revision {
        spec.revision = revision.clone();
    }
    spec.include = options.include.clone();
    spec.exclude = options.exclude.clone();
    spec.library = options.library;
    spec.selection()?;

    // The same session and reconcile as `kmm download`: a one-model desired state, planned
    // under the store lock with the quota and free-disk checks, applied, settled.
    let manifest = Manifest::parse(&models_dir.join("kari-models.toml"), "")?;
    let settings = Settings::for_library(
        models_dir,
        options.max_workers.unwrap_or(8),
        options.quota_gb,
    );
    let mut session = Session::for_library(manifest, settings, hub.clone());
    let options = ops::InstallOptions {
        force_compat: false,
        discard_partials: !options.resume,
    };
    let (applied, model) = ops::install_one(&mut session, spec, options, &ops::Silent).await?;
    Ok(Installed {
        id: model.id,
        commit: model.commit,
        library: model.library,
        install_dir: session.paths.root().join(model.install_dir),
        report: applied.report,
    })
}

/// The registry of `models_dir` (empty when there is none yet).
pub fn load_registry(models_dir: &Path) -> Result<Registry> {
    Registry::load(&StorePaths::new(models_dir).registry_file())
}

/// Records `model_id` as installed at `install_dir` with `files` (for files installed by other
/// means than [`download_snapshot`], which records by itself). Takes the store lock, keeps the
/// existing record's other fields (pins, license acceptance, unknown keys), writes atomically.
pub fn update_registry(
    models_dir: &Path,
    model_id: &str,
    install_dir: &Path,
    files: &[UpstreamFile],
    library: Library,
    revision: Option<&str>,
) -> Result<Record> {
    let paths = StorePaths::new(models_dir);
    let _lock = StoreLock::acquire(&paths, None, &mut || {})?;
    let mut registry = Registry::load(&paths.registry_file())?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let record_files: Vec<RecordFile> = files
        .iter()
        .map(|file| RecordFile {
            path: file.path.clone(),
            size: file.size,
            sha256: file.hash.is_lfs().then(|| file.hash.hex().to_string()),
            git_sha1: (!file.hash.is_lfs()).then(|| file.hash.hex().to_string()),
            mtime_ns: None,
            extra: serde_json::Map::new(),
        })
        .collect();
    let record = match registry.models.remove(model_id) {
        Some(mut old) => {
            old.library = library.as_str().to_string();
            old.revision = revision.map(str::to_string);
            old.installed_at = Some(now);
            old.install_path = install_dir.display().to_string();
            old.total_size = files.iter().map(|file| file.size).sum();
            old.files = record_files;
            old
        }
        None => Record {
            model_id: model_id.to_string(),
            library: library.as_str().to_string(),
            revision: revision.map(str::to_string),
            installed_at: Some(now),
            install_path: install_dir.display().to_string(),
            total_size: files.iter().map(|file| file.size).sum(),
            files: record_files,
            selection: Some(Selection::default()),
            ..Record::default()
        },
    };
    registry.models.insert(model_id.to_string(), record.clone());
    registry.save(&paths.registry_file())?;
    Ok(record)
}

/// Copies `install_dir/config.json` to `models_dir/configs/<repo>.json` (the layout's config
/// mirror) through a temp file and a rename. Returns the mirror's path, or `None` when the
/// model has no `config.json`.
pub fn copy_shared_configs(
    models_dir: &Path,
    install_dir: &Path,
    repo_id: &str,
) -> Result<Option<PathBuf>> {
    let source = install_dir.join("config.json");
    if !source.is_file() {
        return Ok(None);
    }
    let target = models_dir.join(layout::config_mirror_path(repo_id));
    let folder = target.parent().unwrap_or(models_dir);
    let failed =
        |error: &std::io::Error| Error::io(format!("mirroring `{}`", source.display()), error);
    fs_err::create_dir_all(folder).map_err(|error| failed(&error))?;
    let temp = tempfile::NamedTempFile::new_in(folder).map_err(|error| failed(&error))?;
    fs_err::copy(&source, temp.path()).map_err(|error| failed(&error))?;
    temp.persist(&target)
        .map_err(|error| failed(&error.error))?;
    Ok(Some(target))
}

/// Splits a repo id into `(owner, name)`; a legacy id without owner (`gpt2`) has no owner.
/// Invalid ids are `E_ARGS` saying what is wrong.
pub fn parse_owner_repo(repo_id: &str) -> Result<(Option<String>, String)> {
    layout::check_repo_id(repo_id)
        .map_err(|why| Error::args(format!("`{repo_id}` is not a repo id: {why}")))?;
    Ok(match repo_id.split_once('/') {
        Some((owner, name)) => (Some(owner.to_string()), name.to_string()),
        None => (None, repo_id.to_string()),
    })
}

/// True when any of `files` is a GGUF file (the layout then routes the repo to `llama-cpp/`).
pub fn is_gguf_repo(files: &[UpstreamFile]) -> bool {
    files.iter().any(|file| layout::is_gguf(&file.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::FileHash;

    fn file(path: &str) -> UpstreamFile {
        UpstreamFile {
            path: path.to_string(),
            size: 3,
            hash: FileHash::GitSha1("0".repeat(40)),
        }
    }

    #[test]
    fn owner_repo_split_and_checked() {
        assert_eq!(
            parse_owner_repo("TheBloke/Tiny").unwrap(),
            (Some("TheBloke".into()), "Tiny".into())
        );
        assert_eq!(parse_owner_repo("gpt2").unwrap(), (None, "gpt2".into()));
        assert_eq!(
            parse_owner_repo("a/b/c").unwrap_err().code(),
            crate::ErrorCode::Args
        );
    }

    #[test]
    fn gguf_and_install_root_follow_the_layout() {
        let gguf = [file("README.md"), file("m.Q4_K_M.gguf")];
        let bert = [file("config.json"), file("model.safetensors")];
        assert!(is_gguf_repo(&gguf));
        assert!(!is_gguf_repo(&bert));
        let root = Path::new("/m");
        assert_eq!(
            resolve_install_root(root, "o/r", None, &gguf),
            Path::new("/m/llama-cpp/o/r")
        );
        assert_eq!(
            resolve_install_root(root, "o/r", None, &bert),
            Path::new("/m/transformers/o/r")
        );
        assert_eq!(
            resolve_install_root(root, "o/r", Some(Library::LlamaCpp), &bert),
            Path::new("/m/llama-cpp/o/r")
        );
    }

    #[test]
    fn listing_entries_become_summaries() {
        let entry = serde_json::json!({"id": "o/m", "downloads": 5, "gated": "auto", "pipeline_tag": "fill-mask"});
        let summary = summary_of(&entry).unwrap();
        assert_eq!(summary.gated, "auto");
        assert_eq!(summary.downloads, Some(5));
        assert_eq!(summary.likes, None);
        assert_eq!(
            summary_of(&serde_json::json!({"gated": false}))
                .unwrap_err()
                .code(),
            crate::ErrorCode::Schema
        );
    }

    #[test]
    fn update_registry_keeps_pins_and_copy_mirrors_config() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path();
        let install = models.join("transformers/o/m");
        fs_err::create_dir_all(&install).unwrap();
        fs_err::write(install.join("config.json"), b"{}").unwrap();
        let files = [file("config.json")];
        update_registry(models, "o/m", &install, &files, Library::Transformers, None).unwrap();
        let mut registry = load_registry(models).unwrap();
        registry.models.get_mut("o/m").unwrap().pinned = Some(true);
        registry
            .save(&StorePaths::new(models).registry_file())
            .unwrap();
        let record = update_registry(
            models,
            "o/m",
            &install,
            &files,
            Library::Transformers,
            Some("main"),
        )
        .unwrap();
        assert_eq!(record.pinned, Some(true));
        assert_eq!(record.revision.as_deref(), Some("main"));
        let mirror = copy_shared_configs(models, &install, "o/m")
            .unwrap()
            .unwrap();
        assert_eq!(mirror, models.join("configs/m.json"));
        assert_eq!(fs_err::read(mirror).unwrap(), b"{}");
        assert_eq!(
            copy_shared_configs(models, &models.join("none"), "o/x").unwrap(),
            None
        );
    }
}
