//! `kmm lock`: resolve the declared models and write kari-models.lock.
//!
//! Without an update list, every model is resolved again (branches move to their newest
//! commit). With one, only the named models are; the others keep their entries when still
//! current (a model whose declaration changed is resolved again regardless, so the lock always
//! matches).
//!
//! Edges: writes only the lock file (atomically, when it changed).

use crate::error::{Error, Result};
use crate::lockfile::Lockfile;
use crate::resolve;

use super::session::Session;

/// What `kmm lock` did.
pub struct Locked {
    /// Whether the file was (re)written.
    pub written: bool,
    /// Models whose entries were added, changed or dropped, sorted.
    pub changed: Vec<String>,
}

/// Resolves the declared models (`update` names the only ones to resolve again; empty: all)
/// and writes the lock when it differs.
pub async fn lock_manifest(session: &Session, update: &[String]) -> Result<Locked> {
    for id in update {
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
        let keep = !update.is_empty() && !update.contains(&spec.id);
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
    Ok(Locked { written, changed })
}
