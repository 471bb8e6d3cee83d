//! Repository model of the fake hub: the builder tests use (`RepoSpec`, `FileSpec`) and the
//! derived, hashed view the server answers from (`Repo`, `Commit`, `RepoFile`).
//!
//! Everything the Hub reports about a file is computed here exactly as the real Hub does
//! (hf-protocol.md §10): regular files are identified by their git blob sha1, LFS files by the
//! sha256 of their content, and the git object of an LFS file is its pointer text. Directory
//! oids are real git tree hashes. Commit shas are synthetic but deterministic (sha1 of the repo id,
//! the commit index and the file hashes), so a test can compute them before starting the hub.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use sha1::{Digest, Sha1};
use sha2::Sha256;

/// `gated` as the Hub reports it: `"auto"` (instant approval) or `"manual"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedMode {
    Auto,
    Manual,
}

impl GatedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GatedMode::Auto => "auto",
            GatedMode::Manual => "manual",
        }
    }
}

/// One file of one commit. `lfs` files are served through a 302 to the CDN origin.
#[derive(Clone)]
pub struct FileSpec {
    pub path: String,
    pub content: Bytes,
    pub lfs: bool,
    /// The file on disk that holds `content` (fixture folders), for the zero-copy CDN.
    pub source: Option<std::path::PathBuf>,
}

impl FileSpec {
    pub fn regular(path: impl Into<String>, content: impl Into<Bytes>) -> Self {
        FileSpec {
            path: path.into(),
            content: content.into(),
            lfs: false,
            source: None,
        }
    }

    pub fn lfs(path: impl Into<String>, content: impl Into<Bytes>) -> Self {
        FileSpec {
            path: path.into(),
            content: content.into(),
            lfs: true,
            source: None,
        }
    }

    /// Says that `path` on disk holds the content (and stays unchanged while the hub runs).
    pub fn with_source(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.source = Some(path.into());
        self
    }

    /// What kmm and the real clients use as the file's identity: sha256 for LFS, git sha1 otherwise.
    pub fn upstream_hash(&self) -> String {
        if self.lfs {
            sha256_hex(&self.content)
        } else {
            git_blob_sha1(&self.content)
        }
    }
}

// Contents can be megabytes: Debug shows their size, not their bytes.
impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("len", &self.content.len())
            .field("lfs", &self.lfs)
            .finish()
    }
}

/// A repository: a list of commits (each a full file set), `main` at the newest one.
#[derive(Clone, Debug)]
pub struct RepoSpec {
    pub id: String,
    pub commits: Vec<Vec<FileSpec>>,
    pub tags: Vec<(String, usize)>,
    pub branches: Vec<(String, usize)>,
    pub license: Option<String>,
    pub gated: Option<GatedMode>,
    pub private: bool,
    pub allowed_tokens: Vec<String>,
    pub aliases: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub downloads: u64,
    pub likes: u64,
}

impl RepoSpec {
    pub fn new(id: impl Into<String>) -> Self {
        RepoSpec {
            id: id.into(),
            commits: Vec::new(),
            tags: Vec::new(),
            branches: Vec::new(),
            license: None,
            gated: None,
            private: false,
            allowed_tokens: Vec::new(),
            aliases: Vec::new(),
            pipeline_tag: None,
            downloads: 0,
            likes: 0,
        }
    }

    /// Appends a commit holding exactly `files`; `main` moves to it.
    pub fn commit(mut self, files: Vec<FileSpec>) -> Self {
        self.commits.push(files);
        self
    }

    pub fn tag(mut self, name: impl Into<String>, commit_index: usize) -> Self {
        self.tags.push((name.into(), commit_index));
        self
    }

    pub fn branch(mut self, name: impl Into<String>, commit_index: usize) -> Self {
        self.branches.push((name.into(), commit_index));
        self
    }

    pub fn license(mut self, license: impl Into<String>) -> Self {
        self.license = Some(license.into());
        self
    }

    pub fn gated(mut self, mode: GatedMode) -> Self {
        self.gated = Some(mode);
        self
    }

    pub fn private(mut self) -> Self {
        self.private = true;
        self
    }

    pub fn allow_token(mut self, token: impl Into<String>) -> Self {
        self.allowed_tokens.push(token.into());
        self
    }

    pub fn alias(mut self, legacy_id: impl Into<String>) -> Self {
        self.aliases.push(legacy_id.into());
        self
    }

