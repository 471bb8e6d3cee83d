//! `kmm lock [--update ID]...`: [`ops::lock_manifest`] and what it wrote.

use std::path::Path;

use serde::Serialize;

use clap::Args;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::error::Result;
use crate::ops::{self, EnvLookup, Locked, Session};

#[derive(Debug, Clone, Args)]
pub struct LockCmdArgs {
    /// Refresh only this model (repeatable); the others keep their current entries.
    #[arg(long, value_name = "ID")]
    pub update: Vec<String>,
}

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
    let session = Session::open(&global.overrides(), env, cwd).await?;
    let Locked { written, changed } = ops::lock_manifest(&session, &args.update).await?;
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
