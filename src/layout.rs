//! Routing rules: where a model's files live inside the models directory.
//!
//! The seed's rules, unchanged (DESIGN.md "Layout"): any `*.gguf` among the selected files ->
//! `llama-cpp/<owner>/<repo>/`; else `transformers/<owner>/<repo>/` (a plain id without owner:
//! `transformers/<id>/`); `distilbert-base-uncased` -> `distilbert-base-uncased/`; a
//! `config.json` is mirrored to `configs/<repo>.json`; a `library` override wins over content.
//! Also the validation of repo ids and of repo paths coming from a (possibly hostile) hub.
//!
//! Safety argument: every routed folder starts with `llama-cpp/`, `transformers/` or is exactly
//! `distilbert-base-uncased`, and the rest is made of the parts of an id that passed
//! [`check_repo_id`] (no `/` inside a part, no `.`/`..`, no leading `.`), so no valid id can
//! route outside the models directory or into `.kmm/` or `configs/`.
//!
//! Edges: pure functions, no I/O. Paths returned are relative to the models directory.

use std::path::{Path, PathBuf};

use crate::upstream::UpstreamFile;

/// Which runtime a model is laid out for.
#[derive(
    schemars::JsonSchema,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Library {
    #[serde(rename = "llama-cpp")]
    LlamaCpp,
    #[serde(rename = "transformers")]
    Transformers,
}

impl Library {
    /// Every library, in the order messages list them.
    pub const ALL: [Library; 2] = [Library::LlamaCpp, Library::Transformers];

    pub fn as_str(self) -> &'static str {
        match self {
            Library::LlamaCpp => "llama-cpp",
            Library::Transformers => "transformers",
        }
    }

    /// Parses `llama-cpp` or `transformers`.
    pub fn parse(text: &str) -> Option<Library> {
        Library::ALL
            .into_iter()
            .find(|library| library.as_str() == text)
    }

    /// The top-level folder of the models directory this library's models go under.
    pub fn folder(self) -> &'static str {
        self.as_str()
    }
}

impl std::fmt::Display for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The folder `distilbert-base-uncased` is pinned to, for the older Kari code that expects it.
pub const DISTILBERT_DIR: &str = "distilbert-base-uncased";

/// Where a model goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub library: Library,
    /// Folder relative to the models directory, e.g. `llama-cpp/TheBloke/TinyLlama-GGUF`.
    pub install_dir: PathBuf,
}

/// True for `distilbert-base-uncased` and its canonical id `distilbert/distilbert-base-uncased`
/// (hub ids are case-insensitive, so the comparison is too).
pub fn is_distilbert(model_id: &str) -> bool {
    model_id.eq_ignore_ascii_case(DISTILBERT_DIR)
        || model_id.eq_ignore_ascii_case("distilbert/distilbert-base-uncased")
}

/// True when `path` names a GGUF file (`.gguf`, any case), the marker of a llama.cpp model.
pub fn is_gguf(path: &str) -> bool {
    path.len() >= 5
        && path.is_char_boundary(path.len() - 5)
        && path[path.len() - 5..].eq_ignore_ascii_case(".gguf")
}

/// Routes `model_id` (as declared) given the files that will be installed.
///
/// `model_id` must have passed [`check_repo_id`] (the manifest and the CLI check it); an id
/// that did not could name a folder outside the layout.
pub fn route(model_id: &str, library: Option<Library>, files: &[UpstreamFile]) -> Route {
    debug_assert!(
        check_repo_id(model_id).is_ok(),
        "route() needs a checked repo id, got {model_id:?}"
    );
    let library = library.unwrap_or_else(|| {
        if files.iter().any(|file| is_gguf(&file.path)) {
            Library::LlamaCpp
        } else {
            Library::Transformers
        }
    });
    let install_dir = if library == Library::Transformers && is_distilbert(model_id) {
        PathBuf::from(DISTILBERT_DIR)
    } else {
        let mut dir = PathBuf::from(library.folder());
        dir.extend(model_id.split('/'));
        dir
    };
    Route {
        library,
        install_dir,
    }
}

