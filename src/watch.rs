//! `kmm watch`: run a reconcile at start, whenever the watched files (manifest, lock) change,
//! and every interval; retry failures with exponential backoff; stop on a shutdown signal.
//!
//! Level-triggered: every reconcile computes the plan from scratch, so the interval repairs any
//! drift (a deleted file, a model folder someone edited), and a missed event only delays a
//! change until the next tick.
//!
//! - Changes: `notify` watches the files' folders (editors often save by writing a temp file
//!   and renaming it over the old one, which a watch on the file itself would lose). Events
//!   are debounced (a watched file that is a link is watched at its target too): after the first, the loop waits until the files have been quiet for
//!   `debounce`, so an editor's burst of writes is one reconcile. A change that leaves the
//!   files' bytes as they were at the last reconcile (a touch; the lock that the reconcile
//!   itself wrote) triggers nothing.
//! - Failures: [`Verdict::Failed`] is retried after `retry_delay`, doubling each time up to
//!   the interval. [`Verdict::Invalid`] (the manifest cannot be read as it is) waits for the
//!   files to change: retrying an unchanged invalid file cannot succeed.
//! - Shutdown: when `shutdown` completes, a running reconcile is dropped at its next await
//!   point, so no new action starts; work already handed to blocking threads (a folder swap, a
//!   registry write, both atomic) finishes before the process exits, a download in progress
//!   stays a `.part` file that the next apply replaces, and the store lock is released with
//!   the reconcile's future.
//!
//! Edges: owns no apply logic: the caller's `reconcile` closure is the same reconcile as
//! `kmm apply`, and reports its own outcome. Reads the watched files only to fingerprint them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher as _;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Why a reconcile runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first one.
    Start,
    /// A watched file changed.
    Change,
    /// The interval elapsed.
    Interval,
    /// A retry after a failure.
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Change => "change",
            Trigger::Interval => "interval",
            Trigger::Retry => "retry",
        }
    }
}

/// How a reconcile ended, as far as the loop cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Converged,
    /// Worth retrying (network, disk, lock busy...).
    Failed,
    /// The input is invalid: wait until the files change.
    Invalid,
}

/// The loop's timings and the files it watches.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Files whose changes trigger a reconcile (they need not exist yet).
    pub files: Vec<PathBuf>,
    pub interval: Duration,
    pub debounce: Duration,
    pub retry_delay: Duration,
}

/// The delay before retry number `failures` (1-based): `retry_delay * 2^(failures-1)`, at most
/// `max`.
pub fn backoff(retry_delay: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    retry_delay.saturating_mul(factor).min(max)
}

/// The watched files' bytes (blake3 per file, `None` if missing), to tell a real change.
fn fingerprint(files: &[PathBuf]) -> Vec<Option<blake3::Hash>> {
    files
        .iter()
        .map(|path| fs_err::read(path).ok().map(|bytes| blake3::hash(&bytes)))
        .collect()
}

