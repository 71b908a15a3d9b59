//! One loaded extension: its identity, its cached `info`, a pool of warm instances and
//! the typed API over its functions.
//!
//! Each instance has its own `Store` (a trap poisons every instance in a store). Warm
//! instances are reused between calls, dropped after a trap, and recycled after a number
//! of calls so that a slow leak inside a guest cannot grow without bound. An extension
//! that traps several times in a row is quarantined with exponential back-off.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use wasmtime::{Engine, Store};

use wasmtime::component::InstancePre;

use super::bindings::{self, ExportIndices, Guests, OptionalExports, wit, wit_files, wit_process};
use super::engine::EpochTicker;
use super::grants::{Grants, SecretSet};
use super::limits::{
    self, CallLimits, EXEC_CALL_MARGIN, MAX_READ_OUTPUT_WAIT, StoreData, TRANSFER_CALL_BUDGET,
};
use super::sidecar::ExtensionSpec;
use super::types::{
    BackendError, BackendStatus, Capability, Capacity, Cost, Created, ExtensionError,
    ExtensionInfo, Fault, Function, SandboxContext, SandboxRequest, Usage,
};
use crate::domain::KeyUse;
use crate::domain::exec::{ExecOutput, ExecRequest, FileChunk, FileEntry, ProcessOutput};

/// When an extension is quarantined and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantinePolicy {
    /// Consecutive traps (timeouts, out-of-memory, panics) that trigger quarantine.
    pub after_traps: u32,
    /// The first quarantine's length; each further one doubles it.
    pub base_backoff: Duration,
    /// The longest quarantine.
    pub max_backoff: Duration,
}

impl Default for QuarantinePolicy {
    fn default() -> Self {
        Self {
            after_traps: 3,
            base_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// How warm instances are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Warm instances kept per extension (0: every call gets a fresh instance).
    pub max_idle: usize,
    /// Calls after which an instance is discarded and replaced by a fresh one.
    pub recycle_after: u32,
    /// Calls of one extension in progress at once, each in an instance of its own (so,
    /// with `max_idle`, the bound on its live instances and their memory). A call past it
    /// waits for one to end, at most its own time budget, then fails as
    /// `capacity-exhausted` (retryable: the router tries the next candidate).
    pub max_instances: usize,
}

/// Default of [`PoolPolicy::max_instances`]: with the default 64 MiB cap per instance, at
/// most 4 GiB of guest memory per extension.
pub const DEFAULT_MAX_INSTANCES: usize = 64;

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            max_idle: 4,
            recycle_after: 10_000,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

/// Where an extension's compiled code came from when it was loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ArtifactSource {
    /// Compiled from the `.wasm` (no cached artifact).
    Compiled,
    /// The cached artifact was unusable and has been replaced by a fresh compile.
    Recompiled { reason: String },
    /// Loaded from the precompiled-artifact cache.
    Cache,
    /// Shared with another extension of this process backed by the same component.
    Shared,
}

/// An extension's quarantine, when it is in one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Quarantine {
    /// Unix milliseconds when calls are let through again (one trial call first).
    pub until_unix_ms: u64,
    /// The fault that triggered it.
    pub reason: String,
}

/// A snapshot of an extension's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Calls made (including refused ones).
    pub calls: u64,
    /// Calls that trapped, timed out or ran out of memory.
    pub traps: u64,
    /// Traps since the last successful call.
    pub consecutive_traps: u32,
    /// The last fault of any kind, for operators.
    pub last_error: Option<String>,
    /// Set while calls are refused.
    pub quarantine: Option<Quarantine>,
}

#[derive(Debug, Default)]
struct HealthState {
    calls: u64,
    traps: u64,
    consecutive_traps: u32,
    /// Quarantines since the last success: sets the back-off exponent.
    quarantines: u32,
    last_error: Option<String>,
    quarantined_until: Option<(Instant, u64)>,
    quarantine_reason: String,
}

