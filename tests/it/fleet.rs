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
    // One host publishes, the next reads everything back through presigned URLs (whose query
    // holds a signature and the key id), both with every log on.
    let mut runs = Vec::new();
    let mut dirs = Vec::new();
    for node in ["host-s1", "host-s2"] {
        let mut ws = host(&hub, "secrets", node);
        ws.set_env("RUST_LOG", "trace");
        runs.push(ws.run(&["plan", "-vvv"]));
        let applied = ws.run(&["apply", "-vvv", "--json"]);
        applied.ok();
        runs.push(ws.run(&["plan", "--json", "--out", "saved.plan"]));
        runs.push(ws.run(&["fleet", "status", "--json"]));
        runs.push(applied);
        dirs.push(ws);
    }
    let report = &runs.last().unwrap().json()["data"]["report"];
    assert!(
        report["bytes_from_shared_store"].as_u64() > Some(0),
        "{report}"
    );
    // A session token: sent by the S3 client, refused by this SeaweedFS; never shown.
    let mut ws = host(&hub, "secrets", "host-s3");
    ws.set_env("AWS_SESSION_TOKEN", "kmm-session-token-7f3d");
    ws.set_env("RUST_LOG", "trace");
    runs.push(ws.run(&["apply", "-vvv"]));
    runs.push(ws.run(&["fleet", "status", "--json"]));
    dirs.push(ws);

    let mut seen = String::new();
    for run in &runs {
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
    }
    for ws in &dirs {
        for file in [
            "kari-models.lock",
            "saved.plan",
            "models/model_registry.json",
        ] {
            seen.push_str(&fs_err::read_to_string(ws.dir.path().join(file)).unwrap_or_default());
        }
    }
    for (key, _) in list_objects("secrets") {
        if key.starts_with("nodes/") {
            let bytes = get_object(&format!("secrets/{key}")).unwrap();
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    assert!(
        seen.len() > 10_000,
        "the trace logs ran: {} bytes",
        seen.len()
    );
    // The presigned URLs were logged (their path), so a query left in would have shown.
    assert!(
        seen.contains("/secrets/blobs/sha256/"),
        "no tier URL in the logs"
    );
    for secret in [
        SECRET_KEY,
        "kmm-session-token-7f3d",
        "X-Amz-Signature",
        "X-Amz-Credential",
    ] {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

/// The key of `content`'s blob under `prefix` (an LFS file: by sha256).
fn lfs_key(prefix: &str, content: &[u8]) -> String {
    format!(
        "{prefix}/blobs/sha256/{}",
        kmm::upstream::sha256_hex(content)
    )
}

fn put_object(key: &str, bytes: Vec<u8>) {
    use object_store::ObjectStore as _;
    let client = seaweedfs::server().client();
    seaweedfs::block_on(async {
        client
            .put(&object_store::path::Path::from(key), bytes.into())
            .await
            .unwrap()
    });
}

fn get_object(key: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStore as _;
    let client = seaweedfs::server().client();
    seaweedfs::block_on(async {
        match client.get(&object_store::path::Path::from(key)).await {
            Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(error) => panic!("{error}"),
        }
    })
}

fn copy_lock(from: &Workspace, to: &Workspace) {
    fs_err::copy(
        from.dir.path().join("kari-models.lock"),
        to.dir.path().join("kari-models.lock"),
    )
    .unwrap();
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_bad_object_is_never_installed_and_is_replaced() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "repair";
    host(&hub, prefix, "host-a").run(&["apply", "--quiet"]).ok();
    let good = files()
        .into_iter()
        .find(|file| file.path == "model-00002.safetensors")
        .unwrap()
        .content
        .to_vec();
    let key = lfs_key(prefix, &good);
    let mut bad = good.clone();
    bad[1000] ^= 0xff;
    put_object(&key, bad);

    let before = hub.body_bytes_served();
    let second = host(&hub, prefix, "host-b");
    let run = second.run(&["apply"]);
    run.ok();
    assert_installed(&second);
    assert!(
        run.stderr.contains("model-00002.safetensors is bad"),
        "{}",
        run.stderr
    );
    // Only the bad file came from the hub, and the tier holds its good bytes again.
    assert_eq!(hub.body_bytes_served() - before, good.len() as u64);
    assert_eq!(get_object(&key).as_deref(), Some(good.as_slice()));
}

#[test]
fn a_host_killed_mid_publish_leaves_no_object_and_its_lease_runs_out() {
    let big = noise(24 << 20, 0xb16);
    let repo_files = vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", big.clone()),
    ];
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(repo_files)]);
    let prefix = "killed";
    // Uploads through a proxy at 1 MB/s: the 24 MiB multipart upload takes long enough to be
    // killed in the middle of it.
    let proxy = crate::proxy::start_proxy_with(crate::proxy::Throttle {
        upload_rate: Some(1 << 20),
        ..Default::default()
    });
    let mut first = host(&hub, prefix, "host-killed");
    first.set_env("HTTP_PROXY", &proxy.url);
    first.set_env("KMM_SHARED_STORE_LEASE_TTL", "2s");
    let mut child = first.spawn(&["apply", "--quiet"]);
    let started = std::time::Instant::now();
    while proxy.uploaded.load(std::sync::atomic::Ordering::SeqCst) < (3 << 20) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the upload never started"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the host finished before it was killed: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let key = lfs_key(prefix, &big);
    assert_eq!(get_object(&key), None, "a partial object is visible");
    let lease = key.replace("/blobs/", "/leases/");
    let held: serde_json::Value =
        serde_json::from_slice(&get_object(&lease).expect("lease")).unwrap();
    assert_eq!(held["holder"], "host-killed");

    // The next host takes the lease over once it ran out, fetches and publishes the file.
    let mut second = host(&hub, prefix, "host-next");
    second.set_env("KMM_SHARED_STORE_LEASE_TTL", "2s");
    let run = second.run(&["apply"]);
    run.ok();
    assert_eq!(
        read_tree(&second.model_dir(MODEL))
            .get("model.safetensors")
            .map(Vec::len),
        Some(big.len())
    );
    assert_eq!(get_object(&key).map(|bytes| bytes.len()), Some(big.len()));
    assert_eq!(get_object(&lease), None, "the lease was not released");
}

