//! `kmm verify`: plans with every installed file re-hashed and prints the drift; it changes
//! nothing.

use std::path::Path;

use clap::Args;

use crate::cli::flags::PlanViewArgs;
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::print_plan;
use crate::error::Result;
use crate::ops::{self, EnvLookup, PlanOptions};

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub view: PlanViewArgs,
}

/// `kmm verify`: exit code 0 when every declared file is in place with its upstream bytes, 2
/// when the plan `kmm apply --verify` would carry out is not empty.
pub async fn run(
    global: &GlobalArgs,
    args: &VerifyArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let options = PlanOptions {
        verify: true,
        ..PlanOptions::default()
    };
    let plan = ops::plan_manifest(
        &global.overrides(),
        args.view.lock.mode(),
        options,
        env,
        cwd,
    )
    .await?;
    print_plan(out, &plan, args.view.format);
    Ok(if plan.is_empty() { 0 } else { 2 })
}
