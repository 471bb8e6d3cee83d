//! The hub client (`kmm::hub`) against the fake hub over real loopback HTTP: revision
//! resolution, legacy-id redirects, paginated trees, regular and LFS (CDN) downloads with byte
//! and hash checks, resume after a dropped connection, retries, error mapping, and that the
//! token stays on the hub's origin and out of every message.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kmm::ErrorCode;
use kmm::hub::{Gated, HubClient, HubConfig, ModelQuery, Token};
use kmm::upstream::{FileHash, UpstreamFile, git_sha1_hex, sha256_hex};

use crate::fake_hub::{FakeHub, Fault, FileSpec, GatedMode, LoggedRequest, RepoSpec, ServerKind};

const SECRET: &str = "hf_SECRET_test_token";
const LFS_SIZE: usize = 3_000_000;

/// Deterministic, non-repeating-looking content so that a shifted or corrupted byte shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 7) as u8 ^ seed)
        .collect()
}

fn model_repo() -> RepoSpec {
    RepoSpec::new("org/model")
        .commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"llama"}"#.to_vec()),
            FileSpec::regular("sub/dir/tokenizer.json", b"{}".to_vec()),
            FileSpec::regular("weights/big.bin", pattern(300_000, 1)),
            FileSpec::lfs("model.safetensors", pattern(LFS_SIZE, 2)),
        ])
        .commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"llama","v":2}"#.to_vec()),
            FileSpec::regular("sub/dir/tokenizer.json", b"{}".to_vec()),
            FileSpec::regular("weights/big.bin", pattern(300_000, 1)),
            FileSpec::lfs("model.safetensors", pattern(LFS_SIZE, 3)),
        ])
        .tag("v1.0", 0)
        .branch("dev", 0)
        .branch("refs/pr/1", 0)
        .license("apache-2.0")
}

fn client_with(hub_url: &str, token: Option<&str>) -> HubClient {
    let mut config = HubConfig::new(hub_url);
    config.token = token.map(Token::new);
    config.max_retries = 3;
    config.retry_base_delay = Duration::from_millis(10);
    // Rate limits and overloads are retried on a time budget: short, so that the storms
    // these tests do not end fail within a second.
    config.retry_budget = Duration::from_millis(300);
    config.connect_timeout = Duration::from_secs(5);
    config.read_timeout = Duration::from_secs(10);
    HubClient::new(config).unwrap()
}

fn client(hub: &FakeHub, token: Option<&str>) -> HubClient {
    client_with(&hub.url(), token)
}

fn file_of(files: &[UpstreamFile], path: &str) -> UpstreamFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not listed"))
        .clone()
}

/// Downloads into `dir/name` and returns the bytes progress reported.
async fn download(
    client: &HubClient,
    repo: &str,
    commit: &str,
    file: &UpstreamFile,
    dest: &Path,
) -> kmm::Result<u64> {
    let progress = AtomicU64::new(0);
    client
        .download(repo, commit, file, dest, &|n| {
            progress.fetch_add(n, Ordering::Relaxed);
        })
        .await?;
    Ok(progress.load(Ordering::Relaxed))
}

fn requests_for(hub: &FakeHub, needle: &str) -> Vec<LoggedRequest> {
    hub.requests()
        .into_iter()
        .filter(|r| r.path.contains(needle))
        .collect()
}

#[tokio::test]
async fn model_info_resolves_branches_tags_commits_and_pr_refs() {
    let repo = model_repo();
    let (first, head) = (repo.commit_sha(0), repo.head());
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, None);

    let info = client.model_info("org/model", "main").await.unwrap();
    assert_eq!(info.id, "org/model");
    assert_eq!(info.sha, head);
    assert_eq!(info.gated, Gated::No);
    assert!(!info.private);
    assert_eq!(info.license.as_deref(), Some("apache-2.0"));

    for revision in ["v1.0", "dev", first.as_str(), "refs/pr/1"] {
        let info = client.model_info("org/model", revision).await.unwrap();
        assert_eq!(info.sha, first, "{revision}");
    }
    // The PR ref travels as one encoded segment.
    assert!(
        requests_for(&hub, "/revision/refs%2Fpr%2F1")
            .iter()
            .any(|r| r.status == 200)
    );
}

