//! A reconcile session: the manifest, the effective settings, the store's paths, the hub
//! client, the lock file; and the first steps every verb shares (resolve the declared models,
//! with or without the lock; write the lock; take the store lock).
//!
//! Edges: reads the manifest, the lock and the registry (for hints); writes only the lock
//! (`update_lock`). Messages go to the caller's [`Reporter`]. Used by every verb of the CLI
//! and by [`crate::api`].

use std::path::Path;

use crate::desired::DesiredModel;
use crate::error::{Error, Result};
use crate::hub::{HubClient, HubConfig};
use crate::lockfile::{self, Lockfile};
use crate::manifest::{Manifest, ModelSpec};
use crate::plan::file::Fingerprints;
use crate::registry::Registry;
use crate::resolve::{self, ResolveContext};
use crate::store::{StoreLock, StorePaths};

use super::Reporter;
use super::settings::{self, EnvLookup, Overrides, Settings};

/// How a reconcile uses `kari-models.lock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockMode {
    /// The lock must match the manifest (`E_SCHEMA` otherwise) and is never written.
    pub locked: bool,
    /// As `locked`, and the hub is never asked: models come from the lock as is.
    pub frozen: bool,
}

impl LockMode {
    /// The lock must match and must not be written.
    pub fn strict(self) -> bool {
        self.locked || self.frozen
    }
}

/// What every reconciling verb starts from (`plan`, `apply`, and `download`, whose manifest
/// is a one-model one).
pub struct Session {
    pub manifest: Manifest,
    pub settings: Settings,
    pub paths: StorePaths,
    pub hub: Option<HubClient>,
    /// The local Hugging Face cache: a source of files before the network.
    pub hf_cache: Option<crate::hf_cache::HfCache>,
    /// The fleet's shared tier (none offline or when none is named); probed by the first
    /// step that needs it ([`Session::shared_store`]).
    pub shared: Option<std::sync::Arc<crate::shared::SharedStore>>,
    shared_probed: std::sync::atomic::AtomicBool,
    /// `kari-models.lock` beside the manifest.
    pub lock_path: std::path::PathBuf,
    /// The lock as read at open (`None` when there is none).
    pub lock: Option<Lockfile>,
}

impl Session {
    /// [`Session::open`], then the whole manifest resolved with the lock as `mode` allows (the
    /// lock file is not written here).
    pub async fn open_resolved(
        overrides: &Overrides,
        mode: LockMode,
        env: EnvLookup<'_>,
        cwd: &Path,
    ) -> Result<(Session, Vec<DesiredModel>)> {
        let session = Session::open(overrides, env, cwd).await?;
        let desired = session.resolve_with_lock(mode).await?;
        Ok((session, desired))
    }

    /// Opens the manifest `overrides`/the environment name (`E_SCHEMA` when it is missing or
    /// unreadable), its lock, the settings and the hub client.
    pub async fn open(overrides: &Overrides, env: EnvLookup<'_>, cwd: &Path) -> Result<Session> {
        let manifest_path = settings::manifest_path(overrides, env, cwd);
        let manifest = Manifest::load(&manifest_path)?;
        Session::with_manifest(overrides, env, cwd, manifest).await
    }

    /// Like `open`, but a missing manifest is an empty one: the hub-facing and machine verbs
    /// (`list`, `info`, `download`, `compatibility`, `path`, ...) work in a folder without
    /// `kari-models.toml`.
    pub async fn open_lenient(
        overrides: &Overrides,
        env: EnvLookup<'_>,
        cwd: &Path,
    ) -> Result<Session> {
        let manifest_path = settings::manifest_path(overrides, env, cwd);
        let manifest = if manifest_path.exists() {
            Manifest::load(&manifest_path)?
        } else {
            Manifest::parse(&manifest_path, "")?
        };
        Session::with_manifest(overrides, env, cwd, manifest).await
    }

