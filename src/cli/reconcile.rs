//! `kmm plan` and `kmm apply`: the reconcile pipeline shared by both verbs.
//!
//! manifest -> settings -> (mirror check) -> resolve -> observe -> plan -> checks (quota, disk)
//! -> render, or apply under the store lock.

use std::path::Path;

use serde::Serialize;

use crate::apply::{self, ApplyContext, ApplyReport};
use crate::error::{Error, Result};
use crate::hub::{HubClient, HubConfig};
use crate::manifest::Manifest;
use crate::plan::{self, ChangeKind, DesiredModel, Plan, PlanInput};
use crate::registry::Registry;
use crate::resolve::{self, ResolveContext};
use crate::store::{self, StoreLock, StorePaths};

use super::args::{ApplyArgs, GlobalArgs, PlanArgs};
use super::output::Output;
use super::progress::ProgressReporter;
use super::settings::{self, EnvLookup, Settings};

/// What every reconciling verb starts from (`plan`, `apply`, and `download`, whose manifest
/// is a one-model one).
pub(crate) struct Session {
    pub(crate) manifest: Manifest,
    pub(crate) settings: Settings,
    pub(crate) paths: StorePaths,
    pub(crate) hub: Option<HubClient>,
    /// The local Hugging Face cache: a source of files before the network.
    pub(crate) hf_cache: crate::hf_cache::HfCache,
}

/// What `plan`/`apply` may do beyond the manifest's desired state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlanOptions {
    /// Declared models may be evicted to meet `quota_gb`.
    pub(crate) evict_declared: bool,
    /// Overrides the `prune` setting (`kmm ensure` plans one model and removes nothing).
    pub(crate) prune: Option<bool>,
}

impl Session {
    async fn open(global: &GlobalArgs, env: EnvLookup<'_>, cwd: &Path) -> Result<Session> {
        let manifest_path = settings::manifest_path(global, env, cwd);
        let manifest = Manifest::load(&manifest_path)?;
        Session::with_manifest(global, env, cwd, manifest).await
    }

    /// Like `open`, but a missing manifest is an empty one: the hub-facing and machine verbs
    /// (`list`, `info`, `download`, `compatibility`, `path`, ...) work in a folder without
    /// `kari-models.toml`.
    pub(crate) async fn open_lenient(
        global: &GlobalArgs,
        env: EnvLookup<'_>,
        cwd: &Path,
    ) -> Result<Session> {
        let manifest_path = settings::manifest_path(global, env, cwd);
        let manifest = if manifest_path.exists() {
            Manifest::load(&manifest_path)?
        } else {
            Manifest::parse(&manifest_path, "")?
        };
        Session::with_manifest(global, env, cwd, manifest).await
    }

    async fn with_manifest(
        global: &GlobalArgs,
        env: EnvLookup<'_>,
        cwd: &Path,
        mut manifest: Manifest,
    ) -> Result<Session> {
        crate::baselines::add_desired_models(&mut manifest);
        let settings = settings::resolve(global, env, &manifest, cwd)?;
        let hub = if settings.offline {
            None
        } else {
            let mut config = HubConfig::new(settings.endpoint.clone());
            config.token = settings.token.clone();
            if let Some(chunk_size) = settings.chunk_size {
                config.chunk_size = chunk_size;
                config.parallel_min_size = chunk_size.saturating_mul(4);
            }
            if let Some(connections) = settings.connections_per_file {
                config.connections_per_file = connections;
            }
            let hub = HubClient::new(config)?;
            if settings.mirror {
                hub.ping().await.map_err(|error| {
                    error.context(format!("the mirror {} is not reachable", settings.endpoint))
                })?;
            }
            Some(hub)
        };
        let paths = StorePaths::new(settings.models_dir.clone());
        let hf_cache = crate::hf_cache::HfCache::new(settings.hf_cache.clone());
        Ok(Session {
            hf_cache,
            manifest,
            settings,
            paths,
            hub,
        })
    }

    /// Declared models -> desired state (network, or the registry offline). Read-only, and
    /// needs no lock: only the registry's hints are read.
    pub(crate) async fn resolve(&self) -> Result<Vec<DesiredModel>> {
        let pending = crate::registry::load_pending_licenses(
            &crate::registry::pending_licenses_file(self.paths.root()),
        )?;
        let registry = Registry::load(&self.paths.registry_file())?.with_pending_licenses(&pending);
        resolve::resolve_all(
            &self.manifest,
            &ResolveContext {
                hub: self.hub.as_ref(),
                has_token: self.settings.token.is_some(),
                registry: &registry,
                concurrency: self.settings.max_workers,
                hf_cache: Some(&self.hf_cache),
            },
        )
        .await
    }

