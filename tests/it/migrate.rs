//! Migration and drift, end to end: the real `kmm` binary on stores laid out the way the older
//! Python tool (and hands) left them (`tests/fixtures/legacy/`), the fake hub on 127.0.0.1
//! serving `tests/fixtures/legacy/hub/`, and its request log proving that files already on disk
//! are never downloaded. Each store converges with one `kmm migrate` or `kmm apply`, and the
//! next plan is empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::fake_hub::fixtures::load_dir;
use crate::fake_hub::{FakeHub, LoggedRequest, RepoSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy")
}

fn hub_repos() -> Vec<RepoSpec> {
    load_dir(&fixtures().join("hub"))
}

fn hub_file(repo: &str, path: &str) -> Vec<u8> {
    fs_err::read(fixtures().join("hub").join(repo).join(path)).unwrap()
}

struct Store {
    dir: tempfile::TempDir,
    endpoint: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Store {
    /// A temp copy of `tests/fixtures/legacy/cases/<case>/` with the registry's `@MODELS@`
    /// replaced by the absolute models directory.
    fn from_case(hub: &FakeHub, case: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixtures().join("cases").join(case), dir.path());
        let store = Store {
            dir,
            endpoint: hub.url(),
        };
        let registry = store.models().join("model_registry.json");
        if registry.exists() {
            let text = fs_err::read_to_string(&registry).unwrap();
            let models = store.models().to_string_lossy().into_owned();
            fs_err::write(&registry, text.replace("@MODELS@", &models)).unwrap();
        }
        store
    }

    fn empty(hub: &FakeHub, manifest: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("kari-models.toml"), manifest).unwrap();
        fs_err::create_dir_all(dir.path().join("models")).unwrap();
        Store {
            dir,
            endpoint: hub.url(),
        }
    }

    fn models(&self) -> PathBuf {
        self.dir.path().join("models")
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = crate::support::kmm_command(self.dir.path(), &self.endpoint)
            .args(args)
            .output()
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn registry(&self) -> Value {
        let text = fs_err::read_to_string(self.models().join("model_registry.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn read(&self, relative: &str) -> Vec<u8> {
        fs_err::read(self.models().join(relative)).unwrap()
    }

    fn exists(&self, relative: &str) -> bool {
        self.models().join(relative).exists()
    }

    /// Every regular file under the models directory (but `.kmm/`), relative, sorted.
    fn files(&self) -> Vec<String> {
        let mut found = Vec::new();
        list_files(&self.models(), "", &mut found);
        found.retain(|path| !path.starts_with(".kmm/"));
        found.sort();
        found
    }

    /// `kmm plan --json`: its actions' ids.
    fn planned_actions(&self) -> Vec<String> {
        let doc = self.run(&["plan", "--json"]).ok().json();
        doc["data"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs_err::create_dir_all(to).unwrap();
    for entry in fs_err::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs_err::copy(entry.path(), &target).unwrap();
        }
    }
}

fn list_files(dir: &Path, prefix: &str, found: &mut Vec<String>) {
    for entry in fs_err::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            list_files(&entry.path(), &key, found);
        } else {
            found.push(key);
        }
    }
}

/// Paths of the requests for file bytes (`/resolve/` and the CDN).
fn file_requests(hub: &FakeHub) -> Vec<String> {
    hub.requests()
        .iter()
        .filter(|r: &&LoggedRequest| r.is_file_request())
        .map(|r| r.path.clone())
        .collect()
}

/// The repo files asked for through `/resolve/` (a download may follow a redirect to the CDN,
/// which is named by hash), sorted and deduplicated.
fn resolved_files(hub: &FakeHub) -> Vec<String> {
    let mut files: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.path.contains("/resolve/"))
        .map(|r| r.path.rsplit('/').next().unwrap().to_string())
        .collect();
    files.sort();
    files.dedup();
    files
}

