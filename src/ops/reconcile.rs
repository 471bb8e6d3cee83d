//! The reconcile: plan the desired state against the store (with the quota's evictions and
//! the checks), then apply it under the store lock, settle the durability journal and produce
//! the baselines. `kmm plan` ([`review_manifest`]), `kmm apply` ([`apply_manifest`],
//! [`apply_saved`]), `kmm watch`, and the one-model verbs and the library API
//! ([`apply_desired`]) all run it.
//!
//! kari-models.lock takes part as a resolution source (a model with a current entry needs no hub
//! request) and is written when missing or out of date, except under `--locked`/`--frozen`.
//! Saved plans (`plan --out`, `apply FILE`) carry fingerprints of their inputs, checked under
//! the store lock before anything changes.
//!
//! Edges: the one caller of [`crate::apply`] for reconciles; results come back as data.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::apply::{self, ApplyReport};
use crate::desired::DesiredModel;
use crate::error::Result;
use crate::plan::file::PlanFile;
use crate::plan::{self, Plan};

use super::session::{LockMode, Session};
use super::settings::{EnvLookup, Overrides};
use super::steps::PlanOptions;
use super::{Reporter, baselines, checks, compat_check};

/// What `kmm plan` asks beyond the manifest.
#[derive(Debug, Clone, Default)]
pub struct ReviewRequest {
    pub lock: LockMode,
    pub options: PlanOptions,
    /// Also save the plan to this file, for `kmm apply FILE`.
    pub out: Option<PathBuf>,
    /// Also compute the registry now and after apply as a unified diff.
    pub registry_diff: bool,
}

/// A plan for review (`kmm plan`): the plan with its compatibility and baseline notes, the
/// warnings a reviewer must not miss, and the registry diff when asked for.
pub struct Reviewed {
    pub plan: Plan,
    pub warnings: Vec<String>,
    pub registry_diff: Option<String>,
}

/// `kmm plan`: resolve (with the lock), write the lock when it changed, observe, plan, check
/// compatibility (notes, never a refusal), note the baselines; save the plan file when asked.
/// Changes nothing in the store.
pub async fn review_manifest(
    session: &mut Session,
    request: &ReviewRequest,
    reporter: &dyn Reporter,
) -> Result<Reviewed> {
    let desired = session.resolve_with_lock(request.lock).await?;
    session.update_lock(&desired, request.lock, reporter)?;
    // Resolved: the parsed lock is not needed any more, and on a large store it is big.
    session.lock = None;
    let (mut plan, registry) = session.plan_and_registry(&desired, request.options)?;
    let hub = session.hub.as_ref().filter(|_| !request.lock.frozen);
    compat_check::check_plan(session, hub, &desired, &mut plan, false).await?;
    baselines::note_baselines(session, &mut plan);
    super::sources::note_byte_sources(session, &mut plan).await?;
    if let Some(path) = &request.out {
        let dirs = plan::dirs_to_observe(session.paths.root(), &desired, &registry);
        let inputs = session.fingerprints(&dirs)?;
        PlanFile::new(plan.clone(), inputs, dirs).save(path)?;
        reporter.status(&format!(
            "Saved the plan to {}; apply it with `kmm apply {}`",
            path.display(),
            path.display()
        ));
    }
    let registry_diff = request
        .registry_diff
        .then(|| plan::diff::registry_diff(&registry, &plan));
    let warnings = checks::review_warnings(&plan, &desired, &registry, session.settings.quota_gb);
    Ok(Reviewed {
        plan,
        warnings,
        registry_diff,
    })
}

/// What an apply did: its message for a person, the plan it carried out and its report.
pub struct Applied {
    pub message: String,
    pub plan: Plan,
    pub report: ApplyReport,
}

/// How a reconcile runs beyond the desired state itself.
#[derive(Clone, Copy)]
pub struct ApplyOptions<'a> {
    pub plan: PlanOptions,
    /// A compatibility warning (or a model that cannot be checked) is `E_COMPAT` before any
    /// download.
    pub force_compat: bool,
    /// `--frozen`: no hub request at all, so no compatibility check either.
    pub frozen: bool,
    /// `Some` when the desired state is the whole manifest (`kmm apply`, `kmm watch`): then
    /// partial downloads no declared model needs are removed, and the manifest's Python
    /// baselines (spaCy, basic classifier) are produced after the models with this
    /// environment. One-model verbs (`kmm download`) leave both alone.
    pub whole_manifest_env: Option<EnvLookup<'a>>,
}

/// One reconcile: manifest (and lock) -> plan -> apply under the store lock, with progress
/// through `reporter`; the result is the caller's to print. `kmm apply` and `kmm watch` both
/// run it.
pub async fn apply_manifest(
    overrides: &Overrides,
    mode: LockMode,
    options: &ApplyOptions<'_>,
    env: EnvLookup<'_>,
    cwd: &Path,
    reporter: &dyn Reporter,
) -> Result<Applied> {
    let session = Session::open(overrides, env, cwd).await?;
    // Everything after the session opened ends in this host's report to the fleet, failures
    // (a model the hub does not have, a full disk) included.
    let outcome = apply_opened(&session, mode, options, reporter).await;
    super::fleet::report_node(&session, &outcome, reporter).await;
    outcome
}

