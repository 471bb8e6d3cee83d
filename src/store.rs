//! The models directory on disk: its internal paths, the store lock, and a read-only scan.
//!
//! Internals live under `models/.kmm/` (lock file, staging, partial downloads, tree cache) and
//! are never part of the routed layout. The lock is an OS file lock (`File::lock`) on
//! `models/.kmm/lock`; the kernel releases it when a process dies, so a killed kmm never wedges
//! the store.
//!
//! [`observe`] costs one `lstat` per file in the scanned model folders and one directory read per
//! folder of the store (strays, and loose files: regular files outside every scanned folder,
//! such as the seed's flat GGUFs, which are `stat`ed too); it never hashes. [`hash_files`]
//! hashes the files the planner asks for (`plan::hash_requests`), and only those. It never follows a symlink found inside
//! the store (a symlinked file is not a regular file and is not reported); the scanned model
//! folders themselves are followed if they are symlinks, as the user put them there.
//! Strays are `*.corrupt` files (the seed's leftovers) and `*.incomplete` files (partial
//! downloads left by `huggingface_hub`, e.g. under a legacy `.cache/huggingface/download/`)
//! anywhere outside `.kmm/`, whose partial downloads are kmm's own and resumable.
//!
//! Edges: [`observe`] only reads. It decides nothing: comparing what it saw with what is wanted
//! is `plan`'s job, changing anything is `apply`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fs_err::os::unix::fs::OpenOptionsExt as _;
use std::collections::HashSet;
use std::os::unix::fs::FileExt as _;
use std::path::Component;
use std::time::Instant;

use crate::error::{Error, ErrorCode, Result};
use crate::registry::Registry;
use crate::upstream::{FileHash, HASH_BUFFER_LEN, hash_reader};

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
    ///
    /// A zero timeout fails at once without calling `on_wait`. The holder writes its pid into
    /// the lock file so that a blocked kmm can say who holds the store.
    pub fn acquire(
        paths: &StorePaths,
        timeout: Option<Duration>,
        on_wait: &mut dyn FnMut(),
    ) -> Result<StoreLock> {
        crate::confine::check_own_folders(&paths.kmm_dir())?;
        let kmm_dir = paths.kmm_dir();
        fs_err::create_dir_all(&kmm_dir)
            .map_err(|error| Error::io(format!("creating `{}`", kmm_dir.display()), &error))?;
        let lock_path = paths.lock_file();
        let file = fs_err::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Checked above; this closes the gap of a link planted since.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|error| Error::io("opening the store lock", &error))?
            .into_file();
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        let mut waiting = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(error)) => {
                    return Err(Error::io(
                        format!("locking `{}`", lock_path.display()),
                        &error,
                    ));
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                return Err(locked_error(paths, timeout));
            }
            if !waiting {
                waiting = true;
                on_wait();
            }
            match deadline {
                // Nothing to time: let the kernel wake us when the holder is done.
                None => {
                    file.lock().map_err(|error| {
                        Error::io(format!("locking `{}`", lock_path.display()), &error)
                    })?;
                    break;
                }
                Some(deadline) => {
                    std::thread::sleep((deadline - now).min(LOCK_POLL_INTERVAL));
                }
            }
        }
        // Only informs a blocked kmm; failing to write it must not fail the run.
        let pid = format!("{}\n", std::process::id());
        if let Err(error) = file
            .set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        {
            tracing::debug!("could not write the pid into the store lock: {error}");
        }
        sweep_stale_temp_files(paths);
        Ok(StoreLock { _file: file })
    }
}