/// Runs the loop until `shutdown` completes; then returns `Ok(())`. Errors only when the file
/// watcher cannot be set up.
pub async fn run<F, Fut>(
    config: WatchConfig,
    mut reconcile: F,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    F: FnMut(Trigger) -> Fut,
    Fut: Future<Output = Verdict>,
{
    tokio::pin!(shutdown);
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
    // A watched file that is a link (a manifest in a dotfiles checkout) changes where its
    // target is: watch the target's folder and name too.
    let watched: Vec<PathBuf> = config
        .files
        .iter()
        .flat_map(|path| {
            let target = crate::atomic_file::link_target(path).unwrap_or_else(|_| path.clone());
            [path.clone(), target]
        })
        .collect();
    let names: BTreeSet<OsString> = watched
        .iter()
        .filter_map(|path| path.file_name().map(|name| name.to_os_string()))
        .collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => event
                .paths
                .iter()
                .any(|path| path.file_name().is_some_and(|name| names.contains(name))),
            // An overflowed queue may have lost a relevant event: look at the files again.
            Err(_) => true,
        };
        if relevant {
            let _ = sender.send(());
        }
    })
    .map_err(|error| Error::internal(format!("starting the file watcher: {error}")))?;
    let folders: BTreeSet<PathBuf> = watched
        .iter()
        .map(|path| match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    for folder in &folders {
        watcher
            .watch(folder, notify::RecursiveMode::NonRecursive)
            .map_err(|error| {
                Error::io(
                    format!("watching `{}`", folder.display()),
                    &std::io::Error::other(error.to_string()),
                )
            })?;
    }

    let mut trigger = Trigger::Start;
    let mut failures: u32 = 0;
    loop {
        // What this reconcile sees of the manifest; the lock is taken after it, as the
        // reconcile may write it itself.
        let before = fingerprint(&config.files);
        let verdict = tokio::select! {
            verdict = reconcile(trigger) => verdict,
            () = &mut shutdown => return Ok(()),
        };
        let mut seen = fingerprint(&config.files);
        if let (Some(first), Some(first_before)) = (seen.first_mut(), before.first()) {
            *first = *first_before;
        }
        let next_run = match verdict {
            Verdict::Converged => {
                failures = 0;
                Some(Instant::now() + config.interval)
            }
            Verdict::Failed => {
                failures += 1;
                Some(Instant::now() + backoff(config.retry_delay, failures, config.interval))
            }
            Verdict::Invalid => {
                failures = 0;
                None
            }
        };
        trigger = loop {
            let timer = async {
                match next_run {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = timer => break if failures > 0 { Trigger::Retry } else { Trigger::Interval },
                Some(()) = events.recv() => {
                    // Debounce: wait for `debounce` of quiet.
                    loop {
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(config.debounce) => break,
                            Some(()) = events.recv() => continue,
                        }
                    }
                    if fingerprint(&config.files) != seen {
                        break Trigger::Change;
                    }
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let second = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=6).map(|n| backoff(second, n, max).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(second, 200, Duration::MAX), second * 65_536);
    }

    /// A manifest that is a link to a dotfiles checkout: an edit of the target (the link's
    /// folder sees no event) is a change. The interval is an hour, so only the event can
    /// trigger the second reconcile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_edit_at_a_linked_manifests_target_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let dotfiles = dir.path().join("dotfiles");
        let checkout = dir.path().join("checkout");
        fs_err::create_dir_all(&dotfiles).unwrap();
        fs_err::create_dir_all(&checkout).unwrap();
        let target = dotfiles.join("models.toml");
        fs_err::write(&target, "v0").unwrap();
        let manifest = checkout.join("kari-models.toml");
        std::os::unix::fs::symlink(&target, &manifest).unwrap();
        let config = WatchConfig {
            files: vec![manifest.clone(), checkout.join("kari-models.lock")],
            interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(100),
            retry_delay: Duration::from_millis(50),
        };
        let log: Arc<Mutex<Vec<(Trigger, String)>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let loop_log = log.clone();
        let task = tokio::spawn(run(
            config,
            move |trigger| {
                let content = fs_err::read_to_string(&manifest).unwrap_or_default();
                loop_log.lock().unwrap().push((trigger, content));
                async { Verdict::Converged }
            },
            async {
                let _ = stopped.await;
            },
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        while log.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // An editor's save: a new file renamed over the target.
        fs_err::write(dotfiles.join(".models.toml.swp"), "v1").unwrap();
        fs_err::rename(dotfiles.join(".models.toml.swp"), &target).unwrap();
        while log.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(log.lock().unwrap()[1], (Trigger::Change, "v1".to_string()));
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Real files, real notify events: a burst of writes is one reconcile, an unchanged
    /// rewrite is none, failures are retried, invalid input waits for a change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reacts_to_changes_debounces_retries_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("kari-models.toml");
        fs_err::write(&manifest, "v0").unwrap();
        let config = WatchConfig {
            files: vec![manifest.clone(), dir.path().join("kari-models.lock")],
            interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(200),
            retry_delay: Duration::from_millis(50),
        };
        let log: Arc<Mutex<Vec<(Trigger, String)>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let loop_log = log.clone();
        let loop_manifest = manifest.clone();
        let task = tokio::spawn(run(
            config,
            move |trigger| {
                let content = fs_err::read_to_string(&loop_manifest).unwrap_or_default();
                loop_log.lock().unwrap().push((trigger, content.clone()));
                let fails_so_far = loop_log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, c)| c == "flaky")
                    .count();
                async move {
                    match content.as_str() {
                        "invalid" => Verdict::Invalid,
                        "flaky" if fails_so_far <= 3 => Verdict::Failed,
                        _ => Verdict::Converged,
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
        ));
        let wait_for = |count: usize| {
            let log = log.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(20);
                while log.lock().unwrap().len() < count {
                    assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for(1).await;
        // Give the watcher a moment to be registered after the first reconcile started.
        tokio::time::sleep(Duration::from_millis(100)).await;

        // A burst: five writes in quick succession, one reconcile with the last content.
        for n in 1..=5 {
            fs_err::write(&manifest, format!("v{n}")).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_for(2).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(log.lock().unwrap().len(), 2, "{:?}", log.lock().unwrap());
        assert_eq!(log.lock().unwrap()[1], (Trigger::Change, "v5".to_string()));

        // Same bytes again: nothing to do.
        fs_err::write(&manifest, "v5").unwrap();
        // Invalid: reported once, no retries until the next change.
        fs_err::write(&manifest, "invalid").unwrap();
        wait_for(3).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(log.lock().unwrap().len(), 3, "{:?}", log.lock().unwrap());

        // Failing: retried with backoff until it converges (3 failures, then success).
        fs_err::write(&manifest, "flaky").unwrap();
        wait_for(7).await;
        let triggers: Vec<Trigger> = log.lock().unwrap()[3..].iter().map(|(t, _)| *t).collect();
        assert_eq!(
            triggers,
            [
                Trigger::Change,
                Trigger::Retry,
                Trigger::Retry,
                Trigger::Retry
            ]
        );

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
