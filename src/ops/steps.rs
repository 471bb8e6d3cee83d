//! The two steps every reconcile shares: plan (observe the store, run the planner, check the
//! layout and fit the quota) and apply (the plan carried out with progress).
//! [`super::reconcile`] and [`super::baselines`] both build on them.
//!
//! Edges: the one caller of [`crate::apply`] and of the planner for reconciles; results come
//! back as data.

use crate::apply::{self, ApplyContext, ApplyReport};
use crate::desired::DesiredModel;
use crate::error::Result;
use crate::plan::{self, Plan, PlanInput};
use crate::registry::Registry;

use super::session::Session;
use super::{Reporter, checks};

/// What `plan`/`apply` may do beyond the manifest's desired state.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Declared models may be evicted to meet `quota_gb`.
    pub evict_declared: bool,
    /// The desired state is not the whole manifest (`kmm download`, `kmm ensure`): no other
    /// model is removed, neither by `prune` nor to meet the quota (`E_QUOTA` instead).
    pub only_desired: bool,
    /// `--verify`: re-hash every installed file, so files changed in place are replaced.
    pub verify: bool,
    /// `kmm migrate`: only moves, adoptions, mirrors and stray deletions; nothing downloaded
    /// or removed, no quota eviction.
    pub layout_only: bool,
}

impl Session {
    /// Observes the store and plans. Read-only; `apply` calls it under the store lock so that
    /// what it saw is what it changes. The plan, with the evictions `quota_gb` needs (least recently used undeclared models
    /// first; declared ones only with `options.evict_declared`; `E_QUOTA` when impossible).
    pub fn plan_with(&self, desired: &[DesiredModel], options: PlanOptions) -> Result<Plan> {
        Ok(self.plan_and_registry(desired, options)?.0)
    }

    /// [`Session::plan_with`], and the registry the plan was computed from (loaded once: on a
    /// large store it is the biggest thing kmm holds).
    pub fn plan_and_registry(
        &self,
        desired: &[DesiredModel],
        options: PlanOptions,
    ) -> Result<(Plan, Registry)> {
        let registry = Registry::load(&self.paths.registry_file())?;
        let desired = &self.with_current_hints(desired, &registry);
        checks::check_layout_conflicts(self.paths.root(), desired, &registry)?;
        let observed = super::observe(&self.paths, desired, registry, options.verify)?;
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
        let plan = checks::fit_quota(
            plan,
            input,
            &self.settings,
            options.only_desired,
            options.evict_declared,
        )?;
        Ok((plan, observed.registry))
    }

    /// Carries out `plan` (the caller holds the store lock and made its checks) with progress
    /// through `reporter`.
    pub(super) async fn run_apply(
        &self,
        plan: &Plan,
        sources: &apply::FetchSources,
        reporter: &dyn Reporter,
    ) -> Result<ApplyReport> {
        let progress = reporter.apply_progress(self.settings.progress_json);
        let report = apply::apply_with(
            plan,
            &ApplyContext {
                paths: &self.paths,
                hub: self.hub.as_ref(),
                max_workers: self.settings.max_workers,
                reporter: &*progress,
            },
            sources,
        )
        .await;
        progress.finish();
        report
    }
}
