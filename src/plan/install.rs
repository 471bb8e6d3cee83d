//! How one declared model is planned: for each selected file, keep it in place, gather it from
//! elsewhere in the store (a loose file, another folder, an old layout) or fetch it; the
//! files no longer selected; the user's files carried into the new folder; the reasons for an
//! update; and the install, mirror and register actions.
//!
//! Edges: part of the planner ([`super::planner::Planner`]); pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::desired::{DesiredModel, recorded_install_dir};
use crate::registry::{Record, RecordFile};
use crate::store::{HashKind, ObservedDir};
use crate::upstream::UpstreamFile;

use super::model::*;
use super::planner::Planner;

impl<'a> Planner<'a> {
    /// Plans `model`: its files, its folder, its record, and the actions that get it there.
    pub(super) fn plan_desired(&mut self, model: &DesiredModel) {
        let now = self.installed(model);
        let mut planned = FilePlan::default();
        for file in &model.files {
            self.plan_file(model, &now, file, &mut planned);
        }
        let selected: BTreeSet<&str> = model.files.iter().map(|f| f.path.as_str()).collect();
        let free_bytes = unselected_recorded(&now, &selected, &mut planned.files);
        let mut carry = self.carried_files(model, &now, &selected);
        planned.files.sort_by(|a, b| a.path.cmp(&b.path));

        let moved = now.record.is_some() && now.previous_dir.as_ref() != Some(&model.install_dir);
        // `kmm migrate` downloads nothing: it moves the files that are there (a partial folder
        // whose record lists only them; `kmm apply` adds the rest) and leaves the model alone
        // when nothing of it moves. Fetches no install uses are dropped in `finish`.
        let mut only: Option<BTreeSet<String>> = None;
        if self.layout_only && planned.fetches > 0 {
            self.notes.push(Note {
                model: model.id.clone(),
                message: format!(
                    "needs {} file(s) from the hub; left for `kmm apply`",
                    planned.fetches
                ),
            });
            if !(planned.gathered || moved) {
                self.models
                    .push(unchanged_in_place(model, &now, planned.kept_files));
                return;
            }
            only = Some(planned.keep_only_present());
        }
        let mut reasons = self.update_reasons(model, &now, &planned, moved);
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
                message: unselected_note(&carry),
            });
        }
        let needs_install = now.record.is_none()
            || moved
            || !planned.files.is_empty()
            || planned.gathered
            || prune_carried;
        let mirror_missing = match &model.config_mirror {
            Some(mirror) => !needs_install && !self.mirror_present(model, mirror),
            None => false,
        };
        if mirror_missing {
            reasons.push("config mirror missing".to_string());
        }

        let change = if now.record.is_none() {
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
                    previous_install_dir: now
                        .previous_dir
                        .clone()
                        .filter(|dir| *dir != model.install_dir),
                    files: std::mem::take(&mut planned.install_files),
                    carry,
                });
            }
            self.push_record_actions(model, needs_install || mirror_missing, only.as_ref());
        }
        self.models.push(ModelChange {
            id: model.id.clone(),
            change,
            revision: Some(model.revision.clone()),
            from_commit: now.record.and_then(|r| r.commit.clone()),
            to_commit: Some(model.commit.clone()),
            install_dir: Some(model.install_dir.clone()),
            previous_install_dir: now
                .previous_dir
                .filter(|dir| moved && *dir != model.install_dir),
            reasons,
            files: planned.files,
            kept_files: planned.kept_files,
            download_bytes: planned.download_bytes,
            copy_bytes: planned.copy_bytes,
            byte_sources: None,
            free_bytes,
        });
    }

    /// Where `model` stands in the store now: its record and the folder it names.
    fn installed(&self, model: &DesiredModel) -> Installed<'a> {
        let record = self.input.observed.registry.models.get(&model.id);
        let previous_dir =
            record.and_then(|record| recorded_install_dir(self.input.models_dir, record));
        let current = previous_dir
            .as_deref()
            .and_then(|dir| self.observed_dir(dir));
        let recorded = record
            .map(|r| r.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        Installed {
            record,
            previous_dir,
            current,
            recorded,
        }
    }

    /// Decides where `file`'s bytes come from (kept in place, gathered from elsewhere in the
    /// store, or fetched) and adds it to `planned`.
    fn plan_file(
        &mut self,
        model: &DesiredModel,
        now: &Installed<'_>,
        file: &UpstreamFile,
        planned: &mut FilePlan,
    ) {
        let keep_from = self.kept_as_recorded(now, file, &mut planned.unhashed);
        // Not kept as recorded: the same bytes may still be on disk, in place (a record
        // without hashes, an unrecorded folder) or elsewhere in the store.
        let keep_from = keep_from.or_else(|(kind, reason)| {
            if reason == Some("tampered") {
                return Err((kind, reason));
            }
            match self.local_copy(model, now.previous_dir.as_deref(), file) {
                Some(path) => {
                    let in_place = now
                        .previous_dir
                        .as_deref()
                        .is_some_and(|dir| path == dir.join(&file.path));
                    Ok((path, in_place))
                }
                None => Err((kind, reason)),
            }
        });
        let source = match keep_from {
            Ok((path, true)) => {
                planned.kept_files += 1;
                FileSource::Keep { path }
            }
            Ok((path, false)) => {
                planned.gathered = true;
                let kind = if now.recorded.contains_key(file.path.as_str()) {
                    FileChangeKind::Replace
                } else {
                    FileChangeKind::Add
                };
                let loose = self.input.observed.loose.contains_key(&path);
                let own = now
                    .previous_dir
                    .as_deref()
                    .is_some_and(|dir| path.starts_with(dir));
                // A file in another model's folder is copied (or reflinked), never hard-linked:
                // an edit to one model's file must not change the other's.
                let reason = if loose || own {
                    format!("found at {}, no download", slash_path(&path))
                } else {
                    planned.copy_bytes += file.size;
                    format!("copied from {}, no download", slash_path(&path))
                };
                planned.files.push(FileChange {
                    path: file.path.clone(),
                    kind,
                    size: file.size,
                    reason: Some(reason),
                });
                if loose && self.moved_loose.insert(path.clone()) {
                    self.actions
                        .push(Action::DeleteMoved { path: path.clone() });
                }
                FileSource::Keep { path }
            }
            Err((kind, reason)) => {
                planned.fetches += 1;
                planned.download_bytes += file.size;
                planned.files.push(FileChange {
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
        planned.install_files.push(InstallFile {
            path: file.path.clone(),
            size: file.size,
            hash: file.hash.clone(),
            source,
        });
    }

    /// `file` kept where its record puts it (the path, and whether that is in place), or why
    /// not: the change and its reason. Sets `unhashed` for a record without hashes.
    fn kept_as_recorded(
        &self,
        now: &Installed<'_>,
        file: &UpstreamFile,
        unhashed: &mut bool,
    ) -> Result<(PathBuf, bool), (FileChangeKind, Option<&'static str>)> {
        let Some(old) = now.recorded.get(file.path.as_str()) else {
            return Err((FileChangeKind::Add, None));
        };
        // Recorded, but not in a folder of its own: nothing to keep in place.
        let Some(dir) = &now.previous_dir else {
            return Err((FileChangeKind::Replace, Some("missing on disk")));
        };
        let recorded = old.hash();
        let same_bytes = recorded.as_ref() == Some(&file.hash) && old.size == file.size;
        if recorded.is_none() {
            *unhashed = true;
            return Err((FileChangeKind::Replace, Some("no hash recorded")));
        }
        if !same_bytes {
            return Err((FileChangeKind::Replace, Some("changed upstream")));
        }
        let in_place = dir.join(&file.path);
        match now.current.and_then(|d| d.files.get(&file.path)) {
            None => Err((FileChangeKind::Replace, Some("missing on disk"))),
            Some(seen) if seen.size != file.size => {
                Err((FileChangeKind::Replace, Some("size mismatch on disk")))
            }
            Some(_) => match self.hash_of(&in_place, HashKind::of(&file.hash)) {
                Some(seen) if *seen != file.hash => {
                    Err((FileChangeKind::Replace, Some("tampered")))
                }
                _ => Ok((in_place, true)),
            },
        }
    }

    /// The user's files: neither selected nor ever installed by kmm. They are looked for in
    /// the recorded folder and also in the target folder when that already exists apart from
    /// it (a `kmm migrate` killed between its move and the registry save, a hand copy): the
    /// install replaces both, so both are carried; the recorded folder's copy of a path wins.
    fn carried_files(
        &self,
        model: &DesiredModel,
        now: &Installed<'_>,
        selected: &BTreeSet<&str>,
    ) -> Vec<CarriedFile> {
        let mut carry: Vec<CarriedFile> = Vec::new();
        let mut carried: BTreeSet<&str> = BTreeSet::new();
        let target = Some(&model.install_dir).filter(|dir| now.previous_dir.as_ref() != Some(*dir));
        for dir in now.previous_dir.iter().chain(target) {
            let Some(seen) = self.observed_dir(dir) else {
                continue;
            };
            for (path, found) in &seen.files {
                let name = path.rsplit('/').next().unwrap_or(path);
                if !selected.contains(path.as_str())
                    && !now.recorded.contains_key(path.as_str())
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
        carry
    }

    /// Why an installed model changes beyond its files: folder, library, revision, commit,
    /// pin, license, selection, install path, hashes the record gains.
    fn update_reasons(
        &self,
        model: &DesiredModel,
        now: &Installed<'_>,
        planned: &FilePlan,
        moved: bool,
    ) -> Vec<String> {
        let mut reasons = Vec::new();
        let Some(record) = now.record else {
            return reasons;
        };
        if moved {
            reasons.push(match &now.previous_dir {
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
        if record.commit.as_deref() != Some(model.commit.as_str()) && planned.files.is_empty() {
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
        if planned.unhashed {
            reasons.push("record gains the upstream hashes".to_string());
        }
        reasons
    }

    /// The config mirror (when the model has one, the folder changes or the mirror is
    /// missing, and `config.json` is installed) and the registry record.
    fn push_record_actions(
        &mut self,
        model: &DesiredModel,
        mirror_needed: bool,
        only: Option<&BTreeSet<String>>,
    ) {
        let config_present = only.is_none_or(|only| only.contains("config.json"));
        if let Some(mirror) = &model.config_mirror
            && mirror_needed
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
            record: self.record_plan(model, only),
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
}

/// One model as the store has it now.
struct Installed<'a> {
    record: Option<&'a Record>,
    /// The recorded folder, relative to the models directory (`None`: no record, or one
    /// outside the models directory).
    previous_dir: Option<PathBuf>,
    /// What the scan saw in `previous_dir`.
    current: Option<&'a ObservedDir>,
    /// The record's files by path.
    recorded: BTreeMap<&'a str, &'a RecordFile>,
}

/// What planning the selected files of one model decided.
#[derive(Default)]
struct FilePlan {
    /// The changes a person sees, per file.
    files: Vec<FileChange>,
    /// Every selected file and where its bytes come from.
    install_files: Vec<InstallFile>,
    kept_files: usize,
    download_bytes: u64,
    /// Bytes copied from other model folders.
    copy_bytes: u64,
    /// Some bytes come from elsewhere in the store: the folder must be assembled.
    gathered: bool,
    /// The record has files without hashes.
    unhashed: bool,
    fetches: usize,
}

impl FilePlan {
    /// `kmm migrate`: only the files already in the store are installed (and shown, with the
    /// removals); nothing is downloaded. Returns the paths installed.
    fn keep_only_present(&mut self) -> BTreeSet<String> {
        self.install_files
            .retain(|file| matches!(file.source, FileSource::Keep { .. }));
        let present: BTreeSet<String> = self.install_files.iter().map(|f| f.path.clone()).collect();
        self.files.retain(|change| {
            present.contains(&change.path) || change.kind == FileChangeKind::Remove
        });
        self.download_bytes = 0;
        present
    }
}

/// Recorded files no longer selected: shown as removals in `files`; returns the bytes freed.
fn unselected_recorded(
    now: &Installed<'_>,
    selected: &BTreeSet<&str>,
    files: &mut Vec<FileChange>,
) -> u64 {
    let mut free_bytes = 0;
    for old in now.recorded.values() {
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
    free_bytes
}

/// A model `kmm migrate` leaves as it is: it needs downloads and nothing of it moves.
fn unchanged_in_place(model: &DesiredModel, now: &Installed<'_>, kept_files: usize) -> ModelChange {
    ModelChange {
        id: model.id.clone(),
        change: ChangeKind::Unchanged,
        revision: Some(model.revision.clone()),
        from_commit: now.record.and_then(|r| r.commit.clone()),
        to_commit: now.record.and_then(|r| r.commit.clone()),
        install_dir: now.previous_dir.clone(),
        previous_install_dir: None,
        reasons: Vec::new(),
        files: Vec::new(),
        kept_files,
        download_bytes: 0,
        copy_bytes: 0,
        byte_sources: None,
        free_bytes: 0,
    }
}

/// Files named in the note about unselected files kept in a folder; the rest are counted.
const UNSELECTED_NAMED: usize = 10;

/// The note for files kept in a model's folder that the selection does not name: how many,
/// and which (the first [`UNSELECTED_NAMED`] by path, then "and N more").
fn unselected_note(carry: &[CarriedFile]) -> String {
    let mut paths: Vec<&str> = carry.iter().map(|file| file.path.as_str()).collect();
    paths.sort_unstable();
    let mut named = paths
        .iter()
        .take(UNSELECTED_NAMED)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > UNSELECTED_NAMED {
        named.push_str(&format!(" and {} more", paths.len() - UNSELECTED_NAMED));
    }
    format!(
        "{} file(s) in its folder are not selected (kept; prune = true removes them): {named}",
        carry.len()
    )
}
