//! The registry record a planned record becomes: the plan's fields over the existing record,
//! keeping what kmm does not own. `apply` writes it; `plan --diff` shows it before apply runs,
//! so both take it from here.
//!
//! Edges: pure; plan types in, a registry record out.

use std::collections::BTreeMap;

use crate::registry::{Record, RecordFile};

use super::RecordPlan;

/// The new record: the plan's fields over the existing record, keeping what kmm does not
/// own (unknown fields, per-file unknown fields, `last_accessed`) and, when the installed bytes
/// did not change (wherever they now live), `installed_at`.
pub fn merge_record(existing: Option<Record>, plan: &RecordPlan, now: String) -> Record {
    let mut old_files: BTreeMap<String, RecordFile> = existing
        .as_ref()
        .map(|r| {
            r.files
                .iter()
                .map(|f| (f.path.clone(), f.clone()))
                .collect()
        })
        .unwrap_or_default();
    let files: Vec<RecordFile> = plan
        .files
        .iter()
        .map(|f| {
            let old = old_files.remove(&f.path);
            // The recorded mtime stays for the same bytes; `register` refreshes it from disk.
            let mtime_ns = old
                .as_ref()
                .filter(|old| old.size == f.size && old.hash().as_ref() == Some(&f.hash))
                .and_then(|old| old.mtime_ns);
            RecordFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.hash.is_lfs().then(|| f.hash.hex().to_string()),
                git_sha1: (!f.hash.is_lfs()).then(|| f.hash.hex().to_string()),
                mtime_ns,
                extra: old.map(|old| old.extra).unwrap_or_default(),
            }
        })
        .collect();
    // A move (`kmm migrate`, a new layout) and the hashes added to an older tool's record (the
    // planner verified those bytes before keeping them) are not a new install.
    let same_bytes = existing.as_ref().is_some_and(|old| {
        old.files.len() == files.len()
            && old.files.iter().zip(&files).all(|(a, b)| {
                let unhashed = a.sha256.is_none() && a.git_sha1.is_none();
                a.path == b.path
                    && a.size == b.size
                    && (unhashed || (a.sha256 == b.sha256 && a.git_sha1 == b.git_sha1))
            })
    });
    let mut record = existing.unwrap_or_default();
    if !(same_bytes && record.installed_at.is_some()) {
        // A fresh install counts as a use, so gc does not evict what was just installed.
        record.last_accessed = Some(now.clone());
        record.installed_at = Some(now);
    }
    record.model_id = plan.model_id.clone();
    record.library = plan.library.as_str().to_string();
    record.revision = Some(plan.revision.clone());
    record.install_path = plan.install_path.clone();
    record.files = files;
    record.total_size = plan.total_size;
    record.commit = Some(plan.commit.clone());
    record.pinned = plan.pinned;
    record.license_accepted = plan.license_accepted.clone();
    record.selection = (!plan.partial).then(|| plan.selection.clone());
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Library;
    use crate::plan::RecordPlanFile;
    use crate::upstream::FileHash;

    fn record_plan() -> RecordPlan {
        RecordPlan {
            model_id: "org/m".to_string(),
            library: Library::Transformers,
            revision: "main".to_string(),
            commit: "c".repeat(40),
            install_path: "/srv/models/transformers/org/m".to_string(),
            files: vec![RecordPlanFile {
                path: "config.json".to_string(),
                size: 2,
                hash: FileHash::GitSha1("a".repeat(40)),
            }],
            total_size: 2,
            pinned: Some(true),
            license_accepted: None,
            selection: Default::default(),
            partial: false,
        }
    }

    #[test]
    fn a_new_record_gets_the_time_and_the_hashes() {
        let record = merge_record(None, &record_plan(), "2026-01-01T00:00:00Z".to_string());
        assert_eq!(record.installed_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(record.library, "transformers");
        assert_eq!(record.files[0].git_sha1.as_deref(), Some(&*"a".repeat(40)));
        assert_eq!(record.files[0].sha256, None);
        assert_eq!(record.commit.as_deref(), Some(&*"c".repeat(40)));
    }

    #[test]
    fn metadata_changes_keep_installed_at_and_unknown_fields() {
        let mut old = merge_record(None, &record_plan(), "2025-09-01T12:34:56Z".to_string());
        old.pinned = None;
        old.extra
            .insert("owner_note".into(), serde_json::json!("keep me"));
        old.files[0]
            .extra
            .insert("downloads".into(), serde_json::json!(3));
        let merged = merge_record(
            Some(old),
            &record_plan(),
            "2026-01-01T00:00:00Z".to_string(),
        );
        assert_eq!(merged.installed_at.as_deref(), Some("2025-09-01T12:34:56Z"));
        assert_eq!(merged.pinned, Some(true));
        assert_eq!(merged.extra["owner_note"], "keep me");
        assert_eq!(merged.files[0].extra["downloads"], 3);

        let mut changed = record_plan();
        changed.files[0].hash = FileHash::GitSha1("b".repeat(40));
        let merged = merge_record(Some(merged), &changed, "2026-01-01T00:00:00Z".to_string());
        assert_eq!(merged.installed_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(merged.extra["owner_note"], "keep me");
    }
}