async fn apply_opened(
    session: &Session,
    mode: LockMode,
    options: &ApplyOptions<'_>,
    reporter: &dyn Reporter,
) -> Result<Applied> {
    let desired = &session.resolve_with_lock(mode).await?;
    session.update_lock(desired, mode, reporter)?;
    let _lock = session.lock_store(reporter)?;
    let plan = plan_checked(session, desired, options).await?;
    execute(
        session,
        plan,
        options,
        Checked::Desired(desired),
        reporter,
        "No changes. The models directory matches kari-models.toml.",
    )
    .await
}

/// The plan of the whole manifest, resolved with the lock as `mode` allows (the lock file is
/// not written) and computed without changing anything: `kmm verify` (with `verify`) and
/// `kmm migrate --dry-run` (with `layout_only`).
pub async fn plan_manifest(
    overrides: &Overrides,
    mode: LockMode,
    options: PlanOptions,
    env: EnvLookup<'_>,
    cwd: &Path,
) -> Result<Plan> {
    let (session, desired) = Session::open_resolved(overrides, mode, env, cwd).await?;
    session.plan_with(&desired, options)
}

/// `kmm migrate`: the layout-only plan (moves, adoptions, mirrors, stray deletions; nothing
/// downloaded or removed) applied under the store lock. The lock file is not written.
pub async fn migrate_layout(
    overrides: &Overrides,
    mode: LockMode,
    env: EnvLookup<'_>,
    cwd: &Path,
    reporter: &dyn Reporter,
) -> Result<Applied> {
    let (session, desired) = Session::open_resolved(overrides, mode, env, cwd).await?;
    let options = ApplyOptions {
        plan: PlanOptions {
            layout_only: true,
            ..PlanOptions::default()
        },
        force_compat: false,
        frozen: mode.frozen,
        whole_manifest_env: None,
    };
    apply_desired(
        &session,
        &desired,
        options,
        reporter,
        "No changes. The layout already matches kari-models.toml.",
    )
    .await
}

/// `kmm apply FILE`: exactly the saved plan's actions, refused when any of its inputs changed.
pub async fn apply_saved(
    overrides: &Overrides,
    path: &Path,
    options: &ApplyOptions<'_>,
    env: EnvLookup<'_>,
    cwd: &Path,
    reporter: &dyn Reporter,
) -> Result<Applied> {
    let saved = PlanFile::load(&cwd.join(path))?;
    let session = Session::open(overrides, env, cwd).await?;
    let _lock = session.lock_store(reporter)?;
    let now = session.fingerprints(&saved.observed_dirs)?;
    saved.check_fresh(path, &now)?;
    execute(
        &session,
        saved.plan,
        options,
        Checked::Nothing,
        reporter,
        "No changes. The models directory matches kari-models.toml.",
    )
    .await
}

/// Plans `desired` under the store lock and applies it with progress through `reporter`.
/// `kmm download` (and `browse`, and the library's `download_snapshot`) pass a one-model
/// desired state with prune off, so they take exactly the path of `kmm apply`, checks
/// included.
pub async fn apply_desired(
    session: &Session,
    desired: &[DesiredModel],
    options: ApplyOptions<'_>,
    reporter: &dyn Reporter,
    no_changes_message: &str,
) -> Result<Applied> {
    let _lock = session.lock_store(reporter)?;
    let plan = plan_checked(session, desired, &options).await?;
    execute(
        session,
        plan,
        &options,
        Checked::Desired(desired),
        reporter,
        no_changes_message,
    )
    .await
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
        compat_check::check_plan(session, hub, desired, &mut plan, true).await?;
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
    reporter: &dyn Reporter,
    no_changes_message: &str,
) -> Result<Applied> {
    if plan.is_empty() {
        crate::durability::settle(&session.paths, &checked.hashes())?;
        if let Some(env) = options.whole_manifest_env {
            baselines::after_apply(session, env, reporter)?;
        }
        return Ok(Applied {
            message: no_changes_message.to_string(),
            plan,
            report: ApplyReport::default(),
        });
    }
    let mut plan = plan;
    super::sources::note_byte_sources(session, &mut plan).await?;
    reporter.status(&plan::render_text(&plan));
    let sources = apply::FetchSources {
        hf_cache: session.hf_cache.clone(),
        shared: match session.shared_store().await? {
            Some(_) => session.shared.clone(),
            None => None,
        },
        remove_stale_partials: options.whole_manifest_env.is_some(),
    };
    checks::check_free_disk(
        &session.paths,
        apply::disk_bytes_needed(&plan, &session.paths, &sources),
    )?;
    let report = session.run_apply(&plan, &sources, reporter).await?;
    crate::durability::settle(&session.paths, &checked.hashes())?;
    if let Some(env) = options.whole_manifest_env {
        baselines::after_apply(session, env, reporter)?;
    }
    let mut message = format!(
        "Apply complete: {} installed, {} updated, {} removed; {} downloaded in {} files",
        report.models_installed.len(),
        report.models_updated.len(),
        report.models_removed.len(),
        plan::format_bytes(report.bytes_downloaded),
        report.files_downloaded
    );
    if report.files_from_shared_store > 0 {
        message.push_str(&format!(
            ", {} from the shared store in {} files",
            plan::format_bytes(report.bytes_from_shared_store),
            report.files_from_shared_store
        ));
    }
    message.push('.');
    Ok(Applied {
        message,
        plan,
        report,
    })
}