#[test]
fn a_lease_held_by_a_silent_host_is_waited_for_then_the_hub_is_used() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "silent";
    let big = &files()[1];
    let lease = lfs_key(prefix, &big.content).replace("/blobs/", "/leases/");
    let far = serde_json::json!({"holder": "ghost", "pid": 1, "file": big.path, "expires_at_ms": u64::MAX / 2});
    put_object(&lease, far.to_string().into_bytes());
    let mut ws = host(&hub, prefix, "host-w");
    ws.set_env("KMM_SHARED_STORE_WAIT", "1s");
    let run = ws.run(&["apply"]);
    run.ok();
    assert_installed(&ws);
    assert!(run.stderr.contains("waiting for ghost"), "{}", run.stderr);
    assert!(
        run.stderr.contains("ghost did not publish"),
        "{}",
        run.stderr
    );
    // It published the file all the same; the ghost's lease is the ghost's.
    assert!(get_object(&lfs_key(prefix, &big.content)).is_some());

    // A lease that ran out is taken over at once, and released after publishing.
    let prefix = "expired";
    let lease = lfs_key(prefix, &big.content).replace("/blobs/", "/leases/");
    let stale =
        serde_json::json!({"holder": "ghost", "pid": 1, "file": big.path, "expires_at_ms": 1});
    put_object(&lease, stale.to_string().into_bytes());
    let ws = host(&hub, prefix, "host-x");
    let run = ws.run(&["apply"]);
    run.ok();
    assert!(!run.stderr.contains("waiting for ghost"), "{}", run.stderr);
    assert_eq!(get_object(&lease), None);
    assert!(get_object(&lfs_key(prefix, &big.content)).is_some());
}

