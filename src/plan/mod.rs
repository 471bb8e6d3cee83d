//! Desired + observed -> `Plan`: an ordered graph of actions. Pure: no I/O, no clock, no env.
//!
//! Input is what `resolve` produced for each declared model ([`DesiredModel`]) and what
//! `store::observe` saw ([`crate::store::Observed`]). Output is a [`Plan`]: per-model changes for
//! humans (create `+`, update `~`, remove `-`, with files, sizes and the commit change) and a DAG
//! of actions for `apply` (petgraph, deterministic topological order, each action naming the
//! actions it depends on).
//!
//! The rule that makes updates cheap: a file the registry records with the upstream hash that is
//! wanted now, and that is on disk with the expected size, is kept (hard-linked into the new
//! folder by `apply`), never downloaded again. Sizes are the only thing checked on disk, so a
//! plan over a large store costs one `stat` per file and no hashing.
//!
//! Fetches are deduplicated by upstream hash: two models (or two paths of one model) with the
//! same bytes share one download, because `apply` stores downloads by hash.
//!
//! Edges: must not do I/O. Everything it needs arrives in [`PlanInput`]. Rendering lives in
//! [`render`], graph building and ordering in [`graph`].

pub mod diff;
mod graph;
pub mod markdown;
mod render;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::{is_safe_relative, is_shared_folder, recorded_install_dir};
use crate::layout::Library;
use crate::registry::{Record, RecordFile};
use crate::store::{HashKind, Observed, ObservedDir};
use crate::upstream::{FileHash, UpstreamFile};

pub use crate::desired::DesiredModel;
pub use markdown::render_markdown;
pub use render::{format_bytes, render_text, summary_line};

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Absolute models directory (registry `install_path`s are absolute, as in the seed).
    pub models_dir: &'a Path,
    pub desired: &'a [DesiredModel],
    pub observed: &'a Observed,
    /// Remove registered models that are no longer declared.
    pub prune: bool,
}

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
    /// Bytes that go away (removed files, or the whole folder on remove).
    pub free_bytes: u64,
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

/// The folders (relative to the models directory) that [`crate::store::observe`] must scan for
/// [`compute`] to judge `desired` against `registry`: every desired install dir, every recorded
/// install dir under the models directory, and the folders of the config mirrors.
pub fn dirs_to_observe(
    models_dir: &Path,
    desired: &[DesiredModel],
    registry: &crate::registry::Registry,
) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    for model in desired {
        dirs.insert(model.install_dir.clone());
        if let Some(parent) = model.config_mirror.as_deref().and_then(Path::parent) {
            dirs.insert(parent.to_path_buf());
        }
    }
    for record in registry.models.values() {
        if let Some(dir) = recorded_install_dir(models_dir, record) {
            dirs.insert(dir);
        }
    }
    dirs.into_iter().collect()
}

/// The files [`compute`] wants hashed before it plans (relative to the models directory, with
/// the kind of upstream hash to compare): pure, so the planner decides and `store` reads.
///
/// - A declared file whose record does not vouch for it (no record, no hash recorded, another
///   hash recorded) but that lies in the current or target folder with the upstream size:
///   hashed, and kept (adopted) when it matches.
/// - Loose files ([`Observed::loose`]) and files of the scanned folders with the size of a
///   declared file that is not kept: hashed, and moved (loose) or hard-linked (another model's
///   folder) into place instead of downloaded when they match.
/// - A file the record vouches for whose mtime is not the recorded `mtime_ns` (touched or
///   rewritten in place with the same size), whose bytes an earlier boot wrote without
///   confirming them on disk ([`Observed::unconfirmed`]), and with `verify` every file the
///   record vouches for: hashed, and replaced (`tampered`) when its bytes differ.
pub fn hash_requests(
    models_dir: &Path,
    desired: &[DesiredModel],
    observed: &Observed,
    verify: bool,
) -> Vec<(PathBuf, HashKind)> {
    let mut requests = Vec::new();
    let mut sizes: HashMap<u64, BTreeSet<HashKind>> = HashMap::new();
    let on_disk = |dir: Option<&ObservedDir>, path: &str, size: u64| {
        dir.and_then(|d| d.files.get(path))
            .is_some_and(|seen| seen.size == size)
    };
    for model in desired {
        let record = observed.registry.models.get(&model.id);
        let previous = record.and_then(|r| recorded_install_dir(models_dir, r));
        // Looked up once per model: path keys compare component by component.
        let previous_seen = previous.as_deref().and_then(|dir| observed.dirs.get(dir));
        let target_seen = observed.dirs.get(&model.install_dir);
        let recorded: HashMap<&str, &RecordFile> = record
            .map(|r| r.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        for file in &model.files {
            let kind = HashKind::of(&file.hash);
            let old = recorded.get(file.path.as_str()).copied();
            let vouched = old.is_some_and(|old| recorded_hash(old).as_ref() == Some(&file.hash));
            let in_previous = on_disk(previous_seen, &file.path, file.size);
            if vouched && in_previous {
                let dir = previous.as_deref().expect("in_previous implies a folder");
                // Same size, but touched since kmm recorded it: only its bytes can tell.
                let touched = old.and_then(|old| old.mtime_ns).is_some_and(|recorded| {
                    let seen = previous_seen.and_then(|d| d.files.get(&file.path));
                    seen.and_then(|seen| seen.modified)
                        .and_then(crate::store::unix_nanos)
                        != Some(recorded)
                });
                // Written in a boot that may have ended in a crash (see `crate::durability`).
                let unconfirmed = observed.unconfirmed.contains(file.hash.hex());
                if verify || touched || unconfirmed {
                    requests.push((dir.join(&file.path), kind));
                }
                continue;
            }
            for (dir, seen) in [
                (previous.as_deref(), previous_seen),
                (Some(model.install_dir.as_path()), target_seen),
            ] {
                if let Some(dir) = dir
                    && on_disk(seen, &file.path, file.size)
                {
                    requests.push((dir.join(&file.path), kind));
                }
            }
            sizes.entry(file.size).or_default().insert(kind);
        }
    }
    if !sizes.is_empty() {
        for (path, seen) in &observed.loose {
            for kind in sizes.get(&seen.size).into_iter().flatten() {
                requests.push((path.clone(), *kind));
            }
        }
        // Other models' folders may hold the same bytes (see `plan_twice`).
        for (dir, found) in observed
            .dirs
            .iter()
            .filter(|(dir, _)| !is_shared_folder(dir))
        {
            for (path, seen) in &found.files {
                for kind in sizes.get(&seen.size).into_iter().flatten() {
                    requests.push((dir.join(path), *kind));
                }
            }
        }
    }
    requests.sort();
    requests.dedup();
    requests
}

/// The upstream hash a registry file records, if any (seed records have none).
fn recorded_hash(file: &RecordFile) -> Option<FileHash> {
    match (&file.sha256, &file.git_sha1) {
        (Some(hex), _) => Some(FileHash::Sha256(hex.clone())),
        (None, Some(hex)) => Some(FileHash::GitSha1(hex.clone())),
        (None, None) => None,
    }
}

fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// Computes the plan. `input.observed` should cover [`dirs_to_observe`]: a folder missing from
/// it reads as "not on disk", so its files would be fetched again.
pub fn compute(input: PlanInput<'_>) -> Plan {
    compute_with_evictions(input, &[])
}

/// [`compute`], and also remove the registered models named in `evict` (chosen by
/// [`crate::gc::select`] for a quota or `kmm gc`): their folders, config mirrors and records
/// go, even without `prune` and even when declared (a declared model named here is not
/// installed by this plan). Pinned models are never removed; naming one only adds a note.
pub fn compute_with_evictions(input: PlanInput<'_>, evict: &[String]) -> Plan {
    let evict: BTreeSet<&str> = evict.iter().map(String::as_str).collect();
    plan_twice(input, &evict, false)
}

/// The plan of `kmm migrate`: only what needs no download. Declared models whose bytes are all
/// in the store (in place, in a wrong folder, loose, under an old record) are moved and
/// registered; strays are deleted; config mirrors are written. Models that need a file from
/// the hub are left as they are (with a note), nothing is removed (`prune` is ignored).
pub fn compute_layout_only(input: PlanInput<'_>) -> Plan {
    let input = PlanInput {
        prune: false,
        ..input
    };
    plan_twice(input, &BTreeSet::new(), true)
}

/// Plans once; when something is fetched that another model's folder already holds (hashed by
/// `hash_requests`) and that folder is left untouched by the plan, plans again hard-linking it
/// from there. Two passes because only a finished plan knows which folders it touches, and
/// linking from a folder that is being replaced or removed would race with it. The second
/// pass touches the same folders: a model that fetched something was installed already.
fn plan_twice(input: PlanInput<'_>, evict: &BTreeSet<&str>, layout_only: bool) -> Plan {
    let first = plan_once(input, evict, layout_only, HashMap::new());
    let linkable = linkable_sources(input, &first, layout_only);
    if linkable.is_empty() {
        return first;
    }
    plan_once(input, evict, layout_only, linkable)
}

fn plan_once<'a>(
    input: PlanInput<'a>,
    evict: &BTreeSet<&str>,
    layout_only: bool,
    linkable: HashMap<&'a FileHash, &'a Path>,
) -> Plan {
    let mut planner = Planner::new(input);
    planner.layout_only = layout_only;
    planner.linkable = linkable;
    let mut desired: Vec<&DesiredModel> = input.desired.iter().collect();
    desired.sort_by(|a, b| a.id.cmp(&b.id));
    for model in desired {
        if !(evict.contains(model.id.as_str())
            && input.observed.registry.models.contains_key(&model.id))
        {
            planner.plan_desired(model);
        }
    }
    let declared: BTreeSet<&str> = input.desired.iter().map(|m| m.id.as_str()).collect();
    for (id, record) in &input.observed.registry.models {
        if evict.contains(id.as_str()) {
            planner.plan_eviction(id, record);
        } else if !declared.contains(id.as_str()) {
            planner.plan_undeclared(id, record);
        }
    }
    let strays = planner.plan_strays();
    planner.finish(strays)
}

