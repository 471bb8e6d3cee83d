//! The desired state of one model (what `resolve` produces and `plan` consumes), and the path
//! rules both sides share: which folders are a model's own and which relative paths are safe.
//!
//! Edges: pure data and path arithmetic; no I/O. Imported by `resolve`, `plan`, `lockfile`,
//! `durability` and `apply`, so it imports none of them.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::layout::Library;
use crate::registry::Record;
use crate::upstream::UpstreamFile;

/// One declared model, resolved against the hub (or the lock / tree cache).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredModel {
    /// The id as declared in the manifest: the registry key.
    pub id: String,
    /// The revision as declared (branch, tag, `refs/pr/N` or commit).
    pub revision: String,
    /// The commit `revision` resolves to.
    pub commit: String,
    pub library: Library,
    /// Folder relative to the models directory (from `layout::route`).
    pub install_dir: PathBuf,
    /// Selected files, sorted by path.
    pub files: Vec<UpstreamFile>,
    /// `configs/<repo>.json` when `config.json` is among `files`.
    pub config_mirror: Option<PathBuf>,
    pub pinned: Option<bool>,
    /// License acceptance declared in the manifest, recorded into the registry as is.
    pub license_accepted: Option<serde_json::Value>,
    /// The include/exclude globs, recorded so later plans can reuse the registry's file list.
    pub selection: crate::registry::Selection,
}

/// The record's `install_path` relative to the models directory, when it lies inside it and is
/// a folder of its own: not the models directory or a layout root (`llama-cpp/`, where the
/// seed's flat layout put GGUFs of many models side by side), which are never removed or
/// scanned as one model's folder.
pub fn recorded_install_dir(models_dir: &Path, record: &Record) -> Option<PathBuf> {
    let relative = Path::new(&record.install_path)
        .strip_prefix(models_dir)
        .ok()?;
    (is_safe_relative(relative) && !is_shared_folder(relative)).then(|| relative.to_path_buf())
}

/// The layout's roots, which hold many models' folders.
pub const SHARED_FOLDERS: [&str; 3] = ["llama-cpp", "transformers", "configs"];

pub(crate) fn is_shared_folder(relative: &Path) -> bool {
    relative.components().count() == 1 && SHARED_FOLDERS.iter().any(|s| relative == Path::new(s))
}

/// True for a non-empty relative path made only of normal components (nothing that could
/// reach outside the models directory).
pub fn is_safe_relative(path: &Path) -> bool {
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}
