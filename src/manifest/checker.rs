//! Checks the located tree of a manifest and builds the [`Manifest`], stopping at the first
//! problem with an `E_SCHEMA` error that names the file, line, column and the table the key is in.
//! The accepted keys are the `*_KEYS` constants of the parent module, which the checks and the
//! messages both use.
//!
//! Edges: pure; gets the text from [`Manifest::parse`], uses `tree` for spans, `values` for the
//! revision and endpoint rules and `selection` to compile each glob once as a check.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use super::selection::compile_glob;
use super::tree::{Entry, Located, Node};
use super::values::{check_endpoint, check_revision};
use super::{
    BASELINE_KEYS, Baselines, LICENSE_KEYS, LicenseAcceptance, MAX_WORKERS_LIMIT, MODEL_KEYS,
    Manifest, ModelSpec, SETTINGS_KEYS, Settings, TOP_LEVEL_KEYS, line_column,
};
use crate::error::{Error, Result};
use crate::layout::{self, Library};

/// Parses manifest text; `path` is used for messages and to resolve relative paths.
pub(super) fn parse(path: &Path, text: &str) -> Result<Manifest> {
    let checker = Checker { path, text };
    let document = toml_edit::ImDocument::parse(text)
        .map_err(|error| checker.syntax_error(error.span(), error.message()))?;
    let root = Located::from_table(document.as_table(), Some(0..0));
    checker.manifest(&root)
}

/// Where a key lives, for messages: `[settings]`, `[models."org/m"]`, ...
fn model_context(id: &str) -> String {
    format!("[models.\"{}\"]", layout::shown(id))
}