    async fn with_manifest(
        overrides: &Overrides,
        env: EnvLookup<'_>,
        cwd: &Path,
        mut manifest: Manifest,
    ) -> Result<Session> {
        crate::baselines::add_desired_models(&mut manifest);
        let lock_path = lockfile::path_beside(&manifest.path);
        let lock = Lockfile::load(&lock_path)?;
        let settings = settings::resolve(overrides, env, &manifest, cwd)?;
        let hub = if settings.offline {
            None
        } else {
            let mut config = HubConfig::new(settings.endpoint.clone());
            config.token = settings.token.clone();
            settings.hub_tuning.apply_to(&mut config);
            config.ca_bundles = settings.ca_bundles.clone();
            config.proxies = settings.proxies.clone();
            if let Some(chunk_size) = settings.chunk_size {
                config.chunk_size = chunk_size;
                config.parallel_min_size = chunk_size.saturating_mul(4);
            }
            if let Some(connections) = settings.connections_per_file {
                config.connections_per_file = connections;
            }
            if let Some(direct_io) = settings.direct_io {
                config.direct_io = direct_io;
            }
            let hub = HubClient::new(config)?;
            if settings.mirror {
                hub.ping().await.map_err(|error| {
                    error.context(format!("the mirror {} is not reachable", settings.endpoint))
                })?;
            }
            Some(hub)
        };
        let paths = StorePaths::new(settings.models_dir.clone());
        let hf_cache = Some(crate::hf_cache::HfCache::new(settings.hf_cache.clone()));
        let shared = match &settings.shared_store {
            Some(config) if !settings.offline => Some(std::sync::Arc::new(
                crate::shared::SharedStore::open(config)?,
            )),
            _ => None,
        };
        Ok(Session {
            hf_cache,
            shared,
            shared_probed: Default::default(),
            manifest,
            settings,
            paths,
            hub,
            lock_path,
            lock,
        })
    }

    /// A session for a library call: `manifest` as the desired state, `hub` as the client,
    /// `settings` as given (see [`Settings::for_library`]); no lock file, no local Hugging Face
    /// cache, no environment.
    pub fn for_library(manifest: Manifest, settings: Settings, hub: HubClient) -> Session {
        let paths = StorePaths::new(settings.models_dir.clone());
        let lock_path = lockfile::path_beside(&manifest.path);
        Session {
            manifest,
            settings,
            paths,
            hub: Some(hub),
            hf_cache: None,
            shared: None,
            shared_probed: Default::default(),
            lock_path,
            lock: None,
        }
    }

