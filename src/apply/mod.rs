//! Carries out a `Plan`: the only module that changes the store.
//!
//! Downloads land in `models/.kmm/downloads/<hash-hex>.part`, are verified (size + upstream hash)
//! while they stream, and are renamed to `.kmm/downloads/<hash-hex>`: a content store keyed by
//! upstream hash, so a re-run after a crash finds them and skips the network. A model's new
//! folder is assembled under `models/.kmm/staging/` (hard links of verified downloads and of the
//! unchanged files of the current folder, copies where linking fails) and swapped in with one
//! atomic rename, so a model folder is never seen half updated. The registry is written after the
//! files, atomically, by one writer at a time, under the store lock the caller holds; consumed
//! downloads are deleted once every model using them is installed and registered.
//!
//! Independent actions run concurrently (at most `max_workers` at once, see [`queue`]); on the
//! first failure nothing new starts, running actions finish, and the error is returned: models
//! whose actions all completed stay installed and registered, the others stay as they were.
//!
//! The `Fetch` action (sources: store, Hugging Face cache, resumable network download; stale
//! partials) lives in [`fetch`].
//!
//! Edges: reports progress through [`Reporter`] and never prints; it does not plan. It trusts the
//! plan's structure but not its paths: every path is checked to stay inside the models directory
//! (a plan may come from a file).

mod fetch;
mod fsops;
mod queue;

pub use fetch::{FetchSources, disk_bytes_needed};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::desired::is_safe_relative;
use crate::durability;
use crate::error::{Error, Result};
use crate::hub::HubClient;
use crate::plan::{Action, CarriedFile, ChangeKind, FileSource, InstallFile, Plan, RecordPlan};
use crate::registry::{Record, Registry};
use crate::store::StorePaths;
use crate::upstream::{FileHash, UpstreamFile};
use fsops::Placement;

/// Progress events. The CLI turns them into progress bars; tests record them.
pub trait Reporter: Send + Sync {
    /// A download starts: model id, repo path, total bytes.
    fn download_started(&self, _model: &str, _path: &str, _size: u64) {}
    /// More bytes of a download landed.
    fn download_progress(&self, _model: &str, _path: &str, _bytes: u64) {}
    /// A download finished and verified.
    fn download_finished(&self, _model: &str, _path: &str) {}
    /// A model folder was swapped in / removed, or another step finished; one line for humans.
    fn step(&self, _message: &str) {}
}

/// A reporter that reports nothing.
pub struct SilentReporter;
impl Reporter for SilentReporter {}

/// What apply needs besides the plan.
pub struct ApplyContext<'a> {
    pub paths: &'a StorePaths,
    /// `None` when offline: any action that needs the network fails with `E_NET`.
    pub hub: Option<&'a HubClient>,
    /// Most actions running at once, downloads and local steps alike (0 counts as 1).
    pub max_workers: usize,
    pub reporter: &'a dyn Reporter,
}

/// What apply did.
#[derive(schemars::JsonSchema, Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ApplyReport {
    pub models_installed: Vec<String>,
    pub models_updated: Vec<String>,
    pub models_removed: Vec<String>,
    /// Files and bytes from the hub (or mirror).
    pub files_downloaded: u64,
    pub bytes_downloaded: u64,
    /// Files and bytes read from the fleet's shared store instead of the hub.
    #[serde(default)]
    pub files_from_shared_store: u64,
    #[serde(default)]
    pub bytes_from_shared_store: u64,
    pub strays_removed: Vec<String>,
}

/// Executes `plan`. On the first failure no new actions start, running ones finish, models whose
/// actions all completed stay installed and registered, and the error is returned.
pub async fn apply(plan: &Plan, ctx: &ApplyContext<'_>) -> Result<ApplyReport> {
    apply_with(plan, ctx, &FetchSources::default()).await
}

