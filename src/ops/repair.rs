//! `kmm registry repair`: the way out of an unreadable `model_registry.json`.
//!
//! Resolve the declared models without the broken registry's hints (the lock, the hub or the
//! caches), take the store lock, check again that the registry is still unreadable (another
//! kmm may have fixed it meanwhile), then [`crate::repair::rebuild`]: back it up and rebuild it
//! from the disk. A readable registry is left alone.

use crate::error::Result;
use crate::registry::Registry;
use crate::repair::RepairReport;

use super::Reporter;
use super::session::Session;

/// What `kmm registry repair` did.
pub enum RepairOutcome {
    /// The registry was readable (or missing, an empty store): nothing changed.
    Readable,
    /// Backed up and rebuilt.
    Repaired(RepairReport),
}

pub async fn repair_registry(session: &Session, reporter: &dyn Reporter) -> Result<RepairOutcome> {
    let registry_file = session.paths.registry_file();
    if is_readable(&registry_file) {
        return Ok(RepairOutcome::Readable);
    }
    // The broken registry cannot give hints; license acceptances recorded beside it still count.
    let pending = crate::registry::load_pending_licenses(&crate::registry::pending_licenses_file(
        session.paths.root(),
    ))?;
    let hints = Registry::default().with_pending_licenses(&pending);
    let desired = crate::resolve::resolve_all_with_lock(
        &session.manifest,
        &session.resolve_context(&hints),
        session.lock.as_ref(),
        false,
    )
    .await?;
    let _lock = session.lock_store(reporter)?;
    if is_readable(&registry_file) {
        return Ok(RepairOutcome::Readable);
    }
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    Ok(RepairOutcome::Repaired(crate::repair::rebuild(
        &session.paths,
        &desired,
        &now,
    )?))
}

/// A missing registry is readable (an empty store); only a file that fails to load is not.
fn is_readable(path: &std::path::Path) -> bool {
    Registry::load(path).is_ok()
}
