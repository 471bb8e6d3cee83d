//! The baselines (`[baselines]` of the manifest, `kmm ensure`): distilbert through the normal
//! engine (a narrower desired state: just that model, pinned), the Python baselines (spaCy,
//! the basic classifier) through [`crate::baselines`]. `kmm plan` notes the Python baselines
//! that `kmm apply` will produce; `kmm apply` produces them after the models.
//!
//! Edges: writes through [`crate::apply`] (distilbert) and [`crate::baselines`] (under the
//! store lock); messages go to the caller's [`Reporter`].

use crate::baselines::{self, BaselineResult};
use crate::error::Result;
use crate::plan::{ChangeKind, Note, Plan};
use crate::registry::Registry;

use super::session::Session;
use super::settings::{self, EnvLookup};
use super::steps::PlanOptions;
use super::{Reporter, checks};

/// Which baselines `kmm ensure` installs, and with which Python.
#[derive(Debug, Clone, Default)]
pub struct BaselineRequest {
    pub distilbert: bool,
    pub spacy: bool,
    pub basic_cls: bool,
    /// The Python interpreter for spaCy and the classifier.
    pub python: String,
}

/// `kmm ensure`: installs the baselines `request` names, one result each (`present`,
/// `installed` or `skipped`); failures are errors.
pub async fn ensure_baselines(
    session: &Session,
    request: &BaselineRequest,
    reporter: &dyn Reporter,
) -> Result<Vec<BaselineResult>> {
    let mut results = Vec::new();
    let desired = if request.distilbert {
        let registry = Registry::load(&session.paths.registry_file())?;
        let mut spec = session
            .manifest
            .models
            .get(baselines::DISTILBERT_ID)
            .cloned()
            .unwrap_or_else(baselines::distilbert_spec);
        spec.pinned = Some(true);
        vec![session.resolve_one(&spec, &registry).await?]
    } else {
        Vec::new()
    };
    let _lock = session.lock_store(reporter)?;
    if let Some(model) = desired.first() {
        // Only this model is desired here: other models are left alone (no prune).
        let mut narrow = session.plan_with(
            &desired,
            PlanOptions {
                evict_declared: false,
                only_desired: true,
                ..Default::default()
            },
        )?;
        narrow.notes.clear();
        narrow.strays.clear();
        narrow
            .actions
            .retain(|a| !matches!(a.action, crate::plan::Action::DeleteStray { .. }));
        let change = narrow
            .models
            .iter()
            .find(|m| m.id == model.id)
            .map(|m| m.change);
        if !narrow.is_empty() {
            let sources = crate::apply::FetchSources::default();
            checks::check_free_disk(
                &session.paths,
                crate::apply::disk_bytes_needed(&narrow, &session.paths, &sources),
            )?;
            session.run_apply(&narrow, &sources, reporter).await?;
        }
        crate::durability::settle(&session.paths, &crate::durability::hashes_of(&desired))?;
        let dir = session.paths.root().join(&model.install_dir);
        results.push(BaselineResult {
            name: "distilbert".to_string(),
            status: if matches!(change, Some(ChangeKind::Unchanged)) {
                "present"
            } else {
                "installed"
            }
            .to_string(),
            message: format!("{} at {} (pinned)", model.id, dir.display()),
        });
    }
    if request.spacy {
        results.push(baselines::ensure_spacy(&request.python)?);
    }
    if request.basic_cls {
        results.push(baselines::ensure_basic_cls(
            &session.paths,
            &request.python,
        )?);
    }
    Ok(results)
}

/// Notes in the plan for the Python baselines `[baselines]` asks for and `kmm apply` would
/// produce (distilbert is a declared model of the plan already).
pub fn note_baselines(session: &Session, plan: &mut Plan) {
    let wanted = &session.manifest.baselines;
    if wanted.basic_cls && !baselines::basic_cls_present(&session.paths) {
        plan.notes.push(Note {
            model: "basic_cls".to_string(),
            message: "baseline missing: `kmm apply` (or `kmm ensure --basic-cls`) trains it into models/basic_cls/ with Python, if scikit-learn and joblib are installed".to_string(),
        });
    }
    if wanted.spacy {
        plan.notes.push(Note {
            model: "spacy".to_string(),
            message: format!(
                "baseline: `kmm apply` makes {} available to Python, if spaCy is installed",
                baselines::SPACY_PIPELINE
            ),
        });
    }
}

/// After `kmm apply`: produces the Python baselines `[baselines]` asks for (the caller holds
/// the store lock). Skips are reported as status lines, failures are errors.
pub(super) fn after_apply(
    session: &Session,
    env: EnvLookup<'_>,
    reporter: &dyn Reporter,
) -> Result<()> {
    let wanted = &session.manifest.baselines;
    if !(wanted.spacy || wanted.basic_cls) {
        return Ok(());
    }
    let python = settings::python(None, env);
    let mut results = Vec::new();
    if wanted.spacy {
        results.push(baselines::ensure_spacy(&python)?);
    }
    if wanted.basic_cls {
        results.push(baselines::ensure_basic_cls(&session.paths, &python)?);
    }
    for result in results {
        reporter.status(&format!(
            "baseline {}: {} ({})",
            result.name, result.status, result.message
        ));
    }
    Ok(())
}