/// [`apply`] with local sources (a Hugging Face cache) that fetches try before the network.
pub async fn apply_with(
    plan: &Plan,
    ctx: &ApplyContext<'_>,
    sources: &FetchSources,
) -> Result<ApplyReport> {
    if plan.models_dir != ctx.paths.root() {
        return Err(Error::args(format!(
            "the plan was made for {}, not for {}",
            plan.models_dir.display(),
            ctx.paths.root().display()
        ))
        .with_hint("run `kmm plan` again for this models directory"));
    }
    let deps = dependency_indices(plan)?;
    let mut engine = Engine::new(plan, ctx, sources)?;
    engine.check_offline()?;
    engine.prepare()?;
    engine.unconfirmed = durability::unconfirmed(ctx.paths);
    engine.defer_sync = durability::record(ctx.paths, engine.fetched_hashes())?;
    if sources.remove_stale_partials {
        engine.remove_stale_partials()?;
    }
    // Downloads last among ready actions: local steps are quick and finish models early.
    let priority: Vec<u8> = plan
        .actions
        .iter()
        .map(|planned| u8::from(matches!(planned.action, Action::Fetch { .. })))
        .collect();
    queue::run(&deps, &priority, ctx.max_workers, |index| {
        engine.run(&plan.actions[index].action)
    })
    .await?;
    let mut report = engine.report.into_inner().expect("report lock");
    report.models_installed.sort();
    report.models_updated.sort();
    report.models_removed.sort();
    report.strays_removed.sort();
    Ok(report)
}

/// `depends_on` ids -> indices, checking that the plan is well formed (unique ids, known
/// dependencies, dependencies listed earlier).
fn dependency_indices(plan: &Plan) -> Result<Vec<Vec<usize>>> {
    let mut index_of = BTreeMap::new();
    let mut deps = Vec::with_capacity(plan.actions.len());
    for (index, planned) in plan.actions.iter().enumerate() {
        if planned.id != planned.action.id() {
            return Err(Error::schema(format!(
                "plan action `{}` does not match its content (`{}`)",
                planned.id,
                planned.action.id()
            )));
        }
        let mut mine = Vec::with_capacity(planned.depends_on.len());
        for dep in &planned.depends_on {
            let Some(&dep_index) = index_of.get(dep.as_str()) else {
                return Err(Error::schema(format!(
                    "plan action `{}` depends on `{dep}`, which is not listed before it",
                    planned.id
                )));
            };
            mine.push(dep_index);
        }
        if index_of.insert(planned.id.as_str(), index).is_some() {
            return Err(Error::schema(format!(
                "plan action `{}` is listed twice",
                planned.id
            )));
        }
        deps.push(mine);
    }
    Ok(deps)
}

struct Engine<'a> {
    plan: &'a Plan,
    ctx: &'a ApplyContext<'a>,
    root: PathBuf,
    downloads: PathBuf,
    /// One registry writer at a time (the store lock keeps other processes out).
    registry_writer: Arc<Mutex<()>>,
    /// Download hash hex -> how many installs still need it.
    download_users: Mutex<BTreeMap<String, usize>>,
    /// Model -> the download hashes its install consumes.
    model_downloads: BTreeMap<&'a str, BTreeSet<String>>,
    change_of: BTreeMap<&'a str, ChangeKind>,
    report: Mutex<ApplyReport>,
    sources: &'a FetchSources,
    /// Downloads are renamed into place without an fsync: [`crate::durability`] recorded their
    /// hashes first. `false` where it cannot (no boot id), and each download is fsynced.
    defer_sync: bool,
    /// Hashes whose bytes an earlier boot wrote without confirming them on disk: a store
    /// download with such a hash is hashed again before it is trusted.
    unconfirmed: BTreeSet<String>,
    /// Loose files the plan moves into model folders (deleted after): taken, not copied.
    moved_loose: BTreeSet<&'a Path>,
    /// Downloads already taken (hard-linked) by one install: the next installs of the same
    /// bytes get a copy, so two model folders never share an inode.
    taken_downloads: Mutex<BTreeSet<String>>,
}

