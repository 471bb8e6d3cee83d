//! The hub-facing verbs through the real `kmm` binary against the fake hub: `list` (pages,
//! sort, search, limit), `info`, `download` (one-model reconcile, `--save`, quota, bad
//! arguments), `license`, `pin`, and `browse`'s refusals. Every `--json` answer is
//! deserialized and its `data` checked against `schemas/data/<verb>.schema.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fake_hub::{FakeHub, FileSpec, GatedMode, PageSizes, RepoSpec, ServerKind};
use crate::support::{Run, has_boot_id, journal_path, kmm_command, pretend_a_reboot};

const TOKEN: &str = "hf_verbs_token_0123456789";

/// A temp working directory and a way to run kmm in it against a hub.
pub(crate) struct Workspace {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) endpoint: String,
}

impl Run {
    /// The envelope of a success, its `data` checked against the verb's schema.
    fn data(&self, verb: &str) -> Value {
        let doc = self.json();
        assert_eq!(doc["success"], true, "{doc}\nstderr: {}", self.stderr);
        assert_eq!(doc["error_code"], Value::Null);
        let schema = schema(verb);
        if let Err(why) = validate(&schema, &doc["data"], "data") {
            panic!(
                "`{verb}` data does not match its schema: {why}\n{}",
                doc["data"]
            );
        }
        doc["data"].clone()
    }
}

impl Workspace {
    pub(crate) fn new(hub: &FakeHub, manifest: Option<&str>) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        if let Some(manifest) = manifest {
            fs_err::write(dir.path().join("kari-models.toml"), manifest).unwrap();
        }
        Workspace {
            dir,
            endpoint: hub.url(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn models(&self) -> PathBuf {
        self.path().join("models")
    }

    /// Environment for kmm: no token, no user settings, this hub.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "HF_HOME".to_string(),
                self.path().join("hf-home").display().to_string(),
            ),
            ("HF_ENDPOINT".to_string(), self.endpoint.clone()),
            ("COLUMNS".to_string(), "120".to_string()),
        ]
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = kmm_command(self.path(), &self.endpoint);
        for (name, value) in self.env() {
            cmd.env(name, value);
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        let run = Run::from_output(cmd.args(args).output().unwrap());
        assert!(
            !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
            "the token leaked"
        );
        run
    }

