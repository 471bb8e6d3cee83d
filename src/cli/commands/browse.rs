//! `kmm browse --owner ORG`: interactive. A numbered table of the owner's models, pick one by
//! number, see its files and sizes, confirm with `y`, and it is installed through the same
//! path as `kmm download` (progress on stderr). Plain numbered prompts rather than a
//! full-screen UI: it works in any terminal, over ssh and under tmux, and is easy to drive.
//!
//! Refused with `E_ARGS` under `--json` or when stdin or stdout is not a terminal: scripts use
//! `list`, `info` and `download`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use clap::Args;

use crate::api::{self, ListOptions};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::ModelSpec;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::table::{Align, Table};
use crate::cli::verb_support;
use crate::ops::{EnvLookup, Session};

#[derive(Debug, Clone, Args)]
pub struct BrowseArgs {
    /// The user or organisation whose models to browse.
    #[arg(long, value_name = "ORG")]
    pub owner: String,
    /// Only models whose id contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// At most N models in the table.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

pub async fn run(
    global: &GlobalArgs,
    args: &BrowseArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    if out.json {
        return Err(
            Error::args("`kmm browse` is interactive and has no --json output")
                .with_hint("use `kmm list --json`, `kmm info --json` and `kmm download --json`"),
        );
    }
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(
            Error::args("`kmm browse` needs a terminal on stdin and stdout")
                .with_hint("in scripts use `kmm list`, `kmm info` and `kmm download`"),
        );
    }
    let mut session = Session::open_lenient(&global.overrides(), env, cwd).await?;
    let hub = verb_support::require_hub(&session, "browse")?.clone();
    let options = ListOptions {
        search: args.search.clone(),
        sort: None,
        direction: None,
        limit: args.limit as usize,
    };
    let models = api::list_models_for_owner(&hub, &args.owner, &options).await?;
    if models.is_empty() {
        println!("No models found for `{}`.", args.owner);
        return Ok(0);
    }
    print!("{}", super::list::table(&models, true).render());
    let Some(choice) = ask_number(models.len())? else {
        println!("Nothing downloaded.");
        return Ok(0);
    };
    let model = &models[choice - 1];
    let repo = api::get_model_files(&hub, &model.id, None).await?;
    let mut table = Table::new(&[
        ("PATH", Align::Left, true),
        ("SIZE", Align::Right, false),
        ("LFS", Align::Left, false),
    ]);
    for file in &repo.files {
        table.row(vec![
            file.path.clone(),
            verb_support::size(file.size),
            if file.hash.is_lfs() { "lfs" } else { "-" }.to_string(),
        ]);
    }
    let total: u64 = repo.files.iter().map(|file| file.size).sum();
    let route = layout::route(&model.id, None, &repo.files);
    println!(
        "\n{} @ {}",
        model.id,
        &repo.commit[..7.min(repo.commit.len())]
    );
    print!("{}", table.render());
    println!(
        "{} files, {} -> {}",
        repo.files.len(),
        verb_support::size(total),
        session.paths.root().join(&route.install_dir).display()
    );
    if !ask_yes(&format!("Download {}? [y/N]: ", model.id))? {
        println!("Cancelled; nothing downloaded.");
        return Ok(0);
    }
    super::download::install(&mut session, ModelSpec::new(&model.id), false, out).await
}

/// Asks for a number from 1 to `max`; `None` for `q`, an empty line or end of input.
fn ask_number(max: usize) -> Result<Option<usize>> {
    loop {
        let Some(line) = prompt(&format!("Select a model [1-{max}, q to quit]: "))? else {
            return Ok(None);
        };
        let line = line.trim();
        if line.is_empty() || line.eq_ignore_ascii_case("q") {
            return Ok(None);
        }
        match line.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => return Ok(Some(n)),
            _ => println!("Please type a number from 1 to {max}, or q."),
        }
    }
}

fn ask_yes(question: &str) -> Result<bool> {
    Ok(prompt(question)?
        .is_some_and(|answer| matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")))
}

/// Prints `question` and reads one line; `None` at end of input.
fn prompt(question: &str) -> Result<Option<String>> {
    let mut stdout = std::io::stdout();
    let _ = write!(stdout, "{question}");
    let _ = stdout.flush();
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|error| Error::io("reading the answer from the terminal", &error))?;
    Ok((read > 0).then_some(line))
}
