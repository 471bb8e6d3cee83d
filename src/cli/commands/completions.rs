//! `kmm completions SHELL` and `kmm man [DIR]`: shell completions and man pages generated from
//! the same clap definitions the parser uses, so they never fall behind a new verb or flag.
//!
//! Completions go to stdout (`kmm completions bash > /etc/bash_completion.d/kmm`); `kmm man`
//! prints `kmm(1)` or, given a folder, writes `kmm.1` and one `kmm-VERB.1` per verb there.

use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory as _, ValueEnum};

use crate::cli::args::Cli;
use crate::cli::output::Output;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write kmm.1 and one kmm-VERB.1 per verb into this folder instead of printing kmm(1).
    pub dir: Option<PathBuf>,
}

/// The completion script of `shell`.
pub fn completion_script(shell: CompletionShell) -> String {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
        CompletionShell::Elvish => Shell::Elvish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kmm", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

pub(in crate::cli) fn completions(args: &CompletionsArgs, out: Output) -> Result<i32> {
    let script = completion_script(args.shell);
    let message = format!("completions for {:?}", args.shell).to_lowercase();
    out.success(
        &message,
        script.trim_end(),
        &serde_json::json!({ "script": script }),
    );
    Ok(0)
}

fn render(command: clap::Command) -> Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .map_err(|error| Error::internal(format!("rendering a man page: {error}")))?;
    Ok(page)
}

pub(in crate::cli) fn man(args: &ManArgs, cwd: &Path, out: Output) -> Result<i32> {
    let mut command = Cli::command();
    command.build();
    let Some(dir) = &args.dir else {
        let page = String::from_utf8_lossy(&render(command)?).into_owned();
        out.success(
            "kmm(1)",
            page.trim_end(),
            &serde_json::json!({ "page": page }),
        );
        return Ok(0);
    };
    let dir = cwd.join(dir);
    fs_err::create_dir_all(&dir)
        .map_err(|error| Error::io(format!("creating `{}`", dir.display()), &error))?;
    let mut written = vec!["kmm.1".to_string()];
    crate::atomic_file::write(
        &dir.join("kmm.1"),
        &render(command.clone())?,
        "the man page",
    )?;
    for verb in command
        .get_subcommands()
        .filter(|verb| !verb.is_hide_set() && verb.get_name() != "help")
    {
        let name = format!("kmm-{}", verb.get_name());
        let page = render(verb.clone().name(name.clone()))?;
        crate::atomic_file::write(&dir.join(format!("{name}.1")), &page, "the man page")?;
        written.push(format!("{name}.1"));
    }
    let message = format!("Wrote {} man pages into {}", written.len(), dir.display());
    out.success(&message, if out.quiet { "" } else { &message }, &written);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_names_the_verbs() {
        for shell in CompletionShell::value_variants() {
            let script = completion_script(*shell);
            for verb in ["apply", "plan", "fleet"] {
                assert!(script.contains(verb), "{shell:?} lacks {verb}");
            }
        }
    }
}
