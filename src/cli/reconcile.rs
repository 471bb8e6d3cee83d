//! `kmm plan` and `kmm apply`: the reconcile pipeline shared by both verbs.
//!
//! manifest -> settings -> (mirror check) -> resolve -> observe -> plan -> checks (quota, disk)
//! -> render, or apply under the store lock.
//!
//! kari-models.lock takes part as a resolution source (a model with a current entry needs no hub
//! request) and is written when missing or out of date, except under `--locked`/`--frozen`.
//! Saved plans (`plan --out`, `apply FILE`) carry fingerprints of their inputs, checked under
//! the store lock before anything changes.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::apply::{self, ApplyContext, ApplyReport};
use crate::error::{Error, Result};
use crate::hub::{HubClient, HubConfig};
use crate::manifest::{Manifest, ModelSpec};
use crate::plan::{self, ChangeKind, DesiredModel, Plan, PlanInput};
use crate::registry::Registry;
use crate::resolve::{self, ResolveContext};
use crate::store::{StoreLock, StorePaths};

use crate::lockfile::{self, Lockfile};
use crate::plan_file::{Fingerprints, PlanFile};

use super::args::{ApplyArgs, GlobalArgs, LockArgs, PlanArgs, PlanFormat};
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
    /// `kari-models.lock` beside the manifest.
    pub(crate) lock_path: std::path::PathBuf,
    /// The lock as read at open (`None` when there is none).
    pub(crate) lock: Option<Lockfile>,
}

/// What `plan`/`apply` may do beyond the manifest's desired state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PlanOptions {
    /// Declared models may be evicted to meet `quota_gb`.
    pub(crate) evict_declared: bool,
    /// The desired state is not the whole manifest (`kmm download`, `kmm ensure`): no other
    /// model is removed, neither by `prune` nor to meet the quota (`E_QUOTA` instead).
    pub(crate) only_desired: bool,
    /// `--verify`: re-hash every installed file, so files changed in place are replaced.
    pub(crate) verify: bool,
    /// `kmm migrate`: only moves, adoptions, mirrors and stray deletions; nothing downloaded
    /// or removed, no quota eviction.
    pub(crate) layout_only: bool,
}

