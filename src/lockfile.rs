//! `kari-models.lock`: what each declared model resolved to, so plans are reproducible and
//! need no network.
//!
//! Beside the manifest. Per model: the declared revision and selection (include, exclude,
//! library) the entry was resolved with, the commit, and every selected file's path, size and
//! upstream hash. An entry is *current* for a manifest model when its revision and selection
//! equal the declared ones; then `resolve` takes the commit and files from it instead of asking
//! the hub (a branch stays at its locked commit until `kmm lock --update ID`, as Cargo.lock does).
//!
//! The format is TOML written by hand rather than by `toml`'s serializer, so that it is
//! diff-friendly: one table per model, models sorted by id, files sorted by path, one line per
//! file. A revision bump of one model changes only that model's lines. It is read back with
//! serde (unknown keys are `E_SCHEMA`), after a one-pass reader for exactly that spelling
//! (`fast`) which a large lock needs.
//!
//! Edges: reads and writes only the lock file (atomically: temp file, fsync, rename). Deciding
//! when to write it is the CLI's job; resolving is `resolve`'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::layout::{self, Library};
use crate::manifest::{Manifest, ModelSpec};
use crate::upstream::{FileHash, UpstreamFile, is_commit_sha};

mod fast;

/// The lock's file name, beside the manifest.
pub const LOCK_FILE_NAME: &str = "kari-models.lock";
/// The format version this kmm writes and reads.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    /// Format version ([`LOCK_VERSION`]).
    pub version: u32,
    /// Keyed by repo id as declared in the manifest.
    #[serde(default)]
    pub models: BTreeMap<String, LockedModel>,
}

/// One model as resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockedModel {
    /// The revision as declared when this entry was resolved.
    pub revision: String,
    /// The commit the revision resolved to (40 hex digits).
    pub commit: String,
    /// The declared include globs (empty: all files).
    #[serde(default)]
    pub include: Vec<String>,
    /// The declared exclude globs.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The declared `library` override, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<Library>,
    /// The selected files, sorted by path.
    #[serde(default)]
    pub files: Vec<LockedFile>,
}

/// One selected file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub path: String,
    pub size: u64,
    /// sha256 of the content (LFS files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// git blob sha1 (regular files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_sha1: Option<String>,
}

/// The lock file that belongs to `manifest_path`.
pub fn path_beside(manifest_path: &Path) -> PathBuf {
    match manifest_path.parent() {
        Some(parent) => parent.join(LOCK_FILE_NAME),
        None => PathBuf::from(LOCK_FILE_NAME),
    }
}

impl LockedModel {
    /// True when this entry answers `spec` as declared now.
    pub fn is_current(&self, spec: &ModelSpec) -> bool {
        self.revision == spec.revision
            && self.include == spec.include
            && self.exclude == spec.exclude
            && self.library == spec.library
            && (!is_commit_sha(&spec.revision) || self.commit == spec.revision)
    }

    /// The files as upstream identities, checked (safe paths, hex hashes).
    pub fn upstream_files(&self, id: &str) -> Result<Vec<UpstreamFile>> {
        let mut files = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let bad = |why: String| {
                Error::schema(format!("the lock entry of `{id}` is invalid: {why}"))
                    .with_hint("run `kmm lock` to write it again")
            };
            layout::check_repo_path(&file.path).map_err(bad)?;
            let hash = FileHash::from_hex_fields(file.sha256.as_deref(), file.git_sha1.as_deref())
                .ok_or_else(|| bad(format!("`{}` has no hash", file.path)))?;
            if hash.hex().is_empty() || !hash.hex().bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("`{}` has a malformed hash", file.path)));
            }
            files.push(UpstreamFile {
                path: file.path.clone(),
                size: file.size,
                hash,
            });
        }
        files.sort();
        Ok(files)
    }
}

