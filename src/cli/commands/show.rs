//! `kmm show PLAN_FILE [--format text|markdown|json]`: a saved plan, rendered.

use std::path::Path;

use crate::error::Result;
use crate::plan;
use crate::plan::file::PlanFile;

use std::path::PathBuf;

use clap::Args;

use crate::cli::flags::PlanFormat;
use crate::cli::output::Output;
use crate::cli::plan_output::render_plan;

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The plan file.
    pub plan_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
}

pub(in crate::cli) fn run(args: &ShowArgs, cwd: &Path, out: Output) -> Result<i32> {
    let saved = PlanFile::load(&cwd.join(&args.plan_file))?;
    let text = match args.format {
        PlanFormat::Json => saved.to_text(),
        format => render_plan(&saved.plan, format, None, &[]),
    };
    out.success(&plan::summary_line(&saved.plan), &text, &saved);
    Ok(0)
}