impl Session {
    pub(crate) async fn open(
        global: &GlobalArgs,
        env: EnvLookup<'_>,
        cwd: &Path,
    ) -> Result<Session> {
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
        let lock_path = lockfile::path_beside(&manifest.path);
        let lock = Lockfile::load(&lock_path)?;
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
            if let Some(direct_io) = settings.direct_io {
                config.direct_io = direct_io;
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
            lock_path,
            lock,
        })
    }

    /// Takes the store lock (the one writer), saying so while another kmm process holds it.
    pub(crate) fn lock_store(&self, out: Output) -> Result<StoreLock> {
        StoreLock::acquire(&self.paths, self.settings.lock_timeout, &mut || {
            out.status("Waiting for another kmm process to release the store lock...")
        })
    }

    /// What the manifest declares for `id` (a default declaration when it declares nothing),
    /// at `revision` when one is given on the command line (`E_ARGS` when it is not one).
    pub(crate) fn declared_spec(&self, id: &str, revision: Option<&str>) -> Result<ModelSpec> {
        let mut spec = self
            .manifest
            .models
            .get(id)
            .cloned()
            .unwrap_or_else(|| ModelSpec::new(id));
        if let Some(revision) = revision {
            crate::manifest::check_revision(revision)
                .map_err(|why| Error::args(format!("--revision `{revision}` {why}")))?;
            spec.revision = revision.to_string();
        }
        Ok(spec)
    }

    /// The registry as resolution hints, with the license acceptances of models not installed
    /// yet (`kmm license --accept`).
    pub(crate) fn registry_hints(&self) -> Result<Registry> {
        let pending = crate::registry::load_pending_licenses(
            &crate::registry::pending_licenses_file(self.paths.root()),
        )?;
        Ok(Registry::load(&self.paths.registry_file())?.with_pending_licenses(&pending))
    }

    /// How this session resolves models: its hub (none offline), token, caches and workers.
    pub(crate) fn resolve_context<'a>(&'a self, registry: &'a Registry) -> ResolveContext<'a> {
        ResolveContext {
            hub: self.hub.as_ref(),
            has_token: self.settings.token.is_some(),
            registry,
            concurrency: self.settings.max_workers,
            hf_cache: Some(&self.hf_cache),
        }
    }

    /// Declared models -> desired state (network, or the caches offline), without the lock:
    /// for the one-model verbs (`download`, `browse`). Read-only, and needs no store lock: only
    /// the registry's hints are read.
    pub(crate) async fn resolve(&self) -> Result<Vec<DesiredModel>> {
        let registry = self.registry_hints()?;
        resolve::resolve_all(&self.manifest, &self.resolve_context(&registry)).await
    }

    /// Declared models -> desired state, with the lock as a resolution source. Under
    /// `--locked`/`--frozen` the lock must match the manifest (`E_SCHEMA` naming the models);
    /// under `--frozen` the hub is never asked.
    pub(crate) async fn resolve_with_lock(&self, mode: LockArgs) -> Result<Vec<DesiredModel>> {
        if mode.strict() {
            self.check_lock_matches(mode)?;
        }
        let registry = self.registry_hints()?;
        let mut ctx = self.resolve_context(&registry);
        if mode.frozen {
            ctx.hub = None;
        }
        resolve::resolve_all_with_lock(&self.manifest, &ctx, self.lock.as_ref(), mode.frozen).await
    }

    fn check_lock_matches(&self, mode: LockArgs) -> Result<()> {
        let flag = if mode.frozen { "--frozen" } else { "--locked" };
        let hint = "run `kmm lock` (or `kmm plan` without --locked) and commit kari-models.lock";
        let Some(lock) = &self.lock else {
            return Err(Error::schema(format!(
                "{flag}: `{}` does not exist",
                self.lock_path.display()
            ))
            .with_hint(hint));
        };
        let mismatches = lock.mismatches(&self.manifest);
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(Error::schema(format!(
            "{flag}: kari-models.lock does not match kari-models.toml for {}",
            mismatches.join(", ")
        ))
        .with_hint(hint))
    }

    /// Writes the lock for `desired` when it is missing or differs (never under
    /// `--locked`/`--frozen`); returns whether it wrote.
    pub(super) fn update_lock(
        &self,
        desired: &[DesiredModel],
        mode: LockArgs,
        out: Output,
    ) -> Result<bool> {
        if mode.strict() {
            return Ok(false);
        }
        let written =
            Lockfile::from_desired(&self.manifest, desired).save_if_changed(&self.lock_path)?;
        if written {
            out.status(&format!("Wrote {}", self.lock_path.display()));
        }
        Ok(written)
    }

    /// Fingerprints of what a plan computed now is computed from.
    fn fingerprints(&self, dirs: &[std::path::PathBuf]) -> Result<Fingerprints> {
        Fingerprints::compute(&self.manifest.path, &self.lock_path, &self.paths, dirs)
    }

    /// `desired` with the values resolution took from the registry (`pinned`, `license_accepted`
    /// where the manifest says nothing) taken again from `registry`, read under the store lock.
    /// Resolution reads the registry before the lock; without this, a `kmm pin` that ran while
    /// this apply waited for the lock was undone by it ("pinned changes to false"; found by
    /// `reliability::mixed_concurrent_verbs_never_lose_a_registry_update`).
    fn with_current_hints(
        &self,
        desired: &[DesiredModel],
        registry: &Registry,
    ) -> Vec<DesiredModel> {
        desired
            .iter()
            .map(|model| {
                let mut model = model.clone();
                let record = registry.models.get(&model.id);
                // Models the manifest does not declare (`ensure`, `download` of another id)
                // carry what their verb decided; only fill in what it left open, so that a
                // concurrent `kmm pin` is not undone either.
                let Some(spec) = self.manifest.models.get(&model.id) else {
                    model.pinned = model.pinned.or(record.and_then(|record| record.pinned));
                    if model.license_accepted.is_none() {
                        model.license_accepted = record.and_then(|r| r.license_accepted.clone());
                    }
                    return model;
                };
                if spec.pinned.is_none() {
                    model.pinned = record.and_then(|record| record.pinned);
                }
                let declared_license = spec.license.as_ref().is_some_and(|l| l.accepted);
                if !declared_license
                    && let Some(accepted) = record.and_then(|r| r.license_accepted.clone())
                {
                    model.license_accepted = Some(accepted);
                }
                model
            })
            .collect()
    }

    /// Observes the store and plans. Read-only; `apply` calls it under the store lock so that
    /// what it saw is what it changes.
    /// The plan, with the evictions `quota_gb` needs (least recently used undeclared models
    /// first; declared ones only with `options.evict_declared`; `E_QUOTA` when impossible).
    pub(crate) fn plan_with(&self, desired: &[DesiredModel], options: PlanOptions) -> Result<Plan> {
        Ok(self.plan_and_registry(desired, options)?.0)
    }

    /// [`Session::plan_with`], and the registry the plan was computed from (loaded once: on a
    /// large store it is the biggest thing kmm holds).
    pub(crate) fn plan_and_registry(
        &self,
        desired: &[DesiredModel],
        options: PlanOptions,
    ) -> Result<(Plan, Registry)> {
        let registry = Registry::load(&self.paths.registry_file())?;
        let desired = &self.with_current_hints(desired, &registry);
        check_layout_conflicts(self.paths.root(), desired, &registry)?;
        let observed = crate::migrate::observe(&self.paths, desired, registry, options.verify)?;
        let input = PlanInput {
            models_dir: self.paths.root(),
            desired,
            observed: &observed,
            prune: self.settings.prune && !options.only_desired,
        };
        if options.layout_only {
            let plan = plan::compute_layout_only(input);
            return Ok((plan, observed.registry));
        }
        let plan = plan::compute(input);
        let Some(quota_gb) = self.settings.quota_gb else {
            return Ok((plan, observed.registry));
        };
        let after = store_size_after(&plan, desired, &observed.registry);
        let need = crate::gc::excess(after, crate::gc::gb_to_bytes(quota_gb));
        if need == 0 {
            return Ok((plan, observed.registry));
        }
        if options.only_desired {
            check_quota(&plan, desired, &observed.registry, &self.settings)?;
            return Ok((plan, observed.registry));
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
                "{} = {quota_gb} (the store would hold {})",
                self.settings.quota_origin,
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
        check_quota(&plan, &kept, &observed.registry, &self.settings)?;
        Ok((plan, observed.registry))
    }
}

