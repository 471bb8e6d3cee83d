//! What a model revision contains upstream, and how its bytes are checked.
//!
//! Every file kmm installs is identified by its upstream content hash: sha256 for LFS files
//! (the Hub's `lfs.oid` / `X-Linked-Etag`), git blob sha1 for regular files (tree `oid` /
//! `ETag`). These types are shared by `hub` (which produces them), `plan` (which compares them
//! with the registry) and `apply` (which verifies downloads against them).
//!
//! Edges: pure data and hashing; the only reads are those of [`hash_reader`], from the reader it
//! is handed.

use serde::{Deserialize, Serialize};
use sha1::Digest as _;

/// The upstream identity of a file's bytes.
#[derive(
    schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FileHash {
    /// sha256 of the content, lowercase hex (LFS files).
    Sha256(String),
    /// git blob id: sha1 of `"blob {len}\0" + content`, lowercase hex (regular files).
    GitSha1(String),
}

impl FileHash {
    /// The hex digest, whichever algorithm.
    pub fn hex(&self) -> &str {
        match self {
            FileHash::Sha256(hex) | FileHash::GitSha1(hex) => hex,
        }
    }

    /// `sha256:<hex>` or `git-sha1:<hex>`, for messages and plan output.
    pub fn display(&self) -> String {
        match self {
            FileHash::Sha256(hex) => format!("sha256:{hex}"),
            FileHash::GitSha1(hex) => format!("git-sha1:{hex}"),
        }
    }

    pub fn is_lfs(&self) -> bool {
        matches!(self, FileHash::Sha256(_))
    }

    /// The hash a lock entry or registry record stores as two optional hex fields, lowercased;
    /// sha256 wins (LFS files have both). `None` when neither is there.
    pub fn from_hex_fields(sha256: Option<&str>, git_sha1: Option<&str>) -> Option<FileHash> {
        match (sha256, git_sha1) {
            (Some(hex), _) => Some(FileHash::Sha256(hex.to_ascii_lowercase())),
            (None, Some(hex)) => Some(FileHash::GitSha1(hex.to_ascii_lowercase())),
            (None, None) => None,
        }
    }
}

/// One file of a revision as the hub lists it.
#[derive(
    schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct UpstreamFile {
    /// Path inside the repository, `/`-separated, already checked by
    /// [`crate::layout::check_repo_path`].
    pub path: String,
    /// Real size in bytes (LFS size for LFS files).
    pub size: u64,
    pub hash: FileHash,
}

/// Streams bytes through the hash that matches a [`FileHash`] and checks the result.
///
/// The git blob header needs the total length up front, which the listing provides.
pub enum ContentHasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl ContentHasher {
    /// A hasher for bytes expected to match `expected`, whose total size is `size`.
    pub fn for_hash(expected: &FileHash, size: u64) -> Self {
        match expected {
            FileHash::Sha256(_) => ContentHasher::Sha256(sha2::Sha256::new()),
            FileHash::GitSha1(_) => {
                let mut hasher = sha1::Sha1::new();
                hasher.update(format!("blob {size}\0").as_bytes());
                ContentHasher::GitSha1(hasher)
            }
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHasher::Sha256(h) => h.update(bytes),
            ContentHasher::GitSha1(h) => h.update(bytes),
        }
    }

    /// The finished hash, of the same kind as the one the hasher was made for.
    pub fn finish(self) -> FileHash {
        match self {
            ContentHasher::Sha256(h) => FileHash::Sha256(hex::encode(h.finalize())),
            ContentHasher::GitSha1(h) => FileHash::GitSha1(hex::encode(h.finalize())),
        }
    }
}

/// Buffer length that callers of [`hash_reader`] read files with.
pub const HASH_BUFFER_LEN: usize = 1 << 20;

/// Reads `reader` to its end in `buffer`-sized reads and hashes the bytes the way `kind` is
/// computed, for content expected to be `size` bytes long (the git blob header holds the size).
/// Returns how many bytes were read and their hash: a count other than `size` means the bytes
/// are not the ones that were sized, which each caller treats in its own way. Read errors are
/// returned as they are, for the caller to word.
pub fn hash_reader(
    reader: &mut impl std::io::Read,
    kind: &FileHash,
    size: u64,
    buffer: &mut [u8],
) -> std::io::Result<(u64, FileHash)> {
    let mut hasher = ContentHasher::for_hash(kind, size);
    let mut total = 0u64;
    loop {
        let read = reader.read(buffer)?;
        if read == 0 {
            break;
        }
        total += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((total, hasher.finish()))
}

/// Hashes a whole buffer the way `expected` is computed (tests, small files).
pub fn hash_bytes(expected_kind: &FileHash, bytes: &[u8]) -> FileHash {
    let mut hasher = ContentHasher::for_hash(expected_kind, bytes.len() as u64);
    hasher.update(bytes);
    hasher.finish()
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// git blob sha1 of `bytes`, lowercase hex (same as `git hash-object`).
pub fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

/// True for a full 40-hex lowercase commit id; anything else is a ref the hub resolves.
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40
        && revision
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sha1_matches_git_hash_object() {
        // `printf 'Hello, World!' | git hash-object --stdin`
        assert_eq!(
            git_sha1_hex(b"Hello, World!"),
            "b45ef6fec89518d314f546fd6c3025367b721684"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data = b"some model bytes".repeat(1000);
        for kind in [
            FileHash::Sha256(String::new()),
            FileHash::GitSha1(String::new()),
        ] {
            let mut hasher = ContentHasher::for_hash(&kind, data.len() as u64);
            for chunk in data.chunks(777) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.finish(), hash_bytes(&kind, &data));
        }
        assert_eq!(
            hash_bytes(&FileHash::Sha256(String::new()), &data).hex(),
            sha256_hex(&data)
        );
    }

    #[test]
    fn hash_reader_counts_the_bytes_it_hashes() {
        let data = b"some model bytes".repeat(1000);
        let mut buffer = [0u8; 777];
        for kind in [
            FileHash::Sha256(String::new()),
            FileHash::GitSha1(String::new()),
        ] {
            let (read, hash) =
                hash_reader(&mut &data[..], &kind, data.len() as u64, &mut buffer).unwrap();
            assert_eq!(read, data.len() as u64);
            assert_eq!(hash, hash_bytes(&kind, &data));
        }
    }

    #[test]
    fn commit_shas() {
        assert!(is_commit_sha("e7da7f221d5bf496a48136c0cd264e630fe9fcc8"));
        assert!(!is_commit_sha("main"));
        assert!(!is_commit_sha("E7DA7F221D5BF496A48136C0CD264E630FE9FCC8"));
        assert!(!is_commit_sha("e7da7f2"));
    }
}
