//! `create`: route, hold, call the extension, fail over, record.

use std::time::Instant;

use chrono::Utc;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::store::Inserted;
use super::{HookPoint, ManagerError, SandboxManager, now_ms};
use crate::domain::{
    AttemptRecord, BackendError, ExtensionError, Fault, Function, Money, SandboxSpec, SandboxState,
    SandboxStatus,
};
use crate::payments::{LedgerError, validate_tenant};
use crate::routing::{HealthTracker, resolve_extension};
use crate::telemetry::metrics;

/// Routing rounds a create makes when the slot it routed to was taken meanwhile.
const POOL_FULL_ROUNDS: usize = 8;

impl SandboxManager {
    /// Creates a sandbox for `tenant` from `spec` (its profile and overrides).
    ///
    /// Routes the request, then for each attempt of the route decision in order: holds
    /// its estimate on the tenant's credits, calls the extension's `create`; on a
    /// retryable failure releases the hold, records the attempt, tells the health tracker
    /// and tries the next; a final failure stops. The status is durable before this
    /// returns.
    ///
    /// With an `idempotency_key`, a repeated call (even concurrent, even from another
    /// process) returns the first call's sandbox and charges nothing twice; the same key
    /// with a different request is [`ManagerError::IdempotencyConflict`].
    pub fn create(
        &self,
        tenant: &str,
        spec: &SandboxSpec,
        idempotency_key: Option<&str>,
    ) -> Result<SandboxStatus, ManagerError> {
        let profile_id = spec.profile.as_str();
        let result = self.create_inner(tenant, spec, idempotency_key);
        // Counted at the decision: creates that routed, found no backend, or failed on
        // every attempt (refusals before routing, such as bad input, are not decisions).
        let outcome = match &result {
            Ok(_) => Some("routed"),
            Err(ManagerError::NoRoute(_)) => Some("no_backend"),
            Err(ManagerError::CreateFailed { .. }) => Some("failed"),
            Err(_) => None,
        };
        if let Some(outcome) = outcome {
            let strategy = self
                .profiles()
                .get(profile_id)
                .map_or("unknown", |p| p.route.strategy.as_str());
            metrics::route_decision(strategy, outcome);
        }
        result
    }

