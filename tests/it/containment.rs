//! Containment (issue 19): kmm never deletes or writes outside its models directory, keeps the
//! user's own links, and keeps the files of one model its own. Each test plants what a user (or
//! an attacker) can plant, runs the real binary against the fake hub, and checks that the files
//! outside the store survive byte for byte.
//!
//! Edges: the real binary against the fake hub; the workspace helpers come from
//! `reliability.rs`.

use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::{Path, PathBuf};

use crate::fake_hub::{FakeHub, FileSpec, RepoSpec};
use crate::reliability::{Workspace, noise, read_tree};

const FIRST: &str = "acme/first";
const SECOND: &str = "acme/second";

fn repos() -> Vec<RepoSpec> {
    let model = |id: &str, seed: u64| {
        RepoSpec::new(id).commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
            // The same vocabulary in both models, as MiniLM and distilbert share `vocab.txt`.
            FileSpec::regular("vocab.txt", b"[PAD]\n[UNK]\nhello\nworld\n".to_vec()),
            FileSpec::lfs("model.safetensors", noise(200 << 10, seed)),
        ])
    };
    vec![model(FIRST, 0xC1), model(SECOND, 0xC2)]
}

/// A folder of the user's own files (with a subfolder) outside the store.
fn users_folder(root: &Path, name: &str) -> PathBuf {
    let folder = root.join(name);
    fs_err::create_dir_all(folder.join("sub")).unwrap();
    fs_err::write(folder.join("thesis.tex"), "years of work").unwrap();
    fs_err::write(folder.join("sub/photo.jpg"), noise(4096, 7)).unwrap();
    folder
}

fn is_link(path: &Path) -> bool {
    fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// `kmm plan` has nothing left to do (`context` names the case in the failure).
fn assert_converged(ws: &Workspace, context: &str) {
    let plan = ws.run(&["plan", "--json"]);
    let actions = plan.json()["data"]["actions"].clone();
    assert!(
        actions.as_array().unwrap().is_empty(),
        "{context}: {}",
        plan.stdout
    );
}

/// Starts `kmm args`, SIGKILLs it after `delay`, and says whether it was still running then.
fn kill_after(ws: &Workspace, args: &[&str], delay: std::time::Duration) -> bool {
    let mut child = ws.spawn(args);
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    child.wait().unwrap();
    running
}

#[test]
fn planted_links_in_kmms_own_folders_are_refused_and_their_targets_survive() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main")]);
    ws.run(&["apply", "--quiet"]).ok();
    ws.write_manifest(&[(FIRST, "main"), (SECOND, "main")]);
    let outside = ws.dir.path().join("outside");
    for internal in ["trash", "staging", "downloads"] {
        let folder = users_folder(&outside, internal);
        let before = read_tree(&folder);
        let link = ws.models.join(".kmm").join(internal);
        let _ = fs_err::remove_dir_all(&link);
        symlink(&folder, &link).unwrap();
        for verb in [&["apply", "--quiet"][..], &["gc", "--quiet"]] {
            let run = ws.run(verb);
            assert_eq!(
                run.code, 12,
                "{verb:?} with {internal} linked: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains(&format!(".kmm/{internal}")) && run.stderr.contains("link"),
                "{}",
                run.stderr
            );
            assert_eq!(
                read_tree(&folder),
                before,
                "{verb:?} touched the user's {internal}"
            );
        }
        assert!(is_link(&link), "the link itself is left for the user");
        fs_err::remove_file(&link).unwrap();
    }
    // With the links gone, the store works again.
    ws.run(&["apply", "--quiet"]).ok();
    assert!(ws.model_dir(SECOND).join("model.safetensors").is_file());
}

