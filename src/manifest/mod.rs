//! `kari-models.toml`: parse and validate the desired state.
//!
//! Syntax errors, unknown keys, bad repo ids, bad globs and bad values are `E_SCHEMA` errors that
//! name the file, line and column (`kari-models.toml:12:5: unknown key ...`). Paths inside the
//! manifest (`models_dir`) are relative to the manifest's folder. The JSON Schema of this file
//! is `schemas/kari-models.schema.json`; a unit test (in `checker`) keeps its key sets equal to
//! the `*_KEYS` constants here.
//!
//! This module holds the parsed types, the accepted keys and limits, and the entry points
//! ([`Manifest::load`], [`Manifest::parse`]). Its parts:
//! - `tree`: the `toml_edit` document turned into a small tree that keeps every span;
//! - `checker`: walks that tree into a [`Manifest`], with a positioned error for the first problem;
//! - `values`: the revision and endpoint rules (the revision one also checks `--revision` and the lock);
//! - `selection`: include/exclude globs ([`FileSelection`]).
//!
//! Edges: reads only the manifest file; never touches the network or the store.

mod checker;
mod selection;
mod tree;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::Library;

pub use selection::FileSelection;
pub use values::{check_endpoint, check_revision};

/// Keys of the top level.
pub const TOP_LEVEL_KEYS: [&str; 3] = ["settings", "models", "baselines"];
/// Keys of `[settings]`.
pub const SETTINGS_KEYS: [&str; 8] = [
    "models_dir",
    "endpoint",
    "max_workers",
    "quota_gb",
    "prune",
    "offline",
    "shared_store",
    "require_shared_store",
];
/// Keys of `[models."owner/name"]`.
pub const MODEL_KEYS: [&str; 7] = [
    "revision",
    "include",
    "exclude",
    "library",
    "pinned",
    "license",
    "max_size_gb",
];
/// Keys of a model's `license = { ... }` table.
pub const LICENSE_KEYS: [&str; 3] = ["accepted", "user_id", "license_type"];
/// Keys of `[baselines]`.
pub const BASELINE_KEYS: [&str; 3] = ["distilbert", "spacy", "basic_cls"];

/// Largest `max_workers` accepted: more parallel connections than this only gets a client
/// rate-limited by the hub or a mirror.
pub const MAX_WORKERS_LIMIT: usize = 256;
/// Longest revision accepted (git ref names and commit ids are far shorter).
pub const MAX_REVISION_LEN: usize = 255;

/// The default revision when a model names none.
pub const DEFAULT_REVISION: &str = "main";

/// The parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest file as given.
    pub path: PathBuf,
    pub settings: Settings,
    /// Keyed by repo id as declared; sorted.
    pub models: BTreeMap<String, ModelSpec>,
    pub baselines: Baselines,
}

/// `[settings]`. `None` means "not set here" so flags and environment can take precedence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// Already joined to the manifest's folder when relative.
    pub models_dir: Option<PathBuf>,
    /// An `http(s)` URL without credentials, query or fragment; trailing `/` removed.
    pub endpoint: Option<String>,
    pub max_workers: Option<usize>,
    pub quota_gb: Option<f64>,
    pub prune: bool,
    pub offline: Option<bool>,
    /// `s3://BUCKET/PREFIX` of the fleet's shared tier (checked when settings resolve).
    pub shared_store: Option<String>,
    pub require_shared_store: Option<bool>,
}

/// `[models."owner/name"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub id: String,
    /// Branch, tag, `refs/pr/N` or 40-hex commit; default `main`.
    pub revision: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub library: Option<Library>,
    pub pinned: Option<bool>,
    pub license: Option<LicenseAcceptance>,
    /// Refuse the model if its selected files exceed this many GB (10^9 bytes).
    pub max_size_gb: Option<f64>,
}

impl ModelSpec {
    /// A spec with every optional key unset (revision `main`, all files).
    pub fn new(id: impl Into<String>) -> ModelSpec {
        ModelSpec {
            id: id.into(),
            revision: DEFAULT_REVISION.to_string(),
            include: Vec::new(),
            exclude: Vec::new(),
            library: None,
            pinned: None,
            license: None,
            max_size_gb: None,
        }
    }

