//! Where a plan's bytes will come from, per model and in total ([`ByteSources`]): the store's
//! own downloads, the local Hugging Face cache, the fleet's shared store, the hub; the order
//! apply tries them in (`crate::apply::fetch`).
//!
//! Not part of the pure planner: it asks the shared store (one HEAD request per distinct file,
//! several at once). Set only when something besides the hub is a source, so a plain store's
//! plan reads as before.
//!
//! Edges: reads `.kmm/downloads/` and the Hugging Face cache; HEAD requests to the tier.

use std::collections::BTreeMap;

use futures_util::StreamExt as _;

use super::session::Session;
use crate::error::Result;
use crate::plan::{Action, ByteSources, Plan};

/// HEAD requests to the tier in flight at once.
const LOOKUPS_AT_ONCE: usize = 16;

#[derive(Clone, Copy)]
enum Source {
    Store,
    HfCache,
    SharedStore,
    Hub,
}

/// Fills `byte_sources` of `plan` and of its models.
pub(super) async fn note_byte_sources(session: &Session, plan: &mut Plan) -> Result<()> {
    let tier = session.shared_store().await?;
    let downloads = session.paths.downloads_dir();
    let mut source_of: BTreeMap<String, Source> = BTreeMap::new();
    let mut ask_tier = Vec::new();
    for planned in &plan.actions {
        let Action::Fetch { model, file, .. } = &planned.action else {
            continue;
        };
        let hex = file.hash.hex().to_string();
        if source_of.contains_key(&hex) {
            continue;
        }
        let in_store = fs_err::metadata(downloads.join(&hex))
            .is_ok_and(|meta| meta.is_file() && meta.len() == file.size);
        let source = if in_store {
            Source::Store
        } else if session
            .hf_cache
            .as_ref()
            .is_some_and(|cache| cache.blob(model, file).is_some())
        {
            Source::HfCache
        } else {
            if tier.is_some() {
                ask_tier.push(file.clone());
            }
            Source::Hub
        };
        source_of.insert(hex, source);
    }
    if let Some(tier) = tier {
        let found: Vec<Result<Option<String>>> = futures_util::stream::iter(ask_tier)
            .map(|file| async move {
                let size = tier.blob_size(&file.hash).await?;
                Ok((size == Some(file.size)).then(|| file.hash.hex().to_string()))
            })
            .buffer_unordered(LOOKUPS_AT_ONCE)
            .collect()
            .await;
        for hex in found {
            if let Some(hex) = hex? {
                source_of.insert(hex, Source::SharedStore);
            }
        }
    }
    let only_hub = source_of
        .values()
        .all(|source| matches!(source, Source::Hub));
    if tier.is_none() && only_hub {
        return Ok(());
    }
    let mut per_model: BTreeMap<String, ByteSources> = BTreeMap::new();
    let mut total = ByteSources::default();
    for planned in &plan.actions {
        let Action::Fetch { model, file, .. } = &planned.action else {
            continue;
        };
        let sources = per_model.entry(model.clone()).or_default();
        for sums in [sources, &mut total] {
            let slot = match source_of[file.hash.hex()] {
                Source::Store => &mut sums.store,
                Source::HfCache => &mut sums.hf_cache,
                Source::SharedStore => &mut sums.shared_store,
                Source::Hub => &mut sums.hub,
            };
            *slot += file.size;
        }
    }
    for model in &mut plan.models {
        model.byte_sources = per_model.get(&model.id).copied();
    }
    plan.summary.byte_sources = Some(total);
    Ok(())
}
