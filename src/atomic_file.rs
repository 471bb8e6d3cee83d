//! Whole-file writes that readers and crashes see as the old bytes or the new ones, never a
//! mix: a temp file beside the target (`.<name>.*.tmp`, which the store lock sweeps after a
//! kill), fsync, rename over the target, fsync the folder so the rename survives a power loss.
//!
//! The file keeps the permissions of the one it replaces, and a new one gets `0644` like any
//! file an editor writes: the temp file's private `0600` would make a registry, lock or
//! manifest meant for git and for other users unreadable to them (found by the permission test
//! in `tests/it/reliability.rs`).
//!
//! Edges: writes only `path` and its temp file. Used for the registry, the pending license
//! acceptances, the lock, saved plans, manifest edits and generated schemas.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` as described above. `what` names the file in errors (`the
/// registry`); a failure at any step leaves the old file as it was.
pub(crate) fn write(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let failed =
        |error: &std::io::Error| Error::io(format!("writing {what} `{}`", path.display()), error);
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |name| name.to_string_lossy());
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(|error| failed(&error))?;
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
}
