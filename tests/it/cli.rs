//! End-to-end tests of the `kmm` binary against the fake hub: plan -> apply -> plan, layout,
//! registry, request counts, and one test per error code this release can produce.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fake_hub::{FakeHub, Fault, FileSpec, GatedMode, LoggedRequest, RepoSpec, ServerKind};
use crate::support::Run;
use crate::support::Workdir as Workspace;

const TOKEN: &str = "hf_SECRET_cli_token_0123456789";

fn gguf_repo() -> RepoSpec {
    RepoSpec::new("TheBloke/TinyLlama-GGUF").commit(vec![
        FileSpec::regular("README.md", b"# TinyLlama GGUF\n".to_vec()),
        FileSpec::regular("config.json", br#"{"model_type":"llama"}"#.to_vec()),
        FileSpec::lfs("tinyllama.Q4_K_M.gguf", gguf_bytes(300_000, 1)),
        FileSpec::lfs("tinyllama.Q2_K.gguf", gguf_bytes(200_000, 2)),
    ])
}

fn bert_repo() -> RepoSpec {
    RepoSpec::new("acme/tiny-bert").commit(bert_files(b"weights-v1"))
}

fn bert_files(weights_seed: &[u8]) -> Vec<FileSpec> {
    vec![
        FileSpec::regular(
            ".gitattributes",
            b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n".to_vec(),
        ),
        FileSpec::regular(
            "config.json",
            br#"{"model_type":"bert","hidden_size":8}"#.to_vec(),
        ),
        FileSpec::lfs("model.safetensors", weights_seed.repeat(40_000)),
        FileSpec::regular("tokenizer/tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
        FileSpec::regular("tokenizer/vocab.txt", b"[PAD]\n[UNK]\nhello\n".to_vec()),
    ]
}

fn distilbert_repo() -> RepoSpec {
    RepoSpec::new("distilbert/distilbert-base-uncased")
        .commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"distilbert"}"#.to_vec()),
            FileSpec::regular("vocab.txt", b"[PAD]\n[UNK]\n".to_vec()),
            FileSpec::lfs("model.safetensors", vec![3u8; 120_000]),
        ])
        .alias("distilbert-base-uncased")
}

fn gpt2_repo() -> RepoSpec {
    RepoSpec::new("openai-community/gpt2")
        .commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"gpt2"}"#.to_vec()),
            FileSpec::regular("README.md", b"gpt2\n".to_vec()),
            FileSpec::lfs("model.safetensors", vec![5u8; 150_000]),
        ])
        .alias("gpt2")
}

fn gated_repo() -> RepoSpec {
    RepoSpec::new("acme/gated")
        .commit(vec![
            FileSpec::regular("config.json", b"{}".to_vec()),
            FileSpec::lfs("model.safetensors", vec![9u8; 50_000]),
        ])
        .gated(GatedMode::Manual)
        .license("llama3.2")
        .allow_token(TOKEN)
}

