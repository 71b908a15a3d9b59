//! `destroy`: fix the usage window, ask the extension that created the sandbox, meter,
//! settle with the meter event, record.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use rust_decimal::prelude::ToPrimitive;

use super::backend::Backend;
use super::{HookPoint, ManagerError, SandboxManager, meter, ms_to_time, now_ms};
use crate::domain::{
    ExtensionError, Fault, Function, Meter, Money, Reading, SandboxContext, SandboxState,
    SandboxStatus,
};
use crate::events::{MeterEventData, meter_event};
use crate::payments::{LedgerError, OutboxEvent, Settlement, settlement};
use crate::telemetry::metrics;

/// How often `destroy` re-reads a row whose claim it lost before reporting it busy.
const CLAIM_TRIES: usize = 5;

/// What a reaper pass did.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Sandboxes destroyed and settled.
    pub destroyed: Vec<SandboxStatus>,
    /// Sandboxes that could not be finished now (they stay tracked), with the reason.
    pub left: Vec<(String, ManagerError)>,
}

impl SandboxManager {
    /// Destroys a sandbox and settles its meter. With `tenant`, another tenant's sandbox
    /// is reported as not found.
    ///
    /// Calls the extension recorded in the status (the version that created it when this
    /// process still has it), never re-routes. Idempotent: destroying a destroyed sandbox
    /// returns its settled status and charges nothing. When the extension is missing or
    /// fails, the sandbox stays tracked (`running`, or `destroying` once its usage window
    /// was fixed) and a later call or reconciliation finishes it.
    pub fn destroy(&self, tenant: Option<&str>, id: &str) -> Result<SandboxStatus, ManagerError> {
        let _stripe = self.stripe(&format!("sandbox\n{id}"));
        // A claim is lost when the row changed since it was read (another process claimed
        // it, or renewed its lease and so swapped its hold): read it again and retry with
        // the fresh row; a row that keeps changing is reported busy.
        for _ in 0..CLAIM_TRIES {
            let row = self.visible_row(tenant, id)?;
            let mut st = row.status;
            match st.state {
                SandboxState::Destroyed => return Ok(st),
                SandboxState::Failed => {
                    return Err(ManagerError::WrongState {
                        id: st.id,
                        state: SandboxState::Failed,
                        hint: "it was never created; there is nothing to destroy or charge",
                    });
                }
                SandboxState::Creating => {
                    return Err(ManagerError::WrongState {
                        id: st.id,
                        state: SandboxState::Creating,
                        hint: "it is still being created; try again shortly",
                    });
                }
                SandboxState::Running => {
                    let _busy = self.mark_busy(id);
                    // Checked before anything changes: a missing extension leaves it running.
                    self.backend_for(&st)?;
                    st.state = SandboxState::Destroying;
                    st.destroy_at_ms = Some(now_ms());
                    st.updated_at = Utc::now();
                    self.hook(HookPoint::DestroyBeforeClaim, id);
                    // Compare-and-set on state, owner and version: of two processes
                    // destroying at once, one fixes the usage window and settles; the
                    // other finds it `destroying` on its next read and is told it is busy.
                    // Not fsynced: the settlement's fsync covers it; if lost, nothing was
                    // charged and the sandbox is simply still running.
                    if !self.store.transition(
                        &st,
                        SandboxState::Running,
                        row.owner.as_deref(),
                        row.version,
                        Some(self.owner.id()),
                    )? {
                        continue;
                    }
                    return self.finish_destroy(st);
                }
                SandboxState::Destroying => {
                    let me = self.owner.id();
                    if let Some(owner) = row.owner.as_deref()
                        && owner != me
                        && self.owner.is_alive(owner)
                    {
                        return Err(ManagerError::Busy {
                            id: st.id,
                            owner: owner.to_owned(),
                        });
                    }
                    let _busy = self.mark_busy(id);
                    if row.owner.as_deref() != Some(me)
                        && !self.store.transition(
                            &st,
                            SandboxState::Destroying,
                            row.owner.as_deref(),
                            row.version,
                            Some(me),
                        )?
                    {
                        continue;
                    }
                    return self.finish_or_release(st);
                }
            }
        }
        Err(self.busy_error(id))
    }

    /// [`Self::finish_destroy`]; on failure the claim is released so that any process
    /// (a later call, another process's reconciliation) may retry.
    pub(super) fn finish_or_release(
        &self,
        st: SandboxStatus,
    ) -> Result<SandboxStatus, ManagerError> {
        let id = st.id.clone();
        let out = self.finish_destroy(st);
        if out.is_err()
            && let Err(e) = self.store.release(&id, self.owner.id())
        {
            tracing::warn!(sandbox_id = %id, error = %e, "could not release the claim");
        }
        out
    }

