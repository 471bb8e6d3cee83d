//! Observing a store for a plan that sees drift and old layouts: the scan, the downloads an
//! earlier boot left unconfirmed on disk, then the hashes the planner asks for.
//!
//! `store::observe` reads what is cheap (one `stat` per file of the scanned folders, one
//! `readdir` per folder of the store); [`crate::plan::hash_requests`] decides, without I/O,
//! which files are worth hashing (files no record vouches for but that could be a declared
//! file: the seed's hash-less records, unrecorded folders, flat GGUFs, files in wrong folders;
//! with `verify`, every installed file); [`crate::store::hash_files`] hashes them. The planner
//! then keeps, adopts or moves files by hash instead of downloading them, and replaces files
//! whose bytes changed in place (`tampered`).
//!
//! Edges: reads only (the I/O half of observing; the pure half is in [`crate::plan`], so the
//! planner stays free of I/O); used by every reconcile of [`crate::ops`].

use crate::error::Result;
use crate::plan::{self, DesiredModel};
use crate::registry::Registry;
use crate::store::{self, Observed, StorePaths};

/// Scans what a plan for `desired` needs and hashes what the planner asks for. `registry` is
/// the registry as loaded by the caller (it names the folders to scan); it becomes
/// `Observed::registry`, so a large registry is held once.
pub fn observe(
    paths: &StorePaths,
    desired: &[DesiredModel],
    registry: Registry,
    verify: bool,
) -> Result<Observed> {
    let dirs = plan::dirs_to_observe(paths.root(), desired, &registry);
    let mut observed = store::observe_with(paths, &dirs, Some(registry))?;
    observed.unconfirmed = crate::durability::unconfirmed(paths);
    let requests = plan::hash_requests(paths.root(), desired, &observed, verify);
    if !requests.is_empty() {
        tracing::debug!("hashing {} file(s) to plan", requests.len());
    }
    store::hash_files(paths, &requests, &mut observed)?;
    Ok(observed)
}
