//! `kmm plan --diff`: the registry as it is and as `apply` would leave it, as a unified diff.
//!
//! The "after" registry is simulated purely: each `register` action's record is merged into the
//! existing one with the same function `apply` uses ([`super::merge_record`]), and each
//! `unregister` drops its record. The time `apply` would stamp on a new record is not known
//! yet, so it is the fixed [`INSTALLED_AT_PLACEHOLDER`], which keeps the diff stable under
//! re-runs. The text is the registry file's own (pretty JSON, ids sorted), so the diff shows the
//! exact lines that change.
//!
//! Edges: pure; the caller loads the registry.

use crate::registry::Registry;

use super::{Action, Plan};

/// What `installed_at` reads in the simulated registry for records apply will stamp.
pub const INSTALLED_AT_PLACEHOLDER: &str = "<set by apply>";

/// The registry after `plan` is applied to `before`.
pub fn registry_after(before: &Registry, plan: &Plan) -> Registry {
    let mut after = before.clone();
    for planned in &plan.actions {
        match &planned.action {
            Action::Register { model, record } => {
                let existing = after.models.remove(model);
                let merged =
                    super::merge_record(existing, record, INSTALLED_AT_PLACEHOLDER.to_string());
                after.models.insert(model.clone(), merged);
            }
            Action::Unregister { model } => {
                after.models.remove(model);
            }
            _ => {}
        }
    }
    after
}

fn without_mtimes(mut registry: Registry) -> Registry {
    for record in registry.models.values_mut() {
        for file in &mut record.files {
            file.mtime_ns = None;
        }
    }
    registry
}

/// The registry file's text for `registry` (as [`Registry::save`] writes it).
pub fn registry_text(registry: &Registry) -> String {
    let mut text = serde_json::to_string_pretty(&registry.models).unwrap_or_default();
    text.push('\n');
    text
}

/// The unified diff (3 lines of context) between the registry now and after `plan`; empty
/// when the registry would not change. Files' `mtime_ns` are left out on both sides: apply
/// stamps them from disk, and they are bookkeeping, not something to review.
pub fn registry_diff(before: &Registry, plan: &Plan) -> String {
    let after = without_mtimes(registry_after(before, plan));
    let before = without_mtimes(before.clone());
    let old = if before.models.is_empty() {
        String::new()
    } else {
        registry_text(&before)
    };
    let new = if after.models.is_empty() {
        String::new()
    } else {
        registry_text(&after)
    };
    if old == new {
        return String::new();
    }
    // Patience anchors on unique lines such as `"org/model": {`, so each record's changes stay
    // together instead of being matched against look-alike lines of a neighbouring record.
    similar::TextDiff::configure()
        .algorithm(similar::Algorithm::Patience)
        .diff_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header("a/model_registry.json", "b/model_registry.json")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Library;
    use crate::plan::{PlannedAction, RecordPlan, RecordPlanFile};
    use crate::upstream::FileHash;

    fn record_plan(id: &str, size: u64) -> RecordPlan {
        RecordPlan {
            model_id: id.to_string(),
            library: Library::Transformers,
            revision: "main".to_string(),
            commit: "c".repeat(40),
            install_path: format!("/srv/models/transformers/{id}"),
            files: vec![RecordPlanFile {
                path: "config.json".to_string(),
                size,
                hash: FileHash::GitSha1("a".repeat(40)),
            }],
            total_size: size,
            pinned: None,
            license_accepted: None,
            selection: Default::default(),
            partial: false,
        }
    }

    fn plan(actions: Vec<Action>) -> Plan {
        Plan {
            models_dir: "/srv/models".into(),
            models: vec![],
            notes: vec![],
            strays: vec![],
            actions: actions
                .into_iter()
                .map(|action| PlannedAction {
                    id: action.id(),
                    depends_on: vec![],
                    action,
                })
                .collect(),
            summary: Default::default(),
        }
    }

    #[test]
    fn after_merges_registers_like_apply_and_drops_unregistered() {
        let mut before = Registry::default();
        let kept = crate::plan::merge_record(None, &record_plan("org/kept", 2), "T0".into());
        let gone = crate::plan::merge_record(None, &record_plan("org/gone", 2), "T0".into());
        before.models.insert("org/kept".into(), kept);
        before.models.insert("org/gone".into(), gone);
        let mut pinned = record_plan("org/kept", 2);
        pinned.pinned = Some(true);
        let plan = plan(vec![
            Action::Register {
                model: "org/kept".into(),
                record: pinned,
            },
            Action::Register {
                model: "org/new".into(),
                record: record_plan("org/new", 5),
            },
            Action::Unregister {
                model: "org/gone".into(),
            },
        ]);
        let after = registry_after(&before, &plan);
        let ids: Vec<&str> = after.models.keys().map(String::as_str).collect();
        assert_eq!(ids, ["org/kept", "org/new"]);
        // Same bytes: apply keeps installed_at; a new record gets the placeholder.
        assert_eq!(after.models["org/kept"].installed_at.as_deref(), Some("T0"));
        assert_eq!(after.models["org/kept"].pinned, Some(true));
        assert_eq!(
            after.models["org/new"].installed_at.as_deref(),
            Some(INSTALLED_AT_PLACEHOLDER)
        );

        let diff = registry_diff(&before, &plan);
        assert!(diff.starts_with("--- a/model_registry.json\n+++ b/model_registry.json\n"));
        assert!(diff.contains("-  \"org/gone\": {"), "{diff}");
        assert!(diff.contains("+  \"org/new\": {"), "{diff}");
        assert!(diff.contains("+    \"pinned\": true,"), "{diff}");
        assert_eq!(registry_diff(&before, &self::plan(vec![])), "");
    }
}