    /// The compiled include/exclude globs of this model.
    pub fn selection(&self) -> Result<FileSelection> {
        FileSelection::new(&self.include, &self.exclude)
    }
}

/// `license = { accepted = true, user_id = "...", license_type = "..." }`.
/// A missing `accepted` means `false`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LicenseAcceptance {
    pub accepted: bool,
    pub user_id: Option<String>,
    pub license_type: Option<String>,
}

/// `[baselines]`: what `kmm ensure` and every `kmm apply` produce besides the declared models (see [`crate::baselines`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baselines {
    pub distilbert: bool,
    pub spacy: bool,
    pub basic_cls: bool,
}

impl Manifest {
    /// Reads and parses `path`. A missing file is `E_NOT_FOUND` with a hint to create one.
    pub fn load(path: &Path) -> Result<Manifest> {
        let bytes = match fs_err::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "manifest `{}` not found",
                    path.display()
                ))
                .with_hint(
                    "create kari-models.toml (see the example in the kmm README) or pass --manifest",
                ));
            }
            // The path came from the user (`--manifest`, `KMM_MANIFEST`): a folder or a name
            // the OS cannot take is a usage error, not a disk failure.
            Err(error) if error.kind() == std::io::ErrorKind::IsADirectory || path.is_dir() => {
                return Err(Error::args(format!(
                    "the manifest path `{}` is a folder",
                    path.display()
                ))
                .with_hint(format!(
                    "pass the manifest file, e.g. `--manifest {}`",
                    path.join("kari-models.toml").display()
                )));
            }
            Err(error) if error.kind() == std::io::ErrorKind::InvalidFilename => {
                return Err(Error::args(format!(
                    "the manifest path is longer than the OS allows ({} bytes; a name may have 255, a path 4096)",
                    path.as_os_str().len()
                ))
                .with_hint("pass a shorter --manifest path"));
            }
            Err(error) => {
                return Err(Error::io(
                    format!("reading the manifest `{}`", path.display()),
                    &error,
                ));
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
                // Valid by construction: the prefix before the first bad byte.
                let prefix = std::str::from_utf8(valid).unwrap_or_default();
                let (line, column) = line_column(prefix, prefix.len());
                return Err(Error::schema(format!(
                    "{}:{line}:{column}: the manifest is not valid UTF-8",
                    path.display()
                ))
                .with_hint("save the file as UTF-8"));
            }
        };
        Manifest::parse(path, &text)
    }

    /// Parses manifest text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
        checker::parse(path, text)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn load_reports_missing_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kari-models.toml");
        let error = Manifest::load(&missing).unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound);
        assert!(error.message().contains("kari-models.toml"), "{error}");
        assert_eq!(
            error.hint(),
            Some("create kari-models.toml (see the example in the kmm README) or pass --manifest")
        );

        fs_err::write(&missing, b"[settings]\nmodels_dir = \"m\xff\"\n").unwrap();
        let error = Manifest::load(&missing).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert_eq!(
            error.message(),
            format!(
                "{}:2:16: the manifest is not valid UTF-8",
                missing.display()
            )
        );

        fs_err::write(&missing, "[settings]\nmodels_dir = \"store\"\n").unwrap();
        let manifest = Manifest::load(&missing).unwrap();
        assert_eq!(manifest.settings.models_dir, Some(dir.path().join("store")));

        // A folder where the file should be is a usage error (the path is the user's), not
        // "not found" and not a disk failure.
        let error = Manifest::load(dir.path()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Args, "{error}");
    }

    #[test]
    fn line_column_counts_characters() {
        let text = "ab\nçd\n\nx";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 2)); // after the 2-byte ç
        assert_eq!(line_column(text, 4), (2, 1)); // inside ç: rounds down
        assert_eq!(line_column(text, 8), (4, 1));
        assert_eq!(line_column(text, 999), (4, 2));
    }
}