#[test]
fn a_kmm_folder_linked_to_the_users_files_is_refused() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main")]);
    fs_err::create_dir_all(&ws.models).unwrap();
    let documents = users_folder(ws.dir.path(), "documents");
    fs_err::create_dir_all(documents.join("trash")).unwrap();
    fs_err::write(documents.join("trash/keep.txt"), "mine").unwrap();
    let before = read_tree(&documents);
    symlink(&documents, ws.models.join(".kmm")).unwrap();
    let run = ws.run(&["apply", "--quiet"]);
    assert_eq!(run.code, 12, "{}", run.stderr);
    assert_eq!(read_tree(&documents), before);
    // A link to an empty folder (a bigger disk) is kmm's to use.
    fs_err::remove_file(ws.models.join(".kmm")).unwrap();
    let big_disk = ws.dir.path().join("big-disk/kmm");
    fs_err::create_dir_all(&big_disk).unwrap();
    symlink(&big_disk, ws.models.join(".kmm")).unwrap();
    ws.run(&["apply", "--quiet"]).ok();
    assert!(big_disk.join("lock").is_file());
    assert!(ws.model_dir(FIRST).join("model.safetensors").is_file());
}

#[test]
fn the_users_links_to_manifest_lock_and_registry_stay_links_with_updated_targets() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main")]);
    let dotfiles = ws.dir.path().join("dotfiles");
    fs_err::create_dir_all(&dotfiles).unwrap();
    fs_err::create_dir_all(&ws.models).unwrap();
    // The manifest and the registry are links (relative and absolute); the lock is a link to a
    // file that does not exist yet, as a fresh dotfiles checkout has.
    fs_err::rename(ws.manifest_path(), dotfiles.join("kari-models.toml")).unwrap();
    symlink("dotfiles/kari-models.toml", ws.manifest_path()).unwrap();
    let lock = ws.dir.path().join("kari-models.lock");
    symlink(dotfiles.join("kari-models.lock"), &lock).unwrap();
    let shared_registry = dotfiles.join("registry.json");
    symlink(&shared_registry, ws.registry_path()).unwrap();

    ws.run(&["apply", "--quiet"]).ok();
    ws.run(&["pin", "--model", FIRST, "--quiet"]).ok();
    ws.run(&["download", "--model", SECOND, "--save", "--quiet"])
        .ok();
    for link in [ws.manifest_path(), lock.clone(), ws.registry_path()] {
        assert!(is_link(&link), "{} was replaced by a file", link.display());
    }
    let manifest = fs_err::read_to_string(dotfiles.join("kari-models.toml")).unwrap();
    assert!(manifest.contains(SECOND), "{manifest}");
    let lock_text = fs_err::read_to_string(dotfiles.join("kari-models.lock")).unwrap();
    assert!(lock_text.contains(FIRST), "{lock_text}");
    let registry: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&shared_registry).unwrap()).unwrap();
    assert_eq!(registry[FIRST]["pinned"], true, "{registry}");
    assert!(registry[SECOND].is_object(), "{registry}");
    let leftovers: Vec<_> = fs_err::read_dir(&dotfiles)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn identical_files_of_two_models_are_not_shared_and_an_edit_stays_in_its_model() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main"), (SECOND, "main")]);
    ws.run(&["apply", "--quiet"]).ok();
    let (one, two) = (
        ws.model_dir(FIRST).join("vocab.txt"),
        ws.model_dir(SECOND).join("vocab.txt"),
    );
    assert_ne!(
        fs_err::metadata(&one).unwrap().ino(),
        fs_err::metadata(&two).unwrap().ino(),
        "one inode in two model folders"
    );
    let before = fs_err::read(&two).unwrap();
    let mut file = fs_err::OpenOptions::new().append(true).open(&one).unwrap();
    std::io::Write::write_all(&mut file, b"my own token\n").unwrap();
    assert_eq!(fs_err::read(&two).unwrap(), before);
}