/// Removes the temporary files of atomic writes that a killed kmm left behind: the registry's
/// (`models/.model_registry.json.*.tmp`, or beside the registry link's target), the license acceptances' (`.kmm/.licenses.json.*`)
/// and the config mirrors' (`models/configs/.kmm-*.tmp`). Every such write happens under the
/// store lock, so once we hold it, any of them is an orphan (found by the crash harness in
/// `tests/it/reliability.rs`). Best effort: a file that cannot be removed is only logged.
fn sweep_stale_temp_files(paths: &StorePaths) {
    // A registry that is a link is written beside its target (see `atomic_file`).
    let registry = crate::atomic_file::link_target(&paths.registry_file())
        .unwrap_or_else(|_| paths.registry_file());
    let registry_dir = registry.parent().unwrap_or(paths.root()).to_path_buf();
    let registry_prefix = format!(
        ".{}.",
        registry.file_name().unwrap_or_default().to_string_lossy()
    );
    let sites: [(PathBuf, &str, &str); 3] = [
        (registry_dir, &registry_prefix, ".tmp"),
        (paths.kmm_dir(), ".licenses.json.", ""),
        (paths.root().join("configs"), ".kmm-", ".tmp"),
    ];
    for (dir, prefix, suffix) in sites {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file && name.starts_with(prefix) && name.ends_with(suffix) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => tracing::debug!("removed the orphaned temp file {name}"),
                    Err(error) => tracing::debug!("could not remove {name}: {error}"),
                }
            }
        }
    }
}

/// How often a blocked kmm tries the lock again when it has a timeout.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(50);

fn locked_error(paths: &StorePaths, timeout: Option<Duration>) -> Error {
    let holder = fs_err::read_to_string(paths.lock_file())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map_or_else(String::new, |pid| format!(" (pid {pid})"));
    let waited = match timeout {
        Some(timeout) if !timeout.is_zero() => {
            format!("; gave up after {}", humantime::format_duration(timeout))
        }
        _ => String::new(),
    };
    Error::new(
        ErrorCode::Locked,
        format!(
            "the store `{}` is locked by another kmm process{holder}{waited}",
            paths.root().display()
        ),
    )
    .with_hint("wait for the other kmm to finish, or pass a longer --lock-timeout to wait for it")
}

/// What is on disk right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub registry: Registry,
    /// The scanned folders, keyed by path relative to the models directory.
    pub dirs: BTreeMap<PathBuf, ObservedDir>,
    /// Leftovers to clean: `*.corrupt` files in the layout, relative to the models directory.
    pub strays: Vec<PathBuf>,
    /// Regular files outside every scanned folder (flat GGUFs of the seed's old layout, folders
    /// no record describes), relative to the models directory. Not listed: `.kmm/`, the
    /// `configs/` mirrors, files directly in the models directory whose name starts with a dot
    /// or ends in `.json` (registries, their temp files), and strays.
    pub loose: BTreeMap<PathBuf, ObservedFile>,
    /// Content hashes computed on request by [`hash_files`], keyed by path relative to the
    /// models directory and the kind of hash.
    pub hashes: BTreeMap<(PathBuf, HashKind), FileHash>,
    /// Content hashes (hex) whose bytes were written in an earlier boot and never confirmed on
    /// disk: the planner hashes files recorded with them. Filled by the observe step of
    /// [`crate::ops`] from `crate::durability`, which imports this module (not the reverse).
    pub unconfirmed: BTreeSet<String>,
}

/// `time` as nanoseconds since the Unix epoch (the registry's `mtime_ns`); `None` before 1970
/// or past the year 2554.
pub fn unix_nanos(time: SystemTime) -> Option<u64> {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(since.as_nanos()).ok()
}

/// Which upstream hash a file is hashed with: LFS files are named by sha256, the others by git
/// blob sha1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashKind {
    Sha256,
    GitSha1,
}

impl HashKind {
    pub fn of(hash: &FileHash) -> HashKind {
        match hash {
            FileHash::Sha256(_) => HashKind::Sha256,
            FileHash::GitSha1(_) => HashKind::GitSha1,
        }
    }
}

