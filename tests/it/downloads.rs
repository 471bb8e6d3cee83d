//! Downloads through the real `kmm` binary against the fake hub: resume across a SIGKILL,
//! mid-body drops, 429/5xx storms, corrupted bytes, ENOSPC on a small tmpfs, and local
//! Hugging Face cache reuse (online with zero file requests, and `--offline`) from a cache the
//! real `huggingface_hub` client filled.
//!
//! Small files and small chunks (`KMM_CHUNK_SIZE`) keep these fast; the fake hub's per-connection
//! bandwidth cap makes a download slow enough to be killed or starved of disk half way.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_hub::{FakeHub, Fault, FileSpec, RepoSpec, sha256_hex};
use crate::support::{Run, Tmpfs, has_boot_id, journal_path, kmm_command, pretend_a_reboot};

const REPO: &str = "acme/big-model";
const BIG: &str = "model.safetensors";
const CHUNK: u64 = 256 << 10;
const STORMY: &str = "stormy-weights.safetensors";

/// Deterministic bytes that do not repeat (xorshift64).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        bytes.extend_from_slice(&seed.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn big_repo(size: usize) -> (RepoSpec, Vec<u8>) {
    let big = noise(size, 0x5EED_0000_0000_0001 ^ size as u64);
    let repo = RepoSpec::new(REPO).commit(vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs(BIG, big.clone()),
    ]);
    (repo, big)
}

struct Workspace {
    dir: tempfile::TempDir,
    endpoint: String,
    models: PathBuf,
    env: Vec<(String, String)>,
}

impl Workspace {
    fn new(hub: &FakeHub, models: &[&str]) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let models_dir = dir.path().join("models");
        let mut workspace = Workspace {
            endpoint: hub.url(),
            models: models_dir,
            dir,
            env: vec![("KMM_CHUNK_SIZE".into(), CHUNK.to_string())],
        };
        workspace.write_manifest(models);
        workspace
    }

    fn write_manifest(&mut self, models: &[&str]) {
        let mut text = format!("[settings]\nmodels_dir = \"{}\"\n", self.models.display());
        for model in models {
            text.push_str(&format!("\n[models.\"{model}\"]\nrevision = \"main\"\n"));
        }
        fs_err::write(self.dir.path().join("kari-models.toml"), text).unwrap();
    }

    fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = kmm_command(self.dir.path(), &self.endpoint);
        cmd.envs(self.env.iter().map(|(name, value)| (name, value)));
        cmd.args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from_output(self.command(args).output().unwrap())
    }

    fn installed(&self, path: &str) -> PathBuf {
        self.models.join("transformers").join(REPO).join(path)
    }

    fn downloads(&self) -> PathBuf {
        self.models.join(".kmm").join("downloads")
    }

    fn part(&self, content: &[u8]) -> PathBuf {
        self.downloads()
            .join(format!("{}.part", sha256_hex(content)))
    }

    fn registry_text(&self) -> Option<String> {
        fs_err::read_to_string(self.models.join("model_registry.json")).ok()
    }
}

