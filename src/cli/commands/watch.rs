//! `kmm watch [--interval DURATION]`: [`crate::watch`] driving the same reconcile as
//! `kmm apply`, printing one result per reconcile (with `--json`, one envelope per line).
//!
//! Errors that need a human edit (a manifest, lock or registry kmm cannot read, a model or file
//! that does not exist, a license to accept, bad usage) wait for the next save; the others (the
//! network, the disk, a busy store lock) are retried with backoff. SIGINT and SIGTERM stop the
//! loop; the exit code is 0.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, ErrorCode, Result};
use crate::lockfile;
use crate::watch::{self, Trigger, Verdict, WatchConfig};

use clap::Args;

use crate::cli::flags::{LockArgs, parse_duration};
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::ApplyOutput;
use crate::ops::{self, EnvLookup, settings};

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Reconcile at least this often to repair drift, e.g. `30s`, `5m` (1s at least).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub interval: std::time::Duration,
    /// First delay before retrying a failed reconcile; it doubles on each failure (up to the interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub retry_delay: std::time::Duration,
    #[command(flatten)]
    pub lock: LockArgs,
}

/// How long the watched files must be quiet before a change is reconciled.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The shortest `--interval`.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest `--retry-delay` (a failing reconcile would otherwise retry in a busy loop).
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The `--json` data of one reconcile of `kmm watch`.
#[derive(Serialize, schemars::JsonSchema)]
pub(in crate::cli) struct WatchOutput<'a> {
    /// What started this reconcile: `start`, `change`, `interval` or `retry`.
    pub trigger: &'static str,
    #[serde(flatten)]
    pub applied: ApplyOutput<'a>,
}

pub(in crate::cli) async fn run(
    global: &GlobalArgs,
    args: &WatchArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    // Each reconcile plans the whole store: below a second, `watch` is a busy loop (1ms gave
    // about 70 reconciles a second), and changes are reconciled on their events anyway.
    if args.interval < MIN_INTERVAL {
        return Err(Error::args(format!(
            "--interval {} is too short",
            humantime::format_duration(args.interval)
        ))
        .with_hint("use 1s or more; changes to the manifest and lock are reconciled at once, the interval only repairs drift"));
    }
    if args.retry_delay < MIN_RETRY_DELAY {
        return Err(Error::args(format!(
            "--retry-delay {} is too short",
            humantime::format_duration(args.retry_delay)
        ))
        .with_hint("use 100ms or more"));
    }
    let signal_error =
        |error: std::io::Error| Error::internal(format!("installing signal handlers: {error}"));
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };

    let overrides = global.overrides();
    let overrides = &overrides;
    let manifest = settings::manifest_path(overrides, env, cwd);
    let config = WatchConfig {
        files: vec![manifest.clone(), lockfile::path_beside(&manifest)],
        interval: args.interval,
        debounce: DEBOUNCE,
        retry_delay: args.retry_delay,
    };
    out.status(&format!(
        "Watching {} (every {}); Ctrl-C to stop.",
        manifest.display(),
        humantime::format_duration(args.interval)
    ));
    let mode = args.lock.mode();
    let options = ops::ApplyOptions {
        plan: ops::PlanOptions::default(),
        force_compat: false,
        frozen: mode.frozen,
        whole_manifest_env: Some(env),
    };
    let options = &options;
    watch::run(
        config,
        |trigger| async move {
            match ops::apply_manifest(overrides, mode, options, env, cwd, &out).await {
                Ok(applied) => {
                    let line = format!("[{}] {}", trigger.as_str(), applied.message);
                    out.success(
                        &applied.message,
                        if out.quiet { "" } else { &line },
                        &WatchOutput {
                            trigger: trigger.as_str(),
                            applied: ApplyOutput {
                                plan: &applied.plan,
                                report: &applied.report,
                            },
                        },
                    );
                    Verdict::Converged
                }
                Err(error) => {
                    out.error(&error);
                    verdict_of(&error, trigger)
                }
            }
        },
        shutdown,
    )
    .await?;
    out.status("Stopped.");
    Ok(0)
}

/// Which failures wait for an edit rather than a retry.
fn verdict_of(error: &Error, _trigger: Trigger) -> Verdict {
    match error.code() {
        ErrorCode::Schema | ErrorCode::NotFound | ErrorCode::License | ErrorCode::Args => {
            Verdict::Invalid
        }
        _ => Verdict::Failed,
    }
}
