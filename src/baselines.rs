//! Baselines (`kmm ensure`, `[baselines]` in the manifest): models many Kari programs expect.
//!
//! - `distilbert`: the `distilbert-base-uncased` snapshot, pinned, installed by the normal engine
//!   at `models/distilbert-base-uncased/` ([`add_desired_models`] adds it to the desired state,
//!   so `kmm plan` shows it like any declared model).
//! - `spacy`: the `en_core_web_trf` pipeline, made available to the configured Python with
//!   `python -m spacy download` when spaCy is installed there; skipped with the reason otherwise.
//! - `basic_cls`: `models/basic_cls/{classifier,vectorizer}.joblib`, a minimal scikit-learn text
//!   classifier trained on a small labelled set shipped inside `python/basic_cls.py` (embedded in
//!   the binary), produced by the configured Python when scikit-learn and joblib import;
//!   skipped with the reason otherwise. It is built in `.kmm/staging/` and renamed into place, so
//!   `models/basic_cls/` is never half written.
//!
//! Python work runs as a subprocess; its output goes to kmm's logs (`-v`), and a failure is
//! `E_COMPAT` with the tail of that output.
//!
//! Edges: writes only `models/basic_cls/` (under the store lock the caller holds) and whatever
//! spaCy's own installer writes into the Python environment. The distilbert install is `apply`'s.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::error::{Error, ErrorCode, Result};
use crate::manifest::{Manifest, ModelSpec};
use crate::store::StorePaths;

pub const DISTILBERT_ID: &str = "distilbert-base-uncased";
pub const SPACY_PIPELINE: &str = "en_core_web_trf";
/// Folder of the basic classifier, relative to the models directory.
pub const BASIC_CLS_DIR: &str = "basic_cls";
pub const BASIC_CLS_FILES: [&str; 2] = ["classifier.joblib", "vectorizer.joblib"];
/// The training script (see `python/basic_cls.py`).
const BASIC_CLS_SCRIPT: &str = include_str!("../python/basic_cls.py");
/// Exit code of the script when scikit-learn or joblib is missing.
const SCRIPT_MISSING_PACKAGES: i32 = 3;
/// Lines of subprocess output kept in an error.
const TAIL_LINES: usize = 15;

/// The distilbert baseline as a declared model: pinned, default revision, all files.
pub fn distilbert_spec() -> ModelSpec {
    let mut spec = ModelSpec::new(DISTILBERT_ID);
    spec.pinned = Some(true);
    spec
}

/// With `[baselines] distilbert = true`, adds the distilbert model to the declared models (a
/// table the user wrote for it wins, but is pinned).
pub fn add_desired_models(manifest: &mut Manifest) {
    if manifest.baselines.distilbert {
        manifest
            .models
            .entry(DISTILBERT_ID.to_string())
            .and_modify(|spec| {
                spec.pinned.get_or_insert(true);
            })
            .or_insert_with(distilbert_spec);
    }
}

/// What happened to one baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaselineResult {
    /// `distilbert`, `spacy`, `basic_cls`.
    pub name: String,
    /// `installed`, `present` (nothing to do), `skipped`.
    pub status: String,
    pub message: String,
}

impl BaselineResult {
    fn new(name: &str, status: &str, message: impl Into<String>) -> Self {
        BaselineResult {
            name: name.to_string(),
            status: status.to_string(),
            message: message.into(),
        }
    }
}

/// True when both joblib files of the basic classifier exist.
pub fn basic_cls_present(paths: &StorePaths) -> bool {
    BASIC_CLS_FILES
        .iter()
        .all(|file| paths.root().join(BASIC_CLS_DIR).join(file).is_file())
}

/// Produces `models/basic_cls/` with `python`, unless it is there already.
pub fn ensure_basic_cls(paths: &StorePaths, python: &str) -> Result<BaselineResult> {
    const NAME: &str = "basic_cls";
    if basic_cls_present(paths) {
        return Ok(BaselineResult::new(
            NAME,
            "present",
            format!(
                "models/{BASIC_CLS_DIR}/ already holds {}",
                BASIC_CLS_FILES.join(" and ")
            ),
        ));
    }
    if let Err(reason) = probe(python, "import sklearn, joblib") {
        return Ok(BaselineResult::new(
            NAME,
            "skipped",
            format!(
                "scikit-learn and joblib are not importable by `{python}` ({reason}); install them there (pip install scikit-learn joblib) or pass --python"
            ),
        ));
    }
    let staging = paths.staging_dir();
    fs_err::create_dir_all(&staging)
        .map_err(|e| Error::io(format!("creating {}", staging.display()), &e))?;
    let work = tempfile::Builder::new()
        .prefix("basic_cls-")
        .tempdir_in(&staging)
        .map_err(|e| Error::io(format!("creating a folder in {}", staging.display()), &e))?;
    let out_dir = work.path().join(BASIC_CLS_DIR);
    let run = run_python(
        python,
        &["-", "--out", &out_dir.to_string_lossy()],
        Some(BASIC_CLS_SCRIPT),
    )?;
    if run.code == Some(SCRIPT_MISSING_PACKAGES) {
        return Ok(BaselineResult::new(
            NAME,
            "skipped",
            format!("`{python}`: {}", run.tail()),
        ));
    }
    if run.code != Some(0) {
        return Err(failure(python, "training the basic classifier", &run));
    }
    for file in BASIC_CLS_FILES {
        if !out_dir.join(file).is_file() {
            return Err(failure(
                python,
                &format!("the script wrote no {file}"),
                &run,
            ));
        }
    }
    let target = paths.root().join(BASIC_CLS_DIR);
    if target.exists() {
        let old = work.path().join("old");
        fs_err::rename(&target, &old)
            .map_err(|e| Error::io(format!("moving the old {}", target.display()), &e))?;
    }
    fs_err::rename(&out_dir, &target)
        .map_err(|e| Error::io(format!("installing {}", target.display()), &e))?;
    Ok(BaselineResult::new(
        NAME,
        "installed",
        format!(
            "wrote models/{BASIC_CLS_DIR}/{} ({})",
            BASIC_CLS_FILES.join(", "),
            run.last_line()
        ),
    ))
}