#[test]
fn flat_ggufs_move_into_their_folders_without_downloads() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::from_case(&hub, "flat-gguf");
    let finetune = store.read("llama-cpp/my-finetune.gguf");

    let dry = store.run(&["migrate", "--dry-run"]).ok();
    assert!(
        dry.stdout
            .contains("found at llama-cpp/tinyllama.Q4_K_M.gguf, no download"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("llama-cpp/my-finetune.gguf: 1 file(s) no registry record"),
        "{}",
        dry.stdout
    );
    assert!(
        store.exists("llama-cpp/tinyllama.Q4_K_M.gguf"),
        "dry run moved"
    );

    store.run(&["migrate"]).ok();
    assert_eq!(file_requests(&hub), Vec::<String>::new());
    assert_eq!(
        store.files(),
        [
            "llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf",
            "llama-cpp/acme/other-GGUF/other.Q4_0.gguf",
            "llama-cpp/my-finetune.gguf",
            "model_registry.json",
        ]
    );
    assert_eq!(
        store.read("llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf"),
        hub_file("TheBloke/TinyLlama-GGUF", "tinyllama.Q4_K_M.gguf")
    );
    // Not attributable: left exactly as it was.
    assert_eq!(store.read("llama-cpp/my-finetune.gguf"), finetune);

    // The old record is upgraded in place: new path, hashes, unknown fields kept.
    let registry = store.registry();
    let tiny = &registry["TheBloke/TinyLlama-GGUF"];
    assert_eq!(
        tiny["install_path"],
        store
            .models()
            .join("llama-cpp/TheBloke/TinyLlama-GGUF")
            .to_string_lossy()
            .as_ref()
    );
    // Moved, not reinstalled: the older tool's install time stays.
    assert_eq!(tiny["installed_at"], "2025-03-01T10:00:00Z");
    assert_eq!(tiny["source"], "huggingface");
    assert_eq!(tiny["notes"]["quant"], "Q4_K_M");
    assert_eq!(tiny["files"][0]["downloaded_by"], "model_manager.py");
    assert_eq!(tiny["files"][0]["sha256"].as_str().unwrap().len(), 64);
    assert!(registry["acme/other-GGUF"]["files"][0]["sha256"].is_string());

    // A second migrate has nothing to move; apply fetches exactly the two files never on disk.
    let again = store.run(&["migrate", "--dry-run", "--json"]).ok().json();
    assert_eq!(
        again["data"]["actions"],
        Value::Array(Vec::new()),
        "{again}"
    );
    hub.clear_requests();
    store.run(&["apply"]).ok();
    assert_eq!(resolved_files(&hub), ["README.md", "config.json"]);
    assert_eq!(store.planned_actions(), Vec::<String>::new());
    assert_eq!(store.read("llama-cpp/my-finetune.gguf"), finetune);
}

#[test]
fn wrong_folders_converge_with_one_migrate_and_no_file_requests() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::from_case(&hub, "wrong-folders");
    let legacy = store.read("llm_registry.json");

    store.run(&["migrate"]).ok();
    assert_eq!(file_requests(&hub), Vec::<String>::new());
    assert_eq!(
        store.files(),
        [
            "configs/TinyLlama-GGUF.json",
            "configs/other-GGUF.json",
            "configs/tiny-bert.json",
            "llama-cpp/TheBloke/TinyLlama-GGUF/README.md",
            "llama-cpp/TheBloke/TinyLlama-GGUF/config.json",
            "llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf",
            "llama-cpp/acme/other-GGUF/config.json",
            "llama-cpp/acme/other-GGUF/other.Q4_0.gguf",
            "llm_registry.json",
            "model_registry.json",
            // The user's own file travels with the folder; the `*.corrupt` leftover is gone.
            "transformers/acme/tiny-bert/NOTES.txt",
            "transformers/acme/tiny-bert/config.json",
            "transformers/acme/tiny-bert/model.safetensors",
            "transformers/acme/tiny-bert/vocab.txt",
        ]
    );
    assert_eq!(store.read("llm_registry.json"), legacy);
    assert_eq!(
        store.read("transformers/acme/tiny-bert/NOTES.txt"),
        b"my notes about this model\n"
    );
    assert_eq!(
        store.read("configs/tiny-bert.json"),
        hub_file("acme/tiny-bert", "config.json")
    );

    let registry = store.registry();
    let bert = &registry["acme/tiny-bert"];
    assert!(
        bert["install_path"]
            .as_str()
            .unwrap()
            .ends_with("/models/transformers/acme/tiny-bert"),
        "{bert}"
    );
    assert_eq!(bert["custom_tags"], serde_json::json!(["nlp", "tiny"]));
    assert_eq!(bert["license_accepted"]["user_id"], "kari");
    assert!(bert["files"][1]["sha256"].is_string(), "{bert}");
    // The unrecorded folder that matched upstream is adopted, the GGUF in a transformers
    // folder is registered where it belongs.
    assert!(registry["TheBloke/TinyLlama-GGUF"]["commit"].is_string());
    assert_eq!(registry["acme/other-GGUF"]["library"], "llama-cpp");

    assert_eq!(store.planned_actions(), Vec::<String>::new());
    hub.clear_requests();
    let apply = store.run(&["apply"]).ok();
    assert!(apply.stdout.contains("No changes"), "{}", apply.stdout);
    assert_eq!(file_requests(&hub), Vec::<String>::new());
    let verify = store.run(&["verify"]);
    assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
}

