//! One model installed alone, through the same reconcile as `kmm apply` (checks included) but
//! with a one-model desired state and prune off, so no other model is touched: `kmm download`,
//! `kmm browse` and the library's `download_snapshot`.
//!
//! Edges: resolves through the [`Session`], applies through [`super::apply_desired`]; deletes
//! only the model's own partial downloads when asked to.

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::manifest::ModelSpec;
use crate::store::{StoreLock, StorePaths};

use super::{Applied, ApplyOptions, PlanOptions, Reporter, Session, apply_desired};

/// How [`install_one`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallOptions {
    /// A compatibility warning is `E_COMPAT` before any download.
    pub force_compat: bool,
    /// Delete the model's partial downloads left by an interrupted run before starting.
    pub discard_partials: bool,
}

/// Installs `spec` alone: the session's manifest becomes that one declaration, it is resolved
/// and applied under the store lock. Returns what was applied and the model as resolved.
pub async fn install_one(
    session: &mut Session,
    spec: ModelSpec,
    options: InstallOptions,
    reporter: &dyn Reporter,
) -> Result<(Applied, DesiredModel)> {
    let id = spec.id.clone();
    session.manifest.models.clear();
    session.manifest.models.insert(id.clone(), spec);
    let desired = session.resolve().await?;
    if options.discard_partials {
        let _lock: StoreLock = session.lock_store(reporter)?;
        for model in &desired {
            discard_partials(&session.paths, model)?;
        }
    }
    let applied = apply_desired(
        session,
        &desired,
        ApplyOptions {
            plan: PlanOptions {
                only_desired: true,
                ..PlanOptions::default()
            },
            force_compat: options.force_compat,
            frozen: false,
            whole_manifest_env: None,
        },
        reporter,
        &format!("{id} is already installed; nothing to download."),
    )
    .await?;
    let model = desired
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal(format!("{id} resolved to nothing")))?;
    Ok((applied, model))
}

/// Deletes the partial downloads of `model`'s files; the partial data and its record of
/// completed chunks go together.
fn discard_partials(paths: &StorePaths, model: &DesiredModel) -> Result<()> {
    for file in &model.files {
        for suffix in [".part", ".part.state"] {
            let partial = paths
                .downloads_dir()
                .join(format!("{}{suffix}", file.hash.hex()));
            match fs_err::remove_file(&partial) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io("discarding a partial download", &error)),
            }
        }
    }
    Ok(())
}
