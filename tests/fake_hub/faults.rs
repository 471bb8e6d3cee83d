//! Fault injection: which faults are armed, which request uses one up, and the body stream that
//! carries out the ones that act on file bytes (drop, corruption, bandwidth cap).
//!
//! `Status` and `Latency` apply to any matching request on either server. `DropAfter` and
//! `WrongBytes` are only used up by responses that carry file content (a resolve GET of a regular
//! file, a CDN GET), so a fault on `model.safetensors` survives the 302 and hits the CDN download.
//! `BandwidthCap` throttles every file body until cleared; it is applied per response, which for
//! HTTP/1.1 (one response at a time per connection) is a per-connection cap. `LinkCap` is one
//! rate shared by all file bodies at once: a slow link or a busy machine, where more
//! connections cannot help. `Trickle` is a hub that keeps a body alive with one byte every
//! `every_millis`: never silent long enough for a read timeout, far below any useful rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;

/// A fault armed with `FakeHub::add_fault`. See the module doc for which requests each one hits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection after `bytes` body bytes of a file response.
    DropAfter {
        path_contains: String,
        bytes: u64,
        times: u32,
    },
    /// Answer with `status` instead (429 gets `Retry-After` when given, plus `RateLimit` headers).
    Status {
        path_contains: String,
        status: u16,
        retry_after: Option<u32>,
        times: u32,
    },
    /// Serve content of the right length with every byte flipped.
    WrongBytes { path_contains: String, times: u32 },
    /// Wait `millis` before answering.
    Latency {
        path_contains: String,
        millis: u64,
        times: u32,
    },
    /// Send a matching file body one byte every `every_millis`, for `times` responses.
    Trickle {
        path_contains: String,
        every_millis: u64,
        times: u32,
    },
    /// A rate-limit storm on every request of both servers until the faults are cleared: each
    /// `every_429`th request is a 429 (with `Retry-After` when given), each `every_503`th of the
    /// others a 503, counted from when the storm was armed.
    Storm {
        every_429: u64,
        every_503: u64,
        retry_after: Option<u32>,
    },
    /// Answer 429 (without `Retry-After`) to a file request (a resolve or CDN GET) that arrives
    /// while `max_bodies` file bodies are being sent, until the faults are cleared: a hub that
    /// limits each client's concurrent downloads.
    Crowded { max_bodies: usize },
    /// Throttle every file body to `bytes_per_sec` until the faults are cleared.
    BandwidthCap { bytes_per_sec: u64 },
    /// Throttle all file bodies together to `bytes_per_sec` until the faults are cleared.
    LinkCap { bytes_per_sec: u64 },
    /// Answer a matching request (either server) with exactly this status, these headers and
    /// this body: crafted tree listings, malformed or gigantic JSON, hostile redirects. A
    /// `Location` value may contain `{api}` or `{cdn}`, replaced by the origins' URLs.
    Raw {
        path_contains: String,
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        times: u32,
    },
}

/// A crafted answer taken from a [`Fault::Raw`].
#[derive(Clone, Debug)]
pub(crate) struct RawAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What a file response must do to its body, decided once when the response starts.
#[derive(Clone, Debug, Default)]
pub(crate) struct BodyFaults {
    pub drop_after: Option<u64>,
    pub wrong_bytes: bool,
    pub bytes_per_sec: Option<u64>,
    /// `Trickle`: the pause before each byte.
    pub trickle: Option<Duration>,
    /// `LinkCap`: the shared rate and the link.
    pub link: Option<(u64, Arc<SharedLink>)>,
}

/// A link every capped file body shares: when it is next free.
#[derive(Debug)]
pub(crate) struct SharedLink {
    next_free: std::sync::Mutex<Instant>,
}

impl SharedLink {
    /// Books `bytes` at `rate` after whatever was booked before; returns how long to wait
    /// until they have gone through.
    fn book(&self, bytes: usize, rate: u64) -> Duration {
        let now = Instant::now();
        let mut next_free = self.next_free.lock().unwrap();
        let start = (*next_free).max(now);
        *next_free = start + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        *next_free - now
    }
}

/// File bodies being sent right now, and how many were being sent (counting itself) when each
/// one started: what a test reads to see how many connections a client kept busy.
#[derive(Debug, Default)]
pub(crate) struct Concurrency {
    now: std::sync::atomic::AtomicUsize,
    pub at_start: std::sync::Mutex<Vec<usize>>,
}

/// Counts one body as in flight until dropped.
struct InFlight(Arc<Concurrency>);

impl InFlight {
    fn start(concurrency: Arc<Concurrency>) -> InFlight {
        let now = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
        concurrency.at_start.lock().unwrap().push(now);
        InFlight(concurrency)
    }
}

