//! Keeps kmm's deletes and writes inside the store: its own folders are never followed through
//! a symbolic link, and deleting a tree never crosses a link or a mount point.
//!
//! As git treats `.git`, the folders kmm owns under `models/.kmm/` (`staging`, `downloads`,
//! `trash`, `trees`, `registry-backups`) and its files there (`lock`, `unsynced.json`,
//! `licenses.json`) must be what kmm made: [`check_own_folders`] refuses a store where one of
//! them is a link (`E_PERM` naming the link and its target, before anything is touched). A
//! planted `models/.kmm/trash -> ~/Documents` would otherwise be emptied by the next apply.
//! `models/.kmm` itself may be a link (a bigger disk for downloads), but only to a folder that
//! is empty or already kmm's (it holds `lock`); a link to a folder of someone's files is refused
//! the same way.
//!
//! [`remove_tree`] and [`empty_dir`] delete by descriptor, not by path string: each folder is
//! opened relative to its parent with `O_NOFOLLOW`, so a folder swapped for a link between the
//! check and the open is not followed; a link inside a tree is removed as a link (its target
//! untouched); and a folder on another file system (a mount point inside the tree) is not
//! entered: the deletion stops there with an error, as `rm --one-file-system` does.
//!
//! Edges: file-system calls only (through `rustix`); knows nothing of plans or the registry.
//! Called by the store lock (the check) and by `apply`'s file moves (the deletes); imports no
//! store module (it is given `models/.kmm`'s path).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use crate::error::{Error, ErrorCode, Result};

/// Entries of `models/.kmm/` that kmm creates and deletes in: a link there would send those
/// deletes and writes outside the store.
const OWN_ENTRIES: [&str; 8] = [
    "staging",
    "downloads",
    "trash",
    "trees",
    "registry-backups",
    "lock",
    "unsynced.json",
    "licenses.json",
];

/// Refuses a store whose internal folders or files (in `kmm_dir`, the store's `models/.kmm`)
/// are links (see the module doc). Read-only; missing entries are fine (kmm creates them).
pub fn check_own_folders(kmm_dir: &Path) -> Result<()> {
    let kmm_dir = kmm_dir.to_path_buf();
    if let Ok(metadata) = std::fs::symlink_metadata(&kmm_dir)
        && metadata.file_type().is_symlink()
    {
        let foreign = match std::fs::read_dir(&kmm_dir) {
            Ok(mut entries) => {
                let names: Vec<_> = entries.by_ref().flatten().map(|e| e.file_name()).collect();
                !names.is_empty() && !names.iter().any(|name| name == "lock")
            }
            // A dangling link, or a link to a file: kmm cannot make its folder there.
            Err(_) => true,
        };
        if foreign {
            return Err(link_error(
                &kmm_dir,
                "a link to something that is not an empty folder or one kmm made",
            ));
        }
    }
    for name in OWN_ENTRIES {
        let path = kmm_dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(link_error(&path, "a link"));
        }
    }
    Ok(())
}

fn link_error(path: &Path, what: &str) -> Error {
    let target = std::fs::read_link(path)
        .map(|target| format!(" (to `{}`)", target.display()))
        .unwrap_or_default();
    Error::new(
        ErrorCode::Perm,
        format!(
            "`{}` is {what}{target}; kmm never deletes or writes through a link in its own folders",
            path.display()
        ),
    )
    .with_hint(format!(
        "remove the link (`rm {}` leaves its target alone); kmm recreates the folder. To keep kmm's work files on another disk, mount it at `models/.kmm` or link `models/.kmm` itself to an empty folder",
        path.display()
    ))
}

/// Deletes `path`: a file or link is unlinked (a link's target is untouched), a folder is
/// deleted with everything in it, by descriptor (see the module doc). Absent is fine.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!(
            "refusing to delete `{}`",
            path.display()
        )));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent_fd = open_dir(parent)?;
    let device = rustix::fs::fstat(&parent_fd)?.st_dev;
    remove_at(parent_fd.as_fd(), &c_name(name)?, device, path)
}

/// Deletes everything inside `dir` (which stays), as [`remove_tree`] deletes. A missing `dir`
/// is fine; a `dir` that is a link is an error (kmm's own folders are checked before).
pub fn empty_dir(dir: &Path) -> io::Result<()> {
    let fd = match open_dir(dir) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let device = rustix::fs::fstat(&fd)?.st_dev;
    remove_entries(fd.as_fd(), device, dir)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(io::Error::other)
}

