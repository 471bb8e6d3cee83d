//! `kmm gc [--dry-run] [--target-gb N] [--quota-gb N] [--evict-declared]`: evicts least recently
//! used models until the store fits the quota (`--quota-gb`, else the manifest's `quota_gb`) and
//! `--target-gb` bytes are freed, and deletes stale downloads in `.kmm/downloads/`.
//!
//! Selection is [`crate::gc::select`]; removal goes through a plan of `RemoveModel` +
//! `Unregister` actions carried out by `apply` (model folders, config mirrors and records;
//! nothing else). `--dry-run` computes the same and changes nothing.

use std::collections::BTreeSet;
use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::apply::{self, ApplyContext};
use crate::error::Result;
use crate::gc::{self, Candidate, Eviction};
use crate::plan::{self, ChangeKind, DesiredModel, Plan, PlanInput, format_bytes};
use crate::registry::Registry;
use crate::store;

use super::super::args::GlobalArgs;
use super::super::output::Output;
use super::super::progress::ProgressReporter;
use super::super::reconcile::Session;
use super::super::settings::EnvLookup;

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

/// One stale download.
#[derive(Debug, Serialize)]
struct StaleDownload {
    name: String,
    size: u64,
}

/// The `--json` data of `kmm gc`.
#[derive(Debug, Serialize)]
struct GcOutput {
    dry_run: bool,
    store_bytes: u64,
    quota_bytes: Option<u64>,
    target_bytes: Option<u64>,
    evict: Vec<Eviction>,
    bytes_freed: u64,
    downloads: Vec<StaleDownload>,
    download_bytes_freed: u64,
    /// Why stale downloads were not looked at, when they were not.
    downloads_skipped: Option<String>,
}

/// The registered models gc may consider: all except those `plan` already removes. A
/// model's last use is its `last_accessed`, else the newest atime of its files.
pub fn candidates(
    root: &Path,
    registry: &Registry,
    desired: &[DesiredModel],
    plan: &Plan,
) -> Vec<Candidate> {
    let removed: BTreeSet<&str> = plan
        .models
        .iter()
        .filter(|m| m.change == ChangeKind::Remove)
        .map(|m| m.id.as_str())
        .collect();
    registry
        .models
        .iter()
        .filter(|(id, _)| !removed.contains(id.as_str()))
        .map(|(id, record)| {
            let declared = desired.iter().find(|m| &m.id == id);
            let last_used = record
                .last_accessed
                .as_deref()
                .and_then(gc::parse_time)
                .or_else(|| {
                    crate::desired::recorded_install_dir(root, record)
                        .and_then(|dir| gc::newest_atime(&root.join(dir)))
                });
            Candidate {
                id: id.clone(),
                bytes: declared.map_or(record.total_size, |m| m.files.iter().map(|f| f.size).sum()),
                last_used,
                pinned: record.pinned.unwrap_or(false)
                    || declared.is_some_and(|m| m.pinned == Some(true)),
                declared: declared.is_some(),
            }
        })
        .collect()
}

/// `kmm gc`.
pub async fn run(
    global: &GlobalArgs,
    args: &GcArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open_lenient(global, env, cwd).await?;
    let paths = &session.paths;
    // Declared models, resolved (needs the hub or the registry) so their downloads are kept.
    let (desired, downloads_skipped) = if session.manifest.models.is_empty() {
        (Vec::new(), None)
    } else {
        match session.resolve().await {
            Ok(desired) => (desired, None),
            Err(error) => (
                Vec::new(),
                Some(format!(
                    "the declared models could not be resolved ({}); downloads are kept",
                    error.message()
                )),
            ),
        }
    };
    let declared_ids: BTreeSet<&str> = session.manifest.models.keys().map(String::as_str).collect();
    let _lock = if args.dry_run {
        None
    } else {
        Some(session.lock_store(out)?)
    };
    let registry = Registry::load(&paths.registry_file())?;
    let store_bytes: u64 = registry.models.values().map(|r| r.total_size).sum();
    let quota_gb = args.quota_gb.or(session.settings.quota_gb);
    let quota_bytes = quota_gb.map(gc::gb_to_bytes);
    let target_bytes = args.target_gb.map(gc::gb_to_bytes);
    let need = target_bytes
        .unwrap_or(0)
        .max(quota_bytes.map_or(0, |quota| gc::excess(store_bytes, quota)));

    let empty_plan = plan::compute(PlanInput {
        models_dir: paths.root(),
        desired: &[],
        observed: &store::Observed::default(),
        prune: false,
    });
    let mut cands = candidates(paths.root(), &registry, &desired, &empty_plan);
    // Declared but unresolved (offline without a record): still declared.
    for cand in &mut cands {
        cand.declared |= declared_ids.contains(cand.id.as_str());
    }
    let what = match (quota_gb, args.target_gb) {
        (Some(q), Some(t)) => format!(
            "quota {q} GB and target {t} GB (store {})",
            format_bytes(store_bytes)
        ),
        (Some(q), None) => format!("quota {q} GB (store {})", format_bytes(store_bytes)),
        (None, Some(t)) => format!("target {t} GB"),
        (None, None) => "gc".to_string(),
    };
    let selection = gc::select(&cands, need, args.evict_declared, &what)?;
    let evict: Vec<String> = selection.evict.iter().map(|e| e.id.clone()).collect();

    let dirs = plan::dirs_to_observe(paths.root(), &[], &registry);
    let mut observed = store::observe(paths, &dirs)?;
    // gc removes models only; leftovers are apply's business.
    observed.strays.clear();
    let mut plan = plan::compute_with_evictions(
        PlanInput {
            models_dir: paths.root(),
            desired: &[],
            observed: &observed,
            prune: false,
        },
        &evict,
    );
    plan.notes.clear();

    let downloads = if downloads_skipped.is_some() {
        Vec::new()
    } else {
        let keep: BTreeSet<String> = registry
            .models
            .iter()
            .filter(|(id, _)| !evict.contains(id))
            .flat_map(|(_, record)| &record.files)
            .filter_map(|file| file.hash())
            .chain(
                desired
                    .iter()
                    .filter(|m| !evict.contains(&m.id))
                    .flat_map(|m| m.files.iter().map(|f| f.hash.clone())),
            )
            .map(|hash| hash.hex().to_ascii_lowercase())
            .collect();
        apply::stale_downloads(paths, &keep)?
    };
    let download_bytes_freed = downloads.iter().map(|(_, size)| size).sum();

    if !args.dry_run {
        if !plan.is_empty() {
            let reporter = ProgressReporter::with_json(out, session.settings.progress_json);
            let result = apply::apply(
                &plan,
                &ApplyContext {
                    paths,
                    hub: None,
                    max_workers: session.settings.max_workers,
                    reporter: &reporter,
                },
            )
            .await;
            reporter.finish();
            result?;
        }
        let names: Vec<String> = downloads.iter().map(|(name, _)| name.clone()).collect();
        apply::delete_downloads(paths, &names)?;
        // gc fetches nothing and hashes nothing: it only lets go of what no file holds now.
        crate::durability::settle(paths, &std::collections::BTreeSet::new())?;
    }

    let data = GcOutput {
        dry_run: args.dry_run,
        store_bytes,
        quota_bytes,
        target_bytes,
        bytes_freed: selection.bytes_freed,
        evict: selection.evict,
        downloads: downloads
            .into_iter()
            .map(|(name, size)| StaleDownload { name, size })
            .collect(),
        download_bytes_freed,
        downloads_skipped,
    };
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

fn render(data: &GcOutput) -> (String, String) {
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
