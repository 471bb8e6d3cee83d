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

use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::upstream::FileHash;

/// The whole registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub models: BTreeMap<String, Record>,
}

/// One installed model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The include/exclude globs the files were selected with, so that a later plan knows
    /// whether `files` still answers the manifest without asking the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// Fields kmm does not know, preserved on rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A model's include/exclude globs as declared.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
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
    /// The file's modification time when kmm installed or checked it (nanoseconds since the
    /// Unix epoch): a later plan re-hashes a file whose mtime moved, so an in-place edit shows
    /// without hashing the whole store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RecordFile {
    /// The upstream hash recorded for this file, if any (sha256 wins: LFS files have both).
    pub fn hash(&self) -> Option<FileHash> {
        FileHash::from_hex_fields(self.sha256.as_deref(), self.git_sha1.as_deref())
    }
}

/// What a user can do about a registry kmm cannot read.
const UNREADABLE_HINT: &str = "kmm left the file untouched; fix it, or move it away and kmm starts with an empty registry (files already on disk are checked again before anything is downloaded)";

impl Registry {
    /// Loads the registry. A missing file is an empty registry; a file that is not valid JSON
    /// of the expected shape is `E_SCHEMA` naming the file, line and column (never overwritten).
    pub fn load(path: &Path) -> Result<Registry> {
        let bytes = match fs_err::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Registry::default());
            }
            Err(error) => {
                return Err(Error::io(
                    format!("reading the registry `{}`", path.display()),
                    &error,
                ));
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::schema(format!(
                "{}:1:1: the registry is empty; expected a JSON object of model records",
                path.display()
            ))
            .with_hint(UNREADABLE_HINT));
        }
        let record_error_at = std::cell::Cell::new(None);
        // Syntax first, so its errors keep serde_json's exact position; then the shape,
        // record by record, so a bad record is named.
        let models = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .and_then(|_| {
                let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
                serde::Deserializer::deserialize_map(
                    &mut deserializer,
                    ModelsVisitor {
                        record_error_at: &record_error_at,
                    },
                )
            })
            .map_err(|error| {
                let full = error.to_string();
                let (text, _) = split_position(&full);
                let (line, column) = record_error_at
                    .get()
                    .unwrap_or((error.line(), error.column()));
                Error::schema(format!(
                    "{}:{}:{}: {text}",
                    path.display(),
                    line.max(1),
                    column.max(1)
                ))
                .with_hint(UNREADABLE_HINT)
            })?;
        Ok(Registry { models })
    }

    /// Writes the registry atomically and durably. I/O failures are `E_DISK`/`E_PERM`.
    ///
    /// The text is pretty JSON (2-space indent, ids sorted, trailing newline). It goes to a
    /// temporary file in the same folder, which is fsynced and renamed over `path`; then the
    /// folder is fsynced so the rename survives a crash. A failure at any step leaves the old
    /// file as it was. An existing file's permissions are kept.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(&self.models)
            .map_err(|error| Error::internal(format!("serializing the registry: {error}")))?;
        text.push('\n');

        crate::atomic_file::write(path, text.as_bytes(), "the registry")
    }
}

/// License acceptances recorded by `kmm license --accept` for models that have no record yet
/// (the seed's registry has room only for installed models, and a record without files would
/// read as an installed model to the seed and to `plan`). They live beside the registry in
/// `models/.kmm/licenses.json` as `{"<id>": {user_id, license_type, accepted_at}}`; resolution
/// reads them like a record's `license_accepted`, and the install copies the acceptance into the
/// model's record, where it stays.
pub fn pending_licenses_file(models_dir: &Path) -> std::path::PathBuf {
    models_dir.join(".kmm").join("licenses.json")
}

/// Loads [`pending_licenses_file`]; missing means none. Malformed: `E_SCHEMA`.
pub fn load_pending_licenses(path: &Path) -> Result<BTreeMap<String, serde_json::Value>> {
    match fs_err::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            Error::schema(format!("{}: {error}", path.display()))
                .with_hint("fix the file or move it away (it only holds license acceptances)")
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(Error::io(format!("reading `{}`", path.display()), &error)),
    }
}

