//! `kmm registry repair`: the way out of an unreadable `model_registry.json`.
//!
//! Thin over [`crate::repair`]: resolve the declared models without the broken registry's
//! hints (the lock, the hub or the caches), take the store lock, check again that the registry
//! is still unreadable (another kmm may have fixed it meanwhile), back it up and rebuild it
//! from the disk. A readable registry is left alone.

use std::path::Path;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::error::Result;
use crate::registry::Registry;
use crate::store::StoreLock;

use super::args::GlobalArgs;
use super::output::Output;
use super::reconcile::Session;
use super::settings::EnvLookup;

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    pub command: RegistryCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum RegistryCommand {
    /// Back up an unreadable model_registry.json and rebuild it from the model folders on disk
    /// (declared models only; files are hashed)
    Repair,
}

#[derive(Serialize)]
struct RepairOutput {
    /// Whether the registry was rewritten.
    repaired: bool,
    #[serde(flatten)]
    report: crate::repair::RepairReport,
}

/// `kmm registry ...`.
pub async fn run(
    global: &GlobalArgs,
    args: &RegistryArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    match args.command {
        RegistryCommand::Repair => repair(global, env, cwd, out).await,
    }
}

async fn repair(global: &GlobalArgs, env: EnvLookup<'_>, cwd: &Path, out: Output) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    let registry_file = session.paths.registry_file();
    if registry_is_readable(&registry_file) {
        return nothing_to_do(&registry_file, out);
    }
    // The broken registry cannot give hints; license acceptances recorded beside it still count.
    let pending = crate::registry::load_pending_licenses(&crate::registry::pending_licenses_file(
        session.paths.root(),
    ))?;
    let hints = Registry::default().with_pending_licenses(&pending);
    let desired = crate::resolve::resolve_all_with_lock(
        &session.manifest,
        &session.resolve_context(&hints),
        session.lock.as_ref(),
        false,
    )
    .await?;
    let _lock = StoreLock::acquire(&session.paths, session.settings.lock_timeout, &mut || {
        out.status("Waiting for another kmm process to release the store lock...")
    })?;
    if registry_is_readable(&registry_file) {
        return nothing_to_do(&registry_file, out);
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let report = crate::repair::rebuild(&session.paths, &desired, &now)?;
    let mut lines = Vec::new();
    if let Some(backup) = &report.backup {
        lines.push(format!(
            "Backed up the unreadable registry to {}",
            backup.display()
        ));
    }
    lines.push(format!(
        "Rebuilt {} from disk: {} complete, {} to be completed by `kmm apply`, {} not on disk",
        registry_file.display(),
        report.complete.len(),
        report.incomplete.len(),
        report.absent.len()
    ));
    for line in &lines {
        out.status(line);
    }
    let message = lines.join("; ");
    out.success(
        &message,
        "",
        &RepairOutput {
            repaired: true,
            report,
        },
    );
    Ok(0)
}

/// A missing registry is readable (an empty store); only a file that fails to load is not.
fn registry_is_readable(path: &Path) -> bool {
    Registry::load(path).is_ok()
}

fn nothing_to_do(path: &Path, out: Output) -> Result<i32> {
    let message = format!("{} is readable; nothing to repair", path.display());
    out.status(&message);
    out.success(
        &message,
        "",
        &RepairOutput {
            repaired: false,
            report: Default::default(),
        },
    );
    Ok(0)
}
