//! `sandboxer credits`: show, add and verify tenants' prepaid credits, and page through a
//! tenant's statement, on the ledger in the state folder. Reading commands never create a
//! ledger and load no extension.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;

use super::output::{print_json, signed, table};
use crate::app::{App, Balances, GrantRequest, MAX_LIMIT, PageRequest};
use crate::domain::money::{LedgerAmount, parse_amount};
use crate::domain::{Balance, Currency, Entry, Money, TenantId, display_decimal};

/// `sandboxer credits` subcommands.
#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Show balances (posted, held, available) of one tenant, or of every tenant.
    Show {
        /// The tenant; all tenants when omitted.
        #[arg(value_parser = parse_tenant)]
        tenant: Option<TenantId>,
        /// Also list the tenant's statement (every grant, hold, charge and release),
        /// oldest first.
        #[arg(long, requires = "tenant")]
        entries: bool,
        /// Show at most N statement lines, the oldest (default: all).
        #[arg(long, value_name = "N", requires = "entries",
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// One page of a tenant's statement, oldest first, as `GET /v1/credits/entries`
    /// answers it: pass the answer's `next` as `--after` for the page after it.
    #[command(
        after_help = "Examples:\n  sandboxer credits statement acme --limit 20\n  sandboxer credits statement acme --json --after 65310a3c…"
    )]
    Statement {
        /// The tenant.
        #[arg(value_parser = parse_tenant)]
        tenant: TenantId,
        /// Lines per page, 1 to 1000.
        #[arg(long, value_name = "N", default_value_t = crate::app::DEFAULT_LIMIT as u64,
              value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
        limit: u64,
        /// The `next` of the previous page.
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
    },
    /// Add prepaid credits to a tenant (its account is created on first use).
    Add {
        /// The tenant: lowercase letters, digits, '-' and '_'.
        #[arg(value_parser = parse_tenant)]
        tenant: TenantId,
        /// Amount in currency units, e.g. 100 or 12.50 (at most 9 decimal places).
        #[arg(allow_hyphen_values = true, value_parser = parse_amount_arg)]
        amount: LedgerAmount,
        /// Free text recorded with the grant.
        #[arg(long, default_value = "")]
        note: String,
        /// Makes a retried command apply once (a fresh key is generated when omitted).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Currency code.
        #[arg(long, default_value = "USD", value_parser = parse_currency)]
        currency: Currency,
    },
    /// Re-derive every balance from the transfers and check the ledger's invariants.
    Verify,
}

fn parse_tenant(s: &str) -> Result<TenantId, String> {
    TenantId::parse(s).map_err(|e| e.to_string())
}

fn parse_amount_arg(s: &str) -> Result<LedgerAmount, String> {
    parse_amount(s).map_err(|e| e.to_string())
}

fn parse_currency(s: &str) -> Result<Currency, String> {
    Currency::new(s).map_err(|e| e.to_string())
}

/// Runs a `sandboxer credits` subcommand.
pub fn run(cmd: CreditsCommand, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CreditsCommand::Show {
            tenant: None,
            entries: _,
            limit: _,
        } => show_all(app, json),
        CreditsCommand::Show {
            tenant: Some(tenant),
            entries,
            limit,
        } => {
            let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            show(app, &tenant, entries.then_some(limit), json)
        }
        CreditsCommand::Statement {
            tenant,
            limit,
            after,
        } => statement(app, &tenant, limit, after, json),
        CreditsCommand::Add {
            tenant,
            amount,
            note,
            idempotency_key,
            currency,
        } => add(
            app,
            &tenant,
            GrantRequest {
                amount: Money {
                    amount: amount.exact,
                    currency,
                },
                note,
                idempotency_key,
            },
            json,
        ),
        CreditsCommand::Verify => verify(app, json),
    }
}

/// Every tenant's balances, as `credits show --json` prints them.
#[derive(Serialize)]
struct AllBalances {
    balances: Vec<Balance>,
}

fn show_all(app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let balances = app.all_balances()?;
    if json {
        print_json(&AllBalances { balances })?;
    } else if balances.is_empty() {
        println!(
            "No tenants have credits yet (add some with `sandboxer credits add TENANT AMOUNT`)."
        );
    } else {
        println!("{}", balances_table(&balances));
    }
    Ok(ExitCode::SUCCESS)
}

