//! `kmm path --model ID`: prints where a model is installed and records the access
//! (`last_accessed`, which `kmm gc` evicts by), for programs that load models.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::error::Result;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::verb_support::open_for_model;
use crate::ops::{self, EnvLookup};

#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// The model's id as in the registry.
    #[arg(long, value_name = "ID")]
    pub model: String,
}

#[derive(Serialize)]
struct PathOutput {
    model: String,
    path: String,
    last_accessed: Option<String>,
}

/// `kmm path`.
pub async fn run(
    global: &GlobalArgs,
    args: &PathArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    // Like every verb taking --model: a hostile id is refused before the store is touched.
    let session = open_for_model(global, &args.model, env, cwd).await?;
    let record = ops::record_access(&session, &args.model, &out)?;
    let data = PathOutput {
        model: args.model.clone(),
        path: record.install_path.clone(),
        last_accessed: record.last_accessed.clone(),
    };
    out.success(&record.install_path, &record.install_path, &data);
    Ok(0)
}
