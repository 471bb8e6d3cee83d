//! Real-client interop: the fake hub must satisfy the real `huggingface_hub` (pinned in
//! `tests/interop/requirements.txt`), or every test built on it proves nothing.
//!
//! The test makes (or reuses) a venv at `<target>/interop-venv`, serves `examples/hub` plus two
//! generated repos (a private one and a 12 MiB LFS file for resume), arms a `DropAfter` fault,
//! runs `tests/interop/hf_client_check.py` and checks its report: every check passed, every byte
//! the client wrote equals the fixture's, and the request log shows what the client did (pages
//! followed, a ranged resume, no token sent to the CDN).
//!
//! `KMM_SKIP_INTEROP=1` skips it (offline machines); otherwise a missing `python3` or a failed
//! `pip install` fails the test. `snapshot_with_real_client` lets other tests compare kmm's
//! bytes with the real client's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

use crate::fake_hub::{
    FakeHub, Fault, FileSpec, PageSizes, RepoSpec, ServerKind, fixtures, sha256_hex,
};

const REQUIREMENTS: &str = "tests/interop/requirements.txt";
const SCRIPT: &str = "tests/interop/hf_client_check.py";
const PRIVATE_REPO: &str = "interop/private-model";
const PRIVATE_TOKEN: &str = "hf_private_token";
const RESUME_REPO: &str = "interop/resume-check";
const RESUME_FILE: &str = "big.bin";
/// huggingface_hub reads 10 MiB at a time and resumes from the last whole read, so a drop after
/// 11 MiB of a 12 MiB file must be followed by `Range: bytes=10485760-`.
const RESUME_SIZE: usize = 12 * 1024 * 1024;
const DROP_AFTER: u64 = 11 * 1024 * 1024;
const CLIENT_READ_SIZE: u64 = 10 * 1024 * 1024;

/// One venv per process at a time: parallel tests must not build it twice.
static VENV: Mutex<()> = Mutex::new(());

#[derive(Debug, Deserialize)]
struct Report {
    client: BTreeMap<String, String>,
    checks: Vec<Check>,
    files: Vec<ClientFile>,
    passed: bool,
}

