//! The plan as a pull-request comment (GitHub-flavoured markdown).
//!
//! ```text
//! <!-- kmm-plan -->
//! ### kmm plan
//!
//! **Plan: 1 to add, 1 to change, 0 to remove, 12.0 MB to download in 3 files.**
//!
//! > [!WARNING]
//! > - `acme/gated`: this change records its license as accepted by `you@example.com` (`llama3.2`)
//!
//! | | model | action | revision | download | freed |
//! | --- | --- | --- | --- | ---: | ---: |
//! | ~ | `acme/tiny-bert` | update | `main` `1a2b3c4` → `9f8e7d6` | 12.0 MB | 4.0 kB |
//!
//! <details><summary><code>acme/tiny-bert</code>: update, 1 file changes</summary>
//!
//! ```diff
//! ~ acme/tiny-bert  (update, main 1a2b3c4 -> 9f8e7d6)
//!     ~ model.safetensors   12.0 MB  (changed upstream)
//! ```
//!
//! </details>
//! ```
//!
//! Stable under re-runs, so a CI bot can update its comment in place (found by the first-line
//! marker): no timestamps, no absolute paths (folders are shown under the models directory's
//! name, as in the text rendering). Warnings come first: the plan's notes and whatever the
//! caller adds (license acceptances, quota).
//!
//! Edges: pure string building.

use std::fmt::Write as _;
use std::path::Path;

use super::render::{format_bytes, render_model, summary_line};
use super::{ChangeKind, ModelChange, Plan, short_commit, slash_path};

/// The HTML comment a bot looks for to update its comment in place.
pub const MARKER: &str = "<!-- kmm-plan -->";

/// Renders `plan` as a markdown comment; `warnings` are shown prominently before the table
/// (one bullet each, markdown allowed).
pub fn render_markdown(plan: &Plan, warnings: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{MARKER}\n### kmm plan\n");
    if plan.is_empty() {
        out.push_str("**No changes.** The models directory matches `kari-models.toml`.\n");
    } else {
        let _ = writeln!(out, "**{}**", summary_line(plan));
        if let Some(sources) = &plan.summary.byte_sources {
            let _ = writeln!(out, "\nBytes {}.", sources.describe());
        }
    }

    let mut all_warnings: Vec<String> = warnings.to_vec();
    all_warnings.extend(
        plan.notes
            .iter()
            .map(|note| format!("`{}`: {}", note.model, escape(&note.message))),
    );
    if !all_warnings.is_empty() {
        out.push_str("\n> [!WARNING]\n");
        for warning in &all_warnings {
            let _ = writeln!(out, "> - {warning}");
        }
    }

    let changed: Vec<&ModelChange> = plan
        .models
        .iter()
        .filter(|model| model.change != ChangeKind::Unchanged)
        .collect();
    if !changed.is_empty() || !plan.strays.is_empty() {
        out.push_str("\n| | model | action | revision | download | freed |\n");
        out.push_str("| --- | --- | --- | --- | ---: | ---: |\n");
        for model in &changed {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | {} | {} |",
                sign(model.change),
                model.id,
                action(model.change),
                revision_cell(model),
                bytes_cell(model.download_bytes),
                bytes_cell(model.free_bytes),
            );
        }
        for stray in &plan.strays {
            let _ = writeln!(
                out,
                "| - | `{}` | delete leftover | | | |",
                slash_path(stray)
            );
        }
    }
    let unchanged = plan.models.len() - changed.len();
    if unchanged > 0 {
        let models = if unchanged == 1 { "model" } else { "models" };
        let _ = writeln!(out, "\n{unchanged} {models} unchanged.");
    }

    let shown = |dir: &Path| plan.shown_dir(dir);
    for model in &changed {
        let mut body = String::new();
        render_model(&mut body, model, &shown);
        let files = model.files.len();
        let what = match model.change {
            ChangeKind::Remove => "remove".to_string(),
            change => format!(
                "{}, {files} {} {}",
                action(change),
                if files == 1 { "file" } else { "files" },
                match (change, files) {
                    (ChangeKind::Create, _) => "to add",
                    (_, 1) => "changes",
                    _ => "change",
                }
            ),
        };
        let _ = write!(
            out,
            "\n<details><summary><code>{}</code>: {what}</summary>\n\n```diff\n{body}```\n\n</details>\n",
            model.id
        );
    }
    out
}

