//! Fidelity and fault-injection tests of the fake hub itself, over real HTTP with reqwest.
//!
//! Other engineers' tests rely on the fake answering as hf-protocol.md §14 says and on every
//! `Fault` doing what it promises; these tests pin both down. Redirects are never followed here,
//! so each 302/307 is observed as the hub sent it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::fake_hub::{
    CdnMode, FakeHub, Fault, FileSpec, GatedMode, PageSizes, RepoSpec, ServerKind, git_blob_sha1,
    lfs_pointer, sha256_hex,
};

const CONFIG_V1: &[u8] = br#"{"model_type":"llama","v":1}"#;
const CONFIG_V2: &[u8] = br#"{"model_type":"llama","v":2}"#;

fn weights(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Two commits; main at the second. Tag `v1.0` and branches `dev` and `refs/pr/1` at the first.
fn sample_repo() -> RepoSpec {
    RepoSpec::new("org/model")
        .commit(vec![
            FileSpec::regular("config.json", CONFIG_V1.to_vec()),
            FileSpec::regular("sub/dir/tokenizer.json", b"{}".to_vec()),
            FileSpec::lfs("model.safetensors", weights(300_000, 1)),
        ])
        .commit(vec![
            FileSpec::regular("config.json", CONFIG_V2.to_vec()),
            FileSpec::regular("sub/dir/tokenizer.json", b"{}".to_vec()),
            FileSpec::lfs("model.safetensors", weights(300_000, 2)),
            FileSpec::regular("a b#c.txt", b"odd name".to_vec()),
        ])
        .tag("v1.0", 0)
        .branch("dev", 0)
        .branch("refs/pr/1", 0)
        .license("apache-2.0")
}

fn start() -> (FakeHub, RepoSpec) {
    let repo = sample_repo();
    (FakeHub::start(vec![repo.clone()]), repo)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str) -> reqwest::Response {
    client().get(url).send().await.unwrap()
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn error_code(response: &reqwest::Response) -> Option<String> {
    header(response, "x-error-code")
}

/// `<url>; rel="next"` -> url.
fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = header(response, "link")?;
    let (url, rel) = link.split_once(';')?;
    assert_eq!(rel.trim(), "rel=\"next\"");
    Some(
        url.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string(),
    )
}

/// A raw HTTP/1.1 exchange with `Connection: close`: the exact bytes the server sent.
fn raw_request(base: &str, request_line: &str) -> String {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{request_line} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn starts_in_a_sync_test_and_head_sends_headers_only() {
    let (hub, repo) = start();
    let head = raw_request(&hub.url(), "HEAD /org/model/resolve/main/config.json");
    let (headers, body) = head.split_once("\r\n\r\n").unwrap();
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");
    assert!(
        headers.contains(&format!("content-length: {}", CONFIG_V2.len())),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("x-repo-commit: {}", repo.head())),
        "{headers}"
    );
    assert_eq!(body, "", "a HEAD answer must not carry a body");
    let get = raw_request(&hub.url(), "GET /org/model/resolve/main/config.json");
    assert!(get.ends_with(std::str::from_utf8(CONFIG_V2).unwrap()));
}

#[tokio::test]
async fn starts_inside_a_tokio_runtime_and_stops_on_drop() {
    let (hub, _) = start();
    let url = hub.url();
    assert_ne!(url, hub.cdn_url(), "API and CDN must be different origins");
    assert_eq!(
        get(&format!("{url}/api/models/org/model")).await.status(),
        StatusCode::OK
    );
    drop(hub);
    assert!(
        client()
            .get(format!("{url}/api/models/org/model"))
            .send()
            .await
            .is_err(),
        "still serving after drop"
    );
}

#[tokio::test]
async fn listing_paginates_with_absolute_links_that_keep_every_filter() {
    let repos: Vec<RepoSpec> = (0..5)
        .map(|i| {
            RepoSpec::new(format!("acme/m{i}"))
                .commit(vec![FileSpec::regular("config.json", b"{}".to_vec())])
                .popularity(i, 0)
        })
        .chain([
            RepoSpec::new("other/x").commit(vec![FileSpec::regular("config.json", b"{}".to_vec())])
        ])
        .collect();
    let hub = FakeHub::start(repos);
    hub.set_page_sizes(PageSizes {
        models: 2,
        ..PageSizes::default()
    });

    let mut url = format!(
        "{}/api/models?author=acme&sort=downloads&filter=transformers&full=true",
        hub.url()
    );
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let response = get(&url).await;
        assert_eq!(response.status(), StatusCode::OK);
        let next = next_link(&response);
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= 2);
        assert!(
            page.iter()
                .all(|m| m["sha"].as_str().is_some_and(|s| s.len() == 40)
                    && m["siblings"].is_array())
        );
        ids.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        pages += 1;
        match next {
            Some(next) => {
                assert!(
                    next.starts_with(&hub.url()),
                    "next link must be absolute: {next}"
                );
                for kept in [
                    "author=acme",
                    "sort=downloads",
                    "filter=transformers",
                    "full=true",
                    "cursor=",
                ] {
                    assert!(next.contains(kept), "{next} lost {kept}");
                }
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    // Descending downloads by default (2.x clients no longer send `direction`).
    assert_eq!(ids, ["acme/m4", "acme/m3", "acme/m2", "acme/m1", "acme/m0"]);

    // `limit` caps the page, not the listing: the client stops on its own.
    let limited = get(&format!("{}/api/models?limit=1&search=M", hub.url())).await;
    assert!(next_link(&limited).is_some());
    let page: Vec<Value> = limited.json().await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(
        page[0].get("siblings").is_none(),
        "the default listing has no siblings"
    );
}

#[tokio::test]
async fn listing_hides_private_repos_from_others_and_expand_selects_fields() {
    let hub = FakeHub::start(vec![
        sample_repo(),
        RepoSpec::new("org/secret")
            .commit(vec![FileSpec::regular("a", b"a".to_vec())])
            .private()
            .allow_token("hf_owner"),
    ]);
    let ids = |models: Vec<Value>| {
        models
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let anonymous: Vec<Value> = get(&format!("{}/api/models", hub.url()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(anonymous), ["org/model"]);
    let owner: Vec<Value> = get_with(
        &format!("{}/api/models", hub.url()),
        &[("authorization", "Bearer hf_owner")],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ids(owner), ["org/model", "org/secret"]);
    let expanded: Vec<Value> = get(&format!(
        "{}/api/models?expand=sha&expand=downloads",
        hub.url()
    ))
    .await
    .json()
    .await
    .unwrap();
    let keys: Vec<&str> = expanded[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["_id", "id", "sha", "downloads"]);
}

#[tokio::test]
async fn info_resolves_revisions_and_blobs_adds_file_metadata() {
    let (hub, repo) = start();
    let info: Value = get(&format!("{}/api/models/org/model", hub.url()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["sha"], repo.head());
    assert_eq!(info["gated"], false);
    assert_eq!(info["cardData"]["license"], "apache-2.0");
    assert!(
        info["tags"]
            .as_array()
            .unwrap()
            .contains(&Value::from("license:apache-2.0"))
    );
    assert_eq!(info["siblings"].as_array().unwrap().len(), 4);
    assert_eq!(
        info["siblings"][0].as_object().unwrap().len(),
        1,
        "siblings without blobs=true are names only"
    );

    for revision in [
        "v1.0",
        "dev",
        "refs%2Fpr%2F1",
        "refs%2Fheads%2Fdev",
        &repo.commit_sha(0),
    ] {
        let at: Value = get(&format!(
            "{}/api/models/org/model/revision/{revision}",
            hub.url()
        ))
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(at["sha"], repo.commit_sha(0), "revision {revision}");
    }

    let blobs: Value = get(&format!(
        "{}/api/models/org/model/revision/main?blobs=True",
        hub.url()
    ))
    .await
    .json()
    .await
    .unwrap();
    let siblings = blobs["siblings"].as_array().unwrap();
    let config = siblings
        .iter()
        .find(|s| s["rfilename"] == "config.json")
        .unwrap();
    assert_eq!(config["size"], CONFIG_V2.len());
    assert_eq!(config["blobId"], git_blob_sha1(CONFIG_V2));
    assert!(config.get("lfs").is_none());
    let model = siblings
        .iter()
        .find(|s| s["rfilename"] == "model.safetensors")
        .unwrap();
    let content = weights(300_000, 2);
    let pointer = lfs_pointer(&sha256_hex(&content), content.len() as u64);
    assert_eq!(model["size"], 300_000);
    assert_eq!(model["blobId"], git_blob_sha1(pointer.as_bytes()));
    assert_eq!(model["lfs"]["sha256"], sha256_hex(&content));
    assert_eq!(model["lfs"]["size"], 300_000);
    assert_eq!(model["lfs"]["pointerSize"], pointer.len());
}

#[tokio::test]
async fn tree_lists_oids_accepts_both_path_spellings_and_paginates() {
    let (hub, repo) = start();
    let base = format!("{}/api/models/org/model/tree", hub.url());
    let top: Vec<Value> = get(&format!("{base}/main")).await.json().await.unwrap();
    let paths: Vec<&str> = top.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        ["a b#c.txt", "config.json", "model.safetensors", "sub"]
    );
    let sub = top.iter().find(|e| e["path"] == "sub").unwrap();
    assert_eq!(sub["type"], "directory");
    assert_eq!(sub["oid"].as_str().unwrap().len(), 40);

    let model = top
        .iter()
        .find(|e| e["path"] == "model.safetensors")
        .unwrap();
    let content = weights(300_000, 2);
    assert_eq!(
        model["oid"],
        git_blob_sha1(lfs_pointer(&sha256_hex(&content), 300_000).as_bytes())
    );
    assert_eq!(model["lfs"]["oid"], sha256_hex(&content));
    assert_eq!(model["size"], 300_000);
    assert!(model.get("xetHash").is_none());

    let encoded: Value = get(&format!("{base}/v1.0/sub%2Fdir"))
        .await
        .json()
        .await
        .unwrap();
    let segments: Value = get(&format!("{base}/v1.0/sub/dir"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(encoded, segments);
    assert_eq!(encoded[0]["path"], "sub/dir/tokenizer.json");
    assert_eq!(encoded[0]["oid"], git_blob_sha1(b"{}"));

    hub.set_page_sizes(PageSizes {
        models: 1000,
        tree: 2,
        tree_expand: 1,
    });
    let mut url = format!("{base}/main?recursive=true&expand=false");
    let mut all = Vec::new();
    loop {
        let response = get(&url).await;
        let next = next_link(&response);
        let page: Vec<Value> = response.json().await.unwrap();
        assert!(page.len() <= 2);
        all.extend(page);
        match next {
            Some(next) => {
                assert!(next.contains("recursive=true") && next.contains("expand=false"));
                url = next;
            }
            None => break,
        }
    }
    let files: Vec<&str> = all
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "a b#c.txt",
            "config.json",
            "model.safetensors",
            "sub/dir/tokenizer.json"
        ]
    );
    assert_eq!(all.len(), 6, "4 files and the directories sub and sub/dir");

    let expanded = get(&format!("{base}/main?expand=true")).await;
    assert!(
        next_link(&expanded).is_some(),
        "expand=true pages are smaller"
    );
    let page: Vec<Value> = expanded.json().await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0]["lastCommit"]["id"],
        repo.head(),
        "a b#c.txt was added by the second commit"
    );
    assert!(page[0]["securityFileStatus"]["status"].is_string());

    let missing = get(&format!("{base}/main/nope")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(&missing).as_deref(), Some("EntryNotFound"));
    let bad_revision = get(&format!("{base}/nope")).await;
    assert_eq!(bad_revision.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_code(&bad_revision).as_deref(),
        Some("RevisionNotFound")
    );
}

#[tokio::test]
async fn resolve_serves_regular_files_with_etag_commit_and_ranges() {
    let (hub, repo) = start();
    let url = format!("{}/org/model/resolve/main/config.json", hub.url());
    let etag = format!("\"{}\"", git_blob_sha1(CONFIG_V2));

    let head = client()
        .head(&url)
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header(&head, "etag"), Some(etag.clone()));
    assert_eq!(header(&head, "x-repo-commit"), Some(repo.head()));
    assert_eq!(
        header(&head, "content-length"),
        Some(CONFIG_V2.len().to_string())
    );
    assert_eq!(header(&head, "accept-ranges").as_deref(), Some("bytes"));
    assert!(
        head.headers()
            .keys()
            .all(|name| !name.as_str().starts_with("x-xet"))
    );

    let full = get(&url).await;
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.bytes().await.unwrap().as_ref(), CONFIG_V2);

    let total = CONFIG_V2.len();
    let cases = [
        ("bytes=0-0", format!("bytes 0-0/{total}"), &CONFIG_V2[..1]),
        (
            "bytes=3-",
            format!("bytes 3-{}/{total}", total - 1),
            &CONFIG_V2[3..],
        ),
        (
            "bytes=2-999999",
            format!("bytes 2-{}/{total}", total - 1),
            &CONFIG_V2[2..],
        ),
        (
            "bytes=-4",
            format!("bytes {}-{}/{total}", total - 4, total - 1),
            &CONFIG_V2[total - 4..],
        ),
    ];
    for (range, content_range, expected) in cases {
        let partial = get_with(&url, &[("range", range)]).await;
        assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&partial, "content-range"),
            Some(content_range),
            "{range}"
        );
        assert_eq!(
            header(&partial, "content-length"),
            Some(expected.len().to_string())
        );
        assert_eq!(partial.bytes().await.unwrap().as_ref(), expected, "{range}");
    }
    let unsatisfiable = get_with(&url, &[("range", &format!("bytes={total}-"))]).await;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&unsatisfiable, "content-range"),
        Some(format!("bytes */{total}"))
    );

    let by_sha = get(&format!(
        "{}/org/model/resolve/{}/config.json",
        hub.url(),
        repo.commit_sha(0)
    ))
    .await;
    assert_eq!(header(&by_sha, "x-repo-commit"), Some(repo.commit_sha(0)));
    assert_eq!(by_sha.bytes().await.unwrap().as_ref(), CONFIG_V1);
    let by_tag = get(&format!(
        "{}/org/model/resolve/v1.0/sub/dir/tokenizer.json",
        hub.url()
    ))
    .await;
    assert_eq!(by_tag.status(), StatusCode::OK);
    let by_pr = get(&format!(
        "{}/org/model/resolve/refs%2Fpr%2F1/config.json",
        hub.url()
    ))
    .await;
    assert_eq!(by_pr.bytes().await.unwrap().as_ref(), CONFIG_V1);
    let odd = get(&format!(
        "{}/org/model/resolve/main/a%20b%23c.txt",
        hub.url()
    ))
    .await;
    assert_eq!(odd.bytes().await.unwrap().as_ref(), b"odd name");

    let revalidated = get_with(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn lfs_files_redirect_to_the_cdn_origin_which_serves_ranges() {
    let (hub, repo) = start();
    let content = weights(300_000, 2);
    let sha256 = sha256_hex(&content);
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let response = client()
            .request(
                method.clone(),
                format!("{}/org/model/resolve/main/model.safetensors", hub.url()),
            )
            .header("authorization", "Bearer hf_someone")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{method}");
        assert_eq!(header(&response, "x-repo-commit"), Some(repo.head()));
        assert_eq!(
            header(&response, "x-linked-etag"),
            Some(format!("\"{sha256}\""))
        );
        assert_eq!(
            header(&response, "x-linked-size").as_deref(),
            Some("300000")
        );
        let location = header(&response, "location").unwrap();
        assert!(
            location.starts_with(&hub.cdn_url()),
            "{location} is not on the CDN origin"
        );
        let length: usize = header(&response, "content-length")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            length < 1000,
            "the redirect's Content-Length is its own small body, not the file's"
        );
        assert!(
            response
                .headers()
                .keys()
                .all(|name| !name.as_str().starts_with("x-xet") && name != "link")
        );
    }

    let location = header(
        &get(&format!(
            "{}/org/model/resolve/main/model.safetensors",
            hub.url()
        ))
        .await,
        "location",
    )
    .unwrap();
    let cdn = get(&location).await;
    assert_eq!(cdn.status(), StatusCode::OK);
    assert_ne!(
        header(&cdn, "etag"),
        Some(format!("\"{sha256}\"")),
        "a CDN ETag is not the sha256"
    );
    assert!(header(&cdn, "x-repo-commit").is_none());
    assert!(
        header(&cdn, "content-disposition")
            .unwrap()
            .contains("model.safetensors")
    );
    assert_eq!(cdn.bytes().await.unwrap().as_ref(), content.as_slice());
    let ranged = get_with(&location, &[("range", "bytes=299990-300001")]).await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&ranged, "content-range").as_deref(),
        Some("bytes 299990-299999/300000")
    );
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), &content[299_990..]);
    let beyond = get_with(&location, &[("range", "bytes=300000-")]).await;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test]
