//! Include/exclude globs as `huggingface_hub` (`fnmatch`) reads them: `*` also matches `/`, a
//! pattern ending in `/` matches everything below that folder, an `include` list means "only
//! these", and `exclude` wins over `include`. Being globset, `{a,b}` alternation and `**` work too.
//!
//! Edges: pure. `checker` compiles each manifest glob here as a check; [`FileSelection`] is what
//! resolve, plan and the download verbs match repository paths with.

use crate::error::{Error, Result};
use crate::layout;

/// Compiles one include/exclude pattern the way `huggingface_hub` reads it.
pub(super) fn compile_glob(pattern: &str) -> std::result::Result<globset::Glob, String> {
    if pattern.is_empty() {
        return Err("empty glob pattern; remove it or write one such as \"*.safetensors\"".into());
    }
    // huggingface_hub: "folder/" means everything below the folder.
    let pattern = if pattern.ends_with('/') {
        format!("{pattern}*")
    } else {
        pattern.to_string()
    };
    globset::GlobBuilder::new(&pattern)
        .literal_separator(false)
        .build()
        .map_err(|error| {
            let why = error.kind().to_string();
            format!("invalid glob \"{}\": {why}", layout::shown(&pattern))
        })
}

/// Include/exclude globs compiled once (globset; `*` also matches `/`, as `fnmatch` in
/// huggingface_hub does; a pattern ending in `/` matches everything below it).
#[derive(Debug, Clone)]
pub struct FileSelection {
    /// `None`: no include globs, so every path is included.
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
}

impl FileSelection {
    /// Selects every file.
    pub fn all() -> FileSelection {
        FileSelection {
            include: None,
            exclude: globset::GlobSet::empty(),
        }
    }

    /// Compiles the spec's globs. Bad globs are `E_SCHEMA`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<FileSelection> {
        let build = |patterns: &[String], which: &str| -> Result<globset::GlobSet> {
            let mut set = globset::GlobSetBuilder::new();
            for pattern in patterns {
                set.add(
                    compile_glob(pattern)
                        .map_err(|why| Error::schema(format!("{which}: {why}")))?,
                );
            }
            set.build()
                .map_err(|error| Error::schema(format!("{which}: {error}")))
        };
        Ok(FileSelection {
            include: if include.is_empty() {
                None
            } else {
                Some(build(include, "include")?)
            },
            exclude: build(exclude, "exclude")?,
        })
    }

    /// True when `path` is included (no include globs = everything) and not excluded.
    pub fn matches(&self, path: &str) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|include| include.is_match(path));
        included && !self.exclude.is_match(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn selection(include: &[&str], exclude: &[&str]) -> FileSelection {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        FileSelection::new(&owned(include), &owned(exclude)).unwrap()
    }

    #[test]
    fn selection_follows_huggingface_hub() {
        let everything = selection(&[], &[]);
        for path in [".gitattributes", "config.json", "a/b/c.bin"] {
            assert!(everything.matches(path), "{path}");
            assert!(FileSelection::all().matches(path), "{path}");
        }

        // `*` crosses `/` as in fnmatch.
        let json = selection(&["*.json"], &[]);
        assert!(json.matches("config.json"));
        assert!(json.matches("sub/dir/tokenizer.json"));
        assert!(!json.matches("model.safetensors"));
        assert!(!json.matches("config.json.bak"));

        let quant = selection(&["*Q4_K_M.gguf"], &[]);
        assert!(quant.matches("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"));
        assert!(!quant.matches("tinyllama-1.1b-chat-v1.0.q4_k_m.gguf")); // case-sensitive
        assert!(!quant.matches("tinyllama-1.1b-chat-v1.0.Q5_K_M.gguf"));

        // A trailing `/` means the whole folder.
        let onnx = selection(&["onnx/"], &[]);
        assert!(onnx.matches("onnx/model.onnx"));
        assert!(onnx.matches("onnx/deep/er/x"));
        assert!(!onnx.matches("onnx"));
        assert!(!onnx.matches("other/onnx/model.onnx"));

        // `?` and classes.
        let shards = selection(&["model-0000[1-2]-of-0000?.safetensors"], &[]);
        assert!(shards.matches("model-00001-of-00003.safetensors"));
        assert!(!shards.matches("model-00003-of-00003.safetensors"));
    }

    #[test]
    fn exclude_wins_over_include() {
        let both = selection(&["*.json", "*.safetensors"], &["*tokenizer*", "sub/"]);
        assert!(both.matches("config.json"));
        assert!(both.matches("model.safetensors"));
        assert!(!both.matches("tokenizer.json"));
        assert!(!both.matches("sub/config.json"));
        assert!(!both.matches("README.md"));

        let only_exclude = selection(&[], &["*.bin", ".git*"]);
        assert!(only_exclude.matches("config.json"));
        assert!(!only_exclude.matches("pytorch_model.bin"));
        assert!(!only_exclude.matches(".gitattributes"));
    }

    #[test]
    fn bad_globs_in_a_selection_are_schema_errors() {
        let error = FileSelection::new(&["[".to_string()], &[]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert!(
            error.message().starts_with("include: invalid glob \"[\""),
            "{error}"
        );
        let error = FileSelection::new(&[], &[String::new()]).unwrap_err();
        assert!(
            error.message().starts_with("exclude: empty glob"),
            "{error}"
        );
    }
}
