//! Repos from a folder on disk, for `examples/fake_hub.rs` and the interop test.
//!
//! Folder format (also in `examples/hub/README.md`):
//!
//! - `ROOT/<owner>/<name>/...` is the repo `<owner>/<name>`: every file below it (dotfiles
//!   included, nested folders kept) is one file of a single commit on `main`.
//! - `ROOT/<name>/_hub.json` (a first-level folder that holds a `_hub.json`) is a repo with a
//!   plain id `<name>` and no owner.
//! - An optional `_hub.json` in a repo folder gives metadata; it is not a repo file. Keys, all
//!   optional: `"id"` (overrides the id derived from the path), `"license"`, `"gated"`
//!   (`"auto"` | `"manual"`), `"private"` (bool), `"allowed_tokens"` (list), `"aliases"` (legacy
//!   ids redirected with 307), `"lfs"` (extra patterns: `"*.ext"` or an exact repo path),
//!   `"tags"` (git tag names pointing at the commit), `"pipeline_tag"`, `"downloads"`, `"likes"`.
//! - A file is LFS when its name ends in `.gguf`, `.safetensors`, `.bin`, `.pt`, `.pth`, `.onnx`,
//!   `.h5`, `.msgpack`, when it is at least 1 MiB, or when it matches an `"lfs"` pattern.
//! - Files directly in `ROOT` (README, generator script) are ignored.
//!
//! Repos come back sorted by id; their commit shas are deterministic, so a fixture folder always
//! serves the same shas.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;

use super::repo::{FileSpec, GatedMode, RepoSpec};

const METADATA_FILE: &str = "_hub.json";
const LFS_SUFFIXES: [&str; 8] = [
    ".gguf",
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".onnx",
    ".h5",
    ".msgpack",
];
const LFS_MIN_SIZE: usize = 1024 * 1024;
const MAP_MIN_SIZE: u64 = 1024 * 1024;

/// Loads every repo under `root`. Panics with the offending path on malformed fixtures: they
/// are test inputs, and a loud failure beats a silently missing repo.
pub fn load_dir(root: &Path) -> Vec<RepoSpec> {
    let mut repos = Vec::new();
    for first in sorted_dirs(root) {
        let name = file_name(&first);
        if first.join(METADATA_FILE).is_file() {
            repos.push(load_repo(&first, name));
            continue;
        }
        for second in sorted_dirs(&first) {
            let id = format!("{name}/{}", file_name(&second));
            repos.push(load_repo(&second, id));
        }
    }
    repos.sort_by(|a, b| a.id.cmp(&b.id));
    repos
}

