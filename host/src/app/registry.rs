//! The extensions a host serves: loading the folder (large uncached components compile in
//! the background while the others serve), registering each one instrumented, and hot
//! reload (added, replaced, removed, rejected), so every surface sees the same live set.
//!
//! One record of what is loaded: the manager's registry ([`Extensions`]), by id and by
//! version. This module keeps beside it only what is *not* loaded (files that failed,
//! ids still compiling); a reload compares the folder against the registry itself.
//!
//! Every extension is registered through [`instrumented`], the one place extension calls
//! are timed and counted for `/metrics` (at the call itself; with no recorder installed
//! the cost is two clock reads).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::domain::{
    BackendStatus, Capacity, Cost, Created, ExecOutput, ExecRequest, ExtensionError, ExtensionInfo,
    Fault, FileChunk, FileEntry, Function, ProcessOutput, SandboxContext, SandboxRequest, Usage,
};
use crate::manager::{Backend, Extensions};
use crate::payments::settlement::{ByokFee, byok_charge};
use crate::routing::HealthTracker;
use crate::runtime::{
    Extension, ExtensionSpec, LoadFailure, Overlay, Runtime, RuntimeError, Skipped,
};
use crate::telemetry::metrics;
use rust_decimal::Decimal;

/// What one reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Ids routed to from now on.
    pub added: Vec<String>,
    /// Ids whose component or settings changed (new sandboxes get the new version).
    pub replaced: Vec<String>,
    /// Ids no longer routed to (their sandboxes are still destroyed by their version).
    pub removed: Vec<String>,
    /// Ids whose file no longer loads: their previous version keeps serving.
    pub rejected: Vec<String>,
    /// Why the folder could not be read at all (nothing changed), if so.
    pub failed: Option<String>,
}

#[derive(Default)]
struct LoadState {
    /// Ids compiling in the background.
    pending: Vec<String>,
    /// Files of the folder that did not load, as of the last read (open or reload).
    skipped: Vec<Skipped>,
    /// Background loads that failed.
    deferred_skipped: Vec<Skipped>,
}

/// The loaded extensions and how they got there. Shared (`Arc`) with the background
/// loader thread.
pub(crate) struct Registry {
    runtime: Runtime,
    dir: PathBuf,
    /// What the host configures itself in place of sidecars (the embedded agent's `local`).
    overlays: Vec<Overlay>,
    extensions: Arc<Extensions>,
    health: HealthTracker,
    state: Mutex<LoadState>,
    finished: Condvar,
    // One install or reload at a time, so a background load and a reload never both
    // decide about one id.
    installing: Mutex<()>,
}

impl Registry {
    /// Loads `dir` into a fresh registry. With `defer_above`, components larger than that
    /// many bytes whose compiled code is not cached yet are loaded on a thread instead,
    /// each registered as soon as it is ready. A missing folder means no extensions.
    pub(crate) fn open(
        runtime: Runtime,
        dir: &Path,
        overlays: Vec<Overlay>,
        defer_above: Option<u64>,
        health: HealthTracker,
    ) -> Result<Arc<Self>, RuntimeError> {
        let registry = Arc::new(Self {
            runtime,
            dir: dir.to_owned(),
            overlays,
            extensions: Arc::new(Extensions::default()),
            health,
            state: Mutex::new(LoadState::default()),
            finished: Condvar::new(),
            installing: Mutex::new(()),
        });
        if !dir.exists() {
            tracing::warn!(dir = %dir.display(), "no extensions folder: no extension is loaded");
            return Ok(registry);
        }
        let runtime = &registry.runtime;
        let (report, deferred) = runtime.load_dir_deferring(dir, &registry.overlays, |spec| {
            let Some(above) = defer_above else {
                return false;
            };
            let large = std::fs::metadata(&spec.component).is_ok_and(|m| m.len() > above);
            let later = large && !runtime.is_compiled(spec);
            if later {
                tracing::info!(extension = %spec.id, file = %spec.component.display(), "not compiled yet: loading in the background");
            }
            later
        })?;
        for ext in report.loaded {
            registry.extensions.upsert(instrumented(ext));
        }
        {
            let mut state = registry.state.lock();
            state.skipped = report.skipped;
            state.pending = deferred.iter().map(|s| s.id.clone()).collect();
        }
        if !deferred.is_empty() {
            Self::load_in_background(&registry, deferred);
        }
        Ok(registry)
    }