/// A file that starts like a real GGUF (magic + version 3) and is `len` bytes long.
fn gguf_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend((0..len - bytes.len()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

fn standard_hub() -> FakeHub {
    FakeHub::start(vec![
        gguf_repo(),
        bert_repo(),
        distilbert_repo(),
        gpt2_repo(),
        gated_repo(),
    ])
}

const FOUR_MODELS: &str = r#"
[settings]
max_workers = 4

[models."TheBloke/TinyLlama-GGUF"]
include = ["*Q4_K_M.gguf", "config.json", "README.md"]

[models."acme/tiny-bert"]

[models."distilbert-base-uncased"]

[models."gpt2"]
"#;

fn file_requests(requests: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    requests.iter().filter(|r| r.is_file_request()).collect()
}

#[test]
fn plan_apply_plan_converges_and_second_apply_downloads_nothing() {
    let hub = standard_hub();
    let ws = Workspace::new(&hub, FOUR_MODELS);

    let first = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        first.code, 2,
        "stdout:\n{}\nstderr:\n{}",
        first.stdout, first.stderr
    );
    assert!(
        first.stdout.contains("+ TheBloke/TinyLlama-GGUF"),
        "{}",
        first.stdout
    );
    assert!(first.stdout.contains("4 to add"), "{}", first.stdout);
    assert!(
        !ws.models().join("model_registry.json").exists(),
        "plan must not write"
    );

    let apply = ws.run(&["apply"]);
    assert_eq!(
        apply.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        apply.stdout, apply.stderr
    );

    let again = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(
        again.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        again.stdout, again.stderr
    );

    // Without kari-models.lock, which would pin the commits and spare even the revision
    // lookups (tests/it/gitops.rs covers the lock).
    fs_err::remove_file(ws.path().join("kari-models.lock")).unwrap();
    hub.clear_requests();
    let second = ws.run(&["apply"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let requests = hub.requests();
    assert!(
        file_requests(&requests).is_empty(),
        "second apply fetched files: {requests:#?}"
    );
    // Only the revision lookups that branch revisions need: one per model.
    assert!(
        requests.iter().all(|r| r.server == ServerKind::Api
            && r.method == "GET"
            && r.path.starts_with("/api/models/")
            && r.path.contains("/revision/")),
        "unexpected requests: {requests:#?}"
    );
    let lookups: std::collections::BTreeSet<String> = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(lookups.len(), 4, "{lookups:#?}");
}

#[test]
fn commit_pinned_model_needs_no_request_once_installed() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let commit = bert_repo().head();
    let ws = Workspace::new(
        &hub,
        &format!("[models.\"acme/tiny-bert\"]\nrevision = \"{commit}\"\n"),
    );
    assert_eq!(ws.run(&["apply"]).code, 0);
    hub.clear_requests();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    let apply = ws.run(&["apply"]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    let requests = hub.requests();
    assert!(requests.is_empty(), "{requests:#?}");
    // And it works fully offline too.
    let offline = ws.run(&["--offline", "plan", "--detailed-exitcode"]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
}

#[test]
fn layout_config_mirror_and_registry_follow_the_seed() {
    let hub = standard_hub();
    let ws = Workspace::new(&hub, FOUR_MODELS);
    let apply = ws.run(&["apply"]);
    assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);
    let models = ws.models();
    let expect_files = |dir: &str, files: &[&str]| {
        let root = models.join(dir);
        let mut found = Vec::new();
        collect_files(&root, &root, &mut found);
        found.sort();
        let mut wanted: Vec<String> = files.iter().map(|f| f.to_string()).collect();
        wanted.sort();
        assert_eq!(found, wanted, "files under {dir}");
    };
    expect_files(
        "llama-cpp/TheBloke/TinyLlama-GGUF",
        &["README.md", "config.json", "tinyllama.Q4_K_M.gguf"],
    );
    expect_files(
        "transformers/acme/tiny-bert",
        &[
            ".gitattributes",
            "config.json",
            "model.safetensors",
            "tokenizer/tokenizer.json",
            "tokenizer/vocab.txt",
        ],
    );
    expect_files(
        "distilbert-base-uncased",
        &["config.json", "model.safetensors", "vocab.txt"],
    );
    expect_files(
        "transformers/gpt2",
        &["README.md", "config.json", "model.safetensors"],
    );

    // Installed bytes are exactly the upstream bytes.
    assert_eq!(
        fs_err::read(models.join("llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf"))
            .unwrap(),
        gguf_bytes(300_000, 1)
    );
    assert_eq!(
        fs_err::read(models.join("transformers/acme/tiny-bert/model.safetensors")).unwrap(),
        b"weights-v1".repeat(40_000)
    );

    // config.json mirrored to configs/<repo>.json.
    for (repo, kind) in [
        ("TinyLlama-GGUF", "llama"),
        ("tiny-bert", "bert"),
        ("distilbert-base-uncased", "distilbert"),
        ("gpt2", "gpt2"),
    ] {
        let text =
            fs_err::read_to_string(models.join("configs").join(format!("{repo}.json"))).unwrap();
        assert!(text.contains(kind), "configs/{repo}.json: {text}");
    }

    let registry = ws.registry();
    let records = registry.as_object().unwrap();
    assert_eq!(records.len(), 4);
    let gguf = &registry["TheBloke/TinyLlama-GGUF"];
    assert_eq!(gguf["model_id"], "TheBloke/TinyLlama-GGUF");
    assert_eq!(gguf["library"], "llama-cpp");
    assert_eq!(gguf["revision"], "main");
    assert_eq!(gguf["commit"], gguf_repo().head());
    let install_path = PathBuf::from(gguf["install_path"].as_str().unwrap());
    assert!(install_path.is_absolute());
    assert_eq!(
        install_path.canonicalize().unwrap(),
        models
            .join("llama-cpp/TheBloke/TinyLlama-GGUF")
            .canonicalize()
            .unwrap()
    );
    let files = gguf["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    let sizes: u64 = files.iter().map(|f| f["size"].as_u64().unwrap()).sum();
    assert_eq!(gguf["total_size"].as_u64().unwrap(), sizes);
    let installed_at = gguf["installed_at"].as_str().unwrap();
    assert!(
        installed_at.ends_with('Z') && installed_at.len() == 20,
        "{installed_at}"
    );
    let weights = files
        .iter()
        .find(|f| f["path"] == "tinyllama.Q4_K_M.gguf")
        .unwrap();
    assert_eq!(weights["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(registry["acme/tiny-bert"]["library"], "transformers");
    assert_eq!(
        registry["distilbert-base-uncased"]["library"],
        "transformers"
    );
    assert_eq!(registry["gpt2"]["library"], "transformers");
    // Internals never show in the layout.
    assert!(!models.join("llama-cpp/.kmm").exists());
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs_err::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}

#[test]
fn revision_bump_fetches_only_changed_files_and_removes_dropped_ones() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    assert_eq!(ws.run(&["apply"]).code, 0);

    // New commit: weights change, vocab.txt disappears, the rest is identical.
    let mut files = bert_files(b"weights-v2");
    files.retain(|f| f.path != "tokenizer/vocab.txt");
    hub.put_repo(
        RepoSpec::new("acme/tiny-bert")
            .commit(bert_files(b"weights-v1"))
            .commit(files),
    );
    // The lock pins `main` to the installed commit until `kmm lock --update`; without it,
    // plan follows the branch.
    fs_err::remove_file(ws.path().join("kari-models.lock")).unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("~ acme/tiny-bert"), "{}", plan.stdout);

    hub.clear_requests();
    let apply = ws.run(&["apply"]);
    assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);
    let fetched: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.server == ServerKind::Api && r.path.contains("/resolve/"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:#?}");
    assert!(fetched[0].ends_with("/model.safetensors"), "{fetched:#?}");
    let dir = ws.models().join("transformers/acme/tiny-bert");
    assert!(!dir.join("tokenizer/vocab.txt").exists());
    assert_eq!(
        fs_err::read(dir.join("model.safetensors")).unwrap(),
        b"weights-v2".repeat(40_000)
    );
    assert_eq!(ws.run(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn json_envelope_for_plan_and_apply_and_quiet_apply_is_silent() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    let plan = ws.run(&["plan", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let doc = plan.json();
    assert_eq!(doc["success"], true);
    assert_eq!(doc["error_code"], Value::Null);
    assert!(
        doc["message"].as_str().unwrap().contains("1 to add"),
        "{doc}"
    );
    assert!(
        doc["data"]["actions"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{doc}"
    );

    let quiet = ws.run(&["apply", "-q"]);
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert_eq!(quiet.stdout, "");
    assert_eq!(quiet.stderr, "");

    let apply = ws.run(&["apply", "--json"]);
    assert_eq!(apply.code, 0);
    assert_eq!(apply.json()["success"], true);
}

/// Runs `args` with `--json` and checks the error envelope and the exit code.
fn assert_error(run: &Run, code: &str, exit: i32) -> Value {
    assert_eq!(
        run.code, exit,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let doc = run.json();
    assert_eq!(doc["success"], false, "{doc}");
    assert_eq!(doc["error_code"], code, "{doc}");
    assert_eq!(doc["data"], Value::Null);
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "token leaked"
    );
    doc
}

#[test]
fn e_args_for_bad_usage() {
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::new(&hub, "");
    assert_error(&ws.run(&["plan", "--no-such-flag", "--json"]), "E_ARGS", 18);
    assert_error(
        &ws.run(&["--json", "--mirror", "not a url", "plan"]),
        "E_ARGS",
        18,
    );
    let human = ws.run(&["frobnicate"]);
    assert_eq!(human.code, 18);
    assert!(human.stderr.contains("error[E_ARGS]"), "{}", human.stderr);
}

#[test]
fn e_schema_for_a_bad_manifest_names_line_and_column() {
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\nrevison = \"main\"\n");
    let doc = assert_error(&ws.run(&["plan", "--json"]), "E_SCHEMA", 15);
    let message = doc["message"].as_str().unwrap();
    assert!(message.contains("kari-models.toml:2:"), "{message}");
    assert!(message.contains("revison"), "{message}");
}

#[test]
fn e_not_found_for_unknown_repo_revision_and_manifest() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/nope\"]\n");
    assert_error(&ws.run(&["plan", "--json"]), "E_NOT_FOUND", 19);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\nrevision = \"v9\"\n");
    assert_error(&ws.run(&["plan", "--json"]), "E_NOT_FOUND", 19);
    let ws = Workspace::new(&hub, "");
    assert_error(
        &ws.run(&["--manifest", "missing.toml", "plan", "--json"]),
        "E_NOT_FOUND",
        19,
    );
}

#[test]
fn e_net_for_unreachable_mirror_and_offline_without_state() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    // A port nobody listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mirror = format!("http://127.0.0.1:{port}");
    assert_error(
        &ws.run(&["--mirror", &mirror, "plan", "--json"]),
        "E_NET",
        10,
    );
    assert_error(&ws.run(&["--offline", "plan", "--json"]), "E_NET", 10);
    assert_error(
        &ws.run_with(&["plan", "--json"], &[("HF_HUB_OFFLINE", "1")]),
        "E_NET",
        10,
    );
}

#[test]
fn e_license_for_gated_repos_and_success_with_acceptance_and_token() {
    let hub = FakeHub::start(vec![gated_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/gated\"]\n");
    let doc = assert_error(&ws.run(&["plan", "--json"]), "E_LICENSE", 13);
    assert!(
        doc["message"].as_str().unwrap().contains("acme/gated"),
        "{doc}"
    );

    let accepted =
        "[models.\"acme/gated\"]\nlicense = { accepted = true, user_id = \"admin@kari\" }\n";
    let ws = Workspace::new(&hub, accepted);
    assert_error(&ws.run(&["plan", "--json"]), "E_LICENSE", 13);
    assert_error(
        &ws.run_with(&["plan", "--json"], &[("HF_TOKEN", "hf_not_allowed_token")]),
        "E_LICENSE",
        13,
    );
    hub.clear_requests();
    let ok = ws.run_with(&["apply", "-vv"], &[("HF_TOKEN", TOKEN)]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        !ok.stdout.contains(TOKEN) && !ok.stderr.contains(TOKEN),
        "token leaked in logs"
    );
    let registry = fs_err::read_to_string(ws.models().join("model_registry.json")).unwrap();
    assert!(!registry.contains(TOKEN));
    assert!(registry.contains("admin@kari"));
    // The token went to the hub, never to the CDN.
    for request in hub.requests() {
        let auth = request.header("authorization");
        match request.server {
            ServerKind::Api => assert_eq!(auth, Some(format!("Bearer {TOKEN}").as_str())),
            ServerKind::Cdn => assert_eq!(auth, None, "token sent to the CDN: {request:?}"),
        }
    }
}

#[test]
fn e_perm_for_an_invalid_token() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    // The fake hub rejects tokens it does not know, as the Hub does for expired ones.
    assert_error(
        &ws.run_with(
            &["plan", "--json"],
            &[("HF_TOKEN", "invalid_expired_token")],
        ),
        "E_PERM",
        12,
    );
}

#[test]
fn e_verify_when_bytes_do_not_match_and_nothing_is_installed() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    hub.add_fault(Fault::WrongBytes {
        path_contains: "model.safetensors".into(),
        times: 100,
    });
    assert_error(&ws.run(&["apply", "--json"]), "E_VERIFY", 14);
    assert!(!ws.models().join("transformers/acme/tiny-bert").exists());
    assert!(!ws.models().join("model_registry.json").exists());
    hub.clear_faults();
    assert_eq!(ws.run(&["apply"]).code, 0);
}

#[test]
fn e_quota_when_the_store_would_exceed_quota_gb() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(
        &hub,
        "[settings]\nquota_gb = 0.0001\n[models.\"acme/tiny-bert\"]\n",
    );
    let doc = assert_error(&ws.run(&["plan", "--json"]), "E_QUOTA", 17);
    assert!(doc["message"].as_str().unwrap().contains("quota"), "{doc}");
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\nmax_size_gb = 0.0001\n");
    assert_error(&ws.run(&["apply", "--json"]), "E_QUOTA", 17);
    // Refused while resolving, before the store is even locked: nothing was created.
    assert!(!ws.models().exists());
}

#[test]
fn e_disk_when_the_models_dir_cannot_be_created() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(
        &hub,
        "[settings]\nmodels_dir = \"blocker/models\"\n[models.\"acme/tiny-bert\"]\n",
    );
    // A plain file where a folder must go: every write below it fails.
    fs_err::write(ws.path().join("blocker"), b"not a directory").unwrap();
    assert_error(&ws.run(&["apply", "--json"]), "E_DISK", 11);
    assert_eq!(
        fs_err::read(ws.path().join("blocker")).unwrap(),
        b"not a directory"
    );
}

#[test]
fn e_locked_when_another_process_holds_the_store() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    let kmm_dir = ws.models().join(".kmm");
    fs_err::create_dir_all(&kmm_dir).unwrap();
    let holder = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(kmm_dir.join("lock"))
        .unwrap();
    holder.lock().unwrap();
    let doc = assert_error(
        &ws.run(&["--lock-timeout", "300ms", "apply", "--json"]),
        "E_LOCKED",
        20,
    );
    assert!(doc["message"].as_str().unwrap().contains("lock"), "{doc}");
    holder.unlock().unwrap();
    assert_eq!(ws.run(&["--lock-timeout", "5s", "apply"]).code, 0);
}

