//! Which models to evict to meet a quota or free a number of bytes: least recently used first.
//!
//! Order: a model's last use is its registry `last_accessed` (set when kmm installs it and by
//! `kmm path --model ID`), else the newest access time of its files ([`newest_atime`]), else
//! "never" (evicted first). Undeclared models go before declared ones; declared models are
//! candidates only when the user says so (`--evict-declared`); pinned models never are. When the
//! target cannot be met without protected models, the answer is `E_QUOTA` with the numbers and
//! nothing is selected.
//!
//! Edges: [`select`] is pure. [`newest_atime`] reads file metadata (never writes). Removing the
//! selected models is `apply`'s job, through `RemoveModel` + `Unregister` actions
//! ([`crate::plan::compute_with_evictions`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::plan::{ChangeKind, Plan, format_bytes};
use crate::registry::Registry;

/// One registered model as gc sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub bytes: u64,
    /// Last use (see the module doc); `None` = never recorded.
    pub last_used: Option<SystemTime>,
    pub pinned: bool,
    pub declared: bool,
}

/// A model chosen for eviction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eviction {
    pub id: String,
    pub bytes: u64,
    /// RFC 3339, or `None` when never recorded.
    pub last_used: Option<String>,
    pub declared: bool,
}

/// What [`select`] decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selection {
    pub evict: Vec<Eviction>,
    pub bytes_freed: u64,
}

/// Picks models to evict so that at least `need` bytes are freed, least recently used first,
/// undeclared before declared (declared only with `evict_declared`), pinned never.
/// `need == 0` selects nothing. `what` names the goal in the error ("quota_gb = 1.5").
pub fn select(
    candidates: &[Candidate],
    need: u64,
    evict_declared: bool,
    what: &str,
) -> Result<Selection> {
    let mut selection = Selection::default();
    if need == 0 {
        return Ok(selection);
    }
    let mut order: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.pinned && (evict_declared || !c.declared))
        .collect();
    // Undeclared first; then oldest use first (never used = oldest); ties by id.
    order.sort_by(|a, b| (a.declared, a.last_used, &a.id).cmp(&(b.declared, b.last_used, &b.id)));
    for candidate in order {
        if selection.bytes_freed >= need {
            break;
        }
        selection.bytes_freed += candidate.bytes;
        selection.evict.push(Eviction {
            id: candidate.id.clone(),
            bytes: candidate.bytes,
            last_used: candidate
                .last_used
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            declared: candidate.declared,
        });
    }
    if selection.bytes_freed < need {
        let sum = |f: &dyn Fn(&Candidate) -> bool| -> u64 {
            candidates.iter().filter(|c| f(c)).map(|c| c.bytes).sum()
        };
        let pinned = sum(&|c| c.pinned);
        let declared = sum(&|c| !c.pinned && c.declared);
        let evictable = selection.bytes_freed;
        let mut error = Error::quota(format!(
            "{what} needs {} freed, but only {} can be evicted; nothing was removed",
            format_bytes(need),
            format_bytes(evictable)
        ))
        .caused_by(format!("pinned models hold {}", format_bytes(pinned)));
        error = if evict_declared {
            error.caused_by(format!(
                "declared models hold {} (included)",
                format_bytes(declared)
            ))
        } else {
            error.caused_by(format!(
                "declared models hold {} (kept; --evict-declared allows evicting them)",
                format_bytes(declared)
            ))
        };
        return Err(
            error.with_hint("raise the quota, unpin or undeclare models, or pass --evict-declared")
        );
    }
    Ok(selection)
}

/// Bytes to free so that `store_bytes` fits in `quota_bytes`.
pub fn excess(store_bytes: u64, quota_bytes: u64) -> u64 {
    store_bytes.saturating_sub(quota_bytes)
}

/// GB (10^9 bytes, fractions allowed) -> bytes.
pub fn gb_to_bytes(gb: f64) -> u64 {
    (gb * 1e9).round() as u64
}

/// Parses a registry `last_accessed` / `installed_at` timestamp.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(text).ok())
}

/// The newest access time of any regular file under `dir` (symlinks not followed), `None` when
/// the folder is missing or empty.
pub fn newest_atime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs_err::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file()
                && let Ok(atime) = meta.accessed()
            {
                newest = newest.max(Some(atime));
            }
        }
    }
    newest
}

