//! A one-pass reader for the lock text kmm itself writes ([`Lockfile::to_text`]).
//!
//! Why: a general TOML parser builds a document of spanned values first; for a lock of 10,000
//! models and 200,000 files (25 MB) that costs about a second and half a GiB, most of a whole
//! `kmm plan`. kmm's own spelling is fixed (one table per model, one inline table per file,
//! basic strings without escapes), so reading exactly that spelling is a matter of lines.
//!
//! Anything else (a hand edit, another valid TOML spelling, an escape, a duplicate, an unknown
//! key, a missing one) makes [`parse`] give up with `None`, and the caller parses the text with
//! `toml`, which accepts every valid spelling and reports errors with their line and column. So
//! this reader never decides what a lock means on its own: it only recognises what kmm writes.

use std::collections::BTreeMap;

use super::{LockedFile, LockedModel, Lockfile};
use crate::layout::Library;

/// The lock in `text` when it is spelled exactly as kmm writes it; `None` otherwise.
pub(super) fn parse(text: &str) -> Option<Lockfile> {
    let mut version = None;
    let mut models = BTreeMap::new();
    let mut current: Option<(String, Fields)> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix("[models.") {
            let (id, rest) = string(header)?;
            if rest != "]" {
                return None;
            }
            finish(&mut models, current.take())?;
            current = Some((id, Fields::default()));
            continue;
        }
        let (key, value) = line.split_once(" = ")?;
        let Some((_, fields)) = current.as_mut() else {
            if key != "version" || version.is_some() {
                return None;
            }
            version = Some(value.parse::<u32>().ok()?);
            continue;
        };
        match key {
            "revision" => set(&mut fields.revision, whole_string(value)?)?,
            "commit" => set(&mut fields.commit, whole_string(value)?)?,
            "include" => set(&mut fields.include, array(value)?)?,
            "exclude" => set(&mut fields.exclude, array(value)?)?,
            "library" => set(&mut fields.library, Library::parse(&whole_string(value)?)?)?,
            "files" if value == "[" => {
                let mut files = Vec::new();
                loop {
                    let line = lines.next()?.trim();
                    if line == "]" {
                        break;
                    }
                    files.push(file(line)?);
                }
                // Room left by doubling, times 10,000 models, is MBs of a plan's peak.
                files.shrink_to_fit();
                set(&mut fields.files, files)?;
            }
            _ => return None,
        }
    }
    finish(&mut models, current)?;
    Some(Lockfile {
        version: version?,
        models,
    })
}

/// The keys of one `[models."ID"]` table, as far as read.
#[derive(Default)]
struct Fields {
    revision: Option<String>,
    commit: Option<String>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    library: Option<Library>,
    files: Option<Vec<LockedFile>>,
}

/// Adds the table just read; a duplicate id or a missing required key gives up.
fn finish(
    models: &mut BTreeMap<String, LockedModel>,
    table: Option<(String, Fields)>,
) -> Option<()> {
    let Some((id, fields)) = table else {
        return Some(());
    };
    let model = LockedModel {
        revision: fields.revision?,
        commit: fields.commit?,
        include: fields.include.unwrap_or_default(),
        exclude: fields.exclude.unwrap_or_default(),
        library: fields.library,
        files: fields.files.unwrap_or_default(),
    };
    models.insert(id, model).is_none().then_some(())
}

/// Sets a key once; a second time gives up (TOML forbids duplicate keys).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

/// `{ path = "P", size = N[, sha256 = "H"][, git_sha1 = "H"] },`
fn file(line: &str) -> Option<LockedFile> {
    let line = line.strip_suffix(',').unwrap_or(line);
    let inner = line.strip_prefix("{ ")?.strip_suffix(" }")?;
    let (path, rest) = string(inner.strip_prefix("path = ")?)?;
    let rest = rest.strip_prefix(", size = ")?;
    let digits = rest.find(',').map_or(rest, |end| &rest[..end]);
    // TOML integers are i64, written as plain digits by kmm.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size: u64 = digits.parse().ok().filter(|&n| n <= i64::MAX as u64)?;
    let mut rest = &rest[digits.len()..];
    let mut sha256 = None;
    let mut git_sha1 = None;
    if let Some(after) = rest.strip_prefix(", sha256 = ") {
        let (hex, next) = string(after)?;
        sha256 = Some(hex);
        rest = next;
    }
    if let Some(after) = rest.strip_prefix(", git_sha1 = ") {
        let (hex, next) = string(after)?;
        git_sha1 = Some(hex);
        rest = next;
    }
    rest.is_empty().then_some(LockedFile {
        path,
        size,
        sha256,
        git_sha1,
    })
}

/// `["a", "b"]` or `[]`.
fn array(text: &str) -> Option<Vec<String>> {
    let mut rest = text.strip_prefix('[')?;
    let mut items = Vec::new();
    if rest == "]" {
        return Some(items);
    }
    loop {
        let (item, next) = string(rest)?;
        items.push(item);
        if next == "]" {
            return Some(items);
        }
        rest = next.strip_prefix(", ")?;
    }
}