/// A warm instance, how many calls it has served, and which version of the secrets its
/// `wasi:config` holds (a guest may cache a value it read, so an instance is never handed
/// other secrets than it was built with: it is retired instead).
struct Warm {
    store: Store<StoreData>,
    guests: Guests,
    calls: u32,
    generation: u64,
}

/// Options an extension is built with (from the runtime's configuration).
#[derive(Debug, Clone)]
pub(crate) struct ExtensionOptions {
    pub limits: CallLimits,
    pub pool: PoolPolicy,
    pub quarantine: QuarantinePolicy,
    /// Outbound hosts and secrets, resolved from the sidecar (see [`super::grants`]).
    pub grants: Arc<Grants>,
}

/// A loaded extension: call it through the typed methods below.
pub struct Extension {
    info: ExtensionInfo,
    spec: ExtensionSpec,
    version_hash: String,
    version: String,
    source: ArtifactSource,
    calls: Calls,
}

/// The call machinery: instances, limits, health.
struct Calls {
    id: String,
    config: std::collections::BTreeMap<String, String>,
    options: ExtensionOptions,
    engine: Engine,
    pre: InstancePre<StoreData>,
    indices: ExportIndices,
    /// Which of `process` and `files` the component exports.
    exports: OptionalExports,
    idle: Mutex<Vec<Warm>>,
    /// Calls in progress (each holds an instance), and the wake-up of a call waiting for
    /// one to end (see [`PoolPolicy::max_instances`]).
    in_calls: Mutex<usize>,
    call_ended: Condvar,
    health: Mutex<HealthState>,
    /// Keeps the epoch advancing while the extension exists, even if its runtime is gone.
    _ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("id", &self.calls.id)
            .field("file", &self.spec.component)
            .field("version_hash", &self.version_hash)
            .finish_non_exhaustive()
    }
}

