//! The `kmm` command line: parse, settle settings, run a verb, print, pick the exit code.
//!
//! Verbs are thin: each one is its arguments, one [`crate::ops`] call and its rendering. This
//! is the only module that writes to stdout/stderr; the environment is read here and handed to
//! [`crate::ops::settings`] as a lookup.
//!
//! | file | job |
//! | --- | --- |
//! | `args.rs` | [`Cli`] and the [`Command`] enum (each verb's arguments live with the verb) |
//! | `global_args.rs` | [`GlobalArgs`], the flags of every verb, and their [`crate::ops::Overrides`] |
//! | `flags.rs` | flag groups several verbs flatten (`LockArgs`, `SelectionArgs`) |
//! | `commands/<verb>.rs` | one verb each |
//! | `verb_support.rs` | `--model` checks, sessions for one model, table formats |
//! | `plan_output.rs` | plan and apply renderings and `--json` shapes shared by verbs |
//! | `output.rs` | the `--json` envelope, status lines, errors with hints |
//! | `progress.rs` | apply progress on stderr: the [`crate::ops::Reporter`] of the CLI |
//! | `table.rs` | aligned text tables |
//!
//! Edges: nothing else in the crate imports `cli`.

mod args;
mod commands;
mod flags;
mod global_args;
mod output;
mod plan_output;
mod progress;
mod table;
mod verb_support;

use clap::Parser;

use crate::error::{Error, Result};

pub use args::{Cli, Command};
pub use global_args::GlobalArgs;
pub use output::{Envelope, Output};

/// Runs kmm with the process arguments and returns the exit code.
pub fn main() -> i32 {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(error) => return usage_error(error, &raw),
    };
    let out = Output {
        json: cli.global.json,
        quiet: cli.global.quiet,
    };
    init_tracing(cli.global.verbose);
    match run(&cli, out) {
        Ok(code) => code,
        Err(error) => {
            out.error(&error);
            error.exit_code()
        }
    }
}

/// Runs the parsed command; returns the exit code on success (0, or 2 for
/// `plan --detailed-exitcode` with changes).
pub fn run(cli: &Cli, out: Output) -> Result<i32> {
    let cwd = std::env::current_dir()
        .map_err(|error| Error::io("reading the current directory", &error))?;
    let env = |name: &str| std::env::var(name).ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::internal(format!("starting the async runtime: {error}")))?;
    runtime.block_on(async {
        let global = &cli.global;
        match &cli.command {
            Command::Plan(args) => commands::plan::run(global, args, &env, &cwd, out).await,
            Command::Apply(args) => commands::apply::run(global, args, &env, &cwd, out).await,
            Command::Compatibility(args) => {
                commands::compatibility::run(global, args, &env, &cwd, out).await
            }
            Command::Gc(args) => commands::gc::run(global, args, &env, &cwd, out).await,
            Command::Ensure(args) => commands::ensure::run(global, args, &env, &cwd, out).await,
            Command::Path(args) => commands::path::run(global, args, &env, &cwd, out).await,
            Command::List(args) => commands::list::run(global, args, &env, &cwd, out).await,
            Command::Info(args) => commands::info::run(global, args, &env, &cwd, out).await,
            Command::Download(args) => commands::download::run(global, args, &env, &cwd, out).await,
            Command::Browse(args) => commands::browse::run(global, args, &env, &cwd, out).await,
            Command::License(args) => commands::license::run(global, args, &env, &cwd, out).await,
            Command::Pin(args) => commands::pin::run(global, args, &env, &cwd, out).await,
            Command::Lock(args) => commands::lock::run(global, args, &env, &cwd, out).await,
            Command::Migrate(args) => commands::migrate::run(global, args, &env, &cwd, out).await,
            Command::Verify(args) => commands::verify::run(global, args, &env, &cwd, out).await,
            Command::Show(args) => commands::show::run(args, &cwd, out),
            Command::Watch(args) => commands::watch::run(global, args, &env, &cwd, out).await,
            Command::Fleet(args) => commands::fleet::run(global, args, &env, &cwd, out).await,
            Command::Registry(args) => commands::registry::run(global, args, &env, &cwd, out).await,
            Command::GenerateSchemas(args) => commands::schemas::run(args, &cwd, out),
            Command::Completions(args) => commands::completions::completions(args, out),
            Command::Man(args) => commands::completions::man(args, &cwd, out),
        }
    })
}

/// clap's errors become `E_ARGS` (exit code 18, not clap's 2); `--help` and `--version` print
/// and exit 0, in the `--json` envelope when `--json` is among the arguments (a script that
/// asks `kmm --json --version` parses stdout as it does for every other verb).
fn usage_error(error: clap::Error, raw: &[std::ffi::OsString]) -> i32 {
    use clap::error::ErrorKind;
    let json = raw.iter().any(|arg| arg == "--json");
    let out = Output { json, quiet: false };
    match error.kind() {
        ErrorKind::DisplayVersion if json => {
            let version = env!("CARGO_PKG_VERSION");
            out.success(
                &format!("kmm {version}"),
                "",
                &serde_json::json!({ "name": "kmm", "version": version }),
            );
            return 0;
        }
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand if json => {
            // The verb path the help is for: the arguments that name subcommands.
            let command: Vec<String> = help_path(raw);
            let help = error.render().to_string();
            out.success(
                &format!("help for `{}`", command.join(" ")),
                "",
                &serde_json::json!({ "command": command, "help": help }),
            );
            return 0;
        }
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            return 0;
        }
        _ => {}
    }
    let rendered = error.render().to_string();
    let first_line = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let error = Error::args(first_line).with_hint("run `kmm --help` for usage");
    out.error(&error);
    error.exit_code()
}

/// `kmm` and the subcommand names in `raw` (`kmm --json help plan` and `kmm plan --help`
/// both give `["kmm", "plan"]`): each argument that names a subcommand of the last one found.
fn help_path(raw: &[std::ffi::OsString]) -> Vec<String> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut path = vec!["kmm".to_string()];
    for arg in raw.iter().skip(1).filter_map(|arg| arg.to_str()) {
        let next = command
            .find_subcommand(arg)
            .filter(|sub| sub.get_name() != "help")
            .cloned();
        if let Some(next) = next {
            path.push(next.get_name().to_string());
            command = next;
        }
    }
    path
}

/// Logs go to stderr; `RUST_LOG` wins over `-v`.
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "kmm=info",
        2 => "kmm=debug",
        _ => "kmm=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colors only for a person at a terminal who did not ask for none: log files and CI logs
    // get plain text (a test grepping kmm's output for control characters found the codes).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
