//! One file per verb: its clap arguments, one [`crate::ops`] call (or a library call for the
//! read-only hub verbs), and its rendering, as a cargo command is over `cargo::ops`. `--json`
//! data shapes are documented by `schemas/`.
//!
//! Edges: verbs import `ops` and the shared CLI files (`flags`, `global_args`, `output`,
//! `plan_output`, `table`, `verb_support`), never `args`; `browse` reuses `list`'s table and
//! `download`'s install.

pub mod apply;
pub mod browse;
pub mod compatibility;
pub mod completions;
pub mod download;
pub mod ensure;
pub mod fleet;
pub mod gc;
pub mod info;
pub mod license;
pub mod list;
pub mod lock;
pub mod migrate;
pub mod path;
pub mod pin;
pub mod plan;
pub mod registry;
pub mod schemas;
pub mod show;
pub mod verify;
pub mod watch;
