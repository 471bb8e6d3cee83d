//! The CDN listener in zero-copy mode, as production CDNs serve: file bytes go from the page
//! cache to the socket with `sendfile(2)`, never through the hub's memory. The benchmark uses
//! it (`fake_hub --zero-copy-cdn`) so that the hub's CPU time, on the same cores as the clients,
//! is what a real CDN would cost: the streaming axum body copies every byte once more (measured
//! for one 2 GiB stream: 0.9-1.5 s of hub CPU streamed, 0.33-0.45 s with `sendfile`). Many
//! small range requests cost more here than streamed (kmm's 2 MiB chunks of 2 GiB: 1.0 s against
//! 0.76 s): a blocking thread per connection wakes for every request.
//!
//! HTTP/1.1 with keep-alive, one blocking thread per connection. Each request goes through the
//! same routing, headers, range handling and request log as the axum CDN ([`server::cdn_route`]);
//! only the body is sent differently: `sendfile` from the fixture file when the blob has one,
//! else a plain write of the in-memory bytes. No fault injection here: faults need the
//! streaming body.
//!
//! Edges: reads the catalog and writes the log and byte counters of [`HubState`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};

use super::ServerKind;
use super::server::{self, HubState};

/// Longest request head accepted.
const MAX_HEAD: usize = 64 << 10;

/// Accepts connections until the runtime stops; each is served on the blocking pool.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HubState>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            // A client that goes away mid-body ends its connection, nothing more.
            let _ = connection(stream, &state);
        });
    }
}

fn connection(mut stream: TcpStream, state: &HubState) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if pending.len() > MAX_HEAD {
                return Ok(());
            }
            let mut buffer = [0u8; 8192];
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buffer[..read]);
        };
        let Some((request, keep_alive)) = parse_head(&pending[..head_end]) else {
            stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )?;
            return Ok(());
        };
        // GET and HEAD carry no body: the next request starts right after the head.
        pending.drain(..head_end);
        respond(&mut stream, state, request)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// The request (without body) and whether the connection stays open after it.
fn parse_head(head: &[u8]) -> Option<(axum::extract::Request, bool)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    if !parsed.parse(head).ok()?.is_complete() {
        return None;
    }
    let mut builder = axum::http::Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?);
    let mut keep_alive = parsed.version == Some(1);
    for header in parsed.headers.iter() {
        if header.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            keep_alive = if value.contains("close") {
                false
            } else {
                keep_alive || value.contains("keep-alive")
            };
        }
        builder = builder.header(header.name, header.value);
    }
    Some((builder.body(Body::empty()).ok()?, keep_alive))
}

fn respond(
    stream: &mut TcpStream,
    state: &HubState,
    request: axum::extract::Request,
) -> std::io::Result<()> {
    let (index, ctx) = server::begin(state, ServerKind::Cdn, &request);
    let response = server::finish(state, index, server::cdn_route(state, &ctx));
    let (mut parts, body) = response.into_parts();
    let file_bytes = matches!(parts.status, StatusCode::OK | StatusCode::PARTIAL_CONTENT);
    let blob = if file_bytes && ctx.method != Method::HEAD {
        server::cdn_blob(state, &ctx)
    } else {
        None
    };
    // Anything but file bytes (an error page) is small and in memory: sent as built, with the
    // length hyper would have added.
    let page = if blob.is_none() {
        let bytes = tokio::runtime::Handle::current()
            .block_on(axum::body::to_bytes(body, MAX_HEAD))
            .map_err(std::io::Error::other)?;
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, bytes.len().into());
        }
        bytes
    } else {
        drop(body);
        Default::default()
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let Some((content, source)) = blob else {
        if ctx.method != Method::HEAD {
            stream.write_all(&page)?;
        }
        return Ok(());
    };
    // The span `cdn_route` answered with (200 or 206, so never unsatisfiable here).
    let total = content.len() as u64;
    let requested = ctx.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (start, len) = match server::parse_range(requested, total) {
        server::RangeRequest::Partial(start, end) => (start, end - start + 1),
        server::RangeRequest::Full | server::RangeRequest::Unsatisfiable => (0, total),
    };
    let counters = [state.served.clone(), ctx.body_bytes.clone()];
    let count = |sent: i64| {
        for counter in &counters {
            if sent >= 0 {
                counter.fetch_add(sent as u64, Ordering::Relaxed);
            } else {
                counter.fetch_sub(sent.unsigned_abs(), Ordering::Relaxed);
            }
        }
    };
    match source {
        Some(path) => send_file(stream, &path, start, len, count),
        None => {
            // Counted before the write, as the streaming CDN counts a chunk when it hands it to
            // the transport: a client that has read the bytes must find them counted.
            count(len as i64);
            stream.write_all(&content[start as usize..(start + len) as usize])
        }
    }
}

/// `len` bytes of `path` from `start` to the socket, counted as they go: each call's request is
/// counted before `sendfile` (the client may read the bytes before the call returns to us) and
/// what it did not send is taken back after.
fn send_file(
    stream: &mut TcpStream,
    path: &std::path::Path,
    start: u64,
    len: u64,
    count: impl Fn(i64),
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let mut offset = start as libc::off_t;
    let end = start + len;
    while (offset as u64) < end {
        let want = (end - offset as u64).min(1 << 30) as usize;
        count(want as i64);
        // SAFETY: both descriptors are open for the call; sendfile reads the file at `offset`
        // (which it advances) and writes to the socket, touching no memory of ours.
        let sent =
            unsafe { libc::sendfile(stream.as_raw_fd(), file.as_raw_fd(), &mut offset, want) };
        let sent_bytes = sent.max(0) as usize;
        if sent_bytes < want {
            count(-((want - sent_bytes) as i64));
        }
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if sent == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}
