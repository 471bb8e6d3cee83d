//! Machine-facing verbs against real files, real processes and the fake hub: compatibility
//! (headers read with small ranged requests, verdicts from fixed machine facts, `nvidia-smi`
//! through a recorded output, `--force-compat`), gc (LRU order, pins, declared models, `E_QUOTA`,
//! dry-run leaves the tree byte-identical, quota evictions in `kmm plan`), `kmm path`, and
//! ensure (distilbert through the engine, basic-cls trained by a real scikit-learn and loaded
//! back from Python, and the skip paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use serde_json::Value;
use sha2::{Digest, Sha256};

use kmm::compat::{self, Format, Verdict};
use kmm::hub::{HubClient, HubConfig};
use kmm::manifest::ModelSpec;
use kmm::registry::Registry;
use kmm::resolve::{ResolveContext, resolve_model};
use kmm::sys::{Gpu, MachineFacts};

use crate::fake_hub::{FakeHub, FileSpec, RepoSpec, ServerKind};
use crate::support::Workdir as Workspace;
use crate::support::{Run, has_boot_id, journal_path, pretend_a_reboot};

// ---------------------------------------------------------------------------------------------
// Helpers

impl Run {
    fn ok(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let doc = self.json();
        assert_eq!(doc["success"], true, "{doc}");
        doc
    }
}

/// Every file under `root` (relative path -> sha256 of its bytes), symlinks included by target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs_err::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.insert(format!("{relative}/"), String::new());
                walk(root, &path, out);
            } else {
                out.insert(
                    relative,
                    hex::encode(Sha256::digest(fs_err::read(&path).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// One hash of the whole tree (paths and bytes).
fn tree_hash(root: &Path) -> String {
    hash_of(tree(root))
}

/// [`tree_hash`] without the store lock file, whose content (the holder's pid) a run that takes
/// the lock rewrites.
fn tree_hash_but_lock(root: &Path) -> String {
    let mut files = tree(root);
    files.remove("models/.kmm/lock");
    hash_of(files)
}

fn hash_of(files: BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (path, hash) in files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(hash.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// A metadata value of a GGUF file built by [`gguf`].
enum Meta {
    U32(u32),
    Str(&'static str),
    /// That many strings (`tok0`, `tok1`, ...), like a tokenizer vocabulary.
    Tokens(usize),
}

/// A GGUF v3 file: header with `meta` and `tensors` (name, dims, ggml type), zero data padded to
/// `total` bytes.
fn gguf(meta: &[(&str, Meta)], tensors: &[(&str, &[u64], u32)], total: usize) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut out, key);
        match value {
            Meta::U32(n) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            Meta::Str(text) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, text);
            }
            Meta::Tokens(n) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(*n as u64).to_le_bytes());
                for i in 0..*n {
                    string(&mut out, &format!("tok{i}"));
                }
            }
        }
    }
    for (name, dims, kind) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for dim in *dims {
            out.extend_from_slice(&dim.to_le_bytes());
        }
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    assert!(out.len() < total, "header {} >= total {total}", out.len());
    out.resize(total, 0);
    out
}

const Q4_K: u32 = 12;
const F32: u32 = 0;
const MB: usize = 1 << 20;

/// A llama-shaped Q4_K_M GGUF: 32 layers, 4096 embedding, 32 heads, 8 KV heads, 8192 context.
fn llama_gguf(vocab: usize, total: usize) -> Vec<u8> {
    gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.file_type", Meta::U32(15)),
            ("llama.context_length", Meta::U32(8192)),
            ("llama.block_count", Meta::U32(32)),
            ("llama.embedding_length", Meta::U32(4096)),
            ("llama.attention.head_count", Meta::U32(32)),
            ("llama.attention.head_count_kv", Meta::U32(8)),
            ("tokenizer.ggml.tokens", Meta::Tokens(vocab)),
        ],
        &[
            ("token_embd.weight", &[4096, 32000], Q4_K),
            ("blk.0.attn_q.weight", &[4096, 4096], Q4_K),
            ("output_norm.weight", &[4096], F32),
        ],
        total,
    )
}

/// A GGUF whose KV cache alone needs about 100 TB: no machine runs it.
fn huge_gguf() -> Vec<u8> {
    gguf(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.file_type", Meta::U32(15)),
            ("llama.context_length", Meta::U32(4096)),
            ("llama.block_count", Meta::U32(100_000)),
            ("llama.embedding_length", Meta::U32(65536)),
            ("llama.attention.head_count", Meta::U32(64)),
        ],
        &[("token_embd.weight", &[65536, 32000], Q4_K)],
        MB,
    )
}

/// A safetensors file with `tensors` F16 tensors of shape [2, 3] (a long header), and its
/// header length.
fn safetensors(tensors: usize) -> (Vec<u8>, u64) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    for i in 0..tensors {
        header.insert(
            format!("model.layers.{i}.weight"),
            serde_json::json!({"dtype": "F16", "shape": [2, 3], "data_offsets": [i * 12, i * 12 + 12]}),
        );
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.resize(out.len() + tensors * 12, 7);
    (out, json.len() as u64)
}

