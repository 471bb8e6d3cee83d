//! How many connections to one host carry file bodies at once, adapted to what the host
//! tolerates: halved when a transfer gets a 429, grown back by one after a limit's worth of
//! bodies came through, as TCP's congestion window does. Only a 429 to a transfer that started
//! under the current limit halves it, so one burst of 429s counts once. A rate-limited hub sees
//! a fleet of hosts back off instead of each retrying at full width.
//!
//! Every body transfer (a chunk of a large file, a whole small file) holds a [`Permit`] of its
//! host while it runs; API requests are small and take none.
//!
//! Edges: state shared by clones of one [`super::HubClient`]; no I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Bodies in flight per host before any 429 (more than the chunk engine ever opens).
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// Per-host connection limits of one client.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLimits {
    hosts: Mutex<BTreeMap<String, HostLimit>>,
    freed: Notify,
}

#[derive(Debug)]
struct HostLimit {
    limit: usize,
    in_flight: usize,
    /// Bodies completed since the last change of `limit`.
    completed: usize,
    /// Counts decreases: a 429 to a transfer started before the last one is old news.
    generation: u64,
}

impl Default for HostLimit {
    fn default() -> Self {
        HostLimit {
            limit: MAX_CONNECTIONS,
            in_flight: 0,
            completed: 0,
            generation: 0,
        }
    }
}

/// One body transfer to `host`; frees its slot when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    host: String,
    generation: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(host) = self
            .limits
            .hosts
            .lock()
            .expect("limits lock")
            .get_mut(&self.host)
        {
            host.in_flight = host.in_flight.saturating_sub(1);
        }
        self.limits.freed.notify_waiters();
    }
}

impl ConnectionLimits {
    /// Waits for a slot of `host`.
    pub(crate) async fn acquire(self: &Arc<Self>, host: &str) -> Permit {
        loop {
            let freed = self.freed.notified();
            {
                let mut hosts = self.hosts.lock().expect("limits lock");
                let entry = hosts.entry(host.to_string()).or_default();
                if entry.in_flight < entry.limit {
                    entry.in_flight += 1;
                    return Permit {
                        limits: self.clone(),
                        host: host.to_string(),
                        generation: entry.generation,
                    };
                }
            }
            freed.await;
        }
    }

    /// The transfer holding `permit` got a 429: halve what its host gets (from what it had in
    /// flight, when that is less than the limit), unless the limit changed since the transfer
    /// started.
    pub(crate) fn overloaded(&self, permit: &Permit) {
        let mut hosts = self.hosts.lock().expect("limits lock");
        let Some(entry) = hosts.get_mut(&permit.host) else {
            return;
        };
        if entry.generation != permit.generation {
            return;
        }
        let before = entry.limit;
        entry.limit = (entry.limit.min(entry.in_flight.max(1)) / 2).max(1);
        entry.completed = 0;
        entry.generation += 1;
        tracing::debug!(host = %permit.host, before, after = entry.limit, "rate-limited: fewer connections");
    }

    /// A body to `host` came through: after a limit's worth of them, one more connection.
    pub(crate) fn completed(&self, host: &str) {
        let mut hosts = self.hosts.lock().expect("limits lock");
        let Some(entry) = hosts.get_mut(host) else {
            return;
        };
        if entry.limit >= MAX_CONNECTIONS {
            return;
        }
        entry.completed += 1;
        if entry.completed >= entry.limit {
            entry.limit += 1;
            entry.completed = 0;
            drop(hosts);
            self.freed.notify_waiters();
        }
    }

    /// The current limit of `host` (for tests and logs).
    #[cfg(test)]
    pub(crate) fn limit(&self, host: &str) -> usize {
        self.hosts
            .lock()
            .expect("limits lock")
            .get(host)
            .map_or(MAX_CONNECTIONS, |entry| entry.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_halves_what_was_in_flight_and_successes_grow_it_back_one_at_a_time() {
        let limits = Arc::new(ConnectionLimits::default());
        let host = "https://cdn.example";
        let permits: Vec<Permit> =
            futures_util::future::join_all((0..8).map(|_| limits.acquire(host))).await;
        limits.overloaded(&permits[0]);
        assert_eq!(limits.limit(host), 4);
        // A second 429 of the same burst (a transfer started before the decrease) does not
        // halve again.
        limits.overloaded(&permits[1]);
        assert_eq!(limits.limit(host), 4);
        drop(permits);
        for _ in 0..4 {
            limits.completed(host);
        }
        assert_eq!(limits.limit(host), 5);
        for _ in 0..4 {
            limits.completed(host);
        }
        assert_eq!(
            limits.limit(host),
            5,
            "growth is one per limit's worth of bodies"
        );
        limits.completed(host);
        assert_eq!(limits.limit(host), 6);
    }

    #[tokio::test]
    async fn at_the_limit_a_transfer_waits_for_a_slot() {
        let limits = Arc::new(ConnectionLimits::default());
        let host = "https://hub.example";
        let first = limits.acquire(host).await;
        let second = limits.acquire(host).await;
        limits.overloaded(&second);
        assert_eq!(limits.limit(host), 1);
        drop(second);
        let waiting = tokio::spawn({
            let limits = limits.clone();
            async move { limits.acquire(host).await }
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "a second transfer got past a limit of one"
        );
        drop(first);
        let _third = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the freed slot was given")
            .unwrap();
        // Another host is not held back.
        let _other = limits.acquire("https://other.example").await;
    }
}
