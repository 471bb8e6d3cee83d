//! `kmm migrate [--dry-run]`: plans with [`crate::plan::compute_layout_only`] (moves,
//! adoptions, record upgrades, config mirrors, stray deletions; no download, no removal) and
//! applies it like `kmm apply`, through [`ops::apply_desired`] under the store lock.

use std::path::Path;

use clap::Args;

use crate::cli::flags::{LockArgs, PlanFormat};
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::{print_applied, print_plan};
use crate::error::Result;
use crate::ops::{self, ApplyOptions, EnvLookup, PlanOptions, Session};

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Print what would move, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub lock: LockArgs,
}

const MIGRATED: &str = "No changes. The layout already matches kari-models.toml.";

/// `kmm migrate [--dry-run]`.
pub async fn run(
    global: &GlobalArgs,
    args: &MigrateArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(&global.overrides(), env, cwd).await?;
    let desired = session.resolve_with_lock(args.lock.mode()).await?;
    let options = PlanOptions {
        layout_only: true,
        ..PlanOptions::default()
    };
    if args.dry_run {
        let plan = session.plan_with(&desired, options)?;
        print_plan(out, &plan, args.format);
        return Ok(0);
    }
    let applied = ops::apply_desired(
        &session,
        &desired,
        ApplyOptions {
            plan: options,
            force_compat: false,
            frozen: args.lock.frozen,
            whole_manifest_env: None,
        },
        &out,
        MIGRATED,
    )
    .await?;
    print_applied(out, &applied);
    Ok(0)
}