fn state_of(part: &Path) -> Option<Value> {
    let mut name = part.as_os_str().to_owned();
    name.push(".state");
    let text = std::fs::read(PathBuf::from(name)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn chunks_done(part: &Path) -> u64 {
    state_of(part)
        .and_then(|state| state["done"].as_array().map(|done| done.len() as u64))
        .unwrap_or(0)
}

/// Waits (polling, bounded only to fail instead of hang) until `ready` holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_requests(hub: &FakeHub) -> usize {
    hub.requests()
        .iter()
        .filter(|request| request.is_file_request())
        .count()
}

#[test]
fn a_killed_download_resumes_where_it_stopped() {
    let size = 8 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let mut ws = Workspace::new(&hub, &[REPO]);
    ws.set_env("KMM_CONNECTIONS_PER_FILE", "2");
    // 2 connections at 1 MiB/s each: the 8 MiB file takes about 4 s, time enough to kill it.
    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 1 << 20,
    });
    let part = ws.part(&big);
    let mut child = ws
        .command(&["apply", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a quarter of the chunks", || chunks_done(&part) >= 8);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let served_first = hub.body_bytes_served();
    let state = state_of(&part).expect("the state survives the kill");
    let done = state["done"].as_array().unwrap().len() as u64;
    assert!(done >= 8, "{state}");
    assert!(
        done * CHUNK < size as u64,
        "the kill came too late: {state}"
    );
    assert_eq!(fs_err::metadata(&part).unwrap().len(), size as u64);
    assert!(ws.registry_text().is_none(), "nothing was registered");

    hub.clear_faults();
    let before = hub.body_bytes_served();
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let served_second = hub.body_bytes_served() - before;
    // The second run fetches exactly the chunks the state did not record.
    let missing = size as u64 - done * CHUNK;
    assert_eq!(served_second, missing, "done chunks: {done}");
    // Across both runs at most the chunks in flight at the kill (2 connections) were lost.
    assert!(
        served_first + served_second <= size as u64 + 2 * CHUNK,
        "{served_first} + {served_second}"
    );
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    assert!(!part.exists());
    assert!(state_of(&part).is_none(), "the state file is removed");
}

#[test]
fn dropped_connections_are_continued_in_the_same_run() {
    let size = 3 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    hub.add_fault(Fault::DropAfter {
        path_contains: BIG.to_string(),
        bytes: 100_000,
        times: 4,
    });
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    let config = br#"{"model_type":"bert"}"#.len() as u64;
    let served = hub.body_bytes_served() - config;
    assert!(
        served <= size as u64 + CHUNK,
        "refetched more than one chunk: {served} for {size}"
    );
    // The drops happened: more requests for the big file than chunks.
    let big_requests = hub
        .requests()
        .iter()
        .filter(|r| r.is_file_request() && r.path.contains(BIG) && r.status == 206)
        .count();
    assert!(
        big_requests > (size as u64 / CHUNK) as usize,
        "{big_requests}"
    );
}

/// Direct writes (the default on Linux), the page cache (`KMM_DIRECT_IO=0`), and chunks whose
/// offsets are not block aligned (written through the page cache even with direct writes on)
/// all land the same bytes, with drops in the middle of chunks.
#[test]
fn chunks_land_whole_with_and_without_direct_writes() {
    let size = (3 << 20) + 12_345;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    for (direct, chunk) in [("1", CHUNK), ("0", CHUNK), ("1", 100_000)] {
        let mut ws = Workspace::new(&hub, &[REPO]);
        ws.set_env("KMM_DIRECT_IO", direct);
        ws.set_env("KMM_CHUNK_SIZE", &chunk.to_string());
        hub.add_fault(Fault::DropAfter {
            path_contains: BIG.to_string(),
            bytes: 70_001,
            times: 2,
        });
        let run = ws.run(&["apply", "--json"]);
        assert_eq!(
            run.code, 0,
            "{direct} {chunk}: {}\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(
            fs_err::read(ws.installed(BIG)).unwrap(),
            big,
            "KMM_DIRECT_IO={direct} KMM_CHUNK_SIZE={chunk}"
        );
        hub.clear_faults();
    }
    let mut ws = Workspace::new(&hub, &[REPO]);
    ws.set_env("KMM_DIRECT_IO", "sometimes");
    let run = ws.run(&["apply", "--json"]);
    assert_ne!(run.code, 0);
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(
        output.contains("E_ARGS") && output.contains("KMM_DIRECT_IO"),
        "{output}"
    );
    assert!(!ws.models.join("model_registry.json").exists());
}

#[test]
fn rate_limits_and_server_errors_are_waited_out() {
    let size = 2 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    hub.add_fault(Fault::Status {
        path_contains: BIG.to_string(),
        status: 429,
        retry_after: Some(0),
        times: 3,
    });
    hub.add_fault(Fault::Status {
        path_contains: BIG.to_string(),
        status: 503,
        retry_after: Some(0),
        times: 2,
    });
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    let statuses: Vec<u16> = hub
        .requests()
        .iter()
        .filter(|r| r.path.contains(BIG))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 3);
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 2);

    // A storm that does not end: E_NET naming the file; what arrived is kept for the next run.
    let (repo2, big2) = {
        let big = noise(size, 77);
        (
            RepoSpec::new("acme/stormy").commit(vec![FileSpec::lfs(STORMY, big.clone())]),
            big,
        )
    };
    hub.put_repo(repo2);
    let mut ws2 = Workspace::new(&hub, &["acme/stormy"]);
    ws2.set_env("KMM_CONNECTIONS_PER_FILE", "1");
    // The storm below does not end: 503s are retried until this passes without progress.
    ws2.set_env("KMM_HUB_RETRY_BUDGET", "1s");
    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 512 << 10,
    });
    let child = ws2
        .command(&["apply", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = ws2.part(&big2);
    wait_until("the first chunk", || chunks_done(&part) >= 1);
    hub.clear_faults();
    hub.add_fault(Fault::Status {
        path_contains: STORMY.to_string(),
        status: 503,
        retry_after: Some(0),
        times: 1000,
    });
    let output = child.wait_with_output().unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::new(),
    };
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    assert!(run.stdout.contains(STORMY), "{}", run.stdout);
    assert!(run.stdout.contains("attempts"), "{}", run.stdout);
    assert!(part.exists(), "the partial download is kept");
    assert!(chunks_done(&part) >= 1, "{:?}", state_of(&part));
    hub.clear_faults();
    let before = hub.body_bytes_served();
    let run = ws2.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(hub.body_bytes_served() - before < size as u64);
}

