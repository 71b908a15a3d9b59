//! Credit leases: a long sandbox does not hold its whole maximum duration of credits. It
//! holds one chunk (say 15 minutes) at create, and the lease keeper grows the hold a chunk
//! at a time while it runs. When a renewal cannot be covered, the status says so and the
//! sandbox is destroyed and settled once its paid time plus a grace period is over.
//!
//! A renewal replaces the sandbox's hold, never adds a second one, so destroy still
//! settles exactly one hold:
//!
//! 1. read the row (state `running`, hold H1, version v) under the sandbox's lock,
//! 2. `replace_hold(H1 → H2)`: ONE ledger transaction voids H1 and opens H2 for the longer
//!    coverage, checked as if H1 were already released (`available + H1 ≥ H2`): a tenant
//!    needs only the increment, and the two holds are never open together,
//! 3. record H2 in the row: compare-and-set on (`running`, owner, version v). On a lost
//!    race the row is read again: still `running`, the write is retried on the fresh row;
//!    otherwise (a destroy in another process claimed it) H2 is left alone, it is the
//!    sandbox's only open hold and the destroy settles it (below).
//!
//! Crash analysis. Before 2 nothing changed. 2 is atomic: H1 open and H2 absent, or H1
//! voided and H2 open. After 2 and before 3 the row still names the voided H1; nothing
//! depends on it being current:
//!
//! - "the sandbox's hold" is its newest hold in the ledger when the recorded one is not
//!   open (`replacement_hold`): reconciliation keeps H2 (it voids only
//!   holds that are neither recorded nor that replacement) and records it in the row;
//! - `finish_destroy` that finds its recorded hold voided settles the replacement;
//! - the keeper's next pass, replacing H1 again, is told H1 is resolved and records H2.
//!
//! The replace's key is `<H1>/replace/<covered secs>`: a retried renewal of the same
//! hold to the same coverage replays to the same H2.
//!
//! Why the version: a destroy in another process may read the row (H1) just before a
//! renewal and claim it just after. Comparing state and owner alone, its claim would
//! succeed and write H1 back; with the version it loses, reads again and destroys with
//! H2. A renewal that runs after the claim loses its own compare-and-set instead and
//! leaves H2 to the destroy.
//!
//! How far each sandbox is covered, and since when a renewal was refused, is kept by the
//! status store beside the statuses ([`LeaseRow`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::backend::Backend;
use super::store::LeaseRow;
use super::{HookPoint, ManagerError, SandboxManager, now_ms};
use crate::domain::{Money, SandboxRequest, SandboxState, SandboxStatus};
use crate::payments::{Hold, HoldState, LedgerError};
use crate::telemetry::metrics;

/// Lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Running time one lease covers.
    pub chunk: Duration,
    /// Renew this long before the covered time runs out.
    pub renew_before: Duration,
    /// How long a sandbox whose renewal was refused keeps running past its paid time.
    pub grace: Duration,
}

/// What one pass of the lease keeper did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaseReport {
    /// Sandboxes whose hold now covers more time.
    pub renewed: Vec<String>,
    /// Sandboxes whose renewal the tenant's credits could not cover (this pass).
    pub refused: Vec<String>,
    /// Sandboxes destroyed and settled because their grace period ended.
    pub ended: Vec<String>,
    /// Sandboxes the keeper could not handle this pass, with the reason.
    pub errors: Vec<(String, String)>,
}

impl SandboxManager {
    /// What `create` holds for a new sandbox: the estimate for its first lease when
    /// leases are on and shorter than its maximum duration, else the whole estimate.
    pub(super) fn first_hold(
        &self,
        backend: &dyn Backend,
        request: &SandboxRequest,
        full: &Money,
    ) -> Money {
        let Some(policy) = self.config.lease else {
            return full.clone();
        };
        let chunk = policy.chunk.as_secs().max(1);
        if chunk >= request.max_duration_secs {
            return full.clone();
        }
        let mut first = request.clone();
        first.max_duration_secs = chunk;
        match backend.estimate_cost(&first) {
            Ok(c) if c.total.currency == full.currency && c.total.amount <= full.amount => c.total,
            // Holding the whole estimate is always safe.
            _ => full.clone(),
        }
    }

