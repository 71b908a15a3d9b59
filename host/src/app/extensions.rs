//! Extension use cases: the live list (what routing may use now, with circuit and trap
//! record, and the files that did not load), the conformance check of one component,
//! pruning the compile cache, hot reload. Listing opens the runtime and the extensions
//! folder only (no ledger, no profiles).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::registry::ReloadReport;
use super::{App, AppError};
use crate::domain::{Capability, Currency, HealthStatus, Kind, Scope};
use crate::manager::Backend;
use crate::routing::profile::reload_profiles;
use crate::runtime::conformance::{self, ConformanceReport};
use crate::runtime::{
    ArtifactSource, CacheStats, CallLimits, ExtensionSpec, Health, Pruned, QuarantinePolicy,
    Runtime, RuntimeConfig,
};
use crate::telemetry::metrics;

/// Where an extension stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionStatus {
    /// Routed to.
    Loaded,
    /// Loaded, but refused calls for a while after repeated traps.
    Quarantined,
    /// Its file did not load (the reason says why).
    Skipped,
}

/// One extension, or one file that did not load. Tenants see the extension's identity,
/// offer and circuit; the operator also sees files, compiled-code source, the trap
/// record and skipped files.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExtensionRow {
    /// The id (a skipped file's, when known).
    pub id: Option<String>,
    /// Loaded, quarantined or skipped.
    pub status: ExtensionStatus,
    /// Self-hosted or SaaS.
    pub kind: Option<Kind>,
    /// Its name.
    pub name: Option<String>,
    /// Its own version string.
    pub version: Option<String>,
    /// What it prices in.
    pub currency: Option<Currency>,
    /// Regions it serves (empty: any).
    pub regions: Option<Vec<String>>,
    /// Optional functions it implements.
    pub capabilities: Option<Vec<Capability>>,
    /// Its declared startup latency.
    pub startup_latency_ms: Option<u32>,
    /// Which version serves new sandboxes (what their `extension_version` says): a sha256
    /// over the `.wasm`'s digest and its resolved spec, so an edited sidecar is a new
    /// version too.
    pub version_hash: Option<String>,
    /// Its circuit as routing sees it.
    pub health: Option<HealthStatus>,
    /// Where its compiled code came from (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactSource>,
    /// Calls, traps and quarantine (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containment: Option<Health>,
    /// Its component's file name in the extensions folder (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Its sidecar's file name, if configured by one (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<String>,
    /// Why it is quarantined or skipped (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The live extensions: loaded ones by id, then (for the operator) the files that did
/// not load; ids still compiling; and (operator) the compile cache's counters.
/// `GET /v1/extensions`, `sandboxer extensions list`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ExtensionList {
    /// The rows.
    pub extensions: Vec<ExtensionRow>,
    /// Ids compiling in the background, routed to once loaded.
    pub pending: Vec<String>,
    /// Compiled-code sources since the runtime started (operator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
}

/// What `extensions check` changes about a component's own configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// `wasi:config` values added to (or over) the sidecar's `[config]`.
    pub config: Vec<(String, String)>,
    /// Time budget of each call (default: the sidecar's, else 1000 ms).
    pub timeout_ms: Option<u64>,
    /// Memory cap of each instance (default: the sidecar's, else 64 MiB).
    pub memory_mib: Option<u64>,
}

impl App {
    /// The live extensions, as `scope` may see them.
    pub fn extensions(&self, scope: &Scope) -> Result<ExtensionList, AppError> {
        let registry = self.registry()?;
        let operator = scope.is_operator();
        let health = registry.health();
        let extensions = registry.extensions();
        let mut rows: Vec<ExtensionRow> = extensions
            .ids()
            .into_iter()
            .filter_map(|id| extensions.get(&id))
            .map(|b| loaded_row(b.as_ref(), health.status(b.id()), operator))
            .collect();
        if operator {
            let loaded: Vec<String> = extensions.ids();
            rows.extend(
                registry
                    .skipped()
                    .into_iter()
                    // A broken replacement of a loaded id is a rejected reload: the
                    // loaded version's row stands for it.
                    .filter(|s| s.id.as_ref().is_none_or(|id| !loaded.contains(id)))
                    .map(|s| ExtensionRow {
                        id: s.id,
                        status: ExtensionStatus::Skipped,
                        kind: None,
                        name: None,
                        version: None,
                        currency: None,
                        regions: None,
                        capabilities: None,
                        startup_latency_ms: None,
                        version_hash: None,
                        health: None,
                        artifact: None,
                        containment: None,
                        file: Some(file_name(&s.file)),
                        sidecar: None,
                        reason: Some(s.reason),
                    }),
            );
        }
        Ok(ExtensionList {
            extensions: rows,
            pending: registry.pending(),
            cache: operator.then(|| registry.runtime().cache_stats()),
        })
    }

    /// Loads one component (a `.wasm`, or a sidecar naming one with its configuration),
    /// calls each function with a sample request and validates every answer. Runs on a
    /// runtime of its own that never quarantines, so each function gets its verdict.
    pub fn check_extension(
        &self,
        file: &Path,
        options: &CheckOptions,
    ) -> Result<ConformanceReport, AppError> {
        let is_sidecar = file.extension().is_some_and(|e| e == "toml");
        let spec = if is_sidecar {
            ExtensionSpec::from_sidecar(file)
        } else {
            ExtensionSpec::from_file(file)
        };
        let mut spec = spec.map_err(|e| AppError::invalid("file", e.to_string()))?;
        spec.config.extend(options.config.iter().cloned());
        let defaults = CallLimits::default();
        spec.memory_limit_mib = options
            .memory_mib
            .or(spec.memory_limit_mib)
            .or(Some(defaults.memory_limit_mib));
        spec.call_timeout_ms = options.timeout_ms.or(spec.call_timeout_ms);
        let config = RuntimeConfig {
            quarantine: QuarantinePolicy {
                after_traps: 0,
                ..QuarantinePolicy::default()
            },
            ..self.runtime_config()
        };
        let runtime = Runtime::new(config).map_err(AppError::open)?;
        Ok(conformance::check_spec(&runtime, spec))
    }