/// Turns the located tree into a [`Manifest`], with a precise error for the first problem.
struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl std::fmt::Display) -> Error {
        let offset = span.map_or(0, |span| span.start);
        let (line, column) = line_column(self.text, offset);
        Error::schema(format!(
            "{}:{line}:{column}: {message}",
            self.path.display()
        ))
    }

    fn syntax_error(&self, span: Option<Range<usize>>, message: &str) -> Error {
        let mut message = message.trim().replace('\n', "; ");
        let offset = span
            .as_ref()
            .map_or(0, |span| span.start)
            .min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |index| index + 1);
        let line = self.text[line_start..].lines().next().unwrap_or_default();
        // `key =` with nothing after it: toml_edit says "invalid string; expected `"`, `'`".
        let rest = self.text[offset..]
            .lines()
            .next()
            .unwrap_or_default()
            .trim();
        if message.starts_with("invalid string") && (rest.is_empty() || rest.starts_with('#')) {
            message = "missing value after `=`".to_string();
        }
        let error = self.error(span, format!("invalid TOML: {message}"));
        if line.trim_start().starts_with("[models.") && line.contains('/') && !line.contains('"') {
            return error.with_hint(
                "repo ids contain `/`, so quote them in table headers: [models.\"owner/name\"]",
            );
        }
        error
    }

    fn unknown_key(&self, entry: &Entry, context: &str, expected: &[&str]) -> Error {
        self.error(
            entry.key_location(),
            format!(
                "unknown key `{}` in {context}; expected one of: {}",
                layout::shown(&entry.key),
                expected.join(", ")
            ),
        )
    }

    fn wrong_type(&self, entry: &Entry, context: &str, expected: &str) -> Error {
        self.error(
            entry.value_location(),
            format!(
                "`{}` in {context} must be {expected}, found {}",
                entry.key,
                entry.value.node.kind()
            ),
        )
    }

    fn table<'t>(&self, entry: &'t Entry, context: &str) -> Result<&'t [Entry]> {
        match &entry.value.node {
            Node::Table(entries) => Ok(entries),
            _ => Err(self.wrong_type(entry, context, "a table")),
        }
    }

    fn boolean(&self, entry: &Entry, context: &str) -> Result<bool> {
        match entry.value.node {
            Node::Boolean(flag) => Ok(flag),
            _ => Err(self.wrong_type(entry, context, "`true` or `false`")),
        }
    }

    fn string<'t>(&self, entry: &'t Entry, context: &str) -> Result<&'t str> {
        match &entry.value.node {
            Node::String(text) => Ok(text),
            _ => Err(self.wrong_type(entry, context, "a string")),
        }
    }

    /// A string shown in output later (user ids, license names): no control characters.
    fn plain_string(&self, entry: &Entry, context: &str) -> Result<String> {
        let text = self.string(entry, context)?;
        if text.chars().any(char::is_control) {
            return Err(self.error(
                entry.value_location(),
                format!(
                    "`{}` in {context} must not contain control characters",
                    entry.key
                ),
            ));
        }
        Ok(text.to_string())
    }

    /// A positive, finite number of GB (integer or float).
    fn gigabytes(&self, entry: &Entry, context: &str) -> Result<f64> {
        let expected = "a positive number of GB (10^9 bytes), e.g. `60` or `7.5`";
        let value = match entry.value.node {
            Node::Integer(number) => number as f64,
            Node::Float(number) => number,
            _ => return Err(self.wrong_type(entry, context, expected)),
        };
        if !value.is_finite() || value <= 0.0 {
            return Err(self.error(
                entry.value_location(),
                format!(
                    "`{}` in {context} must be {expected}, found {value}",
                    entry.key
                ),
            ));
        }
        Ok(value)
    }

    fn globs(&self, entry: &Entry, context: &str) -> Result<Vec<String>> {
        let expected = "an array of glob strings, e.g. [\"*.gguf\", \"config.json\"]";
        let Node::Array(items) = &entry.value.node else {
            return Err(self.wrong_type(entry, context, expected));
        };
        let mut globs = Vec::with_capacity(items.len());
        for item in items {
            let location = item.span.clone().or_else(|| entry.value_location());
            let Node::String(pattern) = &item.node else {
                return Err(self.error(
                    location,
                    format!(
                        "`{}` in {context} must be {expected}, found {} in the array",
                        entry.key,
                        item.node.kind()
                    ),
                ));
            };
            compile_glob(pattern).map_err(|why| {
                self.error(location, format!("`{}` in {context}: {why}", entry.key))
            })?;
            globs.push(pattern.clone());
        }
        Ok(globs)
    }

    fn manifest(&self, root: &Located) -> Result<Manifest> {
        let Node::Table(entries) = &root.node else {
            return Err(self.error(root.span.clone(), "the manifest must be a TOML table"));
        };
        let mut manifest = Manifest {
            path: self.path.to_path_buf(),
            settings: Settings::default(),
            models: BTreeMap::new(),
            baselines: Baselines::default(),
        };
        for entry in entries {
            match entry.key.as_str() {
                "settings" => manifest.settings = self.settings(entry)?,
                "models" => manifest.models = self.models(entry)?,
                "baselines" => manifest.baselines = self.baselines(entry)?,
                _ => {
                    let what = if matches!(entry.value.node, Node::Table(_)) {
                        format!("unknown table `[{}]`", layout::shown(&entry.key))
                    } else {
                        format!(
                            "unknown key `{}` at the top level",
                            layout::shown(&entry.key)
                        )
                    };
                    return Err(self.error(
                        entry.key_location(),
                        format!(
                            "{what}; expected one of: {}",
                            TOP_LEVEL_KEYS.map(|key| format!("[{key}]")).join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(manifest)
    }

    fn settings(&self, entry: &Entry) -> Result<Settings> {
        let context = "[settings]";
        let mut settings = Settings::default();
        for entry in self.table(entry, "the manifest")? {
            match entry.key.as_str() {
                "models_dir" => {
                    let dir = self.string(entry, context)?;
                    let problem = if dir.is_empty() {
                        Some("must not be empty")
                    } else if dir.contains('\0') {
                        Some("must not contain NUL")
                    } else if dir.starts_with('~') {
                        Some(
                            "starts with `~`, which kmm does not expand; use an absolute path or one relative to the manifest's folder",
                        )
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(self.error(
                            entry.value_location(),
                            format!("`models_dir` in {context} {problem}"),
                        ));
                    }
                    let folder = self.path.parent().unwrap_or(Path::new(""));
                    settings.models_dir = Some(folder.join(dir));
                }
                "endpoint" => {
                    let text = self.string(entry, context)?;
                    let endpoint = check_endpoint(text).map_err(|why| {
                        self.error(
                            entry.value_location(),
                            format!("`endpoint` in {context} {why}"),
                        )
                    })?;
                    settings.endpoint = Some(endpoint);
                }
                "max_workers" => {
                    let expected = format!("an integer from 1 to {MAX_WORKERS_LIMIT}");
                    let Node::Integer(number) = entry.value.node else {
                        return Err(self.wrong_type(entry, context, &expected));
                    };
                    if !(1..=MAX_WORKERS_LIMIT as i64).contains(&number) {
                        return Err(self.error(
                            entry.value_location(),
                            format!(
                                "`max_workers` in {context} must be {expected}, found {number}"
                            ),
                        ));
                    }
                    settings.max_workers = Some(number as usize);
                }
                "quota_gb" => settings.quota_gb = Some(self.gigabytes(entry, context)?),
                "prune" => settings.prune = self.boolean(entry, context)?,
                "offline" => settings.offline = Some(self.boolean(entry, context)?),
                "shared_store" => {
                    let text = self.string(entry, context)?;
                    crate::shared::parse_url(text, "`shared_store`").map_err(|error| {
                        self.error(
                            entry.value_location(),
                            format!("{} in {context}", error.message()),
                        )
                    })?;
                    settings.shared_store = Some(text.to_string());
                }
                "require_shared_store" => {
                    settings.require_shared_store = Some(self.boolean(entry, context)?)
                }
                _ => return Err(self.unknown_key(entry, context, &SETTINGS_KEYS)),
            }
        }
        Ok(settings)
    }

    fn models(&self, entry: &Entry) -> Result<BTreeMap<String, ModelSpec>> {
        let mut models = BTreeMap::new();
        // Hub ids are case-insensitive and distilbert has two names: one model declared twice
        // would be installed twice into colliding folders.
        let mut seen: BTreeMap<String, (String, Option<Range<usize>>)> = BTreeMap::new();
        for entry in self.table(entry, "the manifest")? {
            layout::check_repo_id(&entry.key)
                .map_err(|why| self.error(entry.key_location(), format!("{why} in [models]")))?;
            let canonical = if layout::is_distilbert(&entry.key) {
                "distilbert/distilbert-base-uncased".to_string()
            } else {
                entry.key.to_ascii_lowercase()
            };
            if let Some((other, other_span)) = seen.get(&canonical) {
                let (line, column) =
                    line_column(self.text, other_span.as_ref().map_or(0, |span| span.start));
                return Err(self.error(
                    entry.key_location(),
                    format!(
                        "model `{}` is already declared as `{other}` (at {line}:{column}); hub repo ids are case-insensitive and `distilbert-base-uncased` is `distilbert/distilbert-base-uncased`",
                        entry.key
                    ),
                ));
            }
            seen.insert(canonical, (entry.key.clone(), entry.key_location()));
            models.insert(entry.key.clone(), self.model(entry)?);
        }
        Ok(models)
    }

    fn model(&self, entry: &Entry) -> Result<ModelSpec> {
        let context = model_context(&entry.key);
        let mut spec = ModelSpec::new(entry.key.clone());
        let Node::Table(fields) = &entry.value.node else {
            return Err(self.error(
                entry.value_location(),
                format!(
                    "{context} must be a table, found {}; write it as a [models.\"...\"] section",
                    entry.value.node.kind()
                ),
            ));
        };
        for field in fields {
            match field.key.as_str() {
                "revision" => {
                    let revision = self.string(field, &context)?;
                    check_revision(revision).map_err(|why| {
                        self.error(
                            field.value_location(),
                            format!("`revision` in {context} {why}"),
                        )
                    })?;
                    spec.revision = revision.to_string();
                }
                "include" => {
                    spec.include = self.globs(field, &context)?;
                    if spec.include.is_empty() {
                        return Err(self.error(
                            field.value_location(),
                            format!("`include` in {context} is empty, which would select no file; remove it to install every file, or list globs"),
                        ));
                    }
                }
                "exclude" => spec.exclude = self.globs(field, &context)?,
                "library" => {
                    let expected = Library::ALL
                        .map(|library| format!("\"{library}\""))
                        .join(" or ");
                    let Node::String(name) = &field.value.node else {
                        return Err(self.wrong_type(field, &context, &expected));
                    };
                    spec.library = Some(Library::parse(name).ok_or_else(|| {
                        self.error(
                            field.value_location(),
                            format!(
                                "`library` in {context} must be {expected}, found \"{}\"",
                                layout::shown(name)
                            ),
                        )
                    })?);
                }
                "pinned" => spec.pinned = Some(self.boolean(field, &context)?),
                "license" => spec.license = Some(self.license(field, &context)?),
                "max_size_gb" => spec.max_size_gb = Some(self.gigabytes(field, &context)?),
                _ => {
                    let error = self.unknown_key(field, &context, &MODEL_KEYS);
                    // `[models.TheBloke.TinyLlama]` is valid TOML for a nested table.
                    if matches!(field.value.node, Node::Table(_)) && !entry.key.contains('/') {
                        return Err(error.with_hint(format!(
                            "repo ids with an owner must be quoted: [models.\"{}/{}\"]",
                            layout::shown(&entry.key),
                            layout::shown(&field.key)
                        )));
                    }
                    return Err(error);
                }
            }
        }
        Ok(spec)
    }

    fn license(&self, entry: &Entry, model_context: &str) -> Result<LicenseAcceptance> {
        let context = format!("the `license` table of {model_context}");
        let fields = self.table(entry, model_context)?;
        let mut license = LicenseAcceptance {
            accepted: false,
            user_id: None,
            license_type: None,
        };
        for field in fields {
            match field.key.as_str() {
                "accepted" => license.accepted = self.boolean(field, &context)?,
                "user_id" => license.user_id = Some(self.plain_string(field, &context)?),
                "license_type" => license.license_type = Some(self.plain_string(field, &context)?),
                _ => return Err(self.unknown_key(field, &context, &LICENSE_KEYS)),
            }
        }
        Ok(license)
    }

    fn baselines(&self, entry: &Entry) -> Result<Baselines> {
        let context = "[baselines]";
        let mut baselines = Baselines::default();
        for entry in self.table(entry, "the manifest")? {
            let flag = match entry.key.as_str() {
                "distilbert" => &mut baselines.distilbert,
                "spacy" => &mut baselines.spacy,
                "basic_cls" => &mut baselines.basic_cls,
                _ => return Err(self.unknown_key(entry, context, &BASELINE_KEYS)),
            };
            *flag = self.boolean(entry, context)?;
        }
        Ok(baselines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    const FILE: &str = "kari-models.toml";

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(Path::new(FILE), text)
    }

    /// The message of the `E_SCHEMA` error `text` must produce.
    fn schema_error(text: &str) -> String {
        let error = parse(text).expect_err(text);
        assert_eq!(error.code(), ErrorCode::Schema, "{error}");
        let message = error.message().to_string();
        assert!(message.starts_with(&format!("{FILE}:")), "{message}");
        message
    }

    fn assert_error(text: &str, position: &str, expected: &str) {
        let message = schema_error(text);
        assert!(
            message.starts_with(&format!("{FILE}:{position}: ")),
            "want position {position} in {message:?}"
        );
        assert!(
            message.contains(expected),
            "want {expected:?} in {message:?}"
        );
    }

    const EXAMPLE: &str = r#"# The example of the issue.
[settings]
models_dir = "models"
endpoint = "https://huggingface.co/"
max_workers = 8
quota_gb = 60
prune = false
offline = false

[models."TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"]
revision = "main"
include = ["*Q4_K_M.gguf"]
exclude = []
library = "llama-cpp"
pinned = true
license = { accepted = true, user_id = "admin@kari", license_type = "other" }
max_size_gb = 10

[models.gpt2]

[baselines]
distilbert = true
spacy = false
basic_cls = false
"#;

    #[test]
    fn parses_the_full_example() {
        let manifest = Manifest::parse(Path::new("/etc/kari/kari-models.toml"), EXAMPLE).unwrap();
        assert_eq!(manifest.path, Path::new("/etc/kari/kari-models.toml"));
        assert_eq!(
            manifest.settings,
            Settings {
                models_dir: Some(PathBuf::from("/etc/kari/models")),
                endpoint: Some("https://huggingface.co".to_string()),
                max_workers: Some(8),
                quota_gb: Some(60.0),
                prune: false,
                offline: Some(false),
                shared_store: None,
                require_shared_store: None,
            }
        );
        let ids: Vec<&str> = manifest.models.keys().map(String::as_str).collect();
        assert_eq!(ids, ["TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "gpt2"]);
        assert_eq!(
            manifest.models["TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"],
            ModelSpec {
                id: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".to_string(),
                revision: "main".to_string(),
                include: vec!["*Q4_K_M.gguf".to_string()],
                exclude: vec![],
                library: Some(Library::LlamaCpp),
                pinned: Some(true),
                license: Some(LicenseAcceptance {
                    accepted: true,
                    user_id: Some("admin@kari".to_string()),
                    license_type: Some("other".to_string()),
                }),
                max_size_gb: Some(10.0),
            }
        );
        assert_eq!(manifest.models["gpt2"], ModelSpec::new("gpt2"));
        assert_eq!(
            manifest.baselines,
            Baselines {
                distilbert: true,
                spacy: false,
                basic_cls: false
            }
        );
    }

    #[test]
    fn everything_is_optional() {
        let manifest = parse("").unwrap();
        assert_eq!(manifest.settings, Settings::default());
        assert!(manifest.models.is_empty());
        assert_eq!(manifest.baselines, Baselines::default());

        let manifest = parse("[settings]\n[models]\n[baselines]\n").unwrap();
        assert!(manifest.models.is_empty());

        // Dotted keys and inline tables are the same document.
        let manifest = parse(
            "models.\"org/a\".revision = \"v1.0\"\nmodels.\"org/b\" = { pinned = false, license = {} }\n",
        )
        .unwrap();
        assert_eq!(manifest.models["org/a"].revision, "v1.0");
        assert_eq!(manifest.models["org/b"].pinned, Some(false));
        assert_eq!(
            manifest.models["org/b"].license,
            Some(LicenseAcceptance {
                accepted: false,
                user_id: None,
                license_type: None
            })
        );
    }

    #[test]
    fn models_dir_is_relative_to_the_manifest_folder() {
        let parsed = |path: &str, dir: &str| {
            Manifest::parse(
                Path::new(path),
                &format!("[settings]\nmodels_dir = {dir:?}\n"),
            )
            .unwrap()
            .settings
            .models_dir
            .unwrap()
        };
        assert_eq!(parsed("kari-models.toml", "models"), Path::new("models"));
        assert_eq!(
            parsed("conf/kari-models.toml", "models"),
            Path::new("conf/models")
        );
        assert_eq!(
            parsed("/srv/k.toml", "../data/models"),
            Path::new("/srv/../data/models")
        );
        assert_eq!(
            parsed("/srv/k.toml", "/mnt/models"),
            Path::new("/mnt/models")
        );
    }

    #[test]
    fn unknown_keys_name_the_table_and_the_allowed_keys() {
        assert_error(
            "[settings]\nmax_workers = 4\n\n[models.\"org/m\"]\nrevision = \"main\"\n\nrevison = \"v2\"\n",
            "7:1",
            "unknown key `revison` in [models.\"org/m\"]; expected one of: revision, include, exclude, library, pinned, license, max_size_gb",
        );
        assert_eq!(
            schema_error("[models.\"org/m\"]\nrevison = \"v2\"\n"),
            "kari-models.toml:2:1: unknown key `revison` in [models.\"org/m\"]; expected one of: revision, include, exclude, library, pinned, license, max_size_gb"
        );
        assert_error(
            "[settings]\n  modelsdir = \"m\"\n",
            "2:3",
            "unknown key `modelsdir` in [settings]; expected one of: models_dir, endpoint, max_workers, quota_gb, prune, offline, shared_store, require_shared_store",
        );
        assert_error(
            "[baselines]\ndistilbert = true\nbert = true\n",
            "3:1",
            "unknown key `bert` in [baselines]; expected one of: distilbert, spacy, basic_cls",
        );
        assert_error(
            "[models.\"org/m\"]\nlicense = { accepted = true, user = \"me\" }\n",
            "2:30",
            "unknown key `user` in the `license` table of [models.\"org/m\"]; expected one of: accepted, user_id, license_type",
        );
        assert_error(
            "[setting]\nprune = true\n",
            "1:2",
            "unknown table `[setting]`; expected one of: [settings], [models], [baselines]",
        );
        assert_error(
            "prune = true\n",
            "1:1",
            "unknown key `prune` at the top level; expected one of: [settings], [models], [baselines]",
        );
        assert_error(
            "[[models]]\n",
            "1:1",
            "`models` in the manifest must be a table, found an array",
        );
        assert_error(
            "[settings.extra]\n",
            "1:11",
            "unknown key `extra` in [settings]",
        );
    }

    #[test]
    fn unquoted_owner_ids_get_a_hint() {
        let error = parse("[models.TheBloke.TinyLlama]\nrevision = \"main\"\n").unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert!(
            error.message().starts_with(
                "kari-models.toml:1:18: unknown key `TinyLlama` in [models.\"TheBloke\"]"
            ),
            "{error}"
        );
        assert_eq!(
            error.hint(),
            Some("repo ids with an owner must be quoted: [models.\"TheBloke/TinyLlama\"]")
        );

        let error = parse("[models.TheBloke/TinyLlama]\n").unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert!(
            error.message().starts_with("kari-models.toml:1:"),
            "{error}"
        );
        assert!(error.message().contains("invalid TOML"), "{error}");
        assert!(error.hint().unwrap().contains("[models.\"owner/name\"]"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        assert_error(
            "[settings]\nprune = \n",
            "2:9",
            "invalid TOML: missing value after `=`",
        );
        assert_error(
            "[settings]\nprune = # later\n",
            "2:9",
            "invalid TOML: missing value after `=`",
        );
        assert_error("[settings\n", "1:10", "invalid TOML: ");
        assert_error(
            "[settings]\nprune = true\nprune = false\n",
            "3:1",
            "invalid TOML: duplicate key",
        );
        // Columns count characters, not bytes.
        assert_error(
            "[models.\"org/m\"] # ünïcödé\nrevision = \"ä\"\nlicense = { user_id = \"é\", x = 1 }\n",
            "3:28",
            "unknown key `x`",
        );
        // A byte-order mark and CRLF line ends (Windows editors) change nothing.
        assert_error(
            "\u{feff}[settings]\r\nprune = true\r\nx = 1\r\n",
            "3:1",
            "unknown key `x` in [settings]",
        );
        let message = schema_error("[settings]\nendpoint = \"unterminated\n");
        assert!(!message.contains('\n'), "{message:?}");
    }

    #[test]
    fn wrong_types_say_what_is_expected() {
        assert_error(
            "[settings]\nprune = \"yes\"\n",
            "2:9",
            "`prune` in [settings] must be `true` or `false`, found a string",
        );
        assert_error(
            "[settings]\nmax_workers = \"8\"\n",
            "2:15",
            "`max_workers` in [settings] must be an integer from 1 to 256, found a string",
        );
        assert_error("[settings]\nmax_workers = 8.0\n", "2:15", "found a float");
        assert_error(
            "[settings]\nmodels_dir = 1979-05-27\n",
            "2:14",
            "`models_dir` in [settings] must be a string, found a date-time",
        );
        assert_error(
            "settings = 3\n",
            "1:12",
            "`settings` in the manifest must be a table, found an integer",
        );
        assert_error(
            "[models]\n\"org/m\" = \"main\"\n",
            "2:11",
            "[models.\"org/m\"] must be a table, found a string",
        );
        assert_error(
            "[models.\"org/m\"]\ninclude = \"*.gguf\"\n",
            "2:11",
            "`include` in [models.\"org/m\"] must be an array of glob strings",
        );
        assert_error(
            "[models.\"org/m\"]\nexclude = [\"*.bin\", 3]\n",
            "2:21",
            "found an integer in the array",
        );
        assert_error(
            "[models.\"org/m\"]\nlicense = true\n",
            "2:11",
            "`license` in [models.\"org/m\"] must be a table, found a boolean",
        );
        assert_error(
            "[models.\"org/m\"]\nlicense = { accepted = \"yes\" }\n",
            "2:24",
            "`accepted` in the `license` table of [models.\"org/m\"] must be `true` or `false`",
        );
        assert_error(
            "[models.\"org/m\"]\nlicense = { user_id = \"a\\u001b[31mb\" }\n",
            "2:23",
            "must not contain control characters",
        );
        assert_error(
            "[baselines]\nspacy = 1\n",
            "2:9",
            "`spacy` in [baselines] must be `true` or `false`, found an integer",
        );
    }

    #[test]
    fn bad_repo_ids_are_refused() {
        assert_error(
            "[models.\"a/b/c\"]\n",
            "1:9",
            "invalid repo id `a/b/c`: more than one `/`",
        );
        assert_error("[models.\"../x\"]\n", "1:9", "invalid repo id `../x`");
        assert_error("[models.\".kmm\"]\n", "1:9", "invalid repo id `.kmm`");
        assert_error("[models.\"org/m m\"]\n", "1:9", "contains ` `");
        assert_error("[models.\"\"]\n", "1:9", "invalid repo id: it is empty");
        assert_error(
            "[models]\n\"org/\\u0000\" = {}\n",
            "2:1",
            "contains `\\u{0}`",
        );
        let message = schema_error("[models.\"org/m\\n\"]\n");
        assert!(!message.contains('\n'), "{message:?}");
    }

    #[test]
    fn the_same_model_twice_is_refused() {
        assert_error(
            "[models.\"Org/Model\"]\n[models.\"org/model\"]\n",
            "2:9",
            "model `org/model` is already declared as `Org/Model` (at 1:9)",
        );
        assert_error(
            "[models.\"distilbert-base-uncased\"]\n[models.\"distilbert/distilbert-base-uncased\"]\n",
            "2:9",
            "is already declared as `distilbert-base-uncased`",
        );
    }

    #[test]
    fn bad_revisions_are_refused() {
        assert_error(
            "[models.\"org/m\"]\nrevision = \"\"\n",
            "2:12",
            "`revision` in [models.\"org/m\"] must not be empty",
        );
        assert_error(
            "[models.\"org/m\"]\nrevision = \"v 1\"\n",
            "2:12",
            "must not contain whitespace",
        );
        assert_error(
            "[models.\"org/m\"]\nrevision = \"main\\t\"\n",
            "2:12",
            "must not contain whitespace, found \"main\\t\"",
        );
        assert_error(
            "[models.\"org/m\"]\nrevision = \"a\\u0000\"\n",
            "2:12",
            "must not contain control characters",
        );
        assert_error(
            &format!("[models.\"org/m\"]\nrevision = \"{}\"\n", "r".repeat(256)),
            "2:12",
            "at most 255",
        );
        for good in [
            "main",
            "v1.0",
            "refs/pr/1",
            "e7da7f221d5bf496a48136c0cd264e630fe9fcc8",
            "feature/x#1",
        ] {
            let manifest = parse(&format!("[models.\"org/m\"]\nrevision = \"{good}\"\n")).unwrap();
            assert_eq!(manifest.models["org/m"].revision, good);
        }
    }

    #[test]
    fn bad_globs_and_libraries_are_refused() {
        assert_error(
            "[models.\"org/m\"]\ninclude = [\"*.gguf\", \"[abc\"]\n",
            "2:22",
            "`include` in [models.\"org/m\"]: invalid glob \"[abc\": unclosed character class",
        );
        assert_error(
            "[models.\"org/m\"]\nexclude = [\"a{b\"]\n",
            "2:12",
            "invalid glob",
        );
        assert_error(
            "[models.\"org/m\"]\nexclude = [\"\"]\n",
            "2:12",
            "empty glob pattern",
        );
        assert_error(
            "[models.\"org/m\"]\ninclude = []\n",
            "2:11",
            "`include` in [models.\"org/m\"] is empty, which would select no file",
        );
        assert_error(
            "[models.\"org/m\"]\nlibrary = \"gguf\"\n",
            "2:11",
            "`library` in [models.\"org/m\"] must be \"llama-cpp\" or \"transformers\", found \"gguf\"",
        );
        assert_error(
            "[models.\"org/m\"]\nlibrary = 1\n",
            "2:11",
            "must be \"llama-cpp\" or \"transformers\", found an integer",
        );
        let manifest = parse("[models.\"org/m\"]\nlibrary = \"transformers\"\n").unwrap();
        assert_eq!(
            manifest.models["org/m"].library,
            Some(Library::Transformers)
        );
    }

    #[test]
    fn bad_numbers_are_refused() {
        assert_error(
            "[settings]\nmax_workers = 0\n",
            "2:15",
            "must be an integer from 1 to 256, found 0",
        );
        assert_error("[settings]\nmax_workers = -3\n", "2:15", "found -3");
        assert_error("[settings]\nmax_workers = 257\n", "2:15", "found 257");
        assert_error(
            "[settings]\nquota_gb = -1\n",
            "2:12",
            "`quota_gb` in [settings] must be a positive number of GB",
        );
        assert_error("[settings]\nquota_gb = 0\n", "2:12", "found 0");
        assert_error("[settings]\nquota_gb = nan\n", "2:12", "found NaN");
        assert_error("[settings]\nquota_gb = inf\n", "2:12", "found inf");
        assert_error("[settings]\nquota_gb = \"60\"\n", "2:12", "found a string");
        assert_error(
            "[models.\"org/m\"]\nmax_size_gb = -0.5\n",
            "2:15",
            "`max_size_gb` in [models.\"org/m\"] must be a positive number",
        );
        assert_error(
            "[models.\"org/m\"]\nmax_size_gb = -nan\n",
            "2:15",
            "found NaN",
        );
        let manifest = parse("[settings]\nquota_gb = 0.5\nmax_workers = 256\n").unwrap();
        assert_eq!(manifest.settings.quota_gb, Some(0.5));
        assert_eq!(manifest.settings.max_workers, Some(256));
    }

    #[test]
    fn bad_endpoints_and_dirs_are_refused() {
        assert_error(
            "[settings]\nendpoint = \"huggingface.co\"\n",
            "2:12",
            "`endpoint` in [settings] must be an http(s) URL",
        );
        assert_error(
            "[settings]\nendpoint = \"ftp://mirror.local\"\n",
            "2:12",
            "the scheme `ftp` is not supported",
        );
        assert_error(
            "[settings]\nendpoint = \"file:///srv/hub\"\n",
            "2:12",
            "the scheme `file` is not supported",
        );
        assert_error(
            "[settings]\nendpoint = \"https://h/?x=1\"\n",
            "2:12",
            "without `?query` or `#fragment`",
        );
        assert_error(
            "[settings]\nendpoint = \"\"\n",
            "2:12",
            "must be an http(s) URL",
        );
        let message =
            schema_error("[settings]\nendpoint = \"https://user:hf_secret@mirror.local\"\n");
        assert!(
            message.contains("must not contain credentials"),
            "{message}"
        );
        assert!(!message.contains("hf_secret"), "{message}");
        let manifest = parse("[settings]\nendpoint = \"http://127.0.0.1:8080/hub/\"\n").unwrap();
        assert_eq!(
            manifest.settings.endpoint.as_deref(),
            Some("http://127.0.0.1:8080/hub")
        );

        assert_error(
            "[settings]\nmodels_dir = \"\"\n",
            "2:14",
            "`models_dir` in [settings] must not be empty",
        );
        assert_error(
            "[settings]\nmodels_dir = \"~/models\"\n",
            "2:14",
            "does not expand",
        );
    }

    /// Keys the JSON Schema declares under `pointer` (an object schema with `properties`).
    fn schema_keys(schema: &serde_json::Value, pointer: &str) -> BTreeSet<String> {
        let node = schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} missing"));
        assert_eq!(
            node["additionalProperties"],
            serde_json::Value::Bool(false),
            "{pointer}"
        );
        node["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|key| key.to_string()).collect()
    }

    #[test]
    fn json_schema_declares_exactly_the_keys_the_parser_accepts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/kari-models.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema_keys(&schema, ""), set(&TOP_LEVEL_KEYS));
        assert_eq!(schema_keys(&schema, "/$defs/settings"), set(&SETTINGS_KEYS));
        assert_eq!(schema_keys(&schema, "/$defs/model"), set(&MODEL_KEYS));
        assert_eq!(schema_keys(&schema, "/$defs/license"), set(&LICENSE_KEYS));
        assert_eq!(
            schema_keys(&schema, "/$defs/baselines"),
            set(&BASELINE_KEYS)
        );
        let libraries: BTreeSet<String> = schema
            .pointer("/$defs/model/properties/library/enum")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_str().unwrap().to_string())
            .collect();
        assert_eq!(libraries, set(&Library::ALL.map(Library::as_str)));
        assert_eq!(
            schema.pointer("/$defs/settings/properties/max_workers/maximum"),
            Some(&serde_json::json!(MAX_WORKERS_LIMIT))
        );

        // And every key the schema declares is accepted by the parser.
        for key in SETTINGS_KEYS {
            assert!(
                !schema_error(&format!("[settings]\n{key} = []\n")).contains("unknown key"),
                "{key}"
            );
        }
        for key in MODEL_KEYS {
            assert!(
                !schema_error(&format!("[models.m]\n{key} = 1979-05-27\n")).contains("unknown key"),
                "{key}"
            );
        }
    }
}
