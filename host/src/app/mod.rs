//! The application: the one value both surfaces (the `sandboxer` CLI and the HTTP API of
//! `sandboxer-host run`) call, and nothing else does. Every use case is a method on
//! [`App`] that takes typed input and returns a typed answer that derives `Serialize`;
//! both surfaces render that answer (a table, or the same JSON bytes via [`to_json`]), so
//! they cannot drift. Errors are one [`AppError`].
//!
//! By use case: `sandboxes.rs` (create, get, list, destroy, explain), `credits.rs`
//! (balances, statement, grant, verify), `extensions.rs` (list, check, prune, reload),
//! `jobs.rs` (the background work a service schedules: reaper, lease keeper, event
//! delivery, gauges), `session.rs` (exec and files in a running sandbox), `keys.rs`
//! (tenants' own provider keys); `registry.rs` loads the extensions folder.
//!
//! Opening is lazy: [`App::open`] does no I/O, and each use case opens only the parts it
//! needs, once: the ledger (credits), the runtime and the extensions (listing), or the
//! whole lifecycle (profiles, status store, manager; reconciled when it opens). So
//! `sandboxer credits show` compiles no extension and starts no runtime, and a broken
//! `.wasm` cannot stop it. A service calls [`App::start`] to open everything before it
//! accepts requests.

mod credits;
mod error;
mod extensions;
mod jobs;
mod keys;
mod overview;
mod paging;
mod registry;
mod sandboxes;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use serde::Serialize;

pub use crate::manager::{LeasePolicy, LeaseReport, ReconcileReport};
pub use crate::payments::OverdraftPolicy;
pub use crate::routing::HealthConfig;
pub use crate::runtime::grants::{GrantSpec, SecretSource};
pub use crate::runtime::{CompileEvent, CompileHook, ExtensionSpec, Overlay};
pub use credits::{Balances, GrantRequest, Granted, Statement};
pub use error::AppError;
pub use extensions::{CheckOptions, ExtensionList, ExtensionRow, ExtensionStatus};
pub use jobs::{DeliveryReport, EventHub, ReapReport, Started};
pub use keys::{KeyList, KeyRow};
pub use overview::{InUse, Overview};
pub use paging::{DEFAULT_LIMIT, MAX_LIMIT, PageRequest};
pub use registry::ReloadReport;
pub use sandboxes::{Explanation, ProfileSummary, SandboxPage};
pub use session::{
    DEFAULT_EXEC_TIMEOUT_MS, DEFAULT_MAX_FILE_BYTES, DEFAULT_OUTPUT_LIMIT_BYTES, ExecAnswer,
    ExecEvent, ExecSink, FILE_CHUNK_BYTES, FileList, FileWritten, MAX_EXEC_TIMEOUT_MS,
    MAX_OUTPUT_LIMIT_BYTES, Output,
};

/// Re-exported for the answers that carry them (`extensions check`, `prune-cache`,
/// the extension list's rows).
pub use crate::runtime::conformance::{Check, ConformanceReport};
pub use crate::runtime::{ArtifactSource, CacheStats, Health, Pruned, PrunedFile, Quarantine};

use crate::events::JsonlSink;
use crate::manager::{ManagerConfig, ManagerParts, SandboxManager};
use crate::payments::CreditsStore;
use crate::routing::profile::{ProfileWarning, load_profiles};
use crate::routing::{HealthTracker, ProfileSet};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::settings::Settings;
use crate::storage::{Database, PostgresDatabase, SqliteDatabase};
use registry::Registry;

pub use crate::secrets::openbao::DEFAULT_TENANT_PREFIX;
pub use crate::secrets::{OpenBao, OpenBaoAuth, OpenBaoError, OpenBaoSettings};

/// Uncached components larger than this (4 MiB) compile in the background in a service:
/// interpreted-language guests are 12 to 20 MB, Rust ones well under 1 MB.
pub const DEFER_COMPILE_ABOVE_BYTES: u64 = 4 << 20;