    /// One pass of the lease keeper over the running sandboxes (see the module docs).
    pub fn keep_leases(self: &Arc<Self>) -> LeaseReport {
        let mut report = LeaseReport::default();
        if self.config.lease.is_none() {
            return report;
        }
        let running = match self.store.list(None, Some(SandboxState::Running)) {
            Ok(l) => l,
            Err(e) => {
                report.errors.push((String::new(), e.to_string()));
                return report;
            }
        };
        let passes = self.per_extension(running, |manager, st| {
            let mut one = LeaseReport::default();
            let Some(policy) = manager.config.lease else {
                return one;
            };
            if let Err(e) = manager.keep_lease(&policy, st, &mut one) {
                one.errors.push((st.id.clone(), e.to_string()));
            }
            for _ in &one.renewed {
                metrics::lease_renewal("renewed");
            }
            for _ in &one.refused {
                metrics::lease_renewal("refused");
            }
            one
        });
        for one in passes {
            report.renewed.extend(one.renewed);
            report.refused.extend(one.refused);
            report.ended.extend(one.ended);
            report.errors.extend(one.errors);
        }
        // Forget finished sandboxes.
        if let Err(e) = self.store.forget_finished_leases() {
            tracing::debug!(error = %e, "finished leases stay recorded until the next pass");
        }
        report
    }

    fn keep_lease(
        &self,
        policy: &LeasePolicy,
        st: &SandboxStatus,
        report: &mut LeaseReport,
    ) -> Result<(), ManagerError> {
        let Some(start) = st.started_at_ms else {
            return Ok(());
        };
        let max = st.request.max_duration_secs;
        let chunk = policy.chunk.as_secs().max(1);
        if chunk >= max {
            return Ok(());
        }
        let row = self.store.lease(&st.id)?;
        let covered = row.as_ref().map_or(chunk, |r| r.covered_secs).min(max);
        let unpaid = row.as_ref().and_then(|r| r.unpaid_since_ms);
        let now = now_ms();
        let lease_end = start.saturating_add(covered * 1000);
        if let Some(since) = unpaid {
            let deadline = lease_end
                .max(since)
                .saturating_add(u64::try_from(policy.grace.as_millis()).unwrap_or(u64::MAX));
            if now >= deadline {
                // Paid time and grace are over: end it like a DELETE (settled once).
                self.destroy(None, &st.id)?;
                metrics::reaped("lease_unpaid");
                tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, "lease unpaid past its grace period: sandbox destroyed and settled");
                report.ended.push(st.id.clone());
                return Ok(());
            }
        }
        if covered >= max {
            return Ok(());
        }
        let renew_at = lease_end
            .saturating_sub(u64::try_from(policy.renew_before.as_millis()).unwrap_or(u64::MAX));
        if now < renew_at {
            return Ok(());
        }
        // Cover the next chunk past "now + renew_before" (several after a downtime).
        let elapsed_secs = now.saturating_sub(start) / 1000 + policy.renew_before.as_secs();
        let target = ((elapsed_secs / chunk + 1) * chunk)
            .max(covered + chunk)
            .min(max);