impl Extension {
    /// Builds the extension and calls `info` once (cached for its lifetime).
    // The parts come from the runtime's own state; bundling them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        spec: ExtensionSpec,
        version_hash: String,
        source: ArtifactSource,
        options: ExtensionOptions,
        engine: Engine,
        pre: InstancePre<StoreData>,
        (indices, exports): (ExportIndices, OptionalExports),
        ticker: Arc<EpochTicker>,
    ) -> Result<Self, ExtensionError> {
        let calls = Calls {
            id: spec.id.clone(),
            config: spec.config.clone(),
            options,
            engine,
            pre,
            indices,
            exports,
            idle: Mutex::new(Vec::new()),
            in_calls: Mutex::new(0),
            call_ended: Condvar::new(),
            health: Mutex::new(HealthState::default()),
            _ticker: ticker,
        };
        let raw = calls.invoke(Function::Info, |guest, store| guest.call_info(store))?;
        let mut info =
            bindings::info_from_wit(raw).map_err(|m| calls.bad_answer(Function::Info, m))?;
        info.id = calls.id.clone();
        // What `info` says is listed to every tenant: never a secret the guest echoed.
        let grants = &calls.options.grants;
        info.name = grants.redact(&info.name);
        info.version = grants.redact(&info.version);
        info.regions = info.regions.iter().map(|r| grants.redact(r)).collect();
        if let Some(kind) = spec.kind {
            info.kind = kind;
        }
        // Running code and files are declared by exporting the interfaces, not in the
        // WIT capability enum (see `Capability`).
        let mut add = |c: Capability| {
            if !info.capabilities.contains(&c) {
                info.capabilities.push(c);
            }
        };
        if exports.process {
            add(Capability::Exec);
            add(Capability::ExecStream);
        }
        if exports.files {
            add(Capability::Files);
        }
        let version = version_of(&version_hash, &spec);
        Ok(Self {
            info,
            spec,
            version_hash,
            version,
            source,
            calls,
        })
    }

    /// The extension id (file stem or sidecar `id`).
    pub fn id(&self) -> &str {
        &self.calls.id
    }

    /// What `info` returned at load, with the host's id and the sidecar's kind applied.
    pub fn info(&self) -> &ExtensionInfo {
        &self.info
    }

    /// The `.wasm` file.
    pub fn file(&self) -> &Path {
        &self.spec.component
    }

    /// The sidecar that configured it, if any.
    pub fn sidecar(&self) -> Option<&Path> {
        self.spec.sidecar.as_deref()
    }

    /// What it was loaded from (file, sidecar, configuration, limits).
    pub fn spec(&self) -> &ExtensionSpec {
        &self.spec
    }

    /// The sha256 (hex) of the `.wasm`: identifies exactly which code served a sandbox.
    pub fn version_hash(&self) -> &str {
        &self.version_hash
    }

    /// The code *and* the terms a sandbox was created under: a sha256 (hex) over the
    /// `.wasm`'s digest and the resolved spec (config, limits, grants as written, never
    /// secret values). An edited sidecar is a new version, so sandboxes created before the
    /// edit are destroyed and metered by the version (and config) they were created on.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the compiled code came from the cache or a compile.
    pub fn artifact_source(&self) -> &ArtifactSource {
        &self.source
    }

    /// The secrets tenants may replace with their own keys (`byok` in the sidecar; empty
    /// without OpenBao).
    pub fn byok_fields(&self) -> &[String] {
        self.calls.options.grants.byok_fields()
    }

    /// Whether the calls of `req` run on its tenant's own key (it stored one and the
    /// request's `byok` is not `never`); `false` too when that cannot be told now (the
    /// call itself then fails as unavailable).
    pub fn runs_on_tenant_key(&self, req: &SandboxRequest) -> bool {
        matches!(self.key_use(req), Ok(KeyUse::Tenant))
    }

    /// Whose key the calls of `req` carry: the tenant's own (stored, and `byok` is not
    /// `never`), the operator's, or none (the extension has no secrets). An error when the
    /// tenant's keys cannot be read now (OpenBao down before they were ever read).
    pub fn key_use(&self, req: &SandboxRequest) -> Result<KeyUse, BackendError> {
        let grants = &self.calls.options.grants;
        if let Some(tenant) = req.key_tenant()
            && !grants.byok_fields().is_empty()
            && grants.secrets_for(Some(tenant))?.tenant.is_some()
        {
            return Ok(KeyUse::Tenant);
        }
        Ok(if grants.current().values.is_empty() {
            KeyUse::None
        } else {
            KeyUse::Operator
        })
    }

    /// Makes the next call of `tenant` read its own keys again (they were just changed).
    pub fn forget_tenant_keys(&self, tenant: &str) {
        self.calls.options.grants.forget_tenant(tenant);
    }

    /// Which of the optional `process` and `files` interfaces the component exports.
    pub fn optional_exports(&self) -> OptionalExports {
        self.calls.exports
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> CallLimits {
        self.calls.options.limits
    }

    /// Health counters and the quarantine, if any.
    pub fn health(&self) -> Health {
        let h = self.calls.health.lock();
        Health {
            calls: h.calls,
            traps: h.traps,
            consecutive_traps: h.consecutive_traps,
            last_error: h.last_error.clone(),
            quarantine: quarantine_of(&h),
        }
    }

    /// The quarantine the extension is in, if any.
    pub fn quarantine(&self) -> Option<Quarantine> {
        quarantine_of(&self.calls.health.lock())
    }

    /// `cost` with no secret in its line items' words (they reach statuses and events).
    fn scrubbed(&self, mut cost: Cost) -> Cost {
        let grants = &self.calls.options.grants;
        if !grants.has_secrets() {
            return cost;
        }
        for item in &mut cost.line_items {
            item.description = grants.redact(&item.description);
            item.unit = grants.redact(&item.unit);
        }
        cost
    }

    /// The price of `request` over its whole maximum duration.
    pub fn estimate_cost(&self, request: &SandboxRequest) -> Result<Cost, ExtensionError> {
        const F: Function = Function::EstimateCost;
        let lists = bindings::request_lists(request);
        let arg = bindings::request_to_wit(request, &lists);
        let answer = self
            .calls
            .invoke_as(F, request.key_tenant(), |g, s| g.call_estimate_cost(s, arg))?;
        let cost = answer.map_err(|e| self.calls.backend_error(F, e))?;
        let cost = bindings::cost_from_wit(cost, &self.info.currency)
            .map_err(|m| self.calls.bad_answer(F, m))?;
        Ok(self.scrubbed(cost))
    }

    /// Starts a sandbox; the handle is for the host to persist.
    pub fn create(&self, request: &SandboxRequest) -> Result<Created, ExtensionError> {
        const F: Function = Function::Create;
        let lists = bindings::request_lists(request);
        let arg = bindings::request_to_wit(request, &lists);
        let answer = self
            .calls
            .invoke_as(F, request.key_tenant(), |g, s| g.call_create(s, arg))?;
        let created = answer.map_err(|e| self.calls.backend_error(F, e))?;
        let mut created =
            bindings::created_from_wit(created).map_err(|m| self.calls.bad_answer(F, m))?;
        created.region = created.region.map(|r| self.calls.options.grants.redact(&r));
        Ok(created)
    }

    /// The sandbox's state as the backend sees it.
    pub fn status(&self, sandbox: &SandboxContext) -> Result<BackendStatus, ExtensionError> {
        let status = self
            .calls
            .backend_on(Function::Status, sandbox, |g, s, ctx| g.call_status(s, ctx))?;
        let mut status = bindings::status_from_wit(status);
        status.detail = self.calls.options.grants.redact(&status.detail);
        Ok(status)
    }

    /// Stops the sandbox and reports its usage.
    pub fn destroy(&self, sandbox: &SandboxContext) -> Result<Usage, ExtensionError> {
        const F: Function = Function::Destroy;
        let usage = self
            .calls
            .backend_on(F, sandbox, |g, s, ctx| g.call_destroy(s, ctx))?;
        bindings::usage_from_wit(usage).map_err(|m| self.calls.bad_answer(F, m))
    }

    /// Prices `usage` of a sandbox created with `request`.
    pub fn meter_actual(
        &self,
        request: &SandboxRequest,
        usage: &Usage,
    ) -> Result<Cost, ExtensionError> {
        const F: Function = Function::MeterActual;
        let lists = bindings::request_lists(request);
        let req = bindings::request_to_wit(request, &lists);
        let use_ = bindings::usage_to_wit(usage);
        let answer = self.calls.invoke_as(F, request.key_tenant(), |g, s| {
            g.call_meter_actual(s, req, &use_)
        })?;
        let cost = answer.map_err(|e| self.calls.backend_error(F, e))?;
        let cost = bindings::cost_from_wit(cost, &self.info.currency)
            .map_err(|m| self.calls.bad_answer(F, m))?;
        Ok(self.scrubbed(cost))
    }

    /// The pool size (`None`: unlimited).
    pub fn capacity(&self) -> Result<Capacity, ExtensionError> {
        const F: Function = Function::Capacity;
        let answer = self.calls.invoke(F, |g, s| g.call_capacity(s))?;
        let capacity = answer.map_err(|e| self.calls.backend_error(F, e))?;
        Ok(bindings::capacity_from_wit(capacity))
    }
}

