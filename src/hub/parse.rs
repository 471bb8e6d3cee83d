//! JSON bodies of the Hub API turned into kmm types, strictly where kmm relies on a field
//! (commit ids, hashes, sizes, paths) and leniently elsewhere (unknown fields, odd tags).
//!
//! Edges: pure; the caller fetched the bytes and names the URL in errors.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Gated, ModelInfo};
use crate::error::{Error, Result};
use crate::upstream::{FileHash, UpstreamFile, is_commit_sha};

/// `GET /api/models/{repo}/revision/{rev}`. `requested` is the id we asked for, used when the
/// body has no `id`.
pub(crate) fn model_info(body: &[u8], requested: &str, url: &str) -> Result<ModelInfo> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|err| {
        Error::schema(format!("the hub's model info from {url} is not valid JSON"))
            .caused_by(err.to_string())
    })?;
    if !json.is_object() {
        return Err(Error::schema(format!(
            "the hub's model info from {url} is not a JSON object"
        )));
    }
    let sha = json.get("sha").and_then(|v| v.as_str()).unwrap_or_default();
    if !is_commit_sha(sha) {
        return Err(Error::schema(format!(
            "the hub's model info from {url} has no valid commit `sha` (got `{}`)",
            sha.chars().take(80).collect::<String>()
        )));
    }
    let id = ["id", "modelId"]
        .iter()
        .find_map(|key| json.get(*key).and_then(|v| v.as_str()))
        .filter(|id| !id.is_empty())
        .unwrap_or(requested)
        .to_string();
    // The canonical id may become a folder name, a URL and terminal output: a hostile hub must
    // not smuggle `..`, `/abs` or escape sequences through it (found by tests/it/hostile_hub.rs).
    crate::layout::check_repo_id(&id).map_err(|why| {
        Error::schema(format!(
            "the hub's model info from {url} names the repository `{}`",
            crate::layout::shown(&id)
        ))
        .caused_by(why)
    })?;
    let gated = match json.get("gated") {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => Gated::No,
        Some(serde_json::Value::String(mode)) if mode.eq_ignore_ascii_case("auto") => Gated::Auto,
        // "manual", `true`, or a mode kmm does not know: treat as the strictest.
        Some(_) => Gated::Manual,
    };
    let private = json
        .get("private")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    // Every text kmm may print goes through `printable`: no control character from the hub
    // reaches a terminal (found by tests/it/hostile_hub.rs).
    let printable = crate::layout::printable;
    let tags: Vec<String> = json
        .get("tags")
        .and_then(|v| v.as_array())
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(printable))
                .collect()
        })
        .unwrap_or_default();
    let card_license = json
        .get("cardData")
        .and_then(|card| card.get("license"))
        .and_then(|license| match license {
            serde_json::Value::String(id) => Some(printable(id)),
            serde_json::Value::Array(ids) => ids.iter().find_map(|v| v.as_str().map(printable)),
            _ => None,
        })
        .filter(|license| !license.is_empty());
    let license = card_license.or_else(|| {
        tags.iter()
            .find_map(|tag| tag.strip_prefix("license:"))
            .filter(|license| !license.is_empty())
            .map(str::to_string)
    });
    let text_of = |value: Option<&serde_json::Value>| {
        value
            .and_then(|v| v.as_str())
            .filter(|text| !text.is_empty())
            .map(printable)
    };
    Ok(ModelInfo {
        id,
        sha: sha.to_string(),
        gated,
        private,
        license,
        tags,
        license_name: text_of(
            json.get("cardData")
                .and_then(|card| card.get("license_name")),
        ),
        pipeline_tag: text_of(json.get("pipeline_tag")),
        library_name: text_of(json.get("library_name")),
    })
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

