//! The flags every verb accepts, before or after it, and the [`Overrides`] they make for the
//! operations' settings.

use std::path::PathBuf;

use clap::Args;

use crate::ops::Overrides;

use super::flags::parse_duration;

/// Flags accepted before or after the verb.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Print exactly one JSON document {"success","message","error_code","data"} on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and the data the verb exists to print.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never use the network (also HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    pub offline: bool,
    /// Use this Hugging Face compatible mirror instead of the Hub (checked for reachability first).
    #[arg(long, global = true, value_name = "URL")]
    pub mirror: Option<String>,
    /// The manifest [default: $KMM_MANIFEST, else ./kari-models.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest: Option<PathBuf>,
    /// The models directory [default: $KMM_MODELS_DIR, else the manifest's models_dir, else models/ beside the manifest].
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Files downloaded in parallel [default: $KMM_MAX_WORKERS, else the manifest's max_workers, else 8].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_workers: Option<u16>,
    /// How long to wait for another kmm holding the store lock, e.g. `30s`, `5m`, `0s` [default: wait forever].
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,
    /// A shared S3-compatible tier of verified files for a fleet, `s3://BUCKET/PREFIX`
    /// [default: $KMM_SHARED_STORE, else the manifest's shared_store]. Endpoint and
    /// credentials come from the AWS_* variables.
    #[arg(long, global = true, value_name = "URL")]
    pub shared_store: Option<String>,
    /// A shared store that cannot be used is E_NET instead of a warning and the hub.
    #[arg(long, global = true)]
    pub require_shared_store: bool,
    /// More logs on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl GlobalArgs {
    /// What these flags say about where and how to work, for [`crate::ops::Session::open`].
    pub fn overrides(&self) -> Overrides {
        Overrides {
            manifest: self.manifest.clone(),
            models_dir: self.models_dir.clone(),
            mirror: self.mirror.clone(),
            offline: self.offline,
            max_workers: self.max_workers,
            lock_timeout: self.lock_timeout,
            shared_store: self.shared_store.clone(),
            require_shared_store: self.require_shared_store,
        }
    }
}
