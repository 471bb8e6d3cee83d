//! The reconcile engine end to end: desired models built by hand from fake-hub repos, the real
//! store scan, the planner, and `apply` downloading over HTTP on 127.0.0.1 into a temp models
//! directory. Checks the layout and registry DESIGN.md describes, idempotence (an empty re-plan,
//! no file requests on a second apply), cheap revision bumps, verification failures that change
//! nothing, stray cleanup, prune, and preservation of unknown registry fields.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kmm::ErrorCode;
use kmm::apply::{ApplyContext, ApplyReport, Reporter, apply};
use kmm::hub::{HubClient, HubConfig};
use kmm::layout::{self, Library};
use kmm::plan::{self, DesiredModel, Plan, PlanInput};
use kmm::registry::Registry;
use kmm::store::{self, StorePaths};
use kmm::upstream::{FileHash, UpstreamFile};

use crate::fake_hub::{FakeHub, Fault, FileSpec, RepoSpec};

const GGUF_ID: &str = "TheBloke/Tiny-Chat-GGUF";
const BERT_ID: &str = "acme/tiny-bert";

fn gguf_repo() -> RepoSpec {
    RepoSpec::new(GGUF_ID).commit(vec![
        FileSpec::regular("README.md", b"# Tiny chat\n".to_vec()),
        FileSpec::regular("config.json", br#"{"model_type":"llama"}"#.to_vec()),
        FileSpec::lfs("tiny-chat.Q4_K_M.gguf", pattern(300_000, 4)),
    ])
}

fn bert_files_v1() -> Vec<FileSpec> {
    vec![
        FileSpec::regular(".gitattributes", b"*.safetensors filter=lfs\n".to_vec()),
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", pattern(200_000, 1)),
        FileSpec::regular("old.bin", b"legacy weights".to_vec()),
        FileSpec::regular("sub/dir/tokenizer.json", br#"{"vocab":[]}"#.to_vec()),
    ]
}

/// Commit 1 changes `model.safetensors` and drops `old.bin`.
fn bert_files_v2() -> Vec<FileSpec> {
    let mut files = bert_files_v1();
    files.retain(|f| f.path != "old.bin");
    for file in &mut files {
        if file.path == "model.safetensors" {
            *file = FileSpec::lfs("model.safetensors", pattern(210_000, 2));
        }
    }
    files
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What `resolve` would produce for `repo` at commit `index`: files, hashes, routing.
fn desired(repo: &RepoSpec, index: usize, library: Option<Library>) -> DesiredModel {
    let mut files: Vec<UpstreamFile> = repo.commits[index]
        .iter()
        .map(|spec| UpstreamFile {
            path: spec.path.clone(),
            size: spec.content.len() as u64,
            hash: if spec.lfs {
                FileHash::Sha256(spec.upstream_hash())
            } else {
                FileHash::GitSha1(spec.upstream_hash())
            },
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let route = layout::route(&repo.id, library, &files);
    let config_mirror = files
        .iter()
        .any(|f| f.path == "config.json")
        .then(|| layout::config_mirror_path(&repo.id));
    DesiredModel {
        id: repo.id.clone(),
        revision: "main".to_string(),
        commit: repo.commit_sha(index),
        library: route.library,
        install_dir: route.install_dir,
        files,
        config_mirror,
        pinned: None,
        license_accepted: None,
        selection: Default::default(),
    }
}

/// A temp models directory plus a fake hub.
struct Env {
    _temp: tempfile::TempDir,
    paths: StorePaths,
    hub: FakeHub,
    client: HubClient,
    max_workers: usize,
}

impl Env {
    fn new(repos: Vec<RepoSpec>) -> Env {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("models");
        fs_err::create_dir_all(&root).unwrap();
        let hub = FakeHub::start(repos);
        let mut config = HubConfig::new(hub.url());
        config.retry_base_delay = Duration::from_millis(5);
        config.max_retries = 2;
        let client = HubClient::new(config).unwrap();
        Env {
            paths: StorePaths::new(root),
            _temp: temp,
            hub,
            client,
            max_workers: 3,
        }
    }

    fn root(&self) -> &Path {
        self.paths.root()
    }

    fn plan(&self, desired: &[DesiredModel], prune: bool) -> Plan {
        let registry = Registry::load(&self.paths.registry_file()).unwrap();
        let dirs = plan::dirs_to_observe(self.root(), desired, &registry);
        let observed = store::observe(&self.paths, &dirs).unwrap();
        plan::compute(PlanInput {
            models_dir: self.root(),
            desired,
            observed: &observed,
            prune,
        })
    }

    async fn apply(&self, plan: &Plan) -> kmm::Result<ApplyReport> {
        self.apply_with(plan, Some(&self.client), &Recorder::default())
            .await
    }

    async fn apply_with(
        &self,
        plan: &Plan,
        hub: Option<&HubClient>,
        reporter: &Recorder,
    ) -> kmm::Result<ApplyReport> {
        let ctx = ApplyContext {
            paths: &self.paths,
            hub,
            max_workers: self.max_workers,
            reporter,
        };
        apply(plan, &ctx).await
    }

    /// The registry file as parsed JSON (what other tools read).
    fn registry_json(&self) -> serde_json::Value {
        let text = fs_err::read_to_string(self.paths.registry_file()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn file_requests(&self) -> Vec<String> {
        self.hub
            .requests()
            .into_iter()
            .filter(|r| r.is_file_request())
            .map(|r| r.path)
            .collect()
    }

    fn entries(&self, dir: PathBuf) -> Vec<String> {
        match fs_err::read_dir(&dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(_) => Vec::new(),
        }
    }

    /// `.kmm/` holds nothing left over: no staging, no trash, no consumed downloads.
    fn assert_internals_clean(&self) {
        assert_eq!(self.entries(self.paths.staging_dir()), Vec::<String>::new());
        assert_eq!(self.entries(self.paths.trash_dir()), Vec::<String>::new());
        assert_eq!(
            self.entries(self.paths.downloads_dir()),
            Vec::<String>::new()
        );
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    progress_bytes: Mutex<u64>,
}

impl Reporter for Recorder {
    fn download_started(&self, model: &str, path: &str, size: u64) {
        self.events
            .lock()
            .unwrap()
            .push(format!("start {model} {path} {size}"));
    }
    fn download_progress(&self, _model: &str, _path: &str, bytes: u64) {
        *self.progress_bytes.lock().unwrap() += bytes;
    }
    fn download_finished(&self, model: &str, path: &str) {
        self.events
            .lock()
            .unwrap()
            .push(format!("done {model} {path}"));
    }
}

fn assert_tree(root: &Path, dir: &str, files: &[FileSpec]) {
    let dir = root.join(dir);
    for file in files {
        let bytes = fs_err::read(dir.join(&file.path)).unwrap();
        assert!(bytes == file.content.as_ref(), "{} differs", file.path);
    }
    let mut on_disk = Vec::new();
    collect(&dir, &dir, &mut on_disk);
    let mut expected: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    expected.sort();
    assert_eq!(
        on_disk,
        expected,
        "exactly the selected files in {}",
        dir.display()
    );
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in fs_err::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(base, &path, out);
        } else {
            let relative = path.strip_prefix(base).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
    out.sort();
}

#[tokio::test]
async fn apply_installs_the_seed_layout_and_a_second_run_does_nothing() {
    let (gguf, bert) = (gguf_repo(), RepoSpec::new(BERT_ID).commit(bert_files_v1()));
    let env = Env::new(vec![gguf.clone(), bert.clone()]);
    let desired = [desired(&gguf, 0, None), desired(&bert, 0, None)];

    let plan = env.plan(&desired, false);
    assert_eq!(plan.summary.to_add, 2);
    assert_eq!(plan.summary.download_files, 8);
    let recorder = Recorder::default();
    let report = env
        .apply_with(&plan, Some(&env.client), &recorder)
        .await
        .unwrap();
    assert_eq!(report.models_installed, [GGUF_ID, BERT_ID]);
    assert_eq!(report.files_downloaded, 8);
    assert_eq!(recorder.events.lock().unwrap().len(), 16);
    let all_bytes: u64 = [&gguf, &bert]
        .iter()
        .flat_map(|repo| &repo.commits[0])
        .map(|f| f.content.len() as u64)
        .sum();
    assert_eq!(report.bytes_downloaded, all_bytes);
    assert_eq!(*recorder.progress_bytes.lock().unwrap(), all_bytes);

    // Layout, as the seed routes it.
    assert_tree(
        env.root(),
        "llama-cpp/TheBloke/Tiny-Chat-GGUF",
        &gguf.commits[0],
    );
    assert_tree(env.root(), "transformers/acme/tiny-bert", &bert.commits[0]);
    assert_eq!(
        fs_err::read(env.root().join("configs/tiny-bert.json")).unwrap(),
        br#"{"model_type":"bert"}"#
    );
    assert_eq!(
        fs_err::read(env.root().join("configs/Tiny-Chat-GGUF.json")).unwrap(),
        br#"{"model_type":"llama"}"#
    );
    env.assert_internals_clean();

    // Registry records in the seed's shape plus commit and hashes.
    let registry = env.registry_json();
    let record = &registry[BERT_ID];
    assert_eq!(record["model_id"], BERT_ID);
    assert_eq!(record["library"], "transformers");
    assert_eq!(record["revision"], "main");
    assert_eq!(record["commit"], bert.commit_sha(0));
    let install_path = env.root().join("transformers/acme/tiny-bert");
    assert_eq!(
        record["install_path"],
        install_path.to_string_lossy().as_ref()
    );
    assert!(Path::new(record["install_path"].as_str().unwrap()).is_absolute());
    let installed_at = record["installed_at"].as_str().unwrap();
    assert_eq!(
        installed_at.len(),
        "2025-09-01T12:34:56Z".len(),
        "{installed_at}"
    );
    assert!(installed_at.ends_with('Z') && installed_at.as_bytes()[10] == b'T');
    let total: u64 = bert.commits[0].iter().map(|f| f.content.len() as u64).sum();
    assert_eq!(record["total_size"], total);
    let files = record["files"].as_array().unwrap();
    assert_eq!(files.len(), 5);
    let weights = files
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(weights["size"], 200_000);
    assert_eq!(weights["sha256"], bert.commits[0][2].upstream_hash());
    let tokenizer = files
        .iter()
        .find(|f| f["path"] == "sub/dir/tokenizer.json")
        .unwrap();
    assert_eq!(tokenizer["git_sha1"], bert.commits[0][4].upstream_hash());
    assert_eq!(registry[GGUF_ID]["library"], "llama-cpp");

    // Idempotent: an empty re-plan, and applying it touches neither the hub nor the registry.
    let again = env.plan(&desired, false);
    assert!(again.is_empty(), "{}", plan::render_text(&again));
    let before = fs_err::read(env.paths.registry_file()).unwrap();
    env.hub.clear_requests();
    let report = env.apply(&again).await.unwrap();
    assert_eq!(report, ApplyReport::default());
    assert_eq!(env.file_requests(), Vec::<String>::new());
    assert!(env.hub.requests().is_empty());
    assert_eq!(fs_err::read(env.paths.registry_file()).unwrap(), before);
}

#[tokio::test]
async fn a_revision_bump_downloads_only_the_changed_file_and_drops_the_unselected_one() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    env.apply(&env.plan(&[desired(&bert, 0, None)], false))
        .await
        .unwrap();
    let tokenizer = env
        .root()
        .join("transformers/acme/tiny-bert/sub/dir/tokenizer.json");
    let installed_at_before = env.registry_json()[BERT_ID]["installed_at"].clone();

    let bumped = RepoSpec::new(BERT_ID)
        .commit(bert_files_v1())
        .commit(bert_files_v2());
    env.hub.put_repo(bumped.clone());
    env.hub.clear_requests();
    let plan = env.plan(&[desired(&bumped, 1, None)], false);
    assert_eq!(plan.summary.to_change, 1);
    assert_eq!(plan.summary.download_files, 1);
    let text = plan::render_text(&plan);
    assert!(text.contains("~ model.safetensors"), "{text}");
    assert!(text.contains("(no longer selected)"), "{text}");

    let report = env.apply(&plan).await.unwrap();
    assert_eq!(report.models_updated, [BERT_ID]);
    assert_eq!(report.files_downloaded, 1);
    let requested = env.file_requests();
    assert!(!requested.is_empty());
    assert!(
        requested
            .iter()
            .all(|path| path.contains("model.safetensors")
                || path.contains(&bumped.commits[1][2].upstream_hash())),
        "only the changed file is requested: {requested:?}"
    );
    assert_tree(
        env.root(),
        "transformers/acme/tiny-bert",
        &bumped.commits[1],
    );
    assert!(tokenizer.exists());
    let record = &env.registry_json()[BERT_ID];
    assert_eq!(record["commit"], bumped.commit_sha(1));
    assert_eq!(record["files"].as_array().unwrap().len(), 4);
    // The bytes changed, so the install time moves (it may equal the old one within a second).
    assert!(record["installed_at"].as_str().unwrap() >= installed_at_before.as_str().unwrap());
    env.assert_internals_clean();
    assert!(env.plan(&[desired(&bumped, 1, None)], false).is_empty());
}

#[tokio::test]
async fn wrong_bytes_are_e_verify_and_leave_folder_and_registry_untouched() {
    let (gguf, bert) = (gguf_repo(), RepoSpec::new(BERT_ID).commit(bert_files_v1()));
    let mut env = Env::new(vec![gguf.clone(), bert.clone()]);
    // Every fetch starts at once, so which ones finish before the failure is not a race.
    env.max_workers = 8;
    env.apply(&env.plan(&[desired(&gguf, 0, None)], false))
        .await
        .unwrap();
    let registry_before = fs_err::read(env.paths.registry_file()).unwrap();

    env.hub.add_fault(Fault::WrongBytes {
        path_contains: "model.safetensors".to_string(),
        times: 100,
    });
    let desired_models = [desired(&gguf, 0, None), desired(&bert, 0, None)];
    let plan = env.plan(&desired_models, false);
    let error = env.apply(&plan).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Verify, "{error}");

    assert!(!env.root().join("transformers/acme/tiny-bert").exists());
    assert!(!env.root().join("configs/tiny-bert.json").exists());
    assert_eq!(
        fs_err::read(env.paths.registry_file()).unwrap(),
        registry_before
    );
    assert_eq!(env.entries(env.paths.staging_dir()), Vec::<String>::new());
    let downloads = env.entries(env.paths.downloads_dir());
    assert!(
        downloads.iter().all(|name| !name.ends_with(".part")),
        "no partial file is left: {downloads:?}"
    );

    // The files that did verify stay in the content store: the re-run fetches only the one
    // that failed.
    env.hub.clear_faults();
    env.hub.clear_requests();
    let report = env.apply(&env.plan(&desired_models, false)).await.unwrap();
    assert_eq!(report.models_installed, [BERT_ID]);
    let requested = env.file_requests();
    assert!(
        requested
            .iter()
            .all(|p| !p.contains("tokenizer.json") && !p.contains("old.bin")),
        "{requested:?}"
    );
    assert_tree(env.root(), "transformers/acme/tiny-bert", &bert.commits[0]);
    env.assert_internals_clean();
}

#[tokio::test]
async fn offline_apply_that_needs_downloads_is_e_net_before_touching_anything() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    let plan = env.plan(&[desired(&bert, 0, None)], false);
    let error = env
        .apply_with(&plan, None, &Recorder::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::Net);
    assert_eq!(error.message(), "offline: 5 files must be downloaded");
    assert!(error.hint().unwrap().contains("--offline"));
    assert!(!env.paths.registry_file().exists());
    assert!(!env.root().join("transformers").exists());
}

#[tokio::test]
async fn stray_corrupt_files_are_deleted() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    let desired = [desired(&bert, 0, None)];
    env.apply(&env.plan(&desired, false)).await.unwrap();
    let stray = env.root().join("transformers/acme/tiny-bert/x.corrupt");
    fs_err::write(&stray, b"half a file").unwrap();

    let plan = env.plan(&desired, false);
    assert_eq!(
        plan.actions
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["delete-stray:transformers/acme/tiny-bert/x.corrupt"]
    );
    let report = env.apply(&plan).await.unwrap();
    assert_eq!(
        report.strays_removed,
        ["transformers/acme/tiny-bert/x.corrupt"]
    );
    assert!(!stray.exists());
    assert_tree(env.root(), "transformers/acme/tiny-bert", &bert.commits[0]);
    assert!(env.plan(&desired, false).is_empty());
}

#[tokio::test]
async fn prune_removes_an_undeclared_model_but_never_a_pinned_one() {
    let (gguf, bert) = (gguf_repo(), RepoSpec::new(BERT_ID).commit(bert_files_v1()));
    let env = Env::new(vec![gguf.clone(), bert.clone()]);
    let mut pinned = desired(&gguf, 0, None);
    pinned.pinned = Some(true);
    env.apply(&env.plan(&[pinned, desired(&bert, 0, None)], false))
        .await
        .unwrap();

    // Without prune: notes only.
    let kept = env.plan(&[], false);
    assert!(kept.is_empty());
    assert_eq!(kept.notes.len(), 2);

    let plan = env.plan(&[], true);
    let text = plan::render_text(&plan);
    assert!(text.contains("- acme/tiny-bert  (remove, prune)"), "{text}");
    assert!(text.contains("pinned"), "{text}");
    let report = env.apply(&plan).await.unwrap();
    assert_eq!(report.models_removed, [BERT_ID]);

    assert!(!env.root().join("transformers/acme/tiny-bert").exists());
    assert!(
        !env.root().join("transformers/acme").exists(),
        "empty owner folder removed"
    );
    assert!(
        env.root().join("transformers").is_dir(),
        "layout roots stay"
    );
    assert!(!env.root().join("configs/tiny-bert.json").exists());
    assert_tree(
        env.root(),
        "llama-cpp/TheBloke/Tiny-Chat-GGUF",
        &gguf.commits[0],
    );
    let registry = env.registry_json();
    let ids: Vec<&String> = registry.as_object().unwrap().keys().collect();
    assert_eq!(ids, [GGUF_ID]);
    env.assert_internals_clean();
}

#[tokio::test]
async fn unknown_registry_fields_survive_updates() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    env.apply(&env.plan(&[desired(&bert, 0, None)], false))
        .await
        .unwrap();

    // Another tool annotates the registry: a top-level entry kmm does not manage, a record
    // field, and a per-file field.
    let mut registry = env.registry_json();
    registry[BERT_ID]["owner_note"] = serde_json::json!({"team": "search"});
    registry[BERT_ID]["files"][0]["origin"] = serde_json::json!("mirror-7");
    let installed_at = registry[BERT_ID]["installed_at"].clone();
    fs_err::write(
        env.paths.registry_file(),
        serde_json::to_vec_pretty(&registry).unwrap(),
    )
    .unwrap();

    // A metadata-only change (pinned) rewrites the record without touching files.
    let mut pinned = desired(&bert, 0, None);
    pinned.pinned = Some(true);
    let plan = env.plan(std::slice::from_ref(&pinned), false);
    assert_eq!(
        plan.actions
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        ["register:acme/tiny-bert"]
    );
    env.hub.clear_requests();
    env.apply(&plan).await.unwrap();
    assert!(env.hub.requests().is_empty());
    let after = env.registry_json();
    assert_eq!(after[BERT_ID]["pinned"], true);
    assert_eq!(after[BERT_ID]["owner_note"]["team"], "search");
    assert_eq!(after[BERT_ID]["files"][0]["origin"], "mirror-7");
    assert_eq!(after[BERT_ID]["installed_at"], installed_at);

    // A content update keeps them too.
    let bumped = RepoSpec::new(BERT_ID)
        .commit(bert_files_v1())
        .commit(bert_files_v2());
    env.hub.put_repo(bumped.clone());
    let mut next = desired(&bumped, 1, None);
    next.pinned = Some(true);
    env.apply(&env.plan(&[next], false)).await.unwrap();
    let after = env.registry_json();
    assert_eq!(after[BERT_ID]["owner_note"]["team"], "search");
    assert_eq!(after[BERT_ID]["files"][0]["origin"], "mirror-7");
    assert_eq!(after[BERT_ID]["commit"], bumped.commit_sha(1));
}

#[tokio::test]
async fn a_library_override_moves_the_folder_without_downloading() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    env.apply(&env.plan(&[desired(&bert, 0, None)], false))
        .await
        .unwrap();
    env.hub.clear_requests();
    let moved = desired(&bert, 0, Some(Library::LlamaCpp));
    assert_eq!(moved.install_dir, Path::new("llama-cpp/acme/tiny-bert"));
    let plan = env.plan(std::slice::from_ref(&moved), false);
    assert_eq!(plan.summary.download_files, 0);
    env.apply(&plan).await.unwrap();
    assert!(env.hub.requests().is_empty());
    assert_tree(env.root(), "llama-cpp/acme/tiny-bert", &bert.commits[0]);
    assert!(!env.root().join("transformers/acme/tiny-bert").exists());
    let record = &env.registry_json()[BERT_ID];
    assert_eq!(record["library"], "llama-cpp");
    assert_eq!(
        record["install_path"],
        env.root()
            .join("llama-cpp/acme/tiny-bert")
            .to_string_lossy()
            .as_ref()
    );
    assert!(env.plan(&[moved], false).is_empty());
}

#[tokio::test]
async fn a_plan_for_another_models_directory_is_refused() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    let mut plan = env.plan(&[desired(&bert, 0, None)], false);
    plan.models_dir = PathBuf::from("/somewhere/else");
    let error = env.apply(&plan).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Args);
    assert!(env.hub.requests().is_empty());
}