    /// The shared tier, probed once (one listing request) so that an unreachable tier, a
    /// missing bucket or refused credentials cost one warning up front (`E_NET` when the tier
    /// is required) instead of a failure per file.
    pub async fn shared_store(&self) -> Result<Option<&crate::shared::SharedStore>> {
        let Some(shared) = self.shared.as_deref() else {
            return Ok(None);
        };
        if !self
            .shared_probed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            shared.probe().await?;
        }
        Ok(Some(shared))
    }

    /// Takes the store lock (the one writer), saying so while another kmm process holds it.
    pub fn lock_store(&self, reporter: &dyn Reporter) -> Result<StoreLock> {
        StoreLock::acquire(&self.paths, self.settings.lock_timeout, &mut || {
            reporter.status("Waiting for another kmm process to release the store lock...")
        })
    }

    /// What the manifest declares for `id` (a default declaration when it declares nothing),
    /// at `revision` when one is given on the command line (`E_ARGS` when it is not one).
    pub fn declared_spec(&self, id: &str, revision: Option<&str>) -> Result<ModelSpec> {
        let mut spec = self
            .manifest
            .models
            .get(id)
            .cloned()
            .unwrap_or_else(|| ModelSpec::new(id));
        if let Some(revision) = revision {
            crate::manifest::check_revision(revision)
                .map_err(|why| Error::args(format!("--revision `{revision}` {why}")))?;
            spec.revision = revision.to_string();
        }
        Ok(spec)
    }

    /// The registry as resolution hints, with the license acceptances of models not installed
    /// yet (`kmm license --accept`).
    pub fn registry_hints(&self) -> Result<Registry> {
        let pending = crate::registry::load_pending_licenses(
            &crate::registry::pending_licenses_file(self.paths.root()),
        )?;
        Ok(Registry::load(&self.paths.registry_file())?.with_pending_licenses(&pending))
    }

    /// How this session resolves models: its hub (none offline), token, caches and workers.
    pub fn resolve_context<'a>(&'a self, registry: &'a Registry) -> ResolveContext<'a> {
        ResolveContext {
            hub: self.hub.as_ref(),
            has_token: self.settings.token.is_some()
                || self.hub.as_ref().is_some_and(HubClient::has_token),
            registry,
            concurrency: self.settings.max_workers,
            hf_cache: self.hf_cache.as_ref(),
        }
    }

    /// Declared models -> desired state (network, or the caches offline), without the lock:
    /// for the one-model verbs (`download`, `browse`). Read-only, and needs no store lock: only
    /// the registry's hints are read.
    pub async fn resolve(&self) -> Result<Vec<DesiredModel>> {
        let registry = self.registry_hints()?;
        resolve::resolve_all(&self.manifest, &self.resolve_context(&registry)).await
    }

    /// One model -> its desired state, with `registry` as hints: for the verbs about one model
    /// (`compatibility`, `ensure --distilbert`).
    pub async fn resolve_one(&self, spec: &ModelSpec, registry: &Registry) -> Result<DesiredModel> {
        let ctx = ResolveContext {
            concurrency: 1,
            ..self.resolve_context(registry)
        };
        resolve::resolve_model(spec, &ctx).await
    }

    /// Declared models -> desired state, with the lock as a resolution source. Under
    /// `--locked`/`--frozen` the lock must match the manifest (`E_SCHEMA` naming the models);
    /// under `--frozen` the hub is never asked.
    pub async fn resolve_with_lock(&self, mode: LockMode) -> Result<Vec<DesiredModel>> {
        if mode.strict() {
            self.check_lock_matches(mode)?;
        }
        let registry = self.registry_hints()?;
        let mut ctx = self.resolve_context(&registry);
        if mode.frozen {
            ctx.hub = None;
        }
        resolve::resolve_all_with_lock(&self.manifest, &ctx, self.lock.as_ref(), mode.frozen).await
    }

    fn check_lock_matches(&self, mode: LockMode) -> Result<()> {
        let flag = if mode.frozen { "--frozen" } else { "--locked" };
        let hint = "run `kmm lock` (or `kmm plan` without --locked) and commit kari-models.lock";
        let Some(lock) = &self.lock else {
            return Err(Error::schema(format!(
                "{flag}: `{}` does not exist",
                self.lock_path.display()
            ))
            .with_hint(hint));
        };
        let mismatches = lock.mismatches(&self.manifest);
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(Error::schema(format!(
            "{flag}: kari-models.lock does not match kari-models.toml for {}",
            mismatches.join(", ")
        ))
        .with_hint(hint))
    }

    /// Writes the lock for `desired` when it is missing or differs (never under
    /// `--locked`/`--frozen`); returns whether it wrote.
    pub fn update_lock(
        &self,
        desired: &[DesiredModel],
        mode: LockMode,
        reporter: &dyn Reporter,
    ) -> Result<bool> {
        if mode.strict() {
            return Ok(false);
        }
        let written =
            Lockfile::from_desired(&self.manifest, desired).save_if_changed(&self.lock_path)?;
        if written {
            reporter.status(&format!("Wrote {}", self.lock_path.display()));
        }
        Ok(written)
    }

    /// Fingerprints of what a plan computed now is computed from.
    pub fn fingerprints(&self, dirs: &[std::path::PathBuf]) -> Result<Fingerprints> {
        Fingerprints::compute(&self.manifest.path, &self.lock_path, &self.paths, dirs)
    }

    /// `desired` with the values resolution took from the registry (`pinned`, `license_accepted`
    /// where the manifest says nothing) taken again from `registry`, read under the store lock.
    /// Resolution reads the registry before the lock; without this, a `kmm pin` that ran while
    /// this apply waited for the lock was undone by it ("pinned changes to false"; found by
    /// `reliability::mixed_concurrent_verbs_never_lose_a_registry_update`).
    pub fn with_current_hints(
        &self,
        desired: &[DesiredModel],
        registry: &Registry,
    ) -> Vec<DesiredModel> {
        desired
            .iter()
            .map(|model| {
                let mut model = model.clone();
                let record = registry.models.get(&model.id);
                // Models the manifest does not declare (`ensure`, `download` of another id)
                // carry what their verb decided; only fill in what it left open, so that a
                // concurrent `kmm pin` is not undone either.
                let Some(spec) = self.manifest.models.get(&model.id) else {
                    model.pinned = model.pinned.or(record.and_then(|record| record.pinned));
                    if model.license_accepted.is_none() {
                        model.license_accepted = record.and_then(|r| r.license_accepted.clone());
                    }
                    return model;
                };
                if spec.pinned.is_none() {
                    model.pinned = record.and_then(|record| record.pinned);
                }
                let declared_license = spec.license.as_ref().is_some_and(|l| l.accepted);
                if !declared_license
                    && let Some(accepted) = record.and_then(|r| r.license_accepted.clone())
                {
                    model.license_accepted = Some(accepted);
                }
                model
            })
            .collect()
    }
}