impl Lockfile {
    /// The lock for these resolved models, with the selection each was declared with.
    pub fn from_desired(manifest: &Manifest, desired: &[DesiredModel]) -> Lockfile {
        let mut models = BTreeMap::new();
        for model in desired {
            let library = manifest.models.get(&model.id).and_then(|spec| spec.library);
            let mut files: Vec<LockedFile> = model
                .files
                .iter()
                .map(|file| LockedFile {
                    path: file.path.clone(),
                    size: file.size,
                    sha256: file.hash.is_lfs().then(|| file.hash.hex().to_string()),
                    git_sha1: (!file.hash.is_lfs()).then(|| file.hash.hex().to_string()),
                })
                .collect();
            files.sort_by(|a, b| a.path.cmp(&b.path));
            models.insert(
                model.id.clone(),
                LockedModel {
                    revision: model.revision.clone(),
                    commit: model.commit.clone(),
                    include: model.selection.include.clone(),
                    exclude: model.selection.exclude.clone(),
                    library,
                    files,
                },
            );
        }
        Lockfile {
            version: LOCK_VERSION,
            models,
        }
    }

    /// The current entry for `spec`, if the lock has one.
    pub fn current_entry(&self, spec: &ModelSpec) -> Option<&LockedModel> {
        self.models
            .get(&spec.id)
            .filter(|entry| entry.is_current(spec))
    }

    /// Where the lock and the manifest disagree, one line per model, sorted by id: declared
    /// models without an entry or with an outdated one, and entries of undeclared models.
    pub fn mismatches(&self, manifest: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        for spec in manifest.models.values() {
            match self.models.get(&spec.id) {
                None => out.push(format!("`{}` (not in the lock)", spec.id)),
                Some(entry) if !entry.is_current(spec) => {
                    let mut what = Vec::new();
                    if entry.revision != spec.revision
                        || (is_commit_sha(&spec.revision) && entry.commit != spec.revision)
                    {
                        what.push("revision");
                    }
                    if entry.include != spec.include || entry.exclude != spec.exclude {
                        what.push("include/exclude");
                    }
                    if entry.library != spec.library {
                        what.push("library");
                    }
                    out.push(format!("`{}` ({} changed)", spec.id, what.join(", ")));
                }
                Some(_) => {}
            }
        }
        for id in self.models.keys() {
            if !manifest.models.contains_key(id) {
                out.push(format!("`{id}` (locked but no longer declared)"));
            }
        }
        out.sort();
        out
    }

