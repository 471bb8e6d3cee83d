//! kmm, the Kari Model Manager: keeps a directory of Hugging Face models in the state that
//! `kari-models.toml` declares.
//!
//! # Architecture
//!
//! ```text
//!            cli (clap args -> one ops call -> text / --json)      api (library faces)
//!                         \                                          /
//!                          ops: the one reconcile pipeline (Reporter for messages)
//!   Session::open -> resolve (+lock) -> store lock -> observe -> plan -> checks -> apply
//!                                                     -> settle -> baselines
//!     manifest, lockfile   resolve/hub/hf_cache   store   plan (pure)  gc, compat   apply
//!                                                                                  (+ shared tier)
//!                                      \                |               /
//!                       desired, layout, registry, upstream, durability, error, sys
//! ```
//!
//! Imports run downwards only: `cli` and `api` call [`ops`]; `ops` calls the engine and never
//! `cli` (progress and status lines go through [`ops::Reporter`]); [`plan`] is pure and does no
//! I/O; [`apply`] is the only writer of the models directory.
//!
//! | module | job |
//! | --- | --- |
//! | [`cli`] | the `kmm` command line: one file per verb in `cli/commands/`, shared flag groups |
//! | [`api`] | the library API: the older tool's helpers as thin faces over [`ops`] |
//! | [`ops`] | the reconcile pipeline every verb and the API run: session, plan and apply steps, checks, baselines, gc, lock, repair |
//! | [`watch`] | `kmm watch`: notify + debounce + interval + backoff around the apply reconcile |
//! | [`manifest`] | parse + validate `kari-models.toml` |
//! | [`manifest_edit`] | `kmm download --save`: edits the manifest, comments kept |
//! | [`lockfile`] | `kari-models.lock`: load, atomic save, match against the manifest |
//! | [`resolve`] | declared models -> [`desired::DesiredModel`] via the hub or caches |
//! | [`hub`] | Hugging Face Hub HTTP client: metadata, chunked downloads, retries |
//! | [`hf_cache`] | read-only lookups in a local Hugging Face cache |
//! | [`shared`] | the fleet's shared S3-compatible tier: verified reads, conditional publishes, leases (origin once), node reports |
//! | [`desired`] | the desired state of one model, and where models may be installed |
//! | [`store`] | store paths, the store lock, the read-only scan, hashing on request |
//! | [`plan`] | desired + observed -> `Plan` (pure), its renderings, saved plan files |
//! | [`gc`] | LRU eviction selection (pins, declared models, quotas) |
//! | [`compat`] | GGUF / safetensors headers through ranged reads, memory estimate, verdicts |
//! | [`baselines`] | the Python baselines: distilbert, the spaCy pipeline, the basic classifier |
//! | [`apply`] | executes a `Plan`: the only writer |
//! | [`durability`] | deferred fsync of downloads: a boot-keyed journal, re-hashing after a crash |
//! | [`repair`] | `kmm registry repair`: back up an unreadable registry, rebuild it from disk |
//! | [`registry`] | `models/model_registry.json` load / atomic save |
//! | [`layout`] | routing rules and path validation |
//! | [`upstream`] | upstream file identity (sha256 / git sha1) and streaming hashers |
//! | [`sys`] | machine facts: RAM, CPU model/cores/features, GPUs (`nvidia-smi`), free disk |
//! | [`error`] | the `Error` type, `E_*` codes, exit codes, hints |
//!
//! # File overview
//!
//! | file | owner |
//! | --- | --- |
//! | `kari-models.toml` | the user; read by [`manifest`] |
//! | `kari-models.lock` | written by `kmm lock` / `plan` / `apply` through [`lockfile`] |
//! | `plan.json` (any name) | written by `kmm plan --out` through [`plan::file`] |
//! | `models/model_registry.json` | written by [`apply`] through [`registry`] |
//! | `models/<layout>/...` | written by [`apply`] only (`kmm migrate` moves files through it too) |
//! | `models/.kmm/lock` | [`store::StoreLock`] |
//! | `models/.kmm/downloads/`, `staging/`, `trash/` | [`apply`] |
//! | `models/.kmm/downloads/<hash>.part(.state)` | resumable partial downloads ([`hub`], cleaned by [`apply`]) |
//! | `models/.kmm/downloads/<hash>.tier` | a file being read from the shared tier ([`shared`], cleaned by [`apply`]) |
//! | `s3://BUCKET/PREFIX/{blobs,leases,nodes}/` | the shared tier ([`shared`]: publishes from [`apply`]'s fetches, reports from [`ops`]) |
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
mod confine;
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
pub mod registry;
pub mod repair;
pub mod resolve;
pub mod shared;
pub mod store;
pub mod sys;
pub mod upstream;
pub mod watch;

pub use error::{Error, ErrorCode, Result};