#[test]
fn seed_layout_converges_with_one_apply_fetching_only_the_missing_file() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::from_case(&hub, "seed-layout");

    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout.contains("record gains the upstream hashes"),
        "{}",
        plan.stdout
    );
    store.run(&["apply"]).ok();
    assert_eq!(resolved_files(&hub), ["README.md"]);
    assert!(store.exists("configs/TinyLlama-GGUF.json"));
    let registry = store.registry();
    assert_eq!(registry["acme/tiny-bert"]["team"], "search");
    assert_eq!(registry["TheBloke/TinyLlama-GGUF"]["pinned"], true);
    assert!(registry["acme/tiny-bert"]["files"][2]["git_sha1"].is_string());

    hub.clear_requests();
    assert_eq!(store.planned_actions(), Vec::<String>::new());
    store.run(&["apply"]).ok();
    assert_eq!(file_requests(&hub), Vec::<String>::new());
}

#[test]
fn verify_catches_a_same_size_change_that_the_default_plan_cannot_see() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::empty(&hub, "[models.\"acme/tiny-bert\"]\n");
    store.run(&["apply"]).ok();
    assert_eq!(store.planned_actions(), Vec::<String>::new());

    // Same size, different bytes, written in place, and the mtime put back: nothing `stat`
    // can see.
    let weights = store
        .models()
        .join("transformers/acme/tiny-bert/model.safetensors");
    let mtime = fs_err::metadata(&weights).unwrap().modified().unwrap();
    let mut bytes = fs_err::read(&weights).unwrap();
    bytes[100] ^= 0xff;
    fs_err::write(&weights, &bytes).unwrap();
    set_mtime(&weights, mtime);

    assert_eq!(store.planned_actions(), Vec::<String>::new());
    let verify = store.run(&["verify"]);
    assert_eq!(verify.code, 2, "{}\n{}", verify.stdout, verify.stderr);
    assert!(
        verify.stdout.contains("model.safetensors") && verify.stdout.contains("(tampered)"),
        "{}",
        verify.stdout
    );
    let doc = store.run(&["plan", "--verify", "--json"]).ok().json();
    let ids: Vec<&str> = doc["data"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "fetch:acme/tiny-bert:model.safetensors",
            "install:acme/tiny-bert",
            "mirror-config:acme/tiny-bert",
            "register:acme/tiny-bert",
        ]
    );

    hub.clear_requests();
    store.run(&["apply", "--verify"]).ok();
    assert_eq!(resolved_files(&hub), ["model.safetensors"]);
    assert_eq!(
        fs_err::read(&weights).unwrap(),
        hub_file("acme/tiny-bert", "model.safetensors")
    );
    assert_eq!(store.run(&["verify"]).code, 0);
}

fn set_mtime(path: &Path, time: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

#[test]
fn a_same_size_edit_with_a_new_mtime_is_caught_by_the_default_plan() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::empty(&hub, "[models.\"acme/tiny-bert\"]\n");
    store.run(&["apply"]).ok();
    assert!(store.registry()["acme/tiny-bert"]["files"][0]["mtime_ns"].is_u64());
    let folder = store.models().join("transformers/acme/tiny-bert");
    let vocab = folder.join("vocab.txt");
    let mut bytes = fs_err::read(&vocab).unwrap();
    bytes[0] = b'#';
    fs_err::write(&vocab, &bytes).unwrap();
    // A touch alone (same bytes, new mtime) is hashed and found intact.
    set_mtime(
        &folder.join("config.json"),
        std::time::SystemTime::now() + std::time::Duration::from_secs(5),
    );

    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout.contains("vocab.txt") && plan.stdout.contains("(tampered)"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("config.json"), "{}", plan.stdout);
    hub.clear_requests();
    store.run(&["apply"]).ok();
    assert_eq!(resolved_files(&hub), ["vocab.txt"]);
    assert_eq!(
        fs_err::read(&vocab).unwrap(),
        hub_file("acme/tiny-bert", "vocab.txt")
    );
    assert_eq!(store.planned_actions(), Vec::<String>::new());
}

