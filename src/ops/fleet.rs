//! The fleet: each host's report after an apply ([`report_node`], run by `kmm apply` and every
//! `kmm watch` reconcile) and `kmm fleet status` ([`fleet_status`]), which compares every host's
//! last report with the local lock.
//!
//! Edges: reads the lock file and the registry; writes only `PREFIX/nodes/<node>.json`.
//! Results come back as data for the CLI to render.

use std::path::Path;
use std::time::SystemTime;

use sha2::Digest as _;

use super::Reporter;
use super::session::Session;
use super::settings::{EnvLookup, Overrides};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::shared::nodes::NodeReport;

/// SHA-256 of the lock file's bytes (none when there is no lock).
pub fn lock_digest(lock_path: &Path) -> Option<String> {
    let bytes = std::fs::read(lock_path).ok()?;
    Some(hex::encode(sha2::Sha256::digest(bytes)))
}

/// Writes this host's report to the shared store after an apply ended with `outcome`. A
/// report that cannot be written is a warning: the apply's own outcome stands.
pub async fn report_node<T>(session: &Session, outcome: &Result<T>, reporter: &dyn Reporter) {
    let Some(tier) = session.shared.as_deref() else {
        return;
    };
    let models = Registry::load(&session.paths.registry_file())
        .map(|registry| {
            registry
                .models
                .iter()
                .filter_map(|(id, record)| Some((id.clone(), record.commit.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let report = NodeReport {
        node: tier.node().to_string(),
        lock_digest: lock_digest(&session.lock_path),
        models,
        converged: outcome.is_ok(),
        error_code: outcome
            .as_ref()
            .err()
            .map(|error| error.code().as_str().to_string()),
        time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        kmm_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let written = match session.shared_store().await {
        Ok(Some(tier)) => tier.write_node_report(&report).await,
        Ok(None) => Ok(()),
        Err(error) => Err(error),
    };
    if let Err(error) = written {
        reporter.status(&format!(
            "warning: this host's report was not written to the shared store: {error}"
        ));
    }
}

/// One host in `kmm fleet status`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetHost {
    pub node: String,
    /// `converged` (to the local lock), `behind` (converged to another lock) or `failed`.
    pub state: HostState,
    pub lock_digest: Option<String>,
    pub error_code: Option<String>,
    /// When the host last reported (RFC 3339).
    pub last_seen: String,
    pub kmm_version: String,
    /// Model id -> installed commit.
    pub models: std::collections::BTreeMap<String, String>,
}

#[derive(schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Converged,
    Behind,
    Failed,
}

/// `kmm fleet status`: every host that reported, against the local lock.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetStatus {
    pub shared_store: String,
    /// The digest of the local `kari-models.lock` (none without a lock).
    pub lock_digest: Option<String>,
    pub hosts: Vec<FleetHost>,
    /// How many hosts are converged to the local lock.
    pub converged: usize,
}

impl FleetStatus {
    /// True when every host that reported is converged to the local lock.
    pub fn all_converged(&self) -> bool {
        self.converged == self.hosts.len()
    }
}

/// Reads every host's report from the shared store named by the settings (`E_ARGS` when none
/// is named; `E_NET` when it cannot be listed).
pub async fn fleet_status(
    overrides: &Overrides,
    env: EnvLookup<'_>,
    cwd: &Path,
) -> Result<FleetStatus> {
    let session = Session::open_lenient(overrides, env, cwd).await?;
    if session.settings.offline && session.settings.shared_store.is_some() {
        return Err(Error::args(
            "kmm fleet status reads the shared store, which --offline forbids",
        )
        .with_hint("drop --offline (and unset HF_HUB_OFFLINE)"));
    }
    let Some(tier) = session.shared.as_deref() else {
        return Err(Error::args("no shared store is named").with_hint(
            "name it with --shared-store s3://BUCKET/PREFIX, KMM_SHARED_STORE or shared_store in [settings]",
        ));
    };
    let local = lock_digest(&session.lock_path);
    let hosts: Vec<FleetHost> = tier
        .node_reports()
        .await?
        .into_iter()
        .map(|report| {
            let state = if !report.converged {
                HostState::Failed
            } else if report.lock_digest.is_some() && report.lock_digest == local {
                HostState::Converged
            } else {
                HostState::Behind
            };
            FleetHost {
                node: report.node,
                state,
                lock_digest: report.lock_digest,
                error_code: report.error_code,
                last_seen: report.time,
                kmm_version: report.kmm_version,
                models: report.models,
            }
        })
        .collect();
    Ok(FleetStatus {
        shared_store: tier.url().to_string(),
        lock_digest: local,
        converged: hosts
            .iter()
            .filter(|host| host.state == HostState::Converged)
            .count(),
        hosts,
    })
}