#[test]
fn corrupted_bytes_are_e_verify_until_the_hub_heals() {
    for size in [200_000usize, 2 << 20] {
        // One stream (small file) and parallel chunks.
        let (repo, big) = big_repo(size);
        let hub = FakeHub::start(vec![repo]);
        let ws = Workspace::new(&hub, &[REPO]);
        hub.add_fault(Fault::WrongBytes {
            path_contains: BIG.to_string(),
            times: 1000,
        });
        let run = ws.run(&["apply", "--json"]);
        assert_eq!(run.error_code(), "E_VERIFY", "{size}: {}", run.stdout);
        assert!(run.stdout.contains(BIG), "{}", run.stdout);
        // Fetched once more after the first mismatch, then given up.
        let config = br#"{"model_type":"bert"}"#.len() as u64;
        assert_eq!(hub.body_bytes_served() - config, 2 * size as u64);
        assert!(!ws.part(&big).exists(), "wrong bytes are not kept");
        assert!(!ws.installed(BIG).exists());
        assert!(ws.registry_text().is_none());

        hub.clear_faults();
        let run = ws.run(&["apply", "--json"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    }
}

#[test]
fn one_corrupted_response_is_fetched_again_in_the_same_run() {
    let size = 2 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    hub.add_fault(Fault::WrongBytes {
        path_contains: BIG.to_string(),
        times: 1,
    });
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
}

#[test]
fn stale_partials_are_removed_by_apply() {
    let (repo, _) = big_repo(100_000);
    let other = RepoSpec::new("acme/other").commit(vec![FileSpec::regular(
        "config.json",
        br#"{"model_type":"gpt2"}"#.to_vec(),
    )]);
    let hub = FakeHub::start(vec![repo, other]);
    let ws = Workspace::new(&hub, &[REPO]);
    fs_err::create_dir_all(ws.downloads()).unwrap();
    let stale = ws.downloads().join(format!("{}.part", "e".repeat(64)));
    fs_err::write(&stale, b"old").unwrap();
    fs_err::write(state_path_of(&stale), b"{}").unwrap();
    // A one-model download cannot tell a stale partial from another declared model's: it
    // leaves them; only a reconcile of the whole manifest removes them.
    let download = ws.run(&["download", "--model", "acme/other", "--json"]);
    assert_eq!(download.code, 0, "{}\n{}", download.stdout, download.stderr);
    assert!(stale.exists());
    assert!(state_path_of(&stale).exists());
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!stale.exists());
    assert!(!state_path_of(&stale).exists());
}

fn state_path_of(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".state");
    PathBuf::from(name)
}