/// Hashes each requested file (relative to the models directory) with the requested kind and
/// stores the result in `observed.hashes`. A file that vanished or cannot be read is skipped
/// (the plan then treats it as not matching); requests already answered are not hashed again.
/// This is the only place where a plan reads file contents: the planner decides which files
/// are worth it (see `plan::hash_requests`), so a plan over a store whose registry records
/// hashes hashes nothing unless `--verify` asks.
pub fn hash_files(
    paths: &StorePaths,
    requests: &[(PathBuf, HashKind)],
    observed: &mut Observed,
) -> Result<()> {
    let mut buffer = vec![0u8; HASH_BUFFER_LEN];
    for (relative, kind) in requests {
        let key = (relative.clone(), *kind);
        if observed.hashes.contains_key(&key) {
            continue;
        }
        let full = paths.root().join(relative);
        let mut file = match fs_err::File::open(&full) {
            Ok(file) => file,
            Err(error) => {
                tracing::debug!("not hashing `{}`: {error}", full.display());
                continue;
            }
        };
        let size = match file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(error) => return Err(Error::io(format!("hashing `{}`", full.display()), &error)),
        };
        let like = match kind {
            HashKind::Sha256 => FileHash::Sha256(String::new()),
            HashKind::GitSha1 => FileHash::GitSha1(String::new()),
        };
        let (read, hash) = hash_reader(&mut file, &like, size, &mut buffer)
            .map_err(|error| Error::io(format!("hashing `{}`", full.display()), &error))?;
        // A file that grew or shrank while being read is not the file that was sized.
        if read == size {
            observed.hashes.insert(key, hash);
        }
    }
    Ok(())
}

/// Files found under one model folder (recursively), keyed by `/`-separated relative path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObservedDir {
    pub files: BTreeMap<String, ObservedFile>,
}

/// A regular file as `stat` sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedFile {
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// (device, inode): two names of one file have the same (a move that was interrupted
    /// between linking the file into its model folder and deleting the old name).
    pub inode: Option<(u64, u64)>,
}

impl ObservedFile {
    fn of(metadata: &std::fs::Metadata) -> ObservedFile {
        use std::os::unix::fs::MetadataExt as _;
        ObservedFile {
            size: metadata.len(),
            modified: metadata.modified().ok(),
            inode: Some((metadata.dev(), metadata.ino())),
        }
    }
}

/// Loads the registry and scans `dirs` (relative to the models directory; missing folders are
/// simply absent from the result) plus the layout for `*.corrupt` strays. Never writes.
///
/// A scanned folder does not include the files of another scanned folder nested in it (a plain
/// id `org` routes to `transformers/org/`, which holds `transformers/org/m/` of `org/m`).
/// A missing models directory is a fresh store: empty registry, nothing found.
pub fn observe(paths: &StorePaths, dirs: &[PathBuf]) -> Result<Observed> {
    observe_with(paths, dirs, None)
}

/// [`observe`] with the registry already loaded by the caller (`None`: load it), so that a
/// large registry is parsed and held once.
pub fn observe_with(
    paths: &StorePaths,
    dirs: &[PathBuf],
    registry: Option<Registry>,
) -> Result<Observed> {
    let root = paths.root();
    for dir in dirs {
        let normal = dir
            .components()
            .all(|part| matches!(part, Component::Normal(_)));
        if !normal || dir.as_os_str().is_empty() {
            return Err(Error::internal(format!(
                "observe() needs model folders relative to the models directory, got `{}`",
                dir.display()
            )));
        }
    }
    let mut observed = Observed::default();
    match fs_err::metadata(root) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(Error::disk(format!(
                "the models directory `{}` is not a folder",
                root.display()
            ))
            .with_hint("point --models-dir or `models_dir` in the manifest at a folder"));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(observed),
        Err(error) => {
            return Err(Error::io("reading the models directory", &error));
        }
    }
    observed.registry = match registry {
        Some(registry) => registry,
        None => Registry::load(&paths.registry_file())?,
    };

    let scanned: HashSet<PathBuf> = dirs.iter().map(|dir| root.join(dir)).collect();
    for dir in dirs {
        let full = root.join(dir);
        match fs_err::metadata(&full) {
            Ok(metadata) if metadata.is_dir() => {}
            // Missing, or a file where a folder should be: nothing installed there.
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(Error::io("scanning the store", &error)),
        }
        let mut found = ObservedDir::default();
        let mut scan = Scan {
            scanned: &scanned,
            files: &mut found.files,
            base: dir,
            strays: &mut observed.strays,
        };
        scan.dir(&full, "")?;
        observed.dirs.insert(dir.clone(), found);
    }

    let mut walk = Walk {
        kmm_dir: paths.kmm_dir(),
        scanned: &scanned,
        strays: &mut observed.strays,
        loose: &mut observed.loose,
    };
    walk.dir(root, Path::new(""), false)?;
    observed.strays.sort();
    Ok(observed)
}

