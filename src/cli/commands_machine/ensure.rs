//! `kmm ensure [--distilbert] [--spacy] [--basic-cls] [--python PATH]`: installs the baselines
//! named by the flags, else those `[baselines]` in the manifest asks for. distilbert goes
//! through the normal engine (a narrower desired state: just that model, pinned); the Python
//! baselines through [`crate::baselines`]. `kmm plan` notes the Python baselines `kmm apply`
//! will produce; `kmm apply` produces them after the models.

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::apply::{self, ApplyContext};
use crate::baselines::{self, BaselineResult};
use crate::error::{Error, Result};
use crate::plan::{ChangeKind, Note, Plan};
use crate::registry::Registry;
use crate::resolve::{self, ResolveContext};

use super::super::args::GlobalArgs;
use super::super::output::Output;
use super::super::progress::ProgressReporter;
use super::super::reconcile::{PlanOptions, Session};
use super::super::settings::EnvLookup;

#[derive(Debug, Clone, Args)]
pub struct EnsureArgs {
    /// The distilbert-base-uncased snapshot at models/distilbert-base-uncased/, pinned.
    #[arg(long)]
    pub distilbert: bool,
    /// The spaCy en_core_web_trf pipeline in the Python environment (skipped without spaCy).
    #[arg(long)]
    pub spacy: bool,
    /// models/basic_cls/{classifier,vectorizer}.joblib (skipped without scikit-learn/joblib).
    #[arg(long)]
    pub basic_cls: bool,
    /// The Python for spacy and basic-cls [default: $KMM_PYTHON, else python3].
    #[arg(long, value_name = "PATH")]
    pub python: Option<String>,
}

#[derive(Serialize)]
struct EnsureOutput {
    baselines: Vec<BaselineResult>,
}

/// `kmm ensure`.
pub async fn run(
    global: &GlobalArgs,
    args: &EnsureArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = Session::open_lenient(global, env, cwd).await?;
    let wanted = session.manifest.baselines.clone();
    let any_flag = args.distilbert || args.spacy || args.basic_cls;
    let (distilbert, spacy, basic_cls) = if any_flag {
        (args.distilbert, args.spacy, args.basic_cls)
    } else {
        (wanted.distilbert, wanted.spacy, wanted.basic_cls)
    };
    if !(distilbert || spacy || basic_cls) {
        return Err(Error::args("nothing to ensure").with_hint(
            "pass --distilbert, --spacy or --basic-cls, or set them in [baselines] of kari-models.toml",
        ));
    }
    let python = super::python(args.python.as_deref(), env);
    let mut results = Vec::new();

    let desired = if distilbert {
        let registry = Registry::load(&session.paths.registry_file())?;
        let spec = session
            .manifest
            .models
            .get(baselines::DISTILBERT_ID)
            .cloned()
            .unwrap_or_else(baselines::distilbert_spec);
        let mut spec = spec;
        spec.pinned = Some(true);
        vec![
            resolve::resolve_model(
                &spec,
                &ResolveContext {
                    hub: session.hub.as_ref(),
                    has_token: session.settings.token.is_some(),
                    registry: &registry,
                    concurrency: 1,
                    hf_cache: Some(&session.hf_cache),
                },
            )
            .await?,
        ]
    } else {
        Vec::new()
    };
    let _lock = session.lock_store(out)?;
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
            let reporter = ProgressReporter::with_json(out, session.settings.progress_json);
            let report = apply::apply(
                &narrow,
                &ApplyContext {
                    paths: &session.paths,
                    hub: session.hub.as_ref(),
                    max_workers: session.settings.max_workers,
                    reporter: &reporter,
                },
            )
            .await;
            reporter.finish();
            report?;
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
    if spacy {
        results.push(baselines::ensure_spacy(&python)?);
    }
    if basic_cls {
        results.push(baselines::ensure_basic_cls(&session.paths, &python)?);
    }
    let text: String = results
        .iter()
        .map(|r| format!("{}: {} ({})\n", r.name, r.status, r.message))
        .collect();
    let skipped = results.iter().filter(|r| r.status == "skipped").count();
    let message = format!(
        "{} baseline(s) ensured, {skipped} skipped.",
        results.len() - skipped
    );
    out.success(
        &message,
        &format!("{text}{message}"),
        &EnsureOutput { baselines: results },
    );
    Ok(0)
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
pub fn after_apply(session: &Session, env: EnvLookup<'_>, out: Output) -> Result<()> {
    let wanted = &session.manifest.baselines;
    if !(wanted.spacy || wanted.basic_cls) {
        return Ok(());
    }
    let python = super::python(None, env);
    let mut results = Vec::new();
    if wanted.spacy {
        results.push(baselines::ensure_spacy(&python)?);
    }
    if wanted.basic_cls {
        results.push(baselines::ensure_basic_cls(&session.paths, &python)?);
    }
    for result in results {
        out.status(&format!(
            "baseline {}: {} ({})",
            result.name, result.status, result.message
        ));
    }
    Ok(())
}
