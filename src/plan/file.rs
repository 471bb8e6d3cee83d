//! Saved plans: `kmm plan --out plan.json` and `kmm apply plan.json`.
//!
//! A plan file is the [`Plan`] plus what it was computed from: the format version, the kmm
//! version, and fingerprints of the manifest, the lock, the registry and the observed store
//! (every scanned model folder's file paths, sizes and modification times, and the strays). The
//! folders that were scanned are saved too, so `apply` can look at exactly the same ones again.
//! Before applying, the fingerprints are computed again under the store lock; any difference
//! makes the plan stale and it is refused, as Terraform refuses a stale saved plan: the reviewed
//! actions are only correct for the state they were computed against.
//!
//! Fingerprints are blake3 of the bytes (files) or of a canonical listing (store). The store's
//! uses modification times: cheap (one `stat` per file, as planning costs) and any rewrite of a
//! file shows.
//!
//! Edges: reads the manifest, lock, registry and store to fingerprint them (through
//! [`crate::store::observe`]); writes only the plan file. Applying is `apply`'s job.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::store::{self, StorePaths};

/// The plan-file format this kmm writes and reads.
pub const PLAN_FORMAT_VERSION: u32 = 1;

/// A saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// [`PLAN_FORMAT_VERSION`].
    pub format_version: u32,
    /// The kmm that computed the plan; another version refuses to apply it.
    pub kmm_version: String,
    /// What the plan was computed from.
    pub inputs: Fingerprints,
    /// Folders (relative to the models directory) whose files the store fingerprint covers.
    pub observed_dirs: Vec<PathBuf>,
    pub plan: Plan,
}

/// Fingerprints of the plan's inputs: `blake3:<hex>`, or `null` for a file that did not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fingerprints {
    pub manifest: Option<String>,
    pub lock: Option<String>,
    pub registry: Option<String>,
    pub store: String,
}

impl Fingerprints {
    /// Fingerprints the inputs as they are now. `dirs` are the folders to scan (relative to
    /// the models directory), as [`crate::plan::dirs_to_observe`] gives them.
    pub fn compute(
        manifest: &Path,
        lock: &Path,
        paths: &StorePaths,
        dirs: &[PathBuf],
    ) -> Result<Fingerprints> {
        Ok(Fingerprints {
            manifest: fingerprint_file(manifest)?,
            lock: fingerprint_file(lock)?,
            registry: fingerprint_file(&paths.registry_file())?,
            store: fingerprint_store(paths, dirs)?,
        })
    }

    /// The names of the inputs that differ from `now` (`manifest`, `lock`, `registry`, `store`).
    pub fn changed(&self, now: &Fingerprints) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.manifest != now.manifest {
            changed.push("manifest");
        }
        if self.lock != now.lock {
            changed.push("lock");
        }
        if self.registry != now.registry {
            changed.push("registry");
        }
        if self.store != now.store {
            changed.push("store");
        }
        changed
    }
}

/// `blake3:<hex>` of a file's bytes, `None` when it does not exist.
pub fn fingerprint_file(path: &Path) -> Result<Option<String>> {
    match fs_err::read(path) {
        Ok(bytes) => Ok(Some(format!("blake3:{}", blake3::hash(&bytes).to_hex()))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io(
            format!("reading `{}` to fingerprint it", path.display()),
            &error,
        )),
    }
}

/// `blake3:<hex>` of the observed store: each scanned folder's files with size and mtime, and
/// the strays, in sorted order.
pub fn fingerprint_store(paths: &StorePaths, dirs: &[PathBuf]) -> Result<String> {
    let observed = store::observe(paths, dirs)?;
    let mut listing = String::new();
    for (dir, found) in &observed.dirs {
        let _ = writeln!(listing, "dir {}", dir.display());
        for (path, file) in &found.files {
            let mtime = file
                .modified
                .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |since| since.as_nanos());
            let _ = writeln!(listing, "file {path}\t{}\t{mtime}", file.size);
        }
    }
    for stray in &observed.strays {
        let _ = writeln!(listing, "stray {}", stray.display());
    }
    Ok(format!(
        "blake3:{}",
        blake3::hash(listing.as_bytes()).to_hex()
    ))
}

