//! Reconciliation: finish or roll back what a dead process left between two steps.

use std::collections::HashSet;

use chrono::Utc;
use serde::Serialize;

use super::{ManagerError, SandboxManager, now_ms};
use crate::domain::{BackendError, Fault, SandboxContext, SandboxState, SandboxStatus};
use crate::payments::{HoldState, LedgerError};

/// What reconciliation (`SandboxManager::reconcile`) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Creates whose outcome was unknown and whose backend reports the sandbox: now `running`.
    pub recovered: Vec<String>,
    /// Creates that never produced a sandbox: hold released, now `failed`.
    pub rolled_back: Vec<String>,
    /// Destroys that were finished and settled.
    pub settled: Vec<String>,
    /// Holds released because no live sandbox needs them.
    pub voided_holds: Vec<String>,
    /// Meter events delivered from the outbox.
    pub delivered_events: usize,
    /// Sandboxes left for a later pass, with the reason (extension missing or failing).
    pub left: Vec<(String, String)>,
    /// Sandboxes skipped because a live process is working on them.
    pub busy: usize,
}

impl ReconcileReport {
    /// Whether there was nothing to do.
    pub fn is_empty(&self) -> bool {
        self.recovered.is_empty()
            && self.rolled_back.is_empty()
            && self.settled.is_empty()
            && self.voided_holds.is_empty()
            && self.delivered_events == 0
            && self.left.is_empty()
    }
}

/// Why a sandbox was destroyed by reconciliation right after its create (kept on the
/// destroyed status: the tenant never saw it running).
pub(super) const LOST_HANDLE: &str = "create interrupted (process died) after the backend \
     started it but before its handle was recorded: destroyed and billed from the create's start";

impl SandboxManager {
    /// Finishes or rolls back every sandbox a dead process left in `creating` or
    /// `destroying`, releases holds no live sandbox needs, and delivers undelivered meter
    /// events. Safe to run at any time and from several processes: rows a live process is
    /// working on are left alone.
    pub fn reconcile(&self) -> Result<ReconcileReport, ManagerError> {
        let mut report = ReconcileReport::default();
        for row in self.store.in_flight()? {
            let id = row.status.id.clone();
            if self.is_busy_here(&id) || self.owned_by_other_live(row.owner.as_deref()) {
                report.busy += 1;
                continue;
            }
            let _stripe = self.stripe(&format!("sandbox\n{id}"));
            // Re-read under the lock: a destroy in this process may have finished it.
            let Some(row) = self.store.get(&id)? else {
                continue;
            };
            if !matches!(
                row.status.state,
                SandboxState::Creating | SandboxState::Destroying
            ) {
                continue;
            }
            let _busy = self.mark_busy(&id);
            // Claim it (compare-and-set on the owner): another process reconciling at the
            // same moment gets nothing to do.
            let me = self.owner.id();
            if row.owner.as_deref() != Some(me)
                && !self.store.transition(
                    &row.status,
                    row.status.state,
                    row.owner.as_deref(),
                    row.version,
                    Some(me),
                )?
            {
                report.busy += 1;
                continue;
            }
            let outcome = match row.status.state {
                SandboxState::Creating => {
                    let out = self.recover_create(row.status);
                    if out.is_err() {
                        self.store.release(&id, me)?;
                    }
                    out
                }
                SandboxState::Destroying => self.finish_or_release(row.status),
                _ => continue,
            };
            match outcome {
                Ok(st) => match st.state {
                    SandboxState::Running => report.recovered.push(id),
                    SandboxState::Failed => report.rolled_back.push(id),
                    SandboxState::Destroyed => report.settled.push(id),
                    _ => {}
                },
                Err(e) => {
                    tracing::warn!(sandbox_id = %id, error = %e, "reconcile: left for a later pass");
                    report.left.push((id, e.to_string()));
                }
            }
        }
        self.void_unneeded_holds(&mut report)?;
        match self.deliver_outbox() {
            Ok(n) => report.delivered_events = n,
            Err(e) => report.left.push(("outbox".into(), e.to_string())),
        }
        if !report.is_empty() {
            tracing::info!(
                recovered = report.recovered.len(),
                rolled_back = report.rolled_back.len(),
                settled = report.settled.len(),
                voided_holds = report.voided_holds.len(),
                delivered_events = report.delivered_events,
                left = report.left.len(),
                "reconciled"
            );
        }
        Ok(report)
    }

    fn owned_by_other_live(&self, owner: Option<&str>) -> bool {
        owner.is_some_and(|o| o != self.owner.id() && self.owner.is_alive(o))
    }