    /// Reads the lock. A missing file is `Ok(None)`; anything unreadable is `E_SCHEMA` naming
    /// the file (and line and column when TOML says where).
    pub fn load(path: &Path) -> Result<Option<Lockfile>> {
        let text = match fs_err::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Error::schema(format!(
                    "{}: the lock file is not valid UTF-8",
                    path.display()
                ))
                .with_hint("delete it and run `kmm lock` to write it again"));
            }
            Err(error) => {
                return Err(Error::io(
                    format!("reading the lock file `{}`", path.display()),
                    &error,
                ));
            }
        };
        let lock = Lockfile::parse(path, &text)?;
        lock.check_values(path, &text)?;
        Ok(Some(lock))
    }

    /// Parses lock text; `path` is for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Lockfile> {
        // kmm's own spelling is read in one pass; anything else goes through TOML.
        let parsed = fast::parse(text).map_or_else(|| toml::from_str(text), Ok);
        let lock: Lockfile = parsed.map_err(|error: toml::de::Error| {
            let position = error
                .span()
                .map(|span| {
                    let (line, column) = crate::manifest::line_column(text, span.start);
                    format!(":{line}:{column}")
                })
                .unwrap_or_default();
            Error::schema(format!(
                "{}{position}: {}",
                path.display(),
                error.message().trim_end()
            ))
            .with_hint("the lock is written by kmm; delete it and run `kmm lock` to write it again")
        })?;
        if lock.version != LOCK_VERSION {
            return Err(Error::schema(format!(
                "{}: lock format version {} is not supported (this kmm reads version {LOCK_VERSION})",
                path.display(),
                lock.version
            ))
            .with_hint("run `kmm lock` with this kmm to write it again"));
        }
        Ok(lock)
    }

    /// Ids, revisions and commits become URLs and cache paths: a hand-edited lock with a
    /// hostile one is `E_SCHEMA` when the file is loaded, before any use ([`Self::parse`] stays
    /// a faithful reader of any text kmm writes) (a commit of `../../x` reached the hub; found by
    /// `reliability::hostile_lock_and_plan_files_are_e_schema_and_write_nothing`). File paths
    /// and hashes are checked where they are used ([`LockedModel::upstream_files`]).
    fn check_values(&self, path: &Path, text: &str) -> Result<()> {
        for (id, model) in &self.models {
            let problem = if let Err(why) = layout::check_repo_id(id) {
                Some((id.as_str(), format!("model id: {why}")))
            } else if let Err(why) = crate::manifest::check_revision(&model.revision) {
                Some((
                    model.revision.as_str(),
                    format!("`revision` of `{id}` {why}"),
                ))
            } else if !is_commit_sha(&model.commit) {
                Some((
                    model.commit.as_str(),
                    format!(
                        "`commit` of `{id}` is not a 40-hex commit: `{}`",
                        layout::shown(&model.commit)
                    ),
                ))
            } else {
                None
            };
            if let Some((value, message)) = problem {
                // Point at the value where it appears (quoted as the lock writes it).
                let position = text
                    .find(&quote(value))
                    .map(|offset| {
                        let (line, column) = crate::manifest::line_column(text, offset);
                        format!(":{line}:{column}")
                    })
                    .unwrap_or_default();
                return Err(Error::schema(format!("{}{position}: {message}", path.display()))
                    .with_hint("the lock is written by kmm; delete it and run `kmm lock` to write it again"));
            }
        }
        Ok(())
    }

    /// The file's text: stable, sorted, one line per file.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# kari-models.lock: written by kmm (`kmm lock`). Commit it; do not edit.\n");
        let _ = writeln!(out, "version = {}", self.version);
        for (id, model) in &self.models {
            let _ = writeln!(out, "\n[models.{}]", quote(id));
            let _ = writeln!(out, "revision = {}", quote(&model.revision));
            let _ = writeln!(out, "commit = {}", quote(&model.commit));
            let _ = writeln!(out, "include = {}", string_array(&model.include));
            let _ = writeln!(out, "exclude = {}", string_array(&model.exclude));
            if let Some(library) = model.library {
                let _ = writeln!(out, "library = {}", quote(library.as_str()));
            }
            out.push_str("files = [\n");
            for file in &model.files {
                let _ = write!(
                    out,
                    "  {{ path = {}, size = {}",
                    quote(&file.path),
                    file.size
                );
                if let Some(hex) = &file.sha256 {
                    let _ = write!(out, ", sha256 = {}", quote(hex));
                }
                if let Some(hex) = &file.git_sha1 {
                    let _ = write!(out, ", git_sha1 = {}", quote(hex));
                }
                out.push_str(" },\n");
            }
            out.push_str("]\n");
        }
        out
    }

    /// Writes the lock when its text differs from the file's; returns whether it wrote.
    pub fn save_if_changed(&self, path: &Path) -> Result<bool> {
        let text = self.to_text();
        if fs_err::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        crate::atomic_file::write(path, text.as_bytes(), "the lock file")?;
        Ok(true)
    }
}

