//! The application value: everything a surface (the `sandboxer` CLI, the HTTP service of
//! `sandboxer-host run`) works with, built once from [`Settings`]. Both surfaces call the
//! same methods, so `sandboxer route explain` and `POST /v1/route/explain`, or
//! `sandboxer sandbox create` and `POST /v1/sandboxes`, are one call rendered two ways.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Settings;
use crate::events::{EventSink, JsonlSink};
use crate::manager::{
    Backend, Extensions, ManagerConfig, ManagerError, ManagerParts, ReconcileReport, SandboxManager,
};
use crate::payments::{CreditsStore, LedgerError, OverdraftPolicy, SqliteCreditsStore};
use crate::routing::profile::{ProfileError, ProfileWarning, load_profiles};
use crate::routing::{HealthConfig, HealthTracker, ProfileSet};
use crate::runtime::{
    Extension, ExtensionSpec, LoadReport, Runtime, RuntimeConfig, RuntimeError, Skipped,
};

/// Uncached components larger than this (4 MiB) compile in the background in a service:
/// interpreted-language guests are 12 to 20 MB, Rust ones well under 1 MB.
pub const DEFER_COMPILE_ABOVE_BYTES: u64 = 4 << 20;

/// How to build a [`Host`] beyond the folders.
#[derive(Clone, Default)]
pub struct HostOptions {
    /// Runtime set-up (limits, pool, compile progress hook); its cache folder is set from
    /// the settings when left empty.
    pub runtime: RuntimeConfig,
    /// Circuit-breaker and latency settings.
    pub health: HealthConfig,
    /// Manager tunables.
    pub manager: ManagerConfig,
    /// What happens when a meter exceeds its hold.
    pub overdraft: OverdraftPolicy,
    /// Sinks besides the default JSONL file (e.g. an HTTP endpoint).
    pub extra_sinks: Vec<Arc<dyn EventSink>>,
    /// Skip reconciliation at open (read-only inspection, tests of recovery itself).
    pub skip_reconcile: bool,
    /// Load extensions whose compiled code is not cached yet and whose `.wasm` is larger
    /// than this many bytes in the background, adding each to the manager's registry when
    /// ready, so a service starts serving the others at once (a large Python guest
    /// compiles for tens of seconds; a Rust one in well under a second). `None` (the CLI,
    /// whose commands need every extension): load everything before answering.
    /// [`DEFER_COMPILE_ABOVE_BYTES`] is the service's choice.
    pub defer_compile_above_bytes: Option<u64>,
    /// Wraps each extension before it is registered with the manager, at open and when a
    /// deferred one finishes loading (the service instruments them for `/metrics`).
    pub wrap: Option<WrapExtension>,
}

/// See [`HostOptions::wrap`].
pub type WrapExtension = Arc<dyn Fn(Arc<Extension>) -> Arc<dyn Backend> + Send + Sync>;

/// How an extension is registered: wrapped when the options say so.
fn register_as(wrap: Option<&WrapExtension>, ext: Arc<Extension>) -> Arc<dyn Backend> {
    match wrap {
        Some(w) => w(ext),
        None => ext,
    }
}

/// The host could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The state folder cannot be created.
    #[error("cannot create the state folder {}: {source}", dir.display())]
    StateDir {
        /// The folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not start or read the extensions folder.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Some profile files are invalid (each error names file, key and expectation).
    #[error("the profiles in {} do not load:\n{}", dir.display(), errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Profiles {
        /// The profiles folder.
        dir: PathBuf,
        /// Every problem found.
        errors: Vec<ProfileError>,
    },
    /// The ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The manager could not be opened or reconciled.
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

/// Settings, runtime with the loaded extensions, profiles, ledger, health tracker and
/// the sandbox manager, built once.
pub struct Host {
    settings: Settings,
    runtime: Runtime,
    loading: Arc<Loading>,
    skipped: Vec<Skipped>,
    profile_warnings: Vec<ProfileWarning>,
    ledger: Arc<SqliteCreditsStore>,
    manager: Arc<SandboxManager>,
    reconciled: ReconcileReport,
}

impl Host {
    /// Builds the host with default options and reconciles what a previous process left.
    pub fn open(settings: &Settings) -> Result<Self, HostError> {
        Self::open_with(settings, HostOptions::default())
    }

