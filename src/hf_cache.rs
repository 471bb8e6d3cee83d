//! Read-only lookups in a local Hugging Face cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`), the
//! layout `huggingface_hub` writes (hf-protocol.md §8):
//!
//! ```text
//! <cache>/models--{owner}--{name}/
//!     blobs/<etag>                   the bytes; etag = sha256 (LFS) or git blob sha1 (regular)
//!     refs/<revision>                the commit a branch or tag pointed to
//!     snapshots/<commit>/<path>      symlinks to ../../blobs/<etag>
//! ```
//!
//! Because blobs are named by the same content hashes kmm uses, a file kmm needs can be taken
//! from the cache instead of the network ([`HfCache::blob`]); with `--offline`, a revision and
//! file list can be read from `refs/` and `snapshots/` ([`HfCache::commit_of`],
//! [`HfCache::snapshot_files`]). A blob's bytes are never trusted by name alone: `apply`
//! verifies them against the hash before using them.
//!
//! Edges: reads only; never writes into the cache. The cache location comes from the caller
//! (`cli` reads the environment).

use std::path::{Path, PathBuf};

use crate::upstream::{FileHash, UpstreamFile, is_commit_sha};

/// A Hugging Face hub cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfCache {
    root: PathBuf,
}

impl HfCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HfCache { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `models--{owner}--{name}`, as `huggingface_hub` names a model repo's folder.
    fn repo_dir(&self, repo_id: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo_id.replace('/', "--")))
    }

    /// The cached blob with `file`'s hash and size, if there is one.
    pub fn blob(&self, repo_id: &str, file: &UpstreamFile) -> Option<PathBuf> {
        let hex = file.hash.hex();
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self.repo_dir(repo_id).join("blobs").join(hex);
        let meta = std::fs::metadata(&path).ok()?;
        (meta.is_file() && meta.len() == file.size).then_some(path)
    }

    /// The commit `revision` names in the cache: itself when it is a commit with a snapshot,
    /// else the content of `refs/<revision>`.
    pub fn commit_of(&self, repo_id: &str, revision: &str) -> Option<String> {
        let dir = self.repo_dir(repo_id);
        if is_commit_sha(revision) {
            return dir
                .join("snapshots")
                .join(revision)
                .is_dir()
                .then(|| revision.to_string());
        }
        if revision
            .split('/')
            .any(|part| part.is_empty() || part == "..")
        {
            return None;
        }
        let text = std::fs::read_to_string(dir.join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_sha(commit).then(|| commit.to_string())
    }

    /// Every file of the snapshot at `commit`: path, size (of the blob) and hash (the blob's
    /// name: 64 hex digits are sha256, 40 a git sha1). Sorted by path. `None` when there is no
    /// such snapshot or one of its entries is not a link to a present blob.
    pub fn snapshot_files(&self, repo_id: &str, commit: &str) -> Option<Vec<UpstreamFile>> {
        if !is_commit_sha(commit) {
            return None;
        }
        let snapshot = self.repo_dir(repo_id).join("snapshots").join(commit);
        if !snapshot.is_dir() {
            return None;
        }
        let mut files = Vec::new();
        let mut stack = vec![snapshot.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                // An entry that is not a link to a present blob (an interrupted download, a
                // pruned blob) makes the snapshot an incomplete file list: not usable.
                files.push(snapshot_entry(&snapshot, &path)?);
            }
        }
        files.sort();
        Some(files)
    }
}

/// One snapshot symlink -> the file it stands for.
fn snapshot_entry(snapshot: &Path, path: &Path) -> Option<UpstreamFile> {
    let target = std::fs::read_link(path).ok()?;
    let blob_name = target.file_name()?.to_str()?.to_string();
    let hash = match blob_name.len() {
        64 => FileHash::Sha256(blob_name.to_ascii_lowercase()),
        40 => FileHash::GitSha1(blob_name.to_ascii_lowercase()),
        _ => return None,
    };
    if !blob_name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let size = std::fs::metadata(path).ok()?.len();
    let relative = path.strip_prefix(snapshot).ok()?;
    let repo_path = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?
        .join("/");
    crate::layout::check_repo_path(&repo_path).ok()?;
    Some(UpstreamFile {
        path: repo_path,
        size,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{git_sha1_hex, sha256_hex};

    #[test]
    fn finds_blobs_refs_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HfCache::new(dir.path());
        let repo = dir.path().join("models--org--m");
        let commit = "a".repeat(40);
        let big = b"weights".to_vec();
        let small = b"{}".to_vec();
        let (big_hash, small_hash) = (sha256_hex(&big), git_sha1_hex(&small));
        fs_err::create_dir_all(repo.join("blobs")).unwrap();
        fs_err::create_dir_all(repo.join("refs")).unwrap();
        fs_err::create_dir_all(repo.join("snapshots").join(&commit).join("sub")).unwrap();
        fs_err::write(repo.join("blobs").join(&big_hash), &big).unwrap();
        fs_err::write(repo.join("blobs").join(&small_hash), &small).unwrap();
        fs_err::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        let snap = repo.join("snapshots").join(&commit);
        std::os::unix::fs::symlink(
            format!("../../../blobs/{big_hash}"),
            snap.join("sub/model.bin"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{small_hash}"),
            snap.join("config.json"),
        )
        .unwrap();

        assert_eq!(cache.commit_of("org/m", "main"), Some(commit.clone()));
        assert_eq!(cache.commit_of("org/m", &commit), Some(commit.clone()));
        assert_eq!(cache.commit_of("org/m", "dev"), None);
        assert_eq!(cache.commit_of("org/m", "../x"), None);
        let files = cache.snapshot_files("org/m", &commit).unwrap();
        let want = vec![
            UpstreamFile {
                path: "config.json".into(),
                size: 2,
                hash: FileHash::GitSha1(small_hash.clone()),
            },
            UpstreamFile {
                path: "sub/model.bin".into(),
                size: big.len() as u64,
                hash: FileHash::Sha256(big_hash.clone()),
            },
        ];
        assert_eq!(files, want);
        assert!(cache.blob("org/m", &want[1]).is_some());
        let mut wrong_size = want[1].clone();
        wrong_size.size += 1;
        assert!(cache.blob("org/m", &wrong_size).is_none());
        assert!(cache.blob("org/other", &want[1]).is_none());
        assert!(cache.snapshot_files("org/m", &"b".repeat(40)).is_none());
    }
}
