//! The command line as clap parses it: the verbs and their arguments. No I/O here: turning
//! them into settings (with the environment and the manifest) is [`crate::ops::settings`]'s
//! job. Each verb's arguments live in its own file under `commands/`.

use clap::{Parser, Subcommand};

use super::commands::{
    apply, browse, compatibility, completions, download, ensure, fleet, gc, info, license, list,
    lock, migrate, path, pin, plan, registry, schemas, show, verify, watch,
};
use super::global_args::GlobalArgs;

/// kmm keeps a models directory in the state that kari-models.toml declares.
#[derive(Debug, Parser)]
#[command(name = "kmm", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what apply would change, without changing anything.
    Plan(plan::PlanArgs),
    /// Make the models directory match the manifest.
    Apply(apply::ApplyArgs),
    /// Check whether this machine can run a model (reads only its file headers).
    Compatibility(compatibility::CompatibilityArgs),
    /// Evict least recently used models to meet a quota or free space; drop stale downloads.
    Gc(gc::GcArgs),
    /// Install baseline models: distilbert, the spaCy pipeline, the basic classifier.
    Ensure(ensure::EnsureArgs),
    /// Print a model's install path and record the access (for programs that load models).
    Path(path::PathArgs),
    /// List an owner's models on the hub.
    List(list::ListArgs),
    /// Show a model's files, sizes, license, routing and install state.
    Info(info::InfoArgs),
    /// Install one model (a one-model apply; other models are left alone).
    Download(download::DownloadArgs),
    /// Pick an owner's model interactively and install it (needs a terminal).
    Browse(browse::BrowseArgs),
    /// Show a model's license, or record its acceptance.
    License(license::LicenseArgs),
    /// Protect an installed model from removal, or --unpin it.
    Pin(pin::PinArgs),
    /// Resolve every declared model and write kari-models.lock (commit and files per model).
    Lock(lock::LockCmdArgs),
    /// Render a saved plan file (from `kmm plan --out`).
    Show(show::ShowArgs),
    /// Keep applying: at start, when the manifest or lock changes, and every interval.
    Watch(watch::WatchArgs),
    /// Registry maintenance: `kmm registry repair` rebuilds an unreadable model_registry.json
    /// from disk after backing it up
    Registry(registry::RegistryArgs),
    /// Move an older layout into place: flat GGUFs, wrong folders, old registry records, config
    /// mirrors, `*.corrupt` leftovers. Downloads nothing, deletes nothing it cannot attribute.
    Migrate(migrate::MigrateArgs),
    /// The fleet on the shared store: `kmm fleet status` shows every host's last apply.
    Fleet(fleet::FleetArgs),
    /// Re-hash every installed file of the declared models and report drift (exit code 2 when
    /// anything differs; `kmm apply --verify` repairs it).
    Verify(verify::VerifyArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(completions::CompletionsArgs),
    /// Print the kmm(1) man page, or write one page per verb into a folder.
    Man(completions::ManArgs),
    /// Write the JSON Schemas of kmm's files and --json data into a folder (for development).
    #[command(hide = true)]
    GenerateSchemas(schemas::GenerateSchemasArgs),
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
