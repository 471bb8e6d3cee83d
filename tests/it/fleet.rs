//! The fleet's shared tier on a real SeaweedFS (issue 18): hosts fill it, take each file from
//! the hub once, repair bad objects, survive a killed publisher, fall back when the tier is
//! down, report their state, and never show a secret.
//!
//! Edges: the real binary, the fake hub, and the process-wide SeaweedFS of `seaweedfs.rs`;
//! every test works under its own prefix of the one bucket.

use std::collections::BTreeMap;

use crate::fake_hub::{FakeHub, FileSpec, LoggedRequest, RepoSpec};
use crate::reliability::{Workspace, noise, read_tree};
use crate::seaweedfs::{self, SECRET_KEY, list_objects};

const MODEL: &str = "fleet/model";

/// Two LFS files (one past the multipart threshold the tests set), small regular files.
fn files() -> Vec<FileSpec> {
    let mut files = vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model-00001.safetensors", noise(7 << 20, 0xf1ee7)),
        FileSpec::lfs("model-00002.safetensors", noise(900 << 10, 0xf1ee8)),
    ];
    for i in 0..4 {
        files.push(FileSpec::regular(
            format!("tokenizer/part-{i}.json"),
            format!("{{\"part\":{i}}}").into_bytes(),
        ));
    }
    files
}

fn expected() -> BTreeMap<String, Vec<u8>> {
    files()
        .into_iter()
        .map(|file| (file.path.clone(), file.content.to_vec()))
        .collect()
}

/// A host of the fleet: its own store and HF home, the tier at `prefix`, named `node`.
fn host(hub: &FakeHub, prefix: &str, node: &str) -> Workspace {
    let mut ws = Workspace::new(hub, &[(MODEL, "main")]);
    for (name, value) in seaweedfs::server().host_env(prefix) {
        ws.set_env(&name, &value);
    }
    ws.set_env("KMM_NODE_NAME", node);
    ws.set_env("KMM_SHARED_STORE_MULTIPART_MIN", &(5 << 20).to_string());
    ws
}

/// Requests that sent file bytes (resolve GETs and CDN GETs).
fn file_requests(requests: &[LoggedRequest]) -> Vec<String> {
    requests
        .iter()
        .filter(|request| {
            request.method == "GET"
                && (request.path.contains("/resolve/")
                    || request.server == crate::fake_hub::ServerKind::Cdn)
        })
        .map(|request| request.path.clone())
        .collect()
}

fn assert_installed(ws: &Workspace) {
    assert_eq!(read_tree(&ws.model_dir(MODEL)), expected());
}

#[test]
fn the_first_host_fills_the_tier_and_later_hosts_take_nothing_from_the_hub() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "fills";
    let first = host(&hub, prefix, "host-a");
    let plan = first.run(&["plan", "--json"]);
    plan.ok();
    let sources = &plan.json()["data"]["summary"]["byte_sources"];
    let total: u64 = files().iter().map(|file| file.content.len() as u64).sum();
    assert_eq!(sources["hub"], total, "{sources}");
    assert_eq!(sources["shared_store"], 0, "{sources}");
    first.run(&["apply", "--quiet"]).ok();
    assert_installed(&first);

    let objects = list_objects(prefix);
    let blobs: Vec<&String> = objects
        .keys()
        .filter(|key| key.starts_with("blobs/"))
        .collect();
    assert_eq!(blobs.len(), files().len(), "{objects:?}");
    assert_eq!(
        blobs
            .iter()
            .filter(|key| key.starts_with("blobs/sha256/"))
            .count(),
        2,
        "LFS files by sha256, the others by git blob sha1: {objects:?}"
    );
    assert!(
        !objects.keys().any(|key| key.starts_with("leases/")),
        "{objects:?}"
    );
    assert!(objects.contains_key("nodes/host-a.json"), "{objects:?}");

    let second = host(&hub, prefix, "host-b");
    let plan = second.run(&["plan"]);
    plan.ok();
    assert!(
        plan.stdout.contains(&format!(
            "from the shared store: {}; from the hub: 0 B",
            kmm::plan::format_bytes(total)
        )),
        "{}",
        plan.stdout
    );
    // (The plan read the safetensors header from the hub for its compatibility notes.)
    hub.clear_requests();
    let applied = second.run(&["apply", "--json"]);
    applied.ok();
    assert_installed(&second);
    let report = &applied.json()["data"]["report"];
    assert_eq!(report["bytes_downloaded"], 0, "{report}");
    assert_eq!(report["bytes_from_shared_store"], total, "{report}");
    assert_eq!(
        file_requests(&hub.requests()),
        Vec::<String>::new(),
        "{}",
        applied.stderr
    );

    // With the first host's lock, a frozen host does not ask the hub anything at all.
    hub.clear_requests();
    let third = host(&hub, prefix, "host-c");
    fs_err::copy(
        first.dir.path().join("kari-models.lock"),
        third.dir.path().join("kari-models.lock"),
    )
    .unwrap();
    third.run(&["apply", "--frozen", "--quiet"]).ok();
    assert_installed(&third);
    let asked: Vec<String> = hub.requests().iter().map(|r| r.path.clone()).collect();
    assert!(asked.is_empty(), "{asked:?}");
}

#[test]
fn four_hosts_started_together_take_each_file_from_the_hub_once() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let hosts: Vec<Workspace> = (0..4)
        .map(|i| host(&hub, "together", &format!("host-{i}")))
        .collect();
    let children: Vec<_> = hosts.iter().map(|ws| ws.spawn(&["apply"])).collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for ws in &hosts {
        assert_installed(ws);
    }
    let total: u64 = files().iter().map(|file| file.content.len() as u64).sum();
    let mut fetched: BTreeMap<String, usize> = BTreeMap::new();
    for path in file_requests(&hub.requests()) {
        *fetched.entry(path).or_default() += 1;
    }
    // Large files come in ranges; what counts is the bytes: each file's once.
    assert_eq!(hub.body_bytes_served(), total, "requests: {fetched:?}");
    assert!(
        !list_objects("together")
            .keys()
            .any(|key| key.starts_with("leases/"))
    );
}

#[test]
fn secrets_never_reach_output_logs_or_files() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let mut ws = host(&hub, "secrets", "host-s");
    ws.set_env("AWS_SESSION_TOKEN", "kmm-session-token-7f3d");
    ws.set_env("RUST_LOG", "trace");
    let runs = [
        ws.run(&["plan", "-vvv"]),
        ws.run(&["apply", "-vvv"]),
        ws.run(&["plan", "--json", "--out", "saved.plan"]),
        ws.run(&["fleet", "status", "--json"]),
    ];
    let mut seen = String::new();
    for run in &runs {
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
    }
    for file in [
        "kari-models.lock",
        "saved.plan",
        "models/model_registry.json",
    ] {
        seen.push_str(&fs_err::read_to_string(ws.dir.path().join(file)).unwrap_or_default());
    }
    for (key, _) in list_objects("secrets") {
        if key.starts_with("nodes/") {
            let client = seaweedfs::server().client();
            let path = object_store::path::Path::from(format!("secrets/{key}"));
            let bytes = seaweedfs::block_on(async {
                use object_store::ObjectStore as _;
                client.get(&path).await.unwrap().bytes().await.unwrap()
            });
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    assert!(
        seen.len() > 10_000,
        "the trace logs ran: {} bytes",
        seen.len()
    );
    for secret in [SECRET_KEY, "kmm-session-token-7f3d"] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}