/// Removes the entry `name` of the folder `parent` (which is on `device`); `shown` is its path
/// for errors.
fn remove_at(parent: BorrowedFd<'_>, name: &CStr, device: u64, shown: &Path) -> io::Result<()> {
    let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?);
    }
    // O_NOFOLLOW: a folder replaced by a link since the `statat` fails to open (ELOOP or
    // ENOTDIR) instead of leading the deletion elsewhere.
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if rustix::fs::fstat(&fd)?.st_dev != device {
        return Err(io::Error::other(format!(
            "`{}` is a mount point; kmm does not delete across file systems",
            shown.display()
        )));
    }
    remove_entries(fd.as_fd(), device, shown)?;
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

fn remove_entries(dir: BorrowedFd<'_>, device: u64, shown: &Path) -> io::Result<()> {
    // Names first, then deletes: the folder is not changed while it is being read.
    let mut names = Vec::new();
    let mut entries = Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        let child = shown.join(OsStr::from_bytes(name.as_bytes()));
        remove_at(dir, &name, device, &child)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, text).unwrap();
    }

    #[test]
    fn removing_a_tree_removes_links_inside_it_but_not_their_targets() {
        let root = tempfile::tempdir().unwrap();
        let precious = root.path().join("precious");
        write(&precious.join("a/file.txt"), "keep me");
        let tree = root.path().join("trash/old");
        write(&tree.join("sub/x.bin"), "old bytes");
        std::os::unix::fs::symlink(&precious, tree.join("link-to-dir")).unwrap();
        std::os::unix::fs::symlink(precious.join("a/file.txt"), tree.join("sub/link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(
            fs_err::read_to_string(precious.join("a/file.txt")).unwrap(),
            "keep me"
        );
        remove_tree(&tree).unwrap(); // absent is fine
    }

    #[test]
    fn a_mount_point_inside_a_tree_is_not_entered() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("trash/old");
        let mounted = tree.join("mnt");
        fs_err::create_dir_all(&mounted).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mounted)
            .stderr(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|status| status.success()) {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        }
        write(&mounted.join("other-disk.txt"), "not on this file system");
        let error = remove_tree(&tree).unwrap_err();
        let survived = mounted.join("other-disk.txt").exists();
        let _ = std::process::Command::new("umount").arg(&mounted).status();
        assert!(error.to_string().contains("mount point"), "{error}");
        assert!(survived, "the delete crossed into another file system");
    }

    #[test]
    fn emptying_a_folder_keeps_it_and_refuses_a_link() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("staging");
        write(&dir.join("m-1/f"), "x");
        write(&dir.join("loose"), "y");
        empty_dir(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(fs_err::read_dir(&dir).unwrap().count(), 0);
        let precious = root.path().join("precious");
        write(&precious.join("f"), "keep");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        assert!(empty_dir(&link).is_err());
        assert!(precious.join("f").exists());
        empty_dir(&root.path().join("missing")).unwrap();
    }

    #[test]
    fn a_store_with_linked_own_folders_is_refused_naming_the_link() {
        let root = tempfile::tempdir().unwrap();
        let paths = crate::store::StorePaths::new(root.path().join("models"));
        check_own_folders(&paths.kmm_dir()).unwrap(); // nothing there yet
        fs_err::create_dir_all(paths.kmm_dir()).unwrap();
        let precious = root.path().join("precious");
        write(&precious.join("f"), "keep");
        std::os::unix::fs::symlink(&precious, paths.trash_dir()).unwrap();
        let error = check_own_folders(&paths.kmm_dir()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Perm);
        let text = error.to_string();
        assert!(
            text.contains(".kmm/trash") && text.contains("precious"),
            "{text}"
        );
        fs_err::remove_file(paths.trash_dir()).unwrap();
        check_own_folders(&paths.kmm_dir()).unwrap();
    }

    #[test]
    fn a_linked_kmm_folder_must_be_empty_or_kmms() {
        let root = tempfile::tempdir().unwrap();
        let models = root.path().join("models");
        fs_err::create_dir_all(&models).unwrap();
        let kmm_dir = models.join(".kmm");
        let elsewhere = root.path().join("big-disk/kmm");
        fs_err::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &kmm_dir).unwrap();
        check_own_folders(&kmm_dir).unwrap(); // empty: kmm may make it its own
        write(&elsewhere.join("lock"), "");
        write(&elsewhere.join("downloads/abc"), "");
        check_own_folders(&kmm_dir).unwrap(); // already kmm's
        let documents = root.path().join("documents");
        write(&documents.join("thesis.tex"), "years of work");
        fs_err::remove_file(&kmm_dir).unwrap();
        std::os::unix::fs::symlink(&documents, &kmm_dir).unwrap();
        assert_eq!(
            check_own_folders(&kmm_dir).unwrap_err().code(),
            ErrorCode::Perm
        );
    }
}