impl<'a> Engine<'a> {
    fn new(plan: &'a Plan, ctx: &'a ApplyContext<'a>, sources: &'a FetchSources) -> Result<Self> {
        let mut download_users: BTreeMap<String, usize> = BTreeMap::new();
        let mut model_downloads: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for planned in &plan.actions {
            match &planned.action {
                Action::Fetch { file, .. } => check_hash_hex(&file.hash)?,
                Action::InstallModel { model, files, .. } => {
                    let hashes: BTreeSet<String> = files
                        .iter()
                        .filter(|f| matches!(f.source, FileSource::Fetch { .. }))
                        .map(|f| f.hash.hex().to_string())
                        .collect();
                    for hash in &hashes {
                        *download_users.entry(hash.clone()).or_default() += 1;
                    }
                    model_downloads.insert(model.as_str(), hashes);
                }
                _ => {}
            }
        }
        Ok(Engine {
            plan,
            ctx,
            root: ctx.paths.root().to_path_buf(),
            downloads: ctx.paths.downloads_dir(),
            registry_writer: Arc::new(Mutex::new(())),
            download_users: Mutex::new(download_users),
            model_downloads,
            change_of: plan
                .models
                .iter()
                .map(|m| (m.id.as_str(), m.change))
                .collect(),
            report: Mutex::new(ApplyReport::default()),
            sources,
            defer_sync: false,
            unconfirmed: BTreeSet::new(),
            moved_loose: plan
                .actions
                .iter()
                .filter_map(|planned| match &planned.action {
                    Action::DeleteMoved { path } => Some(path.as_path()),
                    _ => None,
                })
                .collect(),
            taken_downloads: Mutex::new(BTreeSet::new()),
        })
    }

    /// Creates the internal folders and clears leftovers of an interrupted run (the caller
    /// holds the store lock, so nobody else is using them).
    fn prepare(&self) -> Result<()> {
        let paths = self.ctx.paths;
        for dir in [
            paths.downloads_dir(),
            paths.staging_dir(),
            paths.trash_dir(),
        ] {
            fs_err::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        }
        fsops::empty_dir(&paths.staging_dir())?;
        fsops::empty_dir(&paths.trash_dir())?;
        fsops::sweep_all_work_dirs(paths.root());
        Ok(())
    }

    fn download_path(&self, hash: &FileHash) -> PathBuf {
        self.downloads.join(hash.hex())
    }

    /// A verified download with the right size is already in the content store.
    fn have_download(&self, file: &UpstreamFile) -> bool {
        fs_err::metadata(self.download_path(&file.hash))
            .is_ok_and(|meta| meta.is_file() && meta.len() == file.size)
    }

    async fn run(&self, action: &Action) -> Result<()> {
        match action {
            Action::Fetch {
                model,
                commit,
                file,
            } => self.fetch(model, commit, file).await,
            Action::InstallModel {
                model,
                install_dir,
                previous_install_dir,
                files,
                carry,
            } => {
                self.install(
                    model,
                    install_dir,
                    previous_install_dir.as_deref(),
                    files,
                    carry,
                )
                .await
            }
            Action::MirrorConfig { model, from, to } => self.mirror_config(model, from, to).await,
            Action::Register { model, record } => self.register(model, record).await,
            Action::RemoveModel {
                model,
                install_dir,
                config_mirror,
            } => {
                self.remove_model(model, install_dir, config_mirror.as_deref())
                    .await
            }
            Action::Unregister { model } => self.unregister(model).await,
            Action::DeleteStray { path } => self.delete_stray(path).await,
            Action::DeleteMoved { path } => self.delete_moved(path).await,
        }
    }

