//! The planner's tests: plans computed from hand-built desired and observed states. The
//! helpers here build those states; `store_contents.rs` has the tests of bytes found on disk.

mod store_contents;

use std::path::{Path, PathBuf};

use super::*;
use crate::layout::Library;
use crate::registry::{Record, RecordFile, Registry};
use crate::store::{HashKind, Observed, ObservedFile};
use crate::upstream::{FileHash, UpstreamFile};

const ROOT: &str = "/srv/models";
const C1: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f80912a3b4c5";
const C2: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";

fn lfs(path: &str, size: u64, seed: char) -> UpstreamFile {
    UpstreamFile {
        path: path.to_string(),
        size,
        hash: FileHash::Sha256(seed.to_string().repeat(64)),
    }
}

fn regular(path: &str, size: u64, seed: char) -> UpstreamFile {
    UpstreamFile {
        path: path.to_string(),
        size,
        hash: FileHash::GitSha1(seed.to_string().repeat(40)),
    }
}

fn gguf_model() -> DesiredModel {
    DesiredModel {
        id: "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".to_string(),
        revision: "main".to_string(),
        commit: "3f2a9c1e0d9b8a7f6e5d4c3b2a1f0e9d8c7b6a59".to_string(),
        library: Library::LlamaCpp,
        install_dir: "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into(),
        files: vec![
            regular("config.json", 1_234, 'c'),
            lfs("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf", 668_788_096, 'a'),
        ],
        config_mirror: Some("configs/TinyLlama-1.1B-Chat-v1.0-GGUF.json".into()),
        pinned: Some(true),
        license_accepted: None,
        selection: Default::default(),
    }
}

fn bert_model(commit: &str) -> DesiredModel {
    DesiredModel {
        id: "acme/tiny-bert".to_string(),
        revision: "main".to_string(),
        commit: commit.to_string(),
        library: Library::Transformers,
        install_dir: "transformers/acme/tiny-bert".into(),
        files: vec![
            regular(".gitattributes", 1_519, '1'),
            lfs("model.safetensors", 12_000_000, 'b'),
            regular("old.bin", 4_000, '2'),
            regular("tokenizer/vocab.txt", 231_508, '3'),
        ],
        config_mirror: None,
        pinned: None,
        license_accepted: None,
        selection: Default::default(),
    }
}

/// The observed state right after `models` were installed as desired.
fn installed(models: &[DesiredModel]) -> Observed {
    let mut observed = Observed::default();
    for model in models {
        let plan = compute(PlanInput {
            models_dir: Path::new(ROOT),
            desired: std::slice::from_ref(model),
            observed: &Observed::default(),
            prune: false,
        });
        let record = plan
            .actions
            .iter()
            .find_map(|a| match &a.action {
                Action::Register { record, .. } => Some(record.clone()),
                _ => None,
            })
            .unwrap();
        observed
            .registry
            .models
            .insert(model.id.clone(), record_from(&record));
        let dir = observed.dirs.entry(model.install_dir.clone()).or_default();
        for file in &model.files {
            dir.files.insert(file.path.clone(), seen(file.size));
        }
        if let Some(mirror) = &model.config_mirror {
            let config = model
                .files
                .iter()
                .find(|f| f.path == "config.json")
                .unwrap();
            observed
                .dirs
                .entry(mirror.parent().unwrap().to_path_buf())
                .or_default()
                .files
                .insert(
                    mirror.file_name().unwrap().to_string_lossy().into_owned(),
                    seen(config.size),
                );
        }
    }
    observed
}

fn seen(size: u64) -> ObservedFile {
    ObservedFile {
        size,
        ..ObservedFile::default()
    }
}

fn record_from(plan: &RecordPlan) -> Record {
    Record {
        model_id: plan.model_id.clone(),
        library: plan.library.as_str().to_string(),
        revision: Some(plan.revision.clone()),
        installed_at: Some("2025-09-01T12:34:56Z".to_string()),
        install_path: plan.install_path.clone(),
        files: plan
            .files
            .iter()
            .map(|f| RecordFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.hash.is_lfs().then(|| f.hash.hex().to_string()),
                git_sha1: (!f.hash.is_lfs()).then(|| f.hash.hex().to_string()),
                mtime_ns: None,
                extra: Default::default(),
            })
            .collect(),
        total_size: plan.total_size,
        commit: Some(plan.commit.clone()),
        pinned: plan.pinned,
        license_accepted: plan.license_accepted.clone(),
        last_accessed: None,
        selection: Some(plan.selection.clone()),
        extra: Default::default(),
    }
}

