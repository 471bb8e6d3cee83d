//! The compatibility check of `kmm compatibility` and of every model a plan creates
//! (`kmm plan` shows its warnings as notes; `kmm apply --force-compat` refuses them), over
//! [`crate::compat`]'s header reads and verdicts.
//!
//! Edges: reads file headers from the hub (ranged requests) and the machine's facts
//! ([`crate::sys`]); writes nothing.

use futures_util::StreamExt as _;

use crate::compat::{self, Report};
use crate::desired::DesiredModel;
use crate::error::{Error, ErrorCode, Result};
use crate::plan::{ChangeKind, Note, Plan};
use crate::registry::Registry;

use super::session::Session;

/// `kmm compatibility`: whether this machine can run `id` at `revision` (the manifest's
/// declaration of `id` otherwise), from its file headers. Needs the hub (`E_NET` offline).
pub async fn check_model(session: &Session, id: &str, revision: Option<&str>) -> Result<Report> {
    let Some(hub) = session.hub.as_ref() else {
        return Err(Error::net(
            "offline: kmm compatibility reads the model's file headers from the hub",
        )
        .with_hint("drop --offline (and unset HF_HUB_OFFLINE)"));
    };
    let spec = session.declared_spec(id, revision)?;
    let registry = Registry::load(&session.paths.registry_file())?;
    let desired = session.resolve_one(&spec, &registry).await?;
    let facts = compat::inspect(hub, &desired).await?;
    let machine = crate::sys::machine_facts(session.paths.root());
    Ok(compat::check(&machine, facts))
}

/// Checks every model `plan` creates and adds its warnings to the plan's notes. With `force`, a
/// warning (or a model that cannot be checked) is `E_COMPAT`, before anything is downloaded.
/// Without `hub` (offline, or `--frozen`, which asks the hub nothing), nothing can be read: a
/// note says so and no error is raised.
pub async fn check_plan(
    session: &Session,
    hub: Option<&crate::hub::HubClient>,
    desired: &[DesiredModel],
    plan: &mut Plan,
    force: bool,
) -> Result<()> {
    let creates: Vec<&DesiredModel> = plan
        .models
        .iter()
        .filter(|change| change.change == ChangeKind::Create)
        .filter_map(|change| desired.iter().find(|m| m.id == change.id))
        .collect();
    if creates.is_empty() {
        return Ok(());
    }
    let Some(hub) = hub else {
        let why = if session.hub.is_none() {
            "offline"
        } else {
            "--frozen asks the hub nothing"
        };
        for model in creates {
            plan.notes.push(Note {
                model: model.id.clone(),
                message: format!("compatibility not checked ({why})"),
            });
        }
        sort_notes(plan);
        return Ok(());
    };
    let machine = crate::sys::machine_facts(session.paths.root());
    // Header reads of several models at once, as many as downloads would run.
    let inspected: Vec<Result<compat::ModelFacts>> = futures_util::stream::iter(&creates)
        .map(|model| compat::inspect(hub, model))
        .buffered(session.settings.max_workers.max(1))
        .collect()
        .await;
    let mut refused = None;
    for (model, result) in creates.iter().zip(inspected) {
        match result {
            Ok(facts) => {
                let report = compat::check(&machine, facts);
                for warning in &report.warnings {
                    plan.notes.push(Note {
                        model: model.id.clone(),
                        message: format!(
                            "compatibility: {} (recommendation: {})",
                            warning.message, warning.recommendation
                        ),
                    });
                }
                if force && refused.is_none() {
                    refused = report.enforce().err();
                }
            }
            Err(error) => {
                plan.notes.push(Note {
                    model: model.id.clone(),
                    message: format!("compatibility not checked: {}", error.message()),
                });
                if force && refused.is_none() {
                    refused = Some(
                        Error::new(
                            ErrorCode::Compat,
                            format!("cannot check whether {} runs on this machine", model.id),
                        )
                        .caused_by(error.message().to_string())
                        .with_hint("drop --force-compat to install without the check"),
                    );
                }
            }
        }
    }
    sort_notes(plan);
    match refused {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn sort_notes(plan: &mut Plan) {
    plan.notes
        .sort_by(|a, b| (&a.model, &a.message).cmp(&(&b.model, &b.message)));
}
