//! `models/model_registry.json`: the record of what is installed.
//!
//! The seed's shape, kept compatible: a top-level map `"<id as declared>" -> record` with
//! `model_id, library, revision, installed_at, install_path, files[{path,size}], total_size`,
//! plus optional fields kmm adds (`commit`, per-file `sha256`/`git_sha1`, `pinned`,
//! `license_accepted`, `last_accessed`). Fields kmm does not know, at any level, are kept on
//! rewrite. Saves are atomic (temp file in the same folder, fsync, rename, fsync the folder).
//!
//! Edges: reads and writes only the registry file; callers hold the store lock while saving.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::upstream::FileHash;

/// The whole registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub models: BTreeMap<String, Record>,
}

/// One installed model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub model_id: String,
    pub library: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub installed_at: Option<String>,
    pub install_path: String,
    #[serde(default)]
    pub files: Vec<RecordFile>,
    #[serde(default)]
    pub total_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license_accepted: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accessed: Option<String>,
    /// Fields kmm does not know, preserved on rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One installed file of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordFile {
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_sha1: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RecordFile {
    /// The upstream hash recorded for this file, if any.
    pub fn hash(&self) -> Option<FileHash> {
        todo!()
    }
}

impl Registry {
    /// Loads the registry. A missing file is an empty registry; a file that is not valid JSON
    /// of the expected shape is `E_SCHEMA` naming the file, line and column (never overwritten).
    pub fn load(path: &Path) -> Result<Registry> {
        todo!("{path:?}")
    }

    /// Writes the registry atomically and durably. I/O failures are `E_DISK`/`E_PERM`.
    pub fn save(&self, path: &Path) -> Result<()> {
        todo!("{path:?}")
    }
}
