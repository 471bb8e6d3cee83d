//! `kmm fleet status`: one row per host that reported to the shared store, against the local
//! lock. Exit code 2 when any host is not converged to it (as `plan --detailed-exitcode`).
//!
//! Thin over [`ops::fleet_status`].

use std::path::Path;
use std::time::SystemTime;

use clap::{Args, Subcommand};

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::table::{Align, Table};
use crate::error::Result;
use crate::ops::{self, EnvLookup, FleetStatus, HostState};

#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum FleetCommand {
    /// Every host's last apply from the shared store: converged to this lock, behind, or
    /// failed (exit code 2 unless all are converged)
    Status,
}

/// `kmm fleet ...`.
pub async fn run(
    global: &GlobalArgs,
    args: &FleetArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    match args.command {
        FleetCommand::Status => {
            let status = ops::fleet_status(&global.overrides(), env, cwd).await?;
            let message = summary(&status);
            let text = if out.quiet {
                String::new()
            } else {
                format!("{}{message}", table(&status))
            };
            out.success(&message, &text, &status);
            Ok(if status.all_converged() { 0 } else { 2 })
        }
    }
}

fn summary(status: &FleetStatus) -> String {
    let lock = status
        .lock_digest
        .as_deref()
        .map_or("no local lock".to_string(), |digest| {
            format!("lock {}", &digest[..12])
        });
    format!(
        "{} of {} hosts converged to {lock} ({}).",
        status.converged,
        status.hosts.len(),
        status.shared_store
    )
}

fn table(status: &FleetStatus) -> String {
    if status.hosts.is_empty() {
        return "No host has reported to the shared store yet.\n".to_string();
    }
    let mut table = Table::new(&[
        ("HOST", Align::Left, true),
        ("STATE", Align::Left, false),
        ("LOCK", Align::Left, false),
        ("MODELS", Align::Right, false),
        ("LAST SEEN", Align::Left, false),
        ("VERSION", Align::Left, false),
    ]);
    for host in &status.hosts {
        let state = match (host.state, &host.error_code) {
            (HostState::Converged, _) => "converged".to_string(),
            (HostState::Behind, _) => "behind".to_string(),
            (HostState::Failed, Some(code)) => format!("failed ({code})"),
            (HostState::Failed, None) => "failed".to_string(),
        };
        table.row(vec![
            host.node.clone(),
            state,
            host.lock_digest
                .as_deref()
                .map_or("-".to_string(), |digest| {
                    digest[..12.min(digest.len())].to_string()
                }),
            host.models.len().to_string(),
            format!("{} ({})", host.last_seen, age(&host.last_seen)),
            host.kmm_version.clone(),
        ]);
    }
    table.render()
}

/// `3m ago` for an RFC 3339 time (`?` when it does not parse).
fn age(time: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339(time) else {
        return "?".to_string();
    };
    match SystemTime::now().duration_since(then) {
        Ok(elapsed) => format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(elapsed.as_secs()))
        ),
        Err(_) => "in the future".to_string(),
    }
}