    /// Deletes compiled artifacts no component of the extensions folder can use any more
    /// (or, with `dry_run`, lists them).
    pub fn prune_cache(&self, dry_run: bool) -> Result<Pruned, AppError> {
        let dir = &self.settings().extensions_dir;
        self.runtime()?.prune_cache(dir, dry_run).map_err(|e| {
            AppError::open(format!(
                "{e} (pass the --extensions-dir the host serves, so its components stay compiled)"
            ))
        })
    }

    /// The compile cache folder.
    pub fn cache_dir(&self) -> PathBuf {
        self.runtime_config().cache_dir.unwrap_or_default()
    }

    /// Re-reads the extensions folder (hot reload): adds, replaces and removes
    /// extensions; a file that fails to load leaves its previous version serving.
    pub fn reload_extensions(&self) -> Result<ReloadReport, AppError> {
        let registry = self.registry()?;
        let report = registry.reload();
        if let Some(lifecycle) = self.inner.lifecycle.get() {
            *lifecycle.warnings.lock() = lifecycle
                .manager
                .profiles()
                .check_candidates(&registry.known_ids());
        }
        Ok(report)
    }

    /// Reloads the extensions folder if some extension is skipped only because a secret
    /// could not be read yet (OpenBao down or sealed, the secret not written); `None` when
    /// there was nothing to retry. The service calls it on the `[openbao] retry_secs` timer.
    pub fn retry_extensions(&self) -> Result<Option<ReloadReport>, AppError> {
        if !self.registry()?.has_retryable() {
            return Ok(None);
        }
        let report = self.reload_extensions()?;
        if !report.added.is_empty() {
            tracing::info!(added = ?report.added, "extensions whose secrets could not be read are loaded now");
        }
        Ok(Some(report))
    }

    /// Re-reads the profiles folder file by file: a file that loads replaces what it
    /// defined, a removed file takes its profiles away, a broken file keeps its previous
    /// version serving (reported in `rejected`).
    pub fn reload_profiles(&self) -> Result<ReloadReport, AppError> {
        let lifecycle = self.lifecycle()?;
        let manager = &lifecycle.manager;
        let dir = &self.settings().profiles_dir;
        let previous = manager.profiles();
        let reloaded = reload_profiles(dir, &previous);
        for e in &reloaded.errors {
            tracing::warn!(error = %e, "profile file does not load; its previous version (if any) keeps serving");
        }
        if !reloaded.kept.is_empty() {
            tracing::warn!(profiles = ?reloaded.kept, "kept at their previous version");
        }
        let warnings = reloaded.set.check_candidates(&self.registry()?.known_ids());
        for w in &warnings {
            tracing::warn!(profile = %w.profile, "{}", w.message);
        }
        *lifecycle.warnings.lock() = warnings;
        let n = reloaded.set.len();
        let mut report = ReloadReport::default();
        for p in reloaded.set.iter() {
            if previous.get(&p.id).is_none() {
                report.added.push(p.id.clone());
            } else if previous.get(&p.id) != Some(p) {
                report.replaced.push(p.id.clone());
            }
        }
        report.removed = previous
            .iter()
            .filter(|p| reloaded.set.get(&p.id).is_none())
            .map(|p| p.id.clone())
            .collect();
        report.rejected = reloaded.kept.clone();
        let outcome = if reloaded.errors.is_empty() {
            "replaced"
        } else {
            "rejected"
        };
        manager.set_profiles(std::sync::Arc::new(reloaded.set));
        metrics::reload("profile", outcome);
        tracing::info!(profiles = n, dir = %dir.display(), "profiles reloaded");
        Ok(report)
    }

    /// Waits until no extension is compiling in the background, at most `timeout`;
    /// whether they all finished.
    pub fn wait_for_extensions(&self, timeout: Duration) -> Result<bool, AppError> {
        Ok(self.registry()?.wait(timeout))
    }
}

fn loaded_row(b: &dyn Backend, health: HealthStatus, operator: bool) -> ExtensionRow {
    let info = b.info();
    let component = b.component();
    let containment = component.map(|c| c.health());
    let quarantined = containment.as_ref().and_then(|h| h.quarantine.as_ref());
    ExtensionRow {
        id: Some(b.id().to_owned()),
        status: if quarantined.is_some() {
            ExtensionStatus::Quarantined
        } else {
            ExtensionStatus::Loaded
        },
        kind: Some(info.kind),
        name: Some(info.name.clone()),
        version: Some(info.version.clone()),
        currency: Some(info.currency.clone()),
        regions: Some(info.regions.clone()),
        capabilities: Some(info.capabilities.clone()),
        startup_latency_ms: Some(info.startup_latency_ms),
        version_hash: Some(b.version().to_owned()),
        health: Some(health),
        artifact: component
            .filter(|_| operator)
            .map(|c| c.artifact_source().clone()),
        file: component.filter(|_| operator).map(|c| file_name(c.file())),
        sidecar: component
            .filter(|_| operator)
            .and_then(|c| c.sidecar())
            .map(file_name),
        reason: quarantined.filter(|_| operator).map(|q| q.reason.clone()),
        containment: containment.filter(|_| operator),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}
