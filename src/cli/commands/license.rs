//! `kmm license --model ID --show | --accept --user-id U --license-type T`.
//!
//! `--show`: the license id (model card data, else a `license:` tag), its name for `other`
//! licenses, gating, and the acceptance recorded here (manifest, registry record, or pending).
//! `--accept`: records `license_accepted {accepted, user_id, license_type, accepted_at}` under
//! the store lock: in the model's registry record when it is installed, else in
//! `models/.kmm/licenses.json` (see [`crate::registry::pending_licenses_file`]) from where the
//! install copies it into the record. Resolution then plans the gated model (a token with
//! access is still needed).

use std::path::Path;

use clap::{ArgGroup, Args};
use serde::Serialize;

use crate::error::Result;
use crate::hub::Gated;

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::verb_support::open_for_model;
use crate::ops::{self, EnvLookup, Session};

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("action").required(true).args(["show", "accept"])))]
pub struct LicenseArgs {
    /// The repo id.
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// Show the license, gating and the acceptance recorded here.
    #[arg(long)]
    pub show: bool,
    /// Record that USER accepted the license (needs --user-id and --license-type).
    #[arg(long, requires_all = ["user_id", "license_type"])]
    pub accept: bool,
    /// Who accepted, e.g. an e-mail address.
    #[arg(long, value_name = "USER")]
    pub user_id: Option<String>,
    /// The license accepted, e.g. `llama3` or `other`.
    #[arg(long, value_name = "TYPE")]
    pub license_type: Option<String>,
}

/// `--json` data (`schemas/data/license.schema.json`).
#[derive(Debug, Serialize)]
pub struct LicenseData {
    pub id: String,
    /// `null` offline (the hub is not asked).
    pub license: Option<String>,
    pub license_name: Option<String>,
    pub gated: Option<Gated>,
    /// The acceptance kmm will use, if any.
    pub accepted: Option<serde_json::Value>,
    /// Where it is recorded: `manifest`, `registry` or `pending` (not installed yet).
    pub accepted_in: Option<&'static str>,
}

pub async fn run(
    global: &GlobalArgs,
    args: &LicenseArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    let session = open_for_model(global, &args.model, env, cwd).await?;
    // The hub answers for the id (unknown model: E_NOT_FOUND) unless offline.
    let info = match &session.hub {
        Some(hub) => Some(hub.model_info(&args.model, "main").await?),
        None => None,
    };
    if args.accept {
        ops::accept_license(
            &session,
            &args.model,
            args.user_id.as_deref().unwrap_or_default(),
            args.license_type.as_deref().unwrap_or_default(),
            &out,
        )?;
    }
    let data = gather(&session, args, info.as_ref())?;
    let message = if args.accept {
        format!(
            "Recorded license acceptance for {} by {}.",
            args.model,
            args.user_id.as_deref().unwrap_or_default()
        )
    } else {
        format!(
            "{}: license {}, {}.",
            args.model,
            data.license.as_deref().unwrap_or("unknown"),
            if data.accepted.is_some() {
                "accepted here"
            } else {
                "not accepted here"
            }
        )
    };
    let text = if args.accept {
        if out.quiet {
            String::new()
        } else {
            message.clone()
        }
    } else {
        render(&data)
    };
    out.success(&message, &text, &data);
    Ok(0)
}

fn gather(
    session: &Session,
    args: &LicenseArgs,
    info: Option<&crate::hub::ModelInfo>,
) -> Result<LicenseData> {
    let (accepted, accepted_in) = ops::license_acceptance(session, &args.model)?.unzip();
    Ok(LicenseData {
        id: info.map_or_else(|| args.model.clone(), |info| info.id.clone()),
        license: info.and_then(|info| info.license.clone()),
        license_name: info.and_then(|info| info.license_name.clone()),
        gated: info.map(|info| info.gated),
        accepted,
        accepted_in,
    })
}

fn render(data: &LicenseData) -> String {
    let mut text = format!("model:    {}\n", data.id);
    text.push_str(&format!(
        "license:  {}{}\n",
        data.license.as_deref().unwrap_or("unknown"),
        data.license_name
            .as_deref()
            .map(|name| format!(" ({name})"))
            .unwrap_or_default()
    ));
    text.push_str(&format!(
        "gated:    {}\n",
        match data.gated {
            None => "unknown (offline)",
            Some(Gated::No) => "no",
            Some(Gated::Auto) => "yes (automatic approval)",
            Some(Gated::Manual) => "yes (manual approval)",
        }
    ));
    match (&data.accepted, data.accepted_in) {
        (Some(accepted), Some(place)) => {
            let field = |key: &str| {
                accepted
                    .get(key)
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_string()
            };
            text.push_str(&format!(
                "accepted: yes, by {} ({}) at {} [recorded in the {place}]\n",
                field("user_id"),
                field("license_type"),
                field("accepted_at")
            ));
        }
        _ => text.push_str("accepted: no\n"),
    }
    text
}
