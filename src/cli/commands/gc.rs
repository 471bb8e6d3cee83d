//! `kmm gc [--dry-run] [--target-gb N] [--quota-gb N] [--evict-declared]`:
//! [`ops::collect_garbage`] (least recently used models evicted until the store fits the quota
//! and the target is freed; stale downloads deleted) and its report.

use std::path::Path;

use clap::Args;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::error::Result;
use crate::ops::{self, EnvLookup, GcReport, GcRequest, Session};
use crate::plan::format_bytes;

#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// List what would be removed and the bytes freed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Free at least this many GB (10^9 bytes; fractions allowed).
    #[arg(long, value_name = "GB", value_parser = parse_gb)]
    pub target_gb: Option<f64>,
    /// Shrink the store to at most this many GB [default: the manifest's quota_gb].
    #[arg(long, value_name = "GB", value_parser = parse_gb)]
    pub quota_gb: Option<f64>,
    /// Declared (unpinned) models may be evicted too, after undeclared ones.
    #[arg(long)]
    pub evict_declared: bool,
}

fn parse_gb(text: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(gb) if gb.is_finite() && gb >= 0.0 => Ok(gb),
        _ => Err(format!(
            "`{text}` is not a number of GB (10^9 bytes), e.g. 1.5"
        )),
    }
}

/// `kmm gc`.
pub async fn run(
    global: &GlobalArgs,
    args: &GcArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open_lenient(&global.overrides(), env, cwd).await?;
    let request = GcRequest {
        dry_run: args.dry_run,
        target_gb: args.target_gb,
        quota_gb: args.quota_gb,
        evict_declared: args.evict_declared,
    };
    let data = ops::collect_garbage(&session, request, &out).await?;
    let (text, message) = render(&data);
    // A dry run exists to print its list; a real run is quiet with -q.
    out.success(
        &message,
        if out.quiet && !args.dry_run {
            ""
        } else {
            &text
        },
        &data,
    );
    Ok(0)
}

fn render(data: &GcReport) -> (String, String) {
    let (verb, evicted) = if data.dry_run {
        ("Would evict", "would be freed")
    } else {
        ("Evicted", "freed")
    };
    let mut text = String::new();
    if !data.evict.is_empty() {
        text.push_str(&format!("{verb}:\n"));
        for e in &data.evict {
            text.push_str(&format!(
                "  - {}  {}  (last used {}{})\n",
                e.id,
                format_bytes(e.bytes),
                e.last_used.as_deref().unwrap_or("never"),
                if e.declared { ", declared" } else { "" }
            ));
        }
    }
    if !data.downloads.is_empty() {
        text.push_str(&format!(
            "{} stale download(s) in .kmm/downloads/ ({}):\n",
            if data.dry_run {
                "Would delete"
            } else {
                "Deleted"
            },
            format_bytes(data.download_bytes_freed)
        ));
        for d in &data.downloads {
            text.push_str(&format!("  - {}  {}\n", d.name, format_bytes(d.size)));
        }
    }
    if let Some(reason) = &data.downloads_skipped {
        text.push_str(&format!("# {reason}\n"));
    }
    let total = data.bytes_freed + data.download_bytes_freed;
    let message = if data.evict.is_empty() && data.downloads.is_empty() {
        format!(
            "Nothing to collect: the store holds {}{}.",
            format_bytes(data.store_bytes),
            data.quota_bytes.map_or_else(String::new, |q| format!(
                ", within the quota of {}",
                format_bytes(q)
            ))
        )
    } else {
        format!(
            "{} model(s) and {} download(s); {} {evicted}.",
            data.evict.len(),
            data.downloads.len(),
            format_bytes(total)
        )
    };
    text.push_str(&message);
    text.push('\n');
    (text, message)
}