    /// Compiles `specs` one after the other on a thread, registering each as it loads.
    fn load_in_background(registry: &Arc<Self>, specs: Vec<ExtensionSpec>) {
        let shared = Arc::clone(registry);
        let spawned = std::thread::Builder::new()
            .name("extension-loader".into())
            .spawn(move || {
                for spec in specs {
                    let id = spec.id.clone();
                    let started = Instant::now();
                    let outcome = shared.runtime.load_spec(spec);
                    match outcome {
                        Ok(ext) => {
                            shared.install(ext);
                            tracing::info!(extension = %id, ms = started.elapsed().as_millis() as u64, "extension loaded in the background: now routed to");
                        }
                        Err(err) => {
                            tracing::warn!(extension = %id, file = %err.file.display(), reason = %err.failure, "extension skipped");
                            shared.state.lock().deferred_skipped.push(Skipped {
                                retry: matches!(err.failure, LoadFailure::SecretUnavailable { .. }),
                                file: err.file,
                                id: err.id,
                                reason: err.failure.to_string(),
                            });
                        }
                    }
                    let mut state = shared.state.lock();
                    state.pending.retain(|p| *p != id);
                    shared.finished.notify_all();
                }
            });
        if let Err(e) = spawned {
            // No thread: nothing will load them; say so rather than wait forever.
            tracing::error!(error = %e, "cannot start the extension loader thread");
            registry.state.lock().pending.clear();
        }
    }