#[test]
fn a_file_another_installed_model_holds_is_copied_not_downloaded() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::empty(&hub, "[models.\"acme/tiny-bert\"]\n");
    store.run(&["apply"]).ok();
    fs_err::write(
        store.dir.path().join("kari-models.toml"),
        "[models.\"acme/tiny-bert\"]\n\n[models.\"acme/tiny-bert-copy\"]\n",
    )
    .unwrap();
    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout
            .contains("copied from transformers/acme/tiny-bert/model.safetensors, no download"),
        "{}",
        plan.stdout
    );
    hub.clear_requests();
    store.run(&["apply"]).ok();
    assert_eq!(resolved_files(&hub), ["config.json"]);
    assert_eq!(
        store.read("transformers/acme/tiny-bert-copy/model.safetensors"),
        hub_file("acme/tiny-bert", "model.safetensors")
    );
    // The source model is intact, and the two are separate files.
    use std::os::unix::fs::MetadataExt as _;
    let inode = |path: &str| fs_err::metadata(store.models().join(path)).unwrap().ino();
    assert_ne!(
        inode("transformers/acme/tiny-bert-copy/model.safetensors"),
        inode("transformers/acme/tiny-bert/model.safetensors")
    );
    assert_eq!(store.planned_actions(), Vec::<String>::new());
    assert_eq!(store.run(&["verify"]).code, 0);
}

#[test]
fn unselected_files_are_reported_and_removed_only_under_prune() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::empty(&hub, "[models.\"acme/tiny-bert\"]\n");
    store.run(&["apply"]).ok();
    fs_err::write(
        store.models().join("transformers/acme/tiny-bert/extra.txt"),
        "mine",
    )
    .unwrap();
    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout
            .contains("acme/tiny-bert: 1 file(s) in its folder are not selected"),
        "{}",
        plan.stdout
    );
    assert_eq!(store.planned_actions(), Vec::<String>::new());

    fs_err::write(
        store.dir.path().join("kari-models.toml"),
        "[settings]\nprune = true\n\n[models.\"acme/tiny-bert\"]\n",
    )
    .unwrap();
    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout
            .contains("removes 1 file(s) not selected (prune)"),
        "{}",
        plan.stdout
    );
    hub.clear_requests();
    store.run(&["apply"]).ok();
    assert!(!store.exists("transformers/acme/tiny-bert/extra.txt"));
    assert!(store.exists("transformers/acme/tiny-bert/vocab.txt"));
    assert_eq!(file_requests(&hub), Vec::<String>::new());
    assert_eq!(store.planned_actions(), Vec::<String>::new());
}

#[test]
fn a_record_whose_folder_is_gone_is_reported() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::from_case(&hub, "seed-layout");
    fs_err::write(
        store.dir.path().join("kari-models.toml"),
        "[models.\"TheBloke/TinyLlama-GGUF\"]\ninclude = [\"*Q4_K_M.gguf\", \"config.json\", \"README.md\"]\n",
    )
    .unwrap();
    fs_err::remove_dir_all(store.models().join("transformers/acme/tiny-bert")).unwrap();
    let plan = store.run(&["plan"]).ok();
    assert!(
        plan.stdout
            .contains("acme/tiny-bert: recorded folder transformers/acme/tiny-bert is missing"),
        "{}",
        plan.stdout
    );
}

/// Property: any mix of old layouts (flat, wrong folder, right folder; with or without a
/// record; leftovers) and any manifest converges with one `kmm apply`: the next plan is empty,
/// `kmm verify` passes, and no file already on disk was downloaded.
mod property {
    use super::*;
    use proptest::prelude::*;

    /// (repo, file) pairs of the hub fixtures that a tree may hold.
    const FILES: [(&str, &str); 6] = [
        ("TheBloke/TinyLlama-GGUF", "tinyllama.Q4_K_M.gguf"),
        ("TheBloke/TinyLlama-GGUF", "tinyllama.Q2_K.gguf"),
        ("TheBloke/TinyLlama-GGUF", "config.json"),
        ("acme/other-GGUF", "other.Q4_0.gguf"),
        ("acme/tiny-bert", "model.safetensors"),
        ("acme/tiny-bert", "vocab.txt"),
    ];

    #[derive(Debug, Clone, Copy)]
    enum Place {
        Absent,
        Flat,
        WrongFolder,
        Routed,
    }

