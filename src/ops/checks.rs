//! The refusals a plan meets before anything changes (one model's folder inside another's,
//! the quota, the free disk) and the evictions that make a plan fit the quota; the warnings a
//! reviewer of a plan must not miss.
//!
//! Edges: pure over the plan, the desired state and the registry, except the free-disk check
//! (one `statvfs`) and the last-use times of eviction candidates (read by [`crate::gc`]).

use std::path::Path;

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::plan::{self, ChangeKind, Plan, PlanInput};
use crate::registry::Registry;
use crate::store::StorePaths;

use super::settings::Settings;

/// `plan` made to fit `quota_gb`: least recently used undeclared models are evicted first,
/// declared ones only with `evict_declared`; `E_QUOTA` when that cannot be done. With
/// `only_desired` (a one-model verb) nothing else is evicted: the plan fits or is refused.
pub fn fit_quota(
    plan: Plan,
    input: PlanInput<'_>,
    settings: &Settings,
    only_desired: bool,
    evict_declared: bool,
) -> Result<Plan> {
    let Some(quota_gb) = settings.quota_gb else {
        return Ok(plan);
    };
    let desired = input.desired;
    let registry = &input.observed.registry;
    let after = store_size_after(&plan, desired, registry);
    let need = crate::gc::excess(after, crate::gc::gb_to_bytes(quota_gb));
    if need == 0 {
        return Ok(plan);
    }
    if only_desired {
        check_quota(&plan, desired, registry, settings)?;
        return Ok(plan);
    }
    let candidates = crate::gc::candidates(input.models_dir, registry, desired, &plan);
    let selection = crate::gc::select(
        &candidates,
        need,
        evict_declared,
        &format!(
            "{} = {quota_gb} (the store would hold {})",
            settings.quota_origin,
            plan::format_bytes(after)
        ),
    )?;
    let evict: Vec<String> = selection.evict.iter().map(|e| e.id.clone()).collect();
    let plan = plan::compute_with_evictions(input, &evict);
    let kept: Vec<DesiredModel> = desired
        .iter()
        .filter(|m| !evict.contains(&m.id))
        .cloned()
        .collect();
    check_quota(&plan, &kept, registry, settings)?;
    Ok(plan)
}

/// Refuses layouts where one model's folder would hold another's (see
/// [`crate::layout::find_nested_installs`]), among declared and registered models.
pub fn check_layout_conflicts(
    root: &Path,
    desired: &[DesiredModel],
    registry: &Registry,
) -> Result<()> {
    let declared: std::collections::HashSet<&str> =
        desired.iter().map(|model| model.id.as_str()).collect();
    let recorded: Vec<(&str, std::path::PathBuf)> = registry
        .models
        .iter()
        .filter(|(id, _)| !declared.contains(id.as_str()))
        .filter_map(|(id, record)| {
            Some((
                id.as_str(),
                crate::desired::recorded_install_dir(root, record)?,
            ))
        })
        .collect();
    let installs: Vec<(&str, &Path)> = desired
        .iter()
        .map(|model| (model.id.as_str(), model.install_dir.as_path()))
        .chain(recorded.iter().map(|(id, dir)| (*id, dir.as_path())))
        .collect();
    match crate::layout::find_nested_installs(&installs) {
        None => Ok(()),
        Some((outer, inner)) => Err(Error::schema(format!(
            "`{outer}` and `{inner}` would share a folder: the folder of `{outer}` holds (or is) the folder of `{inner}`"
        ))
        .with_hint("route one of them elsewhere with `library = \"llama-cpp\"` / `\"transformers\"`, or declare only one")),
    }
}

/// The quota (`quota_gb`, or `--max-quota-gb`): the store after the plan must fit.
pub fn check_quota(
    plan: &Plan,
    desired: &[DesiredModel],
    registry: &Registry,
    settings: &Settings,
) -> Result<()> {
    let Some(quota_gb) = settings.quota_gb else {
        return Ok(());
    };
    let after = store_size_after(plan, desired, registry);
    let quota = (quota_gb * 1e9) as u64;
    if after > quota {
        let origin = settings.quota_origin;
        return Err(Error::quota(format!(
            "the models directory would hold {} after this plan, over {origin} = {quota_gb} ({})",
            plan::format_bytes(after),
            plan::format_bytes(quota)
        ))
        .with_hint(format!(
            "raise {origin}, narrow `include` globs, or free space with `kmm gc` (or remove models from kari-models.toml with prune = true)"
        )));
    }
    Ok(())
}

/// Bytes in the store once `plan` is applied: every declared model, plus the registered models
/// the plan keeps although they are no longer declared.
pub fn store_size_after(plan: &Plan, desired: &[DesiredModel], registry: &Registry) -> u64 {
    let declared: u64 = desired
        .iter()
        .flat_map(|model| &model.files)
        .map(|file| file.size)
        .sum();
    let kept_undeclared: u64 = registry
        .models
        .iter()
        .filter(|(id, _)| !desired.iter().any(|model| &model.id == *id))
        .filter(|(id, _)| {
            !plan
                .models
                .iter()
                .any(|change| &change.id == *id && change.change == ChangeKind::Remove)
        })
        .map(|(_, record)| record.total_size)
        .sum();
    declared + kept_undeclared
}

/// What a reviewer must not miss: licenses accepted by this change, and the quota.
pub fn review_warnings(
    plan: &Plan,
    desired: &[DesiredModel],
    registry: &Registry,
    quota_gb: Option<f64>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for change in &plan.models {
        if !matches!(change.change, ChangeKind::Create | ChangeKind::Update) {
            continue;
        }
        let Some(license) = desired
            .iter()
            .find(|model| model.id == change.id)
            .and_then(|model| model.license_accepted.as_ref())
        else {
            continue;
        };
        let field = |key: &str| {
            license
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let by = field("user_id")
            .map(|u| format!(" by `{u}`"))
            .unwrap_or_default();
        let kind = field("license_type")
            .map(|t| format!(" (`{t}`)"))
            .unwrap_or_default();
        warnings.push(format!(
            "`{}`: this change records its license as accepted{by}{kind}",
            change.id
        ));
    }
    if let Some(quota_gb) = quota_gb {
        let after = store_size_after(plan, desired, registry);
        let quota = (quota_gb * 1e9) as u64;
        if quota > 0 && after.saturating_mul(10) >= quota.saturating_mul(8) {
            warnings.push(format!(
                "quota: the models directory holds {} after this plan, {}% of quota_gb = {quota_gb}",
                plan::format_bytes(after),
                after.saturating_mul(100) / quota
            ));
        }
    }
    warnings
}

/// Refuses a plan whose downloads do not fit on the disk (`E_DISK`), before the first byte.
/// `needed`: the disk space the downloads still take, after partial downloads and local
/// sources.
pub fn check_free_disk(paths: &StorePaths, needed: u64) -> Result<()> {
    if needed == 0 {
        return Ok(());
    }
    let free = crate::sys::free_disk_bytes(paths.root())?;
    if free < needed {
        return Err(Error::disk(format!(
            "not enough free space under {}: the plan's downloads need {} more, only {} is free",
            paths.root().display(),
            plan::format_bytes(needed),
            plan::format_bytes(free)
        ))
        .with_hint("free some space, or narrow `include` globs"));
    }
    Ok(())
}