/// A single-line TOML basic string. Written by hand: `toml`'s display picks other spellings
/// (multi-line strings for text with a newline, which TOML does not allow as a table key).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn string_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_ids_revisions_and_commits_are_schema_errors_with_positions() {
        let good = "version = 1\n\n[models.\"o/m\"]\nrevision = \"main\"\ncommit = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nfiles = []\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kari-models.lock");
        fs_err::write(&path, good).unwrap();
        Lockfile::load(&path).unwrap().unwrap();
        for (from, to, line) in [
            ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "../../etc", 5),
            ("\"main\"", "\"../../etc\"", 4),
            ("o/m", "../m", 3),
        ] {
            fs_err::write(&path, good.replace(from, to)).unwrap();
            let error = Lockfile::load(&path).unwrap_err();
            assert_eq!(error.code(), crate::error::ErrorCode::Schema, "{error}");
            let at = format!("{}:{line}:", path.display());
            assert!(error.message().starts_with(&at), "{error}");
        }
    }

    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(Path::new("/w/kari-models.toml"), text).unwrap()
    }

    fn desired(id: &str, revision: &str, commit: &str) -> DesiredModel {
        DesiredModel {
            id: id.to_string(),
            revision: revision.to_string(),
            commit: commit.to_string(),
            library: Library::Transformers,
            install_dir: format!("transformers/{id}").into(),
            files: vec![
                UpstreamFile {
                    path: "model.safetensors".into(),
                    size: 12,
                    hash: FileHash::Sha256("ab".repeat(32)),
                },
                UpstreamFile {
                    path: "config.json".into(),
                    size: 3,
                    hash: FileHash::GitSha1("cd".repeat(20)),
                },
            ],
            config_mirror: None,
            pinned: None,
            license_accepted: None,
            selection: Default::default(),
        }
    }

    const TWO: &str = "[models.\"acme/a\"]\n[models.\"acme/b\"]\nrevision = \"v1\"\n";

    #[test]
    fn text_round_trips_sorted_one_line_per_file() {
        let m = manifest(TWO);
        let lock = Lockfile::from_desired(
            &m,
            &[desired("acme/b", "v1", C2), desired("acme/a", "main", C1)],
        );
        let text = lock.to_text();
        insta::assert_snapshot!("lock_text", text);
        let back = Lockfile::parse(Path::new("x.lock"), &text).unwrap();
        assert_eq!(back, lock);
        assert!(back.mismatches(&m).is_empty());
        assert_eq!(back.models["acme/a"].upstream_files("acme/a").unwrap(), {
            let mut files = desired("acme/a", "main", C1).files;
            files.sort();
            files
        });
    }

    #[test]
    fn a_revision_bump_changes_only_that_models_lines() {
        let m = manifest(TWO);
        let before = Lockfile::from_desired(
            &m,
            &[desired("acme/a", "main", C1), desired("acme/b", "v1", C1)],
        )
        .to_text();
        let after = Lockfile::from_desired(
            &m,
            &[desired("acme/a", "main", C1), desired("acme/b", "v2", C2)],
        )
        .to_text();
        let diff = similar::TextDiff::from_lines(&before, &after);
        let changed: Vec<String> = diff
            .iter_all_changes()
            .filter(|c| c.tag() != similar::ChangeTag::Equal)
            .map(|c| format!("{}{}", c.tag(), c.value().trim_end()))
            .collect();
        assert_eq!(
            changed,
            [
                "-revision = \"v1\"".to_string(),
                format!("-commit = \"{C1}\""),
                "+revision = \"v2\"".to_string(),
                format!("+commit = \"{C2}\""),
            ]
        );
    }

    #[test]
    fn mismatches_name_every_disagreeing_model() {
        let lock = Lockfile::from_desired(
            &manifest(TWO),
            &[desired("acme/a", "main", C1), desired("acme/b", "v1", C2)],
        );
        let edited = manifest(
            "[models.\"acme/b\"]\nrevision = \"v2\"\n[models.\"acme/c\"]\n[models.\"acme/a2\"]\n",
        );
        assert_eq!(
            lock.mismatches(&edited),
            [
                "`acme/a2` (not in the lock)",
                "`acme/a` (locked but no longer declared)",
                "`acme/b` (revision changed)",
                "`acme/c` (not in the lock)",
            ]
        );
        let globs = manifest(
            TWO.replace(
                "revision = \"v1\"",
                "revision = \"v1\"\ninclude = [\"*.json\"]\nlibrary = \"llama-cpp\"",
            )
            .as_str(),
        );
        assert_eq!(
            lock.mismatches(&globs),
            ["`acme/b` (include/exclude, library changed)"]
        );
    }

    #[test]
    fn bad_locks_are_schema_errors_with_positions() {
        let error = Lockfile::parse(Path::new("k.lock"), "version = 1\nbogus = 3\n").unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::Schema);
        assert!(
            error
                .message()
                .starts_with("k.lock:2:1: unknown field `bogus`"),
            "{error}"
        );
        let error = Lockfile::parse(Path::new("k.lock"), "version = 9\n").unwrap_err();
        assert!(error.message().contains("version 9"), "{error}");
        let unsafe_path = format!(
            "version = 1\n[models.\"a/b\"]\nrevision = \"main\"\ncommit = \"{C1}\"\nfiles = [{{ path = \"../x\", size = 1, sha256 = \"ab\" }}]\n"
        );
        let lock = Lockfile::parse(Path::new("k.lock"), &unsafe_path).unwrap();
        let error = lock.models["a/b"].upstream_files("a/b").unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::Schema);
    }

    #[test]
    fn save_writes_only_on_change_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE_NAME);
        assert_eq!(Lockfile::load(&path).unwrap(), None);
        let lock = Lockfile::from_desired(&manifest(TWO), &[desired("acme/a", "main", C1)]);
        assert!(lock.save_if_changed(&path).unwrap());
        assert!(!lock.save_if_changed(&path).unwrap());
        assert_eq!(Lockfile::load(&path).unwrap(), Some(lock));
        assert_eq!(path_beside(&dir.path().join("kari-models.toml")), path);
    }
}