    pub fn pipeline_tag(mut self, tag: impl Into<String>) -> Self {
        self.pipeline_tag = Some(tag.into());
        self
    }

    /// Popularity numbers, only used to sort listings.
    pub fn popularity(mut self, downloads: u64, likes: u64) -> Self {
        self.downloads = downloads;
        self.likes = likes;
        self
    }

    /// Deterministic 40-hex sha of commit `index`.
    pub fn commit_sha(&self, index: usize) -> String {
        let files = &self.commits[index];
        let mut hasher = Sha1::new();
        hasher.update(format!("fake-hub-commit\n{}\n{}\n", self.id, index));
        let mut sorted: Vec<&FileSpec> = files.iter().collect();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        for file in sorted {
            hasher.update(format!(
                "{} {} {}\n",
                file.path,
                file.lfs,
                file.upstream_hash()
            ));
        }
        hex::encode(hasher.finalize())
    }

    /// Sha of the newest commit (what `main` points at).
    pub fn head(&self) -> String {
        assert!(!self.commits.is_empty(), "repo {} has no commit", self.id);
        self.commit_sha(self.commits.len() - 1)
    }

    /// Files of the newest commit, by path.
    pub fn head_files(&self) -> &[FileSpec] {
        self.commits.last().map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn owner(&self) -> Option<&str> {
        self.id.split_once('/').map(|(owner, _)| owner)
    }
}

/// `git hash-object`: sha1 of `"blob <len>\0" + content`.
pub fn git_blob_sha1(content: &[u8]) -> String {
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()));
    hasher.update(content);
    hex::encode(hasher.finalize())
}

