//! Machine-facing verbs: `kmm compatibility`, `kmm gc`, `kmm ensure`, `kmm path`, and the
//! hooks `plan`/`apply` call for compatibility notes, quota evictions and baselines.
//!
//! Each verb is thin: arguments -> the library (`compat`, `gc`, `baselines`, `plan`, `apply`)
//! -> output. Kept apart from `cli/commands/` so parallel work on other verbs merges cleanly.

pub mod compatibility;
pub mod ensure;
pub mod gc;
pub mod path;

use super::settings::EnvLookup;

/// The Python that runs baseline work: `--python`, else `KMM_PYTHON`, else `python3`.
pub fn python(flag: Option<&str>, env: EnvLookup<'_>) -> String {
    flag.map(str::to_string)
        .or_else(|| env("KMM_PYTHON").filter(|p| !p.trim().is_empty()))
        .unwrap_or_else(|| "python3".to_string())
}
