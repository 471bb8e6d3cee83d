//! Desired + observed -> `Plan`: an ordered graph of actions. Pure: no I/O, no clock, no env.
//!
//! Input is what `resolve` produced for each declared model ([`DesiredModel`]) and what
//! `store::observe` saw ([`crate::store::Observed`]). Output is a [`Plan`]: per-model changes for
//! humans (create `+`, update `~`, remove `-`, with files, sizes and the commit change) and a DAG
//! of actions for `apply` (petgraph, deterministic topological order, each action naming the
//! actions it depends on).
//!
//! The rule that makes updates cheap: a file the registry records with the upstream hash that is
//! wanted now, and that is on disk with the expected size, is kept (hard-linked into the new
//! folder by `apply`), never downloaded again. Sizes are the only thing checked on disk, so a
//! plan over a large store costs one `stat` per file and no hashing.
//!
//! Fetches are deduplicated by upstream hash: two models (or two paths of one model) with the
//! same bytes share one download, because `apply` stores downloads by hash.
//!
//! Edges: the planner does no I/O: everything it needs arrives in [`PlanInput`], and the reads
//! it asks for ([`observe`]) are done by [`crate::ops`]. Only [`file`] (saved plans) touches
//! the disk, and nothing of the planner imports it.
//!
//! | file | job |
//! | --- | --- |
//! | `model.rs` | the plan as data (serialized, schema'd) |
//! | `observe.rs` | what a plan must see: folders to scan, files to hash (pure) |
//! | `planner.rs` | desired + observed -> plan: models, undeclared records, strays, summary |
//! | `install.rs` | one declared model: keep, gather, fetch or carry each file; reasons; actions |
//! | `record.rs` | the registry record a planned record becomes (apply writes it, `--diff` shows it) |
//! | `graph.rs` | action dependencies and their deterministic order |
//! | `render.rs`, `markdown.rs` | text and markdown for people |
//! | `diff.rs` | the registry before and after, as a unified diff |
//! | `file.rs` | saved plans (`plan --out`): inputs' fingerprints, staleness |

pub mod diff;
pub mod file;
mod graph;
mod install;
pub mod markdown;
mod model;
mod observe;
mod planner;
mod record;
mod render;

pub use crate::desired::DesiredModel;
pub use markdown::render_markdown;
pub use model::*;
pub use observe::{dirs_to_observe, hash_requests};
pub use planner::{PlanInput, compute, compute_layout_only, compute_with_evictions};
pub use record::merge_record;
pub use render::{format_bytes, render_text, summary_line};

#[cfg(test)]
mod tests;