pub fn sha256_hex(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// The git-lfs pointer text stored in git in place of an LFS file.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// Server-side view of one file of one commit, with every hash precomputed.
#[derive(Clone, Debug)]
pub(crate) struct RepoFile {
    pub path: String,
    pub content: Bytes,
    pub lfs: bool,
    /// Git blob id of what git stores: the content, or the pointer text for LFS files.
    pub blob_id: String,
    pub sha256: String,
    pub pointer: String,
    /// Index of the newest commit (≤ this one) that changed this file.
    pub last_commit: usize,
    pub source: Option<std::path::PathBuf>,
}

impl RepoFile {
    pub fn size(&self) -> u64 {
        self.content.len() as u64
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Commit {
    pub index: usize,
    pub sha: String,
    pub date: String,
    pub title: String,
    pub files: BTreeMap<String, RepoFile>,
    /// Every directory (not the root) with its git tree oid.
    pub dirs: BTreeMap<String, String>,
}

impl Commit {
    /// The newest commit index that changed anything under `dir` (for `lastCommit` of directories).
    pub fn dir_last_commit(&self, dir: &str) -> usize {
        let prefix = format!("{dir}/");
        self.files
            .values()
            .filter(|f| f.path.starts_with(&prefix))
            .map(|f| f.last_commit)
            .max()
            .unwrap_or(self.index)
    }
}

/// A repo as served: the spec plus its hashed commits.
#[derive(Debug)]
pub(crate) struct Repo {
    pub spec: RepoSpec,
    pub commits: Vec<Commit>,
    pub created_at: String,
}

impl Repo {
    pub fn build(spec: RepoSpec) -> Repo {
        assert!(
            !spec.commits.is_empty(),
            "repo {} needs at least one commit",
            spec.id
        );
        let mut commits: Vec<Commit> = Vec::with_capacity(spec.commits.len());
        for (index, files) in spec.commits.iter().enumerate() {
            let mut by_path = BTreeMap::new();
            for file in files {
                let path = file.path.trim_matches('/').to_string();
                let sha256 = sha256_hex(&file.content);
                let pointer = lfs_pointer(&sha256, file.content.len() as u64);
                let blob_id = if file.lfs {
                    git_blob_sha1(pointer.as_bytes())
                } else {
                    git_blob_sha1(&file.content)
                };
                let last_commit = match commits.last().and_then(|prev| prev.files.get(&path)) {
                    Some(prev) if prev.blob_id == blob_id && prev.lfs == file.lfs => {
                        prev.last_commit
                    }
                    _ => index,
                };
                let repo_file = RepoFile {
                    path: path.clone(),
                    content: file.content.clone(),
                    lfs: file.lfs,
                    blob_id,
                    sha256,
                    pointer,
                    last_commit,
                    source: file.source.clone(),
                };
                assert!(
                    by_path.insert(path.clone(), repo_file).is_none(),
                    "duplicate path {path}"
                );
            }
            let dirs = git_tree_oids(&by_path);
            commits.push(Commit {
                index,
                sha: spec.commit_sha(index),
                date: synthetic_date(index + 1),
                title: if index == 0 {
                    "initial commit".to_string()
                } else {
                    format!("update {index}")
                },
                files: by_path,
                dirs,
            });
        }
        Repo {
            created_at: synthetic_date(0),
            spec,
            commits,
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn head(&self) -> &Commit {
        self.commits.last().expect("at least one commit")
    }

    /// Branch, tag or full commit sha -> commit. `refs/heads/x` and `refs/tags/x` spell the same refs.
    pub fn resolve_revision(&self, revision: &str) -> Option<&Commit> {
        let branch = revision.strip_prefix("refs/heads/").unwrap_or(revision);
        if branch == "main" {
            return Some(self.head());
        }
        if let Some((_, index)) = self.spec.branches.iter().find(|(name, _)| name == branch) {
            return self.commits.get(*index);
        }
        let tag = revision.strip_prefix("refs/tags/").unwrap_or(revision);
        if let Some((_, index)) = self.spec.tags.iter().find(|(name, _)| name == tag) {
            return self.commits.get(*index);
        }
        self.commits.iter().find(|commit| commit.sha == revision)
    }

    pub fn library_name(&self) -> Option<&'static str> {
        let files = &self.head().files;
        if files.keys().any(|p| p.ends_with(".gguf")) {
            Some("gguf")
        } else if files.contains_key("config.json") {
            Some("transformers")
        } else {
            None
        }
    }

    pub fn tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        if let Some(library) = self.library_name() {
            tags.push(library.to_string());
        }
        let files = &self.head().files;
        if files.keys().any(|p| p.ends_with(".safetensors")) {
            tags.push("safetensors".to_string());
        }
        if let Some(pipeline) = &self.spec.pipeline_tag {
            tags.push(pipeline.clone());
        }
        if let Some(license) = self.license() {
            tags.push(format!("license:{license}"));
        }
        tags.push("region:us".to_string());
        tags
    }

    /// `cardData`: the README's YAML front matter (top-level scalars), with the spec's license on top.
    pub fn card_data(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut card = self
            .head()
            .files
            .get("README.md")
            .map(|readme| front_matter(&readme.content))
            .unwrap_or_default();
        if let Some(license) = &self.spec.license {
            card.insert("license".to_string(), license.clone().into());
        }
        card
    }

    pub fn license(&self) -> Option<String> {
        match self.card_data().get("license") {
            Some(serde_json::Value::String(license)) => Some(license.clone()),
            _ => None,
        }
    }

    pub fn allows(&self, token: &str) -> bool {
        self.spec
            .allowed_tokens
            .iter()
            .any(|allowed| allowed == token)
    }
}

/// `2024-01-01T00:00:00.000Z` plus `days`: deterministic, ordered, ISO-8601 with ms like the Hub.
fn synthetic_date(days: usize) -> String {
    let year = 2024 + days / 336;
    let month = (days / 28) % 12 + 1;
    let day = days % 28 + 1;
    format!("{year:04}-{month:02}-{day:02}T00:00:00.000Z")
}

/// Parses the simple `key: value` lines of a `---` delimited YAML front matter. Enough for
/// `license: apache-2.0`; nested values and lists are skipped rather than misread.
fn front_matter(readme: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let mut card = serde_json::Map::new();
    let text = String::from_utf8_lossy(readme);
    let mut lines = text.lines();
    if lines.next().map(str::trim_end) != Some("---") {
        return card;
    }
    for line in lines {
        if line.trim_end() == "---" {
            break;
        }
        if line.starts_with([' ', '\t', '-']) {
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            let value = value.trim().trim_matches('"').trim_matches('\'');
            if !value.is_empty() {
                card.insert(key.trim().to_string(), value.to_string().into());
            }
        }
    }
    card
}

/// Real git tree oids for every directory of a file set (LFS files enter as their pointer blob).
fn git_tree_oids(files: &BTreeMap<String, RepoFile>) -> BTreeMap<String, String> {
    // dir -> (name -> (is_dir, oid)); the root is "".
    let mut children: BTreeMap<String, BTreeMap<String, (bool, String)>> = BTreeMap::new();
    for file in files.values() {
        let (dir, name) = file.path.rsplit_once('/').unwrap_or(("", &file.path));
        children
            .entry(dir.to_string())
            .or_default()
            .insert(name.to_string(), (false, file.blob_id.clone()));
        let mut current = dir.to_string();
        while !current.is_empty() {
            let parent = current
                .rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default();
            children.entry(parent.clone()).or_default();
            current = parent;
        }
    }
    // Deepest directories first, so a parent sees its children's oids.
    let mut dirs: Vec<String> = children.keys().cloned().collect();
    dirs.sort_by_key(|d| {
        std::cmp::Reverse(if d.is_empty() {
            0
        } else {
            d.matches('/').count() + 1
        })
    });
    let mut oids = BTreeMap::new();
    for dir in dirs {
        let entries = children.get(&dir).cloned().unwrap_or_default();
        let oid = git_tree_hash(&entries);
        if dir.is_empty() {
            continue;
        }
        let (parent, name) = dir.rsplit_once('/').unwrap_or(("", &dir));
        children
            .entry(parent.to_string())
            .or_default()
            .insert(name.to_string(), (true, oid.clone()));
        oids.insert(dir, oid);
    }
    oids
}

fn git_tree_hash(entries: &BTreeMap<String, (bool, String)>) -> String {
    // Git orders tree entries by name, comparing a directory as if its name ended in '/'.
    let mut sorted: Vec<(String, bool, &String)> = entries
        .iter()
        .map(|(name, (is_dir, oid))| {
            (
                if *is_dir {
                    format!("{name}/")
                } else {
                    name.clone()
                },
                *is_dir,
                oid,
            )
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut body = Vec::new();
    for (key, is_dir, oid) in sorted {
        let name = key.strip_suffix('/').filter(|_| is_dir).unwrap_or(&key);
        body.extend_from_slice(if is_dir { b"40000 " } else { b"100644 " });
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&hex::decode(oid).expect("oids are hex"));
    }
    let mut hasher = Sha1::new();
    hasher.update(format!("tree {}\0", body.len()));
    hasher.update(&body);
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_matches_git_hash_object() {
        // `printf 'Hello, World!' | git hash-object --stdin`
        assert_eq!(
            git_blob_sha1(b"Hello, World!"),
            "b45ef6fec89518d314f546fd6c3025367b721684"
        );
    }

    #[test]
    fn tree_oids_match_git() {
        // `printf x > a/f; printf y > a/b/g; printf z > a-b; git add .; git commit;
        // git rev-parse HEAD:a HEAD:a/b` ("a-b" sorts between "a" and "a/" in git's order).
        let spec = RepoSpec::new("o/r").commit(vec![
            FileSpec::regular("a/f", b"x".to_vec()),
            FileSpec::regular("a/b/g", b"y".to_vec()),
            FileSpec::regular("a-b", b"z".to_vec()),
        ]);
        let repo = Repo::build(spec);
        assert_eq!(
            repo.head().dirs["a"],
            "bad91f31edb9e4c11845943200c0a96ccefd302a"
        );
        assert_eq!(
            repo.head().dirs["a/b"],
            "125b0a3cd6f6d7cedf94d947e59d002ac404a3f4"
        );
    }

    #[test]
    fn commit_shas_are_deterministic_and_distinct() {
        let spec = RepoSpec::new("o/r")
            .commit(vec![FileSpec::regular("a", b"1".to_vec())])
            .commit(vec![FileSpec::regular("a", b"2".to_vec())]);
        assert_eq!(spec.commit_sha(0), spec.clone().commit_sha(0));
        assert_ne!(spec.commit_sha(0), spec.commit_sha(1));
        assert_eq!(spec.head(), spec.commit_sha(1));
        assert_eq!(spec.head().len(), 40);
    }

    #[test]
    fn front_matter_reads_the_license() {
        let card = front_matter(b"---\nlicense: apache-2.0\ntags:\n- x\n---\n# Title\n");
        assert_eq!(card["license"], "apache-2.0");
        assert!(!card.contains_key("tags"));
    }

    #[test]
    fn last_commit_tracks_unchanged_files() {
        let spec = RepoSpec::new("o/r")
            .commit(vec![
                FileSpec::regular("a", b"1".to_vec()),
                FileSpec::regular("b", b"1".to_vec()),
            ])
            .commit(vec![
                FileSpec::regular("a", b"1".to_vec()),
                FileSpec::regular("b", b"2".to_vec()),
            ]);
        let repo = Repo::build(spec);
        assert_eq!(repo.head().files["a"].last_commit, 0);
        assert_eq!(repo.head().files["b"].last_commit, 1);
    }
}
