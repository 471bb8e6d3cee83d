//! The GitOps verbs: `kmm lock`, `kmm show`, `kmm watch`, and the hidden `kmm generate-schemas`.
//!
//! Thin, like every verb: the lock is [`crate::lockfile`], saved plans [`crate::plan_file`], the
//! watch loop [`crate::watch`]; `plan --out`, `apply FILE` and the lock's part in plan/apply live
//! in `reconcile`, which these reuse.

pub(super) mod lock;
pub(super) mod schemas;
pub(super) mod show;
pub(super) mod watch;
