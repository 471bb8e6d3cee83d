//! `kmm ensure [--distilbert] [--spacy] [--basic-cls] [--python PATH]`: installs the baselines
//! named by the flags, else those `[baselines]` in the manifest asks for, through
//! [`ops::ensure_baselines`].

use std::path::Path;

use clap::Args;
use serde::Serialize;

use crate::baselines::BaselineResult;
use crate::error::{Error, Result};
use crate::ops::{self, BaselineRequest, EnvLookup, Session, settings};

use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;

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
    let session = Session::open_lenient(&global.overrides(), env, cwd).await?;
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
    let request = BaselineRequest {
        distilbert,
        spacy,
        basic_cls,
        python: settings::python(args.python.as_deref(), env),
    };
    let results = ops::ensure_baselines(&session, &request, &out).await?;
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