/// Files in scanned folders that `plan` leaves alone and whose (hashed) bytes `plan` fetches:
/// upstream hash -> path relative to the models directory (the first by path).
///
/// `layout_only` (`kmm migrate`) drops the fetches of models it leaves alone, and the second
/// pass may install them after all: every declared file counts as wanted, and every declared
/// model's folders as touched.
fn linkable_sources<'a>(
    input: PlanInput<'a>,
    plan: &Plan,
    layout_only: bool,
) -> HashMap<&'a FileHash, &'a Path> {
    let mut fetched: HashSet<&FileHash> = plan
        .actions
        .iter()
        .filter_map(|planned| match &planned.action {
            Action::Fetch { file, .. } => Some(&file.hash),
            _ => None,
        })
        .collect();
    let mut touched: HashSet<&Path> = HashSet::new();
    if layout_only {
        for model in input.desired {
            fetched.extend(model.files.iter().map(|f| &f.hash));
            touched.insert(&model.install_dir);
            if let Some(record) = input.observed.registry.models.get(&model.id)
                && let Ok(dir) = Path::new(&record.install_path).strip_prefix(input.models_dir)
            {
                touched.insert(dir);
            }
        }
    }
    let mut sources = HashMap::new();
    if fetched.is_empty() {
        return sources;
    }
    for planned in &plan.actions {
        match &planned.action {
            Action::InstallModel {
                install_dir,
                previous_install_dir,
                ..
            } => {
                touched.insert(install_dir);
                if let Some(previous) = previous_install_dir {
                    touched.insert(previous);
                }
            }
            Action::RemoveModel { install_dir, .. } => {
                touched.insert(install_dir);
            }
            _ => {}
        }
    }
    for ((path, _), hash) in &input.observed.hashes {
        if !fetched.contains(hash) || input.observed.loose.contains_key(path) {
            continue;
        }
        // The nearest scanned folder holding the file (folders may nest).
        let folder = path
            .ancestors()
            .skip(1)
            .find(|folder| input.observed.dirs.contains_key(*folder));
        // Not from `configs/`: mirrors are kmm's own derived copies, rewritten whenever their
        // model is, so only model folders count as holding a model's bytes.
        if folder.is_some_and(|folder| !touched.contains(folder) && !is_shared_folder(folder)) {
            sources.entry(hash).or_insert(path.as_path());
        }
    }
    sources
}

struct Planner<'a> {
    input: PlanInput<'a>,
    models: Vec<ModelChange>,
    notes: Vec<Note>,
    actions: Vec<Action>,
    /// Upstream hash -> id of the fetch action that downloads it (one per hash). Only looked
    /// up, never iterated, so a hash map keeps the output deterministic.
    fetch_by_hash: HashMap<FileHash, String>,
    /// Upstream hash -> the first loose file (by path) with those bytes.
    loose_by_hash: HashMap<&'a FileHash, &'a Path>,
    /// Loose files an install takes (each gets one `DeleteMoved`).
    moved_loose: BTreeSet<PathBuf>,
    /// `kmm migrate`: nothing is downloaded (see `plan_desired`).
    layout_only: bool,
    /// Files of untouched model folders to hard-link instead of fetching (see [`plan_twice`]).
    linkable: HashMap<&'a FileHash, &'a Path>,
}

impl<'a> Planner<'a> {
    fn new(input: PlanInput<'a>) -> Self {
        Planner {
            input,
            models: Vec::new(),
            notes: Vec::new(),
            actions: Vec::new(),
            fetch_by_hash: HashMap::new(),
            loose_by_hash: input
                .observed
                .hashes
                .iter()
                .filter(|((path, _), _)| input.observed.loose.contains_key(path))
                .fold(HashMap::new(), |mut index, ((path, _), hash)| {
                    index.entry(hash).or_insert(path.as_path());
                    index
                }),
            moved_loose: BTreeSet::new(),
            layout_only: false,
            linkable: HashMap::new(),
        }
    }

    fn plan_strays(&mut self) -> Vec<PathBuf> {
        let mut strays: Vec<PathBuf> = self
            .input
            .observed
            .strays
            .iter()
            .filter(|p| is_safe_relative(p))
            .cloned()
            .collect();
        strays.sort();
        strays.dedup();
        for path in &strays {
            self.actions
                .push(Action::DeleteStray { path: path.clone() });
        }
        strays
    }

