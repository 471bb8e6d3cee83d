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
//! | [`hf_cache`] | read-only lookups in a local Hugging Face cache |
//! | [`resolve`] | declared models -> [`plan::DesiredModel`] via the hub or caches |
//! | [`migrate`] | observe for a plan: the scan plus the hashes the planner asks for (drift, adoption, old layouts) |
//! | [`plan`] | desired + observed -> `Plan` |
//! | [`sys`] | machine facts: RAM, CPU model/cores/features, GPUs (`nvidia-smi`), free disk |
//! | [`compat`] | GGUF / safetensors headers through ranged reads, memory estimate, verdicts |
//! | [`gc`] | LRU eviction selection (pins, declared models, quotas) |
//! | [`baselines`] | `kmm ensure`: distilbert, the spaCy pipeline, the basic classifier |
//! | [`apply`] | executes a `Plan` |
//! | [`durability`] | deferred fsync of downloads: a boot-keyed journal, re-hashing after a crash |
//! | [`api`] | the library API: the older tool's helpers as thin faces over the engine |
//! | [`plan_file`] | saved plans (`plan --out`): inputs' fingerprints, staleness |
//! | [`repair`] | `kmm registry repair`: back up an unreadable registry, rebuild it from disk |
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
//! | `models/<layout>/...` | written by [`apply`] only (`kmm migrate` moves files through it too) |
//! | `models/.kmm/lock` | [`store::StoreLock`] |
//! | `models/.kmm/downloads/`, `staging/`, `trash/` | [`apply`] |
//! | `models/.kmm/downloads/<hash>.part(.state)` | resumable partial downloads ([`hub`], cleaned by [`apply`]) |
//! | `models/.kmm/unsynced.json` | hashes of downloads not yet confirmed on disk, by boot ([`durability`], written by [`apply`]) |
//! | `models/.kmm/licenses.json` | license acceptances of models not installed yet (`kmm license --accept`, [`registry`]) |
//! | `kari-models.toml` edits | only `kmm download --save`, through `manifest_edit` (comments kept) |
//! | `models/.kmm/trees/` | tree-listing cache written by [`resolve`] (immutable upstream data) |
//! | `models/basic_cls/` | [`baselines`] (built in `.kmm/staging/`, renamed in, under the store lock) |
//! | `models/.kmm/registry-backups/` | unreadable registries saved by [`repair`] before a rebuild |
//! | `last_accessed` in the registry | [`apply`] (install, and `kmm path` via [`apply::record_access`]) |

pub mod api;
pub mod apply;
mod atomic_file;
pub mod baselines;
pub mod cli;
pub mod compat;
pub mod desired;
pub mod durability;
pub mod error;
pub mod gc;
pub mod hf_cache;
pub mod hub;
pub mod layout;
pub mod lockfile;
pub mod manifest;
pub mod manifest_edit;
pub mod ops;
pub mod plan;
pub mod plan_file;
pub mod registry;
pub mod repair;
pub mod resolve;
pub mod store;
pub mod sys;
pub mod upstream;
pub mod watch;

pub use error::{Error, ErrorCode, Result};