/// Adds the files of one tree page to `files` (keyed by path, so duplicates across pages are
/// caught). Directories and unknown entry types are skipped.
pub(crate) fn tree_page(
    body: &[u8],
    url: &str,
    files: &mut BTreeMap<String, UpstreamFile>,
) -> Result<()> {
    let entries: Vec<TreeEntry> = serde_json::from_slice(body).map_err(|err| {
        Error::schema(format!("the hub's tree listing from {url} is not valid"))
            .caused_by(err.to_string())
    })?;
    for entry in entries {
        if entry.kind != "file" {
            continue;
        }
        crate::layout::check_repo_path(&entry.path).map_err(|reason| {
            Error::schema(format!(
                "the hub's tree listing from {url} has an unsafe path `{}`",
                crate::layout::shown(&entry.path)
            ))
            .caused_by(reason)
        })?;
        let file = match entry.lfs {
            Some(lfs) => UpstreamFile {
                path: entry.path.clone(),
                size: lfs.size,
                hash: FileHash::Sha256(hex_digest(&lfs.oid, 64, &entry.path, url)?),
            },
            None => UpstreamFile {
                path: entry.path.clone(),
                size: entry.size.ok_or_else(|| {
                    Error::schema(format!(
                        "the hub's tree listing from {url} has no size for `{}`",
                        entry.path
                    ))
                })?,
                hash: FileHash::GitSha1(hex_digest(
                    entry.oid.as_deref().unwrap_or_default(),
                    40,
                    &entry.path,
                    url,
                )?),
            },
        };
        if files.insert(entry.path.clone(), file).is_some() {
            return Err(Error::schema(format!(
                "the hub's tree listing from {url} lists `{}` twice",
                entry.path
            )));
        }
    }
    Ok(())
}

/// Refuses a listing where one path is both a file and a folder (`a` and `a/b`): no real
/// repository has that, and installing it would fail half way through the model folder. Run
/// once over all pages (found by `tests/it/hostile_hub.rs`).
pub(crate) fn check_no_file_is_a_folder(
    files: &BTreeMap<String, UpstreamFile>,
    url: &str,
) -> Result<()> {
    for path in files.keys() {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let folder = &path[..end];
            if files.contains_key(folder) {
                return Err(Error::schema(format!(
                    "the hub's tree listing from {url} lists `{}` both as a file and as the folder of `{}`",
                    crate::layout::shown(folder),
                    crate::layout::shown(path)
                )));
            }
            end += 1;
        }
    }
    Ok(())
}

