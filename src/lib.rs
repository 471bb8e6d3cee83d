//! kmm, the Kari Model Manager: keeps a directory of Hugging Face models in the state that
//! `kari-models.toml` declares.
//!
//! # Architecture
//!
//! ```text
//! kari-models.toml --manifest--> resolve (hub: revision -> commit, file list) --> DesiredModel[]
//! models/ + model_registry.json --store::observe--> Observed
//! plan::compute(desired, observed) -> Plan (pure)   -->   apply::apply (the only writer)
//! cli: flags/env/manifest -> settings, runs the above, renders text or the --json envelope
//! ```
//!
//! | module | job |
//! | --- | --- |
//! | [`error`] | the `Error` type, `E_*` codes, exit codes, hints |
//! | [`manifest`] | parse + validate `kari-models.toml` |
//! | [`upstream`] | upstream file identity (sha256 / git sha1) and streaming hashers |
//! | [`layout`] | routing rules and path validation |
//! | [`lockfile`] | `kari-models.lock`: load, atomic save, match against the manifest |
//! | [`registry`] | `models/model_registry.json` load / atomic save |
//! | [`store`] | store paths, the store lock, the read-only scan |
//! | [`hub`] | Hugging Face Hub HTTP client |
//! | [`resolve`] | declared models -> [`plan::DesiredModel`] via the hub or caches |
//! | [`plan`] | desired + observed -> `Plan` |
//! | [`plan_file`] | saved plans (`plan --out`): inputs' fingerprints, staleness |
//! | [`sys`] | machine facts (free disk) |
//! | [`apply`] | executes a `Plan` |
//! | [`watch`] | `kmm watch`: notify + debounce + interval + backoff around the apply reconcile |
//! | [`cli`] | the `kmm` command line |
//!
//! # File overview
//!
//! | file | owner |
//! | --- | --- |
//! | `kari-models.toml` | the user; read by [`manifest`] |
//! | `kari-models.lock` | written by `kmm lock` / `plan` / `apply` through [`lockfile`] |
//! | `plan.json` (any name) | written by `kmm plan --out` through [`plan_file`] |
//! | `models/model_registry.json` | written by [`apply`] through [`registry`] |
//! | `models/<layout>/...` | written by [`apply`] only |
//! | `models/.kmm/lock` | [`store::StoreLock`] |
//! | `models/.kmm/downloads/`, `staging/`, `trash/` | [`apply`] |
//! | `models/.kmm/trees/` | tree-listing cache written by [`resolve`] (immutable upstream data) |

pub mod apply;
pub mod cli;
pub mod error;
pub mod hub;
pub mod layout;
pub mod lockfile;
pub mod manifest;
pub mod plan;
pub mod plan_file;
pub mod registry;
pub mod resolve;
pub mod store;
pub mod sys;
pub mod upstream;
pub mod watch;

pub use error::{Error, ErrorCode, Result};
