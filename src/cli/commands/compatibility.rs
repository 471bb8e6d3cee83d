//! `kmm compatibility --model ID [--revision REV]`: [`ops::check_model_compatibility`] and
//! its verdict.

use std::path::Path;

use clap::Args;

use crate::compat::{self, Verdict};
use crate::error::Result;
use crate::ops::{self, EnvLookup};

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::verb_support::open_for_model;

#[derive(Debug, Clone, Args)]
pub struct CompatibilityArgs {
    /// The model's repo id (declared or not).
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// Branch, tag or commit [default: the manifest's, else main].
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

/// `kmm compatibility`.
pub async fn run(
    global: &GlobalArgs,
    args: &CompatibilityArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = open_for_model(global, &args.model, env, cwd).await?;
    let report =
        ops::check_model_compatibility(&session, &args.model, args.revision.as_deref()).await?;
    let message = match report.verdict {
        Verdict::Ok => format!("{}: ok, this machine can run it", args.model),
        Verdict::Warnings => format!(
            "{}: {} warning(s): {}",
            args.model,
            report.warnings.len(),
            report
                .warnings
                .iter()
                .map(|w| w.kind.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    out.success(&message, &compat::render_text(&report), &report);
    Ok(0)
}