    fn place() -> impl Strategy<Value = Place> {
        prop_oneof![
            Just(Place::Absent),
            Just(Place::Flat),
            Just(Place::WrongFolder),
            Just(Place::Routed),
        ]
    }

    fn routed_dir(repo: &str) -> String {
        if repo == "acme/tiny-bert" {
            format!("transformers/{repo}")
        } else {
            format!("llama-cpp/{repo}")
        }
    }

    fn case() -> impl Strategy<Value = (Vec<Place>, [bool; 3], bool, bool)> {
        (
            prop::collection::vec(place(), FILES.len()),
            [any::<bool>(), any::<bool>(), any::<bool>()],
            any::<bool>(),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 12,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_legacy_trees_converge((places, declared, corrupt, seed_record) in case()) {
            let repos = ["TheBloke/TinyLlama-GGUF", "acme/other-GGUF", "acme/tiny-bert"];
            let mut manifest = String::new();
            for (repo, on) in repos.iter().zip(declared) {
                if on {
                    manifest.push_str(&format!("[models.\"{repo}\"]\n"));
                    if *repo == "TheBloke/TinyLlama-GGUF" {
                        manifest.push_str("include = [\"*.gguf\", \"config.json\"]\n");
                    }
                }
            }
            let hub = FakeHub::start(hub_repos());
            let store = Store::empty(&hub, &manifest);
            let mut on_disk: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut flat_record = Vec::new();
            for ((repo, file), place) in FILES.iter().zip(&places) {
                let path = match place {
                    Place::Absent => continue,
                    // Flat: names are distinct across repos here, as in the seed's layout.
                    Place::Flat => format!("llama-cpp/{file}"),
                    Place::WrongFolder => format!("old/{}/{file}", repo.replace('/', "_")),
                    Place::Routed => format!("{}/{file}", routed_dir(repo)),
                };
                let bytes = hub_file(repo, file);
                let full = store.models().join(&path);
                fs_err::create_dir_all(full.parent().unwrap()).unwrap();
                fs_err::write(&full, &bytes).unwrap();
                if matches!(place, Place::Flat) && *repo == "TheBloke/TinyLlama-GGUF" {
                    flat_record.push(serde_json::json!({"path": file, "size": bytes.len()}));
                }
                on_disk.insert(format!("{repo}/{file}"), bytes);
            }
            if corrupt {
                fs_err::create_dir_all(store.models().join("llama-cpp")).unwrap();
                fs_err::write(store.models().join("llama-cpp/x.gguf.corrupt"), "x").unwrap();
            }
            if seed_record && !flat_record.is_empty() {
                let registry = serde_json::json!({
                    "TheBloke/TinyLlama-GGUF": {
                        "model_id": "TheBloke/TinyLlama-GGUF",
                        "library": "llama-cpp",
                        "install_path": store.models().join("llama-cpp").to_string_lossy(),
                        "files": flat_record,
                        "total_size": 0,
                        "seed_field": 7
                    }
                });
                fs_err::write(
                    store.models().join("model_registry.json"),
                    serde_json::to_string_pretty(&registry).unwrap(),
                )
                .unwrap();
            }

            let apply = store.run(&["apply"]);
            prop_assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);
            for path in file_requests(&hub) {
                let already = on_disk.keys().any(|key| {
                    let (repo, file) = key.rsplit_once('/').unwrap();
                    path.contains(repo) && path.ends_with(&format!("/{file}"))
                });
                prop_assert!(!already, "downloaded {} although it was on disk", path);
            }
            prop_assert_eq!(store.planned_actions(), Vec::<String>::new());
            let verify = store.run(&["verify"]);
            prop_assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
            prop_assert!(!store.exists("llama-cpp/x.gguf.corrupt"));
            // Every declared file is in its routed folder with the upstream bytes.
            for (repo, on) in repos.iter().zip(declared) {
                if !on {
                    continue;
                }
                for (file_repo, file) in FILES {
                    if file_repo == *repo {
                        let path = format!("{}/{file}", routed_dir(repo));
                        prop_assert_eq!(store.read(&path), hub_file(repo, file));
                    }
                }
            }
            // Files of undeclared models are nobody's to delete: still somewhere in the store.
            for (key, bytes) in &on_disk {
                let repo = key.rsplit_once('/').unwrap().0;
                if !declared[repos.iter().position(|r| *r == repo).unwrap()] {
                    let kept = store.files().iter().any(|path| store.read(path) == *bytes);
                    prop_assert!(kept, "{} was lost", key);
                }
            }
        }
    }
}