    /// A create whose outcome was not recorded: if credits are still held, ask the
    /// backend whether the sandbox exists; record it running, or release the hold.
    fn recover_create(&self, mut st: SandboxStatus) -> Result<SandboxStatus, ManagerError> {
        let hold = self
            .ledger
            .hold_for_sandbox(&st.id)?
            .filter(|h| h.state == HoldState::Open);
        let Some(hold) = hold else {
            st.state = SandboxState::Failed;
            st.hold_id = None;
            st.held = None;
            st.error = Some("create interrupted (process died); nothing was held".into());
            st.updated_at = Utc::now();
            self.store.update(&st, None, false)?;
            return Ok(st);
        };
        let ext = hold.extension.clone();
        let version = if st.extension_id.as_deref() == Some(ext.as_str()) {
            st.extension_version.clone()
        } else {
            None
        };
        let backend = self
            .extensions
            .for_sandbox(&ext, version.as_deref())
            .ok_or_else(|| ManagerError::ExtensionMissing {
                id: st.id.clone(),
                extension: ext.clone(),
            })?;
        let started_ms = st
            .attempts
            .iter()
            .rev()
            .find(|a| a.hold_id.as_deref() == Some(hold.id.as_str()))
            .map(|a| a.started_at)
            .unwrap_or(st.created_at);
        let started_ms = u64::try_from(started_ms.timestamp_millis()).unwrap_or(0);
        let ctx = SandboxContext {
            request: st.request.clone(),
            handle: st.handle.clone().unwrap_or_default(),
            created_at_ms: started_ms,
            now_ms: now_ms(),
        };
        match backend.status(&ctx) {
            Ok(backend_status) if st.handle.as_deref().is_none_or(str::is_empty) => {
                // It exists, but the handle `create` returned never reached the row: no
                // exec, files or status call could address it, so it is ended now (the
                // extension gets the empty handle and finds it by `request.sandbox-id`,
                // as it just did for `status`) and billed from when the create started.
                st.state = SandboxState::Destroying;
                st.extension_id = Some(ext);
                st.extension_version = Some(backend.version().to_owned());
                st.hold_id = Some(hold.id.clone());
                st.held = Some(hold.amount.clone());
                st.handle = Some(String::new());
                st.started_at_ms = Some(started_ms);
                st.destroy_at_ms = Some(now_ms());
                st.error = Some(LOST_HANDLE.into());
                st.updated_at = Utc::now();
                self.store.update(&st, Some(self.owner.id()), true)?;
                tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, backend = ?backend_status.state, "reconcile: create found without a handle; destroying it");
                self.finish_destroy(st)
            }
            Ok(backend_status) => {
                // It exists: bill it from when the create started (the latest moment we
                // know it did not exist yet is unknown; the start is the fair bound).
                st.state = SandboxState::Running;
                st.extension_id = Some(ext);
                st.extension_version = Some(backend.version().to_owned());
                st.hold_id = Some(hold.id.clone());
                st.held = Some(hold.amount.clone());
                st.handle = Some(st.handle.clone().unwrap_or_default());
                st.started_at_ms = Some(started_ms);
                st.error = None;
                st.updated_at = Utc::now();
                self.store.update(&st, None, true)?;
                tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, backend = ?backend_status.state, "reconcile: create recovered");
                Ok(st)
            }
            Err(e)
                if !e.is_retryable()
                    || matches!(e.fault, Fault::Backend(BackendError::NotFound(_))) =>
            {
                self.void_once(&hold.id)?;
                st.state = SandboxState::Failed;
                st.hold_id = None;
                st.held = None;
                st.error = Some(format!(
                    "create interrupted (process died) and the backend has no such sandbox: {e}"
                ));
                st.updated_at = Utc::now();
                self.store.update(&st, None, false)?;
                Ok(st)
            }
            Err(e) => {
                self.health.record_failure(backend.id(), &e);
                Err(ManagerError::Extension {
                    id: st.id.clone(),
                    error: e,
                })
            }
        }
    }

    /// Releases open holds that no live sandbox needs: holds of unknown sandboxes (after
    /// the grace period), of failed or destroyed ones, and stale holds of live ones. A
    /// live sandbox needs its recorded hold, or, when that one is no longer open, the
    /// hold that replaced it (a lease renewal whose status write was lost or lost a race);
    /// a `running` row is then updated to name it.
    fn void_unneeded_holds(&self, report: &mut ReconcileReport) -> Result<(), ManagerError> {
        let grace = chrono::Duration::from_std(self.config.orphan_hold_grace)
            .unwrap_or(chrono::Duration::zero());
        let open = self.ledger.open_holds()?;
        let open_ids: HashSet<&str> = open.iter().map(|h| h.id.as_str()).collect();
        for hold in &open {
            let row = self.store.get(&hold.sandbox_id)?;
            let needed = match &row {
                None => Utc::now() - hold.at < grace,
                Some(r) => match r.status.state {
                    // Its create is in flight here or in a live process, or was left
                    // for a later pass: that path resolves the hold.
                    SandboxState::Creating => true,
                    SandboxState::Running | SandboxState::Destroying => {
                        let recorded = r.status.hold_id.as_deref();
                        if recorded == Some(hold.id.as_str()) {
                            true
                        } else if recorded.is_some_and(|h| open_ids.contains(h)) {
                            false
                        } else if self
                            .replacement_hold(&r.status)?
                            .is_some_and(|h| h.id == hold.id)
                        {
                            if r.status.state == SandboxState::Running {
                                self.adopt_replacement(&r.status, hold)?;
                            }
                            true
                        } else {
                            false
                        }
                    }
                    SandboxState::Destroyed | SandboxState::Failed => false,
                },
            };
            if needed {
                continue;
            }
            let _stripe = self.stripe(&format!("sandbox\n{}", hold.sandbox_id));
            if self.is_busy_here(&hold.sandbox_id) {
                continue;
            }
            self.void_once(&hold.id)?;
            tracing::info!(hold = %hold.id, sandbox_id = %hold.sandbox_id, tenant = %hold.tenant, "reconcile: released a hold no sandbox needs");
            report.voided_holds.push(hold.id.clone());
        }
        Ok(())
    }

    /// Voids a hold; already resolved counts as done.
    fn void_once(&self, hold_id: &str) -> Result<(), ManagerError> {
        match self.ledger.void(hold_id, &format!("{hold_id}/void")) {
            Ok(_) | Err(LedgerError::HoldAlreadyResolved { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