    fn create_inner(
        &self,
        tenant: &str,
        spec: &SandboxSpec,
        idempotency_key: Option<&str>,
    ) -> Result<SandboxStatus, ManagerError> {
        let profile_id = spec.profile.as_str();
        validate_tenant(tenant)?;
        if let Some(k) = idempotency_key
            && (k.is_empty() || k.len() > 200 || k.chars().any(char::is_control))
        {
            return Err(ManagerError::InvalidKey(k.to_owned()));
        }
        let profile = self.profile(profile_id)?;
        let fingerprint = fingerprint(spec);
        // Same key in this process: one at a time, so the second sees the first's row.
        let _key_guard = idempotency_key.map(|k| self.stripe(&format!("create\n{tenant}\n{k}")));
        if let Some(k) = idempotency_key
            && let Some((existing, fp)) = self.store.by_key(tenant, k)?
        {
            return replay(existing, &fp, &fingerprint, tenant, k);
        }

        let id = new_sandbox_id();
        let request = profile.request(tenant, &id, spec)?;
        let _busy = self.mark_busy(&id);

        // Routing asks every candidate for its estimate and capacity: no lock is held
        // across those calls, so a slow extension delays only the creates that route to
        // it. A capacity-limited pool's slot is taken atomically with the intent
        // (`insert` with `slot`); a create that lost the last slot meanwhile routes again
        // and then sees the pool full.
        let mut rounds = 0;
        let (decision, mut st) = loop {
            rounds += 1;
            let view = self.route_view()?;
            let decision = resolve_extension(&profile, &request, &view, &self.health)?;
            drop(view);
            let now = Utc::now();
            let st = SandboxStatus {
                id: id.clone(),
                tenant: tenant.to_owned(),
                profile: profile.id.clone(),
                extension_id: decision.attempts.first().map(|a| a.extension_id.clone()),
                extension_version: None,
                handle: None,
                state: SandboxState::Creating,
                created_at: now,
                started_at_ms: None,
                destroy_at_ms: None,
                request: request.clone(),
                estimate: None,
                hold_id: None,
                held: None,
                attempts: Vec::new(),
                reading: None,
                meter: None,
                idempotency_key: idempotency_key.map(str::to_owned),
                error: None,
                meter_failures: 0,
                updated_at: now,
            };
            // The pool slot is taken in the same transaction as the intent, so another
            // process routing at the same moment cannot take it too.
            let slot = st.extension_id.as_deref().and_then(|ext| {
                decision
                    .candidates
                    .iter()
                    .find(|c| c.extension_id == ext)
                    .and_then(|c| c.capacity)
                    .and_then(|cap| cap.max_sandboxes)
                    .map(|max| (ext, max))
            });
            // Not fsynced here: the hold below is the next write and its fsync covers
            // this one (same WAL). Without a hold nothing needs recovering.
            let inserted = self
                .store
                .insert(&st, &fingerprint, self.owner.id(), slot)?;
            match inserted {
                Inserted::New => break (decision, st),
                Inserted::Existing(existing, fp) => {
                    // Another process won the key between our lookup and insert.
                    let k = idempotency_key.unwrap_or_default();
                    return replay(*existing, &fp, &fingerprint, tenant, k);
                }
                // Another process filled the pool since we counted: route again (the
                // router now sees it full).
                Inserted::PoolFull if rounds < POOL_FULL_ROUNDS => continue,
                Inserted::PoolFull => {
                    return Err(ManagerError::Setup(format!(
                        "sandbox {id}: the pool kept filling up while routing; try again"
                    )));
                }
            }
        };
        tracing::debug!(sandbox_id = %id, tenant, profile = %profile.id, attempts = decision.attempts.len(), "create: intent recorded");

        let mut called_any = false;
        for (n, attempt) in decision.attempts.iter().enumerate() {
            let ext_id = attempt.extension_id.as_str();
            let started = Utc::now();
            let Some(backend) = self.extensions.get(ext_id) else {
                st.attempts.push(failed_attempt(
                    attempt,
                    "",
                    started,
                    "no longer loaded".into(),
                    true,
                ));
                continue;
            };
            if !self.health.acquire(ext_id) {
                st.attempts.push(failed_attempt(
                    attempt,
                    backend.version(),
                    started,
                    "circuit open (too many recent failures)".into(),
                    true,
                ));
                continue;
            }
            // With leases on, only the first lease is held (see lease.rs).
            let amount = self.first_hold(backend.as_ref(), &st.request, &attempt.estimate.total);
            let hold =
                match self
                    .ledger
                    .hold(tenant, &amount, &id, ext_id, &format!("{id}/hold/{n}"))
                {
                    Ok(h) => h,
                    Err(e) => {
                        release_trial(&self.health, ext_id, "the hold was refused");
                        let e = with_amounts(e, &amount);
                        return self.give_up(
                            st,
                            called_any,
                            &e.to_string(),
                            Some(ManagerError::Ledger(e)),
                        );
                    }
                };
            st.extension_id = Some(ext_id.to_owned());
            st.extension_version = Some(backend.version().to_owned());
            st.estimate = Some(attempt.estimate.clone());
            st.hold_id = Some(hold.id.clone());
            st.held = Some(hold.amount.clone());
            st.attempts.push(AttemptRecord {
                extension_id: ext_id.to_owned(),
                extension_version: backend.version().to_owned(),
                estimate: attempt.estimate.total.clone(),
                hold_id: Some(hold.id.clone()),
                started_at: started,
                latency_ms: None,
                error: None,
                retryable: false,
            });
            if n > 0 {
                // A failover: record which extension now holds the slot. The first
                // attempt's extension is already in the intent, and reconciliation finds
                // the hold by sandbox id, so the common path skips this write.
                st.updated_at = Utc::now();
                if let Err(e) = self.store.update(&st, Some(self.owner.id()), false) {
                    // The trial taken by `acquire` must end, or a half-open circuit
                    // would wait for it forever; the hold is found by reconciliation.
                    release_trial(&self.health, ext_id, "the status write failed");
                    return Err(e.into());
                }
            }

            let t0 = Instant::now();
            called_any = true;
            let result = backend.create(&st.request);
            let latency = t0.elapsed();
            let last = st.attempts.len() - 1;
            st.attempts[last].latency_ms =
                Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
            match result {
                Ok(created) => {
                    self.hook(HookPoint::CreateAfterBackend, &id);
                    self.health.record_success(ext_id, latency);
                    st.state = SandboxState::Running;
                    st.handle = Some(created.handle);
                    st.started_at_ms = Some(now_ms());
                    st.updated_at = Utc::now();
                    // The answer: durable before the caller hears of it.
                    self.store.update(&st, None, true)?;
                    tracing::info!(
                        sandbox_id = %id, tenant, extension = ext_id, hold = %hold.id,
                        latency_ms = latency.as_millis() as u64, "sandbox created"
                    );
                    return Ok(st);
                }
                Err(e) => {
                    self.health.record_failure(ext_id, &e);
                    tracing::warn!(sandbox_id = %id, tenant, extension = ext_id, error = %e, retryable = e.is_retryable(), "create failed");
                    self.ledger.void(&hold.id, &format!("{}/void", hold.id))?;
                    st.hold_id = None;
                    st.held = None;
                    st.attempts[last].error = Some(e.to_string());
                    st.attempts[last].retryable = e.is_retryable();
                    st.updated_at = Utc::now();
                    self.store.update(&st, Some(self.owner.id()), false)?;
                    if !e.is_retryable() {
                        return self.give_up(st, true, &e.to_string(), None);
                    }
                }
            }
        }
        let why = match st.attempts.last().and_then(|a| a.error.clone()) {
            Some(last) => format!("all {} attempts failed; last: {last}", st.attempts.len()),
            None => "no attempt could be made".to_owned(),
        };
        self.give_up(st, called_any, &why, None)
    }

