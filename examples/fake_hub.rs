//! Standalone fake Hugging Face hub serving the repos of a fixture folder, for benchmarks,
//! manual tries and scripts.
//!
//! `cargo run --example fake_hub -- --root examples/hub [--port 8080] [--cdn-port 0]
//! [--page-size N] [--bandwidth-cap BYTES_PER_SEC] [--stats-file PATH] [--zero-copy-cdn]` prints `endpoint=http://127.0.0.1:PORT` (then `cdn=...`) on stdout once both
//! listeners are bound, and serves until killed. Folder format: `examples/hub/README.md`.
//! `--bandwidth-cap` throttles every file response (one per connection) as a CDN on a long link
//! would; `--stats-file` is rewritten every 100 ms with `body_bytes_served=N` (file-content bytes
//! sent so far), which benchmarks read to count what a resumed download transferred.
//! `--zero-copy-cdn` sends LFS bytes with `sendfile`, as production CDNs do (no throttling then).

#[path = "../tests/fake_hub/mod.rs"]
#[allow(dead_code)]
mod fake_hub;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use fake_hub::{CdnMode, FakeHub, PageSizes, fixtures};

const USAGE: &str = "usage: fake_hub --root DIR [--port N] [--cdn-port N] [--page-size N] [--bandwidth-cap BYTES_PER_SEC] [--stats-file PATH] [--zero-copy-cdn]";

struct Args {
    root: PathBuf,
    port: u16,
    cdn_port: u16,
    page_size: Option<usize>,
    bandwidth_cap: Option<u64>,
    stats_file: Option<PathBuf>,
    zero_copy_cdn: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut root = None;
    let mut port = 8080;
    let mut cdn_port = 0;
    let mut page_size = None;
    let mut bandwidth_cap = None;
    let mut stats_file = None;
    let mut zero_copy_cdn = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        if flag == "--zero-copy-cdn" {
            zero_copy_cdn = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("`{flag}` needs a value\n{USAGE}"))?;
        let number = |value: &str| {
            value
                .parse::<u16>()
                .map_err(|_| format!("`{flag}`: not a port: `{value}`"))
        };
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value)),
            "--port" => port = number(&value)?,
            "--cdn-port" => cdn_port = number(&value)?,
            "--page-size" => {
                page_size = Some(
                    value
                        .parse()
                        .map_err(|_| format!("`--page-size`: not a number: `{value}`"))?,
                )
            }
            "--bandwidth-cap" => {
                bandwidth_cap = Some(
                    value
                        .parse()
                        .map_err(|_| format!("`--bandwidth-cap`: not a number: `{value}`"))?,
                )
            }
            "--stats-file" => stats_file = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown argument `{flag}`\n{USAGE}")),
        }
    }
    let root = root.ok_or_else(|| format!("`--root` is required\n{USAGE}"))?;
    if !root.is_dir() {
        return Err(format!("`{}` is not a folder", root.display()));
    }
    if zero_copy_cdn && bandwidth_cap.is_some() {
        return Err(format!(
            "`--bandwidth-cap` needs the streaming CDN, not `--zero-copy-cdn`\n{USAGE}"
        ));
    }
    Ok(Args {
        zero_copy_cdn,
        root,
        port,
        cdn_port,
        page_size,
        bandwidth_cap,
        stats_file,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(64);
        }
    };
    let repos = fixtures::load_dir(&args.root);
    let ids: Vec<String> = repos.iter().map(|r| r.id.clone()).collect();
    let cdn_mode = if args.zero_copy_cdn {
        CdnMode::ZeroCopy
    } else {
        CdnMode::Streaming
    };
    let hub = match FakeHub::start_with(repos, args.port, args.cdn_port, cdn_mode) {
        Ok(hub) => hub,
        Err(error) => {
            eprintln!(
                "cannot listen on 127.0.0.1:{} / {}: {error}",
                args.port, args.cdn_port
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(size) = args.page_size {
        hub.set_page_sizes(PageSizes {
            models: size,
            tree: size,
            tree_expand: size.min(50),
        });
    }
    if let Some(bytes_per_sec) = args.bandwidth_cap {
        hub.add_fault(fake_hub::Fault::BandwidthCap { bytes_per_sec });
    }
    eprintln!(
        "serving {} repos from {}: {}",
        ids.len(),
        args.root.display(),
        ids.join(", ")
    );
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "endpoint={}", hub.url());
    let _ = writeln!(stdout, "cdn={}", hub.cdn_url());
    let _ = stdout.flush();
    loop {
        match &args.stats_file {
            Some(path) => {
                let text = format!("body_bytes_served={}\n", hub.body_bytes_served());
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, path);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            None => std::thread::park(),
        }
    }
}