    /// Registers `ext` unless the registry already serves that very version with the same
    /// settings; whether it was added or replaced.
    fn install(&self, ext: Arc<Extension>) -> Option<&'static str> {
        let _one = self.installing.lock();
        self.install_locked(ext)
    }

    fn install_locked(&self, ext: Arc<Extension>) -> Option<&'static str> {
        let verb = match self.extensions.get(ext.id()) {
            None => "added",
            Some(current) => {
                let same = current.component().is_some_and(|c| {
                    c.version_hash() == ext.version_hash() && c.spec() == ext.spec()
                });
                if same {
                    return None;
                }
                "replaced"
            }
        };
        self.extensions.upsert(instrumented(ext));
        Some(verb)
    }

    /// Re-reads the folder: adds, replaces and removes extensions; a file that fails to
    /// load leaves the previous good version serving. Ids still compiling in the
    /// background are left to their loader (and count as present).
    pub(crate) fn reload(&self) -> ReloadReport {
        let _one = self.installing.lock();
        let mut out = ReloadReport::default();
        let pending = self.pending();
        let runtime = &self.runtime;
        let loaded = runtime.load_dir_deferring(&self.dir, &self.overlays, |spec| {
            pending.contains(&spec.id) && !runtime.is_compiled(spec)
        });
        let (report, deferred) = match loaded {
            Ok(r) => r,
            Err(e) => {
                metrics::reload("extension", "failed");
                tracing::warn!(dir = %self.dir.display(), error = %e, "extensions folder not re-read; the loaded extensions keep serving");
                out.failed = Some(e.to_string());
                return out;
            }
        };
        let mut seen: BTreeSet<String> = deferred.into_iter().map(|s| s.id).collect();
        for ext in report.loaded {
            let id = ext.id().to_owned();
            let version = ext.version_hash().to_owned();
            seen.insert(id.clone());
            if let Some(verb) = self.install_locked(ext) {
                metrics::reload("extension", verb);
                tracing::info!(extension = %id, version = %version, "extension {verb}");
                match verb {
                    "added" => out.added.push(id),
                    _ => out.replaced.push(id),
                }
            }
        }
        for s in &report.skipped {
            if let Some(id) = &s.id {
                seen.insert(id.clone());
                if self.extensions.get(id).is_some() {
                    metrics::reload("extension", "rejected");
                    tracing::warn!(extension = %id, file = %s.file.display(), reason = %s.reason, "extension file does not load; the previous version keeps serving");
                    out.rejected.push(id.clone());
                    continue;
                }
            }
            tracing::warn!(file = %s.file.display(), reason = %s.reason, "extension not loaded");
        }
        for id in self.extensions.ids() {
            if !seen.contains(&id) {
                self.extensions.remove(&id);
                metrics::reload("extension", "removed");
                tracing::info!(extension = %id, "extension removed; its running sandboxes are still destroyed and metered by it");
                out.removed.push(id);
            }
        }
        self.state.lock().skipped = report.skipped;
        out
    }

    /// The runtime the extensions were loaded by.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The manager's view: the one record of what is routed.
    pub(crate) fn extensions(&self) -> &Arc<Extensions> {
        &self.extensions
    }

    /// Circuit and latency per extension, shared with routing and the manager.
    pub(crate) fn health(&self) -> &HealthTracker {
        &self.health
    }

    /// Ids still compiling in the background.
    pub(crate) fn pending(&self) -> Vec<String> {
        self.state.lock().pending.clone()
    }

    /// Files that did not load (the folder's last read, then failed background loads).
    pub(crate) fn skipped(&self) -> Vec<Skipped> {
        let state = self.state.lock();
        let mut all = state.skipped.clone();
        all.extend(state.deferred_skipped.iter().cloned());
        all
    }

    /// Whether some file was skipped only because a secret could not be read yet (the
    /// host reloads the folder until it loads; see [`super::App::retry_extensions`]).
    pub(crate) fn has_retryable(&self) -> bool {
        let state = self.state.lock();
        state
            .skipped
            .iter()
            .chain(&state.deferred_skipped)
            .any(|s| s.retry)
    }

    /// The ids profiles may name: routed now or still compiling.
    pub(crate) fn known_ids(&self) -> Vec<String> {
        let mut ids = self.extensions.ids();
        ids.extend(self.pending());
        ids
    }

    /// Waits until nothing is compiling in the background, at most `timeout`; whether
    /// everything finished.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        while !state.pending.is_empty() {
            if self.finished.wait_until(&mut state, deadline).timed_out() {
                return state.pending.is_empty();
            }
        }
        true
    }
}

/// Registers an extension so every call is timed and failures counted by kind.
fn instrumented(ext: Arc<Extension>) -> Arc<dyn Backend> {
    Arc::new(Instrumented { inner: ext })
}

/// A loaded extension whose every call is timed and counted for `/metrics`.
struct Instrumented {
    inner: Arc<Extension>,
}

impl Instrumented {
    fn timed<T>(
        &self,
        f: Function,
        call: impl FnOnce() -> Result<T, ExtensionError>,
    ) -> Result<T, ExtensionError> {
        let start = Instant::now();
        let r = call();
        let failure = r.as_ref().err().map(|e| failure_kind(&e.fault));
        metrics::extension_call(self.inner.id(), f.wit_name(), start.elapsed(), failure);
        r
    }
}

fn failure_kind(f: &Fault) -> &'static str {
    use crate::domain::BackendError as B;
    match f {
        Fault::Backend(B::InvalidRequest(_)) => "invalid-request",
        Fault::Backend(B::Unsupported(_)) => "unsupported",
        Fault::Backend(B::CapacityExhausted(_)) => "capacity-exhausted",
        Fault::Backend(B::Unavailable(_)) => "unavailable",
        Fault::Backend(B::NotFound(_)) => "not-found",
        Fault::Backend(B::Unauthorized(_)) => "unauthorized",
        Fault::Backend(B::Internal(_)) => "internal",
        Fault::Timeout { .. } => "timeout",
        Fault::OutOfMemory { .. } => "out-of-memory",
        Fault::Trap { .. } => "trap",
        Fault::BadAnswer { .. } => "bad-answer",
        Fault::Quarantined { .. } => "quarantined",
    }
}

