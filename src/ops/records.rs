//! Edits of one model's registry record outside a reconcile: `kmm pin`, `kmm license --accept`
//! and `kmm path` (its access time). Each takes the store lock and saves atomically; reading
//! which acceptance applies (manifest, record, or pending) is here too, beside where it is
//! written.
//!
//! Edges: reads and writes the registry and the pending acceptances through
//! [`crate::registry`]; the manifest is read only.

use crate::error::{Error, Result};
use crate::registry::{self, Record, Registry};

use super::{Reporter, Session};

/// What [`set_pin`] did.
pub struct PinChange {
    pub pinned: bool,
    /// Whether the registry changed (false when it already was so).
    pub changed: bool,
    /// What the manifest declares for the model, if anything (it wins at the next apply).
    pub manifest_pinned: Option<bool>,
}

/// Sets or clears `pinned` in the record of the installed model `id` (`E_NOT_FOUND` when it
/// is not installed).
pub fn set_pin(
    session: &Session,
    id: &str,
    pinned: bool,
    reporter: &dyn Reporter,
) -> Result<PinChange> {
    let _lock = session.lock_store(reporter)?;
    let path = session.paths.registry_file();
    let mut registry = Registry::load(&path)?;
    let record = registry.models.get_mut(id).ok_or_else(|| {
        Error::not_found(format!("{id} is not installed here")).with_hint(format!(
            "install it first (`kmm download --model {id}`), or declare `pinned = true` in kari-models.toml"
        ))
    })?;
    let changed = record.pinned.unwrap_or(false) != pinned;
    record.pinned = pinned.then_some(true);
    if changed {
        registry.save(&path)?;
    }
    let manifest_pinned = session.manifest.models.get(id).and_then(|spec| spec.pinned);
    Ok(PinChange {
        pinned,
        changed,
        manifest_pinned,
    })
}

/// Records that `user_id` accepted `license_type` for `id`, now: in the model's registry
/// record when it is installed, else in the pending acceptances from where the install copies
/// it into the record.
pub fn accept_license(
    session: &Session,
    id: &str,
    user_id: &str,
    license_type: &str,
    reporter: &dyn Reporter,
) -> Result<()> {
    let acceptance = serde_json::json!({
        "accepted": true,
        "user_id": user_id,
        "license_type": license_type,
        "accepted_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    });
    let _lock = session.lock_store(reporter)?;
    let registry_path = session.paths.registry_file();
    let mut registry = Registry::load(&registry_path)?;
    match registry.models.get_mut(id) {
        Some(record) => {
            record.license_accepted = Some(acceptance);
            registry.save(&registry_path)
        }
        None => {
            let pending_path = registry::pending_licenses_file(session.paths.root());
            let mut pending = registry::load_pending_licenses(&pending_path)?;
            pending.insert(id.to_string(), acceptance);
            registry::save_pending_licenses(&pending_path, &pending)
        }
    }
}

/// The license acceptance kmm uses for `id` and where it is recorded: the manifest's
/// (`manifest`), the registry record's (`registry`), or a pending one (`pending`: not
/// installed yet). `None` when there is none.
pub fn license_acceptance(
    session: &Session,
    id: &str,
) -> Result<Option<(serde_json::Value, &'static str)>> {
    // Both read even when the manifest answers: an unreadable registry is an error here too.
    let registry = Registry::load(&session.paths.registry_file())?;
    let pending =
        registry::load_pending_licenses(&registry::pending_licenses_file(session.paths.root()))?;
    let declared = session
        .manifest
        .models
        .get(id)
        .and_then(|spec| spec.license.as_ref())
        .filter(|license| license.accepted);
    if let Some(value) = declared.and_then(|license| serde_json::to_value(license).ok()) {
        return Ok(Some((value, "manifest")));
    }
    if let Some(value) = registry
        .models
        .get(id)
        .and_then(|record| record.license_accepted.clone())
    {
        return Ok(Some((value, "registry")));
    }
    Ok(pending.get(id).map(|value| (value.clone(), "pending")))
}

/// `kmm path`: records now as `id`'s `last_accessed` (what `kmm gc` evicts by) and returns
/// its record.
pub fn record_access(session: &Session, id: &str, reporter: &dyn Reporter) -> Result<Record> {
    let _lock = session.lock_store(reporter)?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    crate::apply::record_access(&session.paths, id, now)
}
