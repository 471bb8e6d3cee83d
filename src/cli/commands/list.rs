//! `kmm list --owner ORG`: an owner's models on the hub, following `Link` pages until
//! `--limit` models are collected.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::api::{self, ListOptions, ModelSummary, SortKey};
use crate::error::Result;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::table::{Align, Table};
use crate::cli::verb_support;
use crate::ops::{EnvLookup, Session};

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The user or organisation whose models to list.
    #[arg(long, value_name = "ORG")]
    pub owner: String,
    /// Only models whose id contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// Sort order (the hub sorts descending unless --direction 1).
    #[arg(long, value_parser = ["downloads", "likes", "lastModified", "createdAt"])]
    pub sort: Option<String>,
    /// -1 descending, 1 ascending.
    #[arg(long, allow_hyphen_values = true, value_parser = ["-1", "1"])]
    pub direction: Option<String>,
    /// At most N models.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

/// `--json` data (`schemas/data/list.schema.json`).
#[derive(Debug, Serialize)]
pub struct ListData {
    pub owner: String,
    pub count: usize,
    pub models: Vec<ModelSummary>,
}

pub async fn run(
    global: &GlobalArgs,
    args: &ListArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open_lenient(&global.overrides(), env, cwd).await?;
    let hub = verb_support::require_hub(&session, "list")?;
    let options = ListOptions {
        search: args.search.clone(),
        sort: args.sort.as_deref().and_then(SortKey::parse),
        direction: args.direction.as_deref().and_then(|d| d.parse().ok()),
        limit: args.limit as usize,
    };
    let models = api::list_models_for_owner(hub, &args.owner, &options).await?;
    let message = format!("{} models of `{}`.", models.len(), args.owner);
    let text = render(&models);
    out.success(
        &message,
        &text,
        &ListData {
            owner: args.owner.clone(),
            count: models.len(),
            models,
        },
    );
    Ok(0)
}

/// The table (also used by `browse`, with a `#` column).
pub fn table(models: &[ModelSummary], numbered: bool) -> Table {
    let mut columns = vec![];
    if numbered {
        columns.push(("#", Align::Right, false));
    }
    columns.extend([
        ("ID", Align::Left, true),
        ("DOWNLOADS", Align::Right, false),
        ("LIKES", Align::Right, false),
        ("MODIFIED", Align::Left, false),
        ("PIPELINE", Align::Left, true),
        ("LIBRARY", Align::Left, true),
        ("GATED", Align::Left, false),
    ]);
    let mut table = Table::new(&columns);
    for (index, model) in models.iter().enumerate() {
        let number = |value: Option<u64>| value.map_or("-".to_string(), |n| n.to_string());
        let mut row = vec![];
        if numbered {
            row.push((index + 1).to_string());
        }
        row.extend([
            model.id.clone(),
            number(model.downloads),
            number(model.likes),
            verb_support::day(model.last_modified.as_deref()),
            model.pipeline_tag.clone().unwrap_or_else(|| "-".into()),
            model.library_name.clone().unwrap_or_else(|| "-".into()),
            model.gated.clone(),
        ]);
        table.row(row);
    }
    table
}

fn render(models: &[ModelSummary]) -> String {
    if models.is_empty() {
        return "No models found.".to_string();
    }
    table(models, false).render()
}
