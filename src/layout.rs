//! Routing rules: where a model's files live inside the models directory.
//!
//! The seed's rules, unchanged (DESIGN.md "Layout"): any `*.gguf` among the selected files ->
//! `llama-cpp/<owner>/<repo>/`; else `transformers/<owner>/<repo>/` (a plain id without owner:
//! `transformers/<id>/`); `distilbert-base-uncased` -> `distilbert-base-uncased/`; a
//! `config.json` is mirrored to `configs/<repo>.json`; a `library` override wins over content.
//! Also the validation of repo ids and of repo paths coming from a (possibly hostile) hub.
//!
//! Edges: pure functions, no I/O. Paths returned are relative to the models directory.

use std::path::PathBuf;

use crate::upstream::UpstreamFile;

/// Which runtime a model is laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Library {
    #[serde(rename = "llama-cpp")]
    LlamaCpp,
    #[serde(rename = "transformers")]
    Transformers,
}

impl Library {
    pub fn as_str(self) -> &'static str {
        todo!()
    }
    /// Parses `llama-cpp` or `transformers`.
    pub fn parse(text: &str) -> Option<Library> {
        todo!("{text}")
    }
}

/// Where a model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub library: Library,
    /// Folder relative to the models directory, e.g. `llama-cpp/TheBloke/TinyLlama-GGUF`.
    pub install_dir: PathBuf,
}

/// Routes `model_id` (as declared) given the files that will be installed.
pub fn route(model_id: &str, library: Option<Library>, files: &[UpstreamFile]) -> Route {
    todo!("{model_id} {library:?} {files:?}")
}

/// `configs/<repo>.json` for `owner/repo` or a plain `repo` id.
pub fn config_mirror_path(model_id: &str) -> PathBuf {
    todo!("{model_id}")
}

/// Checks a Hugging Face repo id: `name` or `owner/name`, each part 1-96 chars of
/// `[A-Za-z0-9._-]`, not starting/ending with `.` or `-`, no `--` or `..`.
/// The error says what is wrong.
pub fn check_repo_id(id: &str) -> Result<(), String> {
    todo!("{id}")
}

/// Checks a path inside a repository as listed by the hub before kmm ever joins it to a local
/// folder: relative, `/`-separated, no empty/`.`/`..` segments, no backslash, NUL or control
/// characters, each segment at most 255 bytes and the whole at most 4096.
pub fn check_repo_path(path: &str) -> Result<(), String> {
    todo!("{path}")
}