#[test]
fn a_file_found_in_another_models_folder_is_copied_and_the_plan_says_what_it_costs() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main")]);
    ws.run(&["apply", "--quiet"]).ok();
    ws.write_manifest(&[(FIRST, "main"), (SECOND, "main")]);
    let plan = ws.run(&["plan", "--json"]);
    let summary = &plan.json()["data"]["summary"];
    // `config.json` and `vocab.txt` are the same in both models.
    let shared = (br#"{"model_type":"bert"}"#.len() + b"[PAD]\n[UNK]\nhello\nworld\n".len()) as u64;
    assert_eq!(summary["copy_bytes"], shared, "{}", plan.stdout);
    let text = ws.run(&["plan"]);
    assert!(text.stdout.contains("copied"), "{}", text.stdout);
    ws.run(&["apply", "--quiet"]).ok();
    let (one, two) = (
        ws.model_dir(FIRST).join("vocab.txt"),
        ws.model_dir(SECOND).join("vocab.txt"),
    );
    assert_ne!(
        fs_err::metadata(&one).unwrap().ino(),
        fs_err::metadata(&two).unwrap().ino()
    );
    assert_eq!(fs_err::read(&one).unwrap(), fs_err::read(&two).unwrap());
}

/// A manifest declaring `FIRST` with the given include globs.
fn manifest_with_include(ws: &Workspace, include: &[&str]) {
    let globs: Vec<String> = include.iter().map(|g| format!("\"{g}\"")).collect();
    let text = format!(
        "[settings]\nmodels_dir = \"{}\"\n\n[models.\"{FIRST}\"]\ninclude = [{}]\n",
        ws.models.display(),
        globs.join(", ")
    );
    fs_err::write(ws.manifest_path(), text).unwrap();
}

/// Hidden work folders or staging leftovers anywhere under `root`.
fn work_leftovers(root: &Path) -> Vec<String> {
    read_tree(root)
        .into_keys()
        .filter(|path| path.contains(".kmm-staging") || path.contains(".kmm-old"))
        .collect()
}

#[test]
fn a_model_folder_linked_to_another_disk_stays_a_link_when_its_selection_changes() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    manifest_with_include(&ws, &["config.json"]);
    ws.run(&["apply", "--quiet"]).ok();
    // The user moves the model to another disk (/dev/shm where it is another file system)
    // and leaves a link behind.
    let other_disk =
        tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let moved = other_disk.path().join("first");
    let folder = ws.model_dir(FIRST);
    fs_err::create_dir_all(&moved).unwrap();
    for entry in fs_err::read_dir(&folder).unwrap().flatten() {
        fs_err::copy(entry.path(), moved.join(entry.file_name())).unwrap();
    }
    fs_err::remove_dir_all(&folder).unwrap();
    symlink(&moved, &folder).unwrap();
    fs_err::write(other_disk.path().join("neighbour.txt"), "not kmm's").unwrap();

    manifest_with_include(&ws, &["config.json", "*.safetensors"]);
    ws.run(&["apply", "--quiet"]).ok();
    assert!(is_link(&folder), "the link was replaced by a folder");
    assert!(moved.join("model.safetensors").is_file());
    assert!(moved.join("config.json").is_file());
    assert_eq!(
        fs_err::read_to_string(other_disk.path().join("neighbour.txt")).unwrap(),
        "not kmm's"
    );
    assert!(
        work_leftovers(other_disk.path()).is_empty(),
        "{:?}",
        work_leftovers(other_disk.path())
    );
    let plan = ws.run(&["plan", "--json"]);
    assert_eq!(
        plan.json()["data"]["summary"]["to_change"],
        0,
        "{}",
        plan.stdout
    );

    // A link to nothing is refused, naming the link; nothing is replaced.
    fs_err::remove_file(&folder).unwrap();
    symlink(other_disk.path().join("gone"), &folder).unwrap();
    manifest_with_include(&ws, &["config.json"]);
    let run = ws.run(&["apply", "--quiet"]);
    assert_eq!(run.code, 12, "{}", run.stderr);
    assert!(run.stderr.contains("is a link"), "{}", run.stderr);
    assert!(is_link(&folder));
}

