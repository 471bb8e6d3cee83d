//! `kmm generate-schemas [DIR]` (hidden): writes the JSON Schemas generated from the Rust types
//! (`schemars`) of the lock, the plan file, and the `--json` data of plan, apply (and watch) and
//! lock, and of each line of `watch --json`. A unit test below fails when a committed schema in `schemas/` is out of date.
//!
//! The manifest and registry schemas stay hand-written (`kari-models.schema.json`,
//! `model_registry.schema.json`): their parsers are hand-written too (spans, unknown-field
//! preservation), and their own tests keep the key sets in sync.

use std::path::Path;

use crate::error::{Error, Result};
use crate::lockfile::Lockfile;
use crate::plan::file::PlanFile;

use std::path::PathBuf;

use clap::Args;

use crate::cli::output::Output;
use crate::cli::plan_output::{ApplyOutput, PlanOutput};

use super::lock::LockOutput;
use super::watch::WatchOutput;

#[derive(Debug, Clone, Args)]
pub struct GenerateSchemasArgs {
    /// The folder to write the schemas into.
    #[arg(default_value = "schemas")]
    pub dir: PathBuf,
}

/// File name -> schema text (pretty JSON, trailing newline), sorted by name.
pub(in crate::cli) fn all() -> Vec<(&'static str, String)> {
    fn text(schema: schemars::Schema) -> String {
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
    vec![
        (
            "apply-output.schema.json",
            text(schemars::schema_for!(ApplyOutput<'static>)),
        ),
        (
            "lock-output.schema.json",
            text(schemars::schema_for!(LockOutput)),
        ),
        (
            "fleet-status-output.schema.json",
            text(schemars::schema_for!(crate::ops::FleetStatus)),
        ),
        ("lock.schema.json", text(schemars::schema_for!(Lockfile))),
        (
            "plan-output.schema.json",
            text(schemars::schema_for!(PlanOutput<'static>)),
        ),
        ("plan.schema.json", text(schemars::schema_for!(PlanFile))),
        (
            "watch-output.schema.json",
            text(schemars::schema_for!(WatchOutput<'static>)),
        ),
    ]
}

pub(in crate::cli) fn run(args: &GenerateSchemasArgs, cwd: &Path, out: Output) -> Result<i32> {
    let dir = cwd.join(&args.dir);
    fs_err::create_dir_all(&dir)
        .map_err(|error| Error::io(format!("creating `{}`", dir.display()), &error))?;
    let mut written = Vec::new();
    for (name, text) in all() {
        crate::atomic_file::write(&dir.join(name), text.as_bytes(), "the schema")?;
        written.push(name);
    }
    let message = format!("Wrote {} schemas into {}", written.len(), dir.display());
    out.success(&message, if out.quiet { "" } else { &message }, &written);
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schemas_are_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        for (name, text) in super::all() {
            let committed = fs_err::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == text,
                "schemas/{name} is out of date: run `cargo run -- generate-schemas` and commit it"
            );
        }
    }

    use std::path::Path;
}
