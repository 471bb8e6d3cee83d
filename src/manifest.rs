//! `kari-models.toml`: parse and validate the desired state.
//!
//! Syntax errors, unknown keys, bad repo ids, bad globs and bad values are `E_SCHEMA` errors that
//! name the file, line and column (`kari-models.toml:12:5: unknown key ...`). Paths inside the
//! manifest (`models_dir`) are relative to the manifest's folder. The JSON Schema of this file
//! is `schemas/kari-models.schema.json`.
//!
//! Edges: reads only the manifest file; never touches the network or the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::layout::Library;

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
    pub endpoint: Option<String>,
    pub max_workers: Option<usize>,
    pub quota_gb: Option<f64>,
    pub prune: bool,
    pub offline: Option<bool>,
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

/// `license = { accepted = true, user_id = "...", license_type = "..." }`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LicenseAcceptance {
    pub accepted: bool,
    pub user_id: Option<String>,
    pub license_type: Option<String>,
}

/// `[baselines]` (implemented by a later issue; parsed and validated now).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baselines {
    pub distilbert: bool,
    pub spacy: bool,
    pub basic_cls: bool,
}

impl Manifest {
    /// Reads and parses `path`. A missing file is `E_NOT_FOUND` with a hint to create one.
    pub fn load(path: &Path) -> Result<Manifest> {
        todo!("{path:?}")
    }

    /// Parses manifest text; `path` is used for messages and to resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
        todo!("{path:?} {text}")
    }
}

/// Include/exclude globs compiled once (globset; `*` also matches `/`, as `fnmatch` in
/// huggingface_hub does; a pattern ending in `/` matches everything below it).
#[derive(Debug, Clone)]
pub struct FileSelection {
    _private: (),
}

impl FileSelection {
    /// Compiles the spec's globs. Bad globs are `E_SCHEMA`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<FileSelection> {
        todo!("{include:?} {exclude:?}")
    }

    /// True when `path` is included (no include globs = everything) and not excluded.
    pub fn matches(&self, path: &str) -> bool {
        todo!("{path}")
    }
}
