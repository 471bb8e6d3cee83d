//! The file-system moves apply is built from: link-or-copy, the atomic folder swap, deleting
//! through the trash, and atomic file copies.
//!
//! A model folder is replaced in one step: on Linux `renameat2(RENAME_EXCHANGE)` swaps the new
//! folder and the old one atomically; where that is unsupported the old folder is renamed away
//! and the new one renamed in (a reader may then briefly see no folder, never a half-filled one).
//! Old folders are first renamed into `.kmm/trash/` (atomic) and only then deleted, so a crash
//! mid-delete leaves garbage in the trash, not a half-deleted model. Where the trash is on
//! another file system than the folder, the folder is parked beside itself instead (a rename
//! cannot cross file systems), and deleted from there; deletes never follow a link or cross a
//! mount point (`crate::confine`).
//!
//! Edges: blocking std I/O (callers run it in `spawn_blocking`); knows nothing about plans.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How a file gets into a model folder being assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The source is kmm's (a verified download) or this model's own (its current folder, a
    /// loose file being moved in): hard-linked, as long as nothing else shares its inode.
    Take,
    /// The source stays in another model's folder, or a second model installs the same
    /// download: reflinked or copied, so an edit to one model's file never changes another's.
    Copy,
}

/// Puts `from` at `to` (which must not exist) as `placement` says. A hard link is made only
/// when `from` has no other link (else the new file would share an inode with whatever holds
/// it, as a store made by an older kmm may); where linking is impossible (another file
/// system), it is a copy.
pub(crate) fn place(from: &Path, to: &Path, placement: Placement) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let sole = fs_err::metadata(from).is_ok_and(|meta| meta.nlink() == 1);
    if placement == Placement::Take && sole && std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    clone_or_copy(from, to).map_err(|e| {
        Error::io(
            format!("copying {} to {}", from.display(), to.display()),
            &e,
        )
    })
}

/// A reflink (`FICLONE`: shared extents, copy on write, no bytes moved) where the file system
/// has them (btrfs, XFS, bcachefs), else a byte copy. Keeps the permissions.
fn clone_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let source = std::fs::File::open(from)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&source.metadata()?.permissions());
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(to)?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_ok() {
        return Ok(());
    }
    // `io::copy` between files uses `copy_file_range`, in the kernel. Synced: these bytes are
    // not covered by the download journal, and the registry will say they are installed.
    io::copy(&mut &source, &mut target)?;
    target.sync_all()
}

/// Makes `new` appear at `target` in one step. If `target` existed, its old content is moved
/// into `trash` and deleted. `new` and `target` must be on the same file system.
pub(crate) fn swap_in(new: &Path, target: &Path, trash: &Path) -> Result<()> {
    let parent = target.parent().expect("a model folder has a parent");
    fs_err::create_dir_all(parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
    if fs_err::symlink_metadata(target).is_err() {
        rename(new, target)?;
        sync_dir(parent);
        return Ok(());
    }
    match exchange(new, target) {
        // `new` now names the old folder.
        Ok(()) => {
            sync_dir(parent);
            discard(new, trash);
            Ok(())
        }
        Err(_) => {
            let parked = park(target, trash)?;
            if let Err(error) = rename(new, target) {
                // Put the old folder back: better the old model than none.
                let _ = std::fs::rename(&parked, target);
                return Err(error);
            }
            sync_dir(parent);
            discard(&parked, trash);
            Ok(())
        }
    }
}

/// Makes a rename in `dir` durable. Best effort: not every platform can sync a folder.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Removes a folder (or file) by renaming it into `trash` first; absent is fine.
pub(crate) fn remove_via_trash(path: &Path, trash: &Path) -> Result<()> {
    if fs_err::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let parked = park(path, trash)?;
    discard(&parked, trash);
    Ok(())
}

/// Renames `path` out of the way, into `trash` when that is on its file system, else into a
/// work folder beside it (`.kmm-old.<name>.*`, see [`work_dir_beside`]). Returns where it went.
fn park(path: &Path, trash: &Path) -> Result<PathBuf> {
    let parked = unique_in(trash, path)?;
    match std::fs::rename(path, &parked) {
        Ok(()) => Ok(parked),
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
            let _ = std::fs::remove_dir(parked.parent().expect("a holder folder"));
            let holder = work_dir_beside(path, "old")?;
            let parked = holder.join(path.file_name().unwrap_or_default());
            rename(path, &parked)?;
            Ok(parked)
        }
        Err(error) => Err(Error::io(
            format!("moving {} to {}", path.display(), parked.display()),
            &error,
        )),
    }
}

