//! `kmm lock [--update ID]...`: resolve the declared models and write kari-models.lock.
//!
//! Without `--update`, every model is resolved again (branches move to their newest commit).
//! With it, only the named models are; the others keep their entries when still current (a
//! model whose declaration changed is resolved again regardless, so the lock always matches).

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::lockfile::Lockfile;
use crate::resolve;

use super::super::args::{GlobalArgs, LockCmdArgs};
use super::super::output::Output;
use super::super::reconcile::Session;
use super::super::settings::EnvLookup;

/// The `--json` data of `kmm lock`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(in crate::cli) struct LockOutput {
    /// The lock file.
    pub path: String,
    /// Whether the file was (re)written.
    pub written: bool,
    /// Models whose entries were added, changed or dropped, sorted.
    pub changed: Vec<String>,
}

pub(in crate::cli) async fn run(
    global: &GlobalArgs,
    args: &LockCmdArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    for id in &args.update {
        if !session.manifest.models.contains_key(id) {
            return Err(Error::args(format!(
                "--update `{id}`: no such model in kari-models.toml"
            ))
            .with_hint("name a model as it is declared, e.g. `--update org/name`"));
        }
    }
    let registry = session.registry_hints()?;
    let ctx = session.resolve_context(&registry);
    let mut desired = Vec::with_capacity(session.manifest.models.len());
    for spec in session.manifest.models.values() {
        let keep = !args.update.is_empty() && !args.update.contains(&spec.id);
        let locked = session
            .lock
            .as_ref()
            .and_then(|lock| lock.current_entry(spec));
        desired.push(match locked {
            Some(entry) if keep => resolve::resolve_from_lock(spec, entry, &registry)?,
            _ => resolve::resolve_model(spec, &ctx).await?,
        });
    }
    let new = Lockfile::from_desired(&session.manifest, &desired);
    let old = session.lock.clone().unwrap_or_default();
    let mut changed: Vec<String> = new
        .models
        .iter()
        .filter(|(id, entry)| old.models.get(*id) != Some(entry))
        .map(|(id, _)| id.clone())
        .chain(
            old.models
                .keys()
                .filter(|id| !new.models.contains_key(*id))
                .cloned(),
        )
        .collect();
    changed.sort();
    let written = new.save_if_changed(&session.lock_path)?;
    let path = session.lock_path.display().to_string();
    let message = match (written, changed.len()) {
        (false, _) => format!("{path} is up to date."),
        (true, 0) => format!("Wrote {path}."),
        (true, n) => format!(
            "Wrote {path}: {n} {} changed ({}).",
            if n == 1 { "model" } else { "models" },
            changed.join(", ")
        ),
    };
    out.success(
        &message,
        if out.quiet { "" } else { &message },
        &LockOutput {
            path,
            written,
            changed,
        },
    );
    Ok(0)
}