/// `configs/<repo>.json` for `owner/repo` or a plain `repo` id.
pub fn config_mirror_path(model_id: &str) -> PathBuf {
    let repo = model_id.rsplit('/').next().unwrap_or(model_id);
    PathBuf::from("configs").join(format!("{repo}.json"))
}

/// Longest owner or name part of a repo id the hub accepts.
pub const MAX_REPO_ID_PART: usize = 96;
/// Longest segment of a repo path (the usual file-name limit).
pub const MAX_REPO_PATH_SEGMENT: usize = 255;
/// Longest repo path (the usual `PATH_MAX`).
pub const MAX_REPO_PATH: usize = 4096;

/// Shows untrusted text in a message: control characters escaped, long text cut.
/// `text` with control characters written as escapes (`\u{1b}`), for strings a hub sends that
/// kmm prints (license names, tags): a hostile hub must not drive the user's terminal.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .flat_map(|character| {
            let escaped: Vec<char> = if character.is_control() {
                character.escape_default().collect()
            } else {
                vec![character]
            };
            escaped
        })
        .collect()
}

pub(crate) fn shown(text: &str) -> String {
    const LIMIT: usize = 120;
    let mut out = String::new();
    for (count, character) in text.chars().enumerate() {
        if count == LIMIT {
            out.push_str("...");
            break;
        }
        if character.is_control() {
            out.extend(character.escape_default());
        } else {
            out.push(character);
        }
    }
    out
}

/// Checks a Hugging Face repo id: `name` or `owner/name`, each part 1-96 chars of
/// `[A-Za-z0-9._-]`, not starting/ending with `.` or `-`, no `--` or `..`.
/// The error says what is wrong.
pub fn check_repo_id(id: &str) -> Result<(), String> {
    let invalid = |why: String| Err(format!("invalid repo id `{}`: {why}", shown(id)));
    if id.is_empty() {
        return Err("invalid repo id: it is empty; expected `name` or `owner/name`".to_string());
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return invalid("more than one `/`; expected `name` or `owner/name`".to_string());
    }
    for (index, part) in parts.iter().enumerate() {
        let which = if parts.len() == 1 {
            "the name"
        } else if index == 0 {
            "the owner"
        } else {
            "the name"
        };
        if part.is_empty() {
            return invalid(format!("{which} is empty; expected `name` or `owner/name`"));
        }
        if let Some(bad) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return invalid(format!(
                "{which} contains `{}`; only letters, digits, `.`, `_` and `-` are allowed",
                shown(&bad.to_string())
            ));
        }
        if part.len() > MAX_REPO_ID_PART {
            return invalid(format!(
                "{which} is {} characters long; at most {MAX_REPO_ID_PART} are allowed",
                part.len()
            ));
        }
        for edge in ['.', '-'] {
            if part.starts_with(edge) || part.ends_with(edge) {
                return invalid(format!("{which} must not start or end with `{edge}`"));
            }
        }
        for double in ["--", ".."] {
            if part.contains(double) {
                return invalid(format!("{which} must not contain `{double}`"));
            }
        }
    }
    Ok(())
}