async fn errors_carry_the_hub_codes_statuses_and_headers() {
    let hub = FakeHub::start(vec![
        sample_repo(),
        RepoSpec::new("org/gated")
            .commit(vec![FileSpec::regular("config.json", b"{}".to_vec())])
            .gated(GatedMode::Manual)
            .allow_token("hf_good"),
        RepoSpec::new("org/secret")
            .commit(vec![FileSpec::regular("config.json", b"{}".to_vec())])
            .private()
            .allow_token("hf_good"),
    ]);
    let url = hub.url();
    let expect = |response: &reqwest::Response, status: u16, code: Option<&str>| {
        assert_eq!(response.status().as_u16(), status, "{}", response.url());
        assert_eq!(error_code(response).as_deref(), code, "{}", response.url());
        if status >= 400 {
            assert!(
                header(response, "x-error-message").is_some(),
                "{}",
                response.url()
            );
        }
    };
    let token = |t: &'static str| vec![("authorization", t)];
    let anonymous: Vec<(&str, &str)> = vec![];

    // Unknown repo: 401 anonymous (no existence leak), 404 with a token.
    let missing = get(&format!("{url}/api/models/org/none")).await;
    expect(&missing, 401, Some("RepoNotFound"));
    let body: Value = missing.json().await.unwrap();
    assert!(body["error"].is_string());
    expect(
        &get_with(
            &format!("{url}/org/none/resolve/main/x"),
            &token("Bearer hf_good"),
        )
        .await,
        404,
        Some("RepoNotFound"),
    );

    // Invalid credentials: 401 with the exact message and no code, even on a public repo.
    let invalid = get_with(
        &format!("{url}/api/models/org/model"),
        &token("Bearer not-a-token"),
    )
    .await;
    expect(&invalid, 401, None);
    assert_eq!(
        header(&invalid, "x-error-message").as_deref(),
        Some("Invalid credentials in Authorization header")
    );

    // Gated: metadata public, files need an approved token.
    let info: Value = get(&format!("{url}/api/models/org/gated"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["gated"], "manual");
    let file = format!("{url}/org/gated/resolve/main/config.json");
    expect(&get_with(&file, &anonymous).await, 401, Some("GatedRepo"));
    expect(
        &get_with(&file, &token("Bearer hf_other")).await,
        403,
        Some("GatedRepo"),
    );
    expect(&get_with(&file, &token("Bearer hf_good")).await, 200, None);
    expect(
        &get(&format!("{url}/api/models/org/gated/auth-check")).await,
        401,
        Some("GatedRepo"),
    );
    expect(
        &get_with(
            &format!("{url}/api/models/org/gated/auth-check"),
            &token("Bearer hf_good"),
        )
        .await,
        200,
        None,
    );

    // Private: invisible without an allowed token, everywhere.
    for path in [
        "/api/models/org/secret",
        "/api/models/org/secret/tree/main",
        "/org/secret/resolve/main/config.json",
    ] {
        expect(
            &get(&format!("{url}{path}")).await,
            401,
            Some("RepoNotFound"),
        );
        expect(
            &get_with(&format!("{url}{path}"), &token("Bearer hf_other")).await,
            404,
            Some("RepoNotFound"),
        );
        expect(
            &get_with(&format!("{url}{path}"), &token("Bearer hf_good")).await,
            200,
            None,
        );
    }

    let revision = get(&format!("{url}/org/model/resolve/nope/config.json")).await;
    expect(&revision, 404, Some("RevisionNotFound"));
    let entry = get(&format!("{url}/org/model/resolve/main/missing.json")).await;
    expect(&entry, 404, Some("EntryNotFound"));
    assert_eq!(
        header(&entry, "x-repo-commit"),
        Some(sample_repo().head()),
        "clients need it for .no_exist"
    );
    let entry_head = client()
        .head(format!("{url}/org/model/resolve/main/missing.json"))
        .send()
        .await
        .unwrap();
    expect(&entry_head, 404, Some("EntryNotFound"));

    expect(&get(&format!("{url}/api/agent-harnesses")).await, 404, None);
    let refs: Value = get(&format!("{url}/api/models/org/model/refs"))
        .await
        .json()
        .await
        .unwrap();
    let branches: Vec<&str> = refs["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(branches, ["main", "dev", "refs/pr/1"]);
    assert_eq!(refs["tags"][0]["targetCommit"], sample_repo().commit_sha(0));
}

#[tokio::test]
async fn legacy_ids_and_wrong_case_redirect_307_to_the_canonical_id() {
    let hub = FakeHub::start(vec![sample_repo().alias("legacy-name")]);
    let cases = [
        (
            "/api/models/legacy-name/revision/main?blobs=true",
            "/api/models/org/model/revision/main?blobs=true",
        ),
        (
            "/legacy-name/resolve/main/sub/dir/tokenizer.json",
            "/org/model/resolve/main/sub/dir/tokenizer.json",
        ),
        (
            "/api/models/legacy-name/tree/main/sub%2Fdir",
            "/api/models/org/model/tree/main/sub%2Fdir",
        ),
        ("/api/models/ORG/Model", "/api/models/org/model"),
    ];
    for (path, location) in cases {
        let response = get(&format!("{}{path}", hub.url())).await;
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT, "{path}");
        assert_eq!(
            header(&response, "location").as_deref(),
            Some(location),
            "{path}"
        );
        assert_eq!(
            get(&format!("{}{location}", hub.url())).await.status(),
            StatusCode::OK,
            "{location}"
        );
    }
}

#[tokio::test]
async fn drop_after_closes_the_connection_after_exactly_n_body_bytes_then_is_used_up() {
    let (hub, _) = start();
    hub.add_fault(Fault::DropAfter {
        path_contains: "model.safetensors".into(),
        bytes: 1000,
        times: 1,
    });
    let location = header(
        &get(&format!(
            "{}/org/model/resolve/main/model.safetensors",
            hub.url()
        ))
        .await,
        "location",
    )
    .unwrap();
    let mut response = get(&location).await;
    assert_eq!(
        header(&response, "content-length").as_deref(),
        Some("300000"),
        "the drop must look like a cut, not a short file"
    );
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => panic!("body completed despite the drop ({} bytes)", received.len()),
            Err(error) => break error,
        }
    };
    assert!(
        error.is_body() || error.is_decode() || error.is_request(),
        "{error:?}"
    );
    assert_eq!(received, weights(300_000, 2)[..1000]);
    let second = get(&location).await.bytes().await.unwrap();
    assert_eq!(
        second.len(),
        300_000,
        "the fault was used up after one request"
    );
}

