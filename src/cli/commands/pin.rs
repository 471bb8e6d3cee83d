//! `kmm pin --model ID [--unpin]`: sets or clears `pinned` in the model's registry record
//! (under the store lock, atomic save). Pinned models are kept by every removal path (`prune`).
//! A manifest that declares `pinned` for the model wins at the next apply; `kmm plan` shows the
//! difference as "pinned changes to ...".

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::error::Result;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::verb_support::open_for_model;
use crate::ops::{self, EnvLookup};

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
    let ops::PinChange {
        pinned,
        changed,
        manifest_pinned,
    } = ops::set_pin(&session, &args.model, !args.unpin, &out)?;
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