/// Runs code and moves files, for components that export `process` and `files` (contract
/// 0.1.1). For one that does not, every method answers `unsupported` without calling it.
impl Extension {
    /// Runs a command to its end. The call's budget is the command's timeout plus
    /// [`EXEC_CALL_MARGIN`] (never less than the extension's call timeout).
    pub fn exec(
        &self,
        sandbox: &SandboxContext,
        request: &ExecRequest,
    ) -> Result<ExecOutput, ExtensionError> {
        const F: Function = Function::Exec;
        let budget = Duration::from_millis(request.timeout_ms).saturating_add(EXEC_CALL_MARGIN);
        let exec_lists = bindings::exec_lists(request);
        let req = bindings::exec_request_to_wit(request, &exec_lists);
        let output = self
            .calls
            .process_on(F, sandbox, budget, |p, s, ctx| p.call_exec(s, ctx, req))?;
        bindings::exec_output_from_wit(output, request.output_limit_bytes)
            .map_err(|m| self.calls.bad_answer(F, m))
    }

    /// Starts a command; returns the backend's id for it.
    pub fn start(
        &self,
        sandbox: &SandboxContext,
        request: &ExecRequest,
    ) -> Result<String, ExtensionError> {
        const F: Function = Function::Start;
        let exec_lists = bindings::exec_lists(request);
        let req = bindings::exec_request_to_wit(request, &exec_lists);
        let budget = self.calls.transfer_budget();
        let id = self
            .calls
            .process_on(F, sandbox, budget, |p, s, ctx| p.call_start(s, ctx, req))?;
        bindings::process_id_from_wit(id).map_err(|m| self.calls.bad_answer(F, m))
    }