/// Checks a path inside a repository as listed by the hub before kmm ever joins it to a local
/// folder: relative, `/`-separated, no empty/`.`/`..` segments, no backslash, NUL or control
/// characters, each segment at most 255 bytes and the whole at most 4096.
pub fn check_repo_path(path: &str) -> Result<(), String> {
    let invalid = |why: String| Err(format!("unsafe repo path `{}`: {why}", shown(path)));
    if path.is_empty() {
        return Err("unsafe repo path: it is empty".to_string());
    }
    if path.len() > MAX_REPO_PATH {
        return invalid(format!(
            "it is {} bytes long; at most {MAX_REPO_PATH} are allowed",
            path.len()
        ));
    }
    if path.starts_with('/') {
        return invalid("it is absolute; repo paths must be relative".to_string());
    }
    if path.contains('\\') {
        return invalid("it contains a backslash; repo paths use `/` only".to_string());
    }
    if let Some(bad) = path.chars().find(|c| c.is_control()) {
        return invalid(format!(
            "it contains the control character `{}`",
            shown(&bad.to_string())
        ));
    }
    for segment in path.split('/') {
        match segment {
            "" => return invalid("it has an empty segment (`//` or a trailing `/`)".to_string()),
            "." | ".." => return invalid(format!("it has a `{segment}` segment")),
            _ if segment.len() > MAX_REPO_PATH_SEGMENT => {
                return invalid(format!(
                    "a segment is {} bytes long; at most {MAX_REPO_PATH_SEGMENT} are allowed",
                    segment.len()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Finds two models whose folders nest (`transformers/acme` of a plain id `acme` holds
/// `transformers/acme/tiny-bert` of `acme/tiny-bert`, or two ids route to one folder). Such a
/// layout cannot be kept safely: replacing the outer folder would carry the inner model away.
/// Returns `(outer id, inner id)`. Paths are relative to the models directory.
pub fn find_nested_installs<'a>(installs: &[(&'a str, &'a Path)]) -> Option<(&'a str, &'a str)> {
    let mut sorted: Vec<&(&str, &Path)> = installs.iter().collect();
    // Component-wise order puts every folder right before the folders below it.
    sorted.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
    sorted
        .windows(2)
        .find(|pair| pair[1].1.starts_with(pair[0].1))
        .map(|pair| (pair[0].0, pair[1].0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("mit"), "mit");
        assert_eq!(printable("a\u{1b}[2Jb\u{7}é"), "a\\u{1b}[2Jb\\u{7}é");
    }
    use crate::upstream::FileHash;
    use std::path::{Component, Path};

    fn file(path: &str) -> UpstreamFile {
        UpstreamFile {
            path: path.to_string(),
            size: 1,
            hash: FileHash::GitSha1("0".repeat(40)),
        }
    }

    fn routed(id: &str, library: Option<Library>, paths: &[&str]) -> (Library, String) {
        let files: Vec<UpstreamFile> = paths.iter().map(|p| file(p)).collect();
        let route = route(id, library, &files);
        (
            route.library,
            route.install_dir.to_str().unwrap().to_string(),
        )
    }

    #[test]
    fn library_names_round_trip() {
        for library in Library::ALL {
            assert_eq!(Library::parse(library.as_str()), Some(library));
            let json = serde_json::to_string(&library).unwrap();
            assert_eq!(json, format!("\"{}\"", library.as_str()));
        }
        assert_eq!(Library::parse("llama_cpp"), None);
        assert_eq!(Library::parse("Transformers"), None);
        assert_eq!(Library::parse(""), None);
    }

    #[test]
    fn gguf_routes_to_llama_cpp_by_owner_and_repo() {
        assert_eq!(
            routed(
                "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
                None,
                &["README.md", "tinyllama.Q4_K_M.gguf"]
            ),
            (
                Library::LlamaCpp,
                "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into()
            )
        );
        // Extension check is case-insensitive and works in subfolders.
        assert_eq!(
            routed("org/m", None, &["q/MODEL.GGUF"]).0,
            Library::LlamaCpp
        );
        // `.gguf` must be the extension, not part of the name.
        assert_eq!(
            routed("org/m", None, &["model.gguf.json", "gguf"]).0,
            Library::Transformers
        );
    }

    #[test]
    fn everything_else_routes_to_transformers() {
        assert_eq!(
            routed("org/bert", None, &["config.json", "sub/model.safetensors"]),
            (Library::Transformers, "transformers/org/bert".into())
        );
        assert_eq!(
            routed("gpt2", None, &["config.json"]),
            (Library::Transformers, "transformers/gpt2".into())
        );
        assert_eq!(
            routed("gpt2", None, &[]),
            (Library::Transformers, "transformers/gpt2".into())
        );
        assert_eq!(
            routed("gguf-lover", None, &["x.ggml"]).1,
            "transformers/gguf-lover"
        );
    }

    #[test]
    fn override_wins_over_content() {
        assert_eq!(
            routed("org/m", Some(Library::Transformers), &["m.gguf"]),
            (Library::Transformers, "transformers/org/m".into())
        );
        assert_eq!(
            routed("org/m", Some(Library::LlamaCpp), &["model.safetensors"]),
            (Library::LlamaCpp, "llama-cpp/org/m".into())
        );
        assert_eq!(
            routed("plain", Some(Library::LlamaCpp), &[]).1,
            "llama-cpp/plain"
        );
    }

    #[test]
    fn distilbert_is_pinned_to_its_own_folder() {
        for id in [
            "distilbert-base-uncased",
            "distilbert/distilbert-base-uncased",
            "DistilBERT/distilbert-base-uncased",
        ] {
            assert_eq!(
                routed(id, None, &["config.json", "model.safetensors"]),
                (Library::Transformers, "distilbert-base-uncased".into()),
                "{id}"
            );
            assert_eq!(
                routed(id, Some(Library::Transformers), &[]).1,
                "distilbert-base-uncased"
            );
        }
        // Only the exact model: its cased sibling is an ordinary model.
        assert_eq!(
            routed("distilbert-base-cased", None, &[]).1,
            "transformers/distilbert-base-cased"
        );
        assert_eq!(
            routed("other/distilbert-base-uncased", None, &[]).1,
            "transformers/other/distilbert-base-uncased"
        );
        // An explicit llama-cpp override is honoured like for any other model.
        assert_eq!(
            routed("distilbert-base-uncased", Some(Library::LlamaCpp), &[]).1,
            "llama-cpp/distilbert-base-uncased"
        );
    }

    #[test]
    fn config_mirror_uses_the_repo_part() {
        assert_eq!(
            config_mirror_path("TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
            Path::new("configs/TinyLlama-1.1B-Chat-v1.0.json")
        );
        assert_eq!(config_mirror_path("gpt2"), Path::new("configs/gpt2.json"));
        assert_eq!(
            config_mirror_path("distilbert/distilbert-base-uncased"),
            Path::new("configs/distilbert-base-uncased.json")
        );
    }

    #[test]
    fn good_repo_ids() {
        for id in [
            "gpt2",
            "a",
            "org/m",
            "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            "Qwen/Qwen2.5-0.5B-Instruct",
            "_private/x_y",
            "a.b/c-d",
            &format!("{}/{}", "o".repeat(96), "n".repeat(96)),
        ] {
            assert_eq!(check_repo_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn bad_repo_ids_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("/", "owner is empty"),
            ("org/", "name is empty"),
            ("/m", "owner is empty"),
            ("a/b/c", "more than one `/`"),
            ("..", "start or end with `.`"),
            ("../x", "start or end with `.`"),
            ("x/..", "start or end with `.`"),
            (".", "start or end with `.`"),
            (".kmm", "start or end with `.`"),
            (".kmm/lock", "start or end with `.`"),
            ("org/.hidden", "start or end with `.`"),
            ("org/m.", "start or end with `.`"),
            ("-org/m", "start or end with `-`"),
            ("org/m-", "start or end with `-`"),
            ("org/a--b", "`--`"),
            ("org/a..b", "`..`"),
            ("org\\m", "contains `\\`"),
            ("org/m\0", "contains `\\u{0}`"),
            ("org/m\n", "contains `\\n`"),
            ("org/with space", "contains ` `"),
            ("org/ümlaut", "contains `ü`"),
            ("C:/m", "contains `:`"),
            ("org/m?x", "contains `?`"),
            ("~/m", "contains `~`"),
        ];
        for (id, expected) in cases {
            let message = check_repo_id(id).unwrap_err();
            assert!(message.contains(expected), "{id:?}: {message}");
            assert!(
                !message.contains('\0') && !message.contains('\n'),
                "{message:?}"
            );
        }
        let long = "n".repeat(97);
        let message = check_repo_id(&format!("org/{long}")).unwrap_err();
        assert!(message.contains("97 characters"), "{message}");
        // Very long hostile input is cut in the message.
        let huge = "x".repeat(100_000);
        assert!(check_repo_id(&huge).unwrap_err().len() < 400);
    }

    #[test]
    fn no_id_routes_outside_the_layout() {
        let hostile = [
            "..",
            "../..",
            "../../etc",
            "/etc/passwd",
            "/",
            ".kmm",
            ".kmm/x",
            "configs",
            "configs/x",
            "x/../../y",
            "./x",
            "a/./b",
            "",
            "\0",
            "a\\..\\..\\b",
            "distilbert-base-uncased/../..",
            "model_registry.json",
            "org/model_registry.json",
            "llama-cpp",
            "transformers/..",
        ];
        for id in hostile {
            if check_repo_id(id).is_err() {
                continue;
            }
            for library in [None, Some(Library::LlamaCpp), Some(Library::Transformers)] {
                for files in [vec![], vec![file("m.gguf")]] {
                    let dir = route(id, library, &files).install_dir;
                    let components: Vec<Component> = dir.components().collect();
                    assert!(
                        components.iter().all(|c| matches!(c, Component::Normal(_))),
                        "{id:?} -> {dir:?}"
                    );
                    let first = components[0].as_os_str().to_str().unwrap();
                    assert!(
                        ["llama-cpp", "transformers"].contains(&first) && components.len() >= 2
                            || dir == Path::new(DISTILBERT_DIR),
                        "{id:?} -> {dir:?}"
                    );
                }
            }
            let mirror = config_mirror_path(id);
            assert_eq!(mirror.components().count(), 2, "{id:?} -> {mirror:?}");
            assert!(mirror.starts_with("configs"));
        }
    }

    #[test]
    fn good_repo_paths() {
        for path in [
            "config.json",
            ".gitattributes",
            "sub/dir/model.safetensors",
            "..foo",
            "foo..",
            "a b/c d.txt",
            "ünïcode/ファイル.bin",
            "...",
            &"s".repeat(255),
            &vec!["s".repeat(255); 16].join("/"),
        ] {
            assert_eq!(check_repo_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn hostile_repo_paths_are_refused() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("//x", "absolute"),
            ("..", "`..` segment"),
            ("../x", "`..` segment"),
            ("a/../../x", "`..` segment"),
            ("a/..", "`..` segment"),
            (".", "`.` segment"),
            ("a/./b", "`.` segment"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("..\\x", "backslash"),
            ("a\\b", "backslash"),
            ("a\0b", "control character `\\u{0}`"),
            ("a\nb", "control character `\\n`"),
            ("a\rb", "control character"),
            ("a\u{1b}[31mb", "control character"),
            ("a\u{7f}", "control character"),
            ("a\u{85}", "control character"),
        ];
        for (path, expected) in cases {
            let message = check_repo_path(path).unwrap_err();
            assert!(message.contains(expected), "{path:?}: {message}");
            assert!(
                !message.chars().any(|c| c.is_control()),
                "{path:?}: {message:?}"
            );
        }
        let long_segment = "s".repeat(256);
        assert!(
            check_repo_path(&long_segment)
                .unwrap_err()
                .contains("256 bytes")
        );
        let long_path = vec!["s".repeat(200); 21].join("/");
        assert!(long_path.len() > 4096);
        let message = check_repo_path(&long_path).unwrap_err();
        assert!(
            message.contains("at most 4096") && message.len() < 400,
            "{message}"
        );
    }

    #[test]
    fn nested_installs_are_found() {
        let plain = Path::new("transformers/acme");
        let owned = Path::new("transformers/acme/tiny-bert");
        let other = Path::new("transformers/acme-2");
        let gguf = Path::new("llama-cpp/acme/x");
        assert_eq!(
            find_nested_installs(&[
                ("acme/tiny-bert", owned),
                ("acme", plain),
                ("acme-2", other)
            ]),
            Some(("acme", "acme/tiny-bert"))
        );
        assert_eq!(
            find_nested_installs(&[("acme-2", other), ("acme", plain), ("x", gguf)]),
            None
        );
        assert_eq!(
            find_nested_installs(&[("a", plain), ("b", plain)]),
            Some(("a", "b"))
        );
    }
}