#[test]
fn an_unusable_tier_costs_one_warning_and_the_hub_serves_the_files() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let down = format!("http://127.0.0.1:{}", closed_port());
    let cases: [(&str, &str, &str); 3] = [
        ("AWS_ENDPOINT_URL", &down, "down"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "not-the-secret",
            "wrong credentials",
        ),
        ("KMM_SHARED_STORE", "s3://no-such-bucket-kmm/x", "no bucket"),
    ];
    for (name, value, case) in cases {
        let mut ws = host(
            &hub,
            "unusable",
            &format!("host-{}", case.replace(' ', "-")),
        );
        ws.set_env(name, value);
        let run = ws.run(&["apply"]);
        assert_eq!(run.code, 0, "{case}: {}", run.stderr);
        assert_installed(&ws);
        let warnings: Vec<&str> = run
            .stderr
            .lines()
            .filter(|line| line.contains("shared store"))
            .collect();
        assert_eq!(warnings.len(), 1, "{case}: {}", run.stderr);
        assert!(
            warnings[0].contains("cannot be used"),
            "{case}: {}",
            warnings[0]
        );
        assert!(!run.stderr.contains("not-the-secret"), "{case}");
        assert!(!run.stderr.contains("<?xml"), "{case}: {}", run.stderr);
        let why = match case {
            "wrong credentials" => "the credentials were refused",
            "no bucket" => "the bucket does not exist",
            _ => "127.0.0.1",
        };
        assert!(warnings[0].contains(why), "{case}: {}", warnings[0]);
    }
}

#[test]
fn a_required_tier_that_cannot_be_used_fails_cleanly() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let mut ws = host(&hub, "required", "host-r");
    ws.set_env(
        "AWS_ENDPOINT_URL",
        &format!("http://127.0.0.1:{}", closed_port()),
    );
    let run = ws.run(&["apply", "--require-shared-store", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    let message = run.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("s3://kmm-fleet/required"), "{message}");
    assert!(!ws.model_dir(MODEL).exists());
    assert!(hub.body_bytes_served() == 0, "the hub was asked for files");

    // The manifest can require it too; naming none while requiring one is E_ARGS.
    let text = fs_err::read_to_string(ws.manifest_path()).unwrap();
    fs_err::write(
        ws.manifest_path(),
        text.replace("[settings]\n", "[settings]\nrequire_shared_store = true\n"),
    )
    .unwrap();
    assert_eq!(ws.run(&["apply", "--json"]).error_code(), "E_NET");
    ws.env.retain(|(name, _)| name != "KMM_SHARED_STORE");
    assert_eq!(ws.run(&["apply", "--json"]).error_code(), "E_ARGS");
}