    /// The output of a started process after `cursor`, waiting up to `wait` (at most
    /// [`MAX_READ_OUTPUT_WAIT`]) for some to arrive.
    pub fn read_output(
        &self,
        sandbox: &SandboxContext,
        process_id: &str,
        cursor: &str,
        wait: Duration,
        max_bytes: u32,
    ) -> Result<ProcessOutput, ExtensionError> {
        const F: Function = Function::ReadOutput;
        let wait = wait.min(MAX_READ_OUTPUT_WAIT);
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let budget = wait.saturating_add(EXEC_CALL_MARGIN);
        let output = self.calls.process_on(F, sandbox, budget, |p, s, ctx| {
            p.call_read_output(s, ctx, process_id, cursor, wait_ms, max_bytes)
        })?;
        bindings::process_output_from_wit(output).map_err(|m| self.calls.bad_answer(F, m))
    }

    /// Writes to a started process's standard input, closing it after when `close`.
    pub fn write_stdin(
        &self,
        sandbox: &SandboxContext,
        process_id: &str,
        data: &[u8],
        close: bool,
    ) -> Result<(), ExtensionError> {
        let budget = self.calls.transfer_budget();
        self.calls
            .process_on(Function::WriteStdin, sandbox, budget, |p, s, ctx| {
                p.call_write_stdin(s, ctx, process_id, data, close)
            })
    }

    /// Kills a started process and everything it started.
    pub fn kill(&self, sandbox: &SandboxContext, process_id: &str) -> Result<(), ExtensionError> {
        let budget = self.calls.transfer_budget();
        self.calls
            .process_on(Function::Kill, sandbox, budget, |p, s, ctx| {
                p.call_kill(s, ctx, process_id)
            })
    }

    /// Writes (or appends) `data` to the file at `path`.
    pub fn write_file(
        &self,
        sandbox: &SandboxContext,
        path: &str,
        data: &[u8],
        append: bool,
    ) -> Result<(), ExtensionError> {
        let budget = self.calls.transfer_budget();
        self.calls
            .files_on(Function::WriteFile, sandbox, budget, |f, s, ctx| {
                f.call_write_file(s, ctx, path, data, append)
            })
    }

