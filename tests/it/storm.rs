//! Rate-limit storms (issue 18): a hub that answers every 3rd request 429 and every 5th of the
//! others 503, as a rate-limiting hub does to a fleet, for the whole run. Every apply must
//! converge, each file verified.
//!
//! Edges: the real binary against the fake hub's [`Fault::Storm`]; workspace helpers from
//! `reliability.rs`.

use crate::fake_hub::{FakeHub, Fault, FileSpec, RepoSpec};
use crate::reliability::{Workspace, noise, read_tree};

const MODEL: &str = "storm/model";

fn files() -> Vec<FileSpec> {
    let mut files = vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", noise(640 << 10, 0x5707)),
    ];
    for i in 0..6 {
        files.push(FileSpec::regular(
            format!("tokenizer/part-{i}.json"),
            format!("{{\"part\":{i}}}").into_bytes(),
        ));
    }
    files
}

#[test]
fn a_storm_of_429s_and_503s_converges_in_20_of_20_applies() {
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files())]);
    let expected: std::collections::BTreeMap<String, Vec<u8>> = files()
        .into_iter()
        .map(|file| (file.path.clone(), file.content.to_vec()))
        .collect();
    hub.add_fault(Fault::Storm {
        every_429: 3,
        every_503: 5,
        retry_after: None,
    });
    // 20 applies, as 4 waves of 5 hosts started together (separate stores and HF homes). Before
    // overload answers were retried on a time budget, 4 of 20 failed (`E_NET ... after 6
    // attempts`) at the default settings; a 100 ms base delay keeps this test short.
    let mut failures = Vec::new();
    for wave in 0..4 {
        let hosts: Vec<Workspace> = (0..5)
            .map(|_| {
                let mut ws = Workspace::new(&hub, &[(MODEL, "main")]);
                ws.set_env("KMM_HUB_RETRY_DELAY", "100ms");
                ws
            })
            .collect();
        let children: Vec<_> = hosts
            .iter()
            .map(|ws| ws.spawn(&["apply", "--quiet"]))
            .collect();
        for (host, (ws, child)) in hosts.iter().zip(children).enumerate() {
            let output = child.wait_with_output().unwrap();
            if !output.status.success() {
                failures.push(format!(
                    "wave {wave} host {host}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
            assert_eq!(
                read_tree(&ws.model_dir(MODEL)),
                expected,
                "wave {wave} host {host}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 applies failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A hub that allows each client two downloads at once and answers 429 past that: after the
/// first 429s kmm opens fewer connections to it (halved per burst, grown back one at a time)
/// instead of retrying at full width, so most file requests get bytes rather than a 429 (the
/// quick 10 ms retries make a client that does not adapt collide again and again).
#[test]
fn a_hub_that_limits_concurrent_downloads_gets_fewer_connections_after_its_first_429s() {
    let files: Vec<FileSpec> = (0..32)
        .map(|i| FileSpec::lfs(format!("shard-{i:02}.bin"), noise(160 << 10, 0xc0de + i)))
        .collect();
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(files.clone())]);
    hub.add_fault(Fault::Crowded { max_bodies: 2 });
    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 640 << 10,
    });
    let mut ws = Workspace::new(&hub, &[(MODEL, "main")]);
    ws.set_env("KMM_HUB_RETRY_DELAY", "10ms");
    ws.set_env("KMM_MAX_WORKERS", "8");
    ws.run(&["apply", "--quiet"]).ok();
    let installed = read_tree(&ws.model_dir(MODEL));
    for file in &files {
        assert_eq!(
            installed.get(&file.path).map(Vec::as_slice),
            Some(&file.content[..])
        );
    }
    let file_requests: Vec<u16> = hub
        .requests()
        .iter()
        .filter(|request| {
            request.server == crate::fake_hub::ServerKind::Cdn || request.path.contains("/resolve/")
        })
        .map(|request| request.status)
        .collect();
    let refused = file_requests
        .iter()
        .filter(|status| **status == 429)
        .count();
    let served = file_requests
        .iter()
        .filter(|status| matches!(**status, 200 | 206))
        .count();
    // Measured: 15 answered 429 for 32 served; 60 with the halving taken out.
    eprintln!("file requests: {served} served, {refused} answered 429");
    assert!(
        refused < served,
        "{refused} requests answered 429 for {served} served: the connections did not adapt"
    );
}