fn hub_client(hub: &FakeHub) -> HubClient {
    HubClient::new(HubConfig::new(hub.url())).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Resolves `id` at main and reads its facts through the hub.
fn inspect(hub: &FakeHub, id: &str) -> compat::ModelFacts {
    let client = hub_client(hub);
    runtime().block_on(async {
        let desired = resolve_model(
            &ModelSpec::new(id),
            &ResolveContext {
                hub: Some(&client),
                has_token: false,
                registry: &Registry::default(),
                concurrency: 1,
                hf_cache: None,
            },
        )
        .await
        .unwrap();
        compat::inspect(&client, &desired).await.unwrap()
    })
}

fn machine(ram_gb: f64, features: &[&str], gpus: Vec<Gpu>) -> MachineFacts {
    MachineFacts {
        total_ram_bytes: (ram_gb * 1e9) as u64,
        available_ram_bytes: (ram_gb * 1e9) as u64,
        cpu_model: "Test CPU".to_string(),
        cpu_cores: 8,
        arch: "x86_64".to_string(),
        cpu_features: features.iter().map(|f| f.to_string()).collect(),
        free_disk_bytes: Some(1_000_000_000_000),
        gpus,
        gpu_note: None,
    }
}

fn kinds(report: &compat::Report) -> Vec<&str> {
    report.warnings.iter().map(|w| w.kind.as_str()).collect()
}

fn gguf_repo(id: &str, file: &str, bytes: Vec<u8>) -> RepoSpec {
    RepoSpec::new(id).commit(vec![
        FileSpec::regular("README.md", b"# test\n".to_vec()),
        FileSpec::lfs(file, bytes),
    ])
}

// ---------------------------------------------------------------------------------------------
// compatibility

#[test]
fn gguf_facts_come_from_one_small_ranged_read() {
    let file_len = 4 * MB;
    let hub = FakeHub::start(vec![gguf_repo(
        "acme/llama-GGUF",
        "llama.Q4_K_M.gguf",
        llama_gguf(10, file_len),
    )]);
    let facts = inspect(&hub, "acme/llama-GGUF");
    assert_eq!(facts.format, Format::Gguf);
    assert_eq!(facts.architecture.as_deref(), Some("llama"));
    assert_eq!(facts.quantization.as_deref(), Some("Q4_K_M"));
    assert!(facts.quantized);
    assert_eq!(
        facts.parameter_count,
        Some(4096 * 32000 + 4096 * 4096 + 4096)
    );
    assert_eq!(
        (facts.layers, facts.embedding, facts.heads, facts.kv_heads),
        (Some(32), Some(4096), Some(32), Some(8))
    );
    assert_eq!(facts.context_length, Some(8192));
    assert_eq!(facts.weights_bytes, file_len as u64);

    // One ranged request of 64 KiB for a 4 MiB file, per the fake hub's log.
    let ranged: Vec<String> = hub
        .requests()
        .iter()
        .filter(|r| r.server == ServerKind::Cdn)
        .map(|r| r.header("range").unwrap_or("none").to_string())
        .collect();
    assert_eq!(ranged, ["bytes=0-65535"]);
    assert_eq!(hub.body_bytes_served(), 64 * 1024);
    assert_eq!(facts.header_bytes_fetched, 64 * 1024);

    let estimate = compat::estimate(&facts);
    // 2 x 32 layers x 4096 tokens (the default context, below 8192) x 8 KV heads x 128 x 2 bytes.
    assert_eq!(estimate.kv_cache_bytes, 2 * 32 * 4096 * 8 * 128 * 2);
    assert_eq!(estimate.context, Some(4096));
    assert!(
        estimate
            .method
            .contains("2 x 32 layers x 4096 tokens x 8 KV heads x 128 head dim x 2 bytes (f16)"),
        "{}",
        estimate.method
    );
    assert_eq!(
        estimate.cpu_ram_bytes,
        file_len as u64 + estimate.kv_cache_bytes + estimate.overhead_bytes
    );
}

#[test]
fn a_long_gguf_header_is_read_in_growing_ranges_without_the_tensor_data() {
    let file_len = 8 * MB;
    let bytes = llama_gguf(30_000, file_len);
    let header_len = kmm::compat::gguf::parse(&bytes).unwrap().header_len;
    assert!(
        header_len > 64 * 1024,
        "the vocabulary makes the header longer than one window"
    );
    let hub = FakeHub::start(vec![gguf_repo("acme/vocab-GGUF", "m.Q4_K_M.gguf", bytes)]);
    let facts = inspect(&hub, "acme/vocab-GGUF");
    assert_eq!(facts.layers, Some(32));
    let served = hub.body_bytes_served();
    assert!(
        served >= header_len && served <= 2 * header_len + 64 * 1024,
        "served {served}, header {header_len}"
    );
    assert!(served < file_len as u64 / 8, "served {served}");
    let cdn: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.server == ServerKind::Cdn)
        .collect();
    assert!(cdn.len() >= 2, "{cdn:#?}");
    assert!(cdn.iter().all(|r| {
        r.header("range")
            .is_some_and(|v| v.starts_with("bytes=") && !v.ends_with('-'))
    }));
}