    /// The hash `store::hash_files` computed for `path`, if it was asked to.
    fn hash_of(&self, path: &Path, kind: HashKind) -> Option<&'a FileHash> {
        self.input.observed.hashes.get(&(path.to_path_buf(), kind))
    }

    /// A file in the store with exactly `file`'s bytes (by its upstream hash): in the current
    /// folder, in the target folder, or loose.
    fn local_copy(
        &self,
        model: &DesiredModel,
        previous_dir: Option<&Path>,
        file: &UpstreamFile,
    ) -> Option<PathBuf> {
        let kind = HashKind::of(&file.hash);
        for dir in previous_dir
            .into_iter()
            .chain([model.install_dir.as_path()])
        {
            let path = dir.join(&file.path);
            if self.hash_of(&path, kind) == Some(&file.hash) {
                return Some(path);
            }
        }
        self.loose_by_hash
            .get(&file.hash)
            .or_else(|| self.linkable.get(&file.hash))
            .map(|path| path.to_path_buf())
    }

    fn observed_dir(&self, dir: &Path) -> Option<&'a ObservedDir> {
        self.input.observed.dirs.get(dir)
    }

    fn plan_desired(&mut self, model: &DesiredModel) {
        let record = self.input.observed.registry.models.get(&model.id);
        let previous_dir =
            record.and_then(|record| recorded_install_dir(self.input.models_dir, record));
        let current = previous_dir
            .as_deref()
            .and_then(|dir| self.observed_dir(dir));
        let recorded: BTreeMap<&str, &RecordFile> = record
            .map(|r| r.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();

        let mut files = Vec::new();
        let mut install_files = Vec::new();
        let mut kept_files = 0;
        let mut download_bytes = 0;
        let mut free_bytes = 0;
        // Files whose bytes come from elsewhere in the store: the folder must be assembled.
        let mut gathered = false;
        let mut unhashed = false;
        let mut fetches = 0;
        for file in &model.files {
            let kind = HashKind::of(&file.hash);
            let keep_from = match (recorded.get(file.path.as_str()), &previous_dir) {
                (None, _) => Err((FileChangeKind::Add, None)),
                (Some(old), Some(dir)) => {
                    let same_bytes =
                        recorded_hash(old).as_ref() == Some(&file.hash) && old.size == file.size;
                    let on_disk = current.and_then(|d| d.files.get(&file.path));
                    let in_place = dir.join(&file.path);
                    if recorded_hash(old).is_none() {
                        unhashed = true;
                        Err((FileChangeKind::Replace, Some("no hash recorded")))
                    } else if !same_bytes {
                        Err((FileChangeKind::Replace, Some("changed upstream")))
                    } else {
                        match on_disk {
                            None => Err((FileChangeKind::Replace, Some("missing on disk"))),
                            Some(seen) if seen.size != file.size => {
                                Err((FileChangeKind::Replace, Some("size mismatch on disk")))
                            }
                            Some(_) => match self.hash_of(&in_place, kind) {
                                Some(seen) if *seen != file.hash => {
                                    Err((FileChangeKind::Replace, Some("tampered")))
                                }
                                _ => Ok((in_place, true)),
                            },
                        }
                    }
                }
                // Recorded, but not in a folder of its own: nothing to keep in place.
                (Some(_), None) => Err((FileChangeKind::Replace, Some("missing on disk"))),
            };
            // Not kept as recorded: the same bytes may still be on disk, in place (a record
            // without hashes, an unrecorded folder) or elsewhere in the store.
            let keep_from = keep_from.or_else(|(kind, reason)| {
                if reason == Some("tampered") {
                    return Err((kind, reason));
                }
                match self.local_copy(model, previous_dir.as_deref(), file) {
                    Some(path) => {
                        let in_place = previous_dir
                            .as_deref()
                            .is_some_and(|dir| path == dir.join(&file.path));
                        Ok((path, in_place))
                    }
                    None => Err((kind, reason)),
                }
            });
            let source = match keep_from {
                Ok((path, in_place)) => {
                    if in_place {
                        kept_files += 1;
                    } else {
                        gathered = true;
                        let kind = if recorded.contains_key(file.path.as_str()) {
                            FileChangeKind::Replace
                        } else {
                            FileChangeKind::Add
                        };
                        files.push(FileChange {
                            path: file.path.clone(),
                            kind,
                            size: file.size,
                            reason: Some(format!("found at {}, no download", slash_path(&path))),
                        });
                        if self.input.observed.loose.contains_key(&path)
                            && self.moved_loose.insert(path.clone())
                        {
                            self.actions
                                .push(Action::DeleteMoved { path: path.clone() });
                        }
                    }
                    FileSource::Keep { path }
                }
                Err((kind, reason)) => {
                    fetches += 1;
                    download_bytes += file.size;
                    files.push(FileChange {
                        path: file.path.clone(),
                        kind,
                        size: file.size,
                        reason: reason.map(str::to_string),
                    });
                    FileSource::Fetch {
                        action: self.fetch(model, file),
                    }
                }
            };
            install_files.push(InstallFile {
                path: file.path.clone(),
                size: file.size,
                hash: file.hash.clone(),
                source,
            });
        }
        let selected: BTreeSet<&str> = model.files.iter().map(|f| f.path.as_str()).collect();
        for old in recorded.values() {
            if !selected.contains(old.path.as_str()) {
                free_bytes += old.size;
                files.push(FileChange {
                    path: old.path.clone(),
                    kind: FileChangeKind::Remove,
                    size: old.size,
                    reason: Some("no longer selected".to_string()),
                });
            }
        }
        // The user's files: neither selected nor ever installed by kmm. They are looked for in
        // the recorded folder and also in the target folder when that already exists apart
        // from it (a `kmm migrate` killed between its move and the registry save, a hand
        // copy): the install replaces both, so both are carried; the recorded folder's copy of
        // a path wins.
        let mut carry: Vec<CarriedFile> = Vec::new();
        let mut carried: BTreeSet<&str> = BTreeSet::new();
        let target = Some(&model.install_dir).filter(|dir| previous_dir.as_ref() != Some(*dir));
        for dir in previous_dir.iter().chain(target) {
            let Some(seen) = self.observed_dir(dir) else {
                continue;
            };
            for (path, found) in &seen.files {
                let name = path.rsplit('/').next().unwrap_or(path);
                if !selected.contains(path.as_str())
                    && !recorded.contains_key(path.as_str())
                    && !crate::store::is_stray(name)
                    && carried.insert(path.as_str())
                {
                    carry.push(CarriedFile {
                        path: path.clone(),
                        from: dir.join(path),
                        size: found.size,
                    });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));

        let moved = record.is_some() && previous_dir.as_ref() != Some(&model.install_dir);
        // `kmm migrate` downloads nothing: it moves the files that are there (a partial folder
        // whose record lists only them; `kmm apply` adds the rest) and leaves the model alone
        // when nothing of it moves. Fetches no install uses are dropped in `finish`.
        let mut only: Option<BTreeSet<String>> = None;
        if self.layout_only && fetches > 0 {
            self.notes.push(Note {
                model: model.id.clone(),
                message: format!("needs {fetches} file(s) from the hub; left for `kmm apply`"),
            });
            if !(gathered || moved) {
                self.models.push(ModelChange {
                    id: model.id.clone(),
                    change: ChangeKind::Unchanged,
                    revision: Some(model.revision.clone()),
                    from_commit: record.and_then(|r| r.commit.clone()),
                    to_commit: record.and_then(|r| r.commit.clone()),
                    install_dir: previous_dir.clone(),
                    previous_install_dir: None,
                    reasons: Vec::new(),
                    files: Vec::new(),
                    kept_files,
                    download_bytes: 0,
                    free_bytes: 0,
                });
                return;
            }
            install_files.retain(|file| matches!(file.source, FileSource::Keep { .. }));
            let present: BTreeSet<String> = install_files.iter().map(|f| f.path.clone()).collect();
            files.retain(|change| {
                present.contains(&change.path) || change.kind == FileChangeKind::Remove
            });
            download_bytes = 0;
            only = Some(present);
        }
        let mut reasons = Vec::new();
        if let Some(record) = record {
            if moved {
                reasons.push(match &previous_dir {
                    Some(dir) => format!("moves from {}", slash_path(dir)),
                    None => format!("moves from {}", record.install_path),
                });
            }
            if record.library != model.library.as_str() && !moved {
                reasons.push(format!("library changes to {}", model.library.as_str()));
            }
            if record.revision.as_deref() != Some(model.revision.as_str()) {
                reasons.push(format!("revision changes to {}", model.revision));
            }
            if record.commit.as_deref() != Some(model.commit.as_str()) && files.is_empty() {
                reasons.push("commit changes; no selected file changed".to_string());
            }
            if record.pinned.unwrap_or(false) != model.pinned.unwrap_or(false) {
                reasons.push(format!(
                    "pinned changes to {}",
                    model.pinned.unwrap_or(false)
                ));
            }
            if record.license_accepted != model.license_accepted {
                reasons.push("license acceptance changes".to_string());
            }
            if record.selection.as_ref() != Some(&model.selection) {
                reasons.push("include/exclude change".to_string());
            }
            if record.install_path != self.install_path(&model.install_dir) && !moved {
                reasons.push("install path changes".to_string());
            }
            if unhashed {
                reasons.push("record gains the upstream hashes".to_string());
            }
        }
        let prune_carried = self.input.prune && !carry.is_empty();
        if prune_carried {
            reasons.push(format!(
                "removes {} file(s) not selected (prune)",
                carry.len()
            ));
            carry.clear();
        } else if !carry.is_empty() {
            self.notes.push(Note {
                model: model.id.clone(),
                message: format!(
                    "{} file(s) in its folder are not selected (kept; prune = true removes them)",
                    carry.len()
                ),
            });
        }
        let needs_install =
            record.is_none() || moved || !files.is_empty() || gathered || prune_carried;
        let mirror_missing = match &model.config_mirror {
            Some(mirror) => !needs_install && !self.mirror_present(model, mirror),
            None => false,
        };
        if mirror_missing {
            reasons.push("config mirror missing".to_string());
        }

        let change = if record.is_none() {
            ChangeKind::Create
        } else if needs_install || !reasons.is_empty() {
            ChangeKind::Update
        } else {
            ChangeKind::Unchanged
        };
        if change != ChangeKind::Unchanged {
            if needs_install {
                self.actions.push(Action::InstallModel {
                    model: model.id.clone(),
                    install_dir: model.install_dir.clone(),
                    previous_install_dir: previous_dir
                        .clone()
                        .filter(|dir| *dir != model.install_dir),
                    files: install_files,
                    carry,
                });
            }
            let config_present = only
                .as_ref()
                .is_none_or(|only| only.contains("config.json"));
            if let Some(mirror) = &model.config_mirror
                && (needs_install || mirror_missing)
                && config_present
            {
                self.actions.push(Action::MirrorConfig {
                    model: model.id.clone(),
                    from: model.install_dir.join("config.json"),
                    to: mirror.clone(),
                });
            }
            self.actions.push(Action::Register {
                model: model.id.clone(),
                record: self.record_plan(model, only.as_ref()),
            });
        }
        self.models.push(ModelChange {
            id: model.id.clone(),
            change,
            revision: Some(model.revision.clone()),
            from_commit: record.and_then(|r| r.commit.clone()),
            to_commit: Some(model.commit.clone()),
            install_dir: Some(model.install_dir.clone()),
            previous_install_dir: previous_dir.filter(|dir| moved && *dir != model.install_dir),
            reasons,
            files,
            kept_files,
            download_bytes,
            free_bytes,
        });
    }

    /// The id of the fetch action for `file`'s bytes, adding the action on first use.
    fn fetch(&mut self, model: &DesiredModel, file: &UpstreamFile) -> String {
        if let Some(id) = self.fetch_by_hash.get(&file.hash) {
            return id.clone();
        }
        let action = Action::Fetch {
            model: model.id.clone(),
            commit: model.commit.clone(),
            file: file.clone(),
        };
        let id = action.id();
        self.actions.push(action);
        self.fetch_by_hash.insert(file.hash.clone(), id.clone());
        id
    }

    fn mirror_present(&self, model: &DesiredModel, mirror: &Path) -> bool {
        let Some(config) = model.files.iter().find(|f| f.path == "config.json") else {
            return true;
        };
        let (Some(parent), Some(name)) = (mirror.parent(), mirror.file_name()) else {
            return false;
        };
        self.observed_dir(parent)
            .and_then(|dir| dir.files.get(name.to_string_lossy().as_ref()))
            .is_some_and(|seen| seen.size == config.size)
    }

    fn install_path(&self, install_dir: &Path) -> String {
        self.input
            .models_dir
            .join(install_dir)
            .to_string_lossy()
            .into_owned()
    }

    /// The record after install; `only`: the files a `kmm migrate` put in place.
    fn record_plan(&self, model: &DesiredModel, only: Option<&BTreeSet<String>>) -> RecordPlan {
        let files: Vec<&UpstreamFile> = model
            .files
            .iter()
            .filter(|f| only.is_none_or(|only| only.contains(&f.path)))
            .collect();
        RecordPlan {
            model_id: model.id.clone(),
            library: model.library,
            revision: model.revision.clone(),
            commit: model.commit.clone(),
            install_path: self.install_path(&model.install_dir),
            files: files
                .iter()
                .map(|f| RecordPlanFile {
                    path: f.path.clone(),
                    size: f.size,
                    hash: f.hash.clone(),
                })
                .collect(),
            total_size: files.iter().map(|f| f.size).sum(),
            pinned: model.pinned,
            license_accepted: model.license_accepted.clone(),
            selection: model.selection.clone(),
            partial: only.is_some(),
        }
    }

    fn plan_eviction(&mut self, id: &str, record: &Record) {
        if record.pinned.unwrap_or(false) {
            self.notes.push(Note {
                model: id.to_string(),
                message: "pinned: never evicted".to_string(),
            });
            return;
        }
        self.plan_removal(id, record, "evicted (least recently used)");
    }

    fn plan_undeclared(&mut self, id: &str, record: &Record) {
        let pinned = record.pinned.unwrap_or(false);
        if !self.input.prune || pinned {
            if let Some(dir) = recorded_install_dir(self.input.models_dir, record)
                && self.observed_dir(&dir).is_none()
            {
                self.notes.push(Note {
                    model: id.to_string(),
                    message: format!("recorded folder {} is missing", slash_path(&dir)),
                });
            }
            let message = if pinned && self.input.prune {
                "not declared but pinned (kept even with prune = true)"
            } else {
                "not declared (kept; set prune = true to remove)"
            };
            self.notes.push(Note {
                model: id.to_string(),
                message: message.to_string(),
            });
            return;
        }
        self.plan_removal(id, record, "prune");
    }

    fn plan_removal(&mut self, id: &str, record: &Record, reason: &str) {
        let dir = recorded_install_dir(self.input.models_dir, record);
        let free_bytes = match dir.as_deref().and_then(|d| self.observed_dir(d)) {
            Some(seen) => seen.files.values().map(|f| f.size).sum(),
            None => 0,
        };
        match &dir {
            Some(dir) => {
                let has_config = record.files.iter().any(|f| f.path == "config.json");
                self.actions.push(Action::RemoveModel {
                    model: id.to_string(),
                    install_dir: dir.clone(),
                    config_mirror: has_config.then(|| crate::layout::config_mirror_path(id)),
                });
            }
            None => self.notes.push(Note {
                model: id.to_string(),
                message: format!(
                    "recorded folder {} is outside the models directory; only the record is removed",
                    record.install_path
                ),
            }),
        }
        self.actions.push(Action::Unregister {
            model: id.to_string(),
        });
        self.models.push(ModelChange {
            id: id.to_string(),
            change: ChangeKind::Remove,
            revision: record.revision.clone(),
            from_commit: record.commit.clone(),
            to_commit: None,
            install_dir: dir,
            previous_install_dir: None,
            reasons: vec![reason.to_string()],
            files: Vec::new(),
            kept_files: 0,
            download_bytes: 0,
            free_bytes,
        });
    }

    fn finish(mut self, strays: Vec<PathBuf>) -> Plan {
        // `layout_only` installs take no download: drop the fetches (and loose-file deletions)
        // that no remaining install uses.
        if self.layout_only {
            let mut needed_fetches = BTreeSet::new();
            let mut needed_paths = BTreeSet::new();
            for action in &self.actions {
                if let Action::InstallModel { files, .. } = action {
                    for file in files {
                        match &file.source {
                            FileSource::Fetch { action } => needed_fetches.insert(action.clone()),
                            FileSource::Keep { path } => needed_paths.insert(path.clone()),
                        };
                    }
                }
            }
            self.actions.retain(|action| match action {
                Action::Fetch { .. } => needed_fetches.contains(&action.id()),
                Action::DeleteMoved { path } => needed_paths.contains(path),
                _ => true,
            });
        }
        // Loose files nothing takes: reported, never deleted (kmm cannot tell whose they are).
        let taken: BTreeSet<&Path> = self
            .actions
            .iter()
            .filter_map(|action| match action {
                Action::DeleteMoved { path } => Some(path.as_path()),
                _ => None,
            })
            .collect();
        // Files that a record of the old flat layout (its `install_path` a shared folder such
        // as `llama-cpp/`) lists: they are that model's, but it is not declared.
        let mut flat_owner: HashMap<PathBuf, &str> = HashMap::new();
        for (id, record) in &self.input.observed.registry.models {
            let Ok(dir) = Path::new(&record.install_path).strip_prefix(self.input.models_dir)
            else {
                continue;
            };
            if dir.as_os_str().is_empty() || is_shared_folder(dir) {
                for file in &record.files {
                    flat_owner.insert(dir.join(&file.path), id);
                }
            }
        }
        let mut left: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
        for path in self.input.observed.loose.keys() {
            if taken.contains(path.as_path()) {
                continue;
            }
            if let Some(id) = flat_owner.get(path) {
                *owned.entry(id).or_default() += 1;
                continue;
            }
            let group = match path.parent() {
                Some(parent) if is_safe_relative(parent) && !is_shared_folder(parent) => {
                    parent.to_path_buf()
                }
                _ => path.clone(),
            };
            *left.entry(group).or_default() += 1;
        }
        for (group, count) in left {
            self.notes.push(Note {
                model: slash_path(&group),
                message: format!(
                    "{count} file(s) no registry record or declared model accounts for (left in place)"
                ),
            });
        }
        for (id, count) in owned {
            self.notes.push(Note {
                model: id.to_string(),
                message: format!(
                    "{count} file(s) of its record lie in the old flat layout; declare it to move them"
                ),
            });
        }
        self.models.sort_by(|a, b| a.id.cmp(&b.id));
        self.notes
            .sort_by(|a, b| (&a.model, &a.message).cmp(&(&b.model, &b.message)));
        let actions = graph::order(self.actions);
        let mut summary = Summary {
            strays: strays.len(),
            ..Summary::default()
        };
        for model in &self.models {
            match model.change {
                ChangeKind::Create => summary.to_add += 1,
                ChangeKind::Update => summary.to_change += 1,
                ChangeKind::Remove => summary.to_remove += 1,
                ChangeKind::Unchanged => {}
            }
            summary.free_bytes += model.free_bytes;
        }
        for planned in &actions {
            if let Action::Fetch { file, .. } = &planned.action {
                summary.download_files += 1;
                summary.download_bytes += file.size;
            }
        }
        Plan {
            models_dir: self.input.models_dir.to_path_buf(),
            models: self.models,
            notes: self.notes,
            strays,
            actions,
            summary,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::store::ObservedFile;

    const ROOT: &str = "/srv/models";
    const C1: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f80912a3b4c5";
    const C2: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

    fn lfs(path: &str, size: u64, seed: char) -> UpstreamFile {
        UpstreamFile {
            path: path.to_string(),
            size,
            hash: FileHash::Sha256(seed.to_string().repeat(64)),
        }
    }

    fn regular(path: &str, size: u64, seed: char) -> UpstreamFile {
        UpstreamFile {
            path: path.to_string(),
            size,
            hash: FileHash::GitSha1(seed.to_string().repeat(40)),
        }
    }

    fn gguf_model() -> DesiredModel {
        DesiredModel {
            id: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".to_string(),
            revision: "main".to_string(),
            commit: "3f2a9c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a59".to_string(),
            library: Library::LlamaCpp,
            install_dir: "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into(),
            files: vec![
                regular("config.json", 1_234, 'c'),
                lfs("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", 668_788_096, 'a'),
            ],
            config_mirror: Some("configs/TinyLlama-1.1B-Chat-v1.0-GGUF.json".into()),
            pinned: Some(true),
            license_accepted: None,
            selection: Default::default(),
        }
    }

    fn bert_model(commit: &str) -> DesiredModel {
        DesiredModel {
            id: "acme/tiny-bert".to_string(),
            revision: "main".to_string(),
            commit: commit.to_string(),
            library: Library::Transformers,
            install_dir: "transformers/acme/tiny-bert".into(),
            files: vec![
                regular(".gitattributes", 1_519, '1'),
                lfs("model.safetensors", 12_000_000, 'b'),
                regular("old.bin", 4_000, '2'),
                regular("tokenizer/vocab.txt", 231_508, '3'),
            ],
            config_mirror: None,
            pinned: None,
            license_accepted: None,
            selection: Default::default(),
        }
    }

    /// The observed state right after `models` were installed as desired.
    fn installed(models: &[DesiredModel]) -> Observed {
        let mut observed = Observed::default();
        for model in models {
            let plan = compute(PlanInput {
                models_dir: Path::new(ROOT),
                desired: std::slice::from_ref(model),
                observed: &Observed::default(),
                prune: false,
            });
            let record = plan
                .actions
                .iter()
                .find_map(|a| match &a.action {
                    Action::Register { record, .. } => Some(record.clone()),
                    _ => None,
                })
                .unwrap();
            observed
                .registry
                .models
                .insert(model.id.clone(), record_from(&record));
            let dir = observed.dirs.entry(model.install_dir.clone()).or_default();
            for file in &model.files {
                dir.files.insert(file.path.clone(), seen(file.size));
            }
            if let Some(mirror) = &model.config_mirror {
                let config = model
                    .files
                    .iter()
                    .find(|f| f.path == "config.json")
                    .unwrap();
                observed
                    .dirs
                    .entry(mirror.parent().unwrap().to_path_buf())
                    .or_default()
                    .files
                    .insert(
                        mirror.file_name().unwrap().to_string_lossy().into_owned(),
                        seen(config.size),
                    );
            }
        }
        observed
    }

    fn seen(size: u64) -> ObservedFile {
        ObservedFile {
            size,
            modified: None,
        }
    }

    fn record_from(plan: &RecordPlan) -> Record {
        Record {
            model_id: plan.model_id.clone(),
            library: plan.library.as_str().to_string(),
            revision: Some(plan.revision.clone()),
            installed_at: Some("2025-09-01T12:34:56Z".to_string()),
            install_path: plan.install_path.clone(),
            files: plan
                .files
                .iter()
                .map(|f| RecordFile {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.hash.is_lfs().then(|| f.hash.hex().to_string()),
                    git_sha1: (!f.hash.is_lfs()).then(|| f.hash.hex().to_string()),
                    mtime_ns: None,
                    extra: Default::default(),
                })
                .collect(),
            total_size: plan.total_size,
            commit: Some(plan.commit.clone()),
            pinned: plan.pinned,
            license_accepted: plan.license_accepted.clone(),
            last_accessed: None,
            selection: Some(plan.selection.clone()),
            extra: Default::default(),
        }
    }

    fn plan(desired: &[DesiredModel], observed: &Observed, prune: bool) -> Plan {
        compute(PlanInput {
            models_dir: Path::new(ROOT),
            desired,
            observed,
            prune,
        })
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.actions.iter().map(|a| a.id.as_str()).collect()
    }

    fn deps<'p>(plan: &'p Plan, id: &str) -> Vec<&'p str> {
        let action = plan.actions.iter().find(|a| a.id == id).unwrap();
        action.depends_on.iter().map(String::as_str).collect()
    }

    /// A plan with a create, an update (one file changed, one dropped) and a removal.
    fn mixed_plan() -> Plan {
        let mut before = bert_model(C1);
        before.files[1] = lfs("model.safetensors", 11_000_000, 'e');
        let mut observed = installed(&[before]);
        let old = Record {
            model_id: "old/model".to_string(),
            library: "transformers".to_string(),
            revision: Some("main".to_string()),
            installed_at: None,
            install_path: format!("{ROOT}/transformers/old/model"),
            files: vec![],
            total_size: 0,
            commit: None,
            pinned: None,
            license_accepted: None,
            last_accessed: None,
            selection: None,
            extra: Default::default(),
        };
        observed
            .registry
            .models
            .insert("old/model".to_string(), old);
        let mut after = bert_model(C2);
        after.files.retain(|f| f.path != "old.bin");
        plan(&[gguf_model(), after], &observed, true)
    }

    #[test]
    fn fresh_store_creates_everything_in_dependency_order() {
        let plan = plan(&[gguf_model(), bert_model(C1)], &Observed::default(), false);
        assert_eq!(plan.summary.to_add, 2);
        assert_eq!(plan.summary.download_files, 6);
        let order = ids(&plan);
        for planned in &plan.actions {
            let me = order.iter().position(|id| *id == planned.id).unwrap();
            for dep in &planned.depends_on {
                assert!(order.iter().position(|id| id == dep).unwrap() < me);
            }
        }
        assert_eq!(
            deps(&plan, "register:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"),
            ["mirror-config:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"]
        );
        assert_eq!(
            deps(&plan, "install:acme/tiny-bert"),
            [
                "fetch:acme/tiny-bert:.gitattributes",
                "fetch:acme/tiny-bert:model.safetensors",
                "fetch:acme/tiny-bert:old.bin",
                "fetch:acme/tiny-bert:tokenizer/vocab.txt",
            ]
        );
        insta::assert_snapshot!("fresh_store_text", render_text(&plan));
        insta::assert_json_snapshot!("fresh_store_json", plan);
    }

    #[test]
    fn installed_state_plans_nothing() {
        let desired = [gguf_model(), bert_model(C1)];
        let plan = plan(&desired, &installed(&desired), false);
        assert!(plan.is_empty(), "{plan:#?}");
        assert!(
            plan.models
                .iter()
                .all(|m| m.change == ChangeKind::Unchanged)
        );
        assert_eq!(
            render_text(&plan),
            "No changes. The models directory matches kari-models.toml.\n"
        );
    }

    #[test]
    fn mixed_plan_renders_like_terraform() {
        let plan = mixed_plan();
        assert_eq!(
            (
                plan.summary.to_add,
                plan.summary.to_change,
                plan.summary.to_remove
            ),
            (1, 1, 1)
        );
        insta::assert_snapshot!("mixed_text", render_text(&plan));
        insta::assert_json_snapshot!("mixed_json", plan);
    }

    #[test]
    fn revision_bump_fetches_only_changed_files_and_keeps_the_rest() {
        let plan = mixed_plan();
        let bert: Vec<&str> = ids(&plan)
            .into_iter()
            .filter(|id| id.contains("acme/tiny-bert"))
            .collect();
        assert_eq!(
            bert,
            [
                "fetch:acme/tiny-bert:model.safetensors",
                "install:acme/tiny-bert",
                "register:acme/tiny-bert"
            ]
        );
        let install = plan
            .actions
            .iter()
            .find_map(|a| match &a.action {
                Action::InstallModel { model, files, .. } if model == "acme/tiny-bert" => {
                    Some(files.clone())
                }
                _ => None,
            })
            .unwrap();
        let sources: Vec<(&str, &FileSource)> = install
            .iter()
            .map(|f| (f.path.as_str(), &f.source))
            .collect();
        assert_eq!(
            sources,
            [
                (
                    ".gitattributes",
                    &FileSource::Keep {
                        path: "transformers/acme/tiny-bert/.gitattributes".into()
                    }
                ),
                (
                    "model.safetensors",
                    &FileSource::Fetch {
                        action: "fetch:acme/tiny-bert:model.safetensors".into()
                    }
                ),
                (
                    "tokenizer/vocab.txt",
                    &FileSource::Keep {
                        path: "transformers/acme/tiny-bert/tokenizer/vocab.txt".into()
                    }
                ),
            ]
        );
        let change = plan
            .models
            .iter()
            .find(|m| m.id == "acme/tiny-bert")
            .unwrap();
        assert_eq!(change.free_bytes, 4_000);
        assert_eq!(change.download_bytes, 12_000_000);
    }

    #[test]
    fn damaged_files_on_disk_are_fetched_again_with_a_reason() {
        let desired = [bert_model(C1)];
        let mut observed = installed(&desired);
        let dir = observed
            .dirs
            .get_mut(Path::new("transformers/acme/tiny-bert"))
            .unwrap();
        dir.files.remove("old.bin");
        dir.files.get_mut("model.safetensors").unwrap().size = 5;
        let plan = plan(&desired, &observed, false);
        let reasons: Vec<(&str, Option<&str>)> = plan.models[0]
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.reason.as_deref()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("model.safetensors", Some("size mismatch on disk")),
                ("old.bin", Some("missing on disk")),
            ]
        );
        assert_eq!(plan.models[0].change, ChangeKind::Update);
        assert_eq!(plan.summary.download_files, 2);
    }

    #[test]
    fn undeclared_models_are_kept_without_prune_and_pinned_ones_even_with_it() {
        let gguf = gguf_model();
        let bert = bert_model(C1);
        let observed = installed(&[gguf.clone(), bert.clone()]);

        let kept = plan(&[], &observed, false);
        assert!(kept.is_empty());
        assert_eq!(kept.notes.len(), 2);
        assert!(
            kept.notes
                .iter()
                .all(|n| n.message.contains("set prune = true"))
        );
        insta::assert_snapshot!("undeclared_kept_text", render_text(&kept));

        let pruned = plan(&[], &observed, true);
        // The GGUF model is pinned: protected. The bert model goes.
        assert_eq!(
            ids(&pruned),
            ["remove:acme/tiny-bert", "unregister:acme/tiny-bert"]
        );
        assert_eq!(
            deps(&pruned, "unregister:acme/tiny-bert"),
            ["remove:acme/tiny-bert"]
        );
        assert_eq!(pruned.notes.len(), 1);
        assert!(pruned.notes[0].message.contains("pinned"));
        assert_eq!(
            pruned.summary.free_bytes,
            bert.files.iter().map(|f| f.size).sum::<u64>()
        );
    }

    #[test]
    fn removing_a_model_with_a_config_also_removes_its_mirror() {
        let observed = installed(&[gguf_model()]);
        let mut unpinned = observed.clone();
        for record in unpinned.registry.models.values_mut() {
            record.pinned = None;
        }
        let plan = plan(&[], &unpinned, true);
        let mirror = plan.actions.iter().find_map(|a| match &a.action {
            Action::RemoveModel { config_mirror, .. } => Some(config_mirror.clone()),
            _ => None,
        });
        assert_eq!(
            mirror,
            Some(Some(PathBuf::from(
                "configs/TinyLlama-1.1B-Chat-v1.0-GGUF.json"
            )))
        );
    }

    #[test]
    fn strays_become_delete_actions() {
        let mut observed = installed(&[bert_model(C1)]);
        observed.strays = vec![
            "transformers/acme/tiny-bert/model.safetensors.corrupt".into(),
            "llama-cpp/x/y.gguf.incomplete".into(),
            "../escape.corrupt".into(),
        ];
        let plan = plan(&[bert_model(C1)], &observed, false);
        assert_eq!(
            ids(&plan),
            [
                "delete-stray:llama-cpp/x/y.gguf.incomplete",
                "delete-stray:transformers/acme/tiny-bert/model.safetensors.corrupt",
            ]
        );
        assert!(!plan.is_empty());
        assert!(render_text(&plan).ends_with("nothing to download, 2 leftovers to delete.\n"));
    }

    #[test]
    fn same_input_gives_byte_identical_json() {
        let first = serde_json::to_string_pretty(&mixed_plan()).unwrap();
        let second = serde_json::to_string_pretty(&mixed_plan()).unwrap();
        assert_eq!(first, second);
        // Declaration order does not matter either.
        let mut desired = vec![gguf_model(), bert_model(C1)];
        let forward = serde_json::to_string(&plan(&desired, &Observed::default(), false)).unwrap();
        desired.reverse();
        let backward = serde_json::to_string(&plan(&desired, &Observed::default(), false)).unwrap();
        assert_eq!(forward, backward);
        // And the JSON reads back into the same plan (plan files for `kmm apply plan.json`).
        let parsed: Plan = serde_json::from_str(&first).unwrap();
        assert_eq!(parsed, mixed_plan());
    }

    #[test]
    fn identical_bytes_are_fetched_once() {
        let mut other = bert_model(C1);
        other.id = "acme/tiny-bert-copy".to_string();
        other.install_dir = "transformers/acme/tiny-bert-copy".into();
        let plan = plan(&[bert_model(C1), other], &Observed::default(), false);
        assert_eq!(plan.summary.download_files, 4);
        assert_eq!(
            deps(&plan, "install:acme/tiny-bert-copy"),
            deps(&plan, "install:acme/tiny-bert")
        );
    }

    #[test]
    fn library_override_moves_the_folder_and_keeps_its_files() {
        let before = bert_model(C1);
        let observed = installed(std::slice::from_ref(&before));
        let mut after = before.clone();
        after.library = Library::LlamaCpp;
        after.install_dir = "llama-cpp/acme/tiny-bert".into();
        let plan = plan(&[after], &observed, false);
        assert_eq!(plan.summary.download_files, 0);
        let (previous, sources) = plan
            .actions
            .iter()
            .find_map(|a| match &a.action {
                Action::InstallModel {
                    previous_install_dir,
                    files,
                    ..
                } => Some((previous_install_dir.clone(), files.clone())),
                _ => None,
            })
            .unwrap();
        assert_eq!(previous, Some(PathBuf::from("transformers/acme/tiny-bert")));
        assert!(
            sources
                .iter()
                .all(|f| matches!(&f.source, FileSource::Keep { path }
            if path.starts_with("transformers/acme/tiny-bert")))
        );
        let text = render_text(&plan);
        assert!(
            text.contains("-> models/llama-cpp/acme/tiny-bert"),
            "{text}"
        );
        assert!(
            text.contains("# moves from transformers/acme/tiny-bert"),
            "{text}"
        );
    }

    #[test]
    fn metadata_changes_only_rewrite_the_record() {
        let desired = bert_model(C1);
        let observed = installed(std::slice::from_ref(&desired));
        let mut pinned = desired.clone();
        pinned.pinned = Some(true);
        pinned.license_accepted = Some(serde_json::json!({"accepted": true}));
        let plan = plan(&[pinned], &observed, false);
        assert_eq!(ids(&plan), ["register:acme/tiny-bert"]);
        assert_eq!(
            plan.models[0].reasons,
            ["pinned changes to true", "license acceptance changes"]
        );
    }

    #[test]
    fn a_missing_config_mirror_is_restored() {
        let desired = gguf_model();
        let mut observed = installed(std::slice::from_ref(&desired));
        observed.dirs.remove(Path::new("configs"));
        let plan = plan(&[desired], &observed, false);
        let id = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF";
        assert_eq!(
            ids(&plan),
            [format!("mirror-config:{id}"), format!("register:{id}")]
        );
        assert_eq!(plan.models[0].reasons, ["config mirror missing"]);
    }

    #[test]
    fn a_folder_is_vacated_before_another_model_moves_in() {
        let squatter = bert_model(C1);
        let mut observed = installed(std::slice::from_ref(&squatter));
        observed
            .registry
            .models
            .get_mut("acme/tiny-bert")
            .unwrap()
            .pinned = None;
        let mut newcomer = bert_model(C1);
        newcomer.id = "acme/tiny-bert-v2".to_string();
        newcomer.install_dir = "transformers/acme/tiny-bert".into();
        let plan = plan(&[newcomer], &observed, true);
        assert!(deps(&plan, "install:acme/tiny-bert-v2").contains(&"remove:acme/tiny-bert"));
    }

    #[test]
    fn records_without_hashes_are_refetched() {
        let desired = bert_model(C1);
        let mut observed = installed(std::slice::from_ref(&desired));
        for file in &mut observed
            .registry
            .models
            .get_mut("acme/tiny-bert")
            .unwrap()
            .files
        {
            file.sha256 = None;
            file.git_sha1 = None;
        }
        let plan = plan(&[desired], &observed, false);
        assert_eq!(plan.summary.download_files, 4);
        assert!(
            plan.models[0]
                .files
                .iter()
                .all(|f| f.reason.as_deref() == Some("no hash recorded"))
        );
    }

    #[test]
    fn records_without_hashes_are_kept_when_their_bytes_match() {
        let desired = bert_model(C1);
        let mut observed = installed(std::slice::from_ref(&desired));
        let record = observed.registry.models.get_mut("acme/tiny-bert").unwrap();
        for file in &mut record.files {
            file.sha256 = None;
            file.git_sha1 = None;
        }
        let requests = hash_requests(
            Path::new(ROOT),
            std::slice::from_ref(&desired),
            &observed,
            false,
        );
        assert_eq!(requests.len(), 4, "{requests:?}");
        for file in &desired.files {
            // One file changed on disk: its hash does not match.
            let hash = if file.path == "old.bin" {
                FileHash::GitSha1("0".repeat(40))
            } else {
                file.hash.clone()
            };
            let path = desired.install_dir.join(&file.path);
            observed
                .hashes
                .insert((path, HashKind::of(&file.hash)), hash);
        }
        let plan = plan(&[desired], &observed, false);
        assert_eq!(plan.summary.download_files, 1);
        let model = &plan.models[0];
        assert_eq!(model.kept_files, 3);
        assert_eq!(model.files.len(), 1);
        assert_eq!(model.files[0].path, "old.bin");
        assert!(
            model
                .reasons
                .iter()
                .any(|r| r == "record gains the upstream hashes")
        );
    }

    #[test]
    fn a_vouched_file_whose_hash_differs_is_tampered() {
        let desired = bert_model(C1);
        let mut observed = installed(std::slice::from_ref(&desired));
        assert!(
            hash_requests(
                Path::new(ROOT),
                std::slice::from_ref(&desired),
                &observed,
                false
            )
            .is_empty()
        );
        let verify = hash_requests(
            Path::new(ROOT),
            std::slice::from_ref(&desired),
            &observed,
            true,
        );
        assert_eq!(verify.len(), 4);
        let path = desired.install_dir.join("model.safetensors");
        observed
            .hashes
            .insert((path, HashKind::Sha256), FileHash::Sha256("e".repeat(64)));
        let plan = plan(&[desired], &observed, false);
        assert_eq!(ids(&plan)[0], "fetch:acme/tiny-bert:model.safetensors");
        assert_eq!(plan.models[0].files[0].reason.as_deref(), Some("tampered"));
    }

    #[test]
    fn a_loose_file_with_the_right_bytes_is_moved_instead_of_fetched() {
        let desired = gguf_model();
        let gguf = &desired.files[1];
        let loose = PathBuf::from("llama-cpp/tinyllama.gguf");
        let mut observed = Observed::default();
        observed.loose.insert(loose.clone(), seen(gguf.size));
        observed.loose.insert("llama-cpp/mine.gguf".into(), seen(7));
        let requests = hash_requests(
            Path::new(ROOT),
            std::slice::from_ref(&desired),
            &observed,
            false,
        );
        assert_eq!(requests, [(loose.clone(), HashKind::Sha256)]);
        observed
            .hashes
            .insert((loose.clone(), HashKind::Sha256), gguf.hash.clone());

        let full = plan(std::slice::from_ref(&desired), &observed, false);
        assert_eq!(
            full.summary.download_files, 1,
            "only config.json is fetched"
        );
        let delete = "delete-moved:llama-cpp/tinyllama.gguf";
        assert_eq!(deps(&full, delete), [format!("install:{}", desired.id)]);
        assert!(full.notes.iter().any(|n| n.model == "llama-cpp/mine.gguf"));

        // `kmm migrate`: no download; the model gets the file that is there, its record only
        // that file.
        let migrate = compute_layout_only(PlanInput {
            models_dir: Path::new(ROOT),
            desired: std::slice::from_ref(&desired),
            observed: &observed,
            prune: true,
        });
        assert_eq!(migrate.summary.download_files, 0);
        let record = migrate
            .actions
            .iter()
            .find_map(|a| match &a.action {
                Action::Register { record, .. } => Some(record),
                _ => None,
            })
            .unwrap();
        assert!(record.partial);
        assert_eq!(record.files.len(), 1);
        assert!(ids(&migrate).contains(&delete));
        assert!(
            !ids(&migrate)
                .iter()
                .any(|id| id.starts_with("mirror-config"))
        );
    }

    #[test]
    fn flat_files_of_an_undeclared_record_are_named_not_moved() {
        let mut observed = Observed::default();
        let mut record = record_from(&{
            let plan = compute(PlanInput {
                models_dir: Path::new(ROOT),
                desired: &[gguf_model()],
                observed: &Observed::default(),
                prune: false,
            });
            plan.actions
                .iter()
                .find_map(|a| match &a.action {
                    Action::Register { record, .. } => Some(record.clone()),
                    _ => None,
                })
                .unwrap()
        });
        record.install_path = format!("{ROOT}/llama-cpp");
        record.pinned = None;
        observed
            .registry
            .models
            .insert("old/flat".to_string(), record);
        observed.loose.insert(
            "llama-cpp/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf".into(),
            seen(1),
        );
        let plan = plan(&[], &observed, true);
        assert!(
            plan.notes
                .iter()
                .any(|n| n.model == "old/flat" && n.message.contains("old flat layout")),
            "{:?}",
            plan.notes
        );
        // Pruned: only the record goes; the shared folder is never removed.
        assert_eq!(ids(&plan), ["unregister:old/flat"]);
    }

    #[test]
    fn evictions_remove_declared_and_undeclared_models_but_never_pinned_ones() {
        let gguf = gguf_model(); // pinned
        let bert = bert_model(C1);
        let observed = installed(&[gguf.clone(), bert.clone()]);
        let evict = vec![gguf.id.clone(), bert.id.clone()];
        let plan = compute_with_evictions(
            PlanInput {
                models_dir: Path::new(ROOT),
                desired: &[gguf, bert],
                observed: &observed,
                prune: false,
            },
            &evict,
        );
        assert_eq!(
            ids(&plan),
            ["remove:acme/tiny-bert", "unregister:acme/tiny-bert"]
        );
        let bert_change = plan
            .models
            .iter()
            .find(|m| m.id == "acme/tiny-bert")
            .unwrap();
        assert_eq!(bert_change.change, ChangeKind::Remove);
        assert_eq!(bert_change.reasons, ["evicted (least recently used)"]);
        assert!(
            plan.notes
                .iter()
                .any(|n| n.message == "pinned: never evicted")
        );
        // No evictions: the same as `compute`.
        let observed = installed(&[bert_model(C1)]);
        let input = PlanInput {
            models_dir: Path::new(ROOT),
            desired: &[],
            observed: &observed,
            prune: false,
        };
        assert_eq!(compute_with_evictions(input, &[]), compute(input));
    }

    #[test]
    fn bytes_are_formatted_in_decimal_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(999), "999 B");
        assert_eq!(format_bytes(1_234), "1.2 kB");
        assert_eq!(format_bytes(999_999), "1.0 MB");
        assert_eq!(format_bytes(668_788_096), "668.8 MB");
        assert_eq!(format_bytes(12_000_000), "12.0 MB");
        assert_eq!(format_bytes(4_100_000_000), "4.1 GB");
        assert_eq!(format_bytes(2_500_000_000_000), "2.5 TB");
    }

    #[test]
    fn observed_dirs_cover_desired_recorded_and_mirror_folders() {
        let observed = installed(&[bert_model(C1)]);
        let dirs = dirs_to_observe(Path::new(ROOT), &[gguf_model()], &observed.registry);
        let expected: Vec<PathBuf> = vec![
            "configs".into(),
            "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into(),
            "transformers/acme/tiny-bert".into(),
        ];
        assert_eq!(dirs, expected);
        let _ = Registry::default();
    }
}
