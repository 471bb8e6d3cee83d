//! The operations: the one reconcile pipeline every verb and the library API run, as cargo's
//! commands run over `cargo::ops`.
//!
//! ```text
//! Session::open (manifest, lock, settings, hub)
//!   -> resolve (with the lock)            session.rs
//!   -> write the lock                     session.rs
//!   -> take the store lock                session.rs
//!   -> observe (scan + asked-for hashes)  observe.rs
//!   -> plan (pure, crate::plan)           steps.rs
//!   -> checks (layout, quota, compat)     checks.rs, compat_check.rs
//!   -> free disk, apply, settle           reconcile.rs, steps.rs
//!   -> baselines                          baselines.rs
//! ```
//!
//! | file | job |
//! | --- | --- |
//! | `settings.rs` | flags ([`Overrides`]) > environment > manifest > defaults |
//! | `session.rs` | [`Session`]: open, resolve, lock file, store lock |
//! | `observe.rs` | the store scan plus the hashes the planner asks for |
//! | `steps.rs` | the shared steps: plan (observe, planner, layout and quota checks) and apply with progress |
//! | `reconcile.rs` | the whole reconcile: `plan`, `apply`, `watch`, `migrate`, `verify`, and [`apply_desired`] under every one-model install |
//! | `checks.rs` | refusals before any change: nested folders, quota, free disk; review warnings |
//! | `compat_check.rs` | compatibility notes of the models a plan creates (`--force-compat` refuses) |
//! | `sources.rs` | where a plan's bytes come from: the store, the Hugging Face cache, the shared store, the hub |
//! | `fleet.rs` | each host's report to the shared store after an apply; `kmm fleet status` |
//! | `baselines.rs` | `kmm ensure` and the baselines `plan`/`apply` note and produce |
//! | `install.rs` | one model alone: `kmm download`, `kmm browse`, the library's `download_snapshot` |
//! | `gc.rs` | `kmm gc`: quota/target evictions and stale downloads |
//! | `lock.rs` | `kmm lock`: resolve again and write kari-models.lock |
//! | `records.rs` | one record's edits: `kmm pin`, `kmm license --accept`, `kmm path` |
//! | `repair.rs` | `kmm registry repair` |
//!
//! Edges: imports the engine (`resolve`, `plan`, `apply`, `store`, ...), never `cli`. Progress
//! and status lines reach a person only through the caller's [`Reporter`]; results come back
//! as data for the caller to render.

mod baselines;
mod checks;
mod compat_check;
mod fleet;
mod gc;
mod install;
mod lock;
mod observe;
mod reconcile;
mod records;
mod repair;
mod session;
pub mod settings;
mod sources;
mod steps;

pub use baselines::{BaselineRequest, ensure_baselines, note_baselines};
pub use checks::review_warnings;
pub use compat_check::{
    check_model as check_model_compatibility, check_plan as check_compatibility,
};
pub use fleet::{FleetHost, FleetStatus, HostState, fleet_status, lock_digest};
pub use gc::{GcReport, GcRequest, StaleDownload, collect_garbage};
pub use install::{InstallOptions, install_one};
pub use lock::{Locked, lock_manifest};
pub use observe::observe;
pub use reconcile::{
    Applied, ApplyOptions, ReviewRequest, Reviewed, apply_desired, apply_manifest, apply_saved,
    migrate_layout, plan_manifest, review_manifest,
};
pub use records::{PinChange, accept_license, license_acceptance, record_access, set_pin};
pub use repair::{RepairOutcome, repair_registry};
pub use session::{LockMode, Session};
pub use settings::{EnvLookup, Overrides, Settings};
pub use steps::PlanOptions;

/// Where the operations' messages go: status lines for a person, and the progress of apply.
/// The CLI prints them on stderr; the library API and tests may drop or record them.
pub trait Reporter: Sync {
    /// One line for a person ("Waiting for another kmm process...", "Wrote kari-models.lock").
    fn status(&self, line: &str);
    /// The progress sink of one apply run; `progress_json` is the `KMM_PROGRESS_JSON` setting.
    fn apply_progress(&self, progress_json: bool) -> Box<dyn ApplyProgress + '_>;
}

/// The progress of one apply run: apply's events, then `finish` once it is over (a progress
/// bar is cleared, a last line printed).
pub trait ApplyProgress: crate::apply::Reporter {
    fn finish(&self);
}

/// Reports nothing: for library calls.
pub struct Silent;

impl Reporter for Silent {
    fn status(&self, _line: &str) {}
    fn apply_progress(&self, _progress_json: bool) -> Box<dyn ApplyProgress + '_> {
        Box::new(crate::apply::SilentReporter)
    }
}

impl ApplyProgress for crate::apply::SilentReporter {
    fn finish(&self) {}
}