fn load_repo(dir: &Path, default_id: String) -> RepoSpec {
    let metadata_path = dir.join(METADATA_FILE);
    let metadata: Value = if metadata_path.is_file() {
        let text = fs_err::read_to_string(&metadata_path).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", metadata_path.display()))
    } else {
        Value::Object(Default::default())
    };
    let strings = |key: &str| -> Vec<String> {
        metadata[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let lfs_patterns = strings("lfs");

    let mut files = Vec::new();
    collect_files(dir, dir, &mut files);
    files.sort();
    let file_specs: Vec<FileSpec> = files
        .into_iter()
        .filter(|relative| relative != METADATA_FILE)
        .map(|relative| {
            let path = dir.join(&relative);
            let content = file_content(&path);
            let lfs = is_lfs(&relative, content.len(), &lfs_patterns);
            if lfs {
                FileSpec::lfs(relative, content).with_source(path)
            } else {
                FileSpec::regular(relative, content).with_source(path)
            }
        })
        .collect();

    let id = metadata["id"]
        .as_str()
        .map(String::from)
        .unwrap_or(default_id);
    let mut repo = RepoSpec::new(id).commit(file_specs);
    if let Some(license) = metadata["license"].as_str() {
        repo = repo.license(license);
    }
    match metadata["gated"].as_str() {
        Some("auto") => repo = repo.gated(GatedMode::Auto),
        Some("manual") => repo = repo.gated(GatedMode::Manual),
        Some(other) => panic!(
            "{}: gated must be \"auto\" or \"manual\", not {other:?}",
            metadata_path.display()
        ),
        None => {}
    }
    if metadata["private"].as_bool() == Some(true) {
        repo = repo.private();
    }
    for token in strings("allowed_tokens") {
        repo = repo.allow_token(token);
    }
    for alias in strings("aliases") {
        repo = repo.alias(alias);
    }
    for tag in strings("tags") {
        repo = repo.tag(tag, 0);
    }
    if let Some(pipeline) = metadata["pipeline_tag"].as_str() {
        repo = repo.pipeline_tag(pipeline);
    }
    repo.popularity(
        metadata["downloads"].as_u64().unwrap_or(0),
        metadata["likes"].as_u64().unwrap_or(0),
    )
}

/// Files from [`MAP_MIN_SIZE`] on are served from a read-only map of the fixture file, as a CDN
/// serves from the page cache: a copy in the hub's own memory would double the footprint of
/// every large fixture, and on a VM that extra memory makes page-cache writes (every client's
/// main cost) several times slower (measured: `dd` of 2 GiB 1.1 s alone, 3.2 to 5.0 s while the
/// hub held a 2 GiB copy). The fixture files must not change while the hub runs.
fn file_content(path: &Path) -> Bytes {
    let file = fs_err::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    if size < MAP_MIN_SIZE {
        return Bytes::from(fs_err::read(path).unwrap());
    }
    // SAFETY: the map is read-only and fixture files are not modified while a hub serves them
    // (a truncation would end the hub with SIGBUS, a loud failure for a test input).
    let map = unsafe { memmap2::Mmap::map(file.file()) }
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Bytes::from_owner(map)
}

fn is_lfs(path: &str, size: usize, patterns: &[String]) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    size >= LFS_MIN_SIZE
        || LFS_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
        || patterns
            .iter()
            .any(|pattern| match pattern.strip_prefix('*') {
                Some(suffix) => name.ends_with(suffix),
                None => pattern == path,
            })
}

/// Repo-relative paths with `/` separators, whatever the platform.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let entries = fs_err::read_dir(dir).unwrap();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            let relative = path.strip_prefix(root).unwrap();
            out.push(
                relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs_err::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a named folder")
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_owned_and_plain_repos_with_metadata() {
        let root = tempfile::tempdir().unwrap();
        let owned = root.path().join("acme/model");
        fs_err::create_dir_all(owned.join("sub")).unwrap();
        fs_err::write(owned.join("config.json"), "{}").unwrap();
        fs_err::write(owned.join("sub/weights.bin"), [1u8; 10]).unwrap();
        // Large enough to be served from a map of the file rather than a copy.
        let big: Vec<u8> = (0..MAP_MIN_SIZE as usize + 3).map(|i| i as u8).collect();
        fs_err::write(owned.join("big.gguf"), &big).unwrap();
        fs_err::write(
            owned.join(METADATA_FILE),
            r#"{"gated": "manual", "allowed_tokens": ["hf_x"], "aliases": ["model"]}"#,
        )
        .unwrap();
        let plain = root.path().join("plain");
        fs_err::create_dir_all(&plain).unwrap();
        fs_err::write(plain.join(METADATA_FILE), r#"{"license": "mit"}"#).unwrap();
        fs_err::write(plain.join("README.md"), "hi").unwrap();
        fs_err::write(root.path().join("README.md"), "ignored").unwrap();

        let repos = load_dir(root.path());
        let ids: Vec<&str> = repos.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["acme/model", "plain"]);
        let model = &repos[0];
        let paths: Vec<(&str, bool)> = model
            .head_files()
            .iter()
            .map(|f| (f.path.as_str(), f.lfs))
            .collect();
        assert_eq!(
            paths,
            [
                ("big.gguf", true),
                ("config.json", false),
                ("sub/weights.bin", true)
            ]
        );
        assert_eq!(model.head_files()[0].content, big);
        assert_eq!(model.gated, Some(GatedMode::Manual));
        assert_eq!(model.allowed_tokens, ["hf_x"]);
        assert_eq!(model.aliases, ["model"]);
        assert_eq!(repos[1].license.as_deref(), Some("mit"));
    }
}
