//! Resolving holds: a settlement posts the meter against a hold (releasing the rest,
//! covering any excess by the overdraft policy, storing the meter event in the same
//! transaction), a void releases a hold in full, and a replacement swaps an open hold for
//! a larger one in one transaction (a lease renewal).

use rusqlite::params;

use super::rows::{NewTransfer, check_text, corrupt, invalid, money, now_ms, parse_time};
use super::{At, SqliteCreditsStore, WRITE_OFF_ACCOUNT};
use crate::domain::Money;
use crate::domain::money::{Rounding, to_units};
use crate::payments::{Hold, HoldState, LedgerError, OutboxEvent, Settlement, Void, settlement};
use crate::storage::sqlite::cached::CachedStatements;

impl SqliteCreditsStore {
    pub(super) fn settle_hold(
        &self,
        hold_id: &str,
        actual: &Money,
        idempotency_key: &str,
        event: Option<OutboxEvent>,
    ) -> Result<Settlement, LedgerError> {
        let charge = to_units(actual.amount, Rounding::Charge)
            .map_err(|e| invalid("amount", e.to_string()))?;
        if let Some(ev) = &event {
            check_text("event id", &ev.id, 256, false)?;
        }
        let fingerprint = format!(
            "{hold_id}\n{}\n{}",
            actual.currency,
            actual.amount.normalize()
        );
        let policy = self.policy;
        self.write("settle", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let hold = tx.hold(hold_id)?;
            if hold.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved { hold_id: hold.uid, state: hold.state.to_string() });
            }
            let cur = &hold.currency;
            if &actual.currency != cur {
                return Err(invalid("amount", format!("hold {hold_id} is in {cur}, the charge in {}", actual.currency)));
            }
            let split = settlement::split(hold.amount, charge.units);
            let posted = split.posted;
            let (_, uid) = tx.insert(NewTransfer {
                exact: Some(actual.amount),
                pending_id: Some(hold.id),
                ..hold.transfer("post", format!("settle:{idempotency_key}"), posted, at)
            })?;
            tx.apply(hold.debit, hold.credit, -hold.amount, posted)?;
            let (released, excess) = (split.released, split.excess);
            let (mut covered, mut written_off, mut debt) = (0, 0, 0);
            if excess > 0 {
                let available = tx
                    .sums(hold.debit)?
                    .available()
                    .ok_or_else(|| corrupt(tx.path, format!("balance of {} overflows", hold.tenant)))?;
                let over = settlement::cover_excess(excess, available, policy);
                (covered, written_off, debt) = (over.covered, over.written_off, over.debt);
                let extra = [
                    ("overdraft", covered, hold.debit),
                    ("debt", debt, hold.debit),
                    (
                        "write_off",
                        written_off,
                        if written_off > 0 { tx.ensure_account("write_off", WRITE_OFF_ACCOUNT, cur, at)? } else { 0 },
                    ),
                ];
                for (kind, amount, debit) in extra {
                    if amount == 0 {
                        continue;
                    }
                    tx.insert(NewTransfer {
                        debit,
                        hold_id: Some(hold.id),
                        ..hold.transfer(kind, format!("settle:{idempotency_key}#{kind}"), amount, at)
                    })?;
                    tx.apply(debit, hold.credit, 0, amount)?;
                }
                tracing::warn!(
                    tenant = %hold.tenant, sandbox_id = %hold.sandbox_id, hold = %hold.uid,
                    excess = %money(excess, cur), written_off = %money(written_off, cur), debt = %money(debt, cur),
                    "settlement exceeded its hold"
                );
            }
            let event_id = match event {
                Some(ev) => {
                    let taken: bool = tx
                        .tx
                        .row_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ?1)", params![ev.id], |r| r.get(0))
                        .at(tx.path)?;
                    if taken {
                        return Err(invalid("event id", format!("{:?} is already in the outbox", ev.id)));
                    }
                    tx.tx
                        .exec_cached(
                            "INSERT INTO outbox (id, payload, created_at) VALUES (?1, ?2, ?3)",
                            params![ev.id, ev.payload, at],
                        )
                        .at(tx.path)?;
                    Some(ev.id)
                }
                None => None,
            };
            Ok(Settlement {
                hold_id: hold.uid.clone(),
                transfer_id: uid,
                tenant: hold.tenant.clone(),
                held: money(hold.amount, cur),
                exact: actual.amount,
                charged: money(charge.units, cur),
                from_tenant: money(posted + covered + debt, cur),
                released: money(released, cur),
                written_off: money(written_off, cur),
                debt: money(debt, cur),
                event_id,
            })
        })
    }

    pub(super) fn void_hold(
        &self,
        hold_id: &str,
        idempotency_key: &str,
    ) -> Result<Void, LedgerError> {
        self.write("void", idempotency_key, hold_id, |tx| {
            let hold = tx.hold(hold_id)?;
            if hold.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved {
                    hold_id: hold.uid,
                    state: hold.state.to_string(),
                });
            }
            let (_, uid) = tx.insert(NewTransfer {
                pending_id: Some(hold.id),
                ..hold.transfer(
                    "void",
                    format!("void:{idempotency_key}"),
                    hold.amount,
                    now_ms(),
                )
            })?;
            tx.apply(hold.debit, hold.credit, -hold.amount, 0)?;
            Ok(Void {
                hold_id: hold.uid,
                transfer_id: uid,
                released: money(hold.amount, &hold.currency),
            })
        })
    }

    pub(super) fn replace_open_hold(
        &self,
        old_hold_id: &str,
        new_amount: &Money,
        idempotency_key: &str,
    ) -> Result<Hold, LedgerError> {
        let rounded = to_units(new_amount.amount, Rounding::Hold)
            .map_err(|e| invalid("amount", e.to_string()))?;
        let cur = &new_amount.currency;
        let fingerprint = format!("{old_hold_id}\n{cur}\n{}", new_amount.amount.normalize());
        self.write("replace_hold", idempotency_key, &fingerprint, |tx| {
            let at = now_ms();
            let old = tx.hold(old_hold_id)?;
            if old.state != HoldState::Open {
                return Err(LedgerError::HoldAlreadyResolved {
                    hold_id: old.uid,
                    state: old.state.to_string(),
                });
            }
            if &old.currency != cur {
                return Err(invalid(
                    "amount",
                    format!(
                        "hold {old_hold_id} is in {}, the new amount in {cur}",
                        old.currency
                    ),
                ));
            }
            // What the tenant could hold once the old hold is released.
            let available = tx
                .sums(old.debit)?
                .available()
                .and_then(|a| a.checked_add(old.amount))
                .ok_or_else(|| corrupt(tx.path, format!("balance of {} overflows", old.tenant)))?;
            if rounded.units > available {
                return Err(LedgerError::InsufficientCredits {
                    need: money(rounded.units, cur),
                    available: money(available, cur),
                });
            }
            tx.insert(NewTransfer {
                pending_id: Some(old.id),
                ..old.transfer(
                    "void",
                    format!("replace:{idempotency_key}#void"),
                    old.amount,
                    at,
                )
            })?;
            let (_, uid) = tx.insert(NewTransfer {
                exact: Some(new_amount.amount),
                ..old.transfer(
                    "hold",
                    format!("replace:{idempotency_key}#hold"),
                    rounded.units,
                    at,
                )
            })?;
            tx.apply(old.debit, old.credit, rounded.units - old.amount, 0)?;
            tracing::debug!(
                tenant = %old.tenant, sandbox_id = %old.sandbox_id, extension = %old.extension,
                old_hold = %old.uid, hold = %uid, amount = %money(rounded.units, cur),
                "hold replaced"
            );
            Ok(Hold {
                id: uid,
                tenant: old.tenant.clone(),
                sandbox_id: old.sandbox_id.clone(),
                extension: old.extension.clone(),
                amount: money(rounded.units, cur),
                exact: new_amount.amount,
                state: HoldState::Open,
                at: parse_time(tx.path, at)?,
            })
        })
    }
}