/// How an [`App`] behaves beyond its folders. The default is the CLI's: every
/// settlement's event delivered at once, whole-duration holds, everything compiled
/// before answering.
#[derive(Clone)]
pub struct AppOptions {
    /// The CloudEvents `source` of meter events (default `urn:sandboxer:host:<hostname>`).
    pub event_source: Option<String>,
    /// Deliver each settlement's meter event right away (the CLI), or leave it to
    /// [`App::deliver_once`] on a timer (a service: many settlements share one write).
    pub deliver_after_settle: bool,
    /// Hold credits one lease at a time, renewed by [`App::keep_leases_once`] (`None`:
    /// hold the whole maximum duration at create).
    pub leases: Option<LeasePolicy>,
    /// The circuit breaker routing keeps per extension.
    pub health: HealthConfig,
    /// What happens when a meter exceeds its hold.
    pub overdraft: OverdraftPolicy,
    /// A hold with no sandbox record is released by reconciliation once it is this old
    /// (another process may be between taking it and recording it).
    pub orphan_hold_grace: Duration,
    /// Compile uncached components larger than this in the background, serving the
    /// others meanwhile (a service; [`DEFER_COMPILE_ABOVE_BYTES`]). `None`: compile
    /// everything before answering (the CLI, whose commands need every extension).
    pub defer_compile_above_bytes: Option<u64>,
    /// The precompiled-artifact cache (default `<state>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// Progress of compiles not served by the cache (the CLI's spinner).
    pub on_compile: Option<CompileHook>,
    /// HTTP event hubs fed from the JSONL event log by [`App::deliver_once`].
    pub event_hubs: Vec<EventHub>,
    /// Open the lifecycle without reconciling (tests of recovery itself).
    pub skip_reconcile: bool,
    /// Where `{ openbao = … }` sidecar secrets are read (`[openbao]` of sandboxer.toml).
    pub openbao: Option<Arc<OpenBao>>,
    /// Extensions the host configures itself in place of sidecar files (a service's
    /// embedded agent wires `local` this way, or skips it with the reason).
    pub overlays: Vec<Overlay>,
    /// `[grants]` of sandboxer.toml: what sidecars may grant, and grants the host owns.
    pub grant_policy: crate::runtime::grant_policy::GrantPolicy,
    /// The largest file written or read in one request ([`DEFAULT_MAX_FILE_BYTES`]).
    pub max_file_bytes: u64,
    /// A PostgreSQL database (`postgres://…`) for the ledger and the sandbox statuses in
    /// place of the SQLite file in the state folder (`--database`,
    /// `SANDBOXER_DATABASE_URL`, `[database] url`; docs/database.md).
    pub database_url: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        let manager = ManagerConfig::default();
        Self {
            event_source: None,
            deliver_after_settle: manager.deliver_after_settle,
            leases: manager.lease,
            health: HealthConfig::default(),
            overdraft: OverdraftPolicy::default(),
            orphan_hold_grace: manager.orphan_hold_grace,
            defer_compile_above_bytes: None,
            cache_dir: None,
            on_compile: None,
            event_hubs: Vec::new(),
            skip_reconcile: false,
            openbao: None,
            overlays: Vec::new(),
            grant_policy: Default::default(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            database_url: None,
        }
    }
}

/// The application value; cheap to clone (shared), safe to use from many threads.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

/// The lifecycle's parts, opened together.
struct Lifecycle {
    manager: Arc<SandboxManager>,
    reconciled: ReconcileReport,
    warnings: Mutex<Vec<ProfileWarning>>,
}

struct Inner {
    settings: Settings,
    options: AppOptions,
    database: Box<dyn Database>,
    runtime: OnceCell<Runtime>,
    ledger: OnceCell<Arc<dyn CreditsStore>>,
    registry: OnceCell<Arc<Registry>>,
    lifecycle: OnceCell<Lifecycle>,
    jobs: jobs::JobState,
}

