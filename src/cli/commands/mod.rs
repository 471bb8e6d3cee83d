//! The hub-facing verbs: `list`, `info`, `download`, `browse`, `license`, `pin`, one file
//! each. Every verb is a few lines over the library ([`crate::api`], the reconcile session of
//! `plan`/`apply`, [`crate::registry`]) plus its human rendering; `--json` data shapes are
//! documented by `schemas/data/<verb>.schema.json`.
//!
//! Edges: like the rest of `cli`, the only place that prints; writes to the store go through
//! `apply` (download, browse) or the registry under the store lock (license, pin).

pub mod browse;
pub mod download;
pub mod info;
pub mod license;
pub mod list;
pub mod pin;

use crate::error::{Error, Result};
use crate::hub::HubClient;

use super::reconcile::Session;

/// The hub client of a session, or `E_NET` when offline.
pub(crate) fn require_hub<'a>(session: &'a Session, verb: &str) -> Result<&'a HubClient> {
    session.hub.as_ref().ok_or_else(|| {
        Error::net(format!("`kmm {verb}` needs the hub, and kmm is offline"))
            .with_hint("drop --offline / HF_HUB_OFFLINE=1, or use a mirror with --mirror URL")
    })
}

/// Checks a repo id given on the command line: `E_ARGS` saying what is wrong.
pub(crate) fn check_model_arg(id: &str) -> Result<()> {
    crate::layout::check_repo_id(id).map_err(|why| {
        Error::args(format!(
            "--model `{id}` is not a Hugging Face repo id: {why}"
        ))
    })
}

/// `1.2 GB` style sizes (10^3 units, as the plan prints them).
pub(crate) fn size(bytes: u64) -> String {
    crate::plan::format_bytes(bytes)
}

/// `2026-11-25` out of an RFC 3339 time, for tables.
pub(crate) fn day(time: Option<&str>) -> String {
    time.map(|time| time.chars().take(10).collect())
        .unwrap_or_else(|| "-".to_string())
}
