//! Desired + observed -> `Plan`: an ordered graph of actions. Pure: no I/O, no clock, no env.
//!
//! Input is what `resolve` produced for each declared model ([`DesiredModel`]) and what
//! `store::observe` saw ([`crate::store::Observed`]). Output is a [`Plan`]: per-model changes for
//! humans (create `+`, update `~`, remove `-`, with files, sizes and the commit change) and a DAG
//! of actions for `apply` (petgraph, deterministic topological order, each action naming the
//! actions it depends on).
//!
//! Edges: must not do I/O. Everything it needs arrives in [`PlanInput`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::layout::Library;
use crate::store::Observed;
use crate::upstream::UpstreamFile;

/// One declared model, resolved against the hub (or the lock / tree cache).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredModel {
    /// The id as declared in the manifest: the registry key.
    pub id: String,
    /// The revision as declared (branch, tag, `refs/pr/N` or commit).
    pub revision: String,
    /// The commit `revision` resolves to.
    pub commit: String,
    pub library: Library,
    /// Folder relative to the models directory (from `layout::route`).
    pub install_dir: PathBuf,
    /// Selected files, sorted by path.
    pub files: Vec<UpstreamFile>,
    /// `configs/<repo>.json` when `config.json` is among `files`.
    pub config_mirror: Option<PathBuf>,
    pub pinned: Option<bool>,
    /// License acceptance declared in the manifest, recorded into the registry as is.
    pub license_accepted: Option<serde_json::Value>,
    /// The include/exclude globs, recorded so later plans can reuse the registry's file list.
    pub selection: crate::resolve::Selection,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Absolute models directory (registry `install_path`s are absolute, as in the seed).
    pub models_dir: &'a Path,
    pub desired: &'a [DesiredModel],
    pub observed: &'a Observed,
    /// Remove registered models that are no longer declared.
    pub prune: bool,
}

/// The result of planning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    _todo: (),
}

impl Plan {
    /// True when applying would change nothing.
    pub fn is_empty(&self) -> bool {
        todo!()
    }
}

/// Computes the plan.
pub fn compute(input: PlanInput<'_>) -> Plan {
    todo!("{input:?}")
}

/// Renders the plan for a terminal (no colour codes; the CLI adds none yet).
pub fn render_text(plan: &Plan) -> String {
    todo!("{plan:?}")
}