#[tokio::test]
async fn status_faults_answer_429_with_rate_limit_headers_and_5xx_then_recover() {
    let (hub, _) = start();
    let url = format!("{}/org/model/resolve/main/config.json", hub.url());
    hub.add_fault(Fault::Status {
        path_contains: "config.json".into(),
        status: 429,
        retry_after: Some(3),
        times: 1,
    });
    hub.add_fault(Fault::Status {
        path_contains: "config.json".into(),
        status: 503,
        retry_after: None,
        times: 2,
    });
    let limited = get(&url).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&limited, "retry-after").as_deref(), Some("3"));
    assert_eq!(
        header(&limited, "ratelimit").as_deref(),
        Some("\"resolvers\";r=0;t=3")
    );
    assert!(
        header(&limited, "ratelimit-policy")
            .unwrap()
            .contains("q=500;w=300")
    );
    for _ in 0..2 {
        let unavailable = get(&url).await;
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(header(&unavailable, "retry-after").is_none());
    }
    assert_eq!(get(&url).await.status(), StatusCode::OK);

    // Faults match on the decoded path and also hit the CDN and API origins.
    hub.add_fault(Fault::Status {
        path_contains: "org/model/tree".into(),
        status: 500,
        retry_after: None,
        times: 1,
    });
    assert_eq!(
        get(&format!("{}/api/models/org/model/tree/main", hub.url()))
            .await
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    hub.add_fault(Fault::Status {
        path_contains: "a b#c".into(),
        status: 502,
        retry_after: None,
        times: 5,
    });
    assert_eq!(
        get(&format!(
            "{}/org/model/resolve/main/a%20b%23c.txt",
            hub.url()
        ))
        .await
        .status(),
        StatusCode::BAD_GATEWAY
    );
    hub.clear_faults();
    assert_eq!(
        get(&format!(
            "{}/org/model/resolve/main/a%20b%23c.txt",
            hub.url()
        ))
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_bytes_serves_same_length_corrupted_content_once() {
    let (hub, _) = start();
    let url = format!("{}/org/model/resolve/main/config.json", hub.url());
    hub.add_fault(Fault::WrongBytes {
        path_contains: "config.json".into(),
        times: 1,
    });
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(
        header(&head, "etag"),
        Some(format!("\"{}\"", git_blob_sha1(CONFIG_V2))),
        "a HEAD does not use the fault up"
    );
    let corrupted = get(&url).await.bytes().await.unwrap();
    assert_eq!(corrupted.len(), CONFIG_V2.len());
    assert_ne!(corrupted.as_ref(), CONFIG_V2);
    assert_eq!(get(&url).await.bytes().await.unwrap().as_ref(), CONFIG_V2);
}

#[tokio::test]
async fn latency_and_bandwidth_cap_slow_responses_down() {
    let (hub, _) = start();
    let url = format!("{}/org/model/resolve/main/config.json", hub.url());
    // Lower bounds only: a sleep never ends early, so these cannot flake on a slow machine.
    hub.add_fault(Fault::Latency {
        path_contains: "config.json".into(),
        millis: 300,
        times: 1,
    });
    let started = Instant::now();
    assert_eq!(get(&url).await.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 200_000,
    });
    let location = header(
        &get(&format!(
            "{}/org/model/resolve/main/model.safetensors",
            hub.url()
        ))
        .await,
        "location",
    )
    .unwrap();
    let started = Instant::now();
    let body = get(&location).await.bytes().await.unwrap();
    assert_eq!(body.len(), 300_000);
    // 300 000 bytes at 200 000 B/s in 20 000-byte chunks: the last chunk leaves at >= 1.4 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    hub.clear_faults();
    assert_eq!(get(&location).await.bytes().await.unwrap().len(), 300_000);
}

#[tokio::test]
async fn request_log_records_both_servers_in_order_and_counts_body_bytes() {
    let (hub, _) = start();
    let base = hub.url();
    get_with(
        &format!("{base}/api/models/org/model?blobs=true"),
        &[("authorization", "Bearer hf_x")],
    )
    .await;
    let redirect = get(&format!("{base}/org/model/resolve/main/model.safetensors")).await;
    let location = header(&redirect, "location").unwrap();
    get_with(&location, &[("range", "bytes=0-99")])
        .await
        .bytes()
        .await
        .unwrap();
    get(&format!("{base}/org/model/resolve/main/config.json"))
        .await
        .bytes()
        .await
        .unwrap();
    client()
        .head(format!("{base}/org/model/resolve/main/config.json"))
        .send()
        .await
        .unwrap();

    let log = hub.requests();
    let summary: Vec<(ServerKind, &str, u16, bool)> = log
        .iter()
        .map(|r| (r.server, r.method.as_str(), r.status, r.is_file_request()))
        .collect();
    assert_eq!(
        summary,
        [
            (ServerKind::Api, "GET", 200, false),
            (ServerKind::Api, "GET", 302, true),
            (ServerKind::Cdn, "GET", 206, true),
            (ServerKind::Api, "GET", 200, true),
            (ServerKind::Api, "HEAD", 200, true),
        ]
    );
    assert_eq!(log[0].path, "/api/models/org/model");
    assert_eq!(log[0].query, "blobs=true");
    assert_eq!(log[0].header("Authorization"), Some("Bearer hf_x"));
    assert_eq!(log[2].header("range"), Some("bytes=0-99"));
    // 100 ranged CDN bytes + the config; redirects, JSON and HEADs are not file content.
    assert_eq!(hub.body_bytes_served(), 100 + CONFIG_V2.len() as u64);

    hub.clear_requests();
    assert!(hub.requests().is_empty());
    get(&format!("{base}/org/model/resolve/main/a%20b%23c.txt")).await;
    assert_eq!(
        hub.requests()[0].path,
        "/org/model/resolve/main/a%20b%23c.txt",
        "paths are logged raw"
    );
}

#[tokio::test]
async fn put_repo_moves_main_while_old_commits_stay_resolvable() {
    let (hub, repo) = start();
    let old_head = repo.head();
    let updated = repo
        .clone()
        .commit(vec![FileSpec::regular(
            "config.json",
            b"{\"v\":3}".to_vec(),
        )])
        .alias("renamed-from");
    hub.put_repo(updated.clone());
    let info: Value = get(&format!("{}/api/models/org/model", hub.url()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["sha"], updated.head());
    assert_ne!(updated.head(), old_head);
    let old = get(&format!(
        "{}/org/model/resolve/{old_head}/a%20b%23c.txt",
        hub.url()
    ))
    .await;
    assert_eq!(old.status(), StatusCode::OK);
    let gone = get(&format!(
        "{}/org/model/resolve/main/a%20b%23c.txt",
        hub.url()
    ))
    .await;
    assert_eq!(error_code(&gone).as_deref(), Some("EntryNotFound"));
    assert_eq!(
        get(&format!("{}/api/models/renamed-from", hub.url()))
            .await
            .status(),
        StatusCode::TEMPORARY_REDIRECT
    );

    hub.put_repo(
        RepoSpec::new("plain-id").commit(vec![FileSpec::regular("config.json", b"{}".to_vec())]),
    );
    let plain = get(&format!("{}/plain-id/resolve/main/config.json", hub.url())).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let plain_info: Value = get(&format!("{}/api/models/plain-id/revision/main", hub.url()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain_info["id"], "plain-id");
    assert!(plain_info.get("author").is_none());
}

/// Reads a GGUF v3 header: (version, tensor_count, metadata key -> string or u32 value).
fn parse_gguf_header(bytes: &[u8]) -> (u32, u64, std::collections::BTreeMap<String, String>) {
    assert_eq!(&bytes[..4], b"GGUF");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (version, tensors, count) = (u32_at(4), u64_at(8), u64_at(16));
    let mut at = 24;
    let mut metadata = std::collections::BTreeMap::new();
    for _ in 0..count {
        let key_len = u64_at(at) as usize;
        let key = String::from_utf8(bytes[at + 8..at + 8 + key_len].to_vec()).unwrap();
        at += 8 + key_len;
        let value_type = u32_at(at);
        at += 4;
        let value = match value_type {
            4 => {
                at += 4;
                u32_at(at - 4).to_string()
            }
            8 => {
                let len = u64_at(at) as usize;
                at += 8 + len;
                String::from_utf8(bytes[at - len..at].to_vec()).unwrap()
            }
            other => panic!("unexpected GGUF value type {other} for {key}"),
        };
        metadata.insert(key, value);
    }
    (version, tensors, metadata)
}

#[test]
fn shipped_fixtures_are_what_their_readme_promises() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hub");
    let repos = crate::fake_hub::fixtures::load_dir(&root);
    let ids: Vec<&str> = repos.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            "acme/gated-model",
            "acme/tiny-bert",
            "distilbert/distilbert-base-uncased",
            "openai-community/gpt2",
        ]
    );
    let total: usize = repos
        .iter()
        .flat_map(|r| r.head_files())
        .map(|f| f.content.len())
        .sum();
    assert!(
        total < 3 * 1024 * 1024,
        "fixtures must stay small: {total} bytes"
    );
    let repo = |id: &str| repos.iter().find(|r| r.id == id).unwrap();
    let file = |id: &str, path: &str| {
        repo(id)
            .head_files()
            .iter()
            .find(|f| f.path == path)
            .cloned()
            .unwrap()
    };

    for quant in ["Q4_K_M", "Q2_K"] {
        let gguf = file(
            "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            &format!("tinyllama-1.1b-chat-v1.0.{quant}.gguf"),
        );
        assert!(gguf.lfs);
        let (version, tensors, metadata) = parse_gguf_header(&gguf.content);
        assert_eq!((version, tensors), (3, 0));
        assert_eq!(metadata["general.architecture"], "llama");
        assert_eq!(metadata["llama.context_length"], "2048");
        assert!(metadata.contains_key("general.name"));
    }

    for (id, path) in [
        ("acme/tiny-bert", "model.safetensors"),
        ("distilbert/distilbert-base-uncased", "model.safetensors"),
        ("openai-community/gpt2", "model.safetensors"),
        ("acme/gated-model", "model.safetensors"),
    ] {
        let weights = file(id, path);
        assert!(weights.lfs, "{id}/{path}");
        let header_len = u64::from_le_bytes(weights.content[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&weights.content[8..8 + header_len]).unwrap();
        let data_len = weights.content.len() - 8 - header_len;
        let end = header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(name, _)| *name != "__metadata__")
            .map(|(_, tensor)| {
                assert_eq!(tensor["dtype"], "F32");
                tensor["data_offsets"][1].as_u64().unwrap() as usize
            })
            .max()
            .unwrap();
        assert_eq!(
            end, data_len,
            "{id}/{path}: tensors must cover the data exactly"
        );
    }

    let bert = repo("acme/tiny-bert");
    let paths: Vec<(&str, bool)> = bert
        .head_files()
        .iter()
        .map(|f| (f.path.as_str(), f.lfs))
        .collect();
    assert!(paths.contains(&("tokenizer/tokenizer.json", false)));
    assert!(paths.contains(&("tokenizer/vocab.txt", false)));
    assert!(paths.contains(&(".gitattributes", false)));
    assert!(
        !paths.iter().any(|(p, _)| p.ends_with("_hub.json")),
        "metadata is not a repo file"
    );
    assert!(
        std::str::from_utf8(&file("acme/tiny-bert", "README.md").content)
            .unwrap()
            .contains("license: apache-2.0")
    );
    assert_eq!(
        repo("distilbert/distilbert-base-uncased").aliases,
        ["distilbert-base-uncased"]
    );
    assert_eq!(repo("openai-community/gpt2").aliases, ["gpt2"]);
    let gated = repo("acme/gated-model");
    assert_eq!(gated.gated, Some(GatedMode::Manual));
    assert_eq!(gated.allowed_tokens, ["hf_fixture_token"]);
}