#[test]
fn stray_corrupt_files_are_deleted_by_apply() {
    let hub = FakeHub::start(vec![bert_repo()]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    assert_eq!(ws.run(&["apply"]).code, 0);
    let stray = ws
        .models()
        .join("transformers/acme/tiny-bert/model.safetensors.corrupt");
    fs_err::write(&stray, b"junk").unwrap();
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.stdout);
    assert_eq!(ws.run(&["apply"]).code, 0);
    assert!(!stray.exists());
}

/// The bytes kmm installs are exactly the bytes the real `huggingface_hub` client downloads, for
/// every file of every bundled fixture repo (legacy ids included).
#[test]
fn kmm_installs_the_same_bytes_as_the_real_client() {
    if let Some(reason) = crate::interop::interop_skip_reason() {
        eprintln!("{reason}");
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hub");
    let hub = FakeHub::start(crate::fake_hub::fixtures::load_dir(&fixtures));
    let models = [
        (
            "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        ),
        ("acme/tiny-bert", "transformers/acme/tiny-bert"),
        ("distilbert-base-uncased", "distilbert-base-uncased"),
        ("gpt2", "transformers/gpt2"),
    ];
    let manifest: String = models
        .iter()
        .map(|(id, _)| format!("[models.\"{id}\"]\n"))
        .collect();
    let ws = Workspace::new(&hub, &manifest);
    let apply = ws.run(&["apply"]);
    assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);

    for (id, dir) in models {
        let reference = ws.path().join("reference").join(dir);
        let expected = crate::interop::snapshot_with_real_client(&hub, id, "main", &reference);
        assert!(
            !expected.is_empty(),
            "the real client downloaded nothing for {id}"
        );
        let installed_root = ws.models().join(dir);
        let mut installed = Vec::new();
        collect_files(&installed_root, &installed_root, &mut installed);
        let installed: std::collections::BTreeMap<String, String> = installed
            .into_iter()
            .map(|path| {
                let bytes = fs_err::read(installed_root.join(&path)).unwrap();
                (path, kmm::upstream::sha256_hex(&bytes))
            })
            .collect();
        assert_eq!(
            installed, expected,
            "{id}: kmm and huggingface_hub disagree"
        );
    }
}

#[test]
fn models_whose_folders_would_nest_are_refused_before_anything_is_written() {
    // The plain id `acme` routes to transformers/acme/, which would hold acme/tiny-bert's folder.
    let plain =
        RepoSpec::new("acme").commit(vec![FileSpec::regular("config.json", b"{}".to_vec())]);
    let hub = FakeHub::start(vec![bert_repo(), plain]);
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n[models.\"acme\"]\n");
    let doc = assert_error(&ws.run(&["apply", "--json"]), "E_SCHEMA", 15);
    assert!(
        doc["message"].as_str().unwrap().contains("share a folder"),
        "{doc}"
    );
    assert!(!ws.models().join("transformers").exists());
}

#[test]
fn completions_parse_in_their_shells_and_man_pages_cover_every_verb() {
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::new(&hub, "");
    let bash = ws.ok(&["completions", "bash"]);
    let script = ws.file("kmm.bash");
    fs_err::write(&script, &bash.stdout).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for verb in ["apply", "fleet", "completions", "--shared-store"] {
        assert!(bash.stdout.contains(verb), "bash completions lack {verb}");
    }
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        assert!(
            ws.ok(&["completions", shell]).stdout.contains("fleet"),
            "{shell}"
        );
    }
    assert_eq!(
        ws.run(&["completions", "tcsh", "--json"]).error_code(),
        "E_ARGS"
    );

    let page = ws.ok(&["man"]);
    assert!(
        page.stdout.starts_with(".ie") && page.stdout.contains(".TH kmm 1"),
        "{}",
        page.stdout
    );
    let written = ws.ok(&["man", "man-pages", "--json"]).json();
    let pages: Vec<String> = written["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    let help = ws.ok(&["--help"]).stdout;
    let verbs: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|verb| *verb != "help")
        .collect();
    assert!(verbs.len() >= 15, "{help}");
    for verb in verbs {
        let name = format!("kmm-{verb}.1");
        assert!(pages.contains(&name), "no page for {verb}: {pages:?}");
        let text = fs_err::read_to_string(ws.file("man-pages").join(&name)).unwrap();
        assert!(text.contains(&format!(".TH kmm-{verb} 1")), "{name}");
    }
}