/// A fresh hidden folder beside `path`, on its file system: `.kmm-<kind>.<name>.<random>`.
/// Used where kmm's own folders are on another file system (`models/.kmm` on a bigger disk, a
/// model folder linked to another disk), since a rename cannot cross file systems. The store's
/// walk skips folders named `.kmm-*`; leftovers of a killed run are removed by
/// [`sweep_work_dirs`] at the next install of the same folder, and inside the models directory
/// by [`sweep_all_work_dirs`] at the start of every apply.
pub(crate) fn work_dir_beside(path: &Path, kind: &str) -> Result<PathBuf> {
    let parent = path.parent().expect("a model folder has a parent");
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(tempfile::Builder::new()
        .prefix(&format!(".kmm-{kind}.{name}."))
        .tempdir_in(parent)
        .map_err(|e| Error::io(format!("creating a folder in {}", parent.display()), &e))?
        .keep())
}

/// Deletes the work folders [`work_dir_beside`] made for `path` in an earlier, interrupted run.
/// The caller holds the store lock and installs `path` once per run, so any it finds is an
/// orphan. Best effort.
pub(crate) fn sweep_work_dirs(path: &Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let name = name.to_string_lossy();
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let entry_name = entry_name.to_string_lossy();
        let ours = ["staging", "old"]
            .iter()
            .any(|kind| entry_name.starts_with(&format!(".kmm-{kind}.{name}.")));
        if ours && let Err(error) = crate::confine::remove_tree(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), %error, "could not delete a leftover work folder");
        }
    }
}

/// Deletes the work folders [`work_dir_beside`] left anywhere in the layout's upper levels
/// (`models/*/`, `models/*/*/`, where model folders live) by a run killed between a swap and
/// the delete of the old folder, which no later install of that folder would sweep. The caller
/// holds the store lock. A few `readdir`s; best effort.
pub(crate) fn sweep_all_work_dirs(root: &Path) {
    let mut folders = vec![(root.to_path_buf(), 0)];
    while let Some((folder, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            if !is_dir || (depth == 0 && name == ".kmm") {
                continue;
            }
            if name.starts_with(".kmm-staging.") || name.starts_with(".kmm-old.") {
                if let Err(error) = crate::confine::remove_tree(&entry.path()) {
                    tracing::warn!(path = %entry.path().display(), %error, "could not delete a leftover work folder");
                }
            } else if depth < 2 {
                folders.push((entry.path(), depth + 1));
            }
        }
    }
}

/// Recreates in `staged` every symbolic link the user put in the old folder `old` (a LoRA
/// linked from elsewhere, a convenience name), with the same target text, where `staged` has
/// nothing at that path: an install replaces the folder, and the user's links would otherwise
/// go with the old one. Links are never followed (a linked folder is one link). Returns how
/// many were carried.
pub(crate) fn carry_links(old: &Path, staged: &Path) -> Result<usize> {
    let mut carried = 0;
    let mut folders = vec![std::path::PathBuf::new()];
    while let Some(relative) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(old.join(&relative)) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_symlink() {
                let to = staged.join(&path);
                if std::fs::symlink_metadata(&to).is_ok() {
                    continue;
                }
                let target = fs_err::read_link(entry.path())
                    .map_err(|e| Error::io("reading a link in a model folder", &e))?;
                if let Some(parent) = to.parent() {
                    fs_err::create_dir_all(parent)
                        .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
                }
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(|e| Error::io(format!("keeping the link {}", path.display()), &e))?;
                carried += 1;
            }
        }
    }
    Ok(carried)
}

/// Whether `a` and `b` (or their nearest existing ancestors) are on one file system, so that a
/// rename between them works.
pub(crate) fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let device = |path: &Path| {
        path.ancestors()
            .find_map(|ancestor| std::fs::metadata(ancestor).ok())
            .map(|meta| meta.dev())
    };
    matches!((device(a), device(b)), (Some(a), Some(b)) if a == b)
}

