//! Plans over what is on disk beyond the records: files without recorded hashes, files changed
//! in place, loose files and old flat layouts, found by their bytes instead of downloaded.

use std::path::{Path, PathBuf};

use super::*;

#[test]
fn records_without_hashes_are_refetched() {
    let desired = bert_model(C1);
    let mut observed = installed(std::slice::from_ref(&desired));
    for file in &mut observed
        .registry
        .models
        .get_mut("acme/tiny-bert")
        .unwrap()
        .files
    {
        file.sha256 = None;
        file.git_sha1 = None;
    }
    let plan = plan(&[desired], &observed, false);
    assert_eq!(plan.summary.download_files, 4);
    assert!(
        plan.models[0]
            .files
            .iter()
            .all(|f| f.reason.as_deref() == Some("no hash recorded"))
    );
}

#[test]
fn records_without_hashes_are_kept_when_their_bytes_match() {
    let desired = bert_model(C1);
    let mut observed = installed(std::slice::from_ref(&desired));
    let record = observed.registry.models.get_mut("acme/tiny-bert").unwrap();
    for file in &mut record.files {
        file.sha256 = None;
        file.git_sha1 = None;
    }
    let requests = hash_requests(
        Path::new(ROOT),
        std::slice::from_ref(&desired),
        &observed,
        false,
    );
    assert_eq!(requests.len(), 4, "{requests:?}");
    for file in &desired.files {
        // One file changed on disk: its hash does not match.
        let hash = if file.path == "old.bin" {
            FileHash::GitSha1("0".repeat(40))
        } else {
            file.hash.clone()
        };
        let path = desired.install_dir.join(&file.path);
        observed
            .hashes
            .insert((path, HashKind::of(&file.hash)), hash);
    }
    let plan = plan(&[desired], &observed, false);
    assert_eq!(plan.summary.download_files, 1);
    let model = &plan.models[0];
    assert_eq!(model.kept_files, 3);
    assert_eq!(model.files.len(), 1);
    assert_eq!(model.files[0].path, "old.bin");
    assert!(
        model
            .reasons
            .iter()
            .any(|r| r == "record gains the upstream hashes")
    );
}

#[test]
fn a_vouched_file_whose_hash_differs_is_tampered() {
    let desired = bert_model(C1);
    let mut observed = installed(std::slice::from_ref(&desired));
    assert!(
        hash_requests(
            Path::new(ROOT),
            std::slice::from_ref(&desired),
            &observed,
            false
        )
        .is_empty()
    );
    let verify = hash_requests(
        Path::new(ROOT),
        std::slice::from_ref(&desired),
        &observed,
        true,
    );
    assert_eq!(verify.len(), 4);
    let path = desired.install_dir.join("model.safetensors");
    observed
        .hashes
        .insert((path, HashKind::Sha256), FileHash::Sha256("e".repeat(64)));
    let plan = plan(&[desired], &observed, false);
    assert_eq!(ids(&plan)[0], "fetch:acme/tiny-bert:model.safetensors");
    assert_eq!(plan.models[0].files[0].reason.as_deref(), Some("tampered"));
}

#[test]
fn a_loose_file_with_the_right_bytes_is_moved_instead_of_fetched() {
    let desired = gguf_model();
    let gguf = &desired.files[1];
    let loose = PathBuf::from("llama-cpp/tinyllama.gguf");
    let mut observed = Observed::default();
    observed.loose.insert(loose.clone(), seen(gguf.size));
    observed.loose.insert("llama-cpp/mine.gguf".into(), seen(7));
    let requests = hash_requests(
        Path::new(ROOT),
        std::slice::from_ref(&desired),
        &observed,
        false,
    );
    assert_eq!(requests, [(loose.clone(), HashKind::Sha256)]);
    observed
        .hashes
        .insert((loose.clone(), HashKind::Sha256), gguf.hash.clone());

    let full = plan(std::slice::from_ref(&desired), &observed, false);
    assert_eq!(
        full.summary.download_files, 1,
        "only config.json is fetched"
    );
    let delete = "delete-moved:llama-cpp/tinyllama.gguf";
    assert_eq!(deps(&full, delete), [format!("install:{}", desired.id)]);
    assert!(full.notes.iter().any(|n| n.model == "llama-cpp/mine.gguf"));

    // `kmm migrate`: no download; the model gets the file that is there, its record only
    // that file.
    let migrate = compute_layout_only(PlanInput {
        models_dir: Path::new(ROOT),
        desired: std::slice::from_ref(&desired),
        observed: &observed,
        prune: true,
    });
    assert_eq!(migrate.summary.download_files, 0);
    let record = migrate
        .actions
        .iter()
        .find_map(|a| match &a.action {
            Action::Register { record, .. } => Some(record),
            _ => None,
        })
        .unwrap();
    assert!(record.partial);
    assert_eq!(record.files.len(), 1);
    assert!(ids(&migrate).contains(&delete));
    assert!(
        !ids(&migrate)
            .iter()
            .any(|id| id.starts_with("mirror-config"))
    );
}

#[test]
fn flat_files_of_an_undeclared_record_are_named_not_moved() {
    let mut observed = Observed::default();
    let mut record = record_from(&{
        let plan = compute(PlanInput {
            models_dir: Path::new(ROOT),
            desired: &[gguf_model()],
            observed: &Observed::default(),
            prune: false,
        });
        plan.actions
            .iter()
            .find_map(|a| match &a.action {
                Action::Register { record, .. } => Some(record.clone()),
                _ => None,
            })
            .unwrap()
    });
    record.install_path = format!("{ROOT}/llama-cpp");
    record.pinned = None;
    observed
        .registry
        .models
        .insert("old/flat".to_string(), record);
    observed.loose.insert(
        "llama-cpp/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf".into(),
        seen(1),
    );
    let plan = plan(&[], &observed, true);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.model == "old/flat" && n.message.contains("old flat layout")),
        "{:?}",
        plan.notes
    );
    // Pruned: only the record goes; the shared folder is never removed.
    assert_eq!(ids(&plan), ["unregister:old/flat"]);
}