#[tokio::test]
async fn legacy_id_follows_the_redirect_to_the_canonical_repo() {
    let repo = RepoSpec::new("distilbert/distilbert-base-uncased")
        .commit(vec![
            FileSpec::regular("config.json", b"{\"dim\":768}".to_vec()),
            FileSpec::lfs("model.safetensors", pattern(10_000, 4)),
        ])
        .alias("distilbert-base-uncased");
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, None);

    let info = client
        .model_info("distilbert-base-uncased", "main")
        .await
        .unwrap();
    assert_eq!(info.id, "distilbert/distilbert-base-uncased");
    assert_eq!(info.sha, head);
    assert!(hub.requests().iter().any(|r| r.status == 307));

    let files = client
        .list_tree("distilbert-base-uncased", &head)
        .await
        .unwrap();
    assert_eq!(files.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    for file in &files {
        let dest = dir.path().join("f");
        download(&client, "distilbert-base-uncased", &head, file, &dest)
            .await
            .unwrap();
        assert_eq!(fs_err::read(&dest).unwrap().len() as u64, file.size);
    }
}

#[tokio::test]
async fn tree_follows_pagination_beyond_a_thousand_files() {
    let files: Vec<FileSpec> = (0..2500)
        .map(|i| {
            FileSpec::regular(
                format!("shard{}/file{i:05}.txt", i % 7),
                format!("content {i}").into_bytes(),
            )
        })
        .collect();
    let repo = RepoSpec::new("org/many").commit(files);
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, None);

    let listed = client.list_tree("org/many", &head).await.unwrap();
    assert_eq!(listed.len(), 2500);
    assert!(listed.windows(2).all(|w| w[0].path < w[1].path), "sorted");
    for i in [0usize, 999, 1000, 2499] {
        let path = format!("shard{}/file{i:05}.txt", i % 7);
        let content = format!("content {i}");
        let file = file_of(&listed, &path);
        assert_eq!(file.size, content.len() as u64);
        assert_eq!(
            file.hash,
            FileHash::GitSha1(git_sha1_hex(content.as_bytes()))
        );
    }
    let pages = requests_for(&hub, "/tree/");
    assert!(pages.len() >= 3, "{} tree requests", pages.len());
    assert!(pages.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn downloads_regular_and_lfs_files_and_keeps_the_token_off_the_cdn() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, Some(SECRET));
    let files = client.list_tree("org/model", &head).await.unwrap();
    assert_eq!(
        files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        [
            "config.json",
            "model.safetensors",
            "sub/dir/tokenizer.json",
            "weights/big.bin"
        ]
    );
    let lfs = file_of(&files, "model.safetensors");
    assert_eq!(lfs.size, LFS_SIZE as u64);
    assert_eq!(
        lfs.hash,
        FileHash::Sha256(sha256_hex(&pattern(LFS_SIZE, 3)))
    );

    let dir = tempfile::tempdir().unwrap();
    let expected: [(&str, Vec<u8>); 3] = [
        ("config.json", br#"{"model_type":"llama","v":2}"#.to_vec()),
        ("weights/big.bin", pattern(300_000, 1)),
        ("model.safetensors", pattern(LFS_SIZE, 3)),
    ];
    for (path, content) in expected {
        let file = file_of(&files, path);
        let dest = dir.path().join(path.replace('/', "_"));
        let progress = download(&client, "org/model", &head, &file, &dest)
            .await
            .unwrap();
        assert_eq!(progress, content.len() as u64, "{path}");
        assert!(
            fs_err::read(&dest).unwrap() == content,
            "{path} bytes differ"
        );
    }

    let log = hub.requests();
    let cdn: Vec<_> = log.iter().filter(|r| r.server == ServerKind::Cdn).collect();
    assert!(!cdn.is_empty(), "the LFS file came from the CDN");
    assert!(cdn.iter().all(|r| r.header("authorization").is_none()));
    let api: Vec<_> = log.iter().filter(|r| r.server == ServerKind::Api).collect();
    assert!(
        api.iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {SECRET}")[..]))
    );
    assert!(api.iter().all(|r| {
        r.header("user-agent")
            .is_some_and(|ua| ua.starts_with("kmm/"))
    }));
    // One fetch of each file's bytes, nothing twice.
    let total = 300_000 + LFS_SIZE + br#"{"model_type":"llama","v":2}"#.len();
    assert_eq!(hub.body_bytes_served(), total as u64);
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_range_instead_of_starting_over() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, Some(SECRET));
    let files = client.list_tree("org/model", &head).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    for (path, content) in [
        ("model.safetensors", pattern(LFS_SIZE, 3)),
        ("weights/big.bin", pattern(300_000, 1)),
    ] {
        hub.clear_requests();
        let served_before = hub.body_bytes_served();
        hub.add_fault(Fault::DropAfter {
            path_contains: path.to_string(),
            bytes: content.len() as u64 / 3,
            times: 1,
        });
        let file = file_of(&files, path);
        let dest = dir.path().join("resumed");
        download(&client, "org/model", &head, &file, &dest)
            .await
            .unwrap();
        assert!(
            fs_err::read(&dest).unwrap() == content,
            "{path} bytes differ"
        );

        let ranged: Vec<_> = hub
            .requests()
            .into_iter()
            .filter(|r| r.header("range").is_some_and(|v| v != "bytes=0-"))
            .collect();
        assert!(!ranged.is_empty(), "{path}: no Range request");
        assert!(ranged.iter().all(|r| r.status == 206), "{path}");
        let served = hub.body_bytes_served() - served_before;
        assert!(
            served < content.len() as u64 * 3 / 2,
            "{path}: {served} bytes served for {} (fetched twice?)",
            content.len()
        );
        if path == "model.safetensors" {
            // The resume goes straight to the CDN URL, without the token.
            assert!(ranged.iter().all(|r| r.server == ServerKind::Cdn));
            assert!(ranged.iter().all(|r| r.header("authorization").is_none()));
        }
    }
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_retries_succeed() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, None);

    hub.add_fault(Fault::Status {
        path_contains: "/revision/".to_string(),
        status: 503,
        retry_after: None,
        times: 2,
    });
    assert_eq!(
        client.model_info("org/model", "main").await.unwrap().sha,
        head
    );
    let statuses: Vec<u16> = requests_for(&hub, "/revision/")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);

    let files = client.list_tree("org/model", &head).await.unwrap();
    hub.add_fault(Fault::Status {
        path_contains: "config.json".to_string(),
        status: 429,
        retry_after: Some(1),
        times: 1,
    });
    let dir = tempfile::tempdir().unwrap();
    let file = file_of(&files, "config.json");
    download(&client, "org/model", &head, &file, &dir.path().join("c"))
        .await
        .unwrap();
    let statuses: Vec<u16> = requests_for(&hub, "config.json")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [429, 200]);
}

