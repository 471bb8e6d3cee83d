//! Declared models -> [`DesiredModel`]s: revision -> commit, file list, selection, routing.
//!
//! For each `[models."id"]` table: the revision becomes a commit (a 40-hex revision is already
//! one; a branch or tag is asked of the hub, or taken from the registry when offline), the commit's
//! file list comes from the hub's tree listing, or from the registry when the installed record is
//! at that commit with the same include/exclude (so a second plan of a commit-pinned model makes
//! no request at all), the globs select files, and `layout` routes them. Problems that would only
//! show half way through apply are raised here instead: unknown repos and revisions, globs that
//! select nothing, gated repos without accepted license or token, models over `max_size_gb`.
//!
//! Edges: reads the hub; never writes anything.

use futures_util::StreamExt;
use tracing::Instrument;

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::hub::{Gated, HubClient};
use crate::layout;
use crate::manifest::{FileSelection, Manifest, ModelSpec};
use crate::registry::{Record, Registry, Selection};
use crate::upstream::{UpstreamFile, is_commit_sha};

/// How resolution may reach the hub.
pub struct ResolveContext<'a> {
    /// `None` when offline.
    pub hub: Option<&'a HubClient>,
    /// Whether a token is configured (gated repos need one).
    pub has_token: bool,
    pub registry: &'a Registry,
    /// Models resolved concurrently.
    pub concurrency: usize,
    /// A local Hugging Face cache: offline, revisions and file lists not known from the
    /// registry are read from its `refs/` and `snapshots/`.
    pub hf_cache: Option<&'a crate::hf_cache::HfCache>,
}

/// Resolves every declared model, in manifest (sorted id) order. The first failure wins.
pub async fn resolve_all(
    manifest: &Manifest,
    ctx: &ResolveContext<'_>,
) -> Result<Vec<DesiredModel>> {
    resolve_all_with_lock(manifest, ctx, None, false).await
}

