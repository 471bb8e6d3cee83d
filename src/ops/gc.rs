//! `kmm gc`: evicts least recently used models until the store fits the quota (the request's,
//! else the manifest's `quota_gb`) and the target bytes are freed, and deletes stale downloads
//! in `.kmm/downloads/`.
//!
//! Selection is [`crate::gc::select`]; removal goes through a plan of `RemoveModel` +
//! `Unregister` actions carried out by [`crate::apply`] (model folders, config mirrors and
//! records; nothing else). A dry run computes the same and changes nothing.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::apply;
use crate::desired::DesiredModel;
use crate::error::Result;
use crate::gc::{self, Eviction};
use crate::plan::{self, PlanInput, format_bytes};
use crate::registry::Registry;
use crate::store;

use super::Reporter;
use super::session::Session;

/// What `kmm gc` is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcRequest {
    /// Compute and report; change nothing.
    pub dry_run: bool,
    /// Free at least this many GB.
    pub target_gb: Option<f64>,
    /// Shrink the store to at most this many GB (`None`: the manifest's `quota_gb`).
    pub quota_gb: Option<f64>,
    /// Declared (unpinned) models may be evicted too, after undeclared ones.
    pub evict_declared: bool,
}

/// One stale download.
#[derive(Debug, Serialize)]
pub struct StaleDownload {
    pub name: String,
    pub size: u64,
}

/// What `kmm gc` did or would do (the `--json` data of `kmm gc`).
#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub store_bytes: u64,
    pub quota_bytes: Option<u64>,
    pub target_bytes: Option<u64>,
    pub evict: Vec<Eviction>,
    pub bytes_freed: u64,
    pub downloads: Vec<StaleDownload>,
    pub download_bytes_freed: u64,
    /// Why stale downloads were not looked at, when they were not.
    pub downloads_skipped: Option<String>,
}

/// `kmm gc`: selects, then (unless a dry run) removes under the store lock.
pub async fn collect_garbage(
    session: &Session,
    request: GcRequest,
    reporter: &dyn Reporter,
) -> Result<GcReport> {
    let (desired, downloads_skipped) = declared_models(session).await;
    let _lock = if request.dry_run {
        None
    } else {
        Some(session.lock_store(reporter)?)
    };
    let paths = &session.paths;
    let registry = Registry::load(&paths.registry_file())?;
    let store_bytes: u64 = registry.models.values().map(|r| r.total_size).sum();
    let quota_gb = request.quota_gb.or(session.settings.quota_gb);
    let quota_bytes = quota_gb.map(gc::gb_to_bytes);
    let target_bytes = request.target_gb.map(gc::gb_to_bytes);
    let need = target_bytes
        .unwrap_or(0)
        .max(quota_bytes.map_or(0, |quota| gc::excess(store_bytes, quota)));
    let selection = select(session, &registry, &desired, request, need, store_bytes)?;
    let evict: Vec<String> = selection.evict.iter().map(|e| e.id.clone()).collect();

    let dirs = plan::dirs_to_observe(paths.root(), &[], &registry);
    let mut observed = store::observe(paths, &dirs)?;
    // gc removes models only; leftovers are apply's business.
    observed.strays.clear();
    let mut plan = plan::compute_with_evictions(
        PlanInput {
            models_dir: paths.root(),
            desired: &[],
            observed: &observed,
            prune: false,
        },
        &evict,
    );
    plan.notes.clear();

    let downloads = if downloads_skipped.is_some() {
        Vec::new()
    } else {
        apply::stale_downloads(paths, &kept_hashes(&registry, &desired, &evict))?
    };
    let download_bytes_freed = downloads.iter().map(|(_, size)| size).sum();

    if !request.dry_run {
        if !plan.is_empty() {
            session
                .run_apply(&plan, &apply::FetchSources::default(), reporter)
                .await?;
        }
        let names: Vec<String> = downloads.iter().map(|(name, _)| name.clone()).collect();
        apply::delete_downloads(paths, &names)?;
        // gc fetches nothing and hashes nothing: it only lets go of what no file holds now.
        crate::durability::settle(paths, &BTreeSet::new())?;
    }

    Ok(GcReport {
        dry_run: request.dry_run,
        store_bytes,
        quota_bytes,
        target_bytes,
        bytes_freed: selection.bytes_freed,
        evict: selection.evict,
        downloads: downloads
            .into_iter()
            .map(|(name, size)| StaleDownload { name, size })
            .collect(),
        download_bytes_freed,
        downloads_skipped,
    })
}

/// Declared models, resolved (needs the hub or the registry) so that their downloads are
/// kept; when they cannot be resolved, why (and then no download is deleted).
async fn declared_models(session: &Session) -> (Vec<DesiredModel>, Option<String>) {
    if session.manifest.models.is_empty() {
        return (Vec::new(), None);
    }
    match session.resolve().await {
        Ok(desired) => (desired, None),
        Err(error) => (
            Vec::new(),
            Some(format!(
                "the declared models could not be resolved ({}); downloads are kept",
                error.message()
            )),
        ),
    }
}

/// The models to evict for `need` bytes (`E_QUOTA` when protected models stand in the way).
fn select(
    session: &Session,
    registry: &Registry,
    desired: &[DesiredModel],
    request: GcRequest,
    need: u64,
    store_bytes: u64,
) -> Result<gc::Selection> {
    let paths = &session.paths;
    let empty_plan = plan::compute(PlanInput {
        models_dir: paths.root(),
        desired: &[],
        observed: &store::Observed::default(),
        prune: false,
    });
    let mut candidates = gc::candidates(paths.root(), registry, desired, &empty_plan);
    // Declared but unresolved (offline without a record): still declared.
    for candidate in &mut candidates {
        candidate.declared |= session.manifest.models.contains_key(&candidate.id);
    }
    let quota_gb = request.quota_gb.or(session.settings.quota_gb);
    let what = match (quota_gb, request.target_gb) {
        (Some(q), Some(t)) => format!(
            "quota {q} GB and target {t} GB (store {})",
            format_bytes(store_bytes)
        ),
        (Some(q), None) => format!("quota {q} GB (store {})", format_bytes(store_bytes)),
        (None, Some(t)) => format!("target {t} GB"),
        (None, None) => "gc".to_string(),
    };
    gc::select(&candidates, need, request.evict_declared, &what)
}

/// The download hashes that models staying in the store still use.
fn kept_hashes(
    registry: &Registry,
    desired: &[DesiredModel],
    evict: &[String],
) -> BTreeSet<String> {
    registry
        .models
        .iter()
        .filter(|(id, _)| !evict.contains(id))
        .flat_map(|(_, record)| &record.files)
        .filter_map(|file| file.hash())
        .chain(
            desired
                .iter()
                .filter(|m| !evict.contains(&m.id))
                .flat_map(|m| m.files.iter().map(|f| f.hash.clone())),
        )
        .map(|hash| hash.hex().to_ascii_lowercase())
        .collect()
}
