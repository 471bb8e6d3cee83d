//! Flag groups several verbs share, as `#[command(flatten)]` structs, and their value parsers.

use clap::Args;

use crate::ops::LockMode;

/// How plan/apply/watch use kari-models.lock.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct LockArgs {
    /// Fail (E_SCHEMA) if kari-models.lock does not match the manifest; never write it.
    #[arg(long)]
    pub locked: bool,
    /// As --locked, and never ask the hub to resolve anything: models come from the lock as is.
    #[arg(long)]
    pub frozen: bool,
}

impl LockArgs {
    /// The operations' name for these flags.
    pub fn mode(self) -> LockMode {
        LockMode {
            locked: self.locked,
            frozen: self.frozen,
        }
    }
}

/// How `plan` and `show` print a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// Terraform-like text.
    #[default]
    Text,
    /// A pull-request comment.
    Markdown,
    /// The plan as pretty JSON (the --json envelope's data without the envelope).
    Json,
}

/// The flags of a verb that resolves the manifest read-only and prints a plan (`verify`,
/// `migrate`): how to print it and how to use kari-models.lock.
#[derive(Debug, Clone, Copy, Args)]
pub struct PlanViewArgs {
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// Which files of a model a verb selects and how it routes them (`download`, `info`).
#[derive(Debug, Clone, Default, Args)]
pub struct SelectionArgs {
    /// Only files matching GLOB (repeatable; `*` also matches `/`).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching GLOB (repeatable; wins over --include).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Route as this library instead of by content.
    #[arg(long, value_parser = ["llama-cpp", "transformers"])]
    pub library: Option<String>,
}

/// `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (examples: 30s, 5m, 1h)"))
}