/// Refuses layouts where one model's folder would hold another's (see
/// [`crate::layout::find_nested_installs`]), among declared and registered models.
fn check_layout_conflicts(
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
fn check_quota(
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
    let mut session = Session::open(global, env, cwd).await?;
    let desired = session.resolve_with_lock(args.lock).await?;
    session.update_lock(&desired, args.lock, out)?;
    // Resolved: the parsed lock is not needed any more, and on a large store it is big.
    session.lock = None;
    let (mut plan, registry) = session.plan_and_registry(
        &desired,
        PlanOptions {
            evict_declared: args.evict_declared,
            verify: args.verify,
            ..PlanOptions::default()
        },
    )?;
    let hub = session.hub.as_ref().filter(|_| !args.lock.frozen);
    super::commands_machine::compatibility::check_plan(&session, hub, &desired, &mut plan, false)
        .await?;
    super::commands_machine::ensure::note_baselines(&session, &mut plan);
    if let Some(path) = &args.out {
        let dirs = plan::dirs_to_observe(session.paths.root(), &desired, &registry);
        let inputs = session.fingerprints(&dirs)?;
        PlanFile::new(plan.clone(), inputs, dirs).save(path)?;
        out.status(&format!(
            "Saved the plan to {}; apply it with `kmm apply {}`",
            path.display(),
            path.display()
        ));
    }
    let registry_diff = args
        .diff
        .then(|| plan::diff::registry_diff(&registry, &plan));
    let warnings = review_warnings(&plan, &desired, &registry, session.settings.quota_gb);
    let text = render_plan(&plan, args.format, registry_diff.as_deref(), &warnings);
    out.success(
        &plan::summary_line(&plan),
        &text,
        &PlanOutput {
            plan: &plan,
            registry_diff,
        },
    );
    Ok(if args.detailed_exitcode && !plan.is_empty() {
        2
    } else {
        0
    })
}

/// The `--json` data of `kmm plan`: the plan, plus the registry diff with `--diff`.
#[derive(schemars::JsonSchema, Serialize)]
pub(crate) struct PlanOutput<'a> {
    #[serde(flatten)]
    pub(crate) plan: &'a Plan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_diff: Option<String>,
}