impl PlanFile {
    /// A plan file for `plan`, computed from `inputs`.
    pub fn new(plan: Plan, inputs: Fingerprints, observed_dirs: Vec<PathBuf>) -> PlanFile {
        PlanFile {
            format_version: PLAN_FORMAT_VERSION,
            kmm_version: env!("CARGO_PKG_VERSION").to_string(),
            inputs,
            observed_dirs,
            plan,
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the plan file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic_file::write(path, self.to_text().as_bytes(), "the plan file")
    }

    /// Reads a plan file: `E_NOT_FOUND` when missing, `E_SCHEMA` when it is not a plan file
    /// of this format and kmm version.
    pub fn load(path: &Path) -> Result<PlanFile> {
        let bytes = match fs_err::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(
                    Error::not_found(format!("plan file `{}` not found", path.display()))
                        .with_hint("write one with `kmm plan --out plan.json`"),
                );
            }
            Err(error) => {
                return Err(Error::io(format!("reading `{}`", path.display()), &error));
            }
        };
        let plan: PlanFile = serde_json::from_slice(&bytes).map_err(|error| {
            Error::schema(format!(
                "{}:{}:{}: not a kmm plan file: {}",
                path.display(),
                error.line(),
                error.column(),
                error
            ))
            .with_hint("write one with `kmm plan --out plan.json`")
        })?;
        if plan.format_version != PLAN_FORMAT_VERSION {
            return Err(Error::schema(format!(
                "{}: plan format version {} is not supported (this kmm reads {PLAN_FORMAT_VERSION})",
                path.display(),
                plan.format_version
            ))
            .with_hint("run `kmm plan --out` again with this kmm"));
        }
        let ours = env!("CARGO_PKG_VERSION");
        if plan.kmm_version != ours {
            return Err(Error::schema(format!(
                "{}: the plan was made by kmm {}, this is kmm {ours}",
                path.display(),
                plan.kmm_version
            ))
            .with_hint("run `kmm plan --out` again with this kmm"));
        }
        // The folders to fingerprint come from the file: a hand-edited one must not point the
        // scan outside the store (it reached `store::observe` as an internal error; found by
        // `reliability::hostile_lock_and_plan_files_are_e_schema_and_write_nothing`). The plan's
        // own paths are checked by `apply`.
        if let Some(bad) = plan.observed_dirs.iter().find(|dir| {
            !crate::desired::is_safe_relative(dir)
                || dir
                    .components()
                    .next()
                    .is_some_and(|c| c.as_os_str() == ".kmm")
        }) {
            return Err(Error::schema(format!(
                "{}: the plan names `{}`, which is not a folder inside the models directory",
                path.display(),
                crate::layout::shown(&bad.to_string_lossy())
            ))
            .with_hint("run `kmm plan --out` again; plan files are written by kmm"));
        }
        Ok(plan)
    }

    /// Refuses the plan when any input changed since it was computed (`E_SCHEMA`, naming them).
    pub fn check_fresh(&self, path: &Path, now: &Fingerprints) -> Result<()> {
        let changed = self.inputs.changed(now);
        if changed.is_empty() {
            return Ok(());
        }
        Err(Error::schema(format!(
            "stale plan `{}`: the {} changed since it was computed",
            path.display(),
            join_and(&changed)
        ))
        .with_hint("run `kmm plan --out` again, review it, and apply the new plan"))
    }
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_plan(root: &Path) -> Plan {
        Plan {
            models_dir: root.to_path_buf(),
            models: vec![],
            notes: vec![],
            strays: vec![],
            actions: vec![],
            summary: Default::default(),
        }
    }

    #[test]
    fn save_load_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("kari-models.toml");
        let lock = dir.path().join("kari-models.lock");
        fs_err::write(&manifest, "[models.\"a/b\"]\n").unwrap();
        let paths = StorePaths::new(dir.path().join("models"));
        fs_err::create_dir_all(paths.root().join("transformers/a/b")).unwrap();
        fs_err::write(paths.root().join("transformers/a/b/x.bin"), b"1234").unwrap();
        let dirs = vec![PathBuf::from("transformers/a/b")];
        let inputs = Fingerprints::compute(&manifest, &lock, &paths, &dirs).unwrap();
        assert_eq!(inputs.lock, None);
        let file = PlanFile::new(empty_plan(paths.root()), inputs.clone(), dirs.clone());
        let saved = dir.path().join("plan.json");
        file.save(&saved).unwrap();
        let loaded = PlanFile::load(&saved).unwrap();
        assert_eq!(loaded, file);
        loaded.check_fresh(&saved, &inputs).unwrap();

        // A change to a model file and to the manifest both show.
        fs_err::write(paths.root().join("transformers/a/b/x.bin"), b"12345").unwrap();
        fs_err::write(&manifest, "[models.\"a/c\"]\n").unwrap();
        let now = Fingerprints::compute(&manifest, &lock, &paths, &dirs).unwrap();
        assert_eq!(file.inputs.changed(&now), ["manifest", "store"]);
        let error = loaded.check_fresh(&saved, &now).unwrap_err();
        assert_eq!(error.code(), crate::ErrorCode::Schema);
        assert!(
            error.message().contains("the manifest and store changed"),
            "{error}"
        );
    }

    #[test]
    fn foreign_files_and_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        assert_eq!(
            PlanFile::load(&path).unwrap_err().code(),
            crate::ErrorCode::NotFound
        );
        fs_err::write(&path, "{\"hello\": 1}").unwrap();
        assert_eq!(
            PlanFile::load(&path).unwrap_err().code(),
            crate::ErrorCode::Schema
        );
        let mut file = PlanFile::new(
            empty_plan(dir.path()),
            Fingerprints {
                manifest: None,
                lock: None,
                registry: None,
                store: "blake3:00".into(),
            },
            vec![],
        );
        file.kmm_version = "0.0.0-other".into();
        file.save(&path).unwrap();
        let error = PlanFile::load(&path).unwrap_err();
        assert!(error.message().contains("kmm 0.0.0-other"), "{error}");
        assert_eq!(join_and(&["a", "b", "c"]), "a, b and c");
    }
}