fn sign(change: ChangeKind) -> &'static str {
    match change {
        ChangeKind::Create => "+",
        ChangeKind::Update => "~",
        ChangeKind::Remove => "-",
        ChangeKind::Unchanged => "=",
    }
}

fn action(change: ChangeKind) -> &'static str {
    match change {
        ChangeKind::Create => "create",
        ChangeKind::Update => "update",
        ChangeKind::Remove => "remove",
        ChangeKind::Unchanged => "none",
    }
}

fn revision_cell(model: &ModelChange) -> String {
    let revision = model
        .revision
        .as_deref()
        .map(|r| format!("`{}`", escape(r)))
        .unwrap_or_default();
    let commit = |c: &Option<String>| c.as_deref().map(|c| format!("`{}`", short_commit(c)));
    match (commit(&model.from_commit), commit(&model.to_commit)) {
        (Some(from), Some(to)) if from != to => format!("{revision} {from} → {to}"),
        (_, Some(to)) => format!("{revision} @ {to}"),
        (Some(from), None) => format!("{revision} @ {from}"),
        (None, None) => revision,
    }
}

fn bytes_cell(bytes: u64) -> String {
    if bytes == 0 {
        "–".to_string()
    } else {
        format_bytes(bytes)
    }
}

/// Keeps a table cell a cell: `|` and newlines would break the row.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FileChange, FileChangeKind, Note, Summary};

    fn change(id: &str, kind: ChangeKind) -> ModelChange {
        ModelChange {
            id: id.to_string(),
            change: kind,
            revision: Some("main".into()),
            from_commit: (kind != ChangeKind::Create).then(|| "a".repeat(40)),
            to_commit: (kind != ChangeKind::Remove).then(|| "b".repeat(40)),
            install_dir: Some(format!("transformers/{id}").into()),
            previous_install_dir: None,
            reasons: if kind == ChangeKind::Remove {
                vec!["prune".into()]
            } else {
                vec![]
            },
            files: vec![FileChange {
                path: "model.safetensors".into(),
                kind: FileChangeKind::Add,
                size: 2_000_000,
                reason: None,
            }],
            kept_files: 0,
            download_bytes: 2_000_000,
            copy_bytes: 0,
            byte_sources: None,
            free_bytes: 0,
        }
    }

    #[test]
    fn a_comment_with_warnings_table_and_details_and_no_absolute_paths() {
        let plan = Plan {
            models_dir: "/tmp/some/where/models".into(),
            models: vec![
                change("acme/a", ChangeKind::Create),
                change("acme/same", ChangeKind::Unchanged),
            ],
            notes: vec![Note {
                model: "old/x".into(),
                message: "kept | not declared".into(),
            }],
            strays: vec!["llama-cpp/x.gguf.incomplete".into()],
            actions: vec![crate::plan::PlannedAction {
                id: "delete-stray:llama-cpp/x.gguf.incomplete".into(),
                depends_on: vec![],
                action: crate::plan::Action::DeleteStray {
                    path: "llama-cpp/x.gguf.incomplete".into(),
                },
            }],
            summary: Summary {
                to_add: 1,
                download_files: 1,
                download_bytes: 2_000_000,
                strays: 1,
                ..Summary::default()
            },
        };
        let text = render_markdown(&plan, &["quota: close".to_string()]);
        assert!(text.starts_with(MARKER));
        assert!(!text.contains("/tmp/"), "{text}");
        insta::assert_snapshot!("markdown_unit", text);
        assert_eq!(text, render_markdown(&plan, &["quota: close".to_string()]));
    }
}
