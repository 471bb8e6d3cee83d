//! The plan as text for a terminal or a pull-request comment, Terraform-like.
//!
//! ```text
//! + org/model  (create, main @ 3f2a9c1)  -> models/llama-cpp/org/model
//!     + model.Q4_K_M.gguf   668.8 MB
//! ~ acme/tiny-bert  (update, main 1a2b3c4 -> 9f8e7d6)
//!     ~ model.safetensors   12.0 MB  (changed upstream)
//!     - old.bin                        (no longer selected)
//! - old/model  (remove, prune)
//!
//! Plan: 1 to add, 1 to change, 1 to remove, 680.8 MB to download in 2 files.
//! ```
//!
//! Sizes are decimal (kB = 1000 bytes), as the Hub shows them. No colour: the CLI may add it.
//!
//! Edges: pure string building.

use std::fmt::Write as _;
use std::path::Path;

use super::{ChangeKind, FileChange, FileChangeKind, ModelChange, Plan, short_commit};

/// `668.8 MB`: decimal units (B, kB, MB, GB, TB), one decimal above bytes.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ];
    if bytes < 1_000 {
        return format!("{bytes} B");
    }
    for (unit, scale) in UNITS {
        // Round to tenths first so 999_999 bytes reads `1.0 MB`, not `1000.0 kB`.
        let tenths = (bytes as u128 * 10 + scale as u128 / 2) / scale as u128;
        if tenths >= 10 {
            return format!("{}.{} {unit}", tenths / 10, tenths % 10);
        }
    }
    format!("{:.1} kB", bytes as f64 / 1_000.0)
}

/// Renders the plan for a terminal (no colour codes; the CLI adds none yet).
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let shown = |dir: &Path| plan.shown_dir(dir);
    for model in &plan.models {
        render_model(&mut out, model, &shown);
    }
    for stray in &plan.strays {
        let _ = writeln!(out, "- {}  (leftover, delete)", shown(stray));
    }
    if !plan.notes.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        for note in &plan.notes {
            let _ = writeln!(out, "# {}: {}", note.model, note.message);
        }
    }
    if plan.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("No changes. The models directory matches kari-models.toml.\n");
        return out;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&summary_line(plan));
    out.push('\n');
    if let Some(sources) = &plan.summary.byte_sources {
        let _ = writeln!(out, "Bytes {}.", sources.describe());
    }
    out
}

/// `Plan: 1 to add, 0 to change, 0 to remove, 12.0 MB to download in 3 files.`
pub fn summary_line(plan: &Plan) -> String {
    let s = &plan.summary;
    let mut line = format!(
        "Plan: {} to add, {} to change, {} to remove, ",
        s.to_add, s.to_change, s.to_remove
    );
    match s.download_files {
        0 => line.push_str("nothing to download"),
        1 => line.push_str(&format!(
            "{} to download in 1 file",
            format_bytes(s.download_bytes)
        )),
        n => line.push_str(&format!(
            "{} to download in {n} files",
            format_bytes(s.download_bytes)
        )),
    }
    if s.copy_bytes > 0 {
        line.push_str(&format!(
            ", {} copied between model folders",
            format_bytes(s.copy_bytes)
        ));
    }
    if s.free_bytes > 0 {
        line.push_str(&format!(", {} freed", format_bytes(s.free_bytes)));
    }
    match s.strays {
        0 => {}
        1 => line.push_str(", 1 leftover to delete"),
        n => line.push_str(&format!(", {n} leftovers to delete")),
    }
    line.push('.');
    line
}

pub(super) fn render_model(out: &mut String, model: &ModelChange, shown: &dyn Fn(&Path) -> String) {
    let revision = model.revision.as_deref().unwrap_or("?");
    let commit = |c: &Option<String>| c.as_deref().map(short_commit).unwrap_or("?").to_string();
    let header = match model.change {
        ChangeKind::Unchanged => return,
        ChangeKind::Create => format!(
            "+ {}  (create, {revision} @ {})",
            model.id,
            commit(&model.to_commit)
        ),
        ChangeKind::Update if model.from_commit != model.to_commit => format!(
            "~ {}  (update, {revision} {} -> {})",
            model.id,
            commit(&model.from_commit),
            commit(&model.to_commit)
        ),
        ChangeKind::Update => format!(
            "~ {}  (update, {revision} @ {})",
            model.id,
            commit(&model.to_commit)
        ),
        ChangeKind::Remove => format!("- {}  (remove, {})", model.id, model.reasons.join(", ")),
    };
    out.push_str(&header);
    let show_dir = model.change == ChangeKind::Create || model.previous_install_dir.is_some();
    if let (true, Some(dir)) = (show_dir, &model.install_dir) {
        let _ = write!(out, "  -> {}", shown(dir));
    }
    if model.change == ChangeKind::Remove
        && let Some(dir) = &model.install_dir
    {
        let _ = write!(out, "  {}", shown(dir));
        if model.free_bytes > 0 {
            let _ = write!(out, ", frees {}", format_bytes(model.free_bytes));
        }
    }
    out.push('\n');
    if let Some(sources) = &model.byte_sources {
        let _ = writeln!(out, "    # bytes {}", sources.describe());
    }
    if model.change == ChangeKind::Update {
        for reason in &model.reasons {
            let _ = writeln!(out, "    # {reason}");
        }
    }
    render_files(out, &model.files);
    if model.change == ChangeKind::Update && model.kept_files > 0 {
        let files = if model.kept_files == 1 {
            "file"
        } else {
            "files"
        };
        let _ = writeln!(out, "    = {} unchanged {files} kept", model.kept_files);
    }
}

fn render_files(out: &mut String, files: &[FileChange]) {
    let sizes: Vec<String> = files
        .iter()
        .map(|f| match f.kind {
            FileChangeKind::Remove => String::new(),
            _ => format_bytes(f.size),
        })
        .collect();
    let path_width = files
        .iter()
        .map(|f| f.path.chars().count())
        .max()
        .unwrap_or(0);
    let size_width = sizes.iter().map(String::len).max().unwrap_or(0);
    for (file, size) in files.iter().zip(&sizes) {
        let sign = match file.kind {
            FileChangeKind::Add => '+',
            FileChangeKind::Replace => '~',
            FileChangeKind::Remove => '-',
            FileChangeKind::Keep => '=',
        };
        let mut line = format!(
            "    {sign} {:<path_width$}   {size:>size_width$}",
            file.path
        );
        if let Some(reason) = &file.reason {
            let _ = write!(line, "  ({reason})");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
