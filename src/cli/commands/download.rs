//! `kmm download --model ID`: a one-model reconcile through the same resolve -> plan -> apply
//! path as `kmm apply` (same staging, verification, registry record, quota and free-disk
//! checks before the first byte), with a desired state of just this model and prune off, so no
//! other model is touched.
//!
//! The model's settings are the flags, falling back to what the manifest declares for the same
//! id (so `kmm download --model X` of a declared model installs what `kmm apply` would, and a
//! later `kmm apply` does not undo it); pins and license acceptance come from the manifest or
//! the registry as for `apply`. Bad ids, revisions and globs on the command line are `E_ARGS`.
//! The manifest is edited only with `--save`, after a successful install.

use std::path::Path;

use clap::Args;

use crate::error::{Error, Result};
use crate::layout::Library;
use crate::manifest::{FileSelection, ModelSpec};
use crate::manifest_edit::{self, ModelEntry};

use crate::cli::flags::SelectionArgs;
use crate::cli::global_args::GlobalArgs;
use crate::cli::output::Output;
use crate::cli::plan_output::print_applied;
use crate::cli::verb_support;
use crate::ops::{self, EnvLookup, Session};

#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// The repo id, e.g. `TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF`.
    #[arg(long, value_name = "ID")]
    pub model: String,
    /// Branch, tag or commit [default: the manifest's, else main].
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Refuse (E_QUOTA) before any download if the models directory would then hold more than N GB (10^9 bytes).
    #[arg(long, value_name = "N")]
    pub max_quota_gb: Option<f64>,
    /// Block on compatibility warnings: a warning (or a model that cannot be checked) is
    /// E_COMPAT before any download.
    #[arg(long)]
    pub force_compat: bool,
    /// Add or update the model's table in kari-models.toml (comments and formatting kept).
    #[arg(long)]
    pub save: bool,
}

pub async fn run(
    global: &GlobalArgs,
    args: &DownloadArgs,
    env: EnvLookup<'_>,
    cwd: &Path,
    out: Output,
) -> Result<i32> {
    verb_support::check_model_arg(&args.model)?;
    if let Some(quota) = args.max_quota_gb
        && !(quota.is_finite() && quota > 0.0)
    {
        return Err(Error::args(format!(
            "--max-quota-gb must be a positive number, got {quota}"
        )));
    }
    let mut session = Session::open_lenient(&global.overrides(), env, cwd).await?;
    let spec = spec_for(&session, args)?;
    let entry = ModelEntry {
        id: args.model.clone(),
        revision: args.revision.clone(),
        include: args.selection.include.clone(),
        exclude: args.selection.exclude.clone(),
        library: args.selection.library.clone(),
    };
    if args.save {
        // Refuse a --save that would fail before downloading anything.
        let text = fs_err::read_to_string(&session.settings.manifest_path).unwrap_or_default();
        manifest_edit::edit(&text, &entry)?;
    }
    if let Some(quota) = args.max_quota_gb {
        session.settings.quota_gb = Some(quota);
        session.settings.quota_origin = "--max-quota-gb";
    }
    let code = install(&mut session, spec, args.force_compat, out).await?;
    if args.save {
        let path = session.settings.manifest_path.clone();
        let created = manifest_edit::save_model(&path, &entry)?;
        out.status(&format!(
            "{} [models.\"{}\"] in {}",
            if created { "Created" } else { "Saved" },
            args.model,
            path.display()
        ));
    }
    Ok(code)
}

/// Installs `spec` alone through the reconcile path (also used by `browse`).
pub(crate) async fn install(
    session: &mut Session,
    spec: ModelSpec,
    force_compat: bool,
    out: Output,
) -> Result<i32> {
    let options = ops::InstallOptions {
        force_compat,
        discard_partials: false,
    };
    let (applied, _) = ops::install_one(session, spec, options, &out).await?;
    print_applied(out, &applied);
    Ok(0)
}

/// The flags over the manifest's declaration of the same id.
fn spec_for(session: &Session, args: &DownloadArgs) -> Result<ModelSpec> {
    let mut spec = session.declared_spec(&args.model, args.revision.as_deref())?;
    if !args.selection.include.is_empty() {
        spec.include = args.selection.include.clone();
    }
    if !args.selection.exclude.is_empty() {
        spec.exclude = args.selection.exclude.clone();
    }
    if let Some(library) = &args.selection.library {
        spec.library = Library::parse(library);
    }
    FileSelection::new(&spec.include, &spec.exclude).map_err(|error| {
        Error::args(format!("bad --include/--exclude: {}", error.message()))
            .with_hint("globs as in fnmatch: `*`, `?`, `[abc]`; `*` also matches `/`")
    })?;
    Ok(spec)
}
