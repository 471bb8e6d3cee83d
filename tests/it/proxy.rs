//! Proxies (issue 18): kmm reaches the hub through `HTTP_PROXY` (reqwest reads the standard
//! variables, `NO_PROXY` included), and with the proxy down the error names the proxy, since
//! a proxy that is down looks like a hub that is.
//!
//! Edges: the real binary against the fake hub; the proxy is a minimal forward proxy on
//! loopback (absolute-form requests relayed to the one host they name).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fake_hub::{FakeHub, FileSpec, RepoSpec};
use crate::reliability::Workspace;

const MODEL: &str = "corp/behind-a-proxy";

/// A forward proxy on 127.0.0.1: reads a request head in absolute form (`GET http://host:port/
/// ... HTTP/1.1`), connects to that host and relays both ways. Counts the connections it served
/// and the request bytes it relayed; `upload_rate` (bytes per second) slows what clients send,
/// so a test can catch a host in the middle of an upload.
pub(crate) struct Proxy {
    pub url: String,
    pub served: Arc<AtomicUsize>,
    pub uploaded: Arc<AtomicU64>,
}

/// How a [`Proxy`] slows traffic (bytes per second); `only_port` limits it to connections to
/// that port (another service on the same loopback address goes at full speed).
#[derive(Clone, Copy, Default)]
pub(crate) struct Throttle {
    pub upload_rate: Option<u64>,
    pub download_rate: Option<u64>,
    pub only_port: Option<u16>,
}

pub(crate) fn start_proxy_with(throttle: Throttle) -> Proxy {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let uploaded = Arc::new(AtomicU64::new(0));
    let (counter, sent) = (served.clone(), uploaded.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut client, _)) = listener.accept().await {
                let (counter, sent) = (counter.clone(), sent.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let Some(target) = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|uri| uri.strip_prefix("http://"))
                        .and_then(|rest| rest.split('/').next())
                        .map(str::to_string)
                    else {
                        return;
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    sent.fetch_add(head.len() as u64, Ordering::SeqCst);
                    if upstream.write_all(&head).await.is_err() {
                        return;
                    }
                    let applies = throttle
                        .only_port
                        .is_none_or(|port| target.ends_with(&format!(":{port}")));
                    if !applies
                        || (throttle.upload_rate.is_none() && throttle.download_rate.is_none())
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                    let (client_read, client_write) = client.into_split();
                    let (upstream_read, upstream_write) = upstream.into_split();
                    let down = tokio::spawn(relay(
                        upstream_read,
                        client_write,
                        throttle.download_rate,
                        None,
                    ));
                    relay(
                        client_read,
                        upstream_write,
                        throttle.upload_rate,
                        Some(sent),
                    )
                    .await;
                    let _ = down.await;
                });
            }
        });
    });
    Proxy {
        url,
        served,
        uploaded,
    }
}

/// Copies `from` to `to` at `rate` bytes per second (unlimited when `None`), counting into
/// `counted`.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: Option<u64>,
    counted: Option<Arc<AtomicU64>>,
) {
    let mut chunk = vec![
        0u8;
        if rate.is_some_and(|rate| rate < 16 << 10) {
            256
        } else {
            16 << 10
        }
    ];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        if let Some(counted) = &counted {
            counted.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(rate) = rate {
            tokio::time::sleep(std::time::Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    let _ = to.shutdown().await;
}

fn start_proxy() -> (String, Arc<AtomicUsize>) {
    let proxy = start_proxy_with(Throttle::default());
    (proxy.url, proxy.served)
}

fn stage() -> (FakeHub, Workspace) {
    // Regular files only: the API serves them itself, so every request goes to one host.
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::regular("vocab.txt", b"[PAD]\n".to_vec()),
    ])]);
    let ws = Workspace::new(&hub, &[(MODEL, "main")]);
    (hub, ws)
}

#[test]
fn the_hub_is_reached_through_http_proxy() {
    let (_hub, mut ws) = stage();
    let (proxy, served) = start_proxy();
    ws.set_env("HTTP_PROXY", &proxy);
    ws.run(&["apply", "--quiet"]).ok();
    assert!(ws.model_dir(MODEL).join("vocab.txt").is_file());
    assert!(
        served.load(Ordering::SeqCst) >= 1,
        "no request went through the proxy"
    );
}

#[test]
fn with_the_proxy_down_the_error_names_the_proxy_and_never_its_credentials() {
    let (_hub, mut ws) = stage();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    ws.set_env(
        "HTTP_PROXY",
        &format!("http://proxyuser:s3cr3t-proxy-pass@127.0.0.1:{port}"),
    );
    ws.set_env("KMM_HUB_MAX_RETRIES", "1");
    ws.set_env("KMM_HUB_RETRY_DELAY", "10ms");
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("127.0.0.1:{port}")) && run.stdout.contains("HTTP_PROXY"),
        "the proxy is not named: {}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("s3cr3t") && !run.stderr.contains("s3cr3t"),
        "{}",
        run.stdout
    );
    assert!(!ws.model_dir(MODEL).exists());
}