/// Where a model folder's new content is swapped in: `target` itself, or, when `target` is a
/// link the user made (a model kept on another disk), the folder it points to, so that the
/// link stays. A dangling link, or a link to something that is not a folder, is `E_PERM`
/// naming it: kmm does not replace a user's link with a folder of its own.
pub(crate) fn swap_destination(target: &Path) -> Result<PathBuf> {
    let is_link = std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Ok(target.to_path_buf());
    }
    let points_to = std::fs::read_link(target)
        .map(|to| to.display().to_string())
        .unwrap_or_default();
    match std::fs::canonicalize(target) {
        Ok(real) if real.is_dir() => Ok(real),
        _ => Err(Error::new(
            crate::error::ErrorCode::Perm,
            format!(
                "the model folder `{}` is a link to `{points_to}`, which is not a folder",
                target.display()
            ),
        )
        .with_hint("make the link point to an existing folder (kmm installs into it and keeps the link), or remove the link")),
    }
}

/// Deletes something already parked in (or about to be moved to) the trash. Failures only
/// leave garbage that the next apply cleans, so they are logged, not returned.
fn discard(path: &Path, trash: &Path) {
    let parked = if path.starts_with(trash) {
        Ok(path.to_path_buf())
    } else {
        park(path, trash)
    };
    let result = parked
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|parked| {
            remove_any(&parked)?;
            // The parked item sits in a holder folder of its own (see `unique_in` and
            // `work_dir_beside`).
            match parked.parent() {
                Some(holder) if holder != trash && holder.starts_with(trash) => {
                    fs_err::remove_dir(holder)
                }
                Some(holder)
                    if holder
                        .file_name()
                        .is_some_and(|name| name.to_string_lossy().starts_with(".kmm-old.")) =>
                {
                    fs_err::remove_dir(holder)
                }
                _ => Ok(()),
            }
        });
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "could not delete an old folder; the next apply retries");
    }
}

fn remove_any(path: &Path) -> io::Result<()> {
    crate::confine::remove_tree(path)
}

/// Deletes everything inside `dir` (leftovers of an interrupted run); `dir` itself stays.
pub(crate) fn empty_dir(dir: &Path) -> Result<()> {
    crate::confine::empty_dir(dir).map_err(|e| Error::io(format!("cleaning {}", dir.display()), &e))
}

/// Removes empty folders from `start` upwards, stopping below `stop` (never removing it).
pub(crate) fn remove_empty_parents(start: &Path, stop: &Path) {
    let mut current = start.to_path_buf();
    while current.starts_with(stop) && current != stop {
        // `remove_dir` refuses non-empty folders, which ends the walk.
        if std::fs::remove_dir(&current).is_err() {
            break;
        }
        if !current.pop() {
            break;
        }
    }
}

/// Copies `from` to `to` so that `to` is either the old file or the complete new one.
pub(crate) fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let parent = to.parent().expect("a file has a parent");
    fs_err::create_dir_all(parent)
        .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".kmm-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(|e| {
            Error::io(
                format!("creating a temporary file in {}", parent.display()),
                &e,
            )
        })?;
    let mut source = fs_err::File::open(from)
        .map_err(|e| Error::io(format!("reading {}", from.display()), &e))?;
    io::copy(&mut source, temp.as_file_mut())
        .and_then(|_| temp.as_file().sync_all())
        .map_err(|e| Error::io(format!("writing {}", to.display()), &e))?;
    temp.persist(to)
        .map_err(|e| Error::io(format!("replacing {}", to.display()), &e.error))?;
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs_err::rename(from, to)
        .map_err(|e| Error::io(format!("moving {} to {}", from.display(), to.display()), &e))
}

/// A fresh name inside `dir` for parking `path` (its file name plus a unique suffix).
fn unique_in(dir: &Path, path: &Path) -> Result<PathBuf> {
    fs_err::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "old".to_string());
    // A temp dir reserves a unique name; the parked item goes inside it.
    let holder = tempfile::Builder::new()
        .prefix("old-")
        .tempdir_in(dir)
        .map_err(|e| Error::io(format!("creating a folder in {}", dir.display()), &e))?
        .keep();
    Ok(holder.join(name))
}