    /// Builds the host: loads extensions and profiles, opens the ledger, opens the
    /// manager over them and (unless told not to) reconciles.
    pub fn open_with(settings: &Settings, options: HostOptions) -> Result<Self, HostError> {
        let state = &settings.state_dir;
        std::fs::create_dir_all(state).map_err(|source| HostError::StateDir {
            dir: state.clone(),
            source,
        })?;

        let mut runtime_config = options.runtime;
        if runtime_config.cache_dir.is_none() {
            runtime_config.cache_dir = Some(settings.cache_dir());
        }
        let runtime = Runtime::new(runtime_config)?;
        // A missing folder means no extensions (listing and settling recorded sandboxes
        // still work); an unreadable one is an error.
        let (report, deferred) = if settings.extensions_dir.exists() {
            if let Some(above) = options.defer_compile_above_bytes {
                load_compiled(&runtime, &settings.extensions_dir, above)?
            } else {
                (runtime.load_dir(&settings.extensions_dir)?, Vec::new())
            }
        } else {
            tracing::warn!(dir = %settings.extensions_dir.display(), "no extensions folder: no extension is loaded");
            (LoadReport::default(), Vec::new())
        };
        let backends: Vec<Arc<dyn Backend>> = report
            .loaded
            .iter()
            .map(|e| register_as(options.wrap.as_ref(), e.clone()))
            .collect();
        let extensions = Arc::new(Extensions::new(backends));

        let profiles = if settings.profiles_dir.exists() {
            load_profiles(&settings.profiles_dir).map_err(|errors| HostError::Profiles {
                dir: settings.profiles_dir.clone(),
                errors,
            })?
        } else {
            tracing::warn!(dir = %settings.profiles_dir.display(), "no profiles folder: no profile is loaded");
            ProfileSet::default()
        };
        let mut known = extensions.ids();
        known.extend(deferred.iter().map(|s| s.id.clone()));
        let profile_warnings = profiles.check_candidates(&known);
        for w in &profile_warnings {
            tracing::warn!(profile = %w.profile, file = %w.file.display(), "{}", w.message);
        }

        // The ledger first: it creates the database file the manager adds its tables to.
        let ledger = Arc::new(SqliteCreditsStore::open_with_policy(
            settings.ledger_path(),
            options.overdraft,
        )?);
        let mut sinks: Vec<Arc<dyn EventSink>> =
            vec![Arc::new(JsonlSink::new(settings.events_path()))];
        sinks.extend(options.extra_sinks);
        let manager = SandboxManager::open(ManagerParts {
            database: settings.ledger_path(),
            run_dir: state.join("run"),
            extensions,
            profiles: Arc::new(profiles),
            ledger: ledger.clone() as Arc<dyn CreditsStore>,
            health: HealthTracker::new(options.health),
            sinks,
            config: options.manager,
        })?;
        let reconciled = if options.skip_reconcile {
            ReconcileReport::default()
        } else {
            manager.reconcile()?
        };
        let manager = Arc::new(manager);
        let loading = Arc::new(Loading::default());
        loading.state.lock().loaded = report.loaded.clone();
        if !deferred.is_empty() {
            spawn_deferred_loads(&runtime, &manager, &loading, deferred, options.wrap);
        }
        Ok(Self {
            settings: settings.clone(),
            runtime,
            loading,
            skipped: report.skipped,
            profile_warnings,
            ledger,
            manager,
            reconciled,
        })
    }

