//! The plan as data: what `kmm plan` prints, `plan --out` saves and `apply` carries out.
//! Plain serializable types (their JSON Schema is committed under `schemas/`), identical for
//! identical input, and the small formatting helpers the renderers share.
//!
//! Edges: types only; the planner ([`super::planner`]) builds them, [`crate::apply`] reads them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::Library;
use crate::upstream::{FileHash, UpstreamFile};

/// The result of planning: plain data, serializable, identical for identical input.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The absolute models directory the plan was computed for; `apply` refuses another one.
    pub models_dir: PathBuf,
    /// One entry per declared or registered model, sorted by id (unchanged ones included).
    pub models: Vec<ModelChange>,
    /// Things the user should know that need no action (undeclared models kept, ...).
    pub notes: Vec<Note>,
    /// Leftovers in the layout to delete (`*.corrupt`, `*.incomplete`), relative paths.
    pub strays: Vec<PathBuf>,
    /// The action graph in execution order (a topological order, ties broken by id).
    pub actions: Vec<PlannedAction>,
    pub summary: Summary,
}

impl Plan {
    /// True when applying would change nothing.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// What happens to one model.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Create,
    Update,
    Remove,
    Unchanged,
}

/// One model's part of the plan, for humans and for `--json`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelChange {
    pub id: String,
    pub change: ChangeKind,
    /// The revision as declared (the recorded one for a removal).
    pub revision: Option<String>,
    /// The commit recorded in the registry now (none on create, or for records without one).
    pub from_commit: Option<String>,
    /// The commit after apply (none on remove).
    pub to_commit: Option<String>,
    /// Folder relative to the models directory after apply (the current one on remove).
    pub install_dir: Option<PathBuf>,
    /// Set when the folder moves (the library routing changed).
    pub previous_install_dir: Option<PathBuf>,
    /// Why an update is needed beyond its file changes ("pinned changed", ...).
    pub reasons: Vec<String>,
    /// Files that change (keeps are only counted, in `kept_files`), sorted by path.
    pub files: Vec<FileChange>,
    pub kept_files: usize,
    /// Bytes this model needs from the network (before deduplication across models).
    pub download_bytes: u64,
    /// Bytes copied (reflinked where the file system can) from other model folders: identical
    /// files are never hard-linked between two models.
    #[serde(default)]
    pub copy_bytes: u64,
    /// Where this model's fetched bytes come from (set when anything besides the hub is a
    /// source: a shared store, the Hugging Face cache, earlier downloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_sources: Option<ByteSources>,
    /// Bytes that go away (removed files, or the whole folder on remove).
    pub free_bytes: u64,
}

/// Bytes the plan fetches, by where they come from, in the order apply tries them.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct ByteSources {
    /// Already in `.kmm/downloads/` (an earlier run fetched them).
    pub store: u64,
    /// The local Hugging Face cache.
    pub hf_cache: u64,
    /// The fleet's shared store.
    pub shared_store: u64,
    /// The hub or mirror.
    pub hub: u64,
}

impl ByteSources {
    /// `from the shared store: 4.2 GB; from the hub: 0 B` (local sources only when they give
    /// something; the hub always).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (bytes, name) in [
            (self.store, "earlier downloads"),
            (self.hf_cache, "the Hugging Face cache"),
            (self.shared_store, "the shared store"),
        ] {
            if bytes > 0 {
                parts.push(format!("from {name}: {}", super::format_bytes(bytes)));
            }
        }
        parts.push(format!("from the hub: {}", super::format_bytes(self.hub)));
        parts.join("; ")
    }
}

/// What happens to one file of a model.
#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileChangeKind {
    Add,
    Replace,
    Remove,
    Keep,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub kind: FileChangeKind,
    /// The upstream size for add/replace; the recorded size for remove.
    pub size: u64,
    pub reason: Option<String>,
}

/// Something worth telling that needs no action.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub model: String,
    pub message: String,
}

/// Totals for the summary line.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub to_add: usize,
    pub to_change: usize,
    pub to_remove: usize,
    /// Distinct downloads (deduplicated by upstream hash).
    pub download_files: usize,
    pub download_bytes: u64,
    /// Bytes copied between model folders: files found in another model's folder, and the
    /// second and later installs of a file downloaded once for several models.
    #[serde(default)]
    pub copy_bytes: u64,
    /// Where the downloads' bytes come from (see [`ModelChange::byte_sources`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_sources: Option<ByteSources>,
    pub free_bytes: u64,
    pub strays: usize,
}

/// One node of the action graph as serialized: its id, the ids it waits for, and the action.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub id: String,
    pub depends_on: Vec<String>,
    #[serde(flatten)]
    pub action: Action,
}