    /// Ends a create that produced no sandbox. No hold is open at this point. When no
    /// extension was ever called, the record is removed (nothing was created, and the
    /// idempotency key may be used again); otherwise it stays as `failed` with its attempts.
    fn give_up(
        &self,
        mut st: SandboxStatus,
        called_any: bool,
        why: &str,
        cause: Option<ManagerError>,
    ) -> Result<SandboxStatus, ManagerError> {
        if !called_any {
            self.store.delete(&st.id)?;
            tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, reason = why, "create refused");
            return Err(cause.unwrap_or_else(|| {
                st.state = SandboxState::Failed;
                st.error = Some(why.to_owned());
                ManagerError::CreateFailed {
                    status: Box::new(st),
                }
            }));
        }
        st.state = SandboxState::Failed;
        st.error = Some(why.to_owned());
        st.updated_at = Utc::now();
        // Not fsynced: if lost, reconciliation reaches the same verdict (no open hold).
        self.store.update(&st, None, false)?;
        tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, reason = why, "create failed");
        Err(cause.unwrap_or(ManagerError::CreateFailed {
            status: Box::new(st),
        }))
    }
}

/// The answer for a repeated key: the sandbox it created, the same failure, or a
/// conflict when the request differs.
fn replay(
    existing: SandboxStatus,
    stored_fp: &str,
    fingerprint: &str,
    tenant: &str,
    key: &str,
) -> Result<SandboxStatus, ManagerError> {
    if stored_fp != fingerprint {
        return Err(ManagerError::IdempotencyConflict {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            sandbox_id: existing.id,
        });
    }
    match existing.state {
        SandboxState::Failed => Err(ManagerError::CreateFailed {
            status: Box::new(existing),
        }),
        // The first request (another process: in this one the key's stripe orders them)
        // has not answered yet, so its outcome is neither known nor durable: the retry
        // is told to come back rather than shown a sandbox that may never exist.
        SandboxState::Creating => Err(ManagerError::WrongState {
            id: existing.id,
            state: SandboxState::Creating,
            hint: "the first request with this idempotency key is still creating it; try again shortly",
        }),
        _ => Ok(existing),
    }
}