    async fn install(
        &self,
        model: &str,
        install_dir: &Path,
        previous: Option<&Path>,
        files: &[InstallFile],
        carry: &[CarriedFile],
    ) -> Result<()> {
        check_model_dir(install_dir)?;
        if let Some(previous) = previous {
            check_model_dir(previous)?;
        }
        let mut sources = Vec::with_capacity(files.len());
        for file in files {
            if !is_safe_relative(Path::new(&file.path)) || file.path.contains('\\') {
                return Err(Error::schema(format!(
                    "{model}: unsafe file path `{}`",
                    file.path
                )));
            }
            let own = |path: &Path| {
                path.starts_with(install_dir) || previous.is_some_and(|dir| path.starts_with(dir))
            };
            let (from, placement) = match &file.source {
                FileSource::Fetch { .. } => {
                    let mut taken = self.taken_downloads.lock().expect("taken downloads lock");
                    let first = taken.insert(file.hash.hex().to_ascii_lowercase());
                    let placement = if first {
                        Placement::Take
                    } else {
                        Placement::Copy
                    };
                    (self.download_path(&file.hash), placement)
                }
                FileSource::Keep { path } => {
                    check_inside(path)?;
                    let placement = if own(path) || self.moved_loose.contains(path.as_path()) {
                        Placement::Take
                    } else {
                        Placement::Copy
                    };
                    (self.root.join(path), placement)
                }
            };
            sources.push((from, file.path.clone(), file.size, placement));
        }
        for file in carry {
            if !is_safe_relative(Path::new(&file.path)) || file.path.contains('\\') {
                return Err(Error::schema(format!(
                    "{model}: unsafe file path `{}`",
                    file.path
                )));
            }
            check_inside(&file.from)?;
            // The user's own files of this model's recorded folder.
            sources.push((
                self.root.join(&file.from),
                file.path.clone(),
                file.size,
                Placement::Take,
            ));
        }
        let job = InstallJob {
            model: model.to_string(),
            root: self.root.clone(),
            staging: self.ctx.paths.staging_dir(),
            trash: self.ctx.paths.trash_dir(),
            install_dir: install_dir.to_path_buf(),
            previous: previous.map(Path::to_path_buf),
            sources,
        };
        spawn_blocking(move || job.run()).await?;
        let moved = match previous {
            Some(previous) => format!(" (moved from {})", previous.display()),
            None => String::new(),
        };
        self.ctx.reporter.step(&format!(
            "{model}: installed into {}{moved}",
            install_dir.display()
        ));
        Ok(())
    }

    async fn mirror_config(&self, model: &str, from: &Path, to: &Path) -> Result<()> {
        check_inside(from)?;
        check_inside(to)?;
        let (from, to) = (self.root.join(from), self.root.join(to));
        let span = tracing::info_span!("mirror-config", model, to = %to.display());
        spawn_blocking(move || {
            let _span = span.entered();
            fsops::copy_atomic(&from, &to)
        })
        .await
    }

    async fn register(&self, model: &str, plan: &RecordPlan) -> Result<()> {
        let registry_file = self.ctx.paths.registry_file();
        let writer = self.registry_writer.clone();
        let (id, plan) = (model.to_string(), plan.clone());
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let span = tracing::info_span!("register", model);
        spawn_blocking(move || {
            let _span = span.entered();
            let _writer = writer.lock().expect("registry writer lock");
            let mut registry = Registry::load(&registry_file)?;
            let mut record = crate::plan::merge_record(registry.models.remove(&id), &plan, now);
            record_mtimes(&mut record);
            registry.models.insert(id, record);
            registry.save(&registry_file)
        })
        .await?;
        self.release_downloads(model);
        let mut report = self.report.lock().expect("report lock");
        match self.change_of.get(model) {
            Some(ChangeKind::Create) => report.models_installed.push(model.to_string()),
            _ => report.models_updated.push(model.to_string()),
        }
        Ok(())
    }