    /// Observes the store and plans. Read-only; `apply` calls it under the store lock so that
    /// what it saw is what it changes.
    /// The plan, with the evictions `quota_gb` needs (least recently used undeclared models
    /// first; declared ones only with `options.evict_declared`; `E_QUOTA` when impossible).
    pub(crate) fn plan_with(&self, desired: &[DesiredModel], options: PlanOptions) -> Result<Plan> {
        let registry = Registry::load(&self.paths.registry_file())?;
        check_layout_conflicts(self.paths.root(), desired, &registry)?;
        let dirs = plan::dirs_to_observe(self.paths.root(), desired, &registry);
        let observed = store::observe(&self.paths, &dirs)?;
        let input = PlanInput {
            models_dir: self.paths.root(),
            desired,
            observed: &observed,
            prune: options.prune.unwrap_or(self.settings.prune),
        };
        let plan = plan::compute(input);
        let Some(quota_gb) = self.settings.quota_gb else {
            return Ok(plan);
        };
        let after = store_size_after(&plan, desired, &observed.registry);
        let need = crate::gc::excess(after, crate::gc::gb_to_bytes(quota_gb));
        if need == 0 {
            return Ok(plan);
        }
        let candidates = super::commands_machine::gc::candidates(
            self.paths.root(),
            &observed.registry,
            desired,
            &plan,
        );
        let selection = crate::gc::select(
            &candidates,
            need,
            options.evict_declared,
            &format!(
                "quota_gb = {quota_gb} (the store would hold {})",
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
        check_quota(&plan, &kept, &observed.registry, Some(quota_gb))?;
        Ok(plan)
    }
}

/// Refuses layouts where one model's folder would hold another's (see
/// [`crate::layout::find_nested_installs`]), among declared and registered models.
fn check_layout_conflicts(
    root: &Path,
    desired: &[DesiredModel],
    registry: &Registry,
) -> Result<()> {
    let recorded: Vec<(&str, std::path::PathBuf)> = registry
        .models
        .iter()
        .filter(|(id, _)| !desired.iter().any(|model| &model.id == *id))
        .filter_map(|(id, record)| Some((id.as_str(), plan::recorded_install_dir(root, record)?)))
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

/// `quota_gb`: the store after the plan must fit.
fn check_quota(
    plan: &Plan,
    desired: &[DesiredModel],
    registry: &Registry,
    quota_gb: Option<f64>,
) -> Result<()> {
    let Some(quota_gb) = quota_gb else {
        return Ok(());
    };
    let after = store_size_after(plan, desired, registry);
    let quota = (quota_gb * 1e9) as u64;
    if after > quota {
        return Err(Error::quota(format!(
            "the models directory would hold {} after this plan, over quota_gb = {quota_gb} ({})",
            plan::format_bytes(after),
            plan::format_bytes(quota)
        ))
        .with_hint("raise quota_gb, narrow `include` globs, or remove models from kari-models.toml with prune = true"));
    }
    Ok(())
}

/// Bytes in the store once `plan` is applied: every declared model, plus the registered models
/// the plan keeps although they are no longer declared.
fn store_size_after(plan: &Plan, desired: &[DesiredModel], registry: &Registry) -> u64 {
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

/// `kmm plan`.
pub async fn plan(
    global: &GlobalArgs,
    args: &PlanArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    let desired = session.resolve().await?;
    let mut plan = session.plan_with(
        &desired,
        PlanOptions {
            evict_declared: args.evict_declared,
            prune: None,
        },
    )?;
    super::commands_machine::compatibility::check_plan(&session, &desired, &mut plan, false)
        .await?;
    super::commands_machine::ensure::note_baselines(&session, &mut plan);
    out.success(&plan::summary_line(&plan), &plan::render_text(&plan), &plan);
    Ok(if args.detailed_exitcode && !plan.is_empty() {
        2
    } else {
        0
    })
}

/// The `--json` data of `kmm apply`.
#[derive(Serialize)]
struct ApplyOutput<'a> {
    plan: &'a Plan,
    report: ApplyReport,
}

/// `kmm apply`.
pub async fn apply(
    global: &GlobalArgs,
    args: &ApplyArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open(global, env, cwd).await?;
    let desired = session.resolve().await?;
    apply_desired(
        &session,
        &desired,
        ApplyOptions {
            plan: PlanOptions {
                evict_declared: args.evict_declared,
                prune: None,
            },
            force_compat: args.force_compat,
            python_baselines_env: Some(env),
        },
        out,
        "No changes. The models directory matches kari-models.toml.",
    )
    .await
}

/// How [`apply_desired`] runs beyond the desired state itself.
pub(crate) struct ApplyOptions<'a> {
    pub(crate) plan: PlanOptions,
    /// A compatibility warning (or a model that cannot be checked) is `E_COMPAT` before any
    /// download.
    pub(crate) force_compat: bool,
    /// Also produce the manifest's Python baselines (spaCy, basic classifier) after the
    /// models: `kmm apply` does, one-model verbs such as `kmm download` do not.
    pub(crate) python_baselines_env: Option<EnvLookup<'a>>,
}

/// Plans `desired` under the store lock and applies it with progress on stderr; prints the
/// result. `kmm apply` passes every declared model, `kmm download` (and `browse`) a one-model
/// desired state with prune off, so both take exactly the same path.
pub(crate) async fn apply_desired(
    session: &Session,
    desired: &[DesiredModel],
    options: ApplyOptions<'_>,
    out: Output,
    no_changes_message: &str,
) -> Result<i32> {
    let _lock = StoreLock::acquire(&session.paths, session.settings.lock_timeout, &mut || {
        out.status("Waiting for another kmm process to release the store lock...")
    })?;
    let mut plan = session.plan_with(desired, options.plan)?;
    // Before any download: with --force-compat a warning stops here (E_COMPAT).
    super::commands_machine::compatibility::check_plan(
        session,
        desired,
        &mut plan,
        options.force_compat,
    )
    .await?;
    if plan.is_empty() {
        if let Some(env) = options.python_baselines_env {
            super::commands_machine::ensure::after_apply(session, env, out)?;
        }
        let message = no_changes_message;
        out.success(
            message,
            if out.quiet { "" } else { message },
            &ApplyOutput {
                plan: &plan,
                report: ApplyReport::default(),
            },
        );
        return Ok(0);
    }
    out.status(&plan::render_text(&plan));
    let sources = apply::FetchSources {
        hf_cache: Some(session.hf_cache.clone()),
    };
    check_free_disk(
        &session.paths,
        apply::bytes_to_fetch(&plan, &session.paths, &sources),
    )?;

    let reporter = ProgressReporter::with_json(out, session.settings.progress_json);
    let report = apply::apply_with(
        &plan,
        &ApplyContext {
            paths: &session.paths,
            hub: session.hub.as_ref(),
            max_workers: session.settings.max_workers,
            reporter: &reporter,
        },
        &sources,
    )
    .await;
    reporter.finish();
    let report = report?;
    if let Some(env) = options.python_baselines_env {
        super::commands_machine::ensure::after_apply(session, env, out)?;
    }
    let message = format!(
        "Apply complete: {} installed, {} updated, {} removed; {} downloaded in {} files.",
        report.models_installed.len(),
        report.models_updated.len(),
        report.models_removed.len(),
        plan::format_bytes(report.bytes_downloaded),
        report.files_downloaded
    );
    out.success(
        &message,
        if out.quiet { "" } else { &message },
        &ApplyOutput {
            plan: &plan,
            report,
        },
    );
    Ok(0)
}

/// Refuses to start when the downloads cannot fit on the disk holding the models directory
/// (`needed`: the bytes still to fetch, after partial downloads and local sources).
fn check_free_disk(paths: &StorePaths, needed: u64) -> Result<()> {
    if needed == 0 {
        return Ok(());
    }
    let free = crate::sys::free_disk_bytes(paths.root())?;
    if free < needed {
        return Err(Error::disk(format!(
            "not enough free space under {}: the plan downloads {}, only {} is free",
            paths.root().display(),
            plan::format_bytes(needed),
            plan::format_bytes(free)
        ))
        .with_hint("free some space, or narrow `include` globs"));
    }
    Ok(())
}