#[tokio::test]
async fn server_errors_until_retries_run_out_are_e_net_with_the_attempt_count() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, Some(SECRET));
    let files = client.list_tree("org/model", &head).await.unwrap();
    hub.add_fault(Fault::Status {
        path_contains: "config.json".to_string(),
        status: 500,
        retry_after: None,
        times: 100,
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("config.json");
    let error = download(
        &client,
        "org/model",
        &head,
        &file_of(&files, "config.json"),
        &dest,
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), ErrorCode::Net);
    assert!(error.message().contains("config.json"), "{error}");
    assert!(error.message().contains("4 attempts"), "{error}");
    assert!(
        error.message().contains(&format!(
            "{}/org/model/resolve/{head}/config.json",
            hub.url()
        )),
        "{error}"
    );
    assert_eq!(requests_for(&hub, "config.json").len(), 4);
    assert!(!dest.exists());

    hub.add_fault(Fault::Status {
        path_contains: "/tree/".to_string(),
        status: 429,
        retry_after: Some(0),
        times: 100,
    });
    let error = client.list_tree("org/model", &head).await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Net);
    assert!(error.message().contains("rate limited"), "{error}");
}

#[tokio::test]
async fn wrong_bytes_are_e_verify_and_the_destination_is_removed() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let client = client(&hub, None);
    let files = client.list_tree("org/model", &head).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for path in ["model.safetensors", "config.json"] {
        hub.add_fault(Fault::WrongBytes {
            path_contains: path.to_string(),
            times: 1,
        });
        let file = file_of(&files, path);
        let dest = dir.path().join("wrong");
        let error = download(&client, "org/model", &head, &file, &dest)
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::Verify, "{path}: {error}");
        assert!(error.message().contains(path), "{error}");
        let causes = error.causes().join(" ");
        assert!(causes.contains(&file.hash.display()), "{causes}");
        assert!(causes.contains("got "), "{causes}");
        assert!(!dest.exists(), "{path}: a corrupt download was left behind");
    }
}

