//! What the integration tests share: the real `kmm` binary started in a clean environment, and
//! what it printed. Each test module keeps its own workspace type (what it needs differs); they
//! all start kmm through [`kmm_command`] so that a developer's shell settings never leak in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Variables a developer's shell may set that would change what kmm does (a token, another
/// manifest or store, offline mode, tuning, logs). Tests start without them and set what they
/// test.
pub(crate) const SCRUBBED_ENV: [&str; 18] = [
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HF_HUB_CACHE",
    "KMM_MANIFEST",
    "KMM_MODELS_DIR",
    "KMM_MAX_WORKERS",
    "KMM_CHUNK_SIZE",
    "KMM_CONNECTIONS_PER_FILE",
    "KMM_DIRECT_IO",
    "KMM_PROGRESS_JSON",
    "KMM_PYTHON",
    "KMM_HUB_MAX_RETRIES",
    "KMM_HUB_RETRY_DELAY",
    "KMM_HUB_CONNECT_TIMEOUT",
    "KMM_HUB_READ_TIMEOUT",
    "RUST_LOG",
];

/// Prepares `cmd` (kmm, or a script that runs it) to run in `dir` against the hub at
/// `endpoint`, with [`SCRUBBED_ENV`] removed and a Hugging Face home of its own inside `dir` (so
/// no user cache or token file is seen).
pub(crate) fn clean_env<'a>(cmd: &'a mut Command, dir: &Path, endpoint: &str) -> &'a mut Command {
    cmd.current_dir(dir);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", dir.join("hf-home"));
    cmd.env("HF_ENDPOINT", endpoint)
}

/// The `kmm` binary under test, prepared by [`clean_env`].
pub(crate) fn kmm_command(dir: &Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("kmm"));
    clean_env(&mut cmd, dir, endpoint);
    cmd
}

/// What one kmm process printed, and how it exited.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The one JSON document on stdout (`--json` prints exactly one).
    pub(crate) fn json(&self) -> Value {
        let mut docs = serde_json::Deserializer::from_str(&self.stdout).into_iter::<Value>();
        let doc = docs
            .next()
            .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", self.stderr))
            .unwrap_or_else(|error| {
                panic!(
                    "stdout is not JSON ({error}):\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            });
        assert!(
            docs.next().is_none(),
            "more than one JSON document:\n{}",
            self.stdout
        );
        doc
    }

    /// The `error_code` of a failure's JSON envelope.
    pub(crate) fn error_code(&self) -> String {
        let doc = self.json();
        assert_eq!(doc["success"], false, "{doc}");
        doc["error_code"].as_str().unwrap_or_default().to_string()
    }
}

/// A size-limited tmpfs mounted on a folder, unmounted on drop: a real filesystem that fills
/// up. `None` where `mount` fails (not root, no tmpfs); callers then skip with a message.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs_err::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The durability journal of the store at `models`.
pub(crate) fn journal_path(models: &Path) -> PathBuf {
    models.join(".kmm").join("unsynced.json")
}

/// Whether this machine has a boot id: without one, kmm fsyncs every download and keeps no
/// durability journal.
pub(crate) fn has_boot_id() -> bool {
    Path::new("/proc/sys/kernel/random/boot_id").exists()
}

/// Rewrites the durability journal of `models` as if every entry had been written in an
/// earlier boot that ended in a crash (power loss) before the kernel wrote the bytes back.
pub(crate) fn pretend_a_reboot(models: &Path) {
    let path = journal_path(models);
    let mut journal: Value = serde_json::from_slice(&fs_err::read(&path).unwrap()).unwrap();
    for boots in journal["entries"].as_object_mut().unwrap().values_mut() {
        let at = boots.as_object().unwrap().values().next().unwrap().clone();
        *boots = serde_json::json!({ "an-earlier-boot": at });
    }
    fs_err::write(&path, journal.to_string()).unwrap();
}