#[test]
fn header_reads_retry_hub_failures_and_get_exact_bytes() {
    let bytes = llama_gguf(10, 2 * MB);
    let hub = FakeHub::start(vec![gguf_repo(
        "acme/llama-GGUF",
        "m.Q4_K_M.gguf",
        bytes.clone(),
    )]);
    let mut config = HubConfig::new(hub.url());
    config.retry_base_delay = std::time::Duration::from_millis(1);
    let client = HubClient::new(config).unwrap();
    let commit = gguf_repo("acme/llama-GGUF", "m.Q4_K_M.gguf", bytes.clone()).head();
    hub.add_fault(crate::fake_hub::Fault::Status {
        path_contains: "m.Q4_K_M.gguf".into(),
        status: 503,
        retry_after: None,
        times: 1,
    });
    hub.add_fault(crate::fake_hub::Fault::DropAfter {
        path_contains: "m.Q4_K_M.gguf".into(),
        bytes: 100,
        times: 1,
    });
    let got = runtime()
        .block_on(client.fetch_range("acme/llama-GGUF", &commit, "m.Q4_K_M.gguf", 1000, 5000))
        .unwrap();
    assert_eq!(got, bytes[1000..6000]);
    let requests = hub.requests();
    assert!(requests.iter().any(|r| r.status == 503), "{requests:#?}");
    let cdn = requests
        .iter()
        .filter(|r| r.server == ServerKind::Cdn)
        .count();
    assert!(cdn >= 2, "the dropped answer was retried: {requests:#?}");
    let past_end = runtime()
        .block_on(client.fetch_range(
            "acme/llama-GGUF",
            &commit,
            "m.Q4_K_M.gguf",
            2 * MB as u64,
            10,
        ))
        .unwrap();
    assert!(past_end.is_empty());
    let missing = runtime()
        .block_on(client.fetch_range("acme/llama-GGUF", &commit, "nope.gguf", 0, 10))
        .unwrap_err();
    assert_eq!(missing.code(), kmm::ErrorCode::NotFound);
}

#[test]
fn safetensors_headers_and_config_give_parameters_and_sizes() {
    // A header longer than the first 64 KiB window: read in exactly two requests.
    let (bytes, header_len) = safetensors(2000);
    let file_len = bytes.len() as u64;
    let config = br#"{"model_type":"bert","num_hidden_layers":4,"hidden_size":256,"num_attention_heads":4,"max_position_embeddings":512}"#;
    let hub = FakeHub::start(vec![RepoSpec::new("acme/st").commit(vec![
        FileSpec::regular("config.json", config.to_vec()),
        FileSpec::lfs("model.safetensors", bytes),
    ])]);
    let facts = inspect(&hub, "acme/st");
    assert_eq!(facts.format, Format::Safetensors);
    assert_eq!(facts.parameter_count, Some(2000 * 6));
    assert_eq!(facts.quantization.as_deref(), Some("F16"));
    assert!(!facts.quantized);
    assert_eq!(facts.architecture.as_deref(), Some("bert"));
    assert_eq!(
        (
            facts.layers,
            facts.context_length,
            facts.embedding,
            facts.heads
        ),
        (Some(4), Some(512), Some(256), Some(4))
    );
    assert_eq!(facts.weights_bytes, file_len);
    // Header bytes of the weights (8 + header) plus the whole config.json, nothing more.
    assert_eq!(
        hub.body_bytes_served(),
        8 + header_len + config.len() as u64
    );
    assert!(8 + header_len < file_len);

    // The fixture repos' genuine headers read the same way.
    let fixtures = FakeHub::start(crate::fake_hub::fixtures::load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hub"),
    ));
    let bert = inspect(&fixtures, "acme/tiny-bert");
    assert_eq!(bert.format, Format::Safetensors);
    assert_eq!(bert.quantization.as_deref(), Some("F32"));
    assert!(bert.parameter_count.unwrap() > 0);
    let tiny = inspect(&fixtures, "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF");
    assert_eq!(tiny.format, Format::Gguf);
    assert_eq!(tiny.layers, Some(22));
    assert!(fixtures.body_bytes_served() < 8 * 1024 + 64 * 1024 * 2);
}