/// Puts `models/.kmm` on another file system: a tmpfs mounted there where the test may mount
/// one (root), else a link to a folder on `/dev/shm` when that is another file system. Returns
/// where `.kmm`'s files land and what to keep alive (the mount, or the folder); `None`: neither
/// is possible here, and the caller skips.
fn kmm_dir_on_another_file_system(ws: &Workspace) -> Option<(PathBuf, Box<dyn std::any::Any>)> {
    let kmm = ws.models.join(".kmm");
    if let Some(mount) = crate::support::Tmpfs::mount(&kmm, "64m") {
        return Some((kmm, Box::new(mount)));
    }
    fs_err::remove_dir(&kmm).unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").ok()?;
    let dev = |path: &Path| fs_err::metadata(path).unwrap().dev();
    if dev(shm.path()) == dev(&ws.models) {
        return None;
    }
    symlink(shm.path(), &kmm).unwrap();
    Some((shm.path().to_path_buf(), Box::new(shm)))
}

#[test]
fn a_kmm_folder_on_another_file_system_installs_updates_and_removes() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    let Some((kmm, _keep)) = kmm_dir_on_another_file_system(&ws) else {
        eprintln!("skipped: cannot put models/.kmm on another file system here");
        return;
    };
    manifest_with_include(&ws, &["config.json"]);
    let first = ws.run(&["apply", "-v"]);
    first.ok();
    assert!(!first.stderr.contains("os error 18"), "{}", first.stderr);
    manifest_with_include(&ws, &["config.json", "*.safetensors", "vocab.txt"]);
    ws.run(&["apply", "--quiet"]).ok();
    let folder = ws.model_dir(FIRST);
    for file in ["config.json", "model.safetensors", "vocab.txt"] {
        assert!(folder.join(file).is_file(), "{file}");
    }
    assert!(
        kmm.join("lock").is_file(),
        "the lock lives on the other file system"
    );
    ws.write_manifest(&[(SECOND, "main")]);
    let text = fs_err::read_to_string(ws.manifest_path()).unwrap();
    fs_err::write(
        ws.manifest_path(),
        text.replace("[settings]\n", "[settings]\nprune = true\n"),
    )
    .unwrap();
    ws.run(&["apply", "--quiet"]).ok();
    assert!(!folder.exists());
    assert!(ws.model_dir(SECOND).join("model.safetensors").is_file());
    assert!(
        work_leftovers(&ws.models).is_empty(),
        "{:?}",
        work_leftovers(&ws.models)
    );
    assert_converged(&ws, "after the last apply");
}

#[test]
fn kills_while_models_dot_kmm_is_on_another_file_system_leave_no_work_folder_behind() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    let Some((_kmm, _keep)) = kmm_dir_on_another_file_system(&ws) else {
        eprintln!("skipped: cannot put models/.kmm on another file system here");
        return;
    };
    let mut landed = 0;
    for round in 0..16u64 {
        // Alternate between two selections so that every round replaces a folder.
        let include: &[&str] = if round % 2 == 0 {
            &["config.json", "*.safetensors"]
        } else {
            &["config.json", "vocab.txt"]
        };
        manifest_with_include(&ws, include);
        let delay = std::time::Duration::from_millis(1 + (round * 5) % 30);
        landed += usize::from(kill_after(&ws, &["apply", "--quiet"], delay));
        ws.run(&["apply", "--quiet"]).ok();
        assert!(
            work_leftovers(&ws.models).is_empty(),
            "round {round}: {:?}",
            work_leftovers(&ws.models)
        );
        assert_converged(&ws, &format!("round {round}"));
        for file in include.iter().filter(|g| !g.contains('*')) {
            assert!(
                ws.model_dir(FIRST).join(file).is_file(),
                "round {round}: {file}"
            );
        }
    }
    eprintln!("{landed} of 16 kills landed while apply ran");
}

