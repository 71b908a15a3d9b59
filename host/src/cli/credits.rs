//! `sandboxer credits`: show, add and verify tenants' prepaid credits on the ledger in
//! the state folder (`<state>/ledger.sqlite3`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

use crate::cli::output::{print_json, table};
use crate::config::Settings;
use crate::money::{Currency, Money};
use crate::payments::money::{display_decimal, parse_amount};
use crate::payments::{Balance, CreditsStore, Entry, SqliteCreditsStore, validate_tenant};

/// `sandboxer credits` subcommands.
#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Show balances (posted, held, available) of one tenant, or of every tenant.
    Show {
        /// The tenant; all tenants when omitted.
        tenant: Option<String>,
        /// Also list the tenant's statement (every grant, hold, charge and release),
        /// oldest first.
        #[arg(long, requires = "tenant")]
        entries: bool,
        /// Show at most N statement lines, the oldest (default: all).
        #[arg(long, value_name = "N", requires = "entries",
              value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Add prepaid credits to a tenant (its account is created on first use).
    Add {
        /// The tenant: lowercase letters, digits, '-' and '_'.
        tenant: String,
        /// Amount in currency units, e.g. 100 or 12.50 (at most 9 decimal places).
        #[arg(allow_hyphen_values = true)]
        amount: String,
        /// Free text recorded with the grant.
        #[arg(long, default_value = "")]
        note: String,
        /// Makes a retried command apply once (a fresh key is generated when omitted).
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Currency code.
        #[arg(long, default_value = "USD")]
        currency: String,
    },
    /// Re-derive every balance from the transfers and check the ledger's invariants.
    Verify,
}

/// Runs a `sandboxer credits` subcommand.
pub fn run(cmd: CreditsCommand, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        CreditsCommand::Show {
            tenant,
            entries,
            limit,
        } => {
            let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            show(settings, tenant.as_deref(), entries, limit, json)
        }
        CreditsCommand::Add {
            tenant,
            amount,
            note,
            idempotency_key,
            currency,
        } => add(
            settings,
            &tenant,
            &amount,
            &note,
            idempotency_key,
            &currency,
            json,
        ),
        CreditsCommand::Verify => verify(settings, json),
    }
}

/// Opens the ledger only if it exists: reading commands never create one.
fn open_existing(settings: &Settings) -> anyhow::Result<Option<SqliteCreditsStore>> {
    let path = settings.ledger_path();
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(SqliteCreditsStore::open(&path)?))
}

#[derive(Serialize)]
struct ShowOutput {
    balances: Vec<Balance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<Entry>>,
}

fn show(
    settings: &Settings,
    tenant: Option<&str>,
    with_entries: bool,
    limit: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(t) = tenant {
        validate_tenant(t)?;
    }
    let store = open_existing(settings)?;
    let (balances, entries) = match (&store, tenant) {
        (Some(store), _) => {
            let balances = store.balances(tenant)?;
            let entries = match tenant {
                Some(t) if with_entries => Some(statement(store, t, limit)?),
                _ => None,
            };
            (balances, entries)
        }
        (None, Some(t)) => {
            bail!(
                "unknown tenant {t:?}: there is no ledger yet at {} (add credits with `sandboxer credits add {t} AMOUNT`)",
                settings.ledger_path().display()
            )
        }
        (None, None) => (Vec::new(), None),
    };
    if json {
        let entries = entries.map(|(e, _)| e);
        print_json(&ShowOutput { balances, entries })?;
        return Ok(ExitCode::SUCCESS);
    }
    if balances.is_empty() {
        println!(
            "No tenants have credits yet (add some with `sandboxer credits add TENANT AMOUNT`)."
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", balances_table(&balances));
    if let Some((entries, more)) = entries {
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
        for e in &entries {
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
        println!("{t}");
        if more {
            println!("More lines follow; raise --limit to see them.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Lines read from the ledger per page: the statement is read in bounded pages, never
/// in one unbounded query.
const PAGE: usize = 1000;

/// The tenant's statement, oldest first, at most `limit` lines (all without), and
/// whether more lines follow.
fn statement(
    store: &SqliteCreditsStore,
    tenant: &str,
    limit: Option<usize>,
) -> anyhow::Result<(Vec<Entry>, bool)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let want = limit.map_or(PAGE, |l| (l - out.len()).min(PAGE));
        let page = store.statement_page(tenant, after.as_deref(), want)?;
        out.extend(page.entries);
        match page.next {
            Some(n) if limit.is_none_or(|l| out.len() < l) => after = Some(n),
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

fn signed(d: rust_decimal::Decimal) -> String {
    if d.is_zero() {
        String::new()
    } else if d.is_sign_positive() {
        format!("+{}", display_decimal(d))
    } else {
        display_decimal(d)
    }
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

#[derive(Serialize)]
struct AddOutput {
    grant: crate::payments::Grant,
    balance: Balance,
}

fn add(
    settings: &Settings,
    tenant: &str,
    amount: &str,
    note: &str,
    key: Option<String>,
    currency: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Every argument is checked before the ledger is touched: bad input changes nothing.
    validate_tenant(tenant)?;
    let amount = parse_amount(amount).context("invalid AMOUNT")?;
    let currency = Currency::new(currency).context("invalid --currency")?;
    let key = key.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
    let state = &settings.state_dir;
    std::fs::create_dir_all(state)
        .with_context(|| format!("cannot create the state folder {}", state.display()))?;
    let store = SqliteCreditsStore::open(settings.ledger_path())?;
    let grant = store.grant(
        tenant,
        &Money {
            amount: amount.exact,
            currency: currency.clone(),
        },
        note,
        &key,
    )?;
    let balance = store.balance(tenant, &currency)?;
    if json {
        print_json(&AddOutput { grant, balance })?;
    } else {
        println!(
            "Added {} to {tenant} (transfer {}).",
            grant.amount, grant.transfer_id
        );
        println!("{}", balances_table(&[balance]));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    let Some(store) = open_existing(settings)? else {
        bail!(
            "there is no ledger at {} to verify",
            settings.ledger_path().display()
        );
    };
    let report = store.verify()?;
    if json {
        print_json(&report)?;
    } else {
        let mut t = table(["check", "result"]);
        t.add_row([
            "ledger".to_owned(),
            settings.ledger_path().display().to_string(),
        ]);
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
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