impl App {
    /// The application over `settings`' folders. Opens nothing: each use case opens what
    /// it needs on first use.
    pub fn open(settings: &Settings, options: AppOptions) -> Self {
        let database: Box<dyn Database> = match &options.database_url {
            Some(url) => Box::new(PostgresDatabase::new(url.clone())),
            None => Box::new(SqliteDatabase::new(settings.ledger_path())),
        };
        Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                options,
                database,
                runtime: OnceCell::new(),
                ledger: OnceCell::new(),
                registry: OnceCell::new(),
                lifecycle: OnceCell::new(),
                jobs: jobs::JobState::default(),
            }),
        }
    }

    /// The folders it works on.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn options(&self) -> &AppOptions {
        &self.inner.options
    }

    /// The OpenBao it reads secrets from, when configured.
    pub fn openbao(&self) -> Option<&Arc<OpenBao>> {
        self.inner.options.openbao.as_ref()
    }

    /// The database the ledger and statuses live in, for messages: the SQLite file, or
    /// the PostgreSQL URL with its password hidden.
    pub fn database(&self) -> String {
        self.inner.database.describe()
    }

    fn create_state_dir(&self) -> Result<(), AppError> {
        let dir = &self.inner.settings.state_dir;
        crate::storage::private::private_dir(dir).map_err(|e| {
            AppError::open(format!(
                "cannot create the state folder {} (0700): {e}",
                dir.display()
            ))
        })
    }

    fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            cache_dir: Some(
                self.options()
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| self.inner.settings.cache_dir()),
            ),
            on_compile: self.options().on_compile.clone(),
            openbao: self.options().openbao.clone(),
            grant_policy: self.options().grant_policy.clone(),
            ..RuntimeConfig::default()
        }
    }

    /// The WebAssembly runtime (an engine and its epoch thread), started on first use.
    fn runtime(&self) -> Result<&Runtime, AppError> {
        self.inner
            .runtime
            .get_or_try_init(|| Runtime::new(self.runtime_config()).map_err(AppError::open))
    }

    /// The ledger. Reading use cases pass `create: false`: when no ledger exists yet they
    /// get `None`, and none is created.
    fn ledger(&self, create: bool) -> Result<Option<&Arc<dyn CreditsStore>>, AppError> {
        if let Some(l) = self.inner.ledger.get() {
            return Ok(Some(l));
        }
        if !create && !self.inner.database.exists() {
            return Ok(None);
        }
        self.create_state_dir()?;
        let ledger = self.inner.ledger.get_or_try_init(|| {
            self.inner
                .database
                .credits(self.options().overdraft)
                .map_err(AppError::from)
        })?;
        Ok(Some(ledger))
    }

    /// The ledger, created if missing (every write, and the lifecycle, need one).
    fn ledger_for_writes(&self) -> Result<&Arc<dyn CreditsStore>, AppError> {
        self.ledger(true)?
            .ok_or_else(|| AppError::internal("the ledger did not open"))
    }

    /// The extensions folder, loaded.
    fn registry(&self) -> Result<&Arc<Registry>, AppError> {
        self.inner.registry.get_or_try_init(|| {
            let runtime = self.runtime()?.clone();
            let registry = Registry::open(
                runtime,
                &self.inner.settings.extensions_dir,
                self.options().overlays.clone(),
                self.options().defer_compile_above_bytes,
                HealthTracker::new(self.options().health),
            )
            .map_err(AppError::open)?;
            Ok(registry)
        })
    }

    /// Everything a sandbox's life needs: extensions, profiles, the status store and the
    /// manager over them and the ledger; reconciled when it opens (unless told not to).
    fn lifecycle(&self) -> Result<&Lifecycle, AppError> {
        self.inner.lifecycle.get_or_try_init(|| {
            self.create_state_dir()?;
            // The ledger first: it creates the database the status store adds its tables
            // to, and a database that cannot be opened fails before extensions compile.
            let ledger = self.ledger_for_writes()?.clone();
            let registry = self.registry()?;
            let settings = &self.inner.settings;
            let profiles = if settings.profiles_dir.exists() {
                load_profiles(&settings.profiles_dir).map_err(|errors| {
                    AppError::open(format!(
                        "the profiles in {} do not load:\n{}",
                        settings.profiles_dir.display(),
                        errors
                            .iter()
                            .map(|e| format!("  {e}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ))
                })?
            } else {
                tracing::warn!(dir = %settings.profiles_dir.display(), "no profiles folder: no profile is loaded");
                ProfileSet::default()
            };
            let warnings = profiles.check_candidates(&registry.known_ids());
            for w in &warnings {
                tracing::warn!(profile = %w.profile, file = %w.file.display(), "{}", w.message);
            }
            let store = self.inner.database.sandboxes()?;
            let options = self.options();
            let mut config = ManagerConfig {
                deliver_after_settle: options.deliver_after_settle,
                lease: options.leases,
                orphan_hold_grace: options.orphan_hold_grace,
                ..ManagerConfig::default()
            };
            if let Some(source) = &options.event_source {
                config.event_source = source.clone();
            }
            let manager = SandboxManager::open(ManagerParts {
                store,
                run_dir: settings.state_dir.join("run"),
                extensions: registry.extensions().clone(),
                profiles: Arc::new(profiles),
                ledger,
                health: registry.health().clone(),
                sinks: vec![Arc::new(JsonlSink::new(settings.events_path()))],
                config,
            })?;
            let reconciled = if options.skip_reconcile {
                ReconcileReport::default()
            } else {
                manager.reconcile()?
            };
            Ok(Lifecycle {
                manager: Arc::new(manager),
                reconciled,
                warnings: Mutex::new(warnings),
            })
        })
    }

    fn manager(&self) -> Result<&Arc<SandboxManager>, AppError> {
        Ok(&self.lifecycle()?.manager)
    }

    /// Opens every part now, as a service does before it accepts requests: the ledger,
    /// the extensions (large uncached ones keep compiling in the background), the
    /// profiles and the manager (reconciling what a previous process left), and the
    /// event hubs. Says what was reconciled and which files did not load.
    pub fn start(&self) -> Result<Started, AppError> {
        let lifecycle = self.lifecycle()?;
        self.inner.jobs.hubs(self)?;
        Ok(Started {
            reconciled: lifecycle.reconciled.clone(),
            skipped: self
                .registry()?
                .skipped()
                .iter()
                .map(jobs::skipped_line)
                .collect(),
        })
    }

    /// What reconciliation did when the lifecycle opened (empty before it did).
    pub fn reconciled(&self) -> ReconcileReport {
        self.inner
            .lifecycle
            .get()
            .map(|l| l.reconciled.clone())
            .unwrap_or_default()
    }

    /// Installs (or with `None` removes) a callback the manager runs at the named points
    /// of a race window, so a test can interleave another process's step exactly. Not
    /// for production use.
    #[doc(hidden)]
    pub fn set_test_hook(&self, hook: Option<crate::manager::TestHook>) -> Result<(), AppError> {
        self.manager()?.set_test_hook(hook);
        Ok(())
    }
}

/// The one serialisation of every answer: compact JSON. The CLI prints it (`--json`) and
/// the HTTP API answers it, so the same answer is the same bytes on both.
pub fn to_json<T: Serialize>(answer: &T) -> Result<String, AppError> {
    serde_json::to_string(answer).map_err(AppError::internal)
}

#[cfg(test)]
mod tests {
    /// The HTTP service shares one `App` between request handlers.
    #[test]
    fn the_app_is_shareable_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::App>();
        shareable::<crate::manager::SandboxManager>();
    }
}
