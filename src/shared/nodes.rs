//! Fleet status: after every apply (and every `kmm watch` reconcile) each host writes
//! `PREFIX/nodes/<node>.json`, what it converged to or why it failed; `kmm fleet status`
//! reads them all back.
//!
//! A report holds no secrets and no paths: the node name, the lock's digest, each model's
//! commit, the outcome, the time and kmm's version.
//!
//! Edges: only `PREFIX/nodes/`.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use object_store::{ObjectStore as _, PutPayload};
use serde::{Deserialize, Serialize};

use super::SharedStore;
use crate::error::{Error, Result};

/// One host's last apply, as written to `PREFIX/nodes/<node>.json`.
#[derive(schemars::JsonSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// SHA-256 of the host's `kari-models.lock` after the apply (none without a lock).
    pub lock_digest: Option<String>,
    /// Model id -> installed commit.
    pub models: BTreeMap<String, String>,
    /// True when the apply finished with the store matching the lock.
    pub converged: bool,
    /// The error code (`E_NET`, ...) of a failed apply.
    pub error_code: Option<String>,
    /// RFC 3339, UTC.
    pub time: String,
    pub kmm_version: String,
}

/// How many node reports are read at once.
const READS_AT_ONCE: usize = 16;

impl SharedStore {
    /// Writes this host's report (replacing its last one). A tier that cannot be used gets
    /// the run's one warning (or `E_NET` when required).
    pub async fn write_node_report(&self, report: &NodeReport) -> Result<()> {
        if !self.usable() {
            return Ok(());
        }
        let key = self.key(&["nodes", &format!("{}.json", report.node)]);
        let body = serde_json::to_vec_pretty(report).expect("a node report serializes");
        match self.store.put(&key, PutPayload::from(body)).await {
            Ok(_) => Ok(()),
            Err(error) => self.failed("writing this host's report", &error),
        }
    }

    /// Every host's report, sorted by node name. Unreadable reports are skipped with a
    /// warning; a tier that cannot be listed is `E_NET` (there is nothing else to show).
    pub async fn node_reports(&self) -> Result<Vec<NodeReport>> {
        let keys = self.list("nodes").await.map_err(|error| {
            Error::net(format!("cannot list the hosts in {}", self.url))
                .caused_by(super::describe(&error))
                .with_hint("check AWS_ENDPOINT_URL, the bucket and the credentials")
        })?;
        let store = self.store.clone();
        let mut reports: Vec<NodeReport> = futures_util::stream::iter(keys)
            .filter(|key| std::future::ready(key.as_ref().ends_with(".json")))
            .map(|key| {
                let store = store.clone();
                async move {
                    let parsed = match store.get(&key).await {
                        Ok(got) => got
                            .bytes()
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| {
                                serde_json::from_slice::<NodeReport>(&bytes)
                                    .map_err(|e| e.to_string())
                            }),
                        Err(error) => Err(super::describe(&error)),
                    };
                    parsed.map_err(|why| (key, why))
                }
            })
            .buffer_unordered(READS_AT_ONCE)
            .filter_map(|read| async move {
                match read {
                    Ok(report) => Some(report),
                    Err((key, why)) => {
                        tracing::warn!("skipping the host report {key}: {why}");
                        None
                    }
                }
            })
            .collect()
            .await;
        reports.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(reports)
    }
}