    /// Reads at most `max_bytes` of the file at `path` from `offset`.
    pub fn read_file(
        &self,
        sandbox: &SandboxContext,
        path: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FileChunk, ExtensionError> {
        const F: Function = Function::ReadFile;
        let budget = self.calls.transfer_budget();
        let chunk = self.calls.files_on(F, sandbox, budget, |f, s, ctx| {
            f.call_read_file(s, ctx, path, offset, max_bytes)
        })?;
        bindings::file_chunk_from_wit(chunk, max_bytes).map_err(|m| self.calls.bad_answer(F, m))
    }

    /// The entries of the folder at `path`, sorted by name.
    pub fn list_files(
        &self,
        sandbox: &SandboxContext,
        path: &str,
    ) -> Result<Vec<FileEntry>, ExtensionError> {
        const F: Function = Function::ListFiles;
        let budget = self.calls.transfer_budget();
        let entries = self.calls.files_on(F, sandbox, budget, |f, s, ctx| {
            f.call_list_files(s, ctx, path)
        })?;
        bindings::entries_from_wit(entries).map_err(|m| self.calls.bad_answer(F, m))
    }
}

/// What a guest call about one sandbox answers: the guest's own result inside wasmtime's.
type GuestAnswer<T> = wasmtime::Result<Result<T, wit::BackendError>>;

impl Calls {
    /// A `backend` call about `sandbox`, on its tenant's behalf: the guest gets the sandbox's
    /// context, and its error comes back as the host's.
    fn backend_on<T>(
        &self,
        function: Function,
        sandbox: &SandboxContext,
        call: impl FnOnce(&wit::Guest, &mut Store<StoreData>, wit::SandboxContext<'_>) -> GuestAnswer<T>,
    ) -> Result<T, ExtensionError> {
        let lists = bindings::request_lists(&sandbox.request);
        let ctx = bindings::context_to_wit(sandbox, &lists);
        let answer = self.invoke_as(function, sandbox.request.key_tenant(), |g, s| {
            call(g, s, ctx)
        })?;
        answer.map_err(|e| self.backend_error(function, e))
    }

    /// Like [`Self::backend_on`] into `process`, or `unsupported` when the component does
    /// not export it.
    fn process_on<T>(
        &self,
        function: Function,
        sandbox: &SandboxContext,
        budget: Duration,
        call: impl FnOnce(
            &wit_process::Guest,
            &mut Store<StoreData>,
            wit::SandboxContext<'_>,
        ) -> GuestAnswer<T>,
    ) -> Result<T, ExtensionError> {
        if !self.exports.process {
            return Err(self.unsupported(function));
        }
        let lists = bindings::request_lists(&sandbox.request);
        let ctx = bindings::context_to_wit(sandbox, &lists);
        let tenant = sandbox.request.key_tenant();
        let answer = self.invoke_within(function, tenant, budget, |g, s| match &g.process {
            Some(p) => call(p, s, ctx),
            None => Err(wasmtime::Error::msg("the process export was not loaded")),
        })?;
        answer.map_err(|e| self.backend_error(function, e))
    }

    /// Like [`Self::backend_on`] into `files`, or `unsupported` when the component does
    /// not export it.
    fn files_on<T>(
        &self,
        function: Function,
        sandbox: &SandboxContext,
        budget: Duration,
        call: impl FnOnce(
            &wit_files::Guest,
            &mut Store<StoreData>,
            wit::SandboxContext<'_>,
        ) -> GuestAnswer<T>,
    ) -> Result<T, ExtensionError> {
        if !self.exports.files {
            return Err(self.unsupported(function));
        }
        let lists = bindings::request_lists(&sandbox.request);
        let ctx = bindings::context_to_wit(sandbox, &lists);
        let tenant = sandbox.request.key_tenant();
        let answer = self.invoke_within(function, tenant, budget, |g, s| match &g.files {
            Some(f) => call(f, s, ctx),
            None => Err(wasmtime::Error::msg("the files export was not loaded")),
        })?;
        answer.map_err(|e| self.backend_error(function, e))
    }

    /// Calls that move data or reach a started process: at least [`TRANSFER_CALL_BUDGET`].
    fn transfer_budget(&self) -> Duration {
        self.options.limits.call_timeout.max(TRANSFER_CALL_BUDGET)
    }

    fn unsupported(&self, function: Function) -> ExtensionError {
        let what = match function.interface() {
            "files" => "files",
            _ => "exec",
        };
        self.error(
            function,
            Fault::Backend(BackendError::Unsupported(format!(
                "extension {:?} does not implement {what} (it does not export sandboxer:extension/{}@0.1.x)",
                self.id,
                function.interface()
            ))),
        )
    }

    /// Runs one call in a warm (or fresh) instance under the limits, keeping the
    /// instance for reuse unless it trapped.
    fn invoke<T>(
        &self,
        function: Function,
        call: impl FnOnce(&wit::Guest, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, ExtensionError> {
        self.invoke_as(function, None, call)
    }

    /// [`Calls::invoke`] on behalf of `tenant`: with the tenant's own keys when it stored
    /// some, in an instance built with exactly those secrets (never one of another set).
    fn invoke_as<T>(
        &self,
        function: Function,
        tenant: Option<&str>,
        call: impl FnOnce(&wit::Guest, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, ExtensionError> {
        self.invoke_within(
            function,
            tenant,
            self.options.limits.call_timeout,
            |g, s| call(&g.backend, s),
        )
    }

    /// [`Self::invoke_as`] with a budget of its own, over every export of the instance.
    fn invoke_within<T>(
        &self,
        function: Function,
        tenant: Option<&str>,
        budget: Duration,
        call: impl FnOnce(&Guests, &mut Store<StoreData>) -> wasmtime::Result<T>,
    ) -> Result<T, ExtensionError> {
        self.admit(function)?;
        let _slot = self.instance_slot(function, budget)?;
        let secrets = self
            .options
            .grants
            .secrets_for(tenant)
            .map_err(|e| self.error(function, Fault::Backend(e)))?;
        let reused = {
            let mut idle = self.idle.lock();
            // Only an instance of this very set; those of rotated-away sets age out below.
            idle.iter()
                .rposition(|w| w.generation == secrets.generation)
                .map(|i| idle.remove(i))
        };
        let mut warm = match reused {
            Some(warm) => warm,
            None => match self.instantiate(&secrets) {
                Ok(warm) => warm,
                Err(fault) => return Err(self.trapped(function, fault)),
            },
        };
        let mark = limits::begin_call_within(&mut warm.store, budget);
        match call(&warm.guests, &mut warm.store) {
            Ok(value) => {
                self.succeeded();
                warm.calls += 1;
                if warm.calls < self.options.pool.recycle_after && self.options.pool.max_idle > 0 {
                    let mut idle = self.idle.lock();
                    if idle.len() >= self.options.pool.max_idle {
                        // The longest idle goes (an old secret set's, often).
                        idle.remove(0);
                    }
                    idle.push(warm);
                }
                Ok(value)
            }
            // The instance is poisoned: it is dropped here, the next call gets a fresh one.
            Err(err) => {
                Err(self.trapped(function, limits::fault_from_error(&err, &warm.store, mark)))
            }
        }
    }

    fn instantiate(&self, secrets: &SecretSet) -> Result<Warm, Fault> {
        let mut store = limits::new_store(
            &self.engine,
            &self.config,
            self.options.limits,
            &self.options.grants,
            secrets,
        );
        let mark = limits::begin_call(&mut store);
        let guests = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| self.indices.load(&mut store, &instance));
        match guests {
            Ok(guests) => Ok(Warm {
                store,
                guests,
                calls: 0,
                generation: secrets.generation,
            }),
            Err(err) => Err(limits::fault_from_error(&err, &store, mark)),
        }
    }

    /// Waits (at most `budget`) until fewer than `max_instances` calls are in progress,
    /// and counts this one in until the slot is dropped.
    fn instance_slot(
        &self,
        function: Function,
        budget: Duration,
    ) -> Result<InstanceSlot<'_>, ExtensionError> {
        let max = self.options.pool.max_instances.max(1);
        let deadline = Instant::now() + budget;
        let mut in_calls = self.in_calls.lock();
        while *in_calls >= max {
            if self
                .call_ended
                .wait_until(&mut in_calls, deadline)
                .timed_out()
                && *in_calls >= max
            {
                drop(in_calls);
                tracing::warn!(extension = %self.id, %function, max_instances = max, "every instance is in a call");
                return Err(self.error(
                    function,
                    Fault::Backend(BackendError::CapacityExhausted(format!(
                        "all {max} instances the host allows this extension are in calls \
                         (waited {} ms); try again",
                        budget.as_millis()
                    ))),
                ));
            }
        }
        *in_calls += 1;
        Ok(InstanceSlot { calls: self })
    }

    /// Refuses the call while quarantined; counts it.
    fn admit(&self, function: Function) -> Result<(), ExtensionError> {
        let mut h = self.health.lock();
        h.calls += 1;
        if let Some((until, until_unix_ms)) = h.quarantined_until {
            if Instant::now() < until {
                let reason = h.quarantine_reason.clone();
                drop(h);
                return Err(self.error(
                    function,
                    Fault::Quarantined {
                        until_unix_ms,
                        reason,
                    },
                ));
            }
            // Back-off over: let this call through as a trial.
            h.quarantined_until = None;
        }
        Ok(())
    }

    fn succeeded(&self) {
        let mut h = self.health.lock();
        h.consecutive_traps = 0;
        h.quarantines = 0;
    }

    /// Records a trap-like fault (and quarantines when they keep coming).
    fn trapped(&self, function: Function, fault: Fault) -> ExtensionError {
        let err = self.error(function, fault);
        let policy = self.options.quarantine;
        let mut h = self.health.lock();
        h.traps += 1;
        h.consecutive_traps = h.consecutive_traps.saturating_add(1);
        h.last_error = Some(err.to_string());
        if policy.after_traps > 0 && h.consecutive_traps >= policy.after_traps {
            let factor = 1u32.checked_shl(h.quarantines.min(20)).unwrap_or(u32::MAX);
            let backoff = policy
                .base_backoff
                .saturating_mul(factor)
                .min(policy.max_backoff);
            h.quarantines = h.quarantines.saturating_add(1);
            let until_unix_ms = unix_ms(SystemTime::now() + backoff);
            h.quarantined_until = Some((Instant::now() + backoff, until_unix_ms));
            h.quarantine_reason = format!(
                "{} traps in a row, last in {function}: {}",
                h.consecutive_traps, err.fault
            );
            tracing::warn!(
                extension = %self.id,
                function = %function,
                backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                reason = %h.quarantine_reason,
                "extension quarantined"
            );
        } else {
            tracing::warn!(extension = %self.id, function = %function, fault = %err.fault, "extension call failed");
        }
        err
    }

    fn backend_error(&self, function: Function, e: wit::BackendError) -> ExtensionError {
        self.error(
            function,
            Fault::Backend(bindings::backend_error_from_wit(e)),
        )
    }

    fn bad_answer(&self, function: Function, message: String) -> ExtensionError {
        let err = self.error(function, Fault::BadAnswer { message });
        tracing::warn!(extension = %self.id, function = %function, fault = %err.fault, "extension answered out of contract");
        self.health.lock().last_error = Some(err.to_string());
        err
    }

    fn error(&self, function: Function, fault: Fault) -> ExtensionError {
        // Every error of this extension is built here: the one place secrets are scrubbed.
        ExtensionError {
            extension: self.id.clone(),
            function,
            fault: self.options.grants.redact_fault(fault),
        }
    }
}

/// One call's share of [`PoolPolicy::max_instances`], given back when the call ends.
struct InstanceSlot<'a> {
    calls: &'a Calls,
}

impl Drop for InstanceSlot<'_> {
    fn drop(&mut self) {
        *self.calls.in_calls.lock() -= 1;
        self.calls.call_ended.notify_one();
    }
}

fn quarantine_of(h: &HealthState) -> Option<Quarantine> {
    match h.quarantined_until {
        Some((until, until_unix_ms)) if Instant::now() < until => Some(Quarantine {
            until_unix_ms,
            reason: h.quarantine_reason.clone(),
        }),
        _ => None,
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The version key of a component with digest `wasm_sha256` loaded with `spec`.
fn version_of(wasm_sha256: &str, spec: &ExtensionSpec) -> String {
    // The spec serializes deterministically (ordered maps, sources not values); a spec
    // that cannot serialize would be a bug, and the wasm digest alone is still a version.
    let terms = serde_json::to_string(spec).unwrap_or_default();
    let mut keyed = Vec::with_capacity(wasm_sha256.len() + 1 + terms.len());
    keyed.extend_from_slice(wasm_sha256.as_bytes());
    keyed.push(b'\n');
    keyed.extend_from_slice(terms.as_bytes());
    super::cache::sha256_hex(&keyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Extension>();
        shareable::<super::super::Runtime>();
    }
}
