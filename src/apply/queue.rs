//! Runs a dependency graph of jobs with bounded concurrency, in the spirit of cargo's
//! `DependencyQueue`: a job becomes ready when every job it depends on has succeeded; among the
//! ready jobs the one with the lowest `(priority, index)` starts first (the plan lists actions in
//! a deterministic topological order, so start order is deterministic too); at most `limit` run
//! at once. `apply` gives local steps priority over downloads so that each model lands as soon
//! as its files are there, instead of after every download has started. On the first failure nothing new starts, the running jobs finish, and that first
//! error is returned.
//!
//! Jobs are futures polled together on the caller's task (`FuturesUnordered`), so they may
//! borrow from the caller; blocking file-system work inside a job belongs in `spawn_blocking`.
//!
//! Edges: knows nothing about actions; `apply` supplies the graph and the job body.

use std::collections::BTreeSet;
use std::future::Future;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use crate::error::{Error, Result};

/// Runs jobs `0..deps.len()`; `deps[i]` lists the jobs that must succeed before job `i` starts;
/// `priority[i]` orders ready jobs (lower first, then by index). `start(i)` makes job `i`'s
/// future. `limit` is clamped to at least 1.
pub(crate) async fn run<F, Fut>(
    deps: &[Vec<usize>],
    priority: &[u8],
    limit: usize,
    mut start: F,
) -> Result<()>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let limit = limit.max(1);
    let count = deps.len();
    if priority.len() != count {
        return Err(Error::internal("one priority per job is needed"));
    }
    let mut waiting_on: Vec<usize> = Vec::with_capacity(count);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); count];
    for (job, job_deps) in deps.iter().enumerate() {
        let unique: BTreeSet<usize> = job_deps.iter().copied().collect();
        for &dep in &unique {
            if dep >= count || dep == job {
                return Err(Error::internal(format!(
                    "job {job} depends on unknown job {dep}"
                )));
            }
            dependents[dep].push(job);
        }
        waiting_on.push(unique.len());
    }
    let mut ready: BTreeSet<(u8, usize)> = (0..count)
        .filter(|&j| waiting_on[j] == 0)
        .map(|j| (priority[j], j))
        .collect();
    let mut running = FuturesUnordered::new();
    let mut first_error: Option<Error> = None;
    let mut succeeded = 0;
    loop {
        while first_error.is_none() && running.len() < limit {
            let Some((_, job)) = ready.pop_first() else {
                break;
            };
            let future = start(job);
            running.push(async move { (job, future.await) });
        }
        let Some((job, outcome)) = running.next().await else {
            break;
        };
        match outcome {
            Ok(()) => {
                succeeded += 1;
                for &next in &dependents[job] {
                    waiting_on[next] -= 1;
                    if waiting_on[next] == 0 {
                        ready.insert((priority[next], next));
                    }
                }
            }
            Err(error) => {
                if first_error.is_none() {
                    first_error = Some(error);
                } else {
                    tracing::warn!(%error, "another action failed while stopping");
                }
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None if succeeded < count => Err(Error::internal(
            "the action graph has a cycle; some actions never became ready",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    /// Records `start:i` / `end:i` events; each job yields once so others can interleave.
    struct Log(RefCell<Vec<String>>);

    impl Log {
        fn push(&self, event: String) {
            self.0.borrow_mut().push(event);
        }
        fn events(&self) -> Vec<String> {
            self.0.borrow().clone()
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn dependencies_finish_before_dependents_start() {
        // 0 -> 2, 1 -> 2, 2 -> 3
        let deps = vec![vec![], vec![], vec![0, 1], vec![2]];
        let log = Log(RefCell::new(Vec::new()));
        block_on(run(&deps, &[0; 4], 4, |job| {
            let log = &log;
            async move {
                log.push(format!("start:{job}"));
                tokio::task::yield_now().await;
                log.push(format!("end:{job}"));
                Ok(())
            }
        }))
        .unwrap();
        let events = log.events();
        let at = |e: &str| events.iter().position(|x| x == e).unwrap();
        assert!(at("end:0") < at("start:2"));
        assert!(at("end:1") < at("start:2"));
        assert!(at("end:2") < at("start:3"));
        assert_eq!(events.len(), 8);
    }

    #[test]
    fn ready_jobs_start_in_index_order_and_never_exceed_the_limit() {
        let deps = vec![vec![]; 7];
        let log = Log(RefCell::new(Vec::new()));
        let running = RefCell::new(0usize);
        let peak = RefCell::new(0usize);
        block_on(run(&deps, &[0; 7], 3, |job| {
            let (log, running, peak) = (&log, &running, &peak);
            // Logged when the queue starts the job, not when it is first polled.
            log.push(format!("start:{job}"));
            async move {
                *running.borrow_mut() += 1;
                let now = *running.borrow();
                let highest = (*peak.borrow()).max(now);
                *peak.borrow_mut() = highest;
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                *running.borrow_mut() -= 1;
                Ok(())
            }
        }))
        .unwrap();
        assert_eq!(*peak.borrow(), 3, "the limit is reached and never passed");
        let starts: Vec<String> = log.events();
        let expected: Vec<String> = (0..7).map(|j| format!("start:{j}")).collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn lower_priority_values_start_first_among_ready_jobs() {
        // Jobs 0-2 are "downloads" (priority 1); job 3 depends on job 0 and is a local step
        // (priority 0): with one worker it runs right after job 0, before jobs 1 and 2.
        let deps = vec![vec![], vec![], vec![], vec![0]];
        let log = Log(RefCell::new(Vec::new()));
        block_on(run(&deps, &[1, 1, 1, 0], 1, |job| {
            log.push(format!("start:{job}"));
            async { Ok(()) }
        }))
        .unwrap();
        assert_eq!(log.events(), ["start:0", "start:3", "start:1", "start:2"]);
    }

    #[test]
    fn the_first_failure_stops_new_starts_but_lets_running_jobs_finish() {
        // Job 0 fails while job 1 is still running (it waits for a signal job 0 sends when
        // failing); jobs 2.. are ready but must not start; job 3 depends on 1.
        let deps = vec![vec![], vec![], vec![], vec![1]];
        let log = Log(RefCell::new(Vec::new()));
        let failed = Arc::new(Notify::new());
        let result = block_on(run(&deps, &[0; 4], 2, |job| {
            let log = &log;
            let failed = failed.clone();
            async move {
                log.push(format!("start:{job}"));
                match job {
                    0 => {
                        failed.notify_one();
                        Err(Error::verify("job 0 broke"))
                    }
                    1 => {
                        failed.notified().await;
                        log.push("end:1".to_string());
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
        }));
        let error = result.unwrap_err();
        assert_eq!(error.message(), "job 0 broke");
        let mut events = log.events();
        assert_eq!(
            events.pop().as_deref(),
            Some("end:1"),
            "job 1 ran to its end"
        );
        events.sort();
        assert_eq!(
            events,
            ["start:0", "start:1"],
            "no job started after the failure"
        );
    }

    #[test]
    fn a_cycle_or_a_bad_index_is_an_internal_error() {
        let cycle = vec![vec![1], vec![0]];
        let error = block_on(run(&cycle, &[0; 2], 2, |_| async { Ok(()) })).unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Internal);
        let unknown = vec![vec![5]];
        assert!(block_on(run(&unknown, &[0], 2, |_| async { Ok(()) })).is_err());
    }

    #[test]
    fn an_empty_graph_succeeds() {
        block_on(run(&[], &[], 4, |_| async { Ok(()) })).unwrap();
    }
}