fn hex_digest(value: &str, len: usize, path: &str, url: &str) -> Result<String> {
    let lower = value.to_ascii_lowercase();
    if lower.len() == len && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(Error::schema(format!(
            "the hub's tree listing from {url} has an invalid hash for `{path}` (expected {len} hex digits)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const SHA: &str = "e7da7f221d5bf496a48136c0cd264e630fe9fcc8";

    #[test]
    fn model_info_fields() {
        let body = format!(
            r#"{{"id":"openai-community/gpt2","sha":"{SHA}","gated":"manual","private":true,
                "cardData":{{"license":["mit","apache-2.0"]}},"tags":["license:other","x"]}}"#
        );
        let info = model_info(body.as_bytes(), "gpt2", "u").unwrap();
        assert_eq!(info.id, "openai-community/gpt2");
        assert_eq!(info.sha, SHA);
        assert_eq!(info.gated, Gated::Manual);
        assert!(info.private);
        assert_eq!(info.license.as_deref(), Some("mit"));
        assert_eq!(info.tags, ["license:other", "x"]);
    }

    #[test]
    fn model_info_defaults_and_license_tag() {
        let body = format!(r#"{{"sha":"{SHA}","gated":false,"tags":["license:apache-2.0"]}}"#);
        let info = model_info(body.as_bytes(), "org/m", "u").unwrap();
        assert_eq!(info.id, "org/m");
        assert_eq!(info.gated, Gated::No);
        assert!(!info.private);
        assert_eq!(info.license.as_deref(), Some("apache-2.0"));
        let auto = format!(r#"{{"sha":"{SHA}","gated":"auto","cardData":{{"license":"mit"}}}}"#);
        let info = model_info(auto.as_bytes(), "org/m", "u").unwrap();
        assert_eq!(info.gated, Gated::Auto);
        assert_eq!(info.license.as_deref(), Some("mit"));
    }

    #[test]
    fn model_info_needs_a_full_commit() {
        for body in [
            r#"{"id":"org/m"}"#.to_string(),
            r#"{"sha":"e7da7f2"}"#.to_string(),
            format!(r#"{{"sha":"{}"}}"#, SHA.to_uppercase()),
            "[]".to_string(),
            "not json".to_string(),
        ] {
            let error = model_info(body.as_bytes(), "org/m", "http://hub.test/x").unwrap_err();
            assert_eq!(error.code(), ErrorCode::Schema, "{body}");
            assert!(error.message().contains("http://hub.test/x"));
        }
    }

    fn entry_json(path: &str) -> String {
        format!(r#"{{"type":"file","oid":"{SHA}","size":3,"path":"{path}"}}"#)
    }

    #[test]
    fn tree_entries_become_files() {
        let sha256 = "09741738".repeat(8);
        let body = format!(
            r#"[{{"type":"directory","oid":"{SHA}","size":0,"path":"sub"}},
                {},
                {{"type":"file","oid":"{SHA}","size":134,"path":"sub/model.bin",
                  "lfs":{{"oid":"{sha256}","size":440473133,"pointerSize":134}}}}]"#,
            entry_json("config.json")
        );
        let mut files = BTreeMap::new();
        tree_page(body.as_bytes(), "u", &mut files).unwrap();
        let files: Vec<_> = files.into_values().collect();
        assert_eq!(
            files,
            [
                UpstreamFile {
                    path: "config.json".into(),
                    size: 3,
                    hash: FileHash::GitSha1(SHA.into())
                },
                UpstreamFile {
                    path: "sub/model.bin".into(),
                    size: 440473133,
                    hash: FileHash::Sha256(sha256)
                },
            ]
        );
    }

    #[test]
    fn tree_rejects_a_file_that_is_also_a_folder() {
        let mut files = BTreeMap::new();
        let body = format!("[{},{}]", entry_json("a/b"), entry_json("a/c/d"));
        tree_page(body.as_bytes(), "u", &mut files).unwrap();
        check_no_file_is_a_folder(&files, "u").unwrap();
        let body = format!("[{}]", entry_json("a/c"));
        tree_page(body.as_bytes(), "u", &mut files).unwrap();
        let error = check_no_file_is_a_folder(&files, "u").unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert!(error.message().contains("`a/c` both as a file"), "{error}");
    }

    #[test]
    fn tree_rejects_duplicates_bad_paths_and_bad_hashes() {
        let mut files = BTreeMap::new();
        let duplicate = format!("[{},{}]", entry_json("a"), entry_json("a"));
        let error = tree_page(duplicate.as_bytes(), "u", &mut files).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
        assert!(error.message().contains("twice"));

        // Duplicates across pages are caught too.
        let mut files = BTreeMap::new();
        tree_page(format!("[{}]", entry_json("a")).as_bytes(), "u", &mut files).unwrap();
        assert!(tree_page(format!("[{}]", entry_json("a")).as_bytes(), "u", &mut files).is_err());

        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a\\\\b", "a/"] {
            let body = format!("[{}]", entry_json(bad));
            let error = tree_page(body.as_bytes(), "u", &mut BTreeMap::new()).unwrap_err();
            assert_eq!(error.code(), ErrorCode::Schema, "{bad}");
        }
        let bad_oid = r#"[{"type":"file","oid":"xyz","size":1,"path":"a"}]"#;
        assert!(tree_page(bad_oid.as_bytes(), "u", &mut BTreeMap::new()).is_err());
        let bad_lfs = format!(
            r#"[{{"type":"file","oid":"{SHA}","size":1,"path":"a","lfs":{{"oid":"{SHA}","size":1}}}}]"#
        );
        assert!(tree_page(bad_lfs.as_bytes(), "u", &mut BTreeMap::new()).is_err());
        let not_json =
            tree_page(b"{\"oops", "http://hub.test/t", &mut BTreeMap::new()).unwrap_err();
        assert_eq!(not_json.code(), ErrorCode::Schema);
        assert!(not_json.message().contains("http://hub.test/t"));
    }

    #[test]
    fn listed_path_rules() {
        for good in [
            "a",
            ".gitattributes",
            "sub/dir/x.json",
            "a b/ü.bin",
            "..a/b..",
        ] {
            assert_eq!(crate::layout::check_repo_path(good), Ok(()), "{good}");
        }
        let long_segment = "x".repeat(256);
        let long_path = ["y"; 2049].join("/");
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            ".",
            "..",
            "a/../b",
            "a\\b",
            "a\0b",
            "a\nb",
            long_segment.as_str(),
            long_path.as_str(),
        ] {
            assert!(crate::layout::check_repo_path(bad).is_err(), "{bad:?}");
        }
    }
}