/// Resolves every declared model, taking each one's commit and files from `lock` when the lock
/// has a current entry for it (no hub request), and from [`resolve_model`] otherwise. With
/// `frozen`, a model without a current entry is `E_SCHEMA` instead: the hub is never asked.
pub async fn resolve_all_with_lock(
    manifest: &Manifest,
    ctx: &ResolveContext<'_>,
    lock: Option<&crate::lockfile::Lockfile>,
    frozen: bool,
) -> Result<Vec<DesiredModel>> {
    let results: Vec<Result<DesiredModel>> = futures_util::stream::iter(manifest.models.values())
        .map(|spec| async move {
            match lock.and_then(|lock| lock.current_entry(spec)) {
                Some(entry) => resolve_from_lock(spec, entry, ctx.registry),
                None if frozen => Err(Error::schema(format!(
                    "--frozen: kari-models.lock has no current entry for `{}`",
                    spec.id
                ))
                .with_hint("run `kmm lock` and commit kari-models.lock")),
                None => resolve_model(spec, ctx).await,
            }
        })
        .buffered(ctx.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// A model as its (current) lock entry says: no network. The registry only adds what the
/// manifest leaves unsaid (pins, license acceptance), as for [`resolve_model`].
pub fn resolve_from_lock(
    spec: &ModelSpec,
    entry: &crate::lockfile::LockedModel,
    registry: &Registry,
) -> Result<DesiredModel> {
    let files = entry.upstream_files(&spec.id)?;
    let selection = Selection {
        include: spec.include.clone(),
        exclude: spec.exclude.clone(),
    };
    let record = registry.models.get(&spec.id);
    desired_from_files(spec, record, entry.commit.clone(), files, selection)
}

/// Resolves one model.
pub async fn resolve_model(spec: &ModelSpec, ctx: &ResolveContext<'_>) -> Result<DesiredModel> {
    let span = tracing::info_span!("resolve", model = %spec.id, revision = %spec.revision);
    resolve_model_inner(spec, ctx).instrument(span).await
}

async fn resolve_model_inner(spec: &ModelSpec, ctx: &ResolveContext<'_>) -> Result<DesiredModel> {
    let record = ctx.registry.models.get(&spec.id);
    let selection = Selection {
        include: spec.include.clone(),
        exclude: spec.exclude.clone(),
    };

    let commit = resolve_commit(spec, record, ctx).await?;

    let offline_snapshot = ctx
        .hf_cache
        .filter(|_| ctx.hub.is_none())
        .and_then(|cache| cache.snapshot_files(&spec.id, &commit));
    let files = match record.and_then(|record| files_from_record(record, &commit, &selection)) {
        Some(files) => files,
        // Offline: the snapshot a local Hugging Face cache holds for this commit.
        None if offline_snapshot.is_some() => {
            let globs = FileSelection::new(&spec.include, &spec.exclude)?;
            offline_snapshot
                .into_iter()
                .flatten()
                .filter(|file| globs.matches(&file.path))
                .collect()
        }
        None => {
            let Some(hub) = ctx.hub else {
                return Err(offline_error(
                    spec,
                    "its file list at this commit is not known locally",
                ));
            };
            let listing = hub.list_tree(&spec.id, &commit).await.map_err(|error| {
                error.context(format!(
                    "listing the files of {}@{}",
                    spec.id,
                    short(&commit)
                ))
            })?;
            let globs = FileSelection::new(&spec.include, &spec.exclude)?;
            listing
                .into_iter()
                .filter(|file| globs.matches(&file.path))
                .collect()
        }
    };

    desired_from_files(spec, record, commit, files, selection)
}

/// The checks and routing after a model's commit and selected files are known (from the hub,
/// the registry or the lock).
fn desired_from_files(
    spec: &ModelSpec,
    record: Option<&Record>,
    commit: String,
    files: Vec<UpstreamFile>,
    selection: Selection,
) -> Result<DesiredModel> {
    if files.is_empty() {
        return Err(Error::not_found(format!(
            "no file of {}@{} matches include {:?} / exclude {:?}",
            spec.id,
            short(&commit),
            spec.include,
            spec.exclude
        ))
        .with_hint("check the globs against `kmm info --model ID`; `*` also matches `/`"));
    }
    let total: u64 = files.iter().map(|file| file.size).sum();
    if let Some(max_gb) = spec.max_size_gb {
        let max_bytes = (max_gb * 1e9) as u64;
        if total > max_bytes {
            return Err(Error::quota(format!(
                "{} selects {} bytes ({:.2} GB), more than its max_size_gb = {max_gb}",
                spec.id,
                total,
                total as f64 / 1e9
            ))
            .with_hint("narrow `include` or raise `max_size_gb`"));
        }
    }

    let route = layout::route(&spec.id, spec.library, &files);
    let config_mirror = files
        .iter()
        .any(|file| file.path == "config.json")
        .then(|| layout::config_mirror_path(&spec.id));
    // The manifest wins when it says something; otherwise what `kmm pin` / `kmm license
    // --accept` recorded in the registry stays (apply rewrites the record from these values).
    let license_accepted = spec
        .license
        .as_ref()
        .filter(|license| license.accepted)
        .map(|license| serde_json::to_value(license).unwrap_or_default())
        .or_else(|| record.and_then(|record| record.license_accepted.clone()));
    let pinned = spec
        .pinned
        .or_else(|| record.and_then(|record| record.pinned));

    Ok(DesiredModel {
        id: spec.id.clone(),
        revision: spec.revision.clone(),
        commit,
        library: route.library,
        install_dir: route.install_dir,
        files,
        config_mirror,
        pinned,
        license_accepted,
        selection,
    })
}

/// The commit of `spec.revision`: itself when it is a commit, else the hub's answer (checking
/// gating on the way), else, offline, the commit the registry recorded for the same revision.
async fn resolve_commit(
    spec: &ModelSpec,
    record: Option<&Record>,
    ctx: &ResolveContext<'_>,
) -> Result<String> {
    if is_commit_sha(&spec.revision) {
        return Ok(spec.revision.clone());
    }
    let Some(hub) = ctx.hub else {
        return record
            .filter(|record| record.revision.as_deref() == Some(spec.revision.as_str()))
            .and_then(|record| record.commit.clone())
            .or_else(|| {
                ctx.hf_cache
                    .and_then(|cache| cache.commit_of(&spec.id, &spec.revision))
            })
            .ok_or_else(|| offline_error(spec, "the revision has never been resolved here"));
    };
    let info = hub
        .model_info(&spec.id, &spec.revision)
        .await
        .map_err(|error| error.context(format!("resolving {}@{}", spec.id, spec.revision)))?;
    if info.gated != Gated::No {
        check_gate(spec, record, info.gated, ctx).await?;
    }
    Ok(info.sha)
}

/// A gated repo is planned only with an accepted license (manifest or registry) and a token that
/// the hub accepts for it.
async fn check_gate(
    spec: &ModelSpec,
    record: Option<&Record>,
    gated: Gated,
    ctx: &ResolveContext<'_>,
) -> Result<()> {
    let accepted = spec
        .license
        .as_ref()
        .is_some_and(|license| license.accepted)
        || record.is_some_and(|record| record.license_accepted.is_some());
    let kind = if gated == Gated::Manual {
        "manual approval"
    } else {
        "automatic approval"
    };
    if !accepted {
        return Err(Error::license(format!(
            "{} is a gated model ({kind}); its license has not been accepted here",
            spec.id
        ))
        .with_hint(format!(
            "request access on the model page, then run `kmm license --model {} --accept --user-id you@example.com --license-type TYPE` (or add `license = {{ accepted = true, user_id = \"you@example.com\" }}` to [models.\"{}\"] in kari-models.toml) and set HF_TOKEN",
            spec.id, spec.id
        )));
    }
    if !ctx.has_token {
        return Err(Error::license(format!(
            "{} is a gated model and no token is configured",
            spec.id
        ))
        .with_hint(
            "set HF_TOKEN (or write the token to $HF_HOME/token) for an account with access",
        ));
    }
    if let Some(hub) = ctx.hub {
        hub.auth_check(&spec.id)
            .await
            .map_err(|error| error.context(format!("checking access to gated {}", spec.id)))?;
    }
    Ok(())
}

/// The registry's file list, when the record is at `commit` with the same selection and
/// records a hash for every file: then the hub need not be asked again.
fn files_from_record(
    record: &Record,
    commit: &str,
    selection: &Selection,
) -> Option<Vec<UpstreamFile>> {
    if record.commit.as_deref() != Some(commit) || record.selection.as_ref() != Some(selection) {
        return None;
    }
    let mut files = record
        .files
        .iter()
        .map(|file| {
            Some(UpstreamFile {
                path: file.path.clone(),
                size: file.size,
                hash: file.hash()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    files.sort();
    Some(files)
}

fn offline_error(spec: &ModelSpec, why: &str) -> Error {
    Error::net(format!(
        "offline, and {}@{} cannot be resolved: {why}",
        spec.id, spec.revision
    ))
    .with_hint(
        "run once without --offline / HF_HUB_OFFLINE, or pin `revision` to an installed commit",
    )
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}