/// A step `apply` carries out. Paths are relative to the models directory.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Download one file's bytes into `.kmm/downloads/<hash-hex>`, verified.
    Fetch {
        /// The model (repo id as declared) to download from.
        model: String,
        commit: String,
        file: UpstreamFile,
    },
    /// Assemble the model's complete new folder in staging and swap it in.
    InstallModel {
        model: String,
        install_dir: PathBuf,
        /// The current folder when it differs from `install_dir` (it is removed after the swap).
        previous_install_dir: Option<PathBuf>,
        /// The final file list, sorted by path.
        files: Vec<InstallFile>,
        /// Files on disk in the current folder that the manifest does not select and no record
        /// lists (the user's): carried into the new folder unless `prune` is set.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carry: Vec<CarriedFile>,
    },
    /// Copy `<install_dir>/config.json` to `configs/<repo>.json`.
    MirrorConfig {
        model: String,
        from: PathBuf,
        to: PathBuf,
    },
    /// Write the model's registry record (the timestamp is set by `apply`).
    Register { model: String, record: RecordPlan },
    /// Delete the model's folder (and its config mirror when it has one).
    RemoveModel {
        model: String,
        install_dir: PathBuf,
        config_mirror: Option<PathBuf>,
    },
    /// Drop the model's registry record.
    Unregister { model: String },
    /// Delete a leftover file in the layout.
    DeleteStray { path: PathBuf },
    /// Delete a loose file whose bytes an install took (the seed's flat GGUFs, files in wrong
    /// folders): runs after every install that links from it, so the bytes have moved.
    DeleteMoved { path: PathBuf },
}

impl Action {
    /// The stable id: `fetch:<model>:<path>`, `install:<model>`, `mirror-config:<model>`,
    /// `register:<model>`, `remove:<model>`, `unregister:<model>`, `delete-stray:<path>`,
    /// `delete-moved:<path>`.
    pub fn id(&self) -> String {
        match self {
            Action::Fetch { model, file, .. } => format!("fetch:{model}:{}", file.path),
            Action::InstallModel { model, .. } => format!("install:{model}"),
            Action::MirrorConfig { model, .. } => format!("mirror-config:{model}"),
            Action::Register { model, .. } => format!("register:{model}"),
            Action::RemoveModel { model, .. } => format!("remove:{model}"),
            Action::Unregister { model } => format!("unregister:{model}"),
            Action::DeleteStray { path } => format!("delete-stray:{}", slash_path(path)),
            Action::DeleteMoved { path } => format!("delete-moved:{}", slash_path(path)),
        }
    }
}

/// One file of a model's new folder and where its bytes come from.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallFile {
    pub path: String,
    pub size: u64,
    pub hash: FileHash,
    pub source: FileSource,
}

/// A file kept as it is across an install: `path` in the new folder, taken from `from`
/// (relative to the models directory).
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFile {
    pub path: String,
    pub from: PathBuf,
    pub size: u64,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum FileSource {
    /// A verified download, `.kmm/downloads/<hash-hex>`, produced by the named fetch action.
    Fetch { action: String },
    /// The file as it is somewhere in the store (relative to the models directory): in the
    /// current folder, or found by its hash elsewhere (a move instead of a download).
    Keep { path: PathBuf },
}

/// The registry record to write, minus what `apply` decides (`installed_at`, unknown fields).
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordPlan {
    pub model_id: String,
    pub library: Library,
    pub revision: String,
    pub commit: String,
    /// Absolute, as in the seed.
    pub install_path: String,
    pub files: Vec<RecordPlanFile>,
    pub total_size: u64,
    pub pinned: Option<bool>,
    pub license_accepted: Option<serde_json::Value>,
    pub selection: crate::registry::Selection,
    /// Only some selected files are installed (`kmm migrate` put in place what was on disk):
    /// the record keeps no selection, so the next plan asks for the full file list again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPlanFile {
    pub path: String,
    pub size: u64,
    pub hash: FileHash,
}

impl Plan {
    /// `dir` (relative to the models directory) as a person sees it: under the models
    /// directory's own name (`models/llama-cpp/x`), or bare when it has none.
    pub fn shown_dir(&self, dir: &Path) -> String {
        match self.models_dir.file_name() {
            Some(name) => format!("{}/{}", name.to_string_lossy(), slash_path(dir)),
            None => slash_path(dir),
        }
    }
}

/// `path` with `/` between its parts on every platform, as plans print and save paths.
pub(crate) fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The first 7 characters of a commit, as git shows it.
pub(crate) fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}
