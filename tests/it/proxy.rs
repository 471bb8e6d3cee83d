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

pub(crate) fn start_proxy_with(upload_rate: Option<u64>) -> Proxy {
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
                    let Some(rate) = upload_rate else {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut upstream_read, mut upstream_write) = upstream.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut upstream_read, &mut client_write).await;
                    });
                    let mut chunk = vec![0u8; 16 << 10];
                    loop {
                        let n = match client_read.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if upstream_write.write_all(&chunk[..n]).await.is_err() {
                            break;
                        }
                        sent.fetch_add(n as u64, Ordering::SeqCst);
                        let pause = std::time::Duration::from_secs_f64(n as f64 / rate as f64);
                        tokio::time::sleep(pause).await;
                    }
                    let _ = upstream_write.shutdown().await;
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

fn start_proxy() -> (String, Arc<AtomicUsize>) {
    let proxy = start_proxy_with(None);
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