impl Concurrency {
    /// File bodies being sent right now.
    pub fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The armed faults, each with its remaining uses.
#[derive(Debug)]
pub(crate) struct FaultSet {
    armed: Vec<Fault>,
    link: Arc<SharedLink>,
    /// Requests seen since a `Storm` was armed.
    storm_requests: u64,
}

impl Default for FaultSet {
    fn default() -> Self {
        FaultSet {
            armed: Vec::new(),
            link: Arc::new(SharedLink {
                next_free: std::sync::Mutex::new(Instant::now()),
            }),
            storm_requests: 0,
        }
    }
}

impl FaultSet {
    pub fn add(&mut self, fault: Fault) {
        if matches!(fault, Fault::Storm { .. }) {
            self.storm_requests = 0;
        }
        self.armed.push(fault);
    }

    pub fn clear(&mut self) {
        self.armed.clear();
    }

    /// Uses up the first matching `Latency`.
    pub fn take_latency(&mut self, path: &str) -> Option<u64> {
        self.take(path, |fault| match fault {
            Fault::Latency { millis, .. } => Some(*millis),
            _ => None,
        })
    }

    /// Uses up the first matching `Raw`.
    pub fn take_raw(&mut self, path: &str) -> Option<RawAnswer> {
        self.take(path, |fault| match fault {
            Fault::Raw {
                status,
                headers,
                body,
                ..
            } => Some(RawAnswer {
                status: *status,
                headers: headers.clone(),
                body: body.clone(),
            }),
            _ => None,
        })
    }

    /// The armed `Crowded` limit, if any.
    pub fn crowded_limit(&self) -> Option<usize> {
        self.armed.iter().find_map(|fault| match fault {
            Fault::Crowded { max_bodies } => Some(*max_bodies),
            _ => None,
        })
    }

    /// Uses up the first matching `Status`: `(status, retry_after)`.
    pub fn take_status(&mut self, path: &str) -> Option<(u16, Option<u32>)> {
        let storm = self.armed.iter().find_map(|fault| match fault {
            Fault::Storm {
                every_429,
                every_503,
                retry_after,
            } => Some((*every_429, *every_503, *retry_after)),
            _ => None,
        });
        if let Some((every_429, every_503, retry_after)) = storm {
            self.storm_requests += 1;
            let n = self.storm_requests;
            if n.is_multiple_of(every_429.max(1)) {
                return Some((429, retry_after));
            }
            if n.is_multiple_of(every_503.max(1)) {
                return Some((503, None));
            }
        }
        self.take(path, |fault| match fault {
            Fault::Status {
                status,
                retry_after,
                ..
            } => Some((*status, *retry_after)),
            _ => None,
        })
    }

    /// Uses up the faults that act on a file body about to be sent.
    pub fn take_body_faults(&mut self, path: &str) -> BodyFaults {
        let drop_after = self.take(path, |fault| match fault {
            Fault::DropAfter { bytes, .. } => Some(*bytes),
            _ => None,
        });
        let wrong_bytes = self
            .take(path, |fault| {
                matches!(fault, Fault::WrongBytes { .. }).then_some(())
            })
            .is_some();
        let trickle = self.take(path, |fault| match fault {
            Fault::Trickle { every_millis, .. } => Some(Duration::from_millis(*every_millis)),
            _ => None,
        });
        let bytes_per_sec = self.armed.iter().find_map(|fault| match fault {
            Fault::BandwidthCap { bytes_per_sec } => Some(*bytes_per_sec),
            _ => None,
        });
        let link = self.armed.iter().find_map(|fault| match fault {
            Fault::LinkCap { bytes_per_sec } => Some((*bytes_per_sec, self.link.clone())),
            _ => None,
        });
        BodyFaults {
            drop_after,
            wrong_bytes,
            bytes_per_sec,
            trickle,
            link,
        }
    }

