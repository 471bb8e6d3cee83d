//! `kmm migrate` and `kmm verify`: thin verbs over the reconcile pipeline.
//!
//! `migrate` plans with [`crate::plan::compute_layout_only`] (moves, adoptions, record
//! upgrades, config mirrors, stray deletions; no download, no removal) and applies it like
//! `kmm apply`, under the store lock. `verify` plans with every installed file re-hashed and
//! prints the drift; it changes nothing.
//!
//! Edges: no logic of their own beyond choosing options and exit codes.

use std::path::Path;

use clap::Args;

use crate::error::Result;
use crate::plan;

use super::args::{GlobalArgs, LockArgs, PlanFormat};
use super::output::Output;
use super::reconcile::{self, ApplyOptions, PlanOptions, PlanOutput, Session};
use super::settings::EnvLookup;

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

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub lock: LockArgs,
}

const MIGRATED: &str = "No changes. The layout already matches kari-models.toml.";

/// `kmm migrate [--dry-run]`.
pub async fn migrate(
    global: &GlobalArgs,
    args: &MigrateArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    let desired = session.resolve_with_lock(args.lock).await?;
    let options = PlanOptions {
        layout_only: true,
        ..PlanOptions::default()
    };
    if args.dry_run {
        let plan = session.plan_with(&desired, options)?;
        print_plan(out, &plan, args.format);
        return Ok(0);
    }
    reconcile::apply_desired(
        &session,
        &desired,
        ApplyOptions {
            plan: options,
            force_compat: false,
            frozen: args.lock.frozen,
            whole_manifest_env: None,
        },
        out,
        MIGRATED,
    )
    .await
}

/// `kmm verify`: exit code 0 when every declared file is in place with its upstream bytes, 2
/// when the plan `kmm apply --verify` would carry out is not empty.
pub async fn verify(
    global: &GlobalArgs,
    args: &VerifyArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    let desired = session.resolve_with_lock(args.lock).await?;
    let plan = session.plan_with(
        &desired,
        PlanOptions {
            verify: true,
            ..PlanOptions::default()
        },
    )?;
    print_plan(out, &plan, args.format);
    Ok(if plan.is_empty() { 0 } else { 2 })
}

fn print_plan(out: Output, plan: &plan::Plan, format: PlanFormat) {
    let text = reconcile::render_plan(plan, format, None, &[]);
    out.success(
        &plan::summary_line(plan),
        &text,
        &PlanOutput {
            plan,
            registry_diff: None,
        },
    );
}