#[test]
fn a_migrate_stopped_by_a_full_disk_at_the_registry_write_resumes_to_where_a_clean_one_ends() {
    let hub = FakeHub::start(hub_repos());
    // Without the case's `*.corrupt` leftover: deleting it first would free the blocks the
    // registry write needs.
    let stray = "llama-cpp/tinyllama.Q2_K.gguf.corrupt";
    let clean = Store::from_case(&hub, "flat-gguf");
    fs_err::remove_file(clean.models().join(stray)).unwrap();
    clean.run(&["migrate"]).ok();

    // The same store on a small tmpfs, filled to the last byte: moving files is hard links and
    // renames (no blocks), but the registry write needs a block and fails.
    let store = Store::from_case(&hub, "flat-gguf");
    let saved = tempfile::tempdir().unwrap();
    fs_err::remove_file(store.models().join(stray)).unwrap();
    copy_tree(&store.models(), saved.path());
    fs_err::remove_dir_all(store.models()).unwrap();
    let Some(_fs) = crate::support::Tmpfs::mount(&store.models(), "8m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); ENOSPC migrate not tested");
        return;
    };
    copy_tree(saved.path(), &store.models());
    let hog = store.models().join(".hog");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&hog).unwrap();
        while file.write_all(&[7u8; 16 << 10]).is_ok() {}
        while file.write_all(&[7u8; 1]).is_ok() {}
    }
    let full = store.run(&["migrate", "--json"]);
    assert_eq!(full.code, 11, "{}\n{}", full.stdout, full.stderr);
    assert_eq!(full.json()["error_code"], "E_DISK");

    fs_err::remove_file(&hog).unwrap();
    store.run(&["migrate"]).ok();
    assert_eq!(store.files(), clean.files());
    assert_eq!(store.planned_actions(), clean.planned_actions());
    let (again, clean_again) = (
        store.run(&["migrate", "--dry-run", "--json"]).ok().json(),
        clean.run(&["migrate", "--dry-run", "--json"]).ok().json(),
    );
    assert_eq!(
        again["data"]["actions"],
        Value::Array(Vec::new()),
        "{again}"
    );
    let notes = |doc: &Value| {
        doc["data"]["notes"]
            .to_string()
            .replace(&clean.models().to_string_lossy().to_string(), "")
    };
    assert_eq!(
        notes(&again).replace(&store.models().to_string_lossy().to_string(), ""),
        notes(&clean_again),
        "a resumed migrate reports other leftovers than a clean one"
    );
}

#[test]
fn an_old_name_left_by_a_move_interrupted_after_its_registry_write_is_removed_by_the_next_run() {
    let hub = FakeHub::start(hub_repos());
    let store = Store::from_case(&hub, "flat-gguf");
    store.run(&["migrate"]).ok();
    let clean = store.files();
    // What a kill (or a full disk) between the registry write and the deletion of the old name
    // leaves: the record says the new folder, and the old flat name is a second link.
    let moved = store
        .models()
        .join("llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf");
    let old_name = store.models().join("llama-cpp/tinyllama.Q4_K_M.gguf");
    fs_err::hard_link(&moved, &old_name).unwrap();
    // A file of the same bytes that is not another name of the installed one is the user's.
    let users_copy = store
        .models()
        .join("llama-cpp/keep-me/tinyllama.Q4_K_M.gguf");
    fs_err::create_dir_all(users_copy.parent().unwrap()).unwrap();
    fs_err::copy(&moved, &users_copy).unwrap();

    let plan = store.run(&["migrate", "--dry-run", "--json"]).ok().json();
    let ids: Vec<&str> = plan["data"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["delete-moved:llama-cpp/tinyllama.Q4_K_M.gguf"],
        "{plan}"
    );
    store.run(&["migrate"]).ok();
    let mut expected = clean.clone();
    expected.push("llama-cpp/keep-me/tinyllama.Q4_K_M.gguf".to_string());
    expected.sort();
    assert_eq!(store.files(), expected);
    assert_eq!(
        store.read("llama-cpp/TheBloke/TinyLlama-GGUF/tinyllama.Q4_K_M.gguf"),
        hub_file("TheBloke/TinyLlama-GGUF", "tinyllama.Q4_K_M.gguf")
    );
}
