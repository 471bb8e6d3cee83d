//! Command-line arguments as clap parses them. No I/O here: turning them into settings (with the
//! environment and the manifest) is `settings`'s job.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// kmm keeps a models directory in the state that kari-models.toml declares.
#[derive(Debug, Parser)]
#[command(name = "kmm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the verb.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Print exactly one JSON document {"success","message","error_code","data"} on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and the data the verb exists to print.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never use the network (also HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Use this Hugging Face compatible mirror instead of the Hub (checked for reachability first).
    #[arg(long, global = true, value_name = "URL")]
    pub mirror: Option<String>,
    /// The manifest [default: $KMM_MANIFEST, else ./kari-models.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// The models directory [default: $KMM_MODELS_DIR, else the manifest's models_dir, else models/ beside the manifest].
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Files downloaded in parallel [default: $KMM_MAX_WORKERS, else the manifest's max_workers, else 8].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_workers: Option<u16>,
    /// How long to wait for another kmm holding the store lock, e.g. `30s`, `5m`, `0s` [default: wait forever].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,
    /// More logs on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what apply would change, without changing anything.
    Plan(PlanArgs),
    /// Make the models directory match the manifest.
    Apply(ApplyArgs),
    /// Check whether this machine can run a model (reads only its file headers).
    Compatibility(super::commands_machine::compatibility::CompatibilityArgs),
    /// Evict least recently used models to meet a quota or free space; drop stale downloads.
    Gc(super::commands_machine::gc::GcArgs),
    /// Install baseline models: distilbert, the spaCy pipeline, the basic classifier.
    Ensure(super::commands_machine::ensure::EnsureArgs),
    /// Print a model's install path and record the access (for programs that load models).
    Path(super::commands_machine::path::PathArgs),
    /// List an owner's models on the hub.
    List(super::commands::list::ListArgs),
    /// Show a model's files, sizes, license, routing and install state.
    Info(super::commands::info::InfoArgs),
    /// Install one model (a one-model apply; other models are left alone).
    Download(super::commands::download::DownloadArgs),
    /// Pick an owner's model interactively and install it (needs a terminal).
    Browse(super::commands::browse::BrowseArgs),
    /// Show a model's license, or record its acceptance.
    License(super::commands::license::LicenseArgs),
    /// Protect an installed model from removal, or --unpin it.
    Pin(super::commands::pin::PinArgs),
    /// Resolve every declared model and write kari-models.lock (commit and files per model).
    Lock(LockCmdArgs),
    /// Render a saved plan file (from `kmm plan --out`).
    Show(ShowArgs),
    /// Keep applying: at start, when the manifest or lock changes, and every interval.
    Watch(WatchArgs),
    /// Registry maintenance: `kmm registry repair` rebuilds an unreadable model_registry.json
    /// from disk after backing it up
    Registry(super::commands_registry::RegistryArgs),
    /// Move an older layout into place: flat GGUFs, wrong folders, old registry records, config
    /// mirrors, `*.corrupt` leftovers. Downloads nothing, deletes nothing it cannot attribute.
    Migrate(super::commands_migrate::MigrateArgs),
    /// Re-hash every installed file of the declared models and report drift (exit code 2 when
    /// anything differs; `kmm apply --verify` repairs it).
    Verify(super::commands_migrate::VerifyArgs),
    /// Write the JSON Schemas of kmm's files and --json data into a folder (for development).
    #[command(hide = true)]
    GenerateSchemas(GenerateSchemasArgs),
}

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
    /// The lock must match and must not be written.
    pub fn strict(self) -> bool {
        self.locked || self.frozen
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

#[derive(Debug, Clone, Args)]
pub struct LockCmdArgs {
    /// Refresh only this model (repeatable); the others keep their current entries.
    #[arg(long, value_name = "ID")]
    pub update: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The plan file.
    pub plan_file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: PlanFormat,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Reconcile at least this often to repair drift, e.g. `30s`, `5m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub interval: std::time::Duration,
    /// First delay before retrying a failed reconcile; it doubles on each failure (up to the interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub retry_delay: std::time::Duration,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateSchemasArgs {
    /// The folder to write the schemas into.
    #[arg(default_value = "schemas")]
    pub dir: PathBuf,
}

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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (examples: 30s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_work_after_the_verb() {
        let cli = Cli::try_parse_from(["kmm", "plan", "--json", "--offline", "-q"]).unwrap();
        assert!(cli.global.json && cli.global.offline && cli.global.quiet);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
