//! Whole-file writes that readers and crashes see as the old bytes or the new ones, never a
//! mix: a temp file beside the target (`.<name>.*.tmp`, which the store lock sweeps after a
//! kill), fsync, rename over the target, fsync the folder so the rename survives a power loss.
//!
//! The file keeps the permissions of the one it replaces, and a new one gets `0644` like any
//! file an editor writes: the temp file's private `0600` would make a registry, lock or
//! manifest meant for git and for other users unreadable to them (found by the permission test
//! in `tests/it/reliability.rs`).
//!
//! A `path` that is a symbolic link (dotfiles, a registry shared by two checkouts) is written
//! through: the temp file and the rename happen beside the link's final target, and the link
//! stays a link. Replacing the link by a regular file would let the target silently drift.
//!
//! Edges: writes only `path` (or the file its link names) and its temp file. Used for the registry, the pending license
//! acceptances, the lock, saved plans, manifest edits and generated schemas.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `bytes` to `path` as described above. `what` names the file in errors (`the
/// registry`); a failure at any step leaves the old file as it was.
pub(crate) fn write(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let failed =
        |error: &std::io::Error| Error::io(format!("writing {what} `{}`", path.display()), error);
    let target = link_target(path).map_err(|error| failed(&error))?;
    let path = target.as_path();
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |name| name.to_string_lossy());
    sweep_orphans(folder, &name);
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(|error| failed(&error))?;
    // Held until the temp file is renamed or deleted: it tells a later writer that this temp
    // file is not an orphan (see `sweep_orphans`). Advisory, so failing to take it is no error.
    let _ = temp.as_file().try_lock();
    temp.write_all(bytes).map_err(|error| failed(&error))?;
    let permissions = match fs_err::metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata.permissions(),
        _ => std::fs::Permissions::from_mode(0o644),
    };
    temp.as_file()
        .set_permissions(permissions)
        .map_err(|error| failed(&error))?;
    temp.as_file().sync_all().map_err(|error| failed(&error))?;
    temp.persist(path).map_err(|error| failed(&error.error))?;
    fs_err::File::open(folder)
        .and_then(|folder| folder.sync_all())
        .map_err(|error| failed(&error))?;
    Ok(())
}

/// Removes the temp files (`.<name>.*.tmp` in `folder`) that killed writers of `name` left:
/// a lock file or manifest is written without the store lock (`kmm lock`, `download --save`),
/// so a SIGKILL mid-write would otherwise leave one in the user's checkout for good. A temp
/// file is an orphan when its writer's lock on it can be taken (the kernel released it with the
/// process) and it is more than a few seconds old (a writer between creating the file and
/// locking it holds no lock yet). Best effort.
fn sweep_orphans(folder: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !(file_name.starts_with(&prefix) && file_name.ends_with(".tmp")) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        let old = file
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= ORPHAN_AGE);
        // Taking the lock (released when `file` closes) means nobody holds it.
        let unlocked = file.metadata().is_ok_and(|m| m.is_file()) && file.try_lock().is_ok();
        if old && unlocked {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// How old an unlocked temp file must be to count as an orphan.
const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a write to `path` lands: `path` itself, or the file at the end of its chain of links
/// (relative link targets resolve against the link's folder). A chain of more than 40 links is
/// a loop (`ELOOP`), as the kernel counts.
pub(crate) fn link_target(path: &Path) -> std::io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let target = std::fs::read_link(&current)?;
                current = match current.parent() {
                    Some(folder) if target.is_relative() => folder.join(target),
                    _ => target,
                };
            }
            _ => return Ok(current),
        }
    }
    Err(std::io::Error::other(format!(
        "too many levels of symbolic links at `{}`",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_are_readable_by_others_and_keep_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kari-models.lock");
        write(&path, b"one\n", "the lock file").unwrap();
        let mode = |path: &Path| fs_err::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644);
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write(&path, b"two\n", "the lock file").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs_err::read(&path).unwrap(), b"two\n");
    }

    #[test]
    fn a_linked_file_is_written_through_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let dotfiles = dir.path().join("dotfiles");
        fs_err::create_dir_all(&dotfiles).unwrap();
        let target = dotfiles.join("kari-models.toml");
        fs_err::write(&target, "old\n").unwrap();
        let checkout = dir.path().join("checkout");
        fs_err::create_dir_all(&checkout).unwrap();
        // A relative link to a relative link: both hops resolve against their own folder.
        std::os::unix::fs::symlink("../dotfiles/kari-models.toml", checkout.join("hop")).unwrap();
        let link = checkout.join("kari-models.toml");
        std::os::unix::fs::symlink("hop", &link).unwrap();
        write(&link, b"new\n", "the manifest").unwrap();
        assert!(
            fs_err::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs_err::read(&target).unwrap(), b"new\n");
        let stray: Vec<_> = fs_err::read_dir(&checkout)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            stray.len(),
            2,
            "no temp file left beside the link: {stray:?}"
        );
        let looped = dir.path().join("loop");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        assert!(write(&looped, b"x", "the lock file").is_err());
    }

    #[test]
    fn temp_files_of_killed_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kari-models.lock");
        let temp = |tag: &str| dir.path().join(format!(".kari-models.lock.{tag}.tmp"));
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for tag in ["orphan", "live", "fresh"] {
            let file = fs_err::File::create(temp(tag)).unwrap();
            if tag != "fresh" {
                file.set_modified(an_hour_ago).unwrap();
            }
        }
        // A writer still at work holds the lock on its temp file.
        let live = std::fs::File::open(temp("live")).unwrap();
        live.lock().unwrap();
        fs_err::write(dir.path().join(".other.tmp"), "").unwrap();
        write(&path, b"lock\n", "the lock file").unwrap();
        assert!(!temp("orphan").exists());
        assert!(temp("live").exists() && temp("fresh").exists());
        assert!(dir.path().join(".other.tmp").exists());
        assert_eq!(fs_err::read(&path).unwrap(), b"lock\n");
    }
}
