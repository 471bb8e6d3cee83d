//! The shapes and renderings of plans and applies that several verbs print: `plan`, `show`,
//! `migrate`, `verify` print a plan; `apply`, `watch`, `download`, `browse`, `migrate` an
//! applied one. Their `--json` data types are here (and in `schemas/`).

use serde::Serialize;

use crate::apply::ApplyReport;
use crate::ops::Applied;
use crate::plan::{self, Plan};

use super::flags::PlanFormat;
use super::output::Output;

/// The `--json` data of `kmm plan`: the plan, plus the registry diff with `--diff`.
#[derive(schemars::JsonSchema, Serialize)]
pub struct PlanOutput<'a> {
    #[serde(flatten)]
    pub plan: &'a Plan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_diff: Option<String>,
}

/// A plan in the chosen format, with the registry diff after it when there is one.
pub fn render_plan(
    plan: &Plan,
    format: PlanFormat,
    registry_diff: Option<&str>,
    warnings: &[String],
) -> String {
    let diff = registry_diff.unwrap_or_default();
    match format {
        PlanFormat::Text => {
            let mut text = plan::render_text(plan);
            if !diff.is_empty() {
                text.push('\n');
                text.push_str(diff);
            }
            text
        }
        PlanFormat::Markdown => {
            let mut text = plan::render_markdown(plan, warnings);
            if !diff.is_empty() {
                text.push_str(&format!(
                    "\n<details><summary>registry diff</summary>\n\n```diff\n{diff}```\n\n</details>\n"
                ));
            }
            text
        }
        PlanFormat::Json => {
            let data = PlanOutput {
                plan,
                registry_diff: registry_diff.map(str::to_string),
            };
            let mut text = serde_json::to_string_pretty(&data).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

/// The `--json` data of `kmm apply`.
#[derive(schemars::JsonSchema, Serialize)]
pub struct ApplyOutput<'a> {
    pub plan: &'a Plan,
    pub report: &'a ApplyReport,
}

/// Prints the result of an apply: its message (not with `--quiet`), or the envelope.
pub fn print_applied(out: Output, applied: &Applied) {
    out.success(
        &applied.message,
        if out.quiet { "" } else { &applied.message },
        &ApplyOutput {
            plan: &applied.plan,
            report: &applied.report,
        },
    );
}

/// Prints a plan without warnings or registry diff (`migrate --dry-run`, `verify`).
pub fn print_plan(out: Output, plan: &Plan, format: PlanFormat) {
    let text = render_plan(plan, format, None, &[]);
    out.success(
        &plan::summary_line(plan),
        &text,
        &PlanOutput {
            plan,
            registry_diff: None,
        },
    );
}