fn plan(desired: &[DesiredModel], observed: &Observed, prune: bool) -> Plan {
    compute(PlanInput {
        models_dir: Path::new(ROOT),
        desired,
        observed,
        prune,
    })
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.actions.iter().map(|a| a.id.as_str()).collect()
}

fn deps<'p>(plan: &'p Plan, id: &str) -> Vec<&'p str> {
    let action = plan.actions.iter().find(|a| a.id == id).unwrap();
    action.depends_on.iter().map(String::as_str).collect()
}

/// A plan with a create, an update (one file changed, one dropped) and a removal.
fn mixed_plan() -> Plan {
    let mut before = bert_model(C1);
    before.files[1] = lfs("model.safetensors", 11_000_000, 'e');
    let mut observed = installed(&[before]);
    let old = Record {
        model_id: "old/model".to_string(),
        library: "transformers".to_string(),
        revision: Some("main".to_string()),
        installed_at: None,
        install_path: format!("{ROOT}/transformers/old/model"),
        files: vec![],
        total_size: 0,
        commit: None,
        pinned: None,
        license_accepted: None,
        last_accessed: None,
        selection: None,
        extra: Default::default(),
    };
    observed
        .registry
        .models
        .insert("old/model".to_string(), old);
    let mut after = bert_model(C2);
    after.files.retain(|f| f.path != "old.bin");
    plan(&[gguf_model(), after], &observed, true)
}

#[test]
fn fresh_store_creates_everything_in_dependency_order() {
    let plan = plan(&[gguf_model(), bert_model(C1)], &Observed::default(), false);
    assert_eq!(plan.summary.to_add, 2);
    assert_eq!(plan.summary.download_files, 6);
    let order = ids(&plan);
    for planned in &plan.actions {
        let me = order.iter().position(|id| *id == planned.id).unwrap();
        for dep in &planned.depends_on {
            assert!(order.iter().position(|id| id == dep).unwrap() < me);
        }
    }
    assert_eq!(
        deps(&plan, "register:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"),
        ["mirror-config:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"]
    );
    assert_eq!(
        deps(&plan, "install:acme/tiny-bert"),
        [
            "fetch:acme/tiny-bert:.gitattributes",
            "fetch:acme/tiny-bert:model.safetensors",
            "fetch:acme/tiny-bert:old.bin",
            "fetch:acme/tiny-bert:tokenizer/vocab.txt",
        ]
    );
    insta::assert_snapshot!("fresh_store_text", render_text(&plan));
    insta::assert_json_snapshot!("fresh_store_json", plan);
}

#[test]
fn installed_state_plans_nothing() {
    let desired = [gguf_model(), bert_model(C1)];
    let plan = plan(&desired, &installed(&desired), false);
    assert!(plan.is_empty(), "{plan:#?}");
    assert!(
        plan.models
            .iter()
            .all(|m| m.change == ChangeKind::Unchanged)
    );
    assert_eq!(
        render_text(&plan),
        "No changes. The models directory matches kari-models.toml.\n"
    );
}

#[test]
fn mixed_plan_renders_like_terraform() {
    let plan = mixed_plan();
    assert_eq!(
        (
            plan.summary.to_add,
            plan.summary.to_change,
            plan.summary.to_remove
        ),
        (1, 1, 1)
    );
    insta::assert_snapshot!("mixed_text", render_text(&plan));
    insta::assert_json_snapshot!("mixed_json", plan);
}