#[tokio::test]
async fn verified_downloads_left_by_an_interrupted_run_make_the_next_one_offline_capable() {
    let bert = RepoSpec::new(BERT_ID).commit(bert_files_v1());
    let env = Env::new(vec![bert.clone()]);
    let plan = env.plan(&[desired(&bert, 0, None)], false);
    // What a run killed after its downloads left behind: the verified content store, a
    // half-assembled staging folder and something in the trash.
    let downloads = env.paths.downloads_dir();
    fs_err::create_dir_all(&downloads).unwrap();
    for file in &bert.commits[0] {
        fs_err::write(downloads.join(file.upstream_hash()), &file.content).unwrap();
    }
    let half = env.paths.staging_dir().join("acme-tiny-bert-x/sub");
    fs_err::create_dir_all(&half).unwrap();
    fs_err::write(half.join("tokenizer.json"), b"{").unwrap();
    fs_err::create_dir_all(env.paths.trash_dir().join("old-1/m")).unwrap();

    let report = env
        .apply_with(&plan, None, &Recorder::default())
        .await
        .unwrap();
    assert_eq!(report.models_installed, [BERT_ID]);
    assert_eq!(report.files_downloaded, 0);
    assert!(env.hub.requests().is_empty());
    assert_tree(env.root(), "transformers/acme/tiny-bert", &bert.commits[0]);
    env.assert_internals_clean();
}