    pub(crate) fn registry(&self) -> Value {
        let text = fs_err::read_to_string(self.models().join("model_registry.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn schema(verb: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/data/{verb}.schema.json"));
    serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap()
}

/// The JSON Schema keywords the data schemas use: `type` (one or a list), `enum`, `required`,
/// `properties`, `additionalProperties: false`, `items`, `minimum`, `pattern` (only `^[0-9a-f]{40}$`).
fn validate(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let matches = types.iter().any(|kind| match *kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !matches {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {options:?}"));
    }
    if let (Some(minimum), Some(number)) = (schema.get("minimum"), value.as_f64())
        && number < minimum.as_f64().unwrap()
    {
        return Err(format!("{at}: {number} < {minimum}"));
    }
    if schema.get("pattern").is_some()
        && let Some(text) = value.as_str()
        && !(text.len() == 40
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(format!("{at}: `{text}` is not a commit sha"));
    }
    if let Some(object) = value.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().unwrap();
            if !object.contains_key(key) {
                return Err(format!("{at}: missing `{key}`"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => validate(sub, item, &format!("{at}.{key}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: unexpected `{key}`"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (index, item) in array.iter().enumerate() {
            validate(items, item, &format!("{at}[{index}]"))?;
        }
    }
    Ok(())
}

pub(crate) fn bert_repo(id: &str) -> RepoSpec {
    RepoSpec::new(id).commit(vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", b"weights".repeat(20_000)),
        FileSpec::regular("tokenizer/vocab.txt", b"[PAD]\n[UNK]\n".to_vec()),
    ])
}

fn gguf_repo(id: &str) -> RepoSpec {
    RepoSpec::new(id).commit(vec![
        FileSpec::regular("README.md", b"# GGUF\n".to_vec()),
        FileSpec::lfs("m.Q4_K_M.gguf", vec![7u8; 150_000]),
        FileSpec::lfs("m.Q2_K.gguf", vec![8u8; 100_000]),
    ])
}

fn listing_hub() -> FakeHub {
    let mut repos: Vec<RepoSpec> = (1..=5)
        .map(|n| {
            bert_repo(&format!("org/model-{n}"))
                .popularity(n * 100, 10 - n)
                .pipeline_tag("fill-mask")
        })
        .collect();
    repos.push(bert_repo("other/model-9"));
    let hub = FakeHub::start(repos);
    hub.set_page_sizes(PageSizes {
        models: 2,
        ..PageSizes::default()
    });
    hub
}

fn ids(data: &Value) -> Vec<String> {
    data["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn list_follows_pages_sorts_searches_and_limits() {
    let hub = listing_hub();
    let ws = Workspace::new(&hub, None);

    let run = ws.run(&["list", "--owner", "org", "--json"]);
    let data = run.data("list");
    assert_eq!(data["owner"], "org");
    assert_eq!(data["count"], 5);
    assert_eq!(
        ids(&data),
        [
            "org/model-1",
            "org/model-2",
            "org/model-3",
            "org/model-4",
            "org/model-5"
        ]
    );
    let pages = hub
        .requests()
        .iter()
        .filter(|request| request.path == "/api/models")
        .count();
    assert_eq!(pages, 3, "5 models in pages of 2");
    assert_eq!(data["models"][0]["downloads"], 100);
    assert_eq!(data["models"][0]["pipeline_tag"], "fill-mask");
    assert_eq!(data["models"][0]["gated"], "no");
    assert!(
        data["models"][0]["last_modified"].is_string(),
        "full=true asked"
    );

    let sorted = ws
        .run(&["list", "--owner", "org", "--sort", "downloads", "--json"])
        .data("list");
    assert_eq!(ids(&sorted)[0], "org/model-5", "descending by default");
    let ascending = ws
        .run(&[
            "list",
            "--owner",
            "org",
            "--sort",
            "likes",
            "--direction",
            "-1",
            "--json",
        ])
        .data("list");
    assert_eq!(ids(&ascending)[0], "org/model-1", "most likes first");
    let ascending = ws
        .run(&[
            "list",
            "--owner",
            "org",
            "--sort",
            "downloads",
            "--direction",
            "1",
            "--json",
        ])
        .data("list");
    assert_eq!(ids(&ascending)[0], "org/model-1");

    hub.clear_requests();
    let limited = ws
        .run(&["list", "--owner", "org", "--limit", "3", "--json"])
        .data("list");
    assert_eq!(limited["count"], 3);
    let searched = ws
        .run(&["list", "--owner", "org", "--search", "model-4", "--json"])
        .data("list");
    assert_eq!(ids(&searched), ["org/model-4"]);

    let human = ws.run(&["list", "--owner", "org", "--sort", "downloads"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("DOWNLOADS") && lines[0].contains("GATED")
    );
    assert!(lines[1].starts_with("org/model-5") && lines[1].contains("500"));
    assert_eq!(lines.len(), 6);

    let bad = ws.run(&["list", "--owner", "org", "--sort", "size", "--json"]);
    assert_eq!((bad.code, bad.error_code().as_str()), (18, "E_ARGS"));
    let offline = ws.run(&["list", "--owner", "org", "--offline", "--json"]);
    assert_eq!(offline.error_code(), "E_NET");
}

#[test]
fn info_shows_files_routing_license_and_install_state() {
    let hub = FakeHub::start(vec![gguf_repo("TheBloke/Tiny-GGUF").license("llama3.2")]);
    let ws = Workspace::new(&hub, None);

    let data = ws
        .run(&["info", "--model", "TheBloke/Tiny-GGUF", "--json"])
        .data("info");
    assert_eq!(data["commit"].as_str().unwrap().len(), 40);
    assert_eq!(data["files"].as_array().unwrap().len(), 3);
    let gguf = data["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|file| file["path"] == "m.Q4_K_M.gguf")
        .unwrap();
    assert_eq!(
        (gguf["size"].as_u64(), gguf["lfs"].as_bool()),
        (Some(150_000), Some(true))
    );
    assert_eq!(data["total_size"], 150_000 + 100_000 + 7);
    assert_eq!(data["routing"]["library"], "llama-cpp");
    assert!(
        data["routing"]["install_dir"]
            .as_str()
            .unwrap()
            .ends_with("models/llama-cpp/TheBloke/Tiny-GGUF")
    );
    assert_eq!(data["license"], "llama3.2");
    assert_eq!(data["gated"], "no");
    assert_eq!(data["installed"], Value::Null);

    // The selection flags show what download would take; --library reroutes.
    let narrowed = ws
        .run(&[
            "info",
            "--model",
            "TheBloke/Tiny-GGUF",
            "--exclude",
            "*.gguf",
            "--json",
        ])
        .data("info");
    assert_eq!(narrowed["selected_files"], 1);
    assert_eq!(narrowed["selected_size"], 7);
    assert_eq!(narrowed["routing"]["library"], "transformers");

    let human = ws.run(&["info", "--model", "TheBloke/Tiny-GGUF"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("m.Q4_K_M.gguf"), "{}", human.stdout);
    assert!(human.stdout.contains("150.0 kB"), "{}", human.stdout);
    assert!(human.stdout.contains("license: llama3.2"));
    assert!(human.stdout.contains("installed here: no"));

    let download = ws.run(&[
        "download",
        "--model",
        "TheBloke/Tiny-GGUF",
        "--include",
        "*Q2_K*",
    ]);
    assert_eq!(download.code, 0, "{}", download.stderr);
    let after = ws
        .run(&["info", "--model", "TheBloke/Tiny-GGUF", "--json"])
        .data("info");
    assert_eq!(after["installed"]["commit"], data["commit"]);
    assert_eq!(after["installed"]["total_size"], 100_000);
    let human = ws.run(&["info", "--model", "TheBloke/Tiny-GGUF"]);
    assert!(
        human.stdout.contains("installed here: yes, at commit"),
        "{}",
        human.stdout
    );

    let unknown = ws.run(&["info", "--model", "acme/missing", "--json"]);
    assert_eq!(
        (unknown.code, unknown.error_code().as_str()),
        (19, "E_NOT_FOUND")
    );
    let bad = ws.run(&["info", "--model", "a/b/c", "--json"]);
    assert_eq!((bad.code, bad.error_code().as_str()), (18, "E_ARGS"));
}

const COMMENTED: &str = r#"# Kari's models: edited by hand, comments matter.
[settings]
max_workers = 2   # slow uplink

# The chat model.
[models."TheBloke/Tiny-GGUF"]
include = ["*Q2_K*"]  # only the small one
"#;

#[test]
fn download_is_a_one_model_reconcile_that_leaves_others_and_the_manifest_alone() {
    let hub = FakeHub::start(vec![
        gguf_repo("TheBloke/Tiny-GGUF"),
        bert_repo("acme/bert"),
    ]);
    let ws = Workspace::new(
        &hub,
        Some(&COMMENTED.replace("[settings]", "[settings]\nprune = true")),
    );
    let manifest_before = fs_err::read_to_string(ws.path().join("kari-models.toml")).unwrap();
    let apply = ws.run(&["apply"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);

    let human = ws.run(&[
        "download",
        "--model",
        "acme/bert",
        "--exclude",
        "tokenizer/*",
    ]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("1 installed"), "{}", human.stdout);
    assert!(
        human.stderr.contains("+ acme/bert  (create"),
        "the plan is shown: {}",
        human.stderr
    );
    let run = ws.run(&["download", "--model", "acme/bert", "--json"]);
    let data = run.data("download");
    assert_eq!(
        data["report"]["models_updated"],
        serde_json::json!(["acme/bert"])
    );
    assert_eq!(
        data["report"]["files_downloaded"], 1,
        "only the excluded file is new"
    );
    let data = {
        // Back to nothing installed for acme/bert, then a fresh download.
        let mut registry = ws.registry();
        registry.as_object_mut().unwrap().remove("acme/bert");
        fs_err::write(
            ws.models().join("model_registry.json"),
            registry.to_string(),
        )
        .unwrap();
        fs_err::remove_dir_all(ws.models().join("transformers/acme/bert")).unwrap();
        ws.run(&["download", "--model", "acme/bert", "--json"])
            .data("download")
    };
    assert_eq!(
        data["report"]["models_installed"],
        serde_json::json!(["acme/bert"])
    );
    assert_eq!(
        data["report"]["models_removed"],
        serde_json::json!([]),
        "prune is off for download"
    );
    assert_eq!(data["report"]["files_downloaded"], 3);
    let registry = ws.registry();
    assert!(
        registry["TheBloke/Tiny-GGUF"].is_object(),
        "the declared model stays"
    );
    assert_eq!(registry["acme/bert"]["library"], "transformers");
    assert_eq!(registry["acme/bert"]["commit"].as_str().unwrap().len(), 40);
    assert_eq!(
        fs_err::read(ws.models().join("transformers/acme/bert/model.safetensors")).unwrap(),
        b"weights".repeat(20_000)
    );
    assert!(ws.models().join("configs/bert.json").is_file());
    assert_eq!(
        fs_err::read_to_string(ws.path().join("kari-models.toml")).unwrap(),
        manifest_before,
        "no --save: manifest untouched"
    );

    // A declared model downloads with the manifest's selection unless flags say otherwise.
    let again = ws.run(&["download", "--model", "TheBloke/Tiny-GGUF"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("already installed"),
        "{}",
        again.stdout
    );
    // Same path as apply: a second download makes no file request.
    hub.clear_requests();
    let third = ws
        .run(&["download", "--model", "acme/bert", "--json"])
        .data("download");
    assert_eq!(third["report"]["files_downloaded"], 0);
    assert!(
        !hub.requests()
            .iter()
            .any(|request| request.is_file_request())
    );
}

#[test]
fn download_save_adds_the_table_and_keeps_comments() {
    let hub = FakeHub::start(vec![
        gguf_repo("TheBloke/Tiny-GGUF"),
        bert_repo("acme/bert"),
    ]);
    let ws = Workspace::new(&hub, Some(COMMENTED));
    let run = ws.run(&[
        "download",
        "--model",
        "acme/bert",
        "--revision",
        "main",
        "--exclude",
        "tokenizer/*",
        "--save",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = fs_err::read_to_string(ws.path().join("kari-models.toml")).unwrap();
    assert!(
        text.starts_with(COMMENTED),
        "every byte before is kept:\n{text}"
    );
    assert_eq!(
        &text[COMMENTED.len()..],
        "\n[models.\"acme/bert\"]\nrevision = \"main\"\nexclude = [\"tokenizer/*\"]\n"
    );
    assert!(
        !ws.models()
            .join("transformers/acme/bert/tokenizer")
            .exists()
    );
    // Updating keeps the comments of the updated table too.
    let run = ws.run(&[
        "download",
        "--model",
        "TheBloke/Tiny-GGUF",
        "--include",
        "*Q4_K_M*",
        "--save",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = fs_err::read_to_string(ws.path().join("kari-models.toml")).unwrap();
    assert!(text.contains("# The chat model.\n[models.\"TheBloke/Tiny-GGUF\"]\ninclude = [\"*Q4_K_M*\"]  # only the small one\n"), "{text}");
    assert!(text.starts_with("# Kari's models: edited by hand, comments matter.\n[settings]\nmax_workers = 2   # slow uplink\n"));
    // The saved manifest describes the store: plan has nothing to do.
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    // Without a manifest, --save creates one.
    let fresh = Workspace::new(&hub, None);
    let run = fresh.run(&["download", "--model", "acme/bert", "--save", "-q"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        fs_err::read_to_string(fresh.path().join("kari-models.toml")).unwrap(),
        "[models.\"acme/bert\"]\n"
    );
}

#[test]
fn download_refuses_bad_arguments_quota_and_unknown_models_before_any_file_request() {
    let hub = FakeHub::start(vec![
        gguf_repo("TheBloke/Tiny-GGUF"),
        bert_repo("acme/bert"),
    ]);
    let ws = Workspace::new(&hub, None);
    assert_eq!(ws.run(&["download", "--model", "acme/bert", "-q"]).code, 0);
    hub.clear_requests();

    // 250 kB more on top of the ~140 kB installed; 0.0003 GB = 300 kB.
    let quota = ws.run(&[
        "download",
        "--model",
        "TheBloke/Tiny-GGUF",
        "--max-quota-gb",
        "0.0003",
        "--json",
    ]);
    assert_eq!((quota.code, quota.error_code().as_str()), (17, "E_QUOTA"));
    // The error names the flag the user gave, not the manifest setting.
    assert!(
        quota.json()["message"]
            .as_str()
            .unwrap()
            .contains("over --max-quota-gb = 0.0003"),
        "{}",
        quota.stdout
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|request| request.is_file_request()),
        "quota refused before any file request"
    );
    assert!(!ws.models().join("llama-cpp").exists());
    // --force-compat blocks on a header kmm cannot read (this fixture is not a real GGUF).
    let unchecked = ws.run(&[
        "download",
        "--model",
        "TheBloke/Tiny-GGUF",
        "--max-quota-gb",
        "1",
        "--force-compat",
        "--json",
    ]);
    assert_eq!(
        (unchecked.code, unchecked.error_code().as_str()),
        (16, "E_COMPAT")
    );
    assert!(!ws.models().join("llama-cpp").exists());
    let fits = ws.run(&[
        "download",
        "--model",
        "TheBloke/Tiny-GGUF",
        "--max-quota-gb",
        "1",
        "-q",
    ]);
    assert_eq!(fits.code, 0, "{}", fits.stderr);

    for (args, code) in [
        (
            vec!["download", "--model", "not a repo", "--json"],
            "E_ARGS",
        ),
        (
            vec![
                "download",
                "--model",
                "acme/bert",
                "--include",
                "[",
                "--json",
            ],
            "E_ARGS",
        ),
        (
            vec![
                "download",
                "--model",
                "acme/bert",
                "--revision",
                "has space",
                "--json",
            ],
            "E_ARGS",
        ),
        (
            vec![
                "download",
                "--model",
                "acme/bert",
                "--library",
                "pytorch",
                "--json",
            ],
            "E_ARGS",
        ),
        (
            vec![
                "download",
                "--model",
                "acme/bert",
                "--max-quota-gb",
                "-1",
                "--json",
            ],
            "E_ARGS",
        ),
        (
            vec!["download", "--model", "acme/missing", "--json"],
            "E_NOT_FOUND",
        ),
        (
            vec![
                "download",
                "--model",
                "acme/bert",
                "--include",
                "*.nothing",
                "--json",
            ],
            "E_NOT_FOUND",
        ),
    ] {
        let run = ws.run(&args);
        assert_eq!(run.error_code(), code, "{args:?}: {}", run.stdout);
    }
    assert!(
        !ws.path().join("kari-models.toml").exists(),
        "no manifest created without --save"
    );
}

#[test]
fn license_acceptance_before_install_unlocks_a_gated_download() {
    let gated = bert_repo("acme/gated")
        .license("other")
        .gated(GatedMode::Manual)
        .allow_token(TOKEN);
    let hub = FakeHub::start(vec![gated]);
    let ws = Workspace::new(&hub, None);
    let token = [("HF_TOKEN", TOKEN)];

    let show = ws
        .run(&["license", "--model", "acme/gated", "--show", "--json"])
        .data("license");
    assert_eq!(
        (show["license"].as_str(), show["gated"].as_str()),
        (Some("other"), Some("manual"))
    );
    assert_eq!(show["accepted"], Value::Null);
    let info = ws.run(&["info", "--model", "acme/gated"]);
    assert!(
        info.stdout.contains("gated: yes (manual approval)"),
        "{}",
        info.stdout
    );
    assert!(info.stdout.contains("download needs:"), "{}", info.stdout);
    let human = ws.run(&["license", "--model", "acme/gated", "--show"]);
    assert!(
        human.stdout.contains("gated:    yes (manual approval)"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("accepted: no"));

    let refused = ws.run_with(&["download", "--model", "acme/gated", "--json"], &token);
    assert_eq!(
        (refused.code, refused.error_code().as_str()),
        (13, "E_LICENSE")
    );
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("kmm license")
    );

    let accept = ws.run(&[
        "license",
        "--model",
        "acme/gated",
        "--accept",
        "--user-id",
        "admin@kari",
        "--license-type",
        "other",
        "--json",
    ]);
    let accepted = accept.data("license");
    assert_eq!(accepted["accepted_in"], "pending");
    assert_eq!(accepted["accepted"]["user_id"], "admin@kari");
    assert!(
        !ws.models().join("model_registry.json").exists(),
        "no fake record"
    );

    // Accepted but no token: still E_LICENSE, with the HF_TOKEN hint.
    let no_token = ws.run(&["download", "--model", "acme/gated"]);
    assert_eq!(no_token.code, 13, "{}", no_token.stderr);
    assert!(no_token.stderr.contains("HF_TOKEN"));

    // Accepted, but the hub has not granted this (valid) token access: its 403 is E_LICENSE.
    let denied = ws.run_with(
        &["download", "--model", "acme/gated", "--json"],
        &[("HF_TOKEN", "hf_valid_but_not_granted")],
    );
    assert_eq!(denied.error_code(), "E_LICENSE");
    assert!(
        denied.json()["message"]
            .as_str()
            .unwrap()
            .contains("HF_TOKEN")
    );
    assert!(
        !hub.requests()
            .iter()
            .any(|request| request.is_file_request())
    );

    // `kmm apply` of a manifest declaring it without `license` uses the same acceptance.
    fs_err::write(
        ws.path().join("kari-models.toml"),
        "[models.\"acme/gated\"]\n",
    )
    .unwrap();
    let plan = ws.run_with(&["plan", "--json"], &token);
    assert_eq!(plan.json()["success"], true, "{}", plan.stdout);

    let run = ws.run_with(&["download", "--model", "acme/gated", "-q"], &token);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        ws.run_with(&["plan", "--detailed-exitcode"], &token).code,
        0
    );
    let record = &ws.registry()["acme/gated"];
    assert_eq!(record["license_accepted"]["user_id"], "admin@kari");
    assert_eq!(record["license_accepted"]["license_type"], "other");
    assert!(record["license_accepted"]["accepted_at"].is_string());
    let show = ws
        .run(&["license", "--model", "acme/gated", "--show", "--json"])
        .data("license");
    assert_eq!(show["accepted_in"], "registry");

    // A later acceptance of an installed model goes into its record.
    let again = ws.run(&[
        "license",
        "--model",
        "acme/gated",
        "--accept",
        "--user-id",
        "ops@kari",
        "--license-type",
        "other",
    ]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        ws.registry()["acme/gated"]["license_accepted"]["user_id"],
        "ops@kari"
    );

    let missing = ws.run(&["license", "--model", "acme/nope", "--show", "--json"]);
    assert_eq!(missing.error_code(), "E_NOT_FOUND");
    let usage = ws.run(&["license", "--model", "acme/gated", "--accept", "--json"]);
    assert_eq!((usage.code, usage.error_code().as_str()), (18, "E_ARGS"));
}

#[test]
fn pin_sets_the_registry_and_plan_shows_a_differing_manifest() {
    let hub = FakeHub::start(vec![bert_repo("acme/bert")]);
    let ws = Workspace::new(&hub, Some("[models.\"acme/bert\"]\n"));

    let missing = ws.run(&["pin", "--model", "acme/bert", "--json"]);
    assert_eq!(
        (missing.code, missing.error_code().as_str()),
        (19, "E_NOT_FOUND")
    );
    assert_eq!(ws.run(&["apply", "-q"]).code, 0);

    let pinned = ws
        .run(&["pin", "--model", "acme/bert", "--json"])
        .data("pin");
    assert_eq!(
        (pinned["pinned"].as_bool(), pinned["changed"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(ws.registry()["acme/bert"]["pinned"], true);
    let human = ws.run(&["pin", "--model", "acme/bert"]);
    assert!(human.stdout.contains("already"), "{}", human.stdout);

    // The manifest does not declare `pinned`: the pin survives plan and apply.
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.stdout);
    assert_eq!(ws.run(&["apply", "-q"]).code, 0);
    assert_eq!(ws.registry()["acme/bert"]["pinned"], true);

    // The manifest declares the opposite: plan shows it.
    fs_err::write(
        ws.path().join("kari-models.toml"),
        "[models.\"acme/bert\"]\npinned = false\n",
    )
    .unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2);
    assert!(
        plan.stdout.contains("pinned changes to false"),
        "{}",
        plan.stdout
    );
    let pin = ws
        .run(&["pin", "--model", "acme/bert", "--json"])
        .data("pin");
    assert_eq!(pin["manifest_pinned"], false);

    let unpinned = ws
        .run(&["pin", "--model", "acme/bert", "--unpin", "--json"])
        .data("pin");
    assert_eq!(unpinned["pinned"], false);
    assert!(ws.registry()["acme/bert"].get("pinned").is_none());
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}", plan.stdout);
}

#[test]
fn browse_refuses_json_and_a_missing_terminal() {
    let hub = FakeHub::start(vec![bert_repo("acme/bert")]);
    let ws = Workspace::new(&hub, None);
    let json = ws.run(&["browse", "--owner", "acme", "--json"]);
    assert_eq!((json.code, json.error_code().as_str()), (18, "E_ARGS"));
    // assert_cmd gives the child pipes, not a terminal.
    let piped = ws.run(&["browse", "--owner", "acme"]);
    assert_eq!(piped.code, 18);
    assert!(piped.stderr.contains("terminal"), "{}", piped.stderr);
    assert!(hub.requests().is_empty(), "refused before asking the hub");
}

#[test]
fn library_api_installs_through_the_engine() {
    use kmm::api;
    use kmm::hub::{HubClient, HubConfig};

    let hub = FakeHub::start(vec![
        gguf_repo("TheBloke/Tiny-GGUF"),
        bert_repo("acme/bert"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = HubClient::new(HubConfig::new(hub.url())).unwrap();
        let listed = api::list_models_for_owner(&client, "TheBloke", &api::ListOptions::new(5))
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        let repo = api::get_model_files(&client, "TheBloke/Tiny-GGUF", None)
            .await
            .unwrap();
        assert!(api::is_gguf_repo(&repo.files));
        let dest = api::resolve_install_root(&models, "TheBloke/Tiny-GGUF", None, &repo.files);
        assert_eq!(dest, models.join("llama-cpp/TheBloke/Tiny-GGUF"));

        let options = api::DownloadOptions {
            include: vec!["*Q2_K*".into()],
            resume: false,
            max_workers: Some(2),
            ..Default::default()
        };
        let installed = api::download_snapshot(&client, &models, "TheBloke/Tiny-GGUF", &options)
            .await
            .unwrap();
        assert_eq!(installed.install_dir, dest);
        assert_eq!(installed.report.files_downloaded, 1);
        assert_eq!(
            fs_err::read(dest.join("m.Q2_K.gguf")).unwrap(),
            vec![8u8; 100_000]
        );
        let registry = api::load_registry(&models).unwrap();
        let record = &registry.models["TheBloke/Tiny-GGUF"];
        assert_eq!(record.commit.as_deref(), Some(repo.commit.as_str()));
        assert_eq!(record.total_size, 100_000);

        // As if the machine had crashed and rebooted since: the durability journal names the
        // download under an earlier boot.
        let reboot = has_boot_id();
        if reboot {
            pretend_a_reboot(&models);
        }

        // Same model again: nothing to download (the file is hashed, not fetched), and the
        // journal lets go of what this run checked.
        let again = api::download_snapshot(&client, &models, "TheBloke/Tiny-GGUF", &options)
            .await
            .unwrap();
        assert_eq!(again.report.files_downloaded, 0);
        if reboot {
            let journal = fs_err::read_to_string(journal_path(&models)).unwrap_or_default();
            assert!(!journal.contains("an-earlier-boot"), "{journal}");
        }
        assert_eq!(
            api::parse_owner_repo("TheBloke/Tiny-GGUF").unwrap(),
            (Some("TheBloke".to_string()), "Tiny-GGUF".to_string())
        );
        let missing = api::get_model_files(&client, "acme/missing", None)
            .await
            .unwrap_err();
        assert_eq!(missing.code(), kmm::ErrorCode::NotFound);
    });
}

#[test]
fn library_api_refuses_an_install_over_its_quota_before_downloading() {
    use kmm::api;
    use kmm::hub::{HubClient, HubConfig};

    let hub = FakeHub::start(vec![gguf_repo("TheBloke/Tiny-GGUF")]);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = HubClient::new(HubConfig::new(hub.url())).unwrap();
        let options = |quota_gb| api::DownloadOptions {
            include: vec!["*Q2_K*".into()],
            quota_gb: Some(quota_gb),
            ..Default::default()
        };
        // The selected file is 100 kB; a 50 kB quota cannot hold it.
        let refused =
            api::download_snapshot(&client, &models, "TheBloke/Tiny-GGUF", &options(5e-5))
                .await
                .unwrap_err();
        assert_eq!(refused.code(), kmm::ErrorCode::Quota, "{refused}");
        assert!(
            hub.requests().iter().all(|r| r.server != ServerKind::Cdn),
            "refused before any download: {:?}",
            hub.requests()
        );
        assert!(api::load_registry(&models).unwrap().models.is_empty());
        assert!(!models.join("llama-cpp/TheBloke/Tiny-GGUF").exists());

        // A quota that holds it installs it.
        let installed =
            api::download_snapshot(&client, &models, "TheBloke/Tiny-GGUF", &options(1e-3))
                .await
                .unwrap();
        assert_eq!(installed.report.files_downloaded, 1);
    });
}