/// Atomically exchanges two paths (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    let a = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, text).unwrap();
    }

    #[test]
    fn swap_replaces_an_existing_folder_and_empties_the_trash() {
        let root = tempfile::tempdir().unwrap();
        let (new, target, trash) = (
            root.path().join("staging/new"),
            root.path().join("models/org/m"),
            root.path().join("trash"),
        );
        write(&new.join("a.txt"), "new");
        write(&target.join("a.txt"), "old");
        write(&target.join("gone.txt"), "old");
        swap_in(&new, &target, &trash).unwrap();
        assert_eq!(fs_err::read_to_string(target.join("a.txt")).unwrap(), "new");
        assert!(!target.join("gone.txt").exists());
        assert!(!new.exists());
        assert_eq!(fs_err::read_dir(&trash).unwrap().count(), 0);
    }

    #[test]
    fn swap_into_a_missing_folder_creates_its_parents() {
        let root = tempfile::tempdir().unwrap();
        let new = root.path().join("staging/new");
        write(&new.join("x/y.txt"), "y");
        let target = root.path().join("models/llama-cpp/org/m");
        swap_in(&new, &target, &root.path().join("trash")).unwrap();
        assert_eq!(fs_err::read_to_string(target.join("x/y.txt")).unwrap(), "y");
    }

    #[test]
    fn exchange_is_atomic_on_linux() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        write(&a.join("f"), "a");
        write(&b.join("f"), "b");
        exchange(&a, &b).unwrap();
        assert_eq!(fs_err::read_to_string(a.join("f")).unwrap(), "b");
        assert_eq!(fs_err::read_to_string(b.join("f")).unwrap(), "a");
    }

    #[test]
    fn removal_goes_through_the_trash_and_tolerates_absence() {
        let root = tempfile::tempdir().unwrap();
        let (dir, trash) = (root.path().join("models/org/m"), root.path().join("trash"));
        write(&dir.join("f"), "x");
        remove_via_trash(&dir, &trash).unwrap();
        assert!(!dir.exists());
        remove_via_trash(&dir, &trash).unwrap();
        remove_empty_parents(&root.path().join("models/org"), &root.path().join("models"));
        assert!(!root.path().join("models/org").exists());
        assert!(root.path().join("models").exists());
    }

    #[test]
    fn atomic_copy_and_placements_copy_bytes_and_never_share_a_shared_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempfile::tempdir().unwrap();
        let from = root.path().join("a");
        write(&from, "bytes");
        copy_atomic(&from, &root.path().join("configs/b.json")).unwrap();
        let ino = |name: &str| fs_err::metadata(root.path().join(name)).unwrap().ino();
        place(&from, &root.path().join("c"), Placement::Take).unwrap();
        assert_eq!(ino("c"), ino("a"), "a sole file is taken by a hard link");
        // `a` now has two links: taking it again would put one inode in a third place.
        place(&from, &root.path().join("d"), Placement::Take).unwrap();
        assert_ne!(ino("d"), ino("a"));
        place(
            &root.path().join("d"),
            &root.path().join("e"),
            Placement::Copy,
        )
        .unwrap();
        assert_ne!(ino("e"), ino("d"));
        for name in ["configs/b.json", "c", "d", "e"] {
            assert_eq!(
                fs_err::read_to_string(root.path().join(name)).unwrap(),
                "bytes"
            );
        }
        empty_dir(root.path()).unwrap();
        assert_eq!(fs_err::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftover_work_folders_are_swept_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path();
        write(
            &models.join("transformers/acme/.kmm-staging.m.x1/config.json"),
            "{}",
        );
        write(
            &models.join("transformers/acme/.kmm-old.m.x2/m/w.bin"),
            "old",
        );
        write(&models.join("transformers/.kmm-old.gpt2.x3/gpt2/f"), "old");
        write(&models.join("transformers/acme/m/config.json"), "{}");
        write(
            &models.join("transformers/acme/.hidden-user-folder/f"),
            "mine",
        );
        write(
            &models.join(".kmm/staging/.kmm-staging.m.x4/f"),
            "kmm's own, emptied elsewhere",
        );
        sweep_all_work_dirs(models);
        let mut left: Vec<String> = walk(models);
        left.sort();
        assert_eq!(
            left,
            [
                ".kmm/staging/.kmm-staging.m.x4/f",
                "transformers/acme/.hidden-user-folder/f",
                "transformers/acme/m/config.json",
            ]
        );
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir).unwrap().flatten() {
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                } else {
                    let relative = entry.path().strip_prefix(root).unwrap().to_path_buf();
                    out.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        out
    }
}