#[test]
fn the_users_links_inside_a_model_folder_survive_a_reinstall_and_their_targets_too() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    manifest_with_include(&ws, &["config.json"]);
    ws.run(&["apply", "--quiet"]).ok();
    let folder = ws.model_dir(FIRST);
    let outside = users_folder(ws.dir.path(), "loras");
    let before = read_tree(&outside);
    symlink(
        outside.join("thesis.tex"),
        folder.join("my-lora.safetensors"),
    )
    .unwrap();
    fs_err::create_dir_all(folder.join("adapters")).unwrap();
    symlink(&outside, folder.join("adapters/all")).unwrap();

    manifest_with_include(&ws, &["config.json", "*.safetensors"]);
    ws.run(&["apply", "--quiet"]).ok();
    assert!(folder.join("model.safetensors").is_file());
    assert!(is_link(&folder.join("my-lora.safetensors")));
    assert_eq!(
        fs_err::read_link(folder.join("adapters/all")).unwrap(),
        outside
    );
    assert_eq!(read_tree(&outside), before, "a link was followed");
    assert_converged(&ws, "after the last apply");
}

#[test]
fn a_watch_interval_below_a_second_is_e_args() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[(FIRST, "main")]);
    for args in [
        &["watch", "--interval", "1ms"][..],
        &["watch", "--interval", "999ms"],
        &["watch", "--retry-delay", "1ms"],
    ] {
        let run = ws.run(args);
        assert_eq!(run.code, 18, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("too short") && run.stderr.contains("hint:"),
            "{}",
            run.stderr
        );
    }
    assert!(!ws.models.exists(), "a refused watch touched the store");
}

#[test]
fn json_version_and_help_print_one_envelope() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    for args in [&["--json", "--version"][..], &["--version", "--json"]] {
        let doc = ws.run(args).ok().json();
        assert_eq!(doc["success"], true, "{doc}");
        assert_eq!(doc["data"]["version"], env!("CARGO_PKG_VERSION"), "{doc}");
    }
    for args in [
        &["--json", "help", "plan"][..],
        &["--json", "plan", "--help"],
        &["plan", "--json", "-h"],
    ] {
        let doc = ws.run(args).ok().json();
        assert_eq!(
            doc["data"]["command"],
            serde_json::json!(["kmm", "plan"]),
            "{args:?}: {doc}"
        );
        assert!(
            doc["data"]["help"]
                .as_str()
                .unwrap()
                .contains("Usage: kmm plan"),
            "{doc}"
        );
    }
    // Without --json, help and version stay text.
    let text = ws.run(&["--version"]).ok().stdout.clone();
    assert!(text.starts_with("kmm "), "{text}");
}

#[test]
fn a_manifest_path_that_is_a_folder_or_too_long_is_e_args() {
    let hub = FakeHub::start(repos());
    let ws = Workspace::new(&hub, &[]);
    let folder = ws.dir.path().to_string_lossy().into_owned();
    let long_name = ws
        .dir
        .path()
        .join("m".repeat(300))
        .to_string_lossy()
        .into_owned();
    let long_path = ws
        .dir
        .path()
        .join(vec!["d".repeat(200); 25].join("/"))
        .to_string_lossy()
        .into_owned();
    for manifest in [&folder, &long_name, &long_path] {
        for verb in ["plan", "apply"] {
            let run = ws.run(&[verb, "--json", "--manifest", manifest]);
            assert_eq!(
                run.error_code(),
                "E_ARGS",
                "{verb} --manifest {}: {}",
                &manifest[..60],
                run.stdout
            );
        }
    }
    let run = ws.run(&["plan", "--manifest", &folder]);
    assert!(
        run.stderr.contains("kari-models.toml"),
        "the hint names the file: {}",
        run.stderr
    );
}