/// A basic string that is the whole of `text`.
fn whole_string(text: &str) -> Option<String> {
    let (value, rest) = string(text)?;
    rest.is_empty().then_some(value)
}

/// A basic string at the start of `text` and what follows it. Escapes and characters TOML does
/// not allow in basic strings give up (the TOML parser then decides).
fn string(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let end = body.find('"')?;
    let value = &body[..end];
    let plain = value
        .chars()
        .all(|c| c != '\\' && (c == '\t' || !c.is_control()));
    plain.then(|| (value.to_string(), &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_parse(text: &str) -> Lockfile {
        toml::from_str(text).unwrap()
    }

    const WRITTEN: &str = r#"# kari-models.lock: written by kmm (`kmm lock`). Commit it; do not edit.
version = 1

[models."acme/a"]
revision = "main"
commit = "1111111111111111111111111111111111111111"
include = ["*.gguf", "config, json"]
exclude = []
library = "llama-cpp"
files = [
  { path = "a, b.gguf", size = 12, sha256 = "abab" },
  { path = "config.json", size = 3, git_sha1 = "cdcd" },
]

[models."acme/b"]
revision = "v1"
commit = "2222222222222222222222222222222222222222"
include = []
exclude = ["*.bin"]
files = [
]
"#;

    #[test]
    fn reads_what_kmm_writes_exactly_as_toml_does() {
        let fast = parse(WRITTEN).expect("kmm's own spelling");
        assert_eq!(fast, toml_parse(WRITTEN));
        assert_eq!(fast.models["acme/a"].files[0].path, "a, b.gguf");
        assert_eq!(fast.models["acme/a"].include[1], "config, json");
        assert_eq!(parse(&fast.to_text()), Some(fast));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever the strings hold (quotes, backslashes, commas, control characters,
        /// non-ASCII), a written lock reads back as it was: by this reader when it can, by TOML
        /// when it gives up, never differently.
        #[test]
        fn written_locks_read_back_unchanged(
            id in "[a-z]{1,8}/[ -~é\\t\\n]{0,12}",
            revision in "[ -~é]{0,12}",
            globs in proptest::collection::vec("[ -~\\n]{0,8}", 0..3),
            files in proptest::collection::vec(("[ -~é\\u{7f}]{1,16}", 0u64..=i64::MAX as u64, proptest::bool::ANY), 0..4),
        ) {
            let mut lock = Lockfile { version: 1, models: BTreeMap::new() };
            lock.models.insert(id, LockedModel {
                revision,
                commit: "1".repeat(40),
                include: globs.clone(),
                exclude: globs,
                library: Some(Library::Transformers),
                files: files
                    .into_iter()
                    .map(|(path, size, lfs)| LockedFile {
                        path,
                        size,
                        sha256: lfs.then(|| "ab".repeat(32)),
                        git_sha1: (!lfs).then(|| "cd".repeat(20)),
                    })
                    .collect(),
            });
            let text = lock.to_text();
            let read = Lockfile::parse(std::path::Path::new("kari-models.lock"), &text).unwrap();
            proptest::prop_assert_eq!(&read, &lock);
            if let Some(fast) = parse(&text) {
                proptest::prop_assert_eq!(fast, lock);
            }
        }
    }

    #[test]
    fn gives_up_on_anything_else() {
        for (what, from, to) in [
            ("an escape", "\"main\"", "\"ma\\u0069n\""),
            ("a literal string", "\"v1\"", "'v1'"),
            (
                "an unknown key",
                "exclude = []\nlibrary",
                "exclude = []\nextra = 1\nlibrary",
            ),
            (
                "a duplicate key",
                "exclude = []\nlibrary",
                "exclude = []\nexclude = []\nlibrary",
            ),
            ("another spacing", "size = 12", "size=12"),
            ("an underscore integer", "size = 12", "size = 1_2"),
            ("a sign", "size = 12", "size = +12"),
            (
                "a missing commit",
                "commit = \"2222222222222222222222222222222222222222\"\n",
                "",
            ),
            (
                "a duplicate table",
                "[models.\"acme/b\"]",
                "[models.\"acme/a\"]",
            ),
            (
                "a key after the tables",
                "exclude = [\"*.bin\"]\n",
                "exclude = [\"*.bin\"]\nversion = 1\n",
            ),
            ("an unknown library", "\"llama-cpp\"", "\"vllm\""),
            (
                "a trailing comment",
                "revision = \"v1\"",
                "revision = \"v1\" # pinned",
            ),
        ] {
            let edited = WRITTEN.replacen(from, to, 1);
            assert_ne!(edited, WRITTEN, "{what}: the edit did not apply");
            assert_eq!(parse(&edited), None, "{what}");
        }
    }
}