/// Makes the spaCy pipeline importable by `python`, unless it already is.
pub fn ensure_spacy(python: &str) -> Result<BaselineResult> {
    const NAME: &str = "spacy";
    if let Err(reason) = probe(python, "import spacy") {
        return Ok(BaselineResult::new(
            NAME,
            "skipped",
            format!(
                "spaCy is not installed for `{python}` ({reason}); install it (pip install spacy) to get {SPACY_PIPELINE}"
            ),
        ));
    }
    if probe(python, &format!("import {SPACY_PIPELINE}")).is_ok() {
        return Ok(BaselineResult::new(
            NAME,
            "present",
            format!("{SPACY_PIPELINE} is already importable by `{python}`"),
        ));
    }
    let run = run_python(python, &["-m", "spacy", "download", SPACY_PIPELINE], None)?;
    if run.code != Some(0) {
        return Err(failure(
            python,
            &format!("`spacy download {SPACY_PIPELINE}`"),
            &run,
        ));
    }
    Ok(BaselineResult::new(
        NAME,
        "installed",
        format!("{SPACY_PIPELINE} installed into `{python}`'s environment"),
    ))
}

/// A finished Python subprocess.
struct PythonRun {
    code: Option<i32>,
    output: String,
}

impl PythonRun {
    fn tail(&self) -> String {
        let lines: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }
    fn last_line(&self) -> String {
        self.output
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// `python -c code` succeeds; `Err` says why not (not found, or the error's last line).
fn probe(python: &str, code: &str) -> std::result::Result<(), String> {
    let output = Command::new(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run it: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("failed")
        .trim()
        .to_string())
}

/// Runs `python args`, feeding `stdin`, capturing stdout and stderr into the logs.
fn run_python(python: &str, args: &[&str], stdin: Option<&str>) -> Result<PythonRun> {
    use std::io::Write as _;
    let mut child = Command::new(python)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            Error::new(ErrorCode::Compat, format!("cannot run `{python}`"))
                .caused_by(error.to_string())
                .with_hint("pass --python PATH or set KMM_PYTHON")
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A script that exits early closes its stdin; its exit code tells the rest.
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(|error| {
        Error::new(ErrorCode::Compat, format!("waiting for `{python}`"))
            .caused_by(error.to_string())
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in text.lines() {
        tracing::info!(target: "kmm::baselines", python, "{line}");
    }
    Ok(PythonRun {
        code: output.status.code(),
        output: text,
    })
}

fn failure(python: &str, what: &str, run: &PythonRun) -> Error {
    let mut error = Error::new(
        ErrorCode::Compat,
        format!(
            "{what} with `{python}` failed (exit {})",
            run.code
                .map_or_else(|| "by signal".to_string(), |c| c.to_string())
        ),
    );
    for line in run.tail().lines() {
        error = error.caused_by(line.to_string());
    }
    error.with_hint("run with -v to see the whole output")
}

/// Where the classifier lives, for messages.
pub fn basic_cls_dir(paths: &StorePaths) -> PathBuf {
    paths.root().join(BASIC_CLS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn distilbert_baseline_is_added_pinned() {
        let mut manifest = Manifest::parse(
            Path::new("kari-models.toml"),
            "[baselines]\ndistilbert = true\n",
        )
        .unwrap();
        add_desired_models(&mut manifest);
        assert_eq!(manifest.models[DISTILBERT_ID].pinned, Some(true));
        let mut none = Manifest::parse(Path::new("kari-models.toml"), "").unwrap();
        add_desired_models(&mut none);
        assert!(none.models.is_empty());
    }

    #[test]
    fn missing_python_packages_skip_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path().join("models"));
        let result = ensure_basic_cls(&paths, "/nonexistent/python3").unwrap();
        assert_eq!(result.status, "skipped");
        assert!(
            result.message.contains("cannot run it"),
            "{}",
            result.message
        );
        let result = ensure_spacy("/nonexistent/python3").unwrap();
        assert_eq!(result.status, "skipped");
        assert!(!paths.root().join(BASIC_CLS_DIR).exists());
    }
}