    /// Deletes the downloads `model` consumed once no other pending install needs them.
    fn release_downloads(&self, model: &str) {
        let Some(hashes) = self.model_downloads.get(model) else {
            return;
        };
        let mut users = self.download_users.lock().expect("download users lock");
        for hash in hashes {
            let Some(count) = users.get_mut(hash) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                users.remove(hash);
                let path = self.downloads.join(hash);
                if let Err(error) = fs_err::remove_file(&path) {
                    tracing::warn!(%error, "could not delete a consumed download");
                }
            }
        }
    }

    async fn remove_model(
        &self,
        model: &str,
        install_dir: &Path,
        config_mirror: Option<&Path>,
    ) -> Result<()> {
        check_model_dir(install_dir)?;
        if let Some(mirror) = config_mirror {
            check_inside(mirror)?;
        }
        let root = self.root.clone();
        let trash = self.ctx.paths.trash_dir();
        let dir = root.join(install_dir);
        let relative = install_dir.to_path_buf();
        let mirror = config_mirror.map(|m| root.join(m));
        spawn_blocking(move || {
            let _layout = LAYOUT_FOLDERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            fsops::remove_via_trash(&dir, &trash)?;
            remove_empty_owner_folders(&root, &relative);
            if let Some(mirror) = mirror {
                match fs_err::remove_file(&mirror) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io(format!("removing {}", mirror.display()), &e));
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await?;
        self.ctx
            .reporter
            .step(&format!("{model}: removed {}", install_dir.display()));
        Ok(())
    }

    async fn unregister(&self, model: &str) -> Result<()> {
        let registry_file = self.ctx.paths.registry_file();
        let writer = self.registry_writer.clone();
        let id = model.to_string();
        let span = tracing::info_span!("register", model, remove = true);
        spawn_blocking(move || {
            let _span = span.entered();
            let _writer = writer.lock().expect("registry writer lock");
            let mut registry = Registry::load(&registry_file)?;
            if registry.models.remove(&id).is_some() {
                registry.save(&registry_file)?;
            }
            Ok(())
        })
        .await?;
        let mut report = self.report.lock().expect("report lock");
        report.models_removed.push(model.to_string());
        Ok(())
    }

    /// Deletes a loose file whose bytes the installs that depend on this action took (linked or
    /// copied into their folders and checked), then its emptied folders.
    async fn delete_moved(&self, path: &Path) -> Result<()> {
        check_inside(path)?;
        let root = self.root.clone();
        let relative = path.to_path_buf();
        spawn_blocking(move || {
            let _layout = LAYOUT_FOLDERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let full = root.join(&relative);
            match fs_err::remove_file(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("deleting {}", full.display()), &e)),
            }
            if let (Some(top), Some(parent)) = (relative.components().next(), relative.parent())
                && parent.components().count() > 1
            {
                fsops::remove_empty_parents(&root.join(parent), &root.join(top));
            }
            Ok(())
        })
        .await?;
        self.ctx
            .reporter
            .step(&format!("moved {} into its model folder", path.display()));
        Ok(())
    }

    async fn delete_stray(&self, path: &Path) -> Result<()> {
        check_inside(path)?;
        let name = path.to_string_lossy();
        if !(name.ends_with(".corrupt") || name.ends_with(".incomplete")) {
            return Err(Error::schema(format!(
                "refusing to delete `{name}`: only *.corrupt and *.incomplete leftovers are strays"
            )));
        }
        let full = self.root.join(path);
        match fs_err::remove_file(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("deleting {}", full.display()), &e)),
        }
        self.ctx.reporter.step(&format!("deleted leftover {name}"));
        let mut report = self.report.lock().expect("report lock");
        report.strays_removed.push(name.replace('\\', "/"));
        Ok(())
    }
}

/// Builds one model's folder in staging and swaps it in. Owned so it can run on a blocking
/// thread.
struct InstallJob {
    model: String,
    root: PathBuf,
    staging: PathBuf,
    trash: PathBuf,
    install_dir: PathBuf,
    previous: Option<PathBuf>,
    /// (absolute source, repo path, expected size, how it is placed)
    sources: Vec<(PathBuf, String, u64, Placement)>,
}

