//! `verify`: re-derives every account's sums from the transfers and checks the ledger's
//! invariants (sums agree, every currency sums to zero, no negative available credits
//! without debt, every resolution matches its hold).

use std::collections::HashMap;

use super::rows::MAX_ACCOUNT_UNITS;
use super::{At, SqliteCreditsStore};
use crate::payments::{LedgerError, VerifyReport};
use crate::storage::sqlite::cached::CachedStatements;

impl SqliteCreditsStore {
    pub(super) fn run_verify(&self) -> Result<VerifyReport, LedgerError> {
        self.read(|tx, path| {
            let mut problems = Vec::new();
            let check: String = tx.row_cached("PRAGMA quick_check", [], |r| r.get(0)).at(path)?;
            if check != "ok" {
                problems.push(format!("SQLite quick_check: {check}"));
            }
            // Fold every transfer into per-account sums, in i128 so the check cannot overflow.
            #[derive(Default, Clone, Copy, PartialEq, Debug)]
            struct Fold {
                dpend: i128,
                dpost: i128,
                cpend: i128,
                cpost: i128,
                debt: bool,
            }
            let mut folds: HashMap<i64, Fold> = HashMap::new();
            type Raw = (String, String, i64, i64, i64, Option<String>, Option<i64>, Option<i64>, Option<i64>);
            let mut stmt = tx
                .prepare(
                    "SELECT t.uid, t.kind, t.debit_account, t.credit_account, t.amount, p.kind, p.amount, \
                     p.debit_account, p.credit_account \
                     FROM transfers t LEFT JOIN transfers p ON p.id = t.pending_id ORDER BY t.id",
                )
                .at(path)?;
            let rows: Vec<Raw> = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
                })
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let transfers = rows.len() as u64;
            for (uid, kind, d, c, amount, pkind, pamount, pd, pc) in rows {
                let a = i128::from(amount);
                let (mut pend, mut post) = (0i128, 0i128);
                match kind.as_str() {
                    "hold" => pend = a,
                    "post" | "void" => {
                        let (Some("hold"), Some(held), Some(pd), Some(pc)) = (pkind.as_deref(), pamount, pd, pc) else {
                            problems.push(format!("transfer {uid} ({kind}) does not resolve a hold"));
                            continue;
                        };
                        if (pd, pc) != (d, c) {
                            problems.push(format!("transfer {uid} ({kind}) moves between other accounts than its hold"));
                        }
                        if kind == "void" && amount != held {
                            problems.push(format!("void {uid} releases {amount} units of a {held}-unit hold"));
                        }
                        if kind == "post" && amount > held {
                            problems.push(format!("post {uid} posts {amount} units of a {held}-unit hold"));
                        }
                        pend = -i128::from(held);
                        if kind == "post" {
                            post = a;
                        }
                    }
                    "grant" | "overdraft" | "debt" | "write_off" => post = a,
                    other => problems.push(format!("transfer {uid} has unknown kind {other:?}")),
                }
                let df = folds.entry(d).or_default();
                df.dpend += pend;
                df.dpost += post;
                df.debt |= kind == "debt";
                let cf = folds.entry(c).or_default();
                cf.cpend += pend;
                cf.cpost += post;
            }
            let mut stmt = tx
                .prepare(
                    "SELECT id, kind, name, currency, debits_pending, debits_posted, credits_pending, credits_posted FROM accounts",
                )
                .at(path)?;
            type Acc = (i64, String, String, String, i64, i64, i64, i64);
            let accounts: Vec<Acc> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)))
                .at(path)?
                .collect::<rusqlite::Result<_>>()
                .at(path)?;
            let mut totals: HashMap<String, [i128; 4]> = HashMap::new();
            let mut warnings = Vec::new();
            for (id, kind, name, cur, dpend, dpost, cpend, cpost) in &accounts {
                let f = folds.get(id).copied().unwrap_or_default();
                let cached = [*dpend, *dpost, *cpend, *cpost].map(i128::from);
                let derived = [f.dpend, f.dpost, f.cpend, f.cpost];
                if cached != derived {
                    problems.push(format!(
                        "{kind} account {name} ({cur}): stored sums {cached:?} differ from the transfers' {derived:?} \
                         (debits pending, debits posted, credits pending, credits posted)"
                    ));
                }
                let highest = cached.iter().copied().max().unwrap_or(0);
                if highest > i128::from(MAX_ACCOUNT_UNITS / 2) {
                    warnings.push(format!(
                        "{kind} account {name} ({cur}) is at {highest} units, past half its limit of {MAX_ACCOUNT_UNITS}; \
                         writes that would pass the limit are refused (docs/payments.md, \"Account limits\")"
                    ));
                }
                let t = totals.entry(cur.clone()).or_default();
                for (slot, v) in t.iter_mut().zip(derived) {
                    *slot += v;
                }
                if kind == "tenant" {
                    let available = f.cpost - f.dpost - f.dpend;
                    if available < 0 && !f.debt {
                        problems.push(format!("tenant {name} ({cur}) has negative available credits without debt"));
                    }
                }
                if f.dpend < 0 || f.cpend < 0 {
                    problems.push(format!("{kind} account {name} ({cur}) has negative pending sums"));
                }
            }
            for (cur, [dpend, dpost, cpend, cpost]) in totals {
                if dpost != cpost {
                    problems.push(format!("{cur}: posted debits {dpost} ≠ posted credits {cpost} (sum over accounts is not zero)"));
                }
                if dpend != cpend {
                    problems.push(format!("{cur}: pending debits {dpend} ≠ pending credits {cpend}"));
                }
            }
            let open_holds: i64 = tx
                .row_cached(
                    "SELECT COUNT(*) FROM transfers t WHERE t.kind = 'hold' AND NOT EXISTS (SELECT 1 FROM transfers r WHERE r.pending_id = t.id)",
                    [],
                    |r| r.get(0),
                )
                .at(path)?;
            Ok(VerifyReport {
                ok: problems.is_empty(),
                accounts: accounts.len() as u64,
                transfers,
                open_holds: u64::try_from(open_holds).unwrap_or(0),
                problems,
                warnings,
            })
        })
    }
}