/// Writes [`pending_licenses_file`] atomically and durably (temp file, fsync, rename, fsync the
/// folder). Callers hold the store lock.
pub fn save_pending_licenses(
    path: &Path,
    pending: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    let failed = |error: &std::io::Error| Error::io(format!("writing `{}`", path.display()), error);
    let folder = path.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(folder).map_err(|error| failed(&error))?;
    let mut text = serde_json::to_string_pretty(pending)
        .map_err(|error| Error::internal(format!("serializing license acceptances: {error}")))?;
    text.push('\n');
    crate::atomic_file::write(path, text.as_bytes(), "the license acceptances")
}

impl Registry {
    /// This registry with `pending` acceptances added where a model has none, for resolution
    /// only: a model without record gets a record holding just `license_accepted`, which
    /// resolution reads as a hint. Never save the result.
    pub fn with_pending_licenses(
        mut self,
        pending: &BTreeMap<String, serde_json::Value>,
    ) -> Registry {
        for (id, acceptance) in pending {
            let record = self.models.entry(id.clone()).or_insert_with(|| Record {
                model_id: id.clone(),
                ..Record::default()
            });
            if record.license_accepted.is_none() {
                record.license_accepted = Some(acceptance.clone());
            }
        }
        self
    }
}

/// Splits serde_json's `"<message> at line L column C"` into the message and the position.
fn split_position(text: &str) -> (&str, Option<(usize, usize)>) {
    let Some(start) = text.rfind(" at line ") else {
        return (text, None);
    };
    let mut numbers = text[start + " at line ".len()..].split(" column ");
    let line = numbers.next().and_then(|line| line.parse().ok());
    let column = numbers.next().and_then(|column| column.parse().ok());
    match (line, column, numbers.next()) {
        (Some(line), Some(column), None) => (&text[..start], Some((line, column))),
        _ => (text, None),
    }
}

/// Reads the top-level object record by record, so a bad record is named in the error.
struct ModelsVisitor<'a> {
    /// Where inside the record the error was; serde_json would report the record's end.
    record_error_at: &'a std::cell::Cell<Option<(usize, usize)>>,
}

