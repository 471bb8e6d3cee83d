//! `kmm migrate [--dry-run]`: plans with [`crate::plan::compute_layout_only`] (moves,
//! adoptions, record upgrades, config mirrors, stray deletions; no download, no removal) and
//! applies it like `kmm apply`, through [`ops::apply_desired`] under the store lock.

use std::path::Path;

use clap::Args;

use crate::cli::flags::PlanViewArgs;
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::{print_applied, print_plan};
use crate::error::Result;
use crate::ops::{self, EnvLookup, PlanOptions};

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Print what would move, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub view: PlanViewArgs,
}

/// `kmm migrate [--dry-run]`.
pub async fn run(
    global: &GlobalArgs,
    args: &MigrateArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let overrides = global.overrides();
    let mode = args.view.lock.mode();
    if args.dry_run {
        let options = PlanOptions {
            layout_only: true,
            ..PlanOptions::default()
        };
        let plan = ops::plan_manifest(&overrides, mode, options, env, cwd).await?;
        print_plan(out, &plan, args.view.format);
        return Ok(0);
    }
    let applied = ops::migrate_layout(&overrides, mode, env, cwd, &out).await?;
    print_applied(out, &applied);
    Ok(0)
}
