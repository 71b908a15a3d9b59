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
use crate::runtime::{LoadReport, Runtime, RuntimeConfig, RuntimeError, Skipped};

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
        let report = if settings.extensions_dir.exists() {
            runtime.load_dir(&settings.extensions_dir)?
        } else {
            tracing::warn!(dir = %settings.extensions_dir.display(), "no extensions folder: no extension is loaded");
            LoadReport::default()
        };
        let backends: Vec<Arc<dyn Backend>> = report
            .loaded
            .iter()
            .map(|e| e.clone() as Arc<dyn Backend>)
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
        let profile_warnings = profiles.check_candidates(&extensions.ids());
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
        Ok(Self {
            settings: settings.clone(),
            runtime,
            skipped: report.skipped,
            profile_warnings,
            ledger,
            manager: Arc::new(manager),
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

    /// Extension files that were not loaded, with the reason.
    pub fn skipped_extensions(&self) -> &[Skipped] {
        &self.skipped
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
