//! `kmm info --model ID [--revision REV]`: the resolved commit, every file with size and LFS
//! flag, what `download` would install where (with the same `--include`/`--exclude`/
//! `--library` flags), license and gating, and whether the model is installed here.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::api;
use crate::error::Result;
use crate::hub::Gated;
use crate::layout::{self, Library};
use crate::manifest::FileSelection;
use crate::registry::Registry;

use crate::cli::flags::SelectionArgs;
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::table::{Align, Table};
use crate::cli::verb_support;
use crate::ops::{EnvLookup, Session};

#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    /// The repo id, e.g. `TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF`.
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// Branch, tag or commit.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub revision: String,
    /// What `download` would select and where it would route it, with the same flags.
    #[command(flatten)]
    pub selection: SelectionArgs,
}

/// `--json` data (`schemas/data/info.schema.json`).
#[derive(Debug, Serialize)]
pub struct InfoData {
    pub id: String,
    pub revision: String,
    pub commit: String,
    pub files: Vec<InfoFile>,
    pub total_size: u64,
    pub selected_files: usize,
    pub selected_size: u64,
    pub routing: Routing,
    pub license: Option<String>,
    pub license_name: Option<String>,
    pub gated: Gated,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    pub installed: Option<Installed>,
}

#[derive(Debug, Serialize)]
pub struct InfoFile {
    pub path: String,
    pub size: u64,
    pub lfs: bool,
    pub selected: bool,
}

#[derive(Debug, Serialize)]
pub struct Routing {
    pub library: Library,
    /// Absolute.
    pub install_dir: String,
    /// Absolute; `null` when the selection has no `config.json`.
    pub config_mirror: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Installed {
    pub commit: Option<String>,
    pub revision: Option<String>,
    pub install_path: String,
    pub total_size: u64,
    pub pinned: bool,
}

pub async fn run(
    global: &GlobalArgs,
    args: &InfoArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    verb_support::check_model_arg(&args.model)?;
    let selection = FileSelection::new(&args.selection.include, &args.selection.exclude)
        .map_err(|error| crate::Error::args(error.message().to_string()))?;
    let session = Session::open_lenient(&global.overrides(), env, cwd).await?;
    let hub = verb_support::require_hub(&session, "info")?;
    let repo = api::get_model_files(hub, &args.model, Some(&args.revision)).await?;

    let selected: Vec<_> = repo
        .files
        .iter()
        .filter(|file| selection.matches(&file.path))
        .cloned()
        .collect();
    let library = args.selection.library.as_deref().and_then(Library::parse);
    let route = layout::route(&args.model, library, &selected);
    let models_dir = session.paths.root();
    let config_mirror = selected
        .iter()
        .any(|file| file.path == "config.json")
        .then(|| models_dir.join(layout::config_mirror_path(&args.model)));
    let registry = Registry::load(&session.paths.registry_file())?;
    let installed = registry.models.get(&args.model).map(|record| Installed {
        commit: record.commit.clone(),
        revision: record.revision.clone(),
        install_path: record.install_path.clone(),
        total_size: record.total_size,
        pinned: record.pinned.unwrap_or(false),
    });
    let data = InfoData {
        id: repo.id.clone(),
        revision: args.revision.clone(),
        commit: repo.commit.clone(),
        files: repo
            .files
            .iter()
            .map(|file| InfoFile {
                path: file.path.clone(),
                size: file.size,
                lfs: file.hash.is_lfs(),
                selected: selection.matches(&file.path),
            })
            .collect(),
        total_size: repo.files.iter().map(|file| file.size).sum(),
        selected_files: selected.len(),
        selected_size: selected.iter().map(|file| file.size).sum(),
        routing: Routing {
            library: route.library,
            install_dir: models_dir.join(&route.install_dir).display().to_string(),
            config_mirror: config_mirror.map(|path| path.display().to_string()),
        },
        license: repo.info.license.clone(),
        license_name: repo.info.license_name.clone(),
        gated: repo.info.gated,
        pipeline_tag: repo.info.pipeline_tag.clone(),
        library_name: repo.info.library_name.clone(),
        installed,
    };
    let message = format!(
        "{}@{}: {} files, {}.",
        data.id,
        short(&data.commit),
        data.files.len(),
        verb_support::size(data.total_size)
    );
    out.success(&message, &render(&data), &data);
    Ok(0)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(7)]
}

fn render(data: &InfoData) -> String {
    let mut text = format!(
        "{}  ({} @ {})\n",
        data.id,
        data.revision,
        short(&data.commit)
    );
    text.push_str(&format!(
        "license: {}{}   gated: {}\n",
        data.license.as_deref().unwrap_or("unknown"),
        data.license_name
            .as_deref()
            .map(|name| format!(" ({name})"))
            .unwrap_or_default(),
        match data.gated {
            Gated::No => "no",
            Gated::Auto => "yes (automatic approval)",
            Gated::Manual => "yes (manual approval)",
        }
    ));
    if data.gated != Gated::No {
        text.push_str(&format!(
            "download needs: access on the hub, a token in HF_TOKEN, and an accepted license (`kmm license --model {} --accept ...`)\n",
            data.id
        ));
    }
    if let Some(pipeline) = &data.pipeline_tag {
        text.push_str(&format!("pipeline: {pipeline}\n"));
    }
    text.push('\n');
    text.push_str(&files_table(data).render());
    text.push_str(&format!(
        "\n{} files, {} in total\n",
        data.files.len(),
        verb_support::size(data.total_size)
    ));
    text.push_str(&format!(
        "download would install {} files ({}) as {} into {}\n",
        data.selected_files,
        verb_support::size(data.selected_size),
        data.routing.library.as_str(),
        data.routing.install_dir
    ));
    if let Some(mirror) = &data.routing.config_mirror {
        text.push_str(&format!("config.json mirrored to {mirror}\n"));
    }
    match &data.installed {
        Some(installed) => text.push_str(&format!(
            "installed here: yes, at commit {} in {}{}\n",
            installed.commit.as_deref().map(short).unwrap_or("unknown"),
            installed.install_path,
            if installed.pinned { " (pinned)" } else { "" }
        )),
        None => text.push_str("installed here: no\n"),
    }
    text
}

fn files_table(data: &InfoData) -> Table {
    let mut table = Table::new(&[
        ("PATH", Align::Left, true),
        ("SIZE", Align::Right, false),
        ("LFS", Align::Left, false),
        ("SELECTED", Align::Left, false),
    ]);
    for file in &data.files {
        table.row(vec![
            file.path.clone(),
            verb_support::size(file.size),
            if file.lfs { "lfs" } else { "-" }.to_string(),
            if file.selected { "yes" } else { "no" }.to_string(),
        ]);
    }
    table
}