/// Every file under `dir` with its size, by relative path; kmm's own `.kmm/` is left out (its
/// lock file holds the pid of the last holder, whose length varies), except that its trash and
/// staging must be empty.
fn sizes(dir: &Path) -> std::collections::BTreeMap<String, usize> {
    let tree = read_tree(dir);
    let leftovers: Vec<&String> = tree
        .keys()
        .filter(|path| path.starts_with(".kmm/trash/") || path.starts_with(".kmm/staging/"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "left in kmm's work folders: {leftovers:?}"
    );
    tree.into_iter()
        .filter(|(path, _)| !path.starts_with(".kmm/"))
        .map(|(path, bytes)| (path, bytes.len()))
        .collect()
}

/// A store of 1 declared model and 30 undeclared copies of it (150 files each) plus 2,000
/// stale downloads: `kmm gc` then takes long enough to be killed mid-way.
fn large_gc_store(hub: &FakeHub) -> (Workspace, u64) {
    let ws = Workspace::new(hub, &[("many/base", "main")]);
    ws.run(&["apply", "--quiet"]).ok();
    let base = ws.model_dir("many/base");
    let mut registry: serde_json::Value =
        serde_json::from_str(&ws.registry_text().unwrap()).unwrap();
    let record = registry["many/base"].clone();
    let base_bytes = record["total_size"].as_u64().unwrap();
    for i in 0..30 {
        let id = format!("many/copy{i:02}");
        let folder = ws.model_dir(&id);
        fs_err::create_dir_all(&folder).unwrap();
        for (path, bytes) in read_tree(&base) {
            let to = folder.join(&path);
            fs_err::create_dir_all(to.parent().unwrap()).unwrap();
            fs_err::write(to, bytes).unwrap();
        }
        let mut copy = record.clone();
        copy["model_id"] = id.clone().into();
        copy["install_path"] = folder.to_string_lossy().into_owned().into();
        registry[&id] = copy;
    }
    fs_err::write(
        ws.registry_path(),
        serde_json::to_string_pretty(&registry).unwrap(),
    )
    .unwrap();
    let downloads = ws.models.join(".kmm/downloads");
    fs_err::create_dir_all(&downloads).unwrap();
    for i in 0..2000u32 {
        fs_err::write(
            downloads.join(format!("{:064x}", u64::from(i) + 1)),
            b"stale",
        )
        .unwrap();
    }
    (ws, base_bytes)
}

fn many_files_repo() -> RepoSpec {
    RepoSpec::new("many/base").commit(
        (0..150)
            .map(|i| {
                FileSpec::regular(
                    format!("part-{i:03}.json"),
                    format!("{{\"part\":{i}}}").into_bytes(),
                )
            })
            .collect(),
    )
}

#[test]
fn sigkill_during_gc_never_leaves_a_half_removed_model_and_a_rerun_ends_where_a_clean_one_ends() {
    let hub = FakeHub::start(vec![many_files_repo()]);
    let (clean, base_bytes) = large_gc_store(&hub);
    // Keep only the declared model: every copy is evicted.
    let quota = format!("{}", (base_bytes + 1) as f64 / 1e9);
    let gc = ["gc", "--quiet", "--quota-gb", quota.as_str()];
    let started = std::time::Instant::now();
    clean.run(&gc).ok();
    // Kill points spread over a clean run's length.
    let took = started.elapsed();
    let expected_registry: Vec<String> = {
        let registry: serde_json::Value =
            serde_json::from_str(&clean.registry_text().unwrap()).unwrap();
        registry.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(expected_registry, ["many/base"]);
    let expected_files = sizes(&clean.models);
    let base_files = sizes(&clean.model_dir("many/base"));

    let mut landed = 0;
    for round in 0..6u64 {
        let (ws, _) = large_gc_store(&hub);
        landed += usize::from(kill_after(&ws, &gc, took * (round as u32 + 1) / 7));
        // The registry parses; every model it lists is complete or (between the folder's
        // removal and its record's) absent, never half-removed; so is every folder on disk.
        let registry: serde_json::Value = serde_json::from_str(&ws.registry_text().unwrap())
            .unwrap_or_else(|error| panic!("round {round}: torn registry: {error}"));
        for id in registry.as_object().unwrap().keys() {
            let folder = ws.model_dir(id);
            if folder.exists() {
                assert_eq!(
                    sizes(&folder),
                    base_files,
                    "round {round}: {id} half-removed"
                );
            }
        }
        for entry in fs_err::read_dir(ws.models.join("transformers/many"))
            .unwrap()
            .flatten()
        {
            assert_eq!(
                sizes(&entry.path()),
                base_files,
                "round {round}: {:?}",
                entry.file_name()
            );
        }
        ws.run(&gc).ok();
        assert_eq!(
            sizes(&ws.models),
            expected_files,
            "round {round}: a rerun ends elsewhere"
        );
    }
    eprintln!("{landed} of 6 kills landed while gc ran (a clean gc took {took:?})");
}

#[test]
fn sigkill_during_kmm_lock_leaves_the_old_lock_or_the_complete_new_one() {
    let ids: Vec<String> = (0..30).map(|i| format!("many/m{i:02}")).collect();
    let repos = ids
        .iter()
        .map(|id| {
            RepoSpec::new(id).commit(vec![FileSpec::regular(
                "config.json",
                id.as_bytes().to_vec(),
            )])
        })
        .collect();
    let hub = FakeHub::start(repos);
    let pairs: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "main")).collect();
    let ws = Workspace::new(&hub, &pairs);
    let lock = ws.dir.path().join("kari-models.lock");
    ws.run(&["lock", "--quiet"]).ok();
    let complete = fs_err::read_to_string(&lock).unwrap();
    // Each hub answer takes 10 ms, so resolving 30 models takes a while.
    hub.add_fault(crate::fake_hub::Fault::Latency {
        path_contains: "/api/models/".into(),
        millis: 10,
        times: u32::MAX,
    });
    let started = std::time::Instant::now();
    ws.run(&["lock", "--quiet"]).ok();
    // Kill points spread over a clean run's length.
    let took = started.elapsed();
    let mut landed = 0;
    for round in 0..8u64 {
        // Half the rounds start from no lock, half from an older one (one model fewer).
        let old = if round % 2 == 0 {
            let _ = fs_err::remove_file(&lock);
            None
        } else {
            ws.write_manifest(&pairs[1..]);
            ws.run(&["lock", "--quiet"]).ok();
            ws.write_manifest(&pairs);
            Some(fs_err::read_to_string(&lock).unwrap())
        };
        let delay = took * (round as u32 + 1) / 9;
        landed += usize::from(kill_after(&ws, &["lock", "--quiet"], delay));
        let now = fs_err::read_to_string(&lock).ok();
        assert!(
            now == old || now.as_deref() == Some(complete.as_str()),
            "round {round}: a torn lock: {now:?}"
        );
        // Orphaned temp files (backdated: the sweep leaves fresh ones to live writers) are
        // removed by the next write.
        for entry in fs_err::read_dir(ws.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".kari-models.lock.") {
                let an_hour_ago =
                    std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
                fs_err::File::open(entry.path())
                    .unwrap()
                    .set_modified(an_hour_ago)
                    .unwrap();
            }
        }
        ws.run(&["lock", "--quiet"]).ok();
        assert_eq!(
            fs_err::read_to_string(&lock).unwrap(),
            complete,
            "round {round}"
        );
        let leftovers: Vec<String> = fs_err::read_dir(ws.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    eprintln!("{landed} of 8 kills landed while lock ran (a clean lock took {took:?})");
}

#[test]
fn a_models_dir_that_is_a_file_or_too_long_is_e_args() {
    let hub = FakeHub::start(repos());
    let mut ws = Workspace::new(&hub, &[(FIRST, "main")]);
    let file = ws.dir.path().join("not-a-folder");
    fs_err::write(&file, "mine").unwrap();
    let long = ws.dir.path().join("m".repeat(300));
    for dir in [&file, &long] {
        let run = ws.run(&["plan", "--json", "--models-dir", dir.to_str().unwrap()]);
        assert_eq!(run.error_code(), "E_ARGS", "{}", run.stdout);
        assert!(run.stdout.contains("--models-dir"), "{}", run.stdout);
    }
    ws.set_env("KMM_MODELS_DIR", file.to_str().unwrap());
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_ARGS", "{}", run.stdout);
    assert!(run.stdout.contains("KMM_MODELS_DIR"), "{}", run.stdout);
    assert_eq!(fs_err::read_to_string(&file).unwrap(), "mine");
}
