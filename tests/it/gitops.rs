//! GitOps end to end, with the real `kmm` binary against the fake hub: kari-models.lock
//! (`lock`, `--locked`, `--frozen`, determinism), saved plans (`plan --out`, `apply FILE`,
//! staleness, `show`), markdown and `--diff` output (snapshots), `kmm watch` as a real process
//! reacting to real file edits and signals, the example CI scripts, and real outputs validated
//! against the committed JSON Schemas.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_hub::{FakeHub, Fault, FileSpec, RepoSpec};
use crate::support::Workdir as Workspace;
use crate::support::kmm_command;

fn bert_files(weights: &[u8]) -> Vec<FileSpec> {
    vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", weights.repeat(20_000)),
        FileSpec::regular("tokenizer/vocab.txt", b"[PAD]\n[UNK]\nhello\n".to_vec()),
    ]
}

fn bert_repo() -> RepoSpec {
    RepoSpec::new("acme/tiny-bert").commit(bert_files(b"weights-v1"))
}

fn bert_repo_v2() -> RepoSpec {
    RepoSpec::new("acme/tiny-bert")
        .commit(bert_files(b"weights-v1"))
        .commit(bert_files(b"weights-v2"))
}

fn gpt2_repo() -> RepoSpec {
    RepoSpec::new("openai-community/gpt2").commit(vec![
        FileSpec::regular("config.json", br#"{"model_type":"gpt2"}"#.to_vec()),
        FileSpec::lfs("model.safetensors", vec![5u8; 150_000]),
    ])
}

fn gguf_repo() -> RepoSpec {
    RepoSpec::new("acme/small-gguf").commit(vec![
        FileSpec::regular("README.md", b"# small\n".to_vec()),
        FileSpec::lfs("small.Q4_K_M.gguf", vec![7u8; 400_000]),
    ])
}

fn hub() -> FakeHub {
    FakeHub::start(vec![bert_repo(), gpt2_repo(), gguf_repo()])
}

const TWO: &str = r#"
[models."acme/tiny-bert"]

[models."openai-community/gpt2"]
"#;

const THREE: &str = r#"
[models."acme/tiny-bert"]

[models."openai-community/gpt2"]

[models."acme/small-gguf"]
"#;

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: Value = serde_json::from_str(&fs_err::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn assert_valid(schema_name: &str, instance: &Value) {
    let validator = schema(schema_name);
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema_name}: {errors:#?}");
}

#[test]
fn plan_writes_the_lock_and_locked_offline_plans_are_byte_identical_without_requests() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    assert!(!ws.file("kari-models.lock").exists());
    ws.ok(&["plan"]);
    let lock = ws.read("kari-models.lock");
    assert!(lock.contains("[models.\"acme/tiny-bert\"]"), "{lock}");

    hub.clear_requests();
    let first = ws.ok(&["plan", "--locked", "--offline", "--json"]);
    let second = ws.ok(&["plan", "--locked", "--offline", "--json"]);
    assert_eq!(first.stdout, second.stdout);
    let text_first = ws.ok(&["plan", "--locked", "--offline"]);
    let text_second = ws.ok(&["plan", "--locked", "--offline"]);
    assert_eq!(text_first.stdout, text_second.stdout);
    // With the network allowed, --frozen asks the hub nothing either.
    ws.ok(&["plan", "--frozen"]);
    assert!(hub.requests().is_empty(), "{:#?}", hub.requests());
    assert_eq!(ws.read("kari-models.lock"), lock);

    let data = &first.json()["data"];
    assert_eq!(data["summary"]["to_add"], 2);
    assert_valid("plan-output.schema.json", data);
    let lock_doc: Value =
        serde_json::to_value(toml::from_str::<toml::Value>(&lock).unwrap()).unwrap();
    assert_valid("lock.schema.json", &lock_doc);

    // And apply from the lock installs what it says.
    let applied = ws.ok(&["apply", "--locked", "--json"]);
    assert_valid("apply-output.schema.json", &applied.json()["data"]);
    let plan = ws.run(&["plan", "--locked", "--offline", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
}

#[test]
fn locked_and_frozen_refuse_a_lock_that_disagrees_naming_the_models() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    let missing = ws.run(&["plan", "--locked"]);
    assert_eq!(missing.code, 15, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("kari-models.lock` does not exist"),
        "{}",
        missing.stderr
    );

    ws.ok(&["lock"]);
    let lock = ws.read("kari-models.lock");
    ws.write(
        "kari-models.toml",
        "[models.\"acme/tiny-bert\"]\ninclude = [\"*.json\"]\n[models.\"acme/small-gguf\"]\n",
    );
    for flag in ["--locked", "--frozen"] {
        hub.clear_requests();
        let run = ws.run(&["plan", flag, "--json"]);
        assert_eq!(run.code, 15, "{}", run.stdout);
        let doc = run.json();
        assert_eq!(doc["error_code"], "E_SCHEMA");
        let message = doc["message"].as_str().unwrap();
        for expected in [
            "`acme/small-gguf` (not in the lock)",
            "`acme/tiny-bert` (include/exclude changed)",
            "`openai-community/gpt2` (locked but no longer declared)",
        ] {
            assert!(message.contains(expected), "{message}");
        }
        assert!(hub.requests().is_empty());
        assert_eq!(
            ws.read("kari-models.lock"),
            lock,
            "{flag} never writes the lock"
        );
        assert!(!ws.file("models/model_registry.json").exists());
    }
    // Without the flags, plan brings the lock up to date, and then --locked passes.
    ws.ok(&["plan"]);
    assert_ne!(ws.read("kari-models.lock"), lock);
    ws.ok(&["plan", "--locked"]);
}

#[test]
fn the_lock_pins_branches_until_lock_update_which_changes_only_that_model() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    ws.ok(&["apply"]);
    let before = ws.read("kari-models.lock");

    // Upstream moves `main`; the lock keeps the installed commit.
    hub.put_repo(bert_repo_v2());
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
    assert_eq!(ws.read("kari-models.lock"), before);

    let updated = ws
        .ok(&["lock", "--update", "acme/tiny-bert", "--json"])
        .json();
    assert_eq!(
        updated["data"]["changed"],
        serde_json::json!(["acme/tiny-bert"])
    );
    let after = ws.read("kari-models.lock");
    let diff = similar::TextDiff::from_lines(&before, &after);
    let changed: Vec<String> = diff
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .map(|c| c.value().to_string())
        .collect();
    // Only bert's commit and its weights' line change.
    assert_eq!(changed.len(), 4, "{changed:#?}");
    assert!(
        changed
            .iter()
            .all(|line| line.starts_with("commit = ") || line.contains("model.safetensors"))
    );
    let gpt2 = |text: &str| {
        text.split("[models.\"openai-community/gpt2\"]")
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(gpt2(&before), gpt2(&after));

    let plan = ws.run(&["plan", "--locked", "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "{}", plan.stderr);
    assert!(plan.stdout.contains("~ acme/tiny-bert"), "{}", plan.stdout);

    let unknown = ws.run(&["lock", "--update", "nope/nope"]);
    assert_eq!(unknown.code, 18, "{}", unknown.stderr);
}

#[test]
fn a_saved_plan_applies_exactly_and_is_refused_when_stale() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    ws.ok(&["plan", "--out", "plan.json"]);
    let saved: Value = serde_json::from_str(&ws.read("plan.json")).unwrap();
    assert_eq!(saved["format_version"], 1);
    assert_valid("plan.schema.json", &saved);

    // `show` renders the saved plan as plan would.
    let shown = ws.ok(&["show", "plan.json", "--format", "markdown"]);
    let planned = ws.ok(&["plan", "--format", "markdown"]);
    assert_eq!(shown.stdout, planned.stdout);
    let shown_json = ws.ok(&["show", "plan.json", "--format", "json"]);
    assert_eq!(shown_json.stdout, ws.read("plan.json"));

    // Applying it needs no resolution: only file downloads.
    hub.clear_requests();
    let applied = ws.ok(&["apply", "plan.json", "--json"]).json();
    assert_eq!(
        applied["data"]["report"]["models_installed"],
        serde_json::json!(["acme/tiny-bert", "openai-community/gpt2"])
    );
    assert!(
        hub.requests().iter().all(|r| r.is_file_request()),
        "{:#?}",
        hub.requests()
    );

    // Applied once, the registry changed: the same plan is now stale.
    let again = ws.run(&["apply", "plan.json"]);
    assert_eq!(again.code, 15, "{}", again.stderr);
    assert!(again.stderr.contains("stale plan"), "{}", again.stderr);
    assert!(again.stderr.contains("registry"), "{}", again.stderr);

    // A manifest change after planning: refused, and nothing is touched.
    ws.write("kari-models.toml", THREE);
    ws.ok(&["plan", "--out", "plan2.json"]);
    ws.write("kari-models.toml", TWO);
    let registry_before = ws.read("models/model_registry.json");
    hub.clear_requests();
    let stale = ws.run(&["apply", "plan2.json", "--json"]);
    assert_eq!(stale.code, 15);
    let message = stale.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("the manifest changed"), "{message}");
    assert!(hub.requests().is_empty());
    assert_eq!(ws.read("models/model_registry.json"), registry_before);
    assert!(!ws.file("models/llama-cpp/acme/small-gguf").exists());

    // A file changed in the store: stale too.
    ws.ok(&["plan", "--out", "plan3.json"]);
    fs_err::write(
        ws.file("models/transformers/acme/tiny-bert/config.json"),
        "{}",
    )
    .unwrap();
    let drift = ws.run(&["apply", "plan3.json"]);
    assert_eq!(drift.code, 15);
    assert!(drift.stderr.contains("store changed"), "{}", drift.stderr);

    let garbage = {
        ws.write("bad.json", "{\"plan\": 3}");
        ws.run(&["apply", "bad.json"])
    };
    assert_eq!(garbage.code, 15, "{}", garbage.stderr);
}

/// Installed: bert v1 and gpt2. Then bert moves to v2, gpt2 is dropped (prune), and a GGUF
/// model is added: every row kind at once.
fn mixed_workspace(hub: &FakeHub) -> Workspace {
    let ws = Workspace::new(hub, TWO);
    ws.ok(&["apply"]);
    hub.put_repo(bert_repo_v2());
    ws.write(
        "kari-models.toml",
        "[settings]\nprune = true\nquota_gb = 0.0007\n\n[models.\"acme/tiny-bert\"]\n\n[models.\"acme/small-gguf\"]\nlicense = { accepted = true, user_id = \"ops@example.com\", license_type = \"apache-2.0\" }\n",
    );
    ws.ok(&["lock", "--update", "acme/tiny-bert"]);
    ws
}

#[test]
fn markdown_plan_snapshot_is_stable_across_runs() {
    let hub = hub();
    let ws = mixed_workspace(&hub);
    let first = ws.ok(&["plan", "--format", "markdown"]).stdout;
    let second = ws.ok(&["plan", "--format", "markdown"]).stdout;
    assert_eq!(first, second);
    assert!(!first.contains(&ws.path().display().to_string()));
    insta::assert_snapshot!("gitops_markdown_plan", first);
}

#[test]
fn registry_diff_snapshot() {
    let hub = hub();
    let ws = mixed_workspace(&hub);
    let run = ws.ok(&["plan", "--diff"]);
    let diff_start = run.stdout.find("--- a/model_registry.json").unwrap();
    insta::assert_snapshot!("gitops_registry_diff", ws.filter(&run.stdout[diff_start..]));
    let data = ws.ok(&["plan", "--diff", "--json"]).json()["data"].clone();
    assert_valid("plan-output.schema.json", &data);
    assert_eq!(
        data["registry_diff"].as_str().unwrap(),
        &run.stdout[diff_start..]
    );
}

/// A running `kmm watch --json`, its stdout lines arriving on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<Value>,
}

const DEADLINE: Duration = Duration::from_secs(60);

impl Watcher {
    fn start(ws: &Workspace, extra: &[&str]) -> Watcher {
        let mut cmd = kmm_command(ws.path(), &ws.endpoint);
        cmd.args([
            "watch",
            "--json",
            "--interval",
            "1h",
            "--retry-delay",
            "200ms",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next envelope (a generous deadline; no fixed sleeps).
    fn next(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no watch output in time; seen {:#?}", self.seen));
        let doc: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        self.seen.push(doc.clone());
        doc
    }

    /// Nothing more is printed for `quiet` (used only after a reconcile was seen, to show
    /// that a burst did not cause a second one).
    fn assert_silent_for(&mut self, quiet: Duration) {
        if let Ok(line) = self.lines.recv_timeout(quiet) {
            panic!("unexpected watch output: {line}; seen {:#?}", self.seen);
        }
    }

    fn signal(&self, signal: i32) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "kmm watch did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn watch_reacts_to_edits_debounces_bursts_and_survives_invalid_manifests() {
    let hub = hub();
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    let mut watch = Watcher::start(&ws, &[]);
    let start = watch.next();
    assert_eq!(start["success"], true, "{start}");
    assert_eq!(start["data"]["trigger"], "start");
    assert_eq!(
        start["data"]["report"]["models_installed"],
        serde_json::json!(["acme/tiny-bert"])
    );
    assert_valid("watch-output.schema.json", &start["data"]);

    // A burst of saves, each a different valid manifest (so that without debouncing each
    // would be a reconcile of its own): one reconcile, of the last content.
    let last = "[models.\"acme/tiny-bert\"]\n[models.\"openai-community/gpt2\"]\n";
    for n in 1..=5 {
        ws.write(
            "kari-models.toml",
            &format!("[models.\"acme/tiny-bert\"]\n# save {n}\n"),
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    ws.write("kari-models.toml", last);
    let change = watch.next();
    assert_eq!(change["data"]["trigger"], "change", "{change}");
    assert_eq!(
        change["data"]["report"]["models_installed"],
        serde_json::json!(["openai-community/gpt2"])
    );
    watch.assert_silent_for(Duration::from_millis(1500));

    // An invalid save: reported once, the store untouched, the loop waits for the next save.
    let registry = ws.read("models/model_registry.json");
    ws.write("kari-models.toml", "[models.\"acme/tiny-bert\"\nbroken");
    let invalid = watch.next();
    assert_eq!(invalid["success"], false);
    assert_eq!(invalid["error_code"], "E_SCHEMA");
    watch.assert_silent_for(Duration::from_millis(1500));
    assert_eq!(ws.read("models/model_registry.json"), registry);

    // Fixed: back to converging (gpt2 no longer declared, kept without prune).
    ws.write("kari-models.toml", "[models.\"acme/tiny-bert\"]\n");
    let fixed = watch.next();
    assert_eq!(fixed["success"], true, "{fixed}");
    assert_eq!(fixed["data"]["trigger"], "change");

    watch.signal(15);
    assert_eq!(watch.wait_exit(), 0);
}

#[test]
fn watch_retries_failures_with_backoff() {
    let hub = hub();
    let ws = Workspace::new(&hub, "[models.\"acme/tiny-bert\"]\n");
    // Another process holds the store lock (flock(1), the same kind of lock kmm takes), so
    // the first reconciles fail with E_LOCKED; once it lets go, a retry converges.
    fs_err::create_dir_all(ws.file("models/.kmm")).unwrap();
    let (release, released) = mpsc::channel::<()>();
    let mut holder = std::process::Command::new("flock")
        .arg(ws.file("models/.kmm/lock"))
        .args(["-c", "read line"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder_stdin = holder.stdin.take().unwrap();
    // Wait until flock holds the lock: a zero-timeout apply must be refused.
    let deadline = Instant::now() + DEADLINE;
    while ws.run(&["apply", "--lock-timeout", "0s"]).code != 20 {
        assert!(Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut watch = Watcher::start(&ws, &["--lock-timeout", "0s"]);
    let first = watch.next();
    assert_eq!(first["error_code"], "E_LOCKED", "{first}");
    let second = watch.next();
    assert_eq!(second["error_code"], "E_LOCKED", "{second}");
    std::thread::spawn(move || {
        let _ = released.recv();
        use std::io::Write as _;
        let _ = holder_stdin.write_all(b"done\n");
    });
    release.send(()).unwrap();
    holder.wait().unwrap();
    let mut retried = watch.next();
    while retried["success"] == false {
        assert_eq!(retried["error_code"], "E_LOCKED", "{retried}");
        retried = watch.next();
    }
    assert_eq!(retried["data"]["trigger"], "retry", "{retried}");
    assert_eq!(
        retried["data"]["report"]["models_installed"],
        serde_json::json!(["acme/tiny-bert"])
    );
    watch.signal(2);
    assert_eq!(watch.wait_exit(), 0);
}

#[test]
fn watch_stops_cleanly_on_sigterm_mid_download() {
    let hub = hub();
    let ws = Workspace::new(&hub, THREE);
    // Slow downloads so that SIGTERM arrives while apply is running.
    hub.add_fault(Fault::BandwidthCap {
        bytes_per_sec: 100_000,
    });
    let mut watch = Watcher::start(&ws, &[]);
    let deadline = Instant::now() + DEADLINE;
    while !ws.file("models/.kmm/downloads").exists()
        || fs_err::read_dir(ws.file("models/.kmm/downloads"))
            .unwrap()
            .count()
            == 0
    {
        assert!(Instant::now() < deadline, "no download started");
        std::thread::sleep(Duration::from_millis(20));
    }
    watch.signal(15);
    assert_eq!(watch.wait_exit(), 0);
    hub.clear_faults();

    // The store is consistent: the registry (if any) parses, the store lock is free, and one
    // apply converges.
    if ws.file("models/model_registry.json").exists() {
        let _: Value = serde_json::from_str(&ws.read("models/model_registry.json")).unwrap();
    }
    ws.ok(&["apply", "--lock-timeout", "0s"]);
    let plan = ws.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
}

#[test]
fn watch_stops_on_sigterm_when_idle_with_an_empty_next_plan() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    let mut watch = Watcher::start(&ws, &[]);
    assert_eq!(watch.next()["success"], true);
    watch.signal(15);
    assert_eq!(watch.wait_exit(), 0);
    let plan = ws.run(&["plan", "--locked", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{}{}", plan.stdout, plan.stderr);
}

#[test]
fn the_example_ci_scripts_plan_comment_and_apply() {
    let hub = hub();
    let ws = Workspace::new(&hub, TWO);
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci");
    let kmm = assert_cmd::cargo::cargo_bin("kmm");
    let bin_dir = kmm.parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run_script = |name: &str| {
        let mut cmd = std::process::Command::new("bash");
        ws.env(&mut cmd);
        cmd.arg(scripts.join(name)).env("PATH", &path);
        let output = cmd.output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Without a committed lock the PR check fails (the author must run `kmm lock`).
    let (code, _, stderr) = run_script("plan.sh");
    assert_eq!(code, 15, "{stderr}");
    ws.ok(&["lock"]);
    // Pull request: plan with changes; the comment and the saved plan are written.
    let (code, stdout, stderr) = run_script("plan.sh");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let comment = ws.read("kmm-plan.md");
    assert!(comment.starts_with("<!-- kmm-plan -->"), "{comment}");
    assert!(comment.contains("2 to add"), "{comment}");
    assert!(ws.read("kmm-plan.outcome").trim() == "changes");
    // The PR leaves the lock current; the merge applies from it.
    let (code, stdout, stderr) = run_script("apply.sh");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, _, stderr) = run_script("plan.sh");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(ws.read("kmm-plan.outcome").trim(), "no-changes");
}
