//! `kmm show PLAN_FILE [--format text|markdown|json]`: a saved plan, rendered.

use std::path::Path;

use crate::error::Result;
use crate::plan;
use crate::plan_file::PlanFile;

use super::super::args::ShowArgs;
use super::super::output::Output;
use super::super::reconcile::render_plan;

pub(in crate::cli) fn run(args: &ShowArgs, cwd: &Path, out: Output) -> Result<i32> {
    let saved = PlanFile::load(&cwd.join(&args.plan_file))?;
    let text = match args.format {
        super::super::args::PlanFormat::Json => saved.to_text(),
        format => render_plan(&saved.plan, format, None, &[]),
    };
    out.success(&plan::summary_line(&saved.plan), &text, &saved);
    Ok(0)
}