#[test]
fn verdicts_from_fixed_machine_facts() {
    let hub = FakeHub::start(vec![
        gguf_repo(
            "acme/llama-GGUF",
            "llama.Q4_K_M.gguf",
            llama_gguf(10, 4 * MB),
        ),
        RepoSpec::new("acme/st")
            .commit(vec![FileSpec::lfs("model.safetensors", safetensors(10).0)]),
    ]);
    let gguf = inspect(&hub, "acme/llama-GGUF");
    let avx2 = ["avx", "avx2", "fma", "f16c"];

    let ok = compat::check(&machine(16.0, &avx2, vec![]), gguf.clone());
    assert_eq!(ok.verdict, Verdict::Ok, "{:?}", ok.warnings);
    assert!(ok.enforce().is_ok());

    let small_ram = compat::check(&machine(0.3, &avx2, vec![]), gguf.clone());
    assert_eq!(kinds(&small_ram), ["ram"]);
    let error = small_ram.enforce().unwrap_err();
    assert_eq!(error.code(), kmm::ErrorCode::Compat);

    let no_avx2 = compat::check(&machine(16.0, &["avx"], vec![]), gguf.clone());
    assert_eq!(kinds(&no_avx2), ["avx2"]);
    assert!(no_avx2.warnings[0].recommendation.contains("llama.cpp"));

    let small_gpu = Gpu {
        name: "Tiny".into(),
        memory_total_bytes: 200_000_000,
        memory_free_bytes: 100_000_000,
    };
    assert_eq!(
        kinds(&compat::check(
            &machine(16.0, &avx2, vec![small_gpu]),
            gguf.clone()
        )),
        ["vram"]
    );
    let big_gpu = Gpu {
        name: "Big".into(),
        memory_total_bytes: 24_000_000_000,
        memory_free_bytes: 24_000_000_000,
    };
    // A GPU that holds everything makes small RAM no problem.
    assert_eq!(
        compat::check(&machine(0.3, &avx2, vec![big_gpu.clone()]), gguf.clone()).verdict,
        Verdict::Ok
    );

    let mut no_disk = machine(16.0, &avx2, vec![]);
    no_disk.free_disk_bytes = Some(1_000);
    assert_eq!(kinds(&compat::check(&no_disk, gguf)), ["disk"]);

    // Unquantized weights of 1 GB or more without a GPU: prefer a quantized GGUF.
    let mut st = inspect(&hub, "acme/st");
    st.weights_bytes = 2_000_000_000;
    let report = compat::check(&machine(64.0, &avx2, vec![]), st.clone());
    assert_eq!(kinds(&report), ["no_gpu"]);
    assert!(report.warnings[0].recommendation.contains("quantized GGUF"));
    assert_eq!(
        compat::check(&machine(64.0, &avx2, vec![big_gpu]), st).verdict,
        Verdict::Ok
    );
}