    /// Finds the first fault that matches `path` and that `pick` accepts, decrements its count and
    /// removes it when used up.
    fn take<T>(&mut self, path: &str, pick: impl Fn(&Fault) -> Option<T>) -> Option<T> {
        let position = self.armed.iter().position(|fault| {
            let matches = match fault {
                Fault::DropAfter {
                    path_contains,
                    times,
                    ..
                }
                | Fault::Status {
                    path_contains,
                    times,
                    ..
                }
                | Fault::WrongBytes {
                    path_contains,
                    times,
                }
                | Fault::Latency {
                    path_contains,
                    times,
                    ..
                }
                | Fault::Trickle {
                    path_contains,
                    times,
                    ..
                }
                | Fault::Raw {
                    path_contains,
                    times,
                    ..
                } => *times > 0 && path.contains(path_contains.as_str()),
                Fault::BandwidthCap { .. }
                | Fault::LinkCap { .. }
                | Fault::Storm { .. }
                | Fault::Crowded { .. } => false,
            };
            matches && pick(fault).is_some()
        })?;
        let picked = pick(&self.armed[position]);
        let exhausted = match &mut self.armed[position] {
            Fault::DropAfter { times, .. }
            | Fault::Status { times, .. }
            | Fault::WrongBytes { times, .. }
            | Fault::Latency { times, .. }
            | Fault::Trickle { times, .. }
            | Fault::Raw { times, .. } => {
                *times -= 1;
                *times == 0
            }
            Fault::BandwidthCap { .. }
            | Fault::LinkCap { .. }
            | Fault::Storm { .. }
            | Fault::Crowded { .. } => false,
        };
        if exhausted {
            self.armed.remove(position);
        }
        picked
    }
}

/// Streams `data` in chunks, applying `faults`, counting sent bytes into both `served`
/// counters (the hub's total and the request's own).
pub(crate) fn file_body(
    data: Bytes,
    faults: BodyFaults,
    served: [Arc<AtomicU64>; 2],
    concurrency: Arc<Concurrency>,
) -> Body {
    let data = if faults.wrong_bytes {
        Bytes::from(data.iter().map(|b| b ^ 0xFF).collect::<Vec<u8>>())
    } else {
        data
    };
    let capped = match (faults.bytes_per_sec, &faults.link) {
        (Some(rate), Some((link, _))) => Some(rate.min(*link)),
        (rate, link) => rate.or(link.as_ref().map(|(rate, _)| *rate)),
    };
    let chunk_size = match capped {
        _ if faults.trickle.is_some() => 1,
        // Ten chunks a second keeps the cap smooth without a syscall per byte.
        Some(rate) => (rate / 10).clamp(1, 64 * 1024) as usize,
        // Unthrottled: 1 MiB slices of the shared buffer (no copy) keep the server fast
        // enough to measure clients against.
        None => 1024 * 1024,
    };
    let limit = faults.drop_after.map(|n| n.min(data.len() as u64) as usize);
    let state = StreamState {
        data,
        sent: 0,
        limit,
        chunk_size,
        rate: faults.bytes_per_sec,
        trickle: faults.trickle,
        link: faults.link,
        started: Instant::now(),
        served,
        done: false,
        _in_flight: InFlight::start(concurrency),
    };
    Body::from_stream(futures_util::stream::unfold(state, next_chunk))
}

struct StreamState {
    data: Bytes,
    sent: usize,
    limit: Option<usize>,
    chunk_size: usize,
    rate: Option<u64>,
    trickle: Option<Duration>,
    link: Option<(u64, Arc<SharedLink>)>,
    started: Instant,
    served: [Arc<AtomicU64>; 2],
    done: bool,
    _in_flight: InFlight,
}

async fn next_chunk(
    mut state: StreamState,
) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if state.done {
        return None;
    }
    let end_of_body = state.limit.unwrap_or(state.data.len());
    if state.sent >= end_of_body {
        if state.limit.is_some() {
            // Let the bytes already handed to hyper reach the socket before the connection is
            // aborted; otherwise the client may see fewer bytes than the fault promised.
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.done = true;
            return Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "fake hub: injected drop",
                )),
                state,
            ));
        }
        return None;
    }
    if let Some(rate) = state.rate {
        let due = Duration::from_secs_f64(state.sent as f64 / rate.max(1) as f64);
        let elapsed = state.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
    if let Some(every) = state.trickle {
        tokio::time::sleep(every).await;
    }
    let end = (state.sent + state.chunk_size).min(end_of_body);
    if let Some((rate, link)) = &state.link {
        tokio::time::sleep(link.book(end - state.sent, *rate)).await;
    }
    let chunk = state.data.slice(state.sent..end);
    state.sent = end;
    for counter in &state.served {
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    Some((Ok(chunk), state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_used_up_after_their_count() {
        let mut set = FaultSet::default();
        set.add(Fault::Status {
            path_contains: "config".into(),
            status: 503,
            retry_after: None,
            times: 2,
        });
        assert_eq!(set.take_status("/o/r/resolve/main/model.bin"), None);
        assert_eq!(
            set.take_status("/o/r/resolve/main/config.json"),
            Some((503, None))
        );
        assert_eq!(
            set.take_status("/o/r/resolve/main/config.json"),
            Some((503, None))
        );
        assert_eq!(set.take_status("/o/r/resolve/main/config.json"), None);
    }

    #[test]
    fn body_faults_do_not_consume_other_kinds() {
        let mut set = FaultSet::default();
        set.add(Fault::Latency {
            path_contains: "x".into(),
            millis: 5,
            times: 1,
        });
        set.add(Fault::DropAfter {
            path_contains: "x".into(),
            bytes: 3,
            times: 1,
        });
        set.add(Fault::BandwidthCap {
            bytes_per_sec: 1000,
        });
        let body = set.take_body_faults("/x");
        assert_eq!(body.drop_after, Some(3));
        assert!(!body.wrong_bytes);
        assert_eq!(body.bytes_per_sec, Some(1000));
        assert_eq!(set.take_body_faults("/x").drop_after, None);
        assert_eq!(set.take_latency("/x"), Some(5));
    }

    #[test]
    fn a_trickle_is_used_up_per_body() {
        let mut set = FaultSet::default();
        set.add(Fault::Trickle {
            path_contains: "w.bin".into(),
            every_millis: 200,
            times: 1,
        });
        assert_eq!(set.take_body_faults("/c.json").trickle, None);
        assert_eq!(
            set.take_body_faults("/w.bin").trickle,
            Some(Duration::from_millis(200))
        );
        assert_eq!(set.take_body_faults("/w.bin").trickle, None);
    }
}