#[test]
fn running_out_of_space_is_e_disk_and_keeps_the_partial() {
    let size = 1536 << 10;
    let (repo, big) = big_repo(size);
    let small =
        RepoSpec::new("acme/small").commit(vec![FileSpec::regular("config.json", b"{}".to_vec())]);
    let hub = FakeHub::start(vec![repo, small]);
    let mut ws = Workspace::new(&hub, &["acme/small"]);
    let Some(_tmpfs) = Tmpfs::mount(&ws.models, "2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root); ENOSPC not tested");
        return;
    };
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let registry_before = ws.registry_text().unwrap();
    let small_config = ws.models.join("transformers/acme/small/config.json");
    assert_eq!(fs_err::read(&small_config).unwrap(), b"{}");

    // Before the first byte: the plan does not fit at all.
    let mut too_big = ws.models.clone();
    too_big.push("filler-before");
    let filler = vec![0u8; 1 << 20];
    fs_err::write(&too_big, &filler).unwrap();
    ws.write_manifest(&["acme/small", REPO]);
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_DISK", "{}", run.stdout);
    assert!(
        run.stdout.contains("not enough free space"),
        "{}",
        run.stdout
    );
    assert_eq!(
        hub.body_bytes_served(),
        2,
        "no byte of the big file was fetched"
    );
    fs_err::remove_file(&too_big).unwrap();

    // Mid-download: the space goes away while the file arrives (one connection at 256 KiB/s:
    // about a second per chunk, so most of the file is still to come when the disk fills).
    ws.set_env("KMM_CONNECTIONS_PER_FILE", "1");
    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 256 << 10,
    });
    let child = ws
        .command(&["apply", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = ws.part(&big);
    wait_until("the first chunk", || chunks_done(&part) >= 1);
    // The partial reserved its full length up front (fallocate): the bytes still to come
    // cannot run out of space, only the progress record and the install can.
    {
        use std::os::unix::fs::MetadataExt;
        let reserved = fs_err::metadata(&part).unwrap().blocks() * 512;
        assert!(reserved >= size as u64, "{reserved} bytes reserved");
    }
    // Fill what is left of the filesystem.
    let hog = ws.models.join("hog");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&hog).unwrap();
        while file.write_all(&[1u8; 64 << 10]).is_ok() {}
    }
    hub.clear_faults();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let doc: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(doc["error_code"], "E_DISK", "{stdout}");
    assert!(
        part.exists(),
        "the partial download is kept for the next run"
    );
    let done = chunks_done(&part);
    assert!(done >= 1);
    assert_eq!(ws.registry_text().unwrap(), registry_before);
    assert_eq!(fs_err::read(&small_config).unwrap(), b"{}");
    assert!(!ws.installed(BIG).exists());

    // Space again: the next run fetches only what is missing. Less is free than the missing
    // bytes, but the partial holds their space already.
    fs_err::remove_file(&hog).unwrap();
    let before = hub.body_bytes_served();
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(hub.body_bytes_served() - before <= size as u64 - done * CHUNK);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
}

