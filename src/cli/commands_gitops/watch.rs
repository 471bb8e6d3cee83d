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

use super::super::args::{GlobalArgs, WatchArgs};
use super::super::output::Output;
use super::super::reconcile::{self, ApplyOutput};
use super::super::settings::{self, EnvLookup};

/// How long the watched files must be quiet before a change is reconciled.
const DEBOUNCE: Duration = Duration::from_millis(300);

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
    if args.interval.is_zero() {
        return Err(Error::args("--interval must be more than 0s"));
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

    let manifest = settings::manifest_path(global, env, cwd);
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
    let mode = args.lock;
    let options = reconcile::ApplyOptions {
        plan: reconcile::PlanOptions::default(),
        force_compat: false,
        frozen: mode.frozen,
        whole_manifest_env: Some(env),
    };
    let options = &options;
    watch::run(
        config,
        |trigger| async move {
            match reconcile::apply_manifest(global, mode, options, env, cwd, out).await {
                Ok((message, plan, report)) => {
                    let line = format!("[{}] {message}", trigger.as_str());
                    out.success(
                        &message,
                        if out.quiet { "" } else { &line },
                        &WatchOutput {
                            trigger: trigger.as_str(),
                            applied: ApplyOutput {
                                plan: &plan,
                                report,
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
