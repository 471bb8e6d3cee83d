//! `kmm plan`: [`ops::review_manifest`], rendered as text, markdown or JSON.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli::flags::{LockArgs, PlanFormat};
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::{PlanOutput, render_plan};
use crate::error::Result;
use crate::ops::{self, EnvLookup, PlanOptions, Session};
use crate::plan;

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Re-hash every installed file against its upstream hash (slow on a large store): files
    /// changed in place, even with the same size, are planned for replacement (`tampered`).
    #[arg(long)]
    pub verify: bool,
    /// Exit 0 when there are no changes, 2 when there are (other codes are errors).
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Allow evicting declared (unpinned) models to meet quota_gb.
    #[arg(long)]
    pub evict_declared: bool,
    /// Also write the plan to this file, for `kmm apply FILE` and `kmm show FILE`.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
    /// Also show the registry now and after apply as a unified diff.
    #[arg(long)]
    pub diff: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// `kmm plan`.
pub async fn run(
    global: &GlobalArgs,
    args: &PlanArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let mut session = Session::open(&global.overrides(), env, cwd).await?;
    let request = ops::ReviewRequest {
        lock: args.lock.mode(),
        options: PlanOptions {
            evict_declared: args.evict_declared,
            verify: args.verify,
            ..PlanOptions::default()
        },
        out: args.out.clone(),
        registry_diff: args.diff,
    };
    let reviewed = ops::review_manifest(&mut session, &request, &out).await?;
    let plan = &reviewed.plan;
    let registry_diff = reviewed.registry_diff.as_deref();
    let text = render_plan(plan, args.format, registry_diff, &reviewed.warnings);
    out.success(
        &plan::summary_line(plan),
        &text,
        &PlanOutput {
            plan,
            registry_diff: reviewed.registry_diff.clone(),
        },
    );
    Ok(if args.detailed_exitcode && !plan.is_empty() {
        2
    } else {
        0
    })
}
