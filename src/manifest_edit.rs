//! Edits `kari-models.toml` for `kmm download --save`: adds or updates one `[models."<id>"]`
//! table and keeps every other byte of the file (comments, blank lines, key order, quoting)
//! as it was, through `toml_edit`'s format-preserving document.
//!
//! Only the keys the user gave are written; keys already in the table that the user did not
//! give stay. The result is parsed with [`crate::manifest::Manifest::parse`] before anything is
//! written, so `--save` never leaves a manifest kmm would refuse; the file is replaced through a
//! temp file and a rename.
//!
//! Edges: writes only the manifest file it is given; never called by `plan`/`apply`.

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, value};

use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// The keys of one model to write; `None`/empty means "leave as it is".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    pub revision: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub library: Option<String>,
}

/// Adds or updates `entry` in the manifest at `path` (created when missing). Returns whether the
/// file was created.
pub fn save_model(path: &Path, entry: &ModelEntry) -> Result<bool> {
    let (text, created) = match fs_err::read_to_string(path) {
        Ok(text) => (text, false),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
        Err(error) => {
            return Err(Error::io(
                format!("reading the manifest `{}`", path.display()),
                &error,
            ));
        }
    };
    let updated = edit(&text, entry)
        .map_err(|error| error.context(format!("updating the manifest `{}`", path.display())))?;
    Manifest::parse(path, &updated)?;
    crate::atomic_file::write(path, updated.as_bytes(), "the manifest")?;
    Ok(created)
}

/// The text with `entry` added or updated.
pub fn edit(text: &str, entry: &ModelEntry) -> Result<String> {
    let mut document: DocumentMut = text.parse().map_err(|error: toml_edit::TomlError| {
        Error::schema(format!(
            "the manifest is not valid TOML: {}",
            error.message()
        ))
    })?;
    let root = document.as_table_mut();
    if !root.contains_key("models") {
        let mut models = Table::new();
        // `[models."id"]` headers only, no bare `[models]` line.
        models.set_implicit(true);
        root.insert("models", Item::Table(models));
    }
    let models = root["models"]
        .as_table_mut()
        .ok_or_else(|| Error::schema("`models` in the manifest is not a table"))?;
    if !models.contains_key(&entry.id) {
        models.insert(&entry.id, Item::Table(Table::new()));
    }
    let model = models[entry.id.as_str()]
        .as_table_like_mut()
        .ok_or_else(|| Error::schema(format!("`models.\"{}\"` is not a table", entry.id)))?;
    if let Some(revision) = &entry.revision {
        set(model, "revision", value(revision.as_str()));
    }
    if !entry.include.is_empty() {
        set(model, "include", value(array(&entry.include)));
    }
    if !entry.exclude.is_empty() {
        set(model, "exclude", value(array(&entry.exclude)));
    }
    if let Some(library) = &entry.library {
        set(model, "library", value(library.as_str()));
    }
    Ok(document.to_string())
}

/// Sets `key`, keeping the spacing and trailing comment of a value it replaces
/// (`include = [...]  # why` keeps `# why`).
fn set(table: &mut dyn toml_edit::TableLike, key: &str, mut item: Item) {
    if let (Some(old), Some(new)) = (table.get(key).and_then(Item::as_value), item.as_value_mut()) {
        *new.decor_mut() = old.decor().clone();
    }
    table.insert(key, item);
}

fn array(items: &[String]) -> Array {
    items.iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"# The models of the demo box.
[settings]
max_workers = 4   # keep the uplink usable

# Chat model, pinned.
[models."TheBloke/TinyLlama"]
revision = "main"
include = ["*Q4_K_M*"]  # only the 4-bit file
pinned = true
"#;

    fn entry(id: &str) -> ModelEntry {
        ModelEntry {
            id: id.to_string(),
            ..ModelEntry::default()
        }
    }

    #[test]
    fn adding_a_model_keeps_every_byte_before_it() {
        let mut new = entry("acme/tiny-bert");
        new.revision = Some("v1.0".into());
        new.exclude = vec!["*.bin".into()];
        let text = edit(MANIFEST, &new).unwrap();
        assert!(text.starts_with(MANIFEST), "{text}");
        assert!(
            text.ends_with(
                "[models.\"acme/tiny-bert\"]\nrevision = \"v1.0\"\nexclude = [\"*.bin\"]\n"
            ),
            "{text}"
        );
        let manifest = Manifest::parse(Path::new("k.toml"), &text).unwrap();
        assert_eq!(manifest.models["acme/tiny-bert"].revision, "v1.0");
    }

    #[test]
    fn updating_a_model_changes_only_the_given_keys() {
        let mut update = entry("TheBloke/TinyLlama");
        update.include = vec!["*Q8*".into()];
        update.revision = Some("0123456789abcdef0123456789abcdef01234567".into());
        let text = edit(MANIFEST, &update).unwrap();
        assert_eq!(
            text,
            MANIFEST
                .replace(
                    "revision = \"main\"",
                    "revision = \"0123456789abcdef0123456789abcdef01234567\""
                )
                .replace("[\"*Q4_K_M*\"]", "[\"*Q8*\"]")
        );
    }

    #[test]
    fn an_empty_file_gets_a_table_without_a_bare_models_header() {
        let text = edit("", &entry("gpt2")).unwrap();
        assert_eq!(text.trim(), "[models.gpt2]");
        assert!(
            Manifest::parse(Path::new("k.toml"), &text)
                .unwrap()
                .models
                .contains_key("gpt2")
        );
    }

    #[test]
    fn save_refuses_to_write_a_manifest_kmm_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kari-models.toml");
        fs_err::write(&path, MANIFEST).unwrap();
        let mut bad = entry("acme/m");
        bad.library = Some("pytorch".into());
        assert_eq!(
            save_model(&path, &bad).unwrap_err().code(),
            crate::ErrorCode::Schema
        );
        assert_eq!(fs_err::read_to_string(&path).unwrap(), MANIFEST);
        assert!(save_model(&dir.path().join("new.toml"), &entry("acme/m")).unwrap());
    }
}