#[tokio::test]
async fn gated_repos_need_an_approved_token() {
    let repo = RepoSpec::new("org/gated")
        .commit(vec![
            FileSpec::regular("config.json", b"{}".to_vec()),
            FileSpec::lfs("model.safetensors", pattern(5_000, 5)),
        ])
        .gated(GatedMode::Manual)
        .allow_token("hf_good");
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("model");

    // Metadata of a gated repo is public.
    let anonymous = client(&hub, None);
    let info = anonymous.model_info("org/gated", "main").await.unwrap();
    assert_eq!(info.gated, Gated::Manual);
    let files = anonymous.list_tree("org/gated", &head).await.unwrap();
    let model = file_of(&files, "model.safetensors");

    for token in [None, Some("hf_not_approved")] {
        let client = client(&hub, token);
        let error = download(&client, "org/gated", &head, &model, &dest)
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::License, "{token:?}: {error}");
        assert_eq!(
            error.hint(),
            Some("request access on the model page and set HF_TOKEN")
        );
        assert!(!dest.exists());
        let error = client.auth_check("org/gated").await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::License, "{token:?}: {error}");
    }

    let approved = client(&hub, Some("hf_good"));
    approved.auth_check("org/gated").await.unwrap();
    download(&approved, "org/gated", &head, &model, &dest)
        .await
        .unwrap();
    assert!(fs_err::read(&dest).unwrap() == pattern(5_000, 5));
}

#[tokio::test]
async fn private_repos_are_not_found_without_an_allowed_token() {
    let repo = RepoSpec::new("org/private")
        .commit(vec![FileSpec::regular("config.json", b"{}".to_vec())])
        .private()
        .allow_token("hf_good");
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    for token in [None, Some("hf_stranger")] {
        let error = client(&hub, token)
            .model_info("org/private", "main")
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound, "{token:?}: {error}");
        assert!(error.hint().unwrap().contains("HF_TOKEN"));
    }
    let owner = client(&hub, Some("hf_good"));
    let info = owner.model_info("org/private", "main").await.unwrap();
    assert_eq!(info.sha, head);
    assert!(info.private);
    assert_eq!(
        owner.list_tree("org/private", &head).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn an_invalid_token_is_e_perm_with_a_token_hint() {
    let hub = FakeHub::start(vec![model_repo()]);
    let client = client(&hub, Some("not-a-hub-token"));
    let error = client.model_info("org/model", "main").await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Perm, "{error}");
    assert!(error.hint().unwrap().contains("HF_TOKEN_PATH"));
}

#[tokio::test]
async fn unknown_repos_revisions_and_files_are_e_not_found() {
    let repo = model_repo();
    let head = repo.head();
    let hub = FakeHub::start(vec![repo]);
    for token in [None, Some(SECRET)] {
        let client = client(&hub, token);
        let error = client.model_info("org/missing", "main").await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound, "{error}");
        assert!(error.message().contains("org/missing"), "{error}");
        assert!(error.hint().unwrap().contains("HF_TOKEN"));

        let error = client
            .model_info("org/model", "no-such-branch")
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound, "{error}");
        assert!(error.message().contains("no-such-branch"), "{error}");

        let missing = "0123456789abcdef0123456789abcdef01234567";
        let error = client.list_tree("org/model", missing).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound, "{error}");

        let ghost = UpstreamFile {
            path: "missing/file.bin".into(),
            size: 3,
            hash: FileHash::GitSha1(git_sha1_hex(b"abc")),
        };
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("ghost");
        let error = download(&client, "org/model", &head, &ghost, &dest)
            .await
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::NotFound, "{error}");
        assert!(error.message().contains("missing/file.bin"), "{error}");
        assert!(!dest.exists());
    }
}