/// A plan in the chosen format, with the registry diff after it when there is one.
pub(crate) fn render_plan(
    plan: &Plan,
    format: PlanFormat,
    registry_diff: Option<&str>,
    warnings: &[String],
) -> String {
    let diff = registry_diff.unwrap_or_default();
    match format {
        PlanFormat::Text => {
            let mut text = plan::render_text(plan);
            if !diff.is_empty() {
                text.push('\n');
                text.push_str(diff);
            }
            text
        }
        PlanFormat::Markdown => {
            let mut text = plan::render_markdown(plan, warnings);
            if !diff.is_empty() {
                text.push_str(&format!(
                    "\n<details><summary>registry diff</summary>\n\n```diff\n{diff}```\n\n</details>\n"
                ));
            }
            text
        }
        PlanFormat::Json => {
            let data = PlanOutput {
                plan,
                registry_diff: registry_diff.map(str::to_string),
            };
            let mut text = serde_json::to_string_pretty(&data).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

/// What a reviewer must not miss: licenses accepted by this change, and the quota.
fn review_warnings(
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

/// The `--json` data of `kmm apply`.
#[derive(schemars::JsonSchema, Serialize)]
pub(super) struct ApplyOutput<'a> {
    pub(super) plan: &'a Plan,
    pub(super) report: ApplyReport,
}

/// How a reconcile runs beyond the desired state itself.
pub(crate) struct ApplyOptions<'a> {
    pub(crate) plan: PlanOptions,
    /// A compatibility warning (or a model that cannot be checked) is `E_COMPAT` before any
    /// download.
    pub(crate) force_compat: bool,
    /// `--frozen`: no hub request at all, so no compatibility check either.
    pub(crate) frozen: bool,
    /// `Some` when the desired state is the whole manifest (`kmm apply`, `kmm watch`): then
    /// partial downloads no declared model needs are removed, and the manifest's Python
    /// baselines (spaCy, basic classifier) are produced after the models with this
    /// environment. One-model verbs (`kmm download`) leave both alone.
    pub(crate) whole_manifest_env: Option<EnvLookup<'a>>,
}

/// `kmm apply [PLAN_FILE]`.
pub async fn apply(
    global: &GlobalArgs,
    args: &ApplyArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let options = ApplyOptions {
        plan: PlanOptions {
            evict_declared: args.evict_declared,
            verify: args.verify,
            ..PlanOptions::default()
        },
        force_compat: args.force_compat,
        frozen: args.lock.frozen,
        whole_manifest_env: Some(env),
    };
    let (message, plan, report) = match &args.plan_file {
        Some(path) => apply_saved(global, path, &options, env, cwd, out).await?,
        None => apply_manifest(global, args.lock, &options, env, cwd, out).await?,
    };
    print_applied(out, &message, &plan, report);
    Ok(0)
}

fn print_applied(out: Output, message: &str, plan: &Plan, report: ApplyReport) {
    out.success(
        message,
        if out.quiet { "" } else { message },
        &ApplyOutput { plan, report },
    );
}

/// One reconcile: manifest (and lock) -> plan -> apply under the store lock. Prints progress
/// on stderr but not the result. `kmm apply` and `kmm watch` both run it.
pub(super) async fn apply_manifest(
    global: &GlobalArgs,
    mode: LockArgs,
    options: &ApplyOptions<'_>,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<(String, Plan, ApplyReport)> {
    let session = Session::open(global, env, cwd).await?;
    let desired = session.resolve_with_lock(mode).await?;
    session.update_lock(&desired, mode, out)?;
    let _lock = session.lock_store(out)?;
    let plan = plan_checked(&session, &desired, options).await?;
    execute(
        &session,
        plan,
        options,
        Checked::Desired(&desired),
        out,
        "No changes. The models directory matches kari-models.toml.",
    )
    .await
}

/// `kmm apply FILE`: exactly the saved plan's actions, refused when any of its inputs changed.
async fn apply_saved(
    global: &GlobalArgs,
    path: &Path,
    options: &ApplyOptions<'_>,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<(String, Plan, ApplyReport)> {
    let saved = PlanFile::load(&cwd.join(path))?;
    let session = Session::open(global, env, cwd).await?;
    let _lock = session.lock_store(out)?;
    let now = session.fingerprints(&saved.observed_dirs)?;
    saved.check_fresh(path, &now)?;
    execute(
        &session,
        saved.plan,
        options,
        Checked::Nothing,
        out,
        "No changes. The models directory matches kari-models.toml.",
    )
    .await
}

/// Plans `desired` under the store lock and applies it with progress on stderr; prints the
/// result. `kmm download` (and `browse`) pass a one-model desired state with prune off, so they
/// take exactly the path of `kmm apply`.
pub(crate) async fn apply_desired(
    session: &Session,
    desired: &[DesiredModel],
    options: ApplyOptions<'_>,
    out: Output,
    no_changes_message: &str,
) -> Result<i32> {
    let _lock = session.lock_store(out)?;
    let plan = plan_checked(session, desired, &options).await?;
    let (message, plan, report) = execute(
        session,
        plan,
        &options,
        Checked::Desired(desired),
        out,
        no_changes_message,
    )
    .await?;
    print_applied(out, &message, &plan, report);
    Ok(0)
}

/// The plan for `desired` (the caller holds the store lock). With `--force-compat` the models
/// it creates are compatibility-checked and a warning stops here (`E_COMPAT`), before any
/// download; without it apply skips the check (`kmm plan` shows its warnings), saving a
/// header read per model.
async fn plan_checked(
    session: &Session,
    desired: &[DesiredModel],
    options: &ApplyOptions<'_>,
) -> Result<Plan> {
    let mut plan = session.plan_with(desired, options.plan)?;
    if options.force_compat {
        let hub = session.hub.as_ref().filter(|_| !options.frozen);
        super::commands_machine::compatibility::check_plan(session, hub, desired, &mut plan, true)
            .await?;
    }
    Ok(plan)
}

/// What the observation behind the plan [`execute`] carries out hashed among the files an
/// earlier boot left unconfirmed (see [`crate::durability`]): every file of the desired models
/// when the plan was made in this run, nothing when it was loaded from a file.
#[derive(Clone, Copy)]
enum Checked<'a> {
    Desired(&'a [DesiredModel]),
    Nothing,
}

impl Checked<'_> {
    fn hashes(self) -> BTreeSet<String> {
        match self {
            Checked::Desired(desired) => crate::durability::hashes_of(desired),
            Checked::Nothing => BTreeSet::new(),
        }
    }
}

/// Carries out `plan` (the caller holds the store lock), settles the durability journal, then
/// runs the Python baselines when `options` asks for them.
async fn execute(
    session: &Session,
    plan: Plan,
    options: &ApplyOptions<'_>,
    checked: Checked<'_>,
    out: Output,
    no_changes_message: &str,
) -> Result<(String, Plan, ApplyReport)> {
    if plan.is_empty() {
        crate::durability::settle(&session.paths, &checked.hashes())?;
        if let Some(env) = options.whole_manifest_env {
            super::commands_machine::ensure::after_apply(session, env, out)?;
        }
        return Ok((no_changes_message.to_string(), plan, ApplyReport::default()));
    }
    out.status(&plan::render_text(&plan));
    let sources = apply::FetchSources {
        hf_cache: Some(session.hf_cache.clone()),
        remove_stale_partials: options.whole_manifest_env.is_some(),
    };
    check_free_disk(
        &session.paths,
        apply::disk_bytes_needed(&plan, &session.paths, &sources),
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
    crate::durability::settle(&session.paths, &checked.hashes())?;
    if let Some(env) = options.whole_manifest_env {
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
    Ok((message, plan, report))
}

/// (`needed`: the disk space the downloads still take, after partial downloads and local
/// sources).
fn check_free_disk(paths: &StorePaths, needed: u64) -> Result<()> {
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
