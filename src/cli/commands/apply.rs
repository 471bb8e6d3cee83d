//! `kmm apply [PLAN_FILE]`: [`ops::apply_manifest`], or [`ops::apply_saved`] for a saved
//! plan, and its result.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::flags::LockArgs;
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::print_applied;
use crate::error::Result;
use crate::ops::{self, ApplyOptions, EnvLookup, PlanOptions};

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Re-hash every installed file first and replace those changed in place.
    #[arg(long)]
    pub verify: bool,
    /// Refuse (E_COMPAT) before any download when a model to install may not run here.
    #[arg(long)]
    pub force_compat: bool,
    /// Allow evicting declared (unpinned) models to meet quota_gb.
    #[arg(long)]
    pub evict_declared: bool,
    /// Apply exactly this saved plan (from `kmm plan --out`), refusing it if it is stale.
    pub plan_file: Option<PathBuf>,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// `kmm apply [PLAN_FILE]`.
pub async fn run(
    global: &GlobalArgs,
    args: &ApplyArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let options = ApplyOptions {
        plan: PlanOptions {
            evict_declared: args.evict_declared,
            verify: args.verify,
            ..PlanOptions::default()
        },
        force_compat: args.force_compat,
        frozen: args.lock.frozen,
        whole_manifest_env: Some(env),
    };
    let overrides = global.overrides();
    let applied = match &args.plan_file {
        Some(path) => ops::apply_saved(&overrides, path, &options, env, cwd, &out).await?,
        None => ops::apply_manifest(&overrides, args.lock.mode(), &options, env, cwd, &out).await?,
    };
    print_applied(out, &applied);
    Ok(0)
}