fn failed_attempt(
    attempt: &crate::domain::Attempt,
    version: &str,
    started: chrono::DateTime<Utc>,
    error: String,
    retryable: bool,
) -> AttemptRecord {
    AttemptRecord {
        extension_id: attempt.extension_id.clone(),
        extension_version: version.to_owned(),
        estimate: attempt.estimate.total.clone(),
        hold_id: None,
        started_at: started,
        latency_ms: None,
        error: Some(error),
        retryable,
    }
}

/// What makes two create requests "the same" for an idempotency key: the profile and the
/// overrides, hashed in the shape the overrides had before [`SandboxSpec`] existed
/// (maps as lists of pairs), so keys stored by earlier builds keep matching.
fn fingerprint(spec: &SandboxSpec) -> String {
    #[derive(serde::Serialize)]
    struct Overrides<'a> {
        vcpus: Option<u32>,
        memory_mib: Option<u32>,
        max_duration_secs: Option<u64>,
        region: &'a Option<String>,
        env: Vec<(&'a String, &'a String)>,
        metadata: Vec<(&'a String, &'a String)>,
    }
    let overrides = Overrides {
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        max_duration_secs: spec.max_duration_secs,
        region: &spec.region,
        env: spec.env.iter().collect(),
        metadata: spec.metadata.iter().collect(),
    };
    let mut h = Sha256::new();
    h.update(spec.profile.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(&overrides).unwrap_or_default());
    hex::encode(h.finalize())
}

/// A tenant the ledger never saw holds nothing: refused like any short balance, with the
/// hold asked for and zero available, so a client reads the same two amounts either way.
fn with_amounts(e: LedgerError, need: &Money) -> LedgerError {
    match e {
        LedgerError::UnknownTenant(_) => LedgerError::InsufficientCredits {
            need: need.clone(),
            available: Money {
                amount: Decimal::ZERO,
                currency: need.currency.clone(),
            },
        },
        other => other,
    }
}

/// Frees a half-open circuit's trial that was granted but not used (the hold was
/// refused, or the status write before the call failed, so the extension was never
/// called): a final, non-health answer does that.
fn release_trial(health: &HealthTracker, ext_id: &str, why: &str) {
    let not_called = ExtensionError {
        extension: ext_id.to_owned(),
        function: Function::Create,
        fault: Fault::Backend(BackendError::Unsupported(format!("not called: {why}"))),
    };
    health.record_failure(ext_id, &not_called);
}

/// `sb-` + 12 hex digits of Unix milliseconds + 8 random hex digits: short enough to
/// type, sorted by creation time, unique in practice (the store's primary key enforces it).
fn new_sandbox_id() -> String {
    let random = uuid::Uuid::new_v4();
    let r = random.as_bytes();
    format!(
        "sb-{:012x}{:02x}{:02x}{:02x}{:02x}",
        now_ms() & 0xffff_ffff_ffff,
        r[0],
        r[1],
        r[2],
        r[3]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::sandboxes::tests::status;

    #[test]
    fn a_retry_while_the_first_request_is_creating_is_told_to_come_back() {
        let mut creating = status("sb-1");
        creating.state = SandboxState::Creating;
        let err = replay(creating, "fp", "fp", "acme", "k1").unwrap_err();
        assert!(
            matches!(
                err,
                ManagerError::WrongState {
                    state: SandboxState::Creating,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("still creating"), "{err}");
    }

    #[test]
    fn a_retry_after_the_answer_gets_the_same_sandbox_or_failure() {
        let running = status("sb-2");
        let again = replay(running.clone(), "fp", "fp", "acme", "k2").unwrap();
        assert_eq!(again, running);
        let mut failed = status("sb-3");
        failed.state = SandboxState::Failed;
        assert!(matches!(
            replay(failed, "fp", "fp", "acme", "k3"),
            Err(ManagerError::CreateFailed { .. })
        ));
        assert!(matches!(
            replay(status("sb-4"), "fp", "other", "acme", "k4"),
            Err(ManagerError::IdempotencyConflict { .. })
        ));
    }
}