#[test]
fn revision_bump_fetches_only_changed_files_and_keeps_the_rest() {
    let plan = mixed_plan();
    let bert: Vec<&str> = ids(&plan)
        .into_iter()
        .filter(|id| id.contains("acme/tiny-bert"))
        .collect();
    assert_eq!(
        bert,
        [
            "fetch:acme/tiny-bert:model.safetensors",
            "install:acme/tiny-bert",
            "register:acme/tiny-bert"
        ]
    );
    let install = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::InstallModel { model, files, .. } if model == "acme/tiny-bert" => {
                Some(files.clone())
            }
            _ => None,
        })
        .unwrap();
    let sources: Vec<(&str, &FileSource)> = install
        .iter()
        .map(|f| (f.path.as_str(), &f.source))
        .collect();
    assert_eq!(
        sources,
        [
            (
                ".gitattributes",
                &FileSource::Keep {
                    path: "transformers/acme/tiny-bert/.gitattributes".into()
                }
            ),
            (
                "model.safetensors",
                &FileSource::Fetch {
                    action: "fetch:acme/tiny-bert:model.safetensors".into()
                }
            ),
            (
                "tokenizer/vocab.txt",
                &FileSource::Keep {
                    path: "transformers/acme/tiny-bert/tokenizer/vocab.txt".into()
                }
            ),
        ]
    );
    let change = plan
        .models
        .iter()
        .find(|m| m.id == "acme/tiny-bert")
        .unwrap();
    assert_eq!(change.free_bytes, 4_000);
    assert_eq!(change.download_bytes, 12_000_000);
}

#[test]
fn damaged_files_on_disk_are_fetched_again_with_a_reason() {
    let desired = [bert_model(C1)];
    let mut observed = installed(&desired);
    let dir = observed
        .dirs
        .get_mut(Path::new("transformers/acme/tiny-bert"))
        .unwrap();
    dir.files.remove("old.bin");
    dir.files.get_mut("model.safetensors").unwrap().size = 5;
    let plan = plan(&desired, &observed, false);
    let reasons: Vec<(&str, Option<&str>)> = plan.models[0]
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.reason.as_deref()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("model.safetensors", Some("size mismatch on disk")),
            ("old.bin", Some("missing on disk")),
        ]
    );
    assert_eq!(plan.models[0].change, ChangeKind::Update);
    assert_eq!(plan.summary.download_files, 2);
}

#[test]
fn undeclared_models_are_kept_without_prune_and_pinned_ones_even_with_it() {
    let gguf = gguf_model();
    let bert = bert_model(C1);
    let observed = installed(&[gguf.clone(), bert.clone()]);

    let kept = plan(&[], &observed, false);
    assert!(kept.is_empty());
    assert_eq!(kept.notes.len(), 2);
    assert!(
        kept.notes
            .iter()
            .all(|n| n.message.contains("set prune = true"))
    );
    insta::assert_snapshot!("undeclared_kept_text", render_text(&kept));

    let pruned = plan(&[], &observed, true);
    // The GGUF model is pinned: protected. The bert model goes.
    assert_eq!(
        ids(&pruned),
        ["remove:acme/tiny-bert", "unregister:acme/tiny-bert"]
    );
    assert_eq!(
        deps(&pruned, "unregister:acme/tiny-bert"),
        ["remove:acme/tiny-bert"]
    );
    assert_eq!(pruned.notes.len(), 1);
    assert!(pruned.notes[0].message.contains("pinned"));
    assert_eq!(
        pruned.summary.free_bytes,
        bert.files.iter().map(|f| f.size).sum::<u64>()
    );
}

#[test]
fn removing_a_model_with_a_config_also_removes_its_mirror() {
    let observed = installed(&[gguf_model()]);
    let mut unpinned = observed.clone();
    for record in unpinned.registry.models.values_mut() {
        record.pinned = None;
    }
    let plan = plan(&[], &unpinned, true);
    let mirror = plan.actions.iter().find_map(|a| match &a.action {
        Action::RemoveModel { config_mirror, .. } => Some(config_mirror.clone()),
        _ => None,
    });
    assert_eq!(
        mirror,
        Some(Some(PathBuf::from(
            "configs/TinyLlama-1.1B-Chat-v1.0-GGUF.json"
        )))
    );
}