/// The zero-copy CDN (benchmarks) answers every kind of file request as the streaming CDN does,
/// over kept-alive connections, counting the bytes it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zero_copy_cdn_answers_like_the_streaming_one() {
    let root = tempfile::tempdir().unwrap();
    let repo_dir = root.path().join("org").join("weights");
    fs_err::create_dir_all(&repo_dir).unwrap();
    let big = weights((3 << 20) + 77, 9);
    fs_err::write(repo_dir.join("model.safetensors"), &big).unwrap();
    fs_err::write(repo_dir.join("tiny.bin"), weights(1000, 3)).unwrap();
    let start = |mode| {
        let repos = crate::fake_hub::fixtures::load_dir(root.path());
        FakeHub::start_with(repos, 0, 0, mode).unwrap()
    };
    let streaming = start(CdnMode::Streaming);
    let zero_copy = start(CdnMode::ZeroCopy);
    let client = client();
    let mut sent = Vec::new();
    for hub in [&streaming, &zero_copy] {
        let mut answers = Vec::new();
        for file in ["model.safetensors", "tiny.bin"] {
            let resolve = format!("{}/org/weights/resolve/main/{file}", hub.url());
            let redirect = client.get(&resolve).send().await.unwrap();
            let cdn = header(&redirect, "location").expect("LFS files redirect to the CDN");
            assert!(cdn.starts_with(&hub.cdn_url()), "{cdn}");
            let unknown = cdn.replace(&sha256_hex(&big), &"0".repeat(64));
            for (method, url, range) in [
                ("GET", &cdn, None),
                ("GET", &cdn, Some("bytes=100-199")),
                ("GET", &cdn, Some("bytes=1048576-")),
                ("GET", &cdn, Some("bytes=-10")),
                ("GET", &cdn, Some("bytes=999999999-")),
                ("HEAD", &cdn, Some("bytes=5-9")),
                ("GET", &unknown, None),
            ] {
                let mut request = client.request(method.parse().unwrap(), url.as_str());
                if let Some(range) = range {
                    request = request.header("range", range);
                }
                let response = request.send().await.unwrap();
                let status = response.status();
                let headers: Vec<(String, String)> = response
                    .headers()
                    .iter()
                    .filter(|(name, _)| !["x-request-id", "date"].contains(&name.as_str()))
                    .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
                    .collect();
                let body = response.bytes().await.unwrap();
                answers.push((method, range, status, headers, body));
            }
        }
        sent.push((answers, hub.body_bytes_served()));
    }
    let (streamed, streamed_bytes) = &sent[0];
    let (copied, copied_bytes) = &sent[1];
    assert_eq!(streamed.len(), copied.len());
    for (expected, actual) in streamed.iter().zip(copied) {
        assert_eq!(
            (expected.2, &expected.3),
            (actual.2, &actual.3),
            "{} {:?}",
            expected.0,
            expected.1
        );
        assert!(
            expected.4 == actual.4,
            "{} {:?}: other bytes",
            expected.0,
            expected.1
        );
    }
    // The whole big file came back intact, and both count the same file bytes.
    assert_eq!(&copied[0].4[..], &big[..]);
    assert_eq!(streamed_bytes, copied_bytes);
    assert!(*copied_bytes > big.len() as u64);
    // Every request is in the log, as with the streaming CDN (7 per file).
    let cdn_requests = zero_copy
        .requests()
        .iter()
        .filter(|r| r.server == ServerKind::Cdn)
        .count();
    assert_eq!(cdn_requests, 14);
}
