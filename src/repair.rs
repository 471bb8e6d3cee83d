//! `kmm registry repair`: rebuilds `models/model_registry.json` from what is on disk after the
//! unreadable file was backed up.
//!
//! kmm never overwrites a registry it cannot read (`Registry::load` is `E_SCHEMA` with the
//! position); this is the way out. For every declared model whose routed folder exists, each
//! file the model should have is hashed the way upstream identifies it (sha256 for LFS files,
//! git sha1 otherwise) and recorded with the hash it really has. A folder that matches upstream
//! exactly gets the commit and selection, so the next plan keeps it as is; one with missing or
//! different files is recorded without them, so the next plan re-resolves it and fetches only
//! what is wrong. Undeclared folders are reported, not guessed at.
//!
//! Edges: reads model folders, copies the old file into `.kmm/registry-backups/`, writes the
//! registry through [`Registry::save`]. The caller holds the store lock and has resolved the
//! declared models (with an empty registry: the broken one cannot give hints).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::registry::{Record, RecordFile, Registry};
use crate::store::StorePaths;
use crate::upstream::{FileHash, HASH_BUFFER_LEN, hash_reader};

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Where the unreadable registry was copied (`None`: there was no file).
    pub backup: Option<PathBuf>,
    /// Models recorded whose folder matches upstream exactly.
    pub complete: Vec<String>,
    /// Models recorded with only the files that are present and right; the next apply
    /// completes them.
    pub incomplete: Vec<String>,
    /// Declared models with no folder on disk (not recorded).
    pub absent: Vec<String>,
}

/// Backs up the registry file (if any) and writes a new one describing `desired` as found on
/// disk. `now` becomes `installed_at` (RFC 3339).
pub fn rebuild(paths: &StorePaths, desired: &[DesiredModel], now: &str) -> Result<RepairReport> {
    let mut report = RepairReport {
        backup: backup(paths)?,
        ..RepairReport::default()
    };
    let mut registry = Registry::default();
    for model in desired {
        let folder = paths.root().join(&model.install_dir);
        if !folder.is_dir() {
            report.absent.push(model.id.clone());
            continue;
        }
        let mut files = Vec::new();
        let mut exact = true;
        for upstream in &model.files {
            let path = folder.join(&upstream.path);
            let Some((size, hash, mtime_ns)) = hash_file(&path, &upstream.hash)? else {
                exact = false;
                continue;
            };
            exact &= size == upstream.size && hash == upstream.hash;
            files.push(RecordFile {
                path: upstream.path.clone(),
                size,
                sha256: hash.is_lfs().then(|| hash.hex().to_string()),
                git_sha1: (!hash.is_lfs()).then(|| hash.hex().to_string()),
                // The hash describes the file as of this mtime (later plans re-hash on change).
                mtime_ns,
                extra: serde_json::Map::new(),
            });
        }
        let record = Record {
            model_id: model.id.clone(),
            library: model.library.as_str().to_string(),
            revision: exact.then(|| model.revision.clone()),
            installed_at: Some(now.to_string()),
            install_path: folder.display().to_string(),
            total_size: files.iter().map(|file| file.size).sum(),
            files,
            // Only an exact folder may claim the commit: resolution trusts a record's file list
            // when its commit and selection match.
            commit: exact.then(|| model.commit.clone()),
            pinned: model.pinned,
            license_accepted: model.license_accepted.clone(),
            last_accessed: None,
            selection: exact.then(|| model.selection.clone()),
            extra: serde_json::Map::new(),
        };
        if exact {
            report.complete.push(model.id.clone());
        } else {
            report.incomplete.push(model.id.clone());
        }
        registry.models.insert(model.id.clone(), record);
    }
    registry.save(&paths.registry_file())?;
    Ok(report)
}

/// Copies the registry file into `.kmm/registry-backups/model_registry.json.<unix-seconds>`
/// (a fresh name each time), fsynced, before anything replaces it.
fn backup(paths: &StorePaths) -> Result<Option<PathBuf>> {
    let source = paths.registry_file();
    if !source.exists() {
        return Ok(None);
    }
    let dir = paths.kmm_dir().join("registry-backups");
    let failed = |error: &std::io::Error| {
        Error::io(
            format!("backing up the registry into `{}`", dir.display()),
            error,
        )
    };
    fs_err::create_dir_all(&dir).map_err(|error| failed(&error))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let mut target = dir.join(format!("model_registry.json.{stamp}"));
    let mut counter = 1;
    while target.exists() {
        target = dir.join(format!("model_registry.json.{stamp}.{counter}"));
        counter += 1;
    }
    fs_err::copy(&source, &target).map_err(|error| failed(&error))?;
    fs_err::File::open(&target)
        .and_then(|file| file.sync_all())
        .map_err(|error| failed(&error))?;
    Ok(Some(target))
}

