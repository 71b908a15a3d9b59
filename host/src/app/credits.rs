//! Credits use cases: balances, the statement, grants and the ledger's self-check. They
//! open the ledger only (no runtime, no extension); reading ones never create it.
//!
//! One idempotency rule for grants on both surfaces: a caller's key is scoped to the
//! tenant it grants to (stored as `grant:<tenant>:<key>`; a tenant id has no `:`), and a
//! grant without a key gets a fresh one (so repeating the command grants again).

use serde::Serialize;

use super::paging::{self, PageRequest};
use super::{App, AppError};
use crate::domain::{Balance, Currency, Entry, Grant, Money, Scope, TenantId, VerifyReport};
use crate::payments::LedgerError;

/// A tenant's balances, one per currency (none before credits were added).
/// `GET /v1/credits`, `sandboxer credits show TENANT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Balances {
    /// The tenant.
    pub tenant: TenantId,
    /// posted, held and available per currency.
    pub balances: Vec<Balance>,
}

/// One page of a tenant's statement, oldest first, and the cursor of the next page.
/// `GET /v1/credits/entries`, `sandboxer credits statement TENANT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Statement {
    /// The tenant.
    pub tenant: TenantId,
    /// The lines: grants, holds, charges, voids, overdrafts, debts.
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page (`None`: the last).
    pub next: Option<String>,
}

/// Credits to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// The exact amount (at most 9 decimal places, more than zero) and its currency.
    pub amount: Money,
    /// Recorded with the grant.
    pub note: String,
    /// Makes a retried grant apply once (scoped to the tenant).
    pub idempotency_key: Option<String>,
}

/// A grant's receipt: the transfer, and the tenant's balance in that currency after it.
/// `POST /v1/tenants/{tenant}/credits`, `sandboxer credits add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Granted {
    /// The grant.
    #[serde(flatten)]
    pub grant: Grant,
    /// The balance after it.
    pub balance: Balance,
}

impl App {
    /// The tenant's balances; empty when it has no credits (or no ledger exists yet).
    pub fn balances(&self, tenant: &TenantId) -> Result<Balances, AppError> {
        let balances = match self.ledger(false)? {
            None => Vec::new(),
            Some(ledger) => match ledger.balances(Some(tenant.as_str())) {
                Ok(b) => b,
                Err(LedgerError::UnknownTenant(_)) => Vec::new(),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Balances {
            tenant: tenant.clone(),
            balances,
        })
    }

    /// Every tenant's balances (the operator's view).
    pub fn all_balances(&self) -> Result<Vec<Balance>, AppError> {
        match self.ledger(false)? {
            None => Ok(Vec::new()),
            Some(ledger) => Ok(ledger.balances(None)?),
        }
    }

    /// One page of the tenant's statement, oldest first.
    pub fn statement(&self, tenant: &TenantId, page: &PageRequest) -> Result<Statement, AppError> {
        let scope = Scope::Tenant(tenant.clone());
        let after = match &page.after {
            None => None,
            Some(c) => Some(paging::entries_after(&scope, c)?),
        };
        let (entries, next) = self.statement_page(tenant, after.as_deref(), page.limit)?;
        Ok(Statement {
            tenant: tenant.clone(),
            entries,
            next: next.map(|t| paging::entries_cursor(&scope, &t)),
        })
    }

    /// The tenant's statement lines (at most `limit`), oldest first, read page by page;
    /// and whether more follow.
    pub fn statement_lines(
        &self,
        tenant: &TenantId,
        limit: Option<usize>,
    ) -> Result<(Vec<Entry>, bool), AppError> {
        paging::collect(limit, |after: Option<&String>, n| {
            self.statement_page(tenant, after.map(String::as_str), n)
        })
    }

    fn statement_page(
        &self,
        tenant: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<String>), AppError> {
        let Some(ledger) = self.ledger(false)? else {
            return match after {
                None => Ok((Vec::new(), None)),
                Some(_) => Err(not_a_line()),
            };
        };
        match ledger.statement_page(tenant.as_str(), after, limit) {
            Ok(p) => Ok((p.entries, p.next)),
            // No account yet: nothing to list, and no transfer a cursor could name.
            Err(LedgerError::UnknownTenant(_)) if after.is_none() => Ok((Vec::new(), None)),
            Err(LedgerError::UnknownTenant(_)) => Err(not_a_line()),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds credits to `tenant` (its account is created on first use). Every argument
    /// was checked before the ledger is touched: bad input changes nothing.
    pub fn grant_credits(
        &self,
        tenant: &TenantId,
        request: &GrantRequest,
    ) -> Result<Granted, AppError> {
        let key = match &request.idempotency_key {
            Some(k) => format!("grant:{tenant}:{k}"),
            None => format!("grant-{}", uuid::Uuid::now_v7()),
        };
        let ledger = self.ledger_for_writes()?;
        let grant = ledger.grant(tenant.as_str(), &request.amount, &request.note, &key)?;
        tracing::info!(tenant = %tenant, amount = %grant.amount, "credits added");
        let balance = ledger.balance(tenant.as_str(), &request.amount.currency)?;
        Ok(Granted { grant, balance })
    }

    /// The tenant's balance in one currency (zero when it has none).
    pub fn balance(&self, tenant: &TenantId, currency: &Currency) -> Result<Balance, AppError> {
        let all = self.balances(tenant)?;
        Ok(all
            .balances
            .into_iter()
            .find(|b| &b.currency == currency)
            .unwrap_or_else(|| Balance {
                tenant: tenant.to_string(),
                currency: currency.clone(),
                posted: rust_decimal::Decimal::ZERO,
                held: rust_decimal::Decimal::ZERO,
                available: rust_decimal::Decimal::ZERO,
            }))
    }

    /// Re-derives every balance from the transfers and checks the ledger's invariants.
    pub fn verify_ledger(&self) -> Result<VerifyReport, AppError> {
        match self.ledger(false)? {
            None => Err(AppError::NoLedger {
                path: self.settings().ledger_path(),
            }),
            Some(ledger) => Ok(ledger.verify()?),
        }
    }
}

fn not_a_line() -> AppError {
    AppError::invalid(
        "after",
        "invalid query parameter after: not a line of this statement",
    )
}