#[tokio::test]
async fn connection_refused_is_e_net_with_an_endpoint_hint() {
    // A port that was just free: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = client_with(&format!("http://127.0.0.1:{port}"), Some(SECRET));
    let error = client.ping().await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Net);
    assert!(error.hint().unwrap().contains("--mirror"));

    let error = client.model_info("org/model", "main").await.unwrap_err();
    assert_eq!(error.code(), ErrorCode::Net, "{error}");
    assert!(error.hint().unwrap().contains("HF_ENDPOINT"));
    assert!(error.message().contains("4 attempts"), "{error}");

    let hub = FakeHub::start(vec![]);
    client_with(&hub.url(), None).ping().await.unwrap();
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let repo = model_repo();
    let head = repo.head();
    let gated = RepoSpec::new("org/gated")
        .commit(vec![FileSpec::lfs("w.bin", pattern(100, 6))])
        .gated(GatedMode::Auto)
        .allow_token("hf_other");
    let gated_head = gated.head();
    let hub = FakeHub::start(vec![repo, gated]);
    let client = client(&hub, Some(SECRET));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");

    let files = client.list_tree("org/model", &head).await.unwrap();
    let gated_files = client.list_tree("org/gated", &gated_head).await.unwrap();
    hub.add_fault(Fault::WrongBytes {
        path_contains: "config.json".into(),
        times: 1,
    });
    hub.add_fault(Fault::Status {
        path_contains: "big.bin".into(),
        status: 502,
        retry_after: None,
        times: 100,
    });
    let errors = vec![
        client.model_info("org/missing", "main").await.unwrap_err(),
        client.model_info("org/model", "nope").await.unwrap_err(),
        download(
            &client,
            "org/model",
            &head,
            &file_of(&files, "config.json"),
            &dest,
        )
        .await
        .unwrap_err(),
        download(
            &client,
            "org/model",
            &head,
            &file_of(&files, "weights/big.bin"),
            &dest,
        )
        .await
        .unwrap_err(),
        download(&client, "org/gated", &gated_head, &gated_files[0], &dest)
            .await
            .unwrap_err(),
        client.auth_check("org/gated").await.unwrap_err(),
        client_with("http://127.0.0.1:1", Some(SECRET))
            .ping()
            .await
            .unwrap_err(),
    ];
    for error in &errors {
        let text = format!("{error} | {error:?} | {:?}", error.hint());
        assert!(!text.contains(SECRET), "token leaked: {text}");
        assert!(!text.contains("SECRET"), "token leaked: {text}");
    }
    let debug = format!("{client:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
}

#[tokio::test]
async fn list_models_follows_pages_up_to_the_limit() {
    let repos: Vec<RepoSpec> = (0..7)
        .map(|i| {
            RepoSpec::new(format!("org/listed-{i}")).commit(vec![FileSpec::regular(
                "config.json",
                format!("{{\"i\":{i}}}").into_bytes(),
            )])
        })
        .collect();
    let hub = FakeHub::start(repos);
    let client = client(&hub, None);

    let models = client
        .list_models(
            &ModelQuery::new(5)
                .param("search", "listed")
                .param("limit", "2"),
        )
        .await
        .unwrap();
    assert_eq!(models.len(), 5);
    let ids: std::collections::BTreeSet<&str> =
        models.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("org/listed-")));
    assert_eq!(requests_for(&hub, "/api/models").len(), 3);

    let all = client.list_models(&ModelQuery::new(100)).await.unwrap();
    assert_eq!(all.len(), 7);
}
