//! The API's [`Backend`] and the service's [`Maintenance`] over the application value
//! [`Host`]: every endpoint is one call on the same `Host` the `sandboxer` CLI uses,
//! rendered as JSON, with the manager's errors mapped to HTTP statuses.
//!
//! It also instruments extension calls for `/metrics` (a thin wrapper around every
//! loaded extension) and applies hot reloads to the manager's extension registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rust_decimal::prelude::ToPrimitive;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AddCredits, Backend, CreateSandbox, PageRequest, metrics, paging};
use crate::config::Settings;
use crate::host::{Host, HostOptions};
use crate::manager::{self, ManagerError, SandboxState, SandboxStatus};
use crate::money::{Currency, Money};
use crate::payments::money::parse_amount;
use crate::payments::{CreditsStore, LedgerError};
use crate::routing::RequestOverrides;
use crate::routing::profile::reload_profiles;
use crate::runtime::sidecar::ExtensionSpec;
use crate::runtime::types::{
    BackendStatus, Capacity, Cost, Created, ExtensionError, ExtensionInfo, Fault, Function,
    SandboxContext, SandboxRequest, Usage,
};
use crate::service::config::ServiceConfig;
use crate::service::{App, Maintenance, ServiceError};

/// Opens the `Host` for the service and wraps it.
pub fn open(settings: &Settings, cfg: &ServiceConfig) -> Result<Arc<dyn App>, ServiceError> {
    let mut options = HostOptions::default();
    if let Some(src) = &cfg.events.source {
        options.manager.event_source = src.clone();
    }
    // Events are delivered by the service's delivery loop, not inside each destroy: many
    // settlements share one sink write, and a request never waits on a sink.
    options.manager.deliver_after_settle = false;
    // Serve at once; a large uncached guest (tens of seconds to compile) joins when
    // ready (picked up by `tick`).
    options.defer_compile_above_bytes = Some(crate::host::DEFER_COMPILE_ABOVE_BYTES);
    options.health = cfg.health;
    // Registered instrumented from the start (and when a deferred one finishes loading).
    options.wrap = Some(Arc::new(|ext| Arc::new(Instrumented { inner: ext }) as _));
    options.manager.lease = Some(manager::LeasePolicy {
        chunk: cfg.leases.chunk,
        renew_before: cfg.leases.renew_before,
        grace: cfg.leases.grace,
    });
    let host = Host::open_with(settings, options).map_err(|e| ServiceError::Open(e.to_string()))?;
    let rec = host.reconciled();
    if !rec.is_empty() {
        tracing::info!(report = ?rec, "reconciled what the previous run left unfinished");
    }
    for s in host.skipped_extensions() {
        tracing::warn!(file = %s.file.display(), reason = %s.reason, "extension not loaded");
    }
    let backend = HostBackend::new(host);
    Ok(Arc::new(backend))
}

/// What the service knows about each installed extension, to tell a changed file from an
/// unchanged one on reload.
#[derive(Clone, PartialEq)]
struct Installed {
    version: String,
    spec: ExtensionSpec,
}

/// `Host` as the HTTP API and the service's background tasks see it.
pub struct HostBackend {
    host: Host,
    installed: Mutex<BTreeMap<String, Installed>>,
    gauge_series: Mutex<Vec<(String, String)>>,
    reload_lock: Mutex<()>,
    // How many of `Host::registered_extensions` are in `installed` already.
    adopted: Mutex<usize>,
}

impl HostBackend {
    /// Wraps `host` (opened by [`open`], so its extensions are registered instrumented).
    pub fn new(host: Host) -> Self {
        let b = Self {
            host,
            installed: Mutex::new(BTreeMap::new()),
            gauge_series: Mutex::new(Vec::new()),
            reload_lock: Mutex::new(()),
            adopted: Mutex::new(0),
        };
        b.adopt_registered();
        b
    }

    /// Records what `Host` registered since the last call (at open, or a deferred
    /// extension that finished compiling) as installed, without reading the folder again.
    fn adopt_registered(&self) {
        let mut adopted = self.adopted.lock();
        let fresh = self.host.registered_extensions(*adopted);
        *adopted += fresh.len();
        drop(adopted);
        let mut installed = self.installed.lock();
        for ext in fresh {
            installed
                .entry(ext.id().to_owned())
                .or_insert_with(|| Installed {
                    version: ext.version_hash().to_owned(),
                    spec: ext.spec().clone(),
                });
        }
    }