impl InstallJob {
    fn run(self) -> Result<()> {
        let prefix: String = self
            .model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let target = self.root.join(&self.install_dir);
        let destination = fsops::swap_destination(&target)?;
        // The new folder is assembled on the destination's file system, so that it can be
        // renamed into place: in `.kmm/staging`, or beside the destination when `.kmm` is on
        // another disk or the model folder is a link to one.
        let (stage_in, prefix) = if fsops::same_file_system(&self.staging, &destination) {
            (self.staging.clone(), format!("{prefix}-"))
        } else {
            fsops::sweep_work_dirs(&destination);
            let parent = destination.parent().expect("a model folder has a parent");
            fs_err::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
            let name = destination
                .file_name()
                .unwrap_or_default()
                .to_string_lossy();
            tracing::info!(
                "{}: assembling beside {} (not on the file system of {}; files are copied)",
                self.model,
                destination.display(),
                self.staging.display()
            );
            (parent.to_path_buf(), format!(".kmm-staging.{name}."))
        };
        // Removed automatically if anything below fails: a failed install leaves no trace.
        let staged = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(&stage_in)
            .map_err(|e| Error::io(format!("creating a folder in {}", stage_in.display()), &e))?;
        for (from, path, size, placement) in &self.sources {
            let to = staged.path().join(path);
            if let Some(parent) = to.parent() {
                fs_err::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("creating {}", parent.display()), &e))?;
            }
            fsops::place(from, &to, *placement)
                .map_err(|e| e.context(format!("{}: assembling {path}", self.model)))?;
            let actual = fs_err::metadata(&to)
                .map_err(|e| Error::io(format!("reading {}", to.display()), &e))?
                .len();
            if actual != *size {
                return Err(Error::verify(format!(
                    "{}: {path} has {actual} bytes, expected {size}",
                    self.model
                ))
                .with_hint("run `kmm plan` again; the file changed since the plan was made"));
            }
        }
        for old in std::iter::once(destination.clone()).chain(
            self.previous
                .iter()
                .map(|previous| self.root.join(previous)),
        ) {
            let carried = fsops::carry_links(&old, staged.path())?;
            if carried > 0 {
                tracing::info!(
                    "{}: kept {carried} link(s) of {}",
                    self.model,
                    old.display()
                );
            }
        }
        // Installs run in parallel: one may remove an owner folder (`transformers/acme/`) it
        // just emptied between another's creating it and renaming its model into it (found by
        // the SIGKILL-migrate test). Changes to the layout's folders take turns.
        let _layout = LAYOUT_FOLDERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        fsops::swap_in(&staged.keep(), &destination, &self.trash)?;
        if let Some(previous) = &self.previous
            && *previous != self.install_dir
        {
            fsops::remove_via_trash(&self.root.join(previous), &self.trash)?;
            remove_empty_owner_folders(&self.root, previous);
        }
        Ok(())
    }
}

/// Records each installed file's mtime (when it has the recorded size), so that later plans
/// notice in-place edits by `stat` alone.
fn record_mtimes(record: &mut Record) {
    let dir = PathBuf::from(&record.install_path);
    for file in &mut record.files {
        file.mtime_ns = fs_err::metadata(dir.join(&file.path))
            .ok()
            .filter(|meta| meta.is_file() && meta.len() == file.size)
            .and_then(|meta| meta.modified().ok())
            .and_then(crate::store::unix_nanos);
    }
}

/// Held while an install, a removal or a moved file's deletion changes the layout's folders
/// (see [`InstallJob::run`]).
static LAYOUT_FOLDERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// After a model folder went away, removes its now-empty owner folders (`transformers/acme/`)
/// but never the layout's top-level folders (`transformers/`, `llama-cpp/`).
fn remove_empty_owner_folders(root: &Path, removed: &Path) {
    let (Some(top), Some(parent)) = (removed.components().next(), removed.parent()) else {
        return;
    };
    fsops::remove_empty_parents(&root.join(parent), &root.join(top));
}