/// The registered models gc may consider: all except those `plan` already removes. A
/// model's last use is its `last_accessed`, else the newest atime of its files.
pub fn candidates(
    root: &Path,
    registry: &Registry,
    desired: &[DesiredModel],
    plan: &Plan,
) -> Vec<Candidate> {
    let removed: BTreeSet<&str> = plan
        .models
        .iter()
        .filter(|m| m.change == ChangeKind::Remove)
        .map(|m| m.id.as_str())
        .collect();
    registry
        .models
        .iter()
        .filter(|(id, _)| !removed.contains(id.as_str()))
        .map(|(id, record)| {
            let declared = desired.iter().find(|m| &m.id == id);
            let last_used = record
                .last_accessed
                .as_deref()
                .and_then(parse_time)
                .or_else(|| {
                    crate::desired::recorded_install_dir(root, record)
                        .and_then(|dir| newest_atime(&root.join(dir)))
                });
            Candidate {
                id: id.clone(),
                bytes: declared.map_or(record.total_size, |m| m.files.iter().map(|f| f.size).sum()),
                last_used,
                pinned: record.pinned.unwrap_or(false)
                    || declared.is_some_and(|m| m.pinned == Some(true)),
                declared: declared.is_some(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::time::Duration;

    fn at(secs: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs))
    }

    fn c(
        id: &str,
        bytes: u64,
        last: Option<SystemTime>,
        pinned: bool,
        declared: bool,
    ) -> Candidate {
        Candidate {
            id: id.to_string(),
            bytes,
            last_used: last,
            pinned,
            declared,
        }
    }

    fn ids(selection: &Selection) -> Vec<&str> {
        selection.evict.iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn least_recently_used_goes_first_and_only_as_many_as_needed() {
        let models = [
            c("new", 100, at(300), false, false),
            c("old", 100, at(100), false, false),
            c("mid", 100, at(200), false, false),
            c("never", 100, None, false, false),
        ];
        assert_eq!(
            ids(&select(&models, 150, false, "t").unwrap()),
            ["never", "old"]
        );
        assert_eq!(
            select(&models, 0, false, "t").unwrap(),
            Selection::default()
        );
        let all = select(&models, 400, false, "t").unwrap();
        assert_eq!(ids(&all), ["never", "old", "mid", "new"]);
        assert_eq!(all.bytes_freed, 400);
    }

    #[test]
    fn pinned_never_and_declared_only_when_allowed_and_last() {
        let models = [
            c("pinned-old", 500, at(0), true, false),
            c("declared-old", 100, at(1), false, true),
            c("undeclared-new", 100, at(999), false, false),
        ];
        assert_eq!(
            ids(&select(&models, 100, false, "t").unwrap()),
            ["undeclared-new"]
        );
        let error = select(&models, 150, false, "quota_gb = 1").unwrap_err();
        assert_eq!(error.code(), ErrorCode::Quota);
        assert!(
            error.message().contains("150 B freed, but only 100 B"),
            "{error}"
        );
        assert!(
            error
                .causes()
                .iter()
                .any(|c| c.contains("pinned models hold 500 B"))
        );
        assert!(
            error
                .causes()
                .iter()
                .any(|c| c.contains("--evict-declared"))
        );
        assert_eq!(
            ids(&select(&models, 150, true, "t").unwrap()),
            ["undeclared-new", "declared-old"]
        );
        assert!(select(&models, 201, true, "t").is_err());
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(gb_to_bytes(1.5), 1_500_000_000);
        assert_eq!(gb_to_bytes(0.000_001), 1_000);
        assert_eq!(excess(10, 4), 6);
        assert_eq!(excess(3, 4), 0);
        let t = parse_time("2025-09-02T00:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2025-09-02T00:00:00Z"
        );
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn newest_atime_walks_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest_atime(&dir.path().join("missing")), None);
        fs_err::create_dir_all(dir.path().join("a/b")).unwrap();
        fs_err::write(dir.path().join("a/b/f"), "x").unwrap();
        let atime = fs_err::metadata(dir.path().join("a/b/f"))
            .unwrap()
            .accessed()
            .unwrap();
        assert_eq!(newest_atime(dir.path()), Some(atime));
    }
}