impl<'de> Visitor<'de> for ModelsVisitor<'_> {
    type Value = BTreeMap<String, Record>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object mapping model ids to records")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut models = BTreeMap::new();
        while let Some(id) = map.next_key::<String>()? {
            let mut record = map.next_value::<Record>().map_err(|error| {
                let text = error.to_string();
                let (message, position) = split_position(&text);
                self.record_error_at.set(position);
                A::Error::custom(format!("record `{}`: {message}", crate::layout::shown(&id)))
            })?;
            // A list grown by doubling keeps up to half its room unused: for a store of
            // 200,000 files that is tens of MB of a plan's peak memory.
            record.files.shrink_to_fit();
            models.insert(id, record);
        }
        Ok(models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    /// A registry as the Python seed tool wrote it (`json.dump(..., indent=2)`), plus fields
    /// kmm does not know at the record and at the file level.
    const SEED_REGISTRY: &str = r#"{
  "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
    "model_id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "library": "llama-cpp",
    "revision": "main",
    "installed_at": "2025-09-01T12:34:56Z",
    "install_path": "/abs/path/models/llama-cpp/TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "files": [
      {
        "path": "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        "size": 123456789,
        "lfs": {"oid": "abc"},
        "blob_id": null
      }
    ],
    "total_size": 123456789,
    "pinned": true,
    "license_accepted": {"accepted": true, "user_id": "admin@kari", "license_type": "other", "at": "2025-09-01"},
    "last_accessed": "2025-09-02T00:00:00Z",
    "compat": {"ram_gb": 2.5, "warnings": ["no GPU"]},
    "source": "hf"
  },
  "distilbert-base-uncased": {
    "model_id": "distilbert-base-uncased",
    "library": "transformers",
    "revision": null,
    "installed_at": "2025-08-01T00:00:00Z",
    "install_path": "/abs/path/models/distilbert-base-uncased",
    "files": [
      {"path": "config.json", "size": 483},
      {"path": "model.safetensors", "size": 267954768}
    ],
    "total_size": 267955251
  }
}
"#;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("model_registry.json");
        fs_err::write(&path, text).unwrap();
        path
    }

    #[test]
    fn missing_file_is_an_empty_registry() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(&dir.path().join("model_registry.json")).unwrap();
        assert_eq!(registry, Registry::default());
        // Even in a folder that does not exist yet (a fresh store).
        let registry = Registry::load(&dir.path().join("models/model_registry.json")).unwrap();
        assert!(registry.models.is_empty());
    }

    #[test]
    fn reads_the_seed_shape() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::load(&write(dir.path(), SEED_REGISTRY)).unwrap();
        let tiny = &registry.models["TinyLlama/TinyLlama-1.1B-Chat-v1.0"];
        assert_eq!(tiny.library, "llama-cpp");
        assert_eq!(tiny.revision.as_deref(), Some("main"));
        assert_eq!(tiny.pinned, Some(true));
        assert_eq!(tiny.total_size, 123456789);
        assert_eq!(tiny.files[0].size, 123456789);
        assert_eq!(tiny.files[0].hash(), None);
        assert_eq!(tiny.extra["source"], json!("hf"));
        assert_eq!(tiny.extra["compat"]["warnings"], json!(["no GPU"]));
        assert_eq!(tiny.files[0].extra["lfs"], json!({"oid": "abc"}));
        assert_eq!(tiny.files[0].extra["blob_id"], json!(null));
        let distilbert = &registry.models["distilbert-base-uncased"];
        assert_eq!(distilbert.revision, None);
        assert_eq!(distilbert.commit, None);
        assert_eq!(distilbert.files.len(), 2);
    }

    #[test]
    fn load_then_save_keeps_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), SEED_REGISTRY);
        let registry = Registry::load(&path).unwrap();
        registry.save(&path).unwrap();
        let before: serde_json::Value = serde_json::from_str(SEED_REGISTRY).unwrap();
        let after: serde_json::Value =
            serde_json::from_str(&fs_err::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(before, after);
        assert_eq!(Registry::load(&path).unwrap(), registry);
    }

    #[test]
    fn saves_pretty_sorted_with_a_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model_registry.json");
        let mut registry = Registry::default();
        for id in ["zeta/m", "alpha/m", "gpt2"] {
            registry.models.insert(
                id.to_string(),
                Record {
                    model_id: id.to_string(),
                    library: "transformers".to_string(),
                    revision: Some("main".to_string()),
                    installed_at: None,
                    install_path: format!("/models/transformers/{id}"),
                    files: vec![RecordFile {
                        path: "config.json".to_string(),
                        size: 2,
                        sha256: None,
                        git_sha1: Some("ABCDEF".to_string()),
                        mtime_ns: None,
                        extra: Default::default(),
                    }],
                    total_size: 2,
                    commit: Some("e7da7f221d5bf496a48136c0cd264e630fe9fcc8".to_string()),
                    pinned: None,
                    license_accepted: None,
                    last_accessed: None,
                    selection: None,
                    extra: Default::default(),
                },
            );
        }
        registry.save(&path).unwrap();
        let text = fs_err::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n") && !text.ends_with("\n\n"), "{text}");
        assert!(
            text.starts_with("{\n  \"alpha/m\": {\n    \"model_id\": \"alpha/m\",\n"),
            "{text}"
        );
        let order: Vec<usize> = ["\"alpha/m\"", "\"gpt2\"", "\"zeta/m\""]
            .iter()
            .map(|id| text.find(id).unwrap())
            .collect();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{text}");
        // Unset optional fields are left out, not written as null.
        assert!(
            !text.contains("pinned") && !text.contains("sha256"),
            "{text}"
        );
        // Saving what was loaded gives the same bytes.
        Registry::load(&path).unwrap().save(&path).unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), text);
        // No temporary files are left behind.
        let names: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model_registry.json"]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn save_keeps_the_permissions_of_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "{}");
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        Registry::default().save(&path).unwrap();
        assert_eq!(fs_err::read_to_string(&path).unwrap(), "{}\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs_err::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn hash_prefers_sha256() {
        let file = |sha256: Option<&str>, git_sha1: Option<&str>| RecordFile {
            path: "x".to_string(),
            size: 1,
            sha256: sha256.map(str::to_string),
            git_sha1: git_sha1.map(str::to_string),
            mtime_ns: None,
            extra: Default::default(),
        };
        assert_eq!(
            file(Some("AB"), Some("cd")).hash(),
            Some(FileHash::Sha256("ab".to_string()))
        );
        assert_eq!(
            file(None, Some("cd")).hash(),
            Some(FileHash::GitSha1("cd".to_string()))
        );
        assert_eq!(file(None, None).hash(), None);
    }

    /// Loads `text` expecting `E_SCHEMA`; checks the file is untouched; returns the message.
    fn load_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), text);
        let error = Registry::load(&path).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema, "{error}");
        assert!(error.hint().unwrap().contains("left the file untouched"));
        assert_eq!(fs_err::read_to_string(&path).unwrap(), text);
        let prefix = format!("{}:", path.display());
        error.message().strip_prefix(&prefix).unwrap().to_string()
    }

    #[test]
    fn unreadable_registries_are_schema_errors_with_positions() {
        assert_eq!(
            load_error(""),
            "1:1: the registry is empty; expected a JSON object of model records"
        );
        assert_eq!(
            load_error(" \n\t"),
            "1:1: the registry is empty; expected a JSON object of model records"
        );
        assert_eq!(load_error("{\n  \"a\": {,\n}"), "2:9: key must be a string");
        assert_eq!(load_error("{\"a\": 1,}"), "1:9: key must be a string");
        assert_eq!(
            load_error("[]"),
            "1:1: invalid type: sequence, expected a JSON object mapping model ids to records"
        );
        assert_eq!(load_error("{} {}"), "1:4: trailing characters");
        let message = load_error(
            "{\n  \"org/m\": {\n    \"model_id\": \"org/m\",\n    \"library\": \"transformers\"\n  }\n}\n",
        );
        assert!(
            message.starts_with("5:3: record `org/m`: missing field `install_path`"),
            "{message}"
        );
        let message = load_error(
            "{\"org/m\": {\"model_id\": \"org/m\", \"library\": \"t\", \"install_path\": \"/x\",\n \"files\": [{\"path\": \"a\", \"size\": \"12\"}]}}",
        );
        assert!(
            message.starts_with("2:")
                && message.contains("record `org/m`: invalid type: string \"12\", expected u64"),
            "{message}"
        );
        let message = load_error("{\"org/m\": 3}");
        assert!(
            message.contains("record `org/m`: invalid type: integer `3`"),
            "{message}"
        );
    }

    #[test]
    fn a_failed_save_leaves_the_old_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::load(&write(dir.path(), SEED_REGISTRY)).unwrap();
        registry.models.clear();

        // The registry path is a folder: the final rename fails.
        let folder_path = dir.path().join("folder");
        fs_err::create_dir(&folder_path).unwrap();
        fs_err::write(folder_path.join("keep"), "old").unwrap();
        let error = registry.save(&folder_path).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Disk, "{error}");
        assert!(error.message().contains("writing the registry"), "{error}");
        assert_eq!(
            fs_err::read_to_string(folder_path.join("keep")).unwrap(),
            "old"
        );

        // The parent is a file: the temporary file cannot even be created.
        let registry_file = dir.path().join("model_registry.json");
        let error = registry
            .save(&registry_file.join("model_registry.json"))
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::Disk, "{error}");
        assert_eq!(
            fs_err::read_to_string(&registry_file).unwrap(),
            SEED_REGISTRY
        );

        // Nothing but what was there before.
        let mut names: Vec<_> = fs_err::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["folder", "model_registry.json"]);
    }

    #[test]
    fn json_schema_declares_the_record_fields() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/model_registry.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap();
        let keys = |pointer: &str| -> Vec<String> {
            let mut keys: Vec<String> = schema
                .pointer(pointer)
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        let file = RecordFile {
            path: "p".to_string(),
            size: 1,
            sha256: Some("ab".to_string()),
            git_sha1: Some("cd".to_string()),
            mtime_ns: None,
            extra: Default::default(),
        };
        let record = Record {
            model_id: "m".to_string(),
            library: "transformers".to_string(),
            revision: Some("main".to_string()),
            installed_at: Some("t".to_string()),
            install_path: "/m".to_string(),
            files: vec![file.clone()],
            total_size: 1,
            commit: Some("c".to_string()),
            pinned: Some(true),
            license_accepted: Some(json!({})),
            last_accessed: Some("t".to_string()),
            selection: Some(Selection::default()),
            extra: Default::default(),
        };
        let fields = |value: serde_json::Value| -> Vec<String> {
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys("/$defs/record/properties"),
            fields(serde_json::to_value(&record).unwrap())
        );
        assert_eq!(
            keys("/$defs/file/properties"),
            fields(serde_json::to_value(&file).unwrap())
        );
        // Exactly the fields without a default are required.
        assert_eq!(
            schema.pointer("/$defs/record/required").unwrap(),
            &json!(["model_id", "library", "install_path"])
        );
        assert!(
            serde_json::from_value::<Record>(
                json!({"model_id": "m", "library": "l", "install_path": "/"})
            )
            .is_ok()
        );
        assert_eq!(
            schema.pointer("/$defs/file/required").unwrap(),
            &json!(["path", "size"])
        );
    }
}
