//! The layering the architecture map in `src/lib.rs` promises, checked on the source: the
//! pipeline in `src/ops/` never reaches into the CLI, the planner does no I/O, and nothing
//! below the CLI prints.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs_err::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Code lines of `path` before its `#[cfg(test)]` module, comments dropped.
fn code_of(path: &Path) -> String {
    let text = fs_err::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn offenders(dir: &str, skip: &[&str], forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut found = Vec::new();
    for file in rust_files(&root) {
        let name = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip.contains(&name.as_str()) || name.starts_with("tests") {
            continue;
        }
        let code = code_of(&file);
        for needle in forbidden {
            if code.contains(needle) {
                found.push(format!("{dir}/{name}: {needle}"));
            }
        }
    }
    assert!(!rust_files(&root).is_empty(), "no sources under {dir}");
    found
}

#[test]
fn the_pipeline_never_imports_the_cli() {
    let found = offenders("src/ops", &[], &["crate::cli", "super::super::cli"]);
    assert!(found.is_empty(), "{found:#?}");
}

/// The shared tier is a client of a store, below the pipeline: it never reaches up into the
/// operations, the engine or the CLI (the engine calls it, not the other way round).
#[test]
fn the_shared_tier_stays_below_the_pipeline() {
    let found = offenders(
        "src/shared",
        &[],
        &["crate::cli", "crate::ops", "crate::apply", "crate::plan"],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_planner_does_no_io_and_nothing_below_the_cli_prints() {
    // `file.rs` is the saved plan's reader and writer, the one part of `plan` with I/O.
    let io = [
        "std::fs",
        "fs_err",
        "std::env",
        "SystemTime::now",
        "crate::store::hash_files",
    ];
    let found = offenders("src/plan", &["file.rs"], &io);
    assert!(found.is_empty(), "{found:#?}");
    let mut printing = Vec::new();
    for dir in ["src/ops", "src/plan", "src/apply", "src/hub", "src/shared"] {
        printing.extend(offenders(dir, &[], &["println!", "eprintln!"]));
    }
    assert!(printing.is_empty(), "{printing:#?}");
}
