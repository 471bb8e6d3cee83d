//! What the integration tests share: the real `kmm` binary started in a clean environment, and
//! what it printed. Each test module keeps its own workspace type (what it needs differs); they
//! all start kmm through [`kmm_command`] so that a developer's shell settings never leak in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Variables a developer's shell may set that would change what kmm does (a token, another
/// manifest or store, offline mode, tuning, logs). Tests start without them and set what they
/// test.
pub(crate) const SCRUBBED_ENV: [&str; 32] = [
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
    "KMM_HUB_MIN_RATE",
    "KMM_HUB_MIN_RATE_TIME",
    "KMM_HUB_RETRY_BUDGET",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "RUST_LOG",
];

/// The shared tier's own settings, scrubbed like [`SCRUBBED_ENV`].
const SHARED_STORE_ENV: [&str; 8] = [
    "KMM_SHARED_STORE",
    "KMM_REQUIRE_SHARED_STORE",
    "KMM_NODE_NAME",
    "KMM_SHARED_STORE_LEASE_TTL",
    "KMM_SHARED_STORE_WAIT",
    "KMM_SHARED_STORE_TIMEOUT",
    "KMM_SHARED_STORE_MULTIPART_MIN",
    "AWS_PROFILE",
];

/// Prepares `cmd` (kmm, or a script that runs it) to run in `dir` against the hub at
/// `endpoint`, with [`SCRUBBED_ENV`] removed and a Hugging Face home of its own inside `dir` (so
/// no user cache or token file is seen).
pub(crate) fn clean_env<'a>(cmd: &'a mut Command, dir: &Path, endpoint: &str) -> &'a mut Command {
    cmd.current_dir(dir);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    // The shared tier and its S3 client read these; a test names its own.
    for var in kmm::shared::AWS_VARIABLES.iter().chain(&SHARED_STORE_ENV) {
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

/// A temp working directory with a manifest, and kmm run in it against one hub: the setup the
/// end-to-end suites (`cli`, `gitops`, `machine`) share.
pub(crate) struct Workdir {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) endpoint: String,
    /// `<dir>/bin` first on kmm's `PATH` (fake `nvidia-smi`, fake pythons), then the system's.
    local_bin: bool,
}

impl Workdir {
    pub(crate) fn new(hub: &crate::fake_hub::FakeHub, manifest: &str) -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("kari-models.toml"), manifest).unwrap();
        Workdir {
            dir,
            endpoint: hub.url(),
            local_bin: false,
        }
    }

    /// As [`Workdir::new`], with the scripts of [`Workdir::script`] found before the system's.
    pub(crate) fn with_local_bin(hub: &crate::fake_hub::FakeHub, manifest: &str) -> Workdir {
        Workdir {
            local_bin: true,
            ..Workdir::new(hub, manifest)
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn models(&self) -> PathBuf {
        self.path().join("models")
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub(crate) fn read(&self, name: &str) -> String {
        fs_err::read_to_string(self.file(name)).unwrap()
    }

    pub(crate) fn write(&self, name: &str, text: &str) {
        fs_err::write(self.file(name), text).unwrap();
    }

    /// Replaces the manifest.
    pub(crate) fn manifest(&self, text: &str) {
        self.write("kari-models.toml", text);
    }

    /// kmm's clean environment on `cmd`, for processes started by hand (`kmm watch`).
    pub(crate) fn env(&self, cmd: &mut Command) {
        clean_env(cmd, self.path(), &self.endpoint);
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    pub(crate) fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = kmm_command(self.path(), &self.endpoint);
        if self.local_bin {
            cmd.env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path().join("bin").display()),
            );
        }
        for (name, value) in env {
            cmd.env(name, value);
        }
        Run::from_output(cmd.args(args).output().unwrap())
    }

    /// Runs kmm and asserts exit code 0.
    pub(crate) fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "kmm {args:?}\n{}\n{}", run.stdout, run.stderr);
        run
    }

    pub(crate) fn registry(&self) -> Value {
        let text = fs_err::read_to_string(self.models().join("model_registry.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub(crate) fn edit_registry(&self, edit: impl FnOnce(&mut Value)) {
        let mut registry = self.registry();
        edit(&mut registry);
        fs_err::write(
            self.models().join("model_registry.json"),
            serde_json::to_string_pretty(&registry).unwrap(),
        )
        .unwrap();
    }

    /// An executable script in `<workdir>/bin/`.
    pub(crate) fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let bin = self.path().join("bin");
        fs_err::create_dir_all(&bin).unwrap();
        let path = bin.join(name);
        fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `text` with the temp dir and real timestamps replaced, for snapshots.
    pub(crate) fn filter(&self, text: &str) -> String {
        text.replace(&self.path().display().to_string(), "[WORK]")
            .lines()
            .map(|line| {
                // Timestamps apply stamps: `installed_at` and `last_accessed`.
                for key in ["\"installed_at\": \"20", "\"last_accessed\": \"20"] {
                    if let Some(at) = line.find(key) {
                        let name = &key[..key.find(':').unwrap()];
                        return format!("{}{name}: \"[TIME]\",", &line[..at]);
                    }
                }
                line.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Cargo's target folder (`CARGO_TARGET_DIR`, relative to the repo when relative).
pub(crate) fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// One venv is built at a time: parallel tests must not build the same one twice.
static VENV_BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The venv `<target>/<name>` with `requirements` (a path in the repo) installed by pip, built
/// when missing or when the file changed since (`installed-requirements.txt` in the venv holds
/// what it was built from; `.ci/run` writes the same stamp). `hint` ends the panic message
/// when pip fails.
pub(crate) fn pinned_venv(name: &str, requirements: &str, hint: &str) -> PathBuf {
    let _guard = VENV_BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = target_dir().join(name);
    let python = venv.join("bin").join("python");
    let stamp = venv.join("installed-requirements.txt");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(requirements);
    let pins = fs_err::read_to_string(&path).unwrap();
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(pins.as_str()) {
        return venv;
    }
    eprintln!("creating {} from {requirements}", venv.display());
    let created = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .expect("run python3 -m venv");
    assert!(
        created.status.success(),
        "python3 -m venv {} failed: {}",
        venv.display(),
        String::from_utf8_lossy(&created.stderr)
    );
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
        .arg(&path)
        .output()
        .expect("run pip from the new venv");
    assert!(
        installed.status.success(),
        "pip install -r {requirements} failed{hint}:\n{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    fs_err::write(&stamp, pins).unwrap();
    venv
}