#[test]
fn strays_become_delete_actions() {
    let mut observed = installed(&[bert_model(C1)]);
    observed.strays = vec![
        "transformers/acme/tiny-bert/model.safetensors.corrupt".into(),
        "llama-cpp/x/y.gguf.incomplete".into(),
        "../escape.corrupt".into(),
    ];
    let plan = plan(&[bert_model(C1)], &observed, false);
    assert_eq!(
        ids(&plan),
        [
            "delete-stray:llama-cpp/x/y.gguf.incomplete",
            "delete-stray:transformers/acme/tiny-bert/model.safetensors.corrupt",
        ]
    );
    assert!(!plan.is_empty());
    assert!(render_text(&plan).ends_with("nothing to download, 2 leftovers to delete.\n"));
}

#[test]
fn same_input_gives_byte_identical_json() {
    let first = serde_json::to_string_pretty(&mixed_plan()).unwrap();
    let second = serde_json::to_string_pretty(&mixed_plan()).unwrap();
    assert_eq!(first, second);
    // Declaration order does not matter either.
    let mut desired = vec![gguf_model(), bert_model(C1)];
    let forward = serde_json::to_string(&plan(&desired, &Observed::default(), false)).unwrap();
    desired.reverse();
    let backward = serde_json::to_string(&plan(&desired, &Observed::default(), false)).unwrap();
    assert_eq!(forward, backward);
    // And the JSON reads back into the same plan (plan files for `kmm apply plan.json`).
    let parsed: Plan = serde_json::from_str(&first).unwrap();
    assert_eq!(parsed, mixed_plan());
}

#[test]
fn identical_bytes_are_fetched_once() {
    let mut other = bert_model(C1);
    other.id = "acme/tiny-bert-copy".to_string();
    other.install_dir = "transformers/acme/tiny-bert-copy".into();
    let plan = plan(&[bert_model(C1), other], &Observed::default(), false);
    assert_eq!(plan.summary.download_files, 4);
    assert_eq!(
        deps(&plan, "install:acme/tiny-bert-copy"),
        deps(&plan, "install:acme/tiny-bert")
    );
}

#[test]
fn library_override_moves_the_folder_and_keeps_its_files() {
    let before = bert_model(C1);
    let observed = installed(std::slice::from_ref(&before));
    let mut after = before.clone();
    after.library = Library::LlamaCpp;
    after.install_dir = "llama-cpp/acme/tiny-bert".into();
    let plan = plan(&[after], &observed, false);
    assert_eq!(plan.summary.download_files, 0);
    let (previous, sources) = plan
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::InstallModel {
                previous_install_dir,
                files,
                ..
            } => Some((previous_install_dir.clone(), files.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!(previous, Some(PathBuf::from("transformers/acme/tiny-bert")));
    assert!(
        sources
            .iter()
            .all(|f| matches!(&f.source, FileSource::Keep { path }
        if path.starts_with("transformers/acme/tiny-bert")))
    );
    let text = render_text(&plan);
    assert!(
        text.contains("-> models/llama-cpp/acme/tiny-bert"),
        "{text}"
    );
    assert!(
        text.contains("# moves from transformers/acme/tiny-bert"),
        "{text}"
    );
}

#[test]
fn metadata_changes_only_rewrite_the_record() {
    let desired = bert_model(C1);
    let observed = installed(std::slice::from_ref(&desired));
    let mut pinned = desired.clone();
    pinned.pinned = Some(true);
    pinned.license_accepted = Some(serde_json::json!({"accepted": true}));
    let plan = plan(&[pinned], &observed, false);
    assert_eq!(ids(&plan), ["register:acme/tiny-bert"]);
    assert_eq!(
        plan.models[0].reasons,
        ["pinned changes to true", "license acceptance changes"]
    );
}

#[test]
fn a_missing_config_mirror_is_restored() {
    let desired = gguf_model();
    let mut observed = installed(std::slice::from_ref(&desired));
    observed.dirs.remove(Path::new("configs"));
    let plan = plan(&[desired], &observed, false);
    let id = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF";
    assert_eq!(
        ids(&plan),
        [format!("mirror-config:{id}"), format!("register:{id}")]
    );
    assert_eq!(plan.models[0].reasons, ["config mirror missing"]);
}

#[test]
fn a_folder_is_vacated_before_another_model_moves_in() {
    let squatter = bert_model(C1);
    let mut observed = installed(std::slice::from_ref(&squatter));
    observed
        .registry
        .models
        .get_mut("acme/tiny-bert")
        .unwrap()
        .pinned = None;
    let mut newcomer = bert_model(C1);
    newcomer.id = "acme/tiny-bert-v2".to_string();
    newcomer.install_dir = "transformers/acme/tiny-bert".into();
    let plan = plan(&[newcomer], &observed, true);
    assert!(deps(&plan, "install:acme/tiny-bert-v2").contains(&"remove:acme/tiny-bert"));
}

#[test]
fn evictions_remove_declared_and_undeclared_models_but_never_pinned_ones() {
    let gguf = gguf_model(); // pinned
    let bert = bert_model(C1);
    let observed = installed(&[gguf.clone(), bert.clone()]);
    let evict = vec![gguf.id.clone(), bert.id.clone()];
    let plan = compute_with_evictions(
        PlanInput {
            models_dir: Path::new(ROOT),
            desired: &[gguf, bert],
            observed: &observed,
            prune: false,
        },
        &evict,
    );
    assert_eq!(
        ids(&plan),
        ["remove:acme/tiny-bert", "unregister:acme/tiny-bert"]
    );
    let bert_change = plan
        .models
        .iter()
        .find(|m| m.id == "acme/tiny-bert")
        .unwrap();
    assert_eq!(bert_change.change, ChangeKind::Remove);
    assert_eq!(bert_change.reasons, ["evicted (least recently used)"]);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.message == "pinned: never evicted")
    );
    // No evictions: the same as `compute`.
    let observed = installed(&[bert_model(C1)]);
    let input = PlanInput {
        models_dir: Path::new(ROOT),
        desired: &[],
        observed: &observed,
        prune: false,
    };
    assert_eq!(compute_with_evictions(input, &[]), compute(input));
}