    fn manager(&self) -> &manager::SandboxManager {
        self.host.manager()
    }

    fn strategy_of(&self, profile: &str) -> String {
        self.host.profiles().get(profile).map_or_else(
            || "unknown".to_owned(),
            |p| p.route.strategy.as_str().to_owned(),
        )
    }
}

fn overrides(req: &CreateSandbox) -> RequestOverrides {
    RequestOverrides {
        vcpus: req.vcpus,
        memory_mib: req.memory_mib,
        max_duration_secs: req.max_duration_secs,
        region: req.region.clone(),
        env: req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        metadata: req
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

fn money_json(m: &Money) -> Value {
    json!({ "amount": m.amount.normalize().to_string(), "currency": m.currency.as_str() })
}

/// The manager's errors as HTTP answers.
fn map_manager(e: ManagerError) -> ApiError {
    use axum::http::StatusCode as S;
    match e {
        ManagerError::UnknownProfile { .. } => {
            ApiError::bad_request(Some("profile"), e.to_string())
        }
        ManagerError::InvalidRequest(ref r) => ApiError::bad_request(Some(r.field), e.to_string()),
        ManagerError::NoRoute(ref r) => {
            let candidates = serde_json::to_value(r.candidates()).unwrap_or(Value::Null);
            ApiError::no_backend(e.to_string(), candidates)
        }
        ManagerError::Ledger(l) => map_ledger(l),
        ManagerError::CreateFailed { ref status } => {
            let sb = serde_json::to_value(status.as_ref()).unwrap_or(Value::Null);
            ApiError::new(S::SERVICE_UNAVAILABLE, "create_failed", e.to_string())
                .with("sandbox", sb)
        }
        ManagerError::NotFound { ref id } => ApiError::not_found("sandbox", id),
        ManagerError::WrongState { ref state, .. } => {
            let state = state.as_str();
            ApiError::conflict("wrong_state", e.to_string()).with("state", state)
        }
        ManagerError::Busy { .. } => ApiError::conflict("busy", e.to_string()),
        ManagerError::ExtensionMissing { .. } => {
            ApiError::new(S::SERVICE_UNAVAILABLE, "extension_missing", e.to_string())
        }
        ManagerError::Extension { .. } => {
            ApiError::new(S::BAD_GATEWAY, "extension_failed", e.to_string())
        }
        ManagerError::BadMeter { .. } => ApiError::new(S::BAD_GATEWAY, "bad_meter", e.to_string()),
        ManagerError::IdempotencyConflict { .. } => {
            ApiError::conflict("idempotency_conflict", e.to_string())
        }
        ManagerError::InvalidKey(_) => {
            ApiError::bad_request(Some("Idempotency-Key"), e.to_string())
        }
        ManagerError::Store(_) | ManagerError::Event(_) | ManagerError::Setup(_) => {
            ApiError::internal(e)
        }
    }
}

fn map_ledger(e: LedgerError) -> ApiError {
    match e {
        LedgerError::InsufficientCredits {
            ref need,
            ref available,
        } => ApiError::insufficient_credits(e.to_string(), money_json(need), money_json(available)),
        LedgerError::UnknownTenant(_) => ApiError::new(
            axum::http::StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            format!("{e}; ask the operator to add credits"),
        ),
        LedgerError::InvalidTenant(_) => ApiError::bad_request(Some("tenant"), e.to_string()),
        LedgerError::InvalidInput { what, .. } => ApiError::bad_request(Some(what), e.to_string()),
        LedgerError::IdempotencyConflict { .. } => {
            ApiError::conflict("idempotency_conflict", e.to_string())
        }
        LedgerError::HoldNotFound(_) | LedgerError::HoldAlreadyResolved { .. } => {
            ApiError::conflict("conflict", e.to_string())
        }
        LedgerError::Corrupt { .. } | LedgerError::Storage { .. } => ApiError::internal(e),
    }
}

impl Backend for HostBackend {
    fn create_sandbox(
        &self,
        tenant: &str,
        req: &CreateSandbox,
        key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let strategy = self.strategy_of(&req.profile);
        match self
            .manager()
            .create(tenant, &req.profile, &overrides(req), key)
        {
            Ok(st) => {
                metrics::route_decision(&strategy, "routed");
                tracing::info!(sandbox_id = %st.id, tenant, extension = st.extension_id.as_deref().unwrap_or(""), "sandbox created");
                to_json(&st)
            }
            Err(e) => {
                let outcome = match &e {
                    ManagerError::NoRoute(_) => Some("no_backend"),
                    ManagerError::CreateFailed { .. } => Some("failed"),
                    _ => None,
                };
                if let Some(o) = outcome {
                    metrics::route_decision(&strategy, o);
                }
                Err(map_manager(e))
            }
        }
    }

    fn list_sandboxes(
        &self,
        tenant: &str,
        state: Option<&str>,
        page: &PageRequest,
    ) -> Result<Value, ApiError> {
        let state = match state {
            None => None,
            Some(s) => Some(
                s.parse::<SandboxState>()
                    .map_err(|e| ApiError::bad_request(Some("state"), e.to_string()))?,
            ),
        };
        let after = match &page.after {
            None => None,
            Some(c) => Some(paging::sandbox_after(tenant, c)?),
        };
        let list = self
            .manager()
            .list_page(Some(tenant), state, after.as_ref(), page.limit)
            .map_err(map_manager)?;
        let next = list.next.map(|k| paging::sandbox_cursor(tenant, &k));
        Ok(json!({ "sandboxes": to_json(&list.items)?, "next": next }))
    }

    fn get_sandbox(&self, tenant: &str, id: &str) -> Result<Value, ApiError> {
        to_json(
            &self
                .manager()
                .status(Some(tenant), id)
                .map_err(map_manager)?,
        )
    }

    fn destroy_sandbox(&self, tenant: &str, id: &str) -> Result<Value, ApiError> {
        let before = self
            .manager()
            .status(Some(tenant), id)
            .map_err(map_manager)?;
        let st = self
            .manager()
            .destroy(Some(tenant), id)
            .map_err(map_manager)?;
        record_settlement(&before, &st);
        to_json(&st)
    }

    fn explain_route(&self, tenant: &str, req: &CreateSandbox) -> Result<Value, ApiError> {
        let (request, decision) = self
            .manager()
            .explain(tenant, &req.profile, &overrides(req))
            .map_err(map_manager)?;
        Ok(match decision {
            Ok(d) => {
                json!({ "routable": true, "request": to_json(&request)?, "decision": to_json(&d)? })
            }
            Err(e) => json!({
                "routable": false,
                "request": to_json(&request)?,
                "reason": e.to_string(),
                "candidates": to_json(&e.candidates())?,
            }),
        })
    }

    fn credits(&self, tenant: &str) -> Result<Value, ApiError> {
        let balances = match self.host.ledger().balances(Some(tenant)) {
            Ok(b) => b,
            Err(LedgerError::UnknownTenant(_)) => Vec::new(),
            Err(e) => return Err(map_ledger(e)),
        };
        Ok(json!({ "tenant": tenant, "balances": to_json(&balances)? }))
    }

    fn credit_entries(&self, tenant: &str, page: &PageRequest) -> Result<Value, ApiError> {
        let after = match &page.after {
            None => None,
            Some(c) => Some(paging::entries_after(tenant, c)?),
        };
        let (entries, next) =
            match self
                .host
                .ledger()
                .statement_page(tenant, after.as_deref(), page.limit)
            {
                Ok(p) => (p.entries, p.next),
                // No account yet: nothing to list, and no transfer a cursor could name.
                Err(LedgerError::UnknownTenant(_)) if after.is_none() => (Vec::new(), None),
                Err(LedgerError::UnknownTenant(_)) => {
                    return Err(ApiError::bad_request(
                        Some("after"),
                        "invalid query parameter after: not a line of this statement",
                    ));
                }
                Err(e) => return Err(map_ledger(e)),
            };
        let next = next.map(|t| paging::entries_cursor(tenant, &t));
        Ok(json!({ "tenant": tenant, "entries": to_json(&entries)?, "next": next }))
    }

    fn add_credits(
        &self,
        tenant: &str,
        req: &AddCredits,
        key: Option<&str>,
    ) -> Result<Value, ApiError> {
        let amount = parse_amount(&req.amount)
            .map_err(|e| ApiError::bad_request(Some("amount"), format!("invalid amount: {e}")))?;
        let currency = Currency::new(&req.currency)
            .map_err(|e| ApiError::bad_request(Some("currency"), e.to_string()))?;
        let key = match key {
            Some(k) => format!("api-grant\n{tenant}\n{k}"),
            None => format!("api-grant-{}", uuid::Uuid::now_v7()),
        };
        let note = if req.note.is_empty() {
            "added over the HTTP API"
        } else {
            &req.note
        };
        let grant = self
            .host
            .ledger()
            .grant(
                tenant,
                &Money {
                    amount: amount.exact,
                    currency,
                },
                note,
                &key,
            )
            .map_err(map_ledger)?;
        tracing::info!(tenant, amount = %grant.amount, "credits added");
        to_json(&grant)
    }

    fn extensions(&self) -> Result<Value, ApiError> {
        let reg = self.manager().extensions();
        let health = self.manager().health();
        let mut out = Vec::new();
        for id in reg.ids() {
            let Some(b) = reg.get(&id) else { continue };
            out.push(json!({
                "id": id,
                "info": to_json(b.info())?,
                "version_hash": b.version_hash(),
                "health": to_json(&health.status(&id))?,
            }));
        }
        let skipped: Vec<Value> = self
            .host
            .skipped_extensions()
            .iter()
            .map(
                |s| json!({ "file": s.file.display().to_string(), "id": s.id, "reason": s.reason }),
            )
            .collect();
        Ok(json!({ "extensions": out, "skipped_at_start": skipped }))
    }

    fn refresh_metrics(&self) {
        match self.manager().counts_by_state() {
            Ok(rows) => {
                // Sandboxes never routed are labelled `none` (summed with an extension
                // of that name, should one exist, as before).
                let mut merged: HashMap<(&'static str, String), u64> = HashMap::new();
                for (state, ext, n) in rows {
                    let ext = ext.unwrap_or_else(|| "none".to_owned());
                    *merged.entry((state.as_str(), ext)).or_default() += n;
                }
                let counts: Vec<(String, String, u64)> = merged
                    .into_iter()
                    .map(|((s, e), n)| (s.to_owned(), e, n))
                    .collect();
                metrics::sandboxes(&counts, &mut self.gauge_series.lock());
            }
            Err(e) => tracing::warn!(error = %e, "cannot count sandboxes for /metrics"),
        }
        if let Ok((n, age)) = self.host.ledger().outbox_lag() {
            metrics::outbox(n, age);
        }
    }
}

fn record_settlement(before: &SandboxStatus, after: &SandboxStatus) {
    if before.state != SandboxState::Destroyed
        && after.state == SandboxState::Destroyed
        && let Some(m) = &after.meter
    {
        metrics::settlement(
            m.total.currency.as_str(),
            m.total.amount.to_f64().unwrap_or(0.0),
        );
    }
}

impl Maintenance for HostBackend {
    fn deliver_events(&self) -> Result<usize, String> {
        self.manager().deliver_outbox().map_err(|e| e.to_string())
    }

    fn tick(&self) {
        self.adopt_registered();
        let leases = self.manager().keep_leases();
        for _ in &leases.renewed {
            metrics::lease_renewal("renewed");
        }
        for _ in &leases.refused {
            metrics::lease_renewal("refused");
        }
        for id in &leases.ended {
            metrics::reaped("lease_unpaid");
            if let Ok(st) = self.manager().status(None, id)
                && let Some(m) = &st.meter
            {
                metrics::settlement(
                    m.total.currency.as_str(),
                    m.total.amount.to_f64().unwrap_or(0.0),
                );
            }
        }
        for (id, e) in &leases.errors {
            tracing::warn!(sandbox_id = %id, error = %e, "lease keeper could not handle a sandbox; will retry");
        }
        self.reap();
    }

    fn reload_extensions(&self) {
        let _one = self.reload_lock.lock();
        let dir = &self.host.settings().extensions_dir;
        // Before re-reading the folder: an extension that finishes compiling in between
        // is then either adopted here or found in the folder, never taken for removed.
        self.adopt_registered();
        let report = match self.host.load_extensions() {
            Ok(r) => r,
            Err(e) => {
                metrics::reload("extension", "failed");
                tracing::warn!(dir = %dir.display(), error = %e, "extensions folder not re-read; the loaded extensions keep serving");
                return;
            }
        };
        let reg = self.manager().extensions();
        let mut installed = self.installed.lock();
        let mut seen = BTreeSet::new();
        for ext in report.loaded {
            let id = ext.id().to_owned();
            seen.insert(id.clone());
            let now = Installed {
                version: ext.version_hash().to_owned(),
                spec: ext.spec().clone(),
            };
            let unchanged = installed.get(&id) == Some(&now);
            if unchanged {
                continue;
            }
            let verb = if installed.contains_key(&id) {
                "replaced"
            } else {
                "added"
            };
            reg.upsert(Arc::new(Instrumented { inner: ext }));
            metrics::reload("extension", verb);
            tracing::info!(extension = %id, version = %now.version, "extension {verb}");
            installed.insert(id, now);
        }
        for s in &report.skipped {
            if let Some(id) = &s.id {
                seen.insert(id.clone());
                if installed.contains_key(id) {
                    metrics::reload("extension", "rejected");
                    tracing::warn!(extension = %id, file = %s.file.display(), reason = %s.reason, "extension file does not load; the previous version keeps serving");
                    continue;
                }
            }
            tracing::warn!(file = %s.file.display(), reason = %s.reason, "extension not loaded");
        }
        let gone: Vec<String> = installed
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            reg.remove(&id);
            installed.remove(&id);
            metrics::reload("extension", "removed");
            tracing::info!(extension = %id, "extension removed; its running sandboxes are still destroyed and metered by it");
        }
    }

    fn reload_profiles(&self) {
        let dir = &self.host.settings().profiles_dir;
        let previous = self.manager().profiles();
        let reloaded = reload_profiles(dir, &previous);
        for e in &reloaded.errors {
            tracing::warn!(error = %e, "profile file does not load; its previous version (if any) keeps serving");
        }
        if !reloaded.kept.is_empty() {
            tracing::warn!(profiles = ?reloaded.kept, "kept at their previous version");
        }
        for w in reloaded
            .set
            .check_candidates(&self.manager().extensions().ids())
        {
            tracing::warn!(profile = %w.profile, "{}", w.message);
        }
        let n = reloaded.set.len();
        self.manager().set_profiles(Arc::new(reloaded.set));
        metrics::reload(
            "profile",
            if reloaded.errors.is_empty() {
                "replaced"
            } else {
                "rejected"
            },
        );
        tracing::info!(profiles = n, dir = %dir.display(), "profiles reloaded");
    }
}

impl HostBackend {
    /// Destroys and settles every running sandbox past its maximum duration.
    fn reap(&self) {
        match self.manager().reap_overdue() {
            Ok(r) => {
                for st in &r.destroyed {
                    metrics::reaped("max_duration");
                    if let Some(m) = &st.meter {
                        metrics::settlement(
                            m.total.currency.as_str(),
                            m.total.amount.to_f64().unwrap_or(0.0),
                        );
                    }
                    tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, extension = st.extension_id.as_deref().unwrap_or(""), "sandbox reached its maximum duration: destroyed and settled");
                }
                for (id, e) in &r.left {
                    tracing::warn!(sandbox_id = %id, error = %e, "reaper could not destroy a sandbox past its maximum duration; will retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
        }
    }
}

/// A loaded extension whose every call is timed and counted for `/metrics`.
struct Instrumented {
    inner: Arc<crate::runtime::Extension>,
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
    use crate::runtime::types::BackendError as B;
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

impl manager::Backend for Instrumented {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn version_hash(&self) -> &str {
        self.inner.version_hash()
    }
    fn info(&self) -> &ExtensionInfo {
        self.inner.info()
    }
    fn estimate_cost(&self, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        self.timed(Function::EstimateCost, || self.inner.estimate_cost(req))
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
        self.timed(Function::MeterActual, || {
            self.inner.meter_actual(req, usage)
        })
    }
    fn capacity(&self) -> Result<Capacity, ExtensionError> {
        self.timed(Function::Capacity, || self.inner.capacity())
    }
}