/// Size, hash (of `kind`'s kind) and mtime of a regular file; `None` when it is missing or not
/// a regular file (a symlink is not followed: kmm never installs one).
fn hash_file(path: &Path, kind: &FileHash) -> Result<Option<(u64, FileHash, Option<u64>)>> {
    let metadata = match fs_err::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata,
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(format!("reading `{}`", path.display()), &error)),
    };
    let failed = |error: &std::io::Error| Error::io(format!("reading `{}`", path.display()), error);
    let mut file = fs_err::File::open(path).map_err(|error| failed(&error))?;
    let mut buffer = vec![0u8; HASH_BUFFER_LEN];
    let (read_total, hash) = hash_reader(&mut file, kind, metadata.len(), &mut buffer)
        .map_err(|error| failed(&error))?;
    if read_total != metadata.len() {
        // The file changed while we read it (git sha1's header holds the size): not trusted.
        return Ok(None);
    }
    let mtime_ns = metadata.modified().ok().and_then(crate::store::unix_nanos);
    Ok(Some((read_total, hash, mtime_ns)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Library;
    use crate::registry::Selection;
    use crate::upstream::{UpstreamFile, git_sha1_hex, sha256_hex};

    fn desired(id: &str, files: &[(&str, &[u8], bool)]) -> DesiredModel {
        DesiredModel {
            id: id.to_string(),
            revision: "main".to_string(),
            commit: "c".repeat(40),
            library: Library::Transformers,
            install_dir: PathBuf::from("transformers").join(id),
            files: files
                .iter()
                .map(|(path, content, lfs)| UpstreamFile {
                    path: path.to_string(),
                    size: content.len() as u64,
                    hash: if *lfs {
                        FileHash::Sha256(sha256_hex(content))
                    } else {
                        FileHash::GitSha1(git_sha1_hex(content))
                    },
                })
                .collect(),
            config_mirror: None,
            pinned: Some(true),
            license_accepted: None,
            selection: Selection::default(),
        }
    }

    #[test]
    fn rebuilds_complete_and_incomplete_models_after_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path());
        let good = desired(
            "o/good",
            &[("config.json", b"{}", false), ("w.bin", b"W", true)],
        );
        let bad = desired(
            "o/bad",
            &[("config.json", b"{}", false), ("w.bin", b"W", true)],
        );
        let gone = desired("o/gone", &[("config.json", b"{}", false)]);
        for (id, config, weights) in [("o/good", "{}", Some("W")), ("o/bad", "{ }", None)] {
            let folder = dir.path().join("transformers").join(id);
            fs_err::create_dir_all(&folder).unwrap();
            fs_err::write(folder.join("config.json"), config).unwrap();
            if let Some(weights) = weights {
                fs_err::write(folder.join("w.bin"), weights).unwrap();
            }
        }
        fs_err::write(paths.registry_file(), "{ broken").unwrap();

        let report = rebuild(&paths, &[good, bad, gone], "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(report.complete, ["o/good"]);
        assert_eq!(report.incomplete, ["o/bad"]);
        assert_eq!(report.absent, ["o/gone"]);
        let backup = report.backup.unwrap();
        assert_eq!(fs_err::read_to_string(backup).unwrap(), "{ broken");

        let registry = Registry::load(&paths.registry_file()).unwrap();
        let good = &registry.models["o/good"];
        assert_eq!(good.commit.as_deref(), Some("c".repeat(40).as_str()));
        assert_eq!(good.pinned, Some(true));
        assert_eq!(
            good.files[0].git_sha1.as_deref(),
            Some(git_sha1_hex(b"{}").as_str())
        );
        assert_eq!(
            good.files[1].sha256.as_deref(),
            Some(sha256_hex(b"W").as_str())
        );
        let bad = &registry.models["o/bad"];
        assert_eq!(
            bad.commit, None,
            "an inexact folder must not claim the commit"
        );
        assert_eq!(bad.files.len(), 1);
        assert_eq!(
            bad.files[0].git_sha1.as_deref(),
            Some(git_sha1_hex(b"{ }").as_str())
        );
    }
}
