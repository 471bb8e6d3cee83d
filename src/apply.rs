//! Carries out a `Plan`: the only module that changes the store.
//!
//! Downloads land in `models/.kmm/downloads/` and are verified (size + upstream hash) while they
//! stream; a model's new folder is assembled under `models/.kmm/staging/` (new files plus hard
//! links of unchanged ones) and swapped in with one rename, so a model folder is never seen half
//! updated; the registry is written after the files, atomically, under the store lock the caller
//! holds. Independent actions run concurrently, bounded by `max_workers`.
//!
//! Edges: reports progress through [`Reporter`] and never prints; it does not plan.

use crate::error::Result;
use crate::hub::HubClient;
use crate::plan::Plan;
use crate::store::StorePaths;

/// Progress events. The CLI turns them into progress bars; tests record them.
pub trait Reporter: Send + Sync {
    /// A download starts: model id, repo path, total bytes.
    fn download_started(&self, _model: &str, _path: &str, _size: u64) {}
    /// More bytes of a download landed.
    fn download_progress(&self, _model: &str, _path: &str, _bytes: u64) {}
    /// A download finished and verified.
    fn download_finished(&self, _model: &str, _path: &str) {}
    /// A model folder was swapped in / removed, or another step finished; one line for humans.
    fn step(&self, _message: &str) {}
}

/// A reporter that reports nothing.
pub struct SilentReporter;
impl Reporter for SilentReporter {}

/// What apply needs besides the plan.
pub struct ApplyContext<'a> {
    pub paths: &'a StorePaths,
    /// `None` when offline: any action that needs the network fails with `E_NET`.
    pub hub: Option<&'a HubClient>,
    pub max_workers: usize,
    pub reporter: &'a dyn Reporter,
}

/// What apply did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ApplyReport {
    pub models_installed: Vec<String>,
    pub models_updated: Vec<String>,
    pub models_removed: Vec<String>,
    pub files_downloaded: u64,
    pub bytes_downloaded: u64,
    pub strays_removed: Vec<String>,
}

/// Executes `plan`. On the first failure no new actions start, running ones finish, models whose
/// actions all completed stay installed and registered, and the error is returned.
pub async fn apply(plan: &Plan, ctx: &ApplyContext<'_>) -> Result<ApplyReport> {
    todo!("{plan:?} {:?}", ctx.paths)
}
