//! `kmm registry repair`: the way out of an unreadable `model_registry.json`.
//!
//! Thin over [`ops::repair_registry`]: prints what was backed up and rebuilt.

use std::path::Path;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::error::Result;
use crate::ops::{self, EnvLookup, RepairOutcome, Session};

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
    let session = Session::open(&global.overrides(), env, cwd).await?;
    let registry_file = session.paths.registry_file();
    let report = match ops::repair_registry(&session, &out).await? {
        RepairOutcome::Readable => return nothing_to_do(&registry_file, out),
        RepairOutcome::Repaired(report) => report,
    };
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
