//! The models directory on disk: its internal paths, the store lock, and a read-only scan.
//!
//! Internals live under `models/.kmm/` (lock file, staging, partial downloads, tree cache) and
//! are never part of the routed layout. The lock is an OS file lock (`File::lock`) on
//! `models/.kmm/lock`; the kernel releases it when a process dies, so a killed kmm never wedges
//! the store.
//!
//! Edges: [`observe`] only reads. It decides nothing: comparing what it saw with what is wanted
//! is `plan`'s job, changing anything is `apply`'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::registry::Registry;

/// Well-known paths of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePaths {
    root: PathBuf,
}

impl StorePaths {
    /// `root` is the models directory, made absolute by the caller.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StorePaths { root: root.into() }
    }
    /// The models directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `models/model_registry.json`.
    pub fn registry_file(&self) -> PathBuf {
        self.root.join("model_registry.json")
    }
    /// `models/.kmm/`.
    pub fn kmm_dir(&self) -> PathBuf {
        self.root.join(".kmm")
    }
    /// `models/.kmm/lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.kmm_dir().join("lock")
    }
    /// `models/.kmm/staging/`: model folders being assembled before they are swapped in.
    pub fn staging_dir(&self) -> PathBuf {
        self.kmm_dir().join("staging")
    }
    /// `models/.kmm/downloads/`: partial and verified downloads, named by content hash.
    pub fn downloads_dir(&self) -> PathBuf {
        self.kmm_dir().join("downloads")
    }
    /// `models/.kmm/trash/`: old folders being deleted after a swap.
    pub fn trash_dir(&self) -> PathBuf {
        self.kmm_dir().join("trash")
    }
    /// `models/.kmm/trees/`: cached tree listings by repo and commit (immutable upstream).
    pub fn tree_cache_dir(&self) -> PathBuf {
        self.kmm_dir().join("trees")
    }
}

/// Held while kmm changes the store; released on drop or process death.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

impl StoreLock {
    /// Takes the exclusive store lock, creating `.kmm/` if needed. If another process holds it,
    /// calls `on_wait` once and waits up to `timeout` (`None` = forever); then `E_LOCKED`.
    pub fn acquire(
        paths: &StorePaths,
        timeout: Option<Duration>,
        on_wait: &mut dyn FnMut(),
    ) -> Result<StoreLock> {
        todo!("{paths:?} {timeout:?} {:p}", on_wait)
    }
}

/// What is on disk right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub registry: Registry,
    /// The scanned folders, keyed by path relative to the models directory.
    pub dirs: BTreeMap<PathBuf, ObservedDir>,
    /// Leftovers to clean: `*.corrupt` files in the layout, relative to the models directory.
    pub strays: Vec<PathBuf>,
}

/// Files found under one model folder (recursively), keyed by `/`-separated relative path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedDir {
    pub files: BTreeMap<String, ObservedFile>,
}

/// A regular file as `stat` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedFile {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// Loads the registry and scans `dirs` (relative to the models directory; missing folders are
/// simply absent from the result) plus the layout for `*.corrupt` strays. Never writes.
pub fn observe(paths: &StorePaths, dirs: &[PathBuf]) -> Result<Observed> {
    todo!("{paths:?} {dirs:?}")
}