        let _stripe = self.stripe(&format!("sandbox\n{}", st.id));
        // Re-read under the lock: a destroy may have started meanwhile.
        let Some(fresh) = self.store.get(&st.id)? else {
            return Ok(());
        };
        let (current, owner, version) = (fresh.status, fresh.owner, fresh.version);
        if current.state != SandboxState::Running || current.hold_id.is_none() {
            return Ok(());
        }
        let old_hold = current.hold_id.clone().unwrap_or_default();
        let backend = self.backend_for(&current)?;
        let mut req = current.request.clone();
        req.max_duration_secs = target;
        let estimate = backend
            .estimate_cost(&req)
            .map_err(|e| ManagerError::Extension {
                id: current.id.clone(),
                error: e,
            })?;
        let ext = current.extension_id.clone().unwrap_or_default();
        if current.held.as_ref().is_some_and(|h| {
            h.currency == estimate.total.currency && h.amount >= estimate.total.amount
        }) {
            // Already held (e.g. created without leases): nothing to grow.
            self.store.set_lease(&current.id, lease_row(target, None))?;
            return Ok(());
        }
        let key = format!("{old_hold}/replace/{target}");
        match self.ledger.replace_hold(&old_hold, &estimate.total, &key) {
            Ok(hold) => {
                self.hook(HookPoint::LeaseAfterReplace, &current.id);
                if self.record_hold(&current.id, &old_hold, &hold)? {
                    self.store.set_lease(&current.id, lease_row(target, None))?;
                    tracing::info!(sandbox_id = %current.id, tenant = %current.tenant, extension = %ext, covered_secs = target, held = %hold.amount, "lease renewed");
                    report.renewed.push(current.id.clone());
                } else {
                    // A destroy claimed it meanwhile: it settles the new hold.
                    tracing::info!(sandbox_id = %current.id, tenant = %current.tenant, hold = %hold.id, "lease renewed while the sandbox was being destroyed; its destroy settles the new hold");
                }
            }
            Err(
                LedgerError::HoldAlreadyResolved { .. } | LedgerError::IdempotencyConflict { .. },
            ) => {
                // The recorded hold was already replaced (a renewal whose status write was
                // lost) or settled (a destroy elsewhere): record the replacement, if any.
                if let Some(hold) = self.replacement_hold(&current)?
                    && hold.state == HoldState::Open
                    && self.record_hold(&current.id, &old_hold, &hold)?
                {
                    tracing::info!(sandbox_id = %current.id, tenant = %current.tenant, hold = %hold.id, "recorded the hold that replaced the sandbox's recorded one");
                }
            }
            Err(e @ (LedgerError::InsufficientCredits { .. } | LedgerError::UnknownTenant(_))) => {
                let since = unpaid.unwrap_or(now);
                let deadline = lease_end
                    .max(since)
                    .saturating_add(u64::try_from(policy.grace.as_millis()).unwrap_or(u64::MAX));
                let mut next = current.clone();
                next.error = Some(format!(
                    "{LEASE_REFUSED}: {e}; paid until {}, destroyed at {} unless credits are added",
                    super::ms_to_time(lease_end).to_rfc3339(),
                    super::ms_to_time(deadline).to_rfc3339()
                ));
                next.updated_at = Utc::now();
                // Only on the row as read: if it changed meanwhile, the next pass decides.
                if (unpaid.is_none() || current.error != next.error)
                    && !self.store.transition(
                        &next,
                        SandboxState::Running,
                        owner.as_deref(),
                        version,
                        owner.as_deref(),
                    )?
                {
                    return Ok(());
                }
                self.store
                    .set_lease(&current.id, lease_row(covered, Some(since)))?;
                if unpaid.is_none() {
                    tracing::warn!(sandbox_id = %current.id, tenant = %current.tenant, extension = %ext, error = %e, "lease renewal refused: the sandbox ends after its grace period");
                }
                report.refused.push(current.id.clone());
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Records `hold` (which replaced `old_hold`) as the hold of the `running` sandbox
    /// `id`: compare-and-set on the freshly read row, re-reading and retrying while it
    /// stays `running` with `old_hold`. Returns false when the sandbox left `running` (its
    /// destroy settles `hold`) or kept changing (reconciliation records it later).
    fn record_hold(&self, id: &str, old_hold: &str, hold: &Hold) -> Result<bool, ManagerError> {
        for _ in 0..RECORD_TRIES {
            let Some(row) = self.store.get(id)? else {
                return Ok(false);
            };
            if row.status.state != SandboxState::Running {
                return Ok(false);
            }
            if row.status.hold_id.as_deref() == Some(hold.id.as_str()) {
                return Ok(true);
            }
            if row.status.hold_id.as_deref() != Some(old_hold) {
                // Someone recorded another hold: theirs is newer than what we know.
                return Ok(false);
            }
            let mut next = row.status.clone();
            next.hold_id = Some(hold.id.clone());
            next.held = Some(hold.amount.clone());
            if next
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with(LEASE_REFUSED))
            {
                next.error = None;
            }
            next.updated_at = Utc::now();
            if self.store.transition(
                &next,
                SandboxState::Running,
                row.owner.as_deref(),
                row.version,
                row.owner.as_deref(),
            )? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The hold that replaced a sandbox's recorded hold, when the row missed it: the
    /// sandbox's newest hold, if that is not the recorded one and was not voided. Only
    /// meaningful once the recorded hold is known not to be open (a replacement voids
    /// it in the same transaction).
    pub(super) fn replacement_hold(
        &self,
        st: &SandboxStatus,
    ) -> Result<Option<Hold>, ManagerError> {
        Ok(self.ledger.hold_for_sandbox(&st.id)?.filter(|h| {
            st.hold_id.as_deref() != Some(h.id.as_str()) && h.state != HoldState::Voided
        }))
    }

    /// Records a replacement hold found by reconciliation in a `running` row (see the
    /// module docs). A lost compare-and-set is left to the next pass.
    pub(super) fn adopt_replacement(
        &self,
        st: &SandboxStatus,
        hold: &Hold,
    ) -> Result<bool, ManagerError> {
        let Some(old) = st.hold_id.as_deref() else {
            return Ok(false);
        };
        let adopted = self.record_hold(&st.id, old, hold)?;
        if adopted {
            tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, old_hold = %old, hold = %hold.id, "reconcile: recorded the hold that replaced the sandbox's recorded one");
        }
        Ok(adopted)
    }
}

/// How often a renewal re-reads a row that changed before giving up recording its hold
/// (reconciliation or the next pass records it).
const RECORD_TRIES: usize = 5;

/// How a refused renewal starts the status's `error`.
pub const LEASE_REFUSED: &str = "credits lease renewal refused";

fn lease_row(covered_secs: u64, unpaid_since_ms: Option<u64>) -> LeaseRow {
    LeaseRow {
        covered_secs,
        unpaid_since_ms,
    }
}
