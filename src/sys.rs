//! Facts about this machine that kmm checks before acting (free disk for now; RAM, CPU and GPUs
//! come with `kmm compatibility`).
//!
//! Edges: reads system state; decides nothing.

use std::path::Path;

use crate::error::{Error, Result};

/// Bytes available to an unprivileged user on the filesystem holding `path`, or on the filesystem
/// of its nearest existing ancestor when `path` does not exist yet.
pub fn free_disk_bytes(path: &Path) -> Result<u64> {
    let mut probe = path;
    while !probe.exists() {
        probe = match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        if probe == Path::new(".") {
            break;
        }
    }
    statvfs_available(probe)
}

#[cfg(unix)]
fn statvfs_available(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::args(format!("path {} contains a NUL byte", path.display())))?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stats a properly sized out-parameter.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if status != 0 {
        let error = std::io::Error::last_os_error();
        return Err(Error::io(
            format!("checking free space on {}", path.display()),
            &error,
        ));
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}

#[cfg(not(unix))]
fn statvfs_available(_path: &Path) -> Result<u64> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_of_a_missing_path_is_that_of_its_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let here = free_disk_bytes(dir.path()).unwrap();
        let below = free_disk_bytes(&dir.path().join("not/yet/there")).unwrap();
        assert!(here > 0);
        // Same filesystem: the two readings are close (other processes may write meanwhile).
        assert!(here.abs_diff(below) < 1 << 30);
    }
}