/// Fills `cache` with the real `huggingface_hub` client's `snapshot_download(cache_dir=...)`.
fn fill_cache_with_real_client(hub: &FakeHub, repo: &str, cache: &Path) -> bool {
    if let Some(reason) = crate::interop::interop_skip_reason() {
        eprintln!("skipped: {reason}");
        return false;
    }
    let python = crate::interop::ensure_venv();
    let script = "import sys\nfrom huggingface_hub import snapshot_download\nprint(snapshot_download(sys.argv[1], cache_dir=sys.argv[2]))\n";
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(repo)
        .arg(cache)
        .env("HF_ENDPOINT", hub.url())
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the real client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

#[test]
fn files_in_a_real_client_cache_are_not_downloaded_again() {
    let (repo, big) = big_repo(2 << 20);
    let hub = FakeHub::start(vec![repo]);
    let mut ws = Workspace::new(&hub, &[REPO]);
    let cache = ws.dir.path().join("hf-cache");
    if !fill_cache_with_real_client(&hub, REPO, &cache) {
        return;
    }
    ws.set_env("HF_HUB_CACHE", cache.to_str().unwrap());
    hub.clear_requests();
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(file_requests(&hub), 0, "{:#?}", hub.requests());
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    assert_eq!(run.json()["data"]["report"]["files_downloaded"], 0);
    // The cache is read, never written.
    let blob = cache
        .join("models--acme--big-model/blobs")
        .join(sha256_hex(&big));
    assert_eq!(fs_err::read(&blob).unwrap(), big);
}

#[test]
fn offline_installs_come_from_a_real_client_cache() {
    let (repo, big) = big_repo(300_000);
    let other = RepoSpec::new("acme/not-cached")
        .commit(vec![FileSpec::regular("config.json", b"{}".to_vec())]);
    let hub = FakeHub::start(vec![repo, other]);
    let mut ws = Workspace::new(&hub, &[REPO]);
    let cache = ws.dir.path().join("hf-cache");
    if !fill_cache_with_real_client(&hub, REPO, &cache) {
        return;
    }
    ws.set_env("HF_HUB_CACHE", cache.to_str().unwrap());
    hub.clear_requests();
    let run = ws.run(&["apply", "--offline", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(hub.requests().is_empty(), "{:#?}", hub.requests());
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    assert_eq!(
        fs_err::read(ws.installed("config.json")).unwrap(),
        br#"{"model_type":"bert"}"#
    );

    // The file list is known but a blob is gone from the cache: E_NET naming the file.
    let blob = cache
        .join("models--acme--big-model/blobs")
        .join(sha256_hex(&big));
    fs_err::remove_file(&blob).unwrap();
    fs_err::remove_file(ws.installed(BIG)).unwrap();
    let run = ws.run(&["apply", "--offline", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    assert!(run.stdout.contains(BIG), "{}", run.stdout);

    // A snapshot with a dangling link is not a file list to trust: E_NET.
    let mut fresh = Workspace::new(&hub, &[REPO]);
    fresh.set_env("HF_HUB_CACHE", cache.to_str().unwrap());
    let run = fresh.run(&["apply", "--offline", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);

    // A model the cache never saw: E_NET, nothing requested.
    ws.write_manifest(&["acme/not-cached"]);
    let run = ws.run(&["apply", "--offline", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    assert!(hub.requests().is_empty());
}

#[test]
fn progress_goes_to_stderr_as_lines_or_json_events_only_when_asked() {
    let (repo, _) = big_repo(1 << 20);
    let hub = FakeHub::start(vec![repo]);
    let mut ws = Workspace::new(&hub, &[REPO]);

    // Not a terminal: plain lines on stderr, stdout keeps the one envelope.
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.json()["success"].as_bool().unwrap());
    assert!(
        !run.stderr.contains("\"event\""),
        "JSON progress without being asked:\n{}",
        run.stderr
    );

    fs_err::remove_dir_all(&ws.models).unwrap();
    ws.set_env("KMM_PROGRESS_JSON", "1");
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run.json();
    let events: Vec<Value> = run
        .stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|event| event["event"].as_str())
        .collect();
    assert!(kinds.contains(&"download_started"), "{}", run.stderr);
    assert!(kinds.contains(&"download_finished"), "{}", run.stderr);
    let started = events
        .iter()
        .find(|event| event["event"] == "download_started" && event["path"] == BIG)
        .unwrap();
    assert_eq!(started["size"], 1 << 20);

    fs_err::remove_dir_all(&ws.models).unwrap();
    let run = ws.run(&["apply"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!("downloaded {REPO}/{BIG}")),
        "{}",
        run.stderr
    );

    fs_err::remove_dir_all(&ws.models).unwrap();
    let run = ws.run(&["apply", "--quiet"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stderr.contains("downloaded"), "{}", run.stderr);
}

/// What a power loss can leave of bytes that never reached the disk: the same size and
/// modification time, other bytes.
fn damage_keeping_size_and_mtime(path: &Path, good: &[u8]) {
    let modified = fs_err::metadata(path).unwrap().modified().unwrap();
    let mut damaged = good.to_vec();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 4096].fill(0);
    fs_err::write(path, &damaged).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

#[test]
fn bytes_written_before_a_crash_are_hashed_in_the_next_boot_and_fetched_again() {
    if !has_boot_id() {
        return; // without a boot id every download is fsynced; nothing is deferred
    }
    let size = 2 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let journal = fs_err::read_to_string(journal_path(&ws.models)).unwrap();
    assert!(journal.contains(&sha256_hex(&big)), "{journal}");

    damage_keeping_size_and_mtime(&ws.installed(BIG), &big);
    // In the same boot the page cache holds what was written: the record is trusted and
    // nothing is hashed (this damage is only a stand-in for what a crash can do).
    let run = ws.run(&["plan", "--json", "--detailed-exitcode"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    pretend_a_reboot(&ws.models);
    let run = ws.run(&["plan", "--json", "--detailed-exitcode"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(BIG), "{}", run.stdout);
    let served = hub.body_bytes_served();
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        hub.body_bytes_served() - served,
        size as u64,
        "only the damaged file"
    );
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    let journal = fs_err::read_to_string(journal_path(&ws.models)).unwrap_or_default();
    assert!(!journal.contains("an-earlier-boot"), "checked: {journal}");
    assert_eq!(ws.run(&["plan", "--json", "--detailed-exitcode"]).code, 0);
}

#[test]
fn gc_lets_go_of_journal_entries_whose_files_it_removed() {
    if !has_boot_id() {
        return;
    }
    let (repo, big) = big_repo(2 << 20);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    pretend_a_reboot(&ws.models);
    let journal = fs_err::read_to_string(journal_path(&ws.models)).unwrap();
    assert!(journal.contains(&sha256_hex(&big)), "{journal}");

    let run = ws.run(&["gc", "--quota-gb", "0", "--evict-declared", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(!ws.installed(BIG).exists(), "gc evicted the model");
    let journal = fs_err::read_to_string(journal_path(&ws.models)).unwrap_or_default();
    assert!(!journal.contains(&sha256_hex(&big)), "{journal}");
}

#[test]
fn a_store_download_from_a_crashed_boot_is_hashed_before_it_is_installed() {
    if !has_boot_id() {
        return;
    }
    let size = 2 << 20;
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    // A finished download of the earlier boot, renamed into the store, lost in the crash.
    fs_err::create_dir_all(ws.downloads()).unwrap();
    let download = ws.downloads().join(sha256_hex(&big));
    fs_err::write(&download, &big).unwrap();
    damage_keeping_size_and_mtime(&download, &big);
    let journal = serde_json::json!({
        "version": 1,
        "entries": { sha256_hex(&big): { "an-earlier-boot": 1_700_000_000u64 } }
    });
    fs_err::write(journal_path(&ws.models), journal.to_string()).unwrap();

    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    let config = br#"{"model_type":"bert"}"#.len() as u64;
    assert_eq!(hub.body_bytes_served(), size as u64 + config);
}

/// File bodies the hub was sending when each of the last `n` began (itself included).
fn last_in_flight(hub: &FakeHub, n: usize) -> Vec<usize> {
    let seen = hub.file_bodies_in_flight_at_start();
    seen[seen.len().saturating_sub(n)..].to_vec()
}

/// Installs a `size`-byte big file from a hub armed with `fault`; returns the hub for its logs.
fn install_big_under(size: usize, fault: Fault) -> FakeHub {
    let (repo, big) = big_repo(size);
    let hub = FakeHub::start(vec![repo]);
    let ws = Workspace::new(&hub, &[REPO]);
    hub.add_fault(fault);
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fs_err::read(ws.installed(BIG)).unwrap(), big);
    hub
}

#[test]
fn extra_connections_stay_only_when_they_raise_the_rate() {
    // Each connection capped (a CDN on a long link): more connections multiply the rate.
    let hub = install_big_under(
        16 << 20,
        Fault::BandwidthCap {
            bytes_per_sec: 1 << 20,
        },
    );
    let tail = last_in_flight(&hub, 16);
    assert!(tail.iter().any(|&n| n > 4), "kept 4 connections: {tail:?}");

    // One link shared by every connection (or a busy machine): more connections cannot help,
    // so after the probe only the first four keep fetching.
    let hub = install_big_under(
        24 << 20,
        Fault::LinkCap {
            bytes_per_sec: 8 << 20,
        },
    );
    let seen = hub.file_bodies_in_flight_at_start();
    assert!(seen.iter().any(|&n| n > 4), "never probed: {seen:?}");
    let tail = last_in_flight(&hub, 10);
    assert!(
        tail.iter().all(|&n| n <= 4),
        "kept the extra connections: {tail:?}"
    );
}
