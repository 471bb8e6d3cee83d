//! The pure half of observing: which folders a plan must see and which files it wants hashed.
//! [`crate::ops`] does the reading (`store::observe_with`, `store::hash_files`) and hands the
//! result to the planner, so the planner itself never touches the disk.
//!
//! Edges: pure; reads the registry and the observed store as data.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::desired::{DesiredModel, is_shared_folder, recorded_install_dir};
use crate::registry::RecordFile;
use crate::store::{HashKind, Observed, ObservedDir};

/// The folders (relative to the models directory) that [`crate::store::observe`] must scan for
/// [`super::compute`] to judge `desired` against `registry`: every desired install dir, every
/// recorded install dir under the models directory, and the folders of the config mirrors.
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

/// The files [`super::compute`] wants hashed before it plans (relative to the models directory, with
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
            let vouched = old.is_some_and(|old| old.hash().as_ref() == Some(&file.hash));
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