/// Records that `model` was just used (`kmm path --model ID`): sets its `last_accessed` to
/// `now` (RFC 3339) with an atomic registry save. The caller holds the store lock. Returns the
/// record as saved; an unknown model is `E_NOT_FOUND`.
pub fn record_access(paths: &StorePaths, model: &str, now: String) -> Result<Record> {
    let file = paths.registry_file();
    let mut registry = Registry::load(&file)?;
    let Some(record) = registry.models.get_mut(model) else {
        return Err(Error::not_found(format!("`{model}` is not installed"))
            .with_hint("declare it in kari-models.toml and run `kmm apply`"));
    };
    record.last_accessed = Some(now);
    let saved = record.clone();
    registry.save(&file)?;
    Ok(saved)
}

/// The entries of `.kmm/downloads/` (verified `<hash>` files, partial `<hash>.part` files and their
/// state files) whose
/// hash is not in `keep`, sorted. Read-only: `kmm gc --dry-run` lists them.
pub fn stale_downloads(paths: &StorePaths, keep: &BTreeSet<String>) -> Result<Vec<(String, u64)>> {
    let dir = paths.downloads_dir();
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), &e)),
    };
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let hash = fetch::PARTIAL_SUFFIXES
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_ascii_lowercase();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && !keep.contains(&hash) {
            let size = entry.metadata().map_or(0, |m| m.len());
            stale.push((name, size));
        }
    }
    stale.sort();
    Ok(stale)
}

/// Deletes the given entries of `.kmm/downloads/` (names from [`stale_downloads`]). The caller
/// holds the store lock. Names must be plain file names.
pub fn delete_downloads(paths: &StorePaths, names: &[String]) -> Result<()> {
    let dir = paths.downloads_dir();
    for name in names {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::internal(format!(
                "refusing to delete download `{name}`"
            )));
        }
        let path = dir.join(name);
        match fs_err::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("deleting {}", path.display()), &e)),
        }
    }
    Ok(())
}

/// A path from the plan must stay inside the models directory and out of `.kmm/`.
fn check_inside(path: &Path) -> Result<()> {
    let first = path.components().next();
    let internal = first.is_some_and(|c| c.as_os_str() == ".kmm");
    if !is_safe_relative(path) || internal {
        return Err(Error::schema(format!(
            "plan path `{}` is not a relative path inside the models directory",
            path.display()
        )));
    }
    Ok(())
}

/// A model folder: inside the models directory and not one of the layout's shared roots.
fn check_model_dir(path: &Path) -> Result<()> {
    check_inside(path)?;
    let shared = ["llama-cpp", "transformers", "configs"];
    if path.components().count() == 1 && shared.iter().any(|s| path == Path::new(s)) {
        return Err(Error::schema(format!(
            "plan names the shared folder `{}` as a model folder",
            path.display()
        )));
    }
    Ok(())
}

/// Download names are hash hex digits, nothing else (they become file names).
fn check_hash_hex(hash: &FileHash) -> Result<()> {
    let hex = hash.hex();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::schema(format!("plan has a malformed hash `{hex}`")));
    }
    Ok(())
}

async fn spawn_blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| Error::internal(format!("a file-system task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_apply_future_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let paths = StorePaths::new("/srv/models");
        let plan = crate::plan::compute(crate::plan::PlanInput {
            models_dir: paths.root(),
            desired: &[],
            observed: &crate::store::Observed::default(),
            prune: false,
        });
        let ctx = ApplyContext {
            paths: &paths,
            hub: None,
            max_workers: 1,
            reporter: &SilentReporter,
        };
        assert_send(&apply(&plan, &ctx));
    }

    #[test]
    fn plan_paths_must_stay_inside_the_store() {
        assert!(check_inside(Path::new("transformers/org/m")).is_ok());
        for bad in ["", "/etc", "../x", "a/../../b", ".kmm/lock"] {
            assert!(check_inside(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(check_model_dir(Path::new("llama-cpp")).is_err());
        assert!(check_model_dir(Path::new("distilbert-base-uncased")).is_ok());
        assert!(check_hash_hex(&FileHash::Sha256("../../x".into())).is_err());
    }
}