#[test]
fn fleet_status_lists_every_host_against_the_local_lock() {
    let hub = FakeHub::start(vec![
        RepoSpec::new(MODEL).commit(files()),
        RepoSpec::new("fleet/other").commit(vec![FileSpec::regular("config.json", b"{}".to_vec())]),
    ]);
    let prefix = "status";
    let a = host(&hub, prefix, "gpu-a");
    a.run(&["apply", "--quiet"]).ok();
    let b = host(&hub, prefix, "gpu-b");
    b.run(&["apply", "--quiet"]).ok();
    let status = a.run(&["fleet", "status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.stdout);
    assert_eq!(status.json()["data"]["converged"], 2);

    let c = host(&hub, prefix, "gpu-c");
    c.write_manifest(&[(MODEL, "main"), ("fleet/other", "main")]);
    c.run(&["apply", "--quiet"]).ok();
    let d = host(&hub, prefix, "gpu-d");
    d.write_manifest(&[("fleet/missing", "main")]);
    assert_ne!(d.run(&["apply", "--quiet"]).code, 0);

    let status = a.run(&["fleet", "status", "--json"]);
    assert_eq!(status.code, 2, "{}", status.stdout);
    let data = &status.json()["data"];
    let states: Vec<(String, String)> = data["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            (
                host["node"].as_str().unwrap().to_string(),
                host["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("gpu-a", "converged"),
        ("gpu-b", "converged"),
        ("gpu-c", "behind"),
        ("gpu-d", "failed"),
    ]
    .iter()
    .map(|(node, state)| (node.to_string(), state.to_string()))
    .collect();
    assert_eq!(states, expected);
    let gpu_d = &data["hosts"][3];
    assert!(
        gpu_d["error_code"].as_str().unwrap().starts_with("E_"),
        "{gpu_d}"
    );
    let report = get_object(&format!("{prefix}/nodes/gpu-a.json")).unwrap();
    let report = String::from_utf8(report).unwrap();
    assert!(
        !report.contains(a.dir.path().to_str().unwrap()),
        "a path in {report}"
    );

    let text = a.run(&["fleet", "status"]);
    assert_eq!(text.code, 2);
    for line in [
        "gpu-a",
        "converged",
        "gpu-c",
        "behind",
        "failed",
        "2 of 4 hosts converged",
    ] {
        assert!(text.stdout.contains(line), "{line}: {}", text.stdout);
    }
}

#[test]
fn the_tier_is_reached_through_http_proxy_and_a_dead_proxy_is_named() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "proxied";
    let first = host(&hub, prefix, "host-p1");
    first.run(&["apply", "--quiet"]).ok();
    // Frozen from the first host's lock: every request is to the tier.
    let proxy = crate::proxy::start_proxy_with(crate::proxy::Throttle::default());
    let mut second = host(&hub, prefix, "host-p2");
    copy_lock(&first, &second);
    second.set_env("HTTP_PROXY", &proxy.url);
    hub.clear_requests();
    second.run(&["apply", "--frozen", "--quiet"]).ok();
    assert_installed(&second);
    assert!(hub.requests().is_empty());
    assert!(proxy.served.load(std::sync::atomic::Ordering::SeqCst) > 0);

    let mut third = host(&hub, prefix, "host-p3");
    copy_lock(&first, &third);
    let port = closed_port();
    third.set_env(
        "HTTP_PROXY",
        &format!("http://user:proxy-s3cr3t@127.0.0.1:{port}"),
    );
    let run = third.run(&["apply", "--frozen", "--require-shared-store", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("127.0.0.1:{port}")) && run.stdout.contains("HTTP_PROXY"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("proxy-s3cr3t") && !run.stderr.contains("proxy-s3cr3t"));
}

#[test]
fn a_tier_that_trickles_is_given_up_for_the_hub() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "trickle";
    host(&hub, prefix, "host-t1")
        .run(&["apply", "--quiet"])
        .ok();
    // The tier's answers come at 500 B/s (the hub, on another port, at full speed): below the
    // minimum rate, reads of it stall and are given up as the hub's would be.
    let proxy = crate::proxy::start_proxy_with(crate::proxy::Throttle {
        download_rate: Some(500),
        only_port: Some(seaweedfs::server().s3_port),
        ..Default::default()
    });
    let mut slow = host(&hub, prefix, "host-t2");
    slow.set_env("HTTP_PROXY", &proxy.url);
    slow.set_env("KMM_SHARED_STORE_TIMEOUT", "10s");
    slow.set_env("KMM_HUB_MIN_RATE_TIME", "2s");
    let run = slow.run(&["apply"]);
    run.ok();
    assert_installed(&slow);
    let warnings = run
        .stderr
        .lines()
        .filter(|line| line.contains("shared store") && line.contains("cannot be used"))
        .count();
    assert_eq!(warnings, 1, "{}", run.stderr);
}

#[test]
fn every_watch_reconcile_writes_the_hosts_report_and_markdown_plans_say_where_bytes_come_from() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let prefix = "watched";
    let first = host(&hub, prefix, "host-m");
    first.run(&["apply", "--quiet"]).ok();
    let reviewer = host(&hub, prefix, "host-review");
    let markdown = reviewer.run(&["plan", "--format", "markdown"]);
    markdown.ok();
    assert!(
        markdown.stdout.contains("Bytes from the shared store: ")
            && markdown.stdout.contains("; from the hub: 0 B."),
        "{}",
        markdown.stdout
    );

    let watcher = host(&hub, prefix, "host-watch");
    let mut child = watcher.spawn(&["watch", "--interval", "1s"]);
    let report = format!("{prefix}/nodes/host-watch.json");
    let mut times = std::collections::BTreeSet::new();
    crate::reliability::wait_until("two reports of the watching host", || {
        if let Some(bytes) = get_object(&report) {
            let report: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(report["converged"], true, "{report}");
            times.insert(report["time"].as_str().unwrap().to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        times.len() >= 2
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert_installed(&watcher);
}
