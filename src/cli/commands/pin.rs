//! `kmm pin --model ID [--unpin]`: sets or clears `pinned` in the model's registry record
//! (under the store lock, atomic save). Pinned models are kept by every removal path (`prune`).
//! A manifest that declares `pinned` for the model wins at the next apply; `kmm plan` shows the
//! difference as "pinned changes to ...".

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::registry::Registry;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::verb_support::open_for_model;
use crate::ops::EnvLookup;

#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// The installed model's id.
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// Clear the pin instead.
    #[arg(long)]
    pub unpin: bool,
}

/// `--json` data (`schemas/data/pin.schema.json`).
#[derive(Debug, Serialize)]
pub struct PinData {
    pub id: String,
    pub pinned: bool,
    /// Whether the registry changed (false when it already was so).
    pub changed: bool,
    /// What the manifest declares for the model, if anything.
    pub manifest_pinned: Option<bool>,
}

pub async fn run(
    global: &GlobalArgs,
    args: &PinArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = open_for_model(global, &args.model, env, cwd).await?;
    let _lock = session.lock_store(&out)?;
    let path = session.paths.registry_file();
    let mut registry = Registry::load(&path)?;
    let record = registry.models.get_mut(&args.model).ok_or_else(|| {
        Error::not_found(format!("{} is not installed here", args.model)).with_hint(format!(
            "install it first (`kmm download --model {}`), or declare `pinned = true` in kari-models.toml",
            args.model
        ))
    })?;
    let pinned = !args.unpin;
    let changed = record.pinned.unwrap_or(false) != pinned;
    record.pinned = pinned.then_some(true);
    if changed {
        registry.save(&path)?;
    }
    let manifest_pinned = session
        .manifest
        .models
        .get(&args.model)
        .and_then(|spec| spec.pinned);
    let mut message = format!(
        "{} is {}{}.",
        args.model,
        if pinned { "pinned" } else { "not pinned" },
        if changed { " now" } else { " already" }
    );
    if let Some(declared) = manifest_pinned.filter(|declared| *declared != pinned) {
        message.push_str(&format!(
            " Note: kari-models.toml declares pinned = {declared}; `kmm apply` will set that back (see `kmm plan`)."
        ));
    }
    out.success(
        &message,
        if out.quiet { "" } else { &message },
        &PinData {
            id: args.model.clone(),
            pinned,
            changed,
            manifest_pinned,
        },
    );
    Ok(0)
}