/// A tenant's balances with its statement, as `credits show T --entries --json` prints it.
#[derive(Serialize)]
struct WithEntries {
    #[serde(flatten)]
    balances: Balances,
    entries: Vec<Entry>,
}

/// One tenant: its balances, and with `entries` (`Some(limit)`) its statement.
fn show(
    app: &App,
    tenant: &TenantId,
    entries: Option<Option<usize>>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let balances = app.balances(tenant)?;
    if balances.balances.is_empty() {
        // For an operator typing a tenant, nothing on record is most likely a typo.
        bail!(
            "unknown tenant {:?}: no credits were ever added for it (add credits with `sandboxer credits add {tenant} AMOUNT`)",
            tenant.as_str()
        );
    }
    let lines = match entries {
        Some(limit) => Some(app.statement_lines(tenant, limit)?),
        None => None,
    };
    if json {
        match lines {
            Some((entries, _)) => print_json(&WithEntries { balances, entries })?,
            None => print_json(&balances)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", balances_table(&balances.balances));
    if let Some((entries, more)) = lines {
        println!("{}", entries_table(&entries));
        if more {
            println!("More lines follow; raise --limit to see them.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn statement(
    app: &App,
    tenant: &TenantId,
    limit: u64,
    after: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let page = PageRequest {
        limit: usize::try_from(limit).unwrap_or(MAX_LIMIT),
        after,
    };
    let statement = app.statement(tenant, &page)?;
    if json {
        print_json(&statement)?;
        return Ok(ExitCode::SUCCESS);
    }
    if statement.entries.is_empty() {
        println!("No statement lines for {tenant}.");
    } else {
        println!("{}", entries_table(&statement.entries));
    }
    if let Some(next) = &statement.next {
        println!("More lines follow: --after {next}");
    }
    Ok(ExitCode::SUCCESS)
}

fn entries_table(entries: &[Entry]) -> comfy_table::Table {
    // Transfer ids are in `--json`; without them the statement fits 100 columns.
    let mut t = table([
        "time (UTC)",
        "kind",
        "posted",
        "held",
        "exact",
        "sandbox",
        "note",
    ]);
    for e in entries {
        t.add_row([
            e.at.format("%m-%d %H:%M:%S").to_string(),
            e.kind.to_string(),
            signed(e.posted_delta),
            signed(e.held_delta),
            e.exact
                .map(|d| d.normalize().to_string())
                .unwrap_or_default(),
            e.sandbox_id.clone().unwrap_or_default(),
            e.note.clone().unwrap_or_default(),
        ]);
    }
    // Times, amounts and sandbox ids (copied into the next command) are never wrapped;
    // the note column takes what width is left.
    for i in 0..6 {
        if let Some(c) = t.column_mut(i) {
            c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
    t
}

fn balances_table(balances: &[Balance]) -> comfy_table::Table {
    let mut t = table(["tenant", "currency", "posted", "held", "available"]);
    for b in balances {
        t.add_row([
            b.tenant.clone(),
            b.currency.to_string(),
            display_decimal(b.posted),
            display_decimal(b.held),
            display_decimal(b.available),
        ]);
    }
    t
}

fn add(
    app: &App,
    tenant: &TenantId,
    request: GrantRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let granted = app.grant_credits(tenant, &request)?;
    if json {
        print_json(&granted)?;
    } else {
        println!(
            "Added {} to {tenant} (transfer {}).",
            granted.grant.amount, granted.grant.transfer_id
        );
        println!("{}", balances_table(&[granted.balance]));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let report = app.verify_ledger()?;
    if json {
        print_json(&report)?;
    } else {
        let mut t = table(["check", "result"]);
        t.add_row(["ledger".to_owned(), app.database()]);
        t.add_row(["accounts".to_owned(), report.accounts.to_string()]);
        t.add_row(["transfers".to_owned(), report.transfers.to_string()]);
        t.add_row(["open holds".to_owned(), report.open_holds.to_string()]);
        t.add_row([
            "balances = fold(transfers), sum over accounts = 0".to_owned(),
            if report.ok {
                "ok".to_owned()
            } else {
                format!("{} problem(s)", report.problems.len())
            },
        ]);
        println!("{t}");
        for p in &report.problems {
            println!("problem: {p}");
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