    /// The folders it was built from.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The WebAssembly runtime (load more extensions through it on hot reload).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Extension files that were not loaded, with the reason (those loaded in the
    /// background are in [`Host::deferred_skipped`]).
    pub fn skipped_extensions(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Ids still compiling in the background (see [`HostOptions::defer_compile_above_bytes`]).
    pub fn pending_extensions(&self) -> Vec<String> {
        self.loading.state.lock().pending.clone()
    }

    /// Re-reads the extensions folder as [`Runtime::load_dir`] does (hot reload), leaving
    /// out the ids still compiling in the background, so a reload never waits on them.
    pub fn load_extensions(&self) -> Result<LoadReport, RuntimeError> {
        let pending = self.pending_extensions();
        let runtime = &self.runtime;
        let (report, _) = runtime.load_dir_deferring(&self.settings.extensions_dir, |spec| {
            pending.contains(&spec.id) && !runtime.is_compiled(spec)
        })?;
        Ok(report)
    }

    /// The extensions this host registered (at open, then in the background) from index
    /// `from` on: a surface that keeps its own record of what is installed catches up with
    /// it without reading the folder again.
    pub fn registered_extensions(&self, from: usize) -> Vec<Arc<Extension>> {
        let state = self.loading.state.lock();
        state
            .loaded
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// How many extensions finished loading in the background so far (a surface that
    /// wraps extensions re-reads the folder when this grows).
    pub fn loaded_in_background(&self) -> u64 {
        self.loading.state.lock().finished
    }

    /// Background loads that failed, with the reason.
    pub fn deferred_skipped(&self) -> Vec<Skipped> {
        self.loading.state.lock().skipped.clone()
    }

    /// Waits until no extension is loading in the background, at most `timeout`;
    /// whether they all finished.
    pub fn wait_for_extensions(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.loading.state.lock();
        while !state.pending.is_empty() {
            if self
                .loading
                .done
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return state.pending.is_empty();
            }
        }
        true
    }

    /// Profile candidates no loaded extension provides.
    pub fn profile_warnings(&self) -> &[ProfileWarning] {
        &self.profile_warnings
    }

    /// The profiles in force.
    pub fn profiles(&self) -> Arc<ProfileSet> {
        self.manager.profiles()
    }

    /// The credits ledger.
    pub fn ledger(&self) -> &Arc<SqliteCreditsStore> {
        &self.ledger
    }

    /// The sandbox manager.
    pub fn manager(&self) -> &Arc<SandboxManager> {
        &self.manager
    }

    /// What reconciliation did when the host was opened.
    pub fn reconciled(&self) -> &ReconcileReport {
        &self.reconciled
    }
}

/// Extensions loading in the background.
#[derive(Default)]
struct Loading {
    state: parking_lot::Mutex<LoadingState>,
    done: parking_lot::Condvar,
}

#[derive(Default)]
struct LoadingState {
    pending: Vec<String>,
    skipped: Vec<Skipped>,
    finished: u64,
    /// Every extension this host registered, at open and in the background, in order.
    loaded: Vec<Arc<Extension>>,
}

/// Loads the extensions of `dir` whose compiled code is at hand or whose `.wasm` is at
/// most `above` bytes; returns the others (large and not compiled yet).
fn load_compiled(
    runtime: &Runtime,
    dir: &std::path::Path,
    above: u64,
) -> Result<(LoadReport, Vec<ExtensionSpec>), RuntimeError> {
    runtime.load_dir_deferring(dir, |spec| {
        let large = std::fs::metadata(&spec.component).is_ok_and(|m| m.len() > above);
        let later = large && !runtime.is_compiled(spec);
        if later {
            tracing::info!(extension = %spec.id, file = %spec.component.display(), "not compiled yet: loading in the background");
        }
        later
    })
}

/// Compiles `specs` one after the other on a thread, adding each to the manager's
/// registry as soon as it loads.
fn spawn_deferred_loads(
    runtime: &Runtime,
    manager: &Arc<SandboxManager>,
    loading: &Arc<Loading>,
    specs: Vec<ExtensionSpec>,
    wrap: Option<WrapExtension>,
) {
    loading.state.lock().pending = specs.iter().map(|s| s.id.clone()).collect();
    let runtime = runtime.clone();
    let manager = Arc::clone(manager);
    let shared = Arc::clone(loading);
    let spawned = std::thread::Builder::new()
        .name("extension-loader".into())
        .spawn(move || {
            for spec in specs {
                let id = spec.id.clone();
                let started = std::time::Instant::now();
                let outcome = runtime.load_spec(spec);
                let mut state = shared.state.lock();
                match outcome {
                    Ok(ext) => {
                        state.loaded.push(ext.clone());
                        manager.extensions().upsert(register_as(wrap.as_ref(), ext));
                        tracing::info!(extension = %id, ms = started.elapsed().as_millis() as u64, "extension loaded in the background: now routed to");
                    }
                    Err(err) => {
                        tracing::warn!(extension = %id, file = %err.file.display(), reason = %err.failure, "extension skipped");
                        state.skipped.push(Skipped {
                            file: err.file,
                            id: err.id,
                            reason: err.failure.to_string(),
                        });
                    }
                }
                state.pending.retain(|p| *p != id);
                state.finished += 1;
                shared.done.notify_all();
            }
        });
    if let Err(e) = spawned {
        // No thread: nothing will load them; say so rather than wait forever.
        tracing::error!(error = %e, "cannot start the extension loader thread");
        loading.state.lock().pending.clear();
    }
}

#[cfg(test)]
mod tests {
    /// The HTTP service shares one `Host` between request handlers.
    #[test]
    fn host_and_manager_are_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Host>();
        shareable::<crate::manager::SandboxManager>();
    }
}
