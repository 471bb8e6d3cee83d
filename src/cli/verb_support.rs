//! What several verbs share besides flags: checking a `--model` argument, opening a session
//! for one model, requiring the hub, and the short formats of tables.
//!
//! Edges: over [`crate::ops::Session`]; imported by verb files only, it imports none of them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::hub::HubClient;
use crate::ops::{EnvLookup, Session};

use super::global_args::GlobalArgs;

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

/// The start of a verb about one model (`info`, `license`, `pin`, `compatibility`, `path`,
/// `download`): `--model` checked first (`E_ARGS` before any file is read), then a session
/// that works without a manifest.
pub(crate) async fn open_for_model(
    global: &GlobalArgs,
    model: &str,
    env: EnvLookup<'_>,
    cwd: &Path,
) -> Result<Session> {
    check_model_arg(model)?;
    Session::open_lenient(&global.overrides(), env, cwd).await
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