#[derive(Debug, Deserialize)]
struct Check {
    name: String,
    passed: bool,
    detail: String,
    #[serde(default)]
    traceback: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ClientFile {
    check: String,
    repo: String,
    path: String,
    size: u64,
    sha256: String,
}

/// Why the interop tests are skipped, if they are.
pub(crate) fn interop_skip_reason() -> Option<String> {
    (std::env::var("KMM_SKIP_INTEROP").as_deref() == Ok("1"))
        .then(|| "KMM_SKIP_INTEROP=1: skipping the real huggingface_hub interop test".to_string())
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pinned_client_version() -> String {
    let requirements = fs_err::read_to_string(manifest_dir().join(REQUIREMENTS)).unwrap();
    requirements
        .lines()
        .find_map(|line| line.trim().strip_prefix("huggingface_hub=="))
        .map(|version| version.trim().to_string())
        .expect("tests/interop/requirements.txt pins huggingface_hub==X")
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn installed_client_version(python: &Path) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import huggingface_hub; print(huggingface_hub.__version__)",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The venv's python, with the pinned client installed (reused when it already is).
pub(crate) fn ensure_venv() -> PathBuf {
    let _guard = VENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pinned = pinned_client_version();
    let venv = crate::support::target_dir().join("interop-venv");
    let python = venv_python(&venv);
    if installed_client_version(&python).as_deref() == Some(pinned.as_str()) {
        return python;
    }
    eprintln!(
        "interop: creating {} with huggingface_hub=={pinned}",
        venv.display()
    );
    let created = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg("--clear")
        .arg(&venv)
        .output();
    match created {
        Err(error) => panic!(
            "interop: cannot run `python3` ({error}). Install Python 3 with the venv module, or set KMM_SKIP_INTEROP=1 \
             on a machine that cannot run the real-client test"
        ),
        Ok(output) if !output.status.success() => panic!(
            "interop: `python3 -m venv {}` failed:\n{}",
            venv.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
        Ok(_) => {}
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-r",
        ])
        .arg(manifest_dir().join(REQUIREMENTS))
        .output()
        .expect("interop: run pip from the new venv");
    assert!(
        installed.status.success(),
        "interop: `pip install -r {REQUIREMENTS}` failed (PyPI unreachable? set KMM_SKIP_INTEROP=1 offline):\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    let version = installed_client_version(&python);
    assert_eq!(
        version.as_deref(),
        Some(pinned.as_str()),
        "interop: the venv does not import the pinned client"
    );
    python
}

/// Runs the check script; returns its report and how long it took.
fn run_script(
    python: &Path,
    hub: &FakeHub,
    out: &Path,
    args: &[&str],
) -> (Report, std::time::Duration) {
    let started = Instant::now();
    let output = Command::new(python)
        .arg(manifest_dir().join(SCRIPT))
        .arg("--endpoint")
        .arg(hub.url())
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("interop: run the check script");
    let elapsed = started.elapsed();
    let report_path = out.join("report.json");
    let Ok(text) = fs_err::read_to_string(&report_path) else {
        panic!(
            "interop: the script wrote no report (exit {:?}):\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let report: Report = serde_json::from_str(&text).expect("interop: report.json is a report");
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|check| !check.passed)
        .map(|check| {
            format!(
                "{}: {}\n{}",
                check.name,
                check.detail,
                check.traceback.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "interop: real client checks failed:\n{}",
        failed.join("\n")
    );
    assert!(
        report.passed && output.status.success(),
        "interop: script failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (report, elapsed)
}

/// Downloads `repo` at `revision` with the real client's `snapshot_download(local_dir=dest)`.
/// Returns repo path -> sha256 of what the client wrote. Panics if the client fails; callers
/// should check `interop_skip_reason()` first.
pub(crate) fn snapshot_with_real_client(
    hub: &FakeHub,
    repo: &str,
    revision: &str,
    dest: &Path,
) -> BTreeMap<String, String> {
    let python = ensure_venv();
    let work = tempfile::tempdir().unwrap();
    let dest = dest.to_str().expect("utf-8 destination");
    let (report, _) = run_script(
        &python,
        hub,
        work.path(),
        &[
            "--snapshot",
            repo,
            "--revision",
            revision,
            "--local-dir",
            dest,
        ],
    );
    report
        .files
        .into_iter()
        .map(|file| (file.path, file.sha256))
        .collect()
}

/// Deterministic bytes that do not compress or repeat (xorshift64).
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
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

fn interop_repos() -> Vec<RepoSpec> {
    let mut repos = fixtures::load_dir(&manifest_dir().join("examples/hub"));
    repos.push(
        RepoSpec::new(PRIVATE_REPO)
            .commit(vec![FileSpec::regular(
                "config.json",
                br#"{"model_type":"bert"}"#.to_vec(),
            )])
            .private()
            .allow_token(PRIVATE_TOKEN),
    );
    repos.push(RepoSpec::new(RESUME_REPO).commit(vec![
        FileSpec::regular("README.md", b"# resume check\n".to_vec()),
        FileSpec::lfs(
            RESUME_FILE,
            pseudo_random(RESUME_SIZE, 0x9E37_79B9_7F4A_7C15),
        ),
    ]));
    repos
}

/// Maps an id the client asked for (maybe a legacy alias) to the spec that serves it.
fn spec_for<'a>(repos: &'a [RepoSpec], asked: &str) -> &'a RepoSpec {
    repos
        .iter()
        .find(|repo| repo.id == asked || repo.aliases.iter().any(|alias| alias == asked))
        .unwrap_or_else(|| panic!("the client reported a repo the hub does not serve: {asked}"))
}

#[test]
fn real_client_passes_every_check_and_gets_the_fixture_bytes() {
    if let Some(reason) = interop_skip_reason() {
        eprintln!("{reason}");
        return;
    }
    let venv_started = Instant::now();
    let python = ensure_venv();
    let venv_time = venv_started.elapsed();

    let repos = interop_repos();
    let hub = FakeHub::start(repos.clone());
    // Small pages, so that a handful of repos and files still spans several pages.
    hub.set_page_sizes(PageSizes {
        models: 2,
        tree: 3,
        tree_expand: 2,
    });
    hub.add_fault(Fault::DropAfter {
        path_contains: RESUME_FILE.to_string(),
        bytes: DROP_AFTER,
        times: 1,
    });

    let listed: Vec<&str> = repos
        .iter()
        .filter(|repo| !repo.private)
        .map(|repo| repo.id.as_str())
        .collect();
    let plan = serde_json::json!({
        "list_models": {"limit": 4, "expect_ids": listed, "author": "acme"},
        "private": {"repo": PRIVATE_REPO, "filename": "config.json", "token": PRIVATE_TOKEN},
        "resume": {"repo": RESUME_REPO, "filename": RESUME_FILE},
    });
    let work = tempfile::tempdir().unwrap();
    let plan_path = work.path().join("plan.json");
    fs_err::write(&plan_path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let out = work.path().join("out");
    let (report, script_time) = run_script(
        &python,
        &hub,
        &out,
        &["--plan", plan_path.to_str().unwrap()],
    );

    let pinned = pinned_client_version();
    assert_eq!(report.client.get("huggingface_hub"), Some(&pinned));
    let names: Vec<&str> = report
        .checks
        .iter()
        .map(|check| check.name.as_str())
        .collect();
    for expected in [
        "snapshot_cache:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        "snapshot_cache:acme/tiny-bert",
        "snapshot_cache:distilbert-base-uncased",
        "snapshot_cache:gpt2",
        "snapshot_local_dir:acme/tiny-bert",
        "hf_hub_download",
        "hf_hub_download_tag",
        "list_models",
        "model_info_files_metadata",
        "gated_without_token",
        "gated_with_token",
        "private_repo",
        "error_mapping",
        "resume_after_drop",
    ] {
        assert!(
            names.contains(&expected),
            "check {expected} did not run; ran {names:?}"
        );
    }

    // Every byte the client wrote is the fixture's, and each snapshot is complete.
    for file in &report.files {
        let spec = spec_for(&repos, &file.repo);
        let fixture = spec
            .head_files()
            .iter()
            .find(|f| f.path == file.path)
            .unwrap_or_else(|| {
                panic!(
                    "{}: the client wrote {} which the repo lacks",
                    file.repo, file.path
                )
            });
        assert_eq!(
            file.size,
            fixture.content.len() as u64,
            "{} {} size",
            file.repo,
            file.path
        );
        assert_eq!(
            file.sha256,
            sha256_hex(&fixture.content),
            "{} {} bytes ({})",
            file.repo,
            file.path,
            file.check
        );
    }
    for check in ["snapshot_cache", "snapshot_local_dir"] {
        let mut by_repo: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for file in report.files.iter().filter(|f| f.check == check) {
            by_repo
                .entry(file.repo.as_str())
                .or_default()
                .push(file.path.as_str());
        }
        for (asked, mut paths) in by_repo {
            let mut expected: Vec<&str> = spec_for(&repos, asked)
                .head_files()
                .iter()
                .map(|f| f.path.as_str())
                .collect();
            paths.sort();
            expected.sort();
            assert_eq!(paths, expected, "{check} of {asked} is incomplete");
        }
    }

    let log = hub.requests();
    // The requests came from the pinned client.
    let agent = format!("hf_hub/{pinned}");
    assert!(
        log.iter()
            .filter(|r| r.server == ServerKind::Api)
            .all(|r| r.header("user-agent").is_some_and(|ua| ua.contains(&agent)))
    );
    // Pagination was followed through the Link header, for listings and trees.
    assert!(
        log.iter()
            .any(|r| r.path == "/api/models" && r.query.contains("cursor=") && r.status == 200)
    );
    assert!(
        log.iter()
            .any(|r| r.path.contains("/tree/") && r.query.contains("cursor=") && r.status == 200)
    );
    // Legacy ids were redirected, then served under the canonical id.
    assert!(
        log.iter()
            .any(|r| r.path.starts_with("/api/models/gpt2/") && r.status == 307)
    );
    // The token never left the hub's origin, and LFS bytes came from the CDN.
    let cdn: Vec<_> = log.iter().filter(|r| r.server == ServerKind::Cdn).collect();
    assert!(!cdn.is_empty());
    assert!(
        cdn.iter().all(|r| r.header("authorization").is_none()),
        "a token was sent to the CDN origin"
    );
    // The dropped download was resumed from the client's last whole read, not restarted.
    let resume: Vec<_> = cdn
        .iter()
        .filter(|r| r.path.ends_with(RESUME_FILE) && r.method == "GET")
        .collect();
    assert_eq!(
        resume.len(),
        2,
        "expected one dropped and one resumed GET: {resume:#?}"
    );
    assert_eq!(resume[0].header("range"), None);
    assert_eq!(
        resume[1].header("range"),
        Some(format!("bytes={CLIENT_READ_SIZE}-").as_str())
    );
    assert_eq!(resume[1].status, 206);

    eprintln!(
        "interop: huggingface_hub {} (python {}): venv ready in {:.1?}, {} checks in {:.1?}",
        pinned,
        report.client.get("python").map_or("?", String::as_str),
        venv_time,
        report.checks.len(),
        script_time
    );
    for check in &report.checks {
        eprintln!("  {}: {}", check.name, check.detail);
    }
}

#[test]
fn snapshot_helper_writes_the_fixture_bytes() {
    if let Some(reason) = interop_skip_reason() {
        eprintln!("{reason}");
        return;
    }
    let repos = fixtures::load_dir(&manifest_dir().join("examples/hub"));
    let hub = FakeHub::start(repos.clone());
    let dest = tempfile::tempdir().unwrap();
    let written = snapshot_with_real_client(&hub, "acme/tiny-bert", "v1.0", dest.path());
    let spec = spec_for(&repos, "acme/tiny-bert");
    let expected: BTreeMap<String, String> = spec
        .head_files()
        .iter()
        .map(|f| (f.path.clone(), sha256_hex(&f.content)))
        .collect();
    assert_eq!(written, expected);
    for file in spec.head_files() {
        assert_eq!(
            fs_err::read(dest.path().join(&file.path)).unwrap(),
            file.content.as_ref(),
            "{}",
            file.path
        );
    }
}

#[test]
fn fixture_generator_reproduces_the_committed_bytes() {
    if let Some(reason) = interop_skip_reason() {
        eprintln!("{reason}");
        return;
    }
    let committed = manifest_dir().join("examples/hub");
    let regenerated = tempfile::tempdir().unwrap();
    let status = Command::new("python3")
        .arg(committed.join("generate.py"))
        .arg("--out")
        .arg(regenerated.path())
        .status()
        .expect("run python3 examples/hub/generate.py (set KMM_SKIP_INTEROP=1 without Python)");
    assert!(status.success());
    let fresh = fixtures::load_dir(regenerated.path());
    let shipped = fixtures::load_dir(&committed);
    let summary = |repos: &[RepoSpec]| -> Vec<(String, String)> {
        repos
            .iter()
            .map(|repo| (repo.id.clone(), repo.head()))
            .collect()
    };
    assert_eq!(
        summary(&fresh),
        summary(&shipped),
        "examples/hub differs from what generate.py writes"
    );
}