    fn busy_error(&self, id: &str) -> ManagerError {
        let owner = self
            .store
            .get(id)
            .ok()
            .flatten()
            .and_then(|r| r.owner)
            .unwrap_or_else(|| "unknown".into());
        ManagerError::Busy {
            id: id.to_owned(),
            owner,
        }
    }

    /// Drops the extension versions no sandbox still alive was created on (`creating` rows
    /// are read here too: a create records its version before it runs).
    fn forget_unused_versions(
        &self,
        running: &[SandboxStatus],
        destroying: &[SandboxStatus],
    ) -> Result<(), ManagerError> {
        let creating = self.store.list(None, Some(SandboxState::Creating))?;
        let live: HashSet<(String, String)> = running
            .iter()
            .chain(destroying)
            .chain(&creating)
            .filter_map(|st| Some((st.extension_id.clone()?, st.extension_version.clone()?)))
            .collect();
        let forgotten = self.extensions.retain_versions(&live);
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "extension versions no live sandbox uses were dropped"
            );
        }
        metrics::extension_versions(self.extensions.version_count());
        Ok(())
    }

    /// Destroys and settles every running sandbox past its maximum duration, and retries
    /// every unfinished destroy (the reaper's pass; the service calls it on a timer).
    pub fn reap_overdue(self: &Arc<Self>) -> Result<Reaped, ManagerError> {
        let now = now_ms();
        let running = self.store.list(None, Some(SandboxState::Running))?;
        let unfinished = self.store.list(None, Some(SandboxState::Destroying))?;
        self.forget_unused_versions(&running, &unfinished)?;
        let overdue = running.into_iter().filter(|st| {
            let limit_ms = st.request.max_duration_secs.saturating_mul(1000);
            st.started_at_ms
                .is_some_and(|t| now >= t.saturating_add(limit_ms))
        });
        // Destroys that could not finish (an extension that failed, a meter that could not
        // be used) are retried here too, so their holds do not wait for a tenant's retry or
        // a restart: a meter that keeps failing settles by the fallback (`meter`).
        let rows: Vec<SandboxStatus> = overdue.chain(unfinished).collect();
        let outcomes = self.per_extension(rows, |manager, st| {
            let reason = if st.state == SandboxState::Running {
                tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, "reaping a sandbox past its maximum duration");
                "max_duration"
            } else {
                "destroy_retried"
            };
            let outcome = manager.destroy(None, &st.id);
            match &outcome {
                Ok(_) => metrics::reaped(reason),
                Err(e) => tracing::debug!(sandbox_id = %st.id, error = %e, "reaper: not finished this pass"),
            }
            (st.id.clone(), reason, outcome)
        });
        let (mut done, mut left) = (Vec::new(), Vec::new());
        for (id, reason, outcome) in outcomes {
            match outcome {
                Ok(s) => done.push(s),
                // Another live process is finishing it.
                Err(ManagerError::Busy { .. }) if reason == "destroy_retried" => {}
                Err(e) => left.push((id, e)),
            }
        }
        Ok(Reaped {
            destroyed: done,
            left,
        })
    }

    /// The extension that serves an existing sandbox.
    pub(super) fn backend_for(&self, st: &SandboxStatus) -> Result<Arc<dyn Backend>, ManagerError> {
        let ext = st.extension_id.clone().unwrap_or_default();
        self.extensions
            .for_sandbox(&ext, st.extension_version.as_deref())
            .ok_or(ManagerError::ExtensionMissing {
                id: st.id.clone(),
                extension: ext,
            })
    }

    /// From `destroying` to `destroyed`; every step is safe to repeat.
    pub(super) fn finish_destroy(
        &self,
        mut st: SandboxStatus,
    ) -> Result<SandboxStatus, ManagerError> {
        let destroy_at = st.destroy_at_ms.unwrap_or_else(now_ms);
        st.destroy_at_ms = Some(destroy_at);
        let hold_id = st.hold_id.clone().ok_or_else(|| ManagerError::BadMeter {
            id: st.id.clone(),
            reason: "no hold is recorded for it".into(),
        })?;
        let held = st.held.clone().ok_or_else(|| ManagerError::BadMeter {
            id: st.id.clone(),
            reason: "no held amount is recorded for it".into(),
        })?;
        let reading = match st.reading.clone() {
            Some(r) => r,
            None => {
                let reading = self.read_meter(&mut st, destroy_at, &held)?;
                st.reading = Some(reading.clone());
                st.updated_at = Utc::now();
                self.store.update(&st, Some(self.owner.id()), false)?;
                reading
            }
        };
        let (settlement, event_id) = match self.settle_hold(&st, &reading, &hold_id, &held) {
            // The recorded hold was replaced by a lease renewal this status does not show
            // (another process renewed between our read and our claim, or died between
            // its replace and its status write): settle the sandbox's current hold.
            Err(ManagerError::Ledger(LedgerError::HoldAlreadyResolved { state, .. }))
                if state == "voided" =>
            {
                let Some(current) = self.replacement_hold(&st)? else {
                    return Err(ManagerError::BadMeter {
                        id: st.id.clone(),
                        reason: format!(
                            "its hold {hold_id} was released and it has no other hold to settle"
                        ),
                    });
                };
                tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, old_hold = %hold_id, hold = %current.id, "settling the hold that replaced the recorded one");
                st.hold_id = Some(current.id.clone());
                st.held = Some(current.amount.clone());
                self.settle_hold(&st, &reading, &current.id, &current.amount)?
            }
            other => other?,
        };
        let total = &reading.cost.total;
        let over_hold = meter::check(&reading.cost, st.held.as_ref().unwrap_or(&held))
            .ok()
            .and_then(|c| c.over_hold);
        st.meter = Some(Meter {
            total: settlement.charged.clone(),
            exact: total.amount,
            line_items: reading.cost.line_items.clone(),
            usage: reading.usage.clone(),
            held: settlement.held.clone(),
            released: settlement.released.clone(),
            written_off: settlement.written_off.clone(),
            debt: settlement.debt.clone(),
            settlement_id: format!("settle-{}", st.id),
            transfer_id: settlement.transfer_id.clone(),
            event_id: settlement.event_id.clone().unwrap_or(event_id),
            settled_at: Utc::now(),
            over_hold,
            fallback: reading.fallback.clone(),
        });
        st.state = SandboxState::Destroyed;
        // Earlier attempts' errors are over; why reconciliation ended it is not.
        if st.error.as_deref() != Some(super::reconcile::LOST_HANDLE) {
            st.error = None;
        }
        st.updated_at = Utc::now();
        // Not fsynced: the settlement is durable, and re-running this function after a
        // lost write replays it (same key) to the same figures.
        self.store.update(&st, None, false)?;
        // Counted here, where the sandbox becomes destroyed: a destroy repeated on a
        // destroyed sandbox returns before this, so each settlement counts once per host.
        metrics::settlement(
            settlement.charged.currency.as_str(),
            settlement.charged.amount.to_f64().unwrap_or(0.0),
        );
        tracing::info!(
            sandbox_id = %st.id, tenant = %st.tenant, extension = st.extension_id.as_deref().unwrap_or(""),
            charged = %settlement.charged,
            "sandbox destroyed and settled"
        );
        if self.config.deliver_after_settle
            && let Err(e) = self.deliver_outbox()
        {
            tracing::warn!(sandbox_id = %st.id, error = %e, "meter event stays in the outbox for a later delivery");
        }
        Ok(st)
    }

    /// Stops the sandbox at its extension and prices its usage, by the host's rules
    /// ([`meter`]): the usage window ends at [`meter::billed_until`], a reported duration is
    /// cut at the maximum, and a meter that cannot be used counts against the extension's
    /// health and `st.meter_failures`; from the [`meter::METER_TRIES`]th such destroy on,
    /// the fallback prices it instead.
    fn read_meter(
        &self,
        st: &mut SandboxStatus,
        destroy_at: u64,
        held: &Money,
    ) -> Result<Reading, ManagerError> {
        let backend = self.backend_for(st)?;
        let started = st.started_at_ms.unwrap_or(destroy_at);
        let until = meter::billed_until(st, destroy_at);
        let ctx = SandboxContext {
            request: st.request.clone(),
            handle: st.handle.clone().unwrap_or_default(),
            created_at_ms: started,
            now_ms: until,
        };
        let ext_err = |id: &str, e: ExtensionError| ManagerError::Extension {
            id: id.to_owned(),
            error: e,
        };
        // `destroy` reports the same usage for the same context, so a retry after a crash
        // here measures the same window. Its failures are retried, never priced: the
        // sandbox may still be running at the provider.
        let mut usage = backend.destroy(&ctx).map_err(|e| {
            self.health.record_failure(backend.id(), &e);
            ext_err(&st.id, e)
        })?;
        usage.duration_ms = usage.duration_ms.min(meter::max_ms(st));
        let failure = match backend.meter_actual(&st.request, &usage) {
            Ok(cost) => match meter::check(&cost, held) {
                Ok(charge) => {
                    if let Some(over) = &charge.over_hold {
                        tracing::warn!(
                            sandbox_id = %st.id, tenant = %st.tenant, extension = backend.id(),
                            meter = %cost.total, held = %held, over_hold = %over,
                            "the meter is above the hold: charged at the hold"
                        );
                        self.health.record_failure(
                            backend.id(),
                            &bad_meter(
                                backend.id(),
                                format!("meter {} above the hold {held}", cost.total),
                            ),
                        );
                    }
                    return Ok(Reading {
                        usage,
                        cost,
                        fallback: None,
                    });
                }
                Err(reason) => {
                    self.health
                        .record_failure(backend.id(), &bad_meter(backend.id(), reason.clone()));
                    ManagerError::BadMeter {
                        id: st.id.clone(),
                        reason,
                    }
                }
            },
            Err(e) => {
                self.health.record_failure(backend.id(), &e);
                ext_err(&st.id, e)
            }
        };
        st.meter_failures = st.meter_failures.saturating_add(1);
        if st.meter_failures < meter::METER_TRIES {
            st.error = Some(failure.to_string());
            st.updated_at = Utc::now();
            self.store.update(st, Some(self.owner.id()), false)?;
            return Err(failure);
        }
        let lifetime = until.saturating_sub(started);
        let cost = meter::fallback(st.estimate.as_ref(), held, lifetime, meter::max_ms(st));
        tracing::warn!(
            sandbox_id = %st.id, tenant = %st.tenant, extension = backend.id(),
            failures = st.meter_failures, charge = %cost.total, error = %failure,
            "the meter kept failing: settling at the estimate prorated over the lifetime"
        );
        Ok(Reading {
            usage,
            cost,
            fallback: Some(failure.to_string()),
        })
    }

    /// Settles `hold_id` (holding `held`) with the reading, storing the meter event in the
    /// same transaction. Returns the settlement and the event's id.
    fn settle_hold(
        &self,
        st: &SandboxStatus,
        reading: &Reading,
        hold_id: &str,
        held: &Money,
    ) -> Result<(Settlement, String), ManagerError> {
        let bad = |reason: String| ManagerError::BadMeter {
            id: st.id.clone(),
            reason,
        };
        // Capped at this hold (the one being settled, which a renewal may have raised).
        let total = &meter::check(&reading.cost, held).map_err(bad)?.charge;
        let (charged, released) =
            settlement::preview(held.amount, total.amount).map_err(|e| bad(e.to_string()))?;
        let settlement_id = format!("settle-{}", st.id);
        let destroy_at = st.destroy_at_ms.unwrap_or_else(now_ms);
        let provider_price = crate::payments::settlement::byok_provider_price(&reading.cost);
        let data = MeterEventData {
            sandbox_id: st.id.clone(),
            tenant: st.tenant.clone(),
            profile: st.profile.clone(),
            extension_id: st.extension_id.clone().unwrap_or_default(),
            extension_version: st.extension_version.clone().unwrap_or_default(),
            duration_ms: reading.usage.duration_ms,
            usage: reading.usage.measures.clone(),
            line_items: reading.cost.line_items.clone(),
            currency: total.currency.to_string(),
            amount_exact: total.amount.normalize().to_string(),
            amount_charged: charged.normalize().to_string(),
            amount_held: held.amount.normalize().to_string(),
            amount_released: released.normalize().to_string(),
            settlement_id: settlement_id.clone(),
            byok: provider_price.is_some(),
            provider_price: provider_price.map(|p| p.normalize().to_string()),
        };
        // Timestamped with the destroy decision, not "now": a retried settlement carries
        // the very same event.
        let event = meter_event(&self.config.event_source, &data, ms_to_time(destroy_at))?;
        let settlement = self.ledger.settle(
            hold_id,
            total,
            &settlement_id,
            Some(OutboxEvent {
                id: event.id.clone(),
                payload: event.payload,
            }),
        )?;
        Ok((settlement, event.id))
    }
}

/// A meter the host could not use, as a fault of the extension's `meter-actual`.
fn bad_meter(extension: &str, message: String) -> ExtensionError {
    ExtensionError {
        extension: extension.to_owned(),
        function: Function::MeterActual,
        fault: Fault::BadAnswer { message },
    }
}