#[test]
fn bytes_are_formatted_in_decimal_units() {
    assert_eq!(format_bytes(0), "0 B");
    assert_eq!(format_bytes(999), "999 B");
    assert_eq!(format_bytes(1_234), "1.2 kB");
    assert_eq!(format_bytes(999_999), "1.0 MB");
    assert_eq!(format_bytes(668_788_096), "668.8 MB");
    assert_eq!(format_bytes(12_000_000), "12.0 MB");
    assert_eq!(format_bytes(4_100_000_000), "4.1 GB");
    assert_eq!(format_bytes(2_500_000_000_000), "2.5 TB");
}

#[test]
fn observed_dirs_cover_desired_recorded_and_mirror_folders() {
    let observed = installed(&[bert_model(C1)]);
    let dirs = dirs_to_observe(Path::new(ROOT), &[gguf_model()], &observed.registry);
    let expected: Vec<PathBuf> = vec![
        "configs".into(),
        "llama-cpp/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".into(),
        "transformers/acme/tiny-bert".into(),
    ];
    assert_eq!(dirs, expected);
    let _ = Registry::default();
}

#[test]
fn unselected_files_kept_in_a_folder_are_named_up_to_ten() {
    let model = gguf_model();
    let note_for = |extra: usize| {
        let mut observed = installed(std::slice::from_ref(&model));
        let dir = observed.dirs.get_mut(&model.install_dir).unwrap();
        for i in 0..extra {
            dir.files.insert(format!("notes-{i:02}.txt"), seen(10));
        }
        let plan = plan(std::slice::from_ref(&model), &observed, false);
        assert_eq!(ids(&plan), Vec::<&str>::new(), "kept files change nothing");
        plan.notes
            .iter()
            .find(|note| note.message.contains("not selected"))
            .map(|note| note.message.clone())
    };
    assert_eq!(note_for(0), None);
    assert_eq!(
        note_for(2).unwrap(),
        "2 file(s) in its folder are not selected (kept; prune = true removes them): \
         notes-00.txt, notes-01.txt"
    );
    let many = note_for(12).unwrap();
    assert!(
        many.starts_with("12 file(s) in its folder are not selected"),
        "{many}"
    );
    assert!(
        many.ends_with(
            "notes-00.txt, notes-01.txt, notes-02.txt, notes-03.txt, notes-04.txt, \
         notes-05.txt, notes-06.txt, notes-07.txt, notes-08.txt, notes-09.txt and 2 more"
        ),
        "{many}"
    );
}