#[tokio::test]
async fn a_failure_keeps_the_models_that_completed_before_it() {
    let (gguf, bert) = (gguf_repo(), RepoSpec::new(BERT_ID).commit(bert_files_v1()));
    let mut env = Env::new(vec![gguf.clone(), bert.clone()]);
    // One worker makes the order fixed: the GGUF model's fetches (first by id), then its
    // install, mirror and record (local steps go before further downloads), then the bert
    // fetches, one of which fails.
    env.max_workers = 1;
    env.hub.add_fault(Fault::WrongBytes {
        path_contains: "model.safetensors".to_string(),
        times: 100,
    });
    let desired_models = [desired(&gguf, 0, None), desired(&bert, 0, None)];
    let error = env
        .apply(&env.plan(&desired_models, false))
        .await
        .unwrap_err();
    assert_eq!(error.code(), ErrorCode::Verify);

    assert_tree(
        env.root(),
        "llama-cpp/TheBloke/Tiny-Chat-GGUF",
        &gguf.commits[0],
    );
    assert!(!env.root().join("transformers/acme/tiny-bert").exists());
    let registry = env.registry_json();
    let ids: Vec<&String> = registry.as_object().unwrap().keys().collect();
    assert_eq!(ids, [GGUF_ID]);

    let rest = env.plan(&desired_models, false);
    assert_eq!(
        (rest.summary.to_add, rest.summary.to_change),
        (1, 0),
        "{}",
        plan::render_text(&rest)
    );
}