#[test]
fn compatibility_verb_reports_gpus_from_nvidia_smi_and_force_compat_stops_before_downloads() {
    let hub = FakeHub::start(vec![
        gguf_repo(
            "acme/llama-GGUF",
            "llama.Q4_K_M.gguf",
            llama_gguf(10, 2 * MB),
        ),
        gguf_repo("acme/huge-GGUF", "huge.Q4_K_M.gguf", huge_gguf()),
    ]);
    let ws = Workspace::with_local_bin(&hub, "[models.\"acme/huge-GGUF\"]\n");
    let recorded =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvidia-smi/two-gpus.csv");
    ws.script("nvidia-smi", &format!("cat '{}'", recorded.display()));
    let doc = ws
        .run(&["compatibility", "--model", "acme/llama-GGUF", "--json"])
        .ok();
    let data = &doc["data"];
    assert_eq!(data["verdict"], "ok", "{data:#}");
    assert_eq!(data["machine"]["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(data["machine"]["gpus"][1]["name"], "NVIDIA A100-SXM4-80GB");
    assert_eq!(data["model"]["quantization"], "Q4_K_M");
    assert_eq!(data["model"]["header_bytes_fetched"], 64 * 1024);
    assert!(
        data["estimate"]["method"]
            .as_str()
            .unwrap()
            .contains("KV cache")
    );

    // A failing nvidia-smi: no GPU, and still no error. Human output says how it estimated.
    ws.script("nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9");
    let human = ws.run(&["compatibility", "--model", "acme/llama-GGUF"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human.stdout.contains(
            "no NVIDIA GPU found (`nvidia-smi` failed with exit status: 9: NVIDIA-SMI has failed"
        ),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("estimate: weights"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("Verdict: ok"), "{}", human.stdout);

    // The huge model: warnings in the plan, E_COMPAT with --force-compat, before any download.
    let warned = ws
        .run(&["compatibility", "--model", "acme/huge-GGUF", "--json"])
        .ok();
    assert_eq!(warned["data"]["verdict"], "warnings");
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(
        plan.stdout
            .contains("# acme/huge-GGUF: compatibility: about"),
        "{}",
        plan.stdout
    );
    hub.clear_requests();
    let served_before = hub.body_bytes_served();
    let refused = ws.run(&["apply", "--force-compat", "--json"]);
    assert_eq!(refused.code, 16, "{}\n{}", refused.stdout, refused.stderr);
    assert_eq!(refused.json()["error_code"], "E_COMPAT");
    let file_requests: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.is_file_request() && r.server == ServerKind::Cdn)
        .collect();
    assert!(!file_requests.is_empty());
    assert!(
        file_requests
            .iter()
            .all(|r| r.header("range") == Some("bytes=0-65535")),
        "{file_requests:#?}"
    );
    assert!(!ws.models().join("llama-cpp").exists());
    assert_eq!(hub.body_bytes_served() - served_before, 64 * 1024);
    // `kmm download --force-compat` blocks the same way (the older tool's flag).
    let served_before = hub.body_bytes_served();
    let refused = ws.run(&[
        "download",
        "--model",
        "acme/huge-GGUF",
        "--force-compat",
        "--json",
    ]);
    assert_eq!(refused.code, 16, "{}\n{}", refused.stdout, refused.stderr);
    assert_eq!(refused.json()["error_code"], "E_COMPAT");
    assert!(!ws.models().join("llama-cpp").exists());
    assert_eq!(hub.body_bytes_served() - served_before, 64 * 1024);

    let bad = ws.run(&["compatibility", "--model", "not a repo", "--json"]);
    assert_eq!(bad.code, 18);
}

// ---------------------------------------------------------------------------------------------
// gc and path

fn small_repo(id: &str, weights: usize) -> RepoSpec {
    RepoSpec::new(id).commit(vec![
        FileSpec::regular(
            "config.json",
            format!("{{\"model_type\":\"{id}\"}}").into_bytes(),
        ),
        FileSpec::lfs("model.safetensors", vec![id.len() as u8; weights]),
    ])
}

const ALL_FOUR: &str = r#"
[models."acme/a"]
[models."acme/b"]
[models."acme/c"]
[models."acme/d"]
pinned = true
"#;

/// c and d declared (d pinned), a and b installed but no longer declared.
const TWO_DECLARED: &str = r#"
[models."acme/c"]
[models."acme/d"]
pinned = true
"#;

/// A store with four installed models and fixed last uses: d (pinned) and c (declared) oldest,
/// then b, then a (undeclared).
fn gc_store() -> (FakeHub, Workspace) {
    let hub = FakeHub::start(vec![
        small_repo("acme/a", 100_000),
        small_repo("acme/b", 200_000),
        small_repo("acme/c", 300_000),
        small_repo("acme/d", 400_000),
    ]);
    let ws = Workspace::with_local_bin(&hub, ALL_FOUR);
    ws.run(&["apply", "--json"]).ok();
    ws.manifest(TWO_DECLARED);
    ws.edit_registry(|registry| {
        for (id, when) in [
            ("acme/d", "2024-01-01T00:00:00Z"),
            ("acme/c", "2024-06-01T00:00:00Z"),
            ("acme/b", "2025-01-01T00:00:00Z"),
            ("acme/a", "2025-02-01T00:00:00Z"),
        ] {
            registry[id]["last_accessed"] = Value::from(when);
        }
    });
    (hub, ws)
}

fn store_bytes(ws: &Workspace) -> u64 {
    ws.registry()
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["total_size"].as_u64().unwrap())
        .sum()
}

fn size_of(ws: &Workspace, id: &str) -> u64 {
    ws.registry()[id]["total_size"].as_u64().unwrap()
}

/// `--quota-gb` that needs `free` bytes freed.
fn quota_needing(ws: &Workspace, free: u64) -> String {
    format!("{:.9}", (store_bytes(ws) - free) as f64 / 1e9)
}

fn evicted(doc: &Value) -> Vec<String> {
    doc["data"]["evict"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gc_dry_run_lists_lru_undeclared_first_and_changes_nothing() {
    let (_hub, ws) = gc_store();
    let before = tree_hash(ws.path());

    // A little over b's size: b is the least recently used undeclared model, then a.
    let quota = quota_needing(&ws, size_of(&ws, "acme/b") + 10);
    let doc = ws
        .run(&["gc", "--dry-run", "--quota-gb", &quota, "--json"])
        .ok();
    assert_eq!(evicted(&doc), ["acme/b", "acme/a"]);
    assert_eq!(
        doc["data"]["bytes_freed"],
        size_of(&ws, "acme/b") + size_of(&ws, "acme/a")
    );
    assert_eq!(doc["data"]["dry_run"], true);

    // Exactly b's size: b alone.
    let quota = quota_needing(&ws, size_of(&ws, "acme/b"));
    assert_eq!(
        evicted(
            &ws.run(&["gc", "--dry-run", "--quota-gb", &quota, "--json"])
                .ok()
        ),
        ["acme/b"]
    );
    let human = ws.run(&["gc", "--dry-run", "--quota-gb", &quota]);
    assert!(
        human.stdout.contains("Would evict:\n  - acme/b"),
        "{}",
        human.stdout
    );
    let quiet = ws.run(&["gc", "--dry-run", "-q", "--quota-gb", &quota]);
    assert_eq!(
        quiet.stdout, human.stdout,
        "a quiet dry run still prints its list"
    );

    // --target-gb frees bytes regardless of a quota.
    let target = format!("{:.9}", 50_000f64 / 1e9);
    assert_eq!(
        evicted(
            &ws.run(&["gc", "--dry-run", "--target-gb", &target, "--json"])
                .ok()
        ),
        ["acme/b"]
    );

    assert_eq!(tree_hash(ws.path()), before, "a dry run changed the tree");
}

#[test]
fn gc_protects_pinned_and_declared_models_and_says_e_quota_with_numbers() {
    let (_hub, ws) = gc_store();
    let before = tree_hash_but_lock(ws.path());
    let undeclared = size_of(&ws, "acme/a") + size_of(&ws, "acme/b");
    let quota = quota_needing(&ws, undeclared + 1);

    let refused = ws.run(&["gc", "--quota-gb", &quota, "--json"]);
    assert_eq!(refused.code, 17, "{}", refused.stdout);
    let doc = refused.json();
    assert_eq!(doc["error_code"], "E_QUOTA");
    let message = doc["message"].as_str().unwrap();
    assert!(
        message.contains("but only 300.0 kB can be evicted; nothing was removed"),
        "{message}"
    );
    assert!(message.contains("--evict-declared"), "{message}");
    assert_eq!(
        tree_hash_but_lock(ws.path()),
        before,
        "E_QUOTA must delete nothing"
    );

    // Declared models go only when the user says so, after the undeclared ones; pinned never.
    let doc = ws
        .run(&[
            "gc",
            "--dry-run",
            "--quota-gb",
            &quota,
            "--evict-declared",
            "--json",
        ])
        .ok();
    assert_eq!(evicted(&doc), ["acme/b", "acme/a", "acme/c"]);
    let everything = ws.run(&[
        "gc",
        "--dry-run",
        "--quota-gb",
        "0.000001",
        "--evict-declared",
        "--json",
    ]);
    assert_eq!(everything.code, 17);
    assert!(
        everything.json()["message"]
            .as_str()
            .unwrap()
            .contains("pinned models hold 400.0 kB")
    );
    assert_eq!(tree_hash_but_lock(ws.path()), before);
}

#[test]
fn gc_removes_folders_mirrors_records_and_stale_downloads_and_nothing_else() {
    let (_hub, ws) = gc_store();
    let models = ws.models();
    // A stale partial download, and one a registered model still lists (kept).
    let downloads = models.join(".kmm/downloads");
    fs_err::create_dir_all(&downloads).unwrap();
    let stale = format!("{}.part", "ab".repeat(32));
    fs_err::write(downloads.join(&stale), vec![1u8; 5_000]).unwrap();
    // Its record of completed chunks goes with it.
    let stale_state = format!("{stale}.state");
    fs_err::write(downloads.join(&stale_state), b"{}").unwrap();
    let kept_hash = ws.registry()["acme/c"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|f| f["sha256"].as_str())
        .unwrap()
        .to_string();
    fs_err::write(downloads.join(format!("{kept_hash}.part")), b"resumable").unwrap();

    let before = tree(&models);
    let quota = quota_needing(&ws, size_of(&ws, "acme/b"));
    let dry = ws
        .run(&["gc", "--dry-run", "--quota-gb", &quota, "--json"])
        .ok();
    assert_eq!(dry["data"]["downloads"][0]["name"], stale.as_str());
    assert_eq!(dry["data"]["downloads"][1]["name"], stale_state.as_str());
    assert_eq!(dry["data"]["downloads"].as_array().unwrap().len(), 2);

    let doc = ws.run(&["gc", "--quota-gb", &quota, "--json"]).ok();
    assert_eq!(evicted(&doc), ["acme/b"]);
    assert_eq!(doc["data"]["download_bytes_freed"], 5_002);
    let after = tree(&models);

    let registry = ws.registry();
    assert!(registry.get("acme/b").is_none());
    assert_eq!(registry.as_object().unwrap().len(), 3);
    let removed: Vec<&String> = before.keys().filter(|p| !after.contains_key(*p)).collect();
    let expected_removed = [
        format!(".kmm/downloads/{stale}"),
        format!(".kmm/downloads/{stale_state}"),
        "configs/b.json".to_string(),
        "transformers/acme/b/".to_string(),
        "transformers/acme/b/config.json".to_string(),
        "transformers/acme/b/model.safetensors".to_string(),
    ];
    assert_eq!(removed, expected_removed.iter().collect::<Vec<_>>());
    // Everything else is byte-identical (the registry, the durability journal, which lets go
    // of the removed files, and kmm's internal folders aside).
    for (path, hash) in &after {
        if path == "model_registry.json"
            || path.starts_with(".kmm/") && path.ends_with('/')
            || path == ".kmm/lock"
            || path == ".kmm/unsynced.json"
        {
            continue;
        }
        assert_eq!(before.get(path), Some(hash), "{path} changed or appeared");
    }
    assert!(downloads.join(format!("{kept_hash}.part")).exists());
}

#[test]
fn path_prints_the_install_path_and_moves_the_model_to_the_back_of_the_lru_queue() {
    let (_hub, ws) = gc_store();
    let quota = quota_needing(&ws, size_of(&ws, "acme/b"));
    assert_eq!(
        evicted(
            &ws.run(&["gc", "--dry-run", "--quota-gb", &quota, "--json"])
                .ok()
        ),
        ["acme/b"]
    );

    let run = ws.run(&["path", "--model", "acme/b", "-q"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let expected = ws.models().join("transformers/acme/b");
    assert_eq!(run.stdout.trim(), expected.to_str().unwrap());
    let recorded = ws.registry()["acme/b"]["last_accessed"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(recorded.as_str() > "2025-02-01T00:00:00Z", "{recorded}");

    // Now a is the least recently used undeclared model.
    let quota = quota_needing(&ws, size_of(&ws, "acme/a"));
    assert_eq!(
        evicted(
            &ws.run(&["gc", "--dry-run", "--quota-gb", &quota, "--json"])
                .ok()
        ),
        ["acme/a"]
    );

    let missing = ws.run(&["path", "--model", "acme/nope", "--json"]);
    assert_eq!(missing.code, 19);
    // A fresh install records its time as the last use.
    assert!(ws.registry()["acme/c"].get("last_accessed").is_some());
}

#[test]
fn quota_gb_in_the_manifest_makes_the_plan_evict_lru_undeclared_models() {
    let (_hub, ws) = gc_store();
    let quota = quota_needing(&ws, size_of(&ws, "acme/b"));
    ws.manifest(&format!("[settings]\nquota_gb = {quota}\n{TWO_DECLARED}"));
    let plan = ws.run(&["plan", "--json"]).ok();
    let ids: Vec<&str> = plan["data"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["remove:acme/b", "unregister:acme/b"]);
    let text = ws.run(&["plan"]).stdout;
    assert!(text.contains("- acme/b"), "{text}");

    let apply = ws.run(&["apply", "--json"]).ok();
    assert_eq!(
        apply["data"]["report"]["models_removed"],
        serde_json::json!(["acme/b"])
    );
    assert!(!ws.models().join("transformers/acme/b").exists());

    // Impossible without declared models: E_QUOTA, nothing changes.
    let before = tree_hash_but_lock(ws.path());
    ws.manifest(&format!("[settings]\nquota_gb = 0.0001\n{TWO_DECLARED}"));
    let refused = ws.run(&["apply", "--json"]);
    assert_eq!(refused.code, 17, "{}", refused.stdout);
    // (the manifest edit is the only change)
    ws.manifest(&format!("[settings]\nquota_gb = {quota}\n{TWO_DECLARED}"));
    assert_eq!(tree_hash_but_lock(ws.path()), before);
}

// ---------------------------------------------------------------------------------------------
// ensure

fn distilbert_repo() -> RepoSpec {
    RepoSpec::new("distilbert/distilbert-base-uncased")
        .commit(vec![
            FileSpec::regular("config.json", br#"{"model_type":"distilbert","n_layers":6,"dim":768,"n_heads":12,"max_position_embeddings":512}"#.to_vec()),
            FileSpec::regular("vocab.txt", b"[PAD]\n[UNK]\n".to_vec()),
            FileSpec::lfs("model.safetensors", safetensors(4).0),
        ])
        .alias("distilbert-base-uncased")
}

#[test]
fn ensure_distilbert_installs_the_pinned_snapshot_through_the_engine() {
    let hub = FakeHub::start(vec![distilbert_repo(), small_repo("acme/a", 1_000)]);
    let ws = Workspace::with_local_bin(&hub, "[models.\"acme/a\"]\n");
    let doc = ws.run(&["ensure", "--distilbert", "--json"]).ok();
    assert_eq!(doc["data"]["baselines"][0]["status"], "installed");
    let dir = ws.models().join("distilbert-base-uncased");
    assert!(dir.join("config.json").is_file() && dir.join("model.safetensors").is_file());
    assert_eq!(ws.registry()["distilbert-base-uncased"]["pinned"], true);
    // Only the baseline: the declared model is apply's business.
    assert!(!ws.models().join("transformers/acme/a").exists());
    // As if the machine had crashed and rebooted since the download: the durability journal
    // names its files under an earlier boot, and the next ensure (which hashes them) lets go.
    let reboot = has_boot_id();
    if reboot {
        pretend_a_reboot(&ws.models());
    }
    let again = ws.run(&["ensure", "--distilbert", "--json"]).ok();
    assert_eq!(again["data"]["baselines"][0]["status"], "present");
    if reboot {
        let journal = fs_err::read_to_string(journal_path(&ws.models())).unwrap_or_default();
        assert!(!journal.contains("an-earlier-boot"), "{journal}");
    }

    // [baselines] distilbert = true: the plan shows it like a declared model.
    let ws = Workspace::with_local_bin(&hub, "[baselines]\ndistilbert = true\n");
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("+ distilbert-base-uncased"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("-> models/distilbert-base-uncased"),
        "{}",
        plan.stdout
    );
    ws.run(&["apply", "--json"]).ok();
    assert_eq!(ws.registry()["distilbert-base-uncased"]["pinned"], true);
    assert_eq!(ws.run(&["plan", "--detailed-exitcode"]).code, 0);
}

#[test]
fn ensure_skips_python_baselines_when_packages_are_missing() {
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::with_local_bin(&hub, "[baselines]\nspacy = true\nbasic_cls = true\n");
    let python = ws.script(
        "python-without-packages",
        "echo \"ModuleNotFoundError: No module named 'sklearn'\" >&2\nexit 1",
    );
    let python = python.to_str().unwrap();
    // No flags: the manifest's [baselines] decide.
    let doc = ws.run(&["ensure", "--python", python, "--json"]).ok();
    let results = doc["data"]["baselines"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r["status"] == "skipped"),
        "{results:#?}"
    );
    assert!(
        results[0]["message"]
            .as_str()
            .unwrap()
            .contains("spaCy is not installed")
    );
    assert!(
        results[1]["message"]
            .as_str()
            .unwrap()
            .contains("No module named 'sklearn'")
    );
    assert!(!ws.models().join("basic_cls").exists());

    // The plan notes them; apply reports the skip and succeeds.
    let plan = ws.run(&["plan"]);
    assert!(
        plan.stdout.contains("# basic_cls: baseline missing"),
        "{}",
        plan.stdout
    );
    let apply = ws.run_with(&["apply"], &[("KMM_PYTHON", python)]);
    assert_eq!(apply.code, 0, "{}", apply.stderr);
    assert!(
        apply.stderr.contains("baseline basic_cls: skipped"),
        "{}",
        apply.stderr
    );

    let nothing = ws
        .run(&[
            "ensure",
            "--python",
            "/nonexistent/python3",
            "--basic-cls",
            "--json",
        ])
        .ok();
    assert_eq!(nothing["data"]["baselines"][0]["status"], "skipped");
    let none = Workspace::with_local_bin(&hub, "");
    assert_eq!(none.run(&["ensure", "--json"]).code, 18);
}

#[test]
fn ensure_spacy_runs_spacy_download_and_reports_failures_with_the_output_tail() {
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::with_local_bin(&hub, "");
    let marker = ws.path().join("downloaded");
    // A Python whose spaCy imports and whose pipeline is missing until downloaded.
    let python = ws.script(
        "python-with-spacy",
        &format!(
            "if [ \"$1\" = -c ] && [ \"$2\" = 'import spacy' ]; then exit 0; fi\n\
             if [ \"$1\" = -c ]; then [ -e '{m}' ]; exit $?; fi\n\
             if [ \"$*\" = '-m spacy download en_core_web_trf' ]; then echo 'Successfully installed en_core_web_trf'; touch '{m}'; exit 0; fi\n\
             exit 9",
            m = marker.display()
        ),
    );
    let python = python.to_str().unwrap();
    let doc = ws
        .run(&["ensure", "--spacy", "--python", python, "--json"])
        .ok();
    assert_eq!(doc["data"]["baselines"][0]["status"], "installed");
    assert!(marker.exists());
    let doc = ws
        .run(&["ensure", "--spacy", "--python", python, "--json"])
        .ok();
    assert_eq!(doc["data"]["baselines"][0]["status"], "present");

    let failing = ws.script(
        "python-failing-download",
        "if [ \"$1\" = -c ] && [ \"$2\" = 'import spacy' ]; then exit 0; fi\n\
         if [ \"$1\" = -c ]; then exit 1; fi\n\
         echo 'Collecting en_core_web_trf'; echo 'ERROR: network unreachable' >&2; exit 1",
    );
    let run = ws.run(&[
        "ensure",
        "--spacy",
        "--python",
        failing.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 16, "{}", run.stdout);
    let message = run.json()["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("spacy download en_core_web_trf"),
        "{message}"
    );
    let human = ws.run(&["ensure", "--spacy", "--python", failing.to_str().unwrap()]);
    assert!(
        human
            .stderr
            .contains("Caused by: ERROR: network unreachable"),
        "{}",
        human.stderr
    );
}

/// A venv with the pinned scikit-learn (tests/ensure/requirements.txt), made once per target.
fn sklearn_python() -> Option<PathBuf> {
    if crate::interop::interop_skip_reason().is_some() {
        eprintln!("KMM_SKIP_INTEROP=1: skipping the scikit-learn venv");
        return None;
    }
    let venv = crate::support::pinned_venv(
        "ensure-venv",
        "tests/ensure/requirements.txt",
        " (set KMM_SKIP_INTEROP=1 offline)",
    );
    Some(venv.join("bin/python"))
}

#[test]
fn ensure_basic_cls_writes_joblib_files_that_load_and_predict_in_python() {
    let Some(python) = sklearn_python() else {
        return;
    };
    let hub = FakeHub::start(vec![]);
    let ws = Workspace::with_local_bin(&hub, "");
    let doc = ws
        .run_with(
            &["ensure", "--basic-cls", "--json"],
            &[("KMM_PYTHON", python.to_str().unwrap())],
        )
        .ok();
    let result = &doc["data"]["baselines"][0];
    assert_eq!(result["status"], "installed", "{result}");
    let dir = ws.models().join("basic_cls");
    let check = Process::new(&python)
        .arg("-c")
        .arg(
            "import sys, joblib\n\
             c = joblib.load(sys.argv[1] + '/classifier.joblib')\n\
             v = joblib.load(sys.argv[1] + '/vectorizer.joblib')\n\
             print(','.join(c.predict(v.transform(['i was charged twice for my invoice', 'the app crashes with an error']))))",
        )
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "billing,technical"
    );
    // Built in staging and renamed in: nothing else left behind.
    let mut names: Vec<String> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["classifier.joblib", "vectorizer.joblib"]);
    let staging = ws.models().join(".kmm/staging");
    assert_eq!(fs_err::read_dir(&staging).unwrap().count(), 0);
    let again = ws
        .run_with(
            &["ensure", "--basic-cls", "--json"],
            &[("KMM_PYTHON", python.to_str().unwrap())],
        )
        .ok();
    assert_eq!(again["data"]["baselines"][0]["status"], "present");
}

/// `cargo test --test it machine::measure_header_reads -- --ignored --nocapture`: bytes and
/// requests to read a realistic GGUF header (a 128k-token vocabulary, as in Llama 3) from a
/// 64 MiB file.
#[test]
#[ignore = "measurement, not a check"]
fn measure_header_reads() {
    let file_len = 64 * MB;
    let bytes = llama_gguf(128_000, file_len);
    let header_len = kmm::compat::gguf::parse(&bytes).unwrap().header_len;
    let hub = FakeHub::start(vec![gguf_repo("acme/llama3-GGUF", "m.Q4_K_M.gguf", bytes)]);
    let started = std::time::Instant::now();
    let facts = inspect(&hub, "acme/llama3-GGUF");
    let elapsed = started.elapsed();
    let ranges = hub
        .requests()
        .into_iter()
        .filter(|r| r.server == ServerKind::Cdn)
        .count();
    println!(
        "GGUF header {header_len} bytes in a {file_len}-byte file: {ranges} ranged requests, {} bytes read ({:.1}% of the file), {elapsed:?} (including resolve); layers {:?}",
        hub.body_bytes_served(),
        hub.body_bytes_served() as f64 * 100.0 / file_len as f64,
        facts.layers
    );
}