/// True for leftovers kmm deletes: `*.corrupt` (the seed's) and `*.incomplete` (partial
/// downloads of `huggingface_hub`).
pub fn is_stray(file_name: &str) -> bool {
    file_name.ends_with(".corrupt") || file_name.ends_with(".incomplete")
}

/// The entries of `dir`, skipping those that vanish while we look (a concurrent cleanup).
fn entries(dir: &Path) -> Result<Vec<fs_err::DirEntry>> {
    let failed = |error: &std::io::Error| Error::io("scanning the store", error);
    let reader = match fs_err::read_dir(dir) {
        Ok(reader) => reader,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(failed(&error)),
    };
    let mut list = Vec::new();
    for entry in reader {
        match entry {
            Ok(entry) => list.push(entry),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(&error)),
        }
    }
    Ok(list)
}

/// One scanned model folder: its files (by `/`-separated path) and the strays in it.
struct Scan<'a> {
    scanned: &'a HashSet<PathBuf>,
    files: &'a mut BTreeMap<String, ObservedFile>,
    /// The folder relative to the models directory (strays are named from there).
    base: &'a Path,
    strays: &'a mut Vec<PathBuf>,
}

impl Scan<'_> {
    fn dir(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        for entry in entries(dir)? {
            let path = entry.path();
            let Ok(name) = entry.file_name().into_string() else {
                // Hub paths are UTF-8, so such a file can never be one kmm installed or wants.
                tracing::warn!("skipping `{}`: its name is not UTF-8", path.display());
                continue;
            };
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            // `DirEntry::file_type` and `metadata` do not follow symlinks.
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(Error::io(format!("scanning `{}`", path.display()), &error));
                }
            };
            if file_type.is_dir() {
                if !self.scanned.contains(&path) {
                    self.dir(&path, &key)?;
                }
            } else if file_type.is_file() {
                let metadata = match entry.metadata() {
                    Ok(metadata) => metadata,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => {
                        return Err(Error::io(format!("scanning `{}`", path.display()), &error));
                    }
                };
                if is_stray(key.rsplit('/').next().unwrap_or(&key)) {
                    self.strays.push(self.base.join(&key));
                }
                self.files.insert(key, ObservedFile::of(&metadata));
            } else if is_stray(key.rsplit('/').next().unwrap_or(&key)) {
                self.strays.push(self.base.join(&key));
            }
        }
        Ok(())
    }
}

/// The walk over the store outside the scanned folders (and `.kmm/`) for strays and loose
/// files. It uses the entry types `readdir` returns; only loose files (few, outside
/// migrations) are `stat`ed.
struct Walk<'a> {
    kmm_dir: PathBuf,
    scanned: &'a HashSet<PathBuf>,
    strays: &'a mut Vec<PathBuf>,
    loose: &'a mut BTreeMap<PathBuf, ObservedFile>,
}