impl Instrumented {
    /// The platform fee when `tenant` runs on its own key here, else `None` (the
    /// provider's price is billed).
    fn byok_fee(&self, req: &SandboxRequest) -> Option<ByokFee> {
        if self.inner.byok_fields().is_empty() || !self.inner.runs_on_tenant_key(req) {
            return None;
        }
        let g = &self.inner.spec().grants;
        Some(ByokFee {
            percent: g.byok_fee_percent.unwrap_or_default(),
            per_sandbox_hour: g.byok_fee_per_sandbox_hour.unwrap_or_default(),
        })
    }
}

impl Backend for Instrumented {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn version(&self) -> &str {
        self.inner.version()
    }
    fn info(&self) -> &ExtensionInfo {
        self.inner.info()
    }
    fn estimate_cost(&self, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        let price = self.timed(Function::EstimateCost, || self.inner.estimate_cost(req))?;
        Ok(match self.byok_fee(req) {
            Some(fee) => {
                let hours = Decimal::from(req.max_duration_secs) / Decimal::from(3600);
                byok_charge(&price, fee, hours)
            }
            None => price,
        })
    }
    fn create(&self, req: &SandboxRequest) -> Result<Created, ExtensionError> {
        self.timed(Function::Create, || self.inner.create(req))
    }
    fn status(&self, ctx: &SandboxContext) -> Result<BackendStatus, ExtensionError> {
        self.timed(Function::Status, || self.inner.status(ctx))
    }
    fn destroy(&self, ctx: &SandboxContext) -> Result<Usage, ExtensionError> {
        self.timed(Function::Destroy, || self.inner.destroy(ctx))
    }
    fn meter_actual(&self, req: &SandboxRequest, usage: &Usage) -> Result<Cost, ExtensionError> {
        let price = self.timed(Function::MeterActual, || {
            self.inner.meter_actual(req, usage)
        })?;
        Ok(match self.byok_fee(req) {
            Some(fee) => {
                let hours = Decimal::from(usage.duration_ms) / Decimal::from(3_600_000);
                byok_charge(&price, fee, hours)
            }
            None => price,
        })
    }
    fn capacity(&self) -> Result<Capacity, ExtensionError> {
        self.timed(Function::Capacity, || self.inner.capacity())
    }
    fn component(&self) -> Option<&Extension> {
        Some(&self.inner)
    }
    fn exec(&self, ctx: &SandboxContext, req: &ExecRequest) -> Result<ExecOutput, ExtensionError> {
        self.timed(Function::Exec, || self.inner.exec(ctx, req))
    }
    fn start(&self, ctx: &SandboxContext, req: &ExecRequest) -> Result<String, ExtensionError> {
        self.timed(Function::Start, || self.inner.start(ctx, req))
    }
    fn read_output(
        &self,
        ctx: &SandboxContext,
        process_id: &str,
        cursor: &str,
        wait: Duration,
        max_bytes: u32,
    ) -> Result<ProcessOutput, ExtensionError> {
        self.timed(Function::ReadOutput, || {
            self.inner
                .read_output(ctx, process_id, cursor, wait, max_bytes)
        })
    }
    fn kill(&self, ctx: &SandboxContext, process_id: &str) -> Result<(), ExtensionError> {
        self.timed(Function::Kill, || self.inner.kill(ctx, process_id))
    }
    fn write_file(
        &self,
        ctx: &SandboxContext,
        path: &str,
        data: &[u8],
        append: bool,
    ) -> Result<(), ExtensionError> {
        self.timed(Function::WriteFile, || {
            self.inner.write_file(ctx, path, data, append)
        })
    }
    fn read_file(
        &self,
        ctx: &SandboxContext,
        path: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FileChunk, ExtensionError> {
        self.timed(Function::ReadFile, || {
            self.inner.read_file(ctx, path, offset, max_bytes)
        })
    }
    fn list_files(
        &self,
        ctx: &SandboxContext,
        path: &str,
    ) -> Result<Vec<FileEntry>, ExtensionError> {
        self.timed(Function::ListFiles, || self.inner.list_files(ctx, path))
    }
}
