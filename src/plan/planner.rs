//! The planner: desired + observed -> [`Plan`]. Runs the models in id order, then the
//! registered models nobody declares, then strays, and orders the actions as a graph. How one
//! declared model is planned (keep, gather, fetch, carry) is in [`super::install`].
//!
//! Edges: pure: everything arrives in [`PlanInput`]; no I/O, no clock, no environment.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::desired::{DesiredModel, is_safe_relative, is_shared_folder, recorded_install_dir};
use crate::registry::Record;
use crate::store::{HashKind, Observed, ObservedDir};
use crate::upstream::{FileHash, UpstreamFile};

use super::graph;
use super::model::*;

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

pub(super) struct Planner<'a> {
    pub(super) input: PlanInput<'a>,
    pub(super) models: Vec<ModelChange>,
    pub(super) notes: Vec<Note>,
    pub(super) actions: Vec<Action>,
    /// Upstream hash -> id of the fetch action that downloads it (one per hash). Only looked
    /// up, never iterated, so a hash map keeps the output deterministic.
    pub(super) fetch_by_hash: HashMap<FileHash, String>,
    /// Upstream hash -> the first loose file (by path) with those bytes.
    pub(super) loose_by_hash: HashMap<&'a FileHash, &'a Path>,
    /// Loose files an install takes (each gets one `DeleteMoved`).
    pub(super) moved_loose: BTreeSet<PathBuf>,
    /// `kmm migrate`: nothing is downloaded (see `plan_desired`).
    pub(super) layout_only: bool,
    /// Files of untouched model folders to hard-link instead of fetching (see [`plan_twice`]).
    pub(super) linkable: HashMap<&'a FileHash, &'a Path>,
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
    pub(super) fn hash_of(&self, path: &Path, kind: HashKind) -> Option<&'a FileHash> {
        self.input.observed.hashes.get(&(path.to_path_buf(), kind))
    }

    /// A file in the store with exactly `file`'s bytes (by its upstream hash): in the current
    /// folder, in the target folder, or loose.
    pub(super) fn local_copy(
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

    pub(super) fn observed_dir(&self, dir: &Path) -> Option<&'a ObservedDir> {
        self.input.observed.dirs.get(dir)
    }

    pub(super) fn install_path(&self, install_dir: &Path) -> String {
        self.input
            .models_dir
            .join(install_dir)
            .to_string_lossy()
            .into_owned()
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
            copy_bytes: 0,
            byte_sources: None,
            free_bytes,
        });
    }

    /// A loose file that is another name of a file of the same name in a model folder (one
    /// inode) is the old name of a move that was interrupted after the file was linked into
    /// place (a kill, a full disk at the registry write): deleting that name loses no byte,
    /// and a resumed run ends where an uninterrupted one ends.
    fn finish_interrupted_moves(&mut self) {
        let mut in_folders: HashMap<(u64, u64), &str> = HashMap::new();
        for dir in self.input.observed.dirs.values() {
            for (path, file) in &dir.files {
                if let Some(inode) = file.inode {
                    in_folders.insert(inode, path.rsplit('/').next().unwrap_or(path));
                }
            }
        }
        for (path, file) in &self.input.observed.loose {
            let same_name = file
                .inode
                .and_then(|inode| in_folders.get(&inode))
                .is_some_and(|name| path.file_name().is_some_and(|own| own == *name));
            if same_name && self.moved_loose.insert(path.clone()) {
                self.actions
                    .push(Action::DeleteMoved { path: path.clone() });
            }
        }
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
        self.finish_interrupted_moves();
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
        // Installs per download: the first takes the downloaded file, the others a copy.
        let mut installs_of: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for planned in &actions {
            match &planned.action {
                Action::Fetch { file, .. } => {
                    summary.download_files += 1;
                    summary.download_bytes += file.size;
                }
                Action::InstallModel { files, .. } => {
                    for file in files {
                        if let FileSource::Fetch { action } = &file.source {
                            installs_of.entry(action).or_insert((file.size, 0)).1 += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        summary.copy_bytes = self.models.iter().map(|m| m.copy_bytes).sum::<u64>()
            + installs_of
                .values()
                .map(|(size, installs)| size * installs.saturating_sub(1))
                .sum::<u64>();
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