impl Walk<'_> {
    /// `quiet`: list strays only, no loose files (the `configs/` mirrors).
    fn dir(&mut self, dir: &Path, relative: &Path, quiet: bool) -> Result<()> {
        for entry in entries(dir)? {
            let path = entry.path();
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    return Err(Error::io(format!("scanning `{}`", path.display()), &error));
                }
            };
            let relative = relative.join(entry.file_name());
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if file_type.is_dir() {
                // A scanned folder's files and strays were listed by its scan (which also
                // covers the unscanned folders below it): one `readdir` per folder in all.
                // `.kmm-*`: apply's work folders beside a destination on another file system.
                if path == self.kmm_dir || self.scanned.contains(&path) || name.starts_with(".kmm-")
                {
                    continue;
                }
                // Mirrors are derived data, not loose files; strays still count there.
                let mirrors = relative.components().count() == 1 && name == "configs";
                self.dir(&path, &relative, quiet || mirrors)?;
            } else if is_stray(&name) {
                self.strays.push(relative);
            } else if file_type.is_file() && !quiet {
                let top_level = relative.components().count() == 1;
                if top_level && (name.starts_with('.') || name.ends_with(".json")) {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                self.loose.insert(relative, ObservedFile::of(&metadata));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::ffi::OsStrExt as _;
    use std::process::{Command, Stdio};

    fn store() -> (tempfile::TempDir, StorePaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = StorePaths::new(dir.path().join("models"));
        (dir, paths)
    }

    fn no_wait() -> impl FnMut() {
        || panic!("on_wait must not be called")
    }

    #[test]
    fn lock_creates_the_store_folders_and_records_the_pid() {
        let (_dir, paths) = store();
        let lock = StoreLock::acquire(&paths, Some(Duration::ZERO), &mut no_wait()).unwrap();
        assert!(paths.kmm_dir().is_dir());
        let pid = fs_err::read_to_string(paths.lock_file()).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        drop(lock);
    }

    #[test]
    fn a_held_lock_blocks_a_second_holder_until_dropped() {
        let (_dir, paths) = store();
        let first = StoreLock::acquire(&paths, None, &mut no_wait()).unwrap();

        // flock(2): a second open file description conflicts even in the same process.
        let error = StoreLock::acquire(&paths, Some(Duration::ZERO), &mut no_wait()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Locked);
        assert_eq!(
            error.message(),
            format!(
                "the store `{}` is locked by another kmm process (pid {})",
                paths.root().display(),
                std::process::id()
            )
        );
        assert!(error.hint().unwrap().contains("--lock-timeout"));

        let mut waits = 0;
        let error =
            StoreLock::acquire(&paths, Some(Duration::from_millis(120)), &mut || waits += 1)
                .unwrap_err();
        assert_eq!(error.code(), ErrorCode::Locked);
        assert!(
            error.message().ends_with("; gave up after 120ms"),
            "{error}"
        );
        assert_eq!(waits, 1);

        drop(first);
        let _second = StoreLock::acquire(&paths, Some(Duration::ZERO), &mut no_wait()).unwrap();
    }

    #[test]
    fn waiting_forever_ends_when_the_holder_lets_go() {
        let (_dir, paths) = store();
        let first = StoreLock::acquire(&paths, None, &mut no_wait()).unwrap();
        let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
        let waiter_paths = paths.clone();
        let waiter = std::thread::spawn(move || {
            let mut calls = 0;
            let lock = StoreLock::acquire(&waiter_paths, None, &mut || {
                calls += 1;
                waiting_tx.send(()).unwrap();
            });
            (lock.map(|_| ()), calls)
        });
        waiting_rx.recv().unwrap();
        drop(first);
        let (result, calls) = waiter.join().unwrap();
        assert_eq!(result, Ok(()));
        assert_eq!(calls, 1);
    }

    /// Run by [`the_lock_holds_across_processes`] in a child process: takes the lock of the
    /// store named by `KMM_TEST_LOCK_ROOT`, says so, and holds it until stdin closes.
    #[test]
    #[ignore = "helper process for the_lock_holds_across_processes"]
    fn lock_holder_process() {
        let Some(root) = std::env::var_os("KMM_TEST_LOCK_ROOT") else {
            return;
        };
        let _lock = StoreLock::acquire(&StorePaths::new(root), None, &mut || {}).unwrap();
        println!("KMM_LOCK_HELD");
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
    }

    #[test]
    fn the_lock_holds_across_processes() {
        let (_dir, paths) = store();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "store::tests::lock_holder_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KMM_TEST_LOCK_ROOT", paths.root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(
            lines.any(|line| line.unwrap().contains("KMM_LOCK_HELD")),
            "the helper process never took the lock"
        );

        let error = StoreLock::acquire(&paths, Some(Duration::ZERO), &mut no_wait()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Locked);
        assert!(
            error.message().contains(&format!("(pid {})", child.id())),
            "{error}"
        );

        // The helper exits when its stdin closes; the kernel releases its lock.
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let _lock = StoreLock::acquire(&paths, Some(Duration::ZERO), &mut no_wait()).unwrap();
    }

    #[test]
    fn lock_on_a_store_that_is_a_file_is_a_disk_error() {
        let (_dir, paths) = store();
        fs_err::write(paths.root(), "not a folder").unwrap();
        let error = StoreLock::acquire(&paths, None, &mut no_wait()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Disk, "{error}");
    }

    #[test]
    fn a_missing_store_is_empty() {
        let (_dir, paths) = store();
        let observed = observe(&paths, &[PathBuf::from("transformers/org/m")]).unwrap();
        assert_eq!(observed, Observed::default());
    }

    fn write(root: &Path, relative: &str, bytes: &[u8]) {
        let path = root.join(relative);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, bytes).unwrap();
    }

    fn keys(dir: &ObservedDir) -> Vec<&str> {
        dir.files.keys().map(String::as_str).collect()
    }

    #[test]
    fn observe_lists_regular_files_with_size_and_mtime() {
        let (dir, paths) = store();
        let root = paths.root();
        write(root, "llama-cpp/org/m/model.Q4.gguf", b"gguf bytes");
        write(root, "transformers/org/bert/config.json", b"{}");
        write(root, "transformers/org/bert/sub/deeper/vocab.txt", b"abc");
        write(root, "transformers/org/bert/.gitattributes", b"*");
        fs_err::create_dir_all(root.join("transformers/org/bert/empty")).unwrap();
        // Symlinks inside the store are neither listed nor followed.
        write(dir.path(), "outside/secret.bin", b"do not touch");
        write(dir.path(), "outside/folder/x.corrupt", b"");
        std::os::unix::fs::symlink(
            dir.path().join("outside/secret.bin"),
            root.join("transformers/org/bert/link.bin"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            dir.path().join("outside/folder"),
            root.join("transformers/org/bert/linked-folder"),
        )
        .unwrap();
        // A file where a folder should be, and a folder that does not exist.
        write(root, "transformers/plain", b"file, not folder");

        let dirs = [
            PathBuf::from("llama-cpp/org/m"),
            PathBuf::from("transformers/org/bert"),
            PathBuf::from("transformers/plain"),
            PathBuf::from("transformers/org/missing"),
        ];
        let observed = observe(&paths, &dirs).unwrap();
        assert_eq!(
            observed.dirs.keys().collect::<Vec<_>>(),
            [&dirs[0], &dirs[1]]
        );
        let gguf = &observed.dirs[&dirs[0]].files["model.Q4.gguf"];
        assert_eq!(gguf.size, 10);
        let expected_mtime = fs_err::metadata(root.join("llama-cpp/org/m/model.Q4.gguf"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(gguf.modified, Some(expected_mtime));
        assert_eq!(
            keys(&observed.dirs[&dirs[1]]),
            [".gitattributes", "config.json", "sub/deeper/vocab.txt"]
        );
        assert_eq!(
            observed.dirs[&dirs[1]].files["sub/deeper/vocab.txt"].size,
            3
        );
        assert!(observed.strays.is_empty(), "{:?}", observed.strays);
    }

    #[test]
    fn nested_model_folders_are_not_counted_twice() {
        let (_dir, paths) = store();
        let root = paths.root();
        write(root, "transformers/org/config.json", b"{}");
        write(root, "transformers/org/m/config.json", b"{}");
        write(root, "transformers/org/other/readme.md", b"#");
        let outer = PathBuf::from("transformers/org");
        let inner = PathBuf::from("transformers/org/m");
        let observed = observe(&paths, &[outer.clone(), inner.clone()]).unwrap();
        assert_eq!(
            keys(&observed.dirs[&outer]),
            ["config.json", "other/readme.md"]
        );
        assert_eq!(keys(&observed.dirs[&inner]), ["config.json"]);
        // Alone, the outer folder holds everything below it.
        let observed = observe(&paths, std::slice::from_ref(&outer)).unwrap();
        assert_eq!(
            keys(&observed.dirs[&outer]),
            ["config.json", "m/config.json", "other/readme.md"]
        );
    }

    #[test]
    fn strays_are_found_everywhere_but_in_kmm() {
        let (_dir, paths) = store();
        let root = paths.root();
        write(root, "llama-cpp/org/m/model.gguf.corrupt", b"x");
        write(root, "x.corrupt", b"x");
        write(root, "configs/m.json.corrupt", b"x");
        write(
            root,
            "transformers/org/b/.cache/huggingface/download/abc.def.incomplete",
            b"x",
        );
        write(root, "transformers/org/b/config.json", b"{}");
        write(
            root,
            "transformers/org/b/corrupt",
            b"not a stray: no extension",
        );
        write(root, "transformers/org/b/model.corrupted", b"not a stray");
        write(root, ".kmm/downloads/abc.incomplete", b"ours, resumable");
        write(root, ".kmm/staging/x.corrupt", b"ours");
        fs_err::create_dir_all(root.join("dir.corrupt")).unwrap();

        let observed = observe(&paths, &[]).unwrap();
        assert_eq!(
            observed.strays,
            [
                "configs/m.json.corrupt",
                "llama-cpp/org/m/model.gguf.corrupt",
                "transformers/org/b/.cache/huggingface/download/abc.def.incomplete",
                "x.corrupt",
            ]
            .map(PathBuf::from)
        );
        assert!(observed.dirs.is_empty());
    }

    #[test]
    fn loose_files_are_those_outside_every_scanned_folder() {
        let (_dir, paths) = store();
        let root = paths.root();
        write(root, "llama-cpp/flat.gguf", b"flat");
        write(root, "llama-cpp/org/m/model.gguf", b"scanned");
        write(root, "transformers/old/config.json", b"{}");
        write(root, "configs/m.json", b"{}");
        write(root, "model_registry.json", b"{}");
        write(root, "llm_registry.json", b"{}");
        write(root, ".model_registry.json.x.tmp", b"");
        write(root, ".kmm/downloads/abc", b"ours");
        write(root, "llama-cpp/org/m/x.gguf.corrupt", b"stray");
        let observed = observe(&paths, &[PathBuf::from("llama-cpp/org/m")]).unwrap();
        assert_eq!(
            observed.loose.keys().collect::<Vec<_>>(),
            [
                Path::new("llama-cpp/flat.gguf"),
                Path::new("transformers/old/config.json")
            ]
        );
        assert_eq!(observed.loose[Path::new("llama-cpp/flat.gguf")].size, 4);
        assert_eq!(
            observed.strays,
            [PathBuf::from("llama-cpp/org/m/x.gguf.corrupt")]
        );
    }

    #[test]
    fn hash_files_hashes_what_is_asked_and_skips_what_is_gone() {
        let (_dir, paths) = store();
        write(paths.root(), "a/config.json", b"{}");
        let mut observed = Observed::default();
        let requests = [
            (PathBuf::from("a/config.json"), HashKind::GitSha1),
            (PathBuf::from("a/config.json"), HashKind::Sha256),
            (PathBuf::from("a/gone.bin"), HashKind::Sha256),
        ];
        hash_files(&paths, &requests, &mut observed).unwrap();
        assert_eq!(observed.hashes.len(), 2);
        assert_eq!(
            observed.hashes[&(PathBuf::from("a/config.json"), HashKind::GitSha1)],
            FileHash::GitSha1(crate::upstream::git_sha1_hex(b"{}"))
        );
        assert_eq!(
            observed.hashes[&(PathBuf::from("a/config.json"), HashKind::Sha256)],
            FileHash::Sha256(crate::upstream::sha256_hex(b"{}"))
        );
    }

    #[test]
    fn observe_loads_the_registry_and_reports_its_errors() {
        let (_dir, paths) = store();
        write(paths.root(), "model_registry.json", br#"{"gpt2": {"model_id": "gpt2", "library": "transformers", "install_path": "/m/transformers/gpt2"}}"#);
        let observed = observe(&paths, &[]).unwrap();
        assert_eq!(
            observed.registry.models["gpt2"].install_path,
            "/m/transformers/gpt2"
        );

        write(paths.root(), "model_registry.json", b"{");
        let error = observe(&paths, &[]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Schema);
    }

    #[test]
    fn observe_refuses_folders_outside_the_store() {
        let (_dir, paths) = store();
        fs_err::create_dir_all(paths.root()).unwrap();
        for bad in ["../etc", "/etc", "", "a/../b", "./a"] {
            let error = observe(&paths, &[PathBuf::from(bad)]).unwrap_err();
            assert_eq!(error.code(), ErrorCode::Internal, "{bad}: {error}");
        }
    }

    #[test]
    fn a_models_dir_that_is_a_file_is_an_error() {
        let (_dir, paths) = store();
        fs_err::write(paths.root(), "x").unwrap();
        let error = observe(&paths, &[]).unwrap_err();
        assert_eq!(error.code(), ErrorCode::Disk);
        assert!(error.message().contains("is not a folder"), "{error}");
    }

    #[test]
    fn names_that_are_not_utf8_are_skipped() {
        let (_dir, paths) = store();
        let folder = paths.root().join("transformers/m");
        fs_err::create_dir_all(&folder).unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname.corrupt");
        fs_err::write(folder.join(name), "x").unwrap();
        write(paths.root(), "transformers/m/ok.txt", b"x");
        let dir = PathBuf::from("transformers/m");
        let observed = observe(&paths, std::slice::from_ref(&dir)).unwrap();
        assert_eq!(keys(&observed.dirs[&dir]), ["ok.txt"]);
        // Not a stray either: kmm could not name it in a plan.
        assert!(observed.strays.is_empty());
    }

    /// `cargo test --release --lib store::tests::observe_a_large_store -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement, not a check"]
    fn observe_a_large_store() {
        let (_dir, paths) = store();
        let models = 1000;
        let files_per_model = 100;
        let mut dirs = Vec::new();
        for model in 0..models {
            let dir = PathBuf::from(format!("transformers/org/model-{model}"));
            for file in 0..files_per_model {
                write(
                    paths.root(),
                    &format!("{}/sub/f{file}.bin", dir.display()),
                    b"x",
                );
            }
            dirs.push(dir);
        }
        let start = Instant::now();
        let observed = observe(&paths, &dirs).unwrap();
        let elapsed = start.elapsed();
        let files: usize = observed.dirs.values().map(|dir| dir.files.len()).sum();
        assert_eq!(files, models * files_per_model);
        println!("observe: {models} models, {files} files in {elapsed:?}");
    }
}
