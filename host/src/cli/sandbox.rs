//! `sandboxer sandbox create|status|list|destroy` (and `exec|cp|ls`, in `session.rs`):
//! sandbox lifecycles on the local state,
//! through the same [`App`] use cases the HTTP API calls.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{money, print_json, table};
use super::spec::SpecArgs;
use crate::app::{App, AppError};
use crate::domain::{SandboxState, SandboxStatus, Scope, TenantId};

/// `sandboxer sandbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox from a profile: route it, hold its estimate on the tenant's
    /// credits, start it on the chosen extension (failing over on retryable errors).
    Create(CreateArgs),
    /// Show one sandbox: where it runs, what is held, its attempts, and its meter once
    /// destroyed.
    Status {
        /// Sandbox id (`sb-…`).
        id: String,
    },
    /// List sandboxes, newest first.
    List {
        /// Only this tenant's.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<TenantId>,
        /// Only in this state: creating, running, destroying, destroyed or failed.
        #[arg(long)]
        state: Option<SandboxState>,
        /// Show at most N sandboxes, the newest (default: all).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Run a command in a running sandbox, its output streamed here; exits with the
    /// command's exit code (124 timed out, 137 killed, 127 could not run).
    /// `sandboxer sandbox exec sb-… -- python3 -c 'print(6*7)'`
    Exec(super::session::ExecArgs),
    /// Copy a file into a running sandbox or out of it: `cp data.csv sb-…:in/data.csv`,
    /// `cp sb-…:out/result.json .`
    Cp(super::session::CpArgs),
    /// List a folder of a running sandbox: `ls sb-…` (its workspace), `ls sb-…:out`.
    Ls(super::session::LsArgs),
    /// Destroy a sandbox, meter its usage, settle its credits and emit the meter event.
    /// Destroying it again shows the same settlement and charges nothing.
    Destroy {
        /// Sandbox id (`sb-…`).
        id: String,
        /// Refuse unless the sandbox belongs to this tenant.
        #[arg(long, value_parser = parse_tenant)]
        tenant: Option<TenantId>,
    },
}

/// Arguments of `sandboxer sandbox create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Tenant whose credits pay for it.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: TenantId,
    /// Repeat-safe key: the same key and request returns the same sandbox, charged once
    /// (the same key space as the HTTP API's `Idempotency-Key` for this tenant).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

pub(super) fn parse_tenant(s: &str) -> Result<TenantId, String> {
    TenantId::parse(s).map_err(|e| e.to_string())
}

fn scope(tenant: Option<TenantId>) -> Scope {
    tenant.map_or(Scope::Operator, Scope::Tenant)
}

/// Runs a `sandboxer sandbox` subcommand.
pub fn run(cmd: SandboxCommand, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        SandboxCommand::Exec(a) => return super::session::exec(a, app, json),
        SandboxCommand::Cp(a) => return super::session::cp(a, app, json),
        SandboxCommand::Ls(a) => return super::session::ls(a, app, json),
        SandboxCommand::Create(a) => app
            .create_sandbox(&a.tenant, &a.spec.spec(), a.idempotency_key.as_deref())
            .map(|st| Shown::One(Box::new(st))),
        SandboxCommand::Status { id } => app
            .sandbox(&Scope::Operator, &id)
            .map(|st| Shown::One(Box::new(st))),
        SandboxCommand::Destroy { id, tenant } => app
            .destroy_sandbox(&scope(tenant), &id)
            .map(|st| Shown::One(Box::new(st))),
        SandboxCommand::List {
            tenant,
            state,
            limit,
        } => {
            let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            app.all_sandboxes(&scope(tenant), state, limit)
                .map(|(l, more)| Shown::Many(l, more))
        }
    };
    // Whatever happened, hand settled meter events to the sinks before exiting.
    app.deliver_before_exit();
    match result {
        Ok(Shown::One(st)) => {
            if json {
                print_json(&st)?;
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
        Ok(Shown::Many(list, more)) => {
            if json {
                print_json(&list)?;
            } else {
                print_list(&list);
                if more {
                    println!("More sandboxes follow; raise --limit to see them.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(AppError::CreateFailed { status, message }) => {
            if json {
                print_json(&status)?;
            } else {
                print_status(&status);
            }
            Err(anyhow::anyhow!(AppError::CreateFailed { status, message }))
        }
        Err(e) => Err(e.into()),
    }
}

enum Shown {
    One(Box<SandboxStatus>),
    /// A list, and whether more rows follow it.
    Many(Vec<SandboxStatus>, bool),
}

fn print_status(st: &SandboxStatus) {
    let mut t = table(["sandbox", st.id.as_str()]);
    t.add_row(["state", st.state.as_str()]);
    t.add_row(["tenant", st.tenant.as_str()]);
    t.add_row(["profile", st.profile.as_str()]);
    t.add_row(["extension", st.extension_id.as_deref().unwrap_or("-")]);
    if let Some(v) = &st.extension_version {
        t.add_row(["extension version", &v[..v.len().min(16)]]);
    }
    if let Some(h) = &st.handle {
        t.add_row([
            "handle",
            if h.is_empty() {
                "(recovered without one)"
            } else {
                h
            },
        ]);
    }
    let r = &st.request.resources;
    t.add_row([
        "resources".to_owned(),
        format!(
            "{} vCPU, {} MiB, at most {} s",
            r.vcpus, r.memory_mib, st.request.max_duration_secs
        ),
    ]);
    t.add_row([
        "created".to_owned(),
        st.created_at
            .format("%Y-%m-%d %H:%M:%S%.3f UTC")
            .to_string(),
    ]);
    if let Some(e) = &st.estimate {
        t.add_row(["estimate".to_owned(), money(&e.total)]);
    }
    if let (Some(h), Some(id)) = (&st.held, &st.hold_id) {
        let resolved = if st.state == SandboxState::Destroyed {
            " (settled)"
        } else {
            ""
        };
        t.add_row([
            "held".to_owned(),
            format!("{} (hold {id}){resolved}", money(h)),
        ]);
    }
    for (i, a) in st.attempts.iter().enumerate() {
        let outcome = match &a.error {
            None => "created".to_owned(),
            Some(e) => format!(
                "failed{}: {e}",
                if a.retryable { " (retryable)" } else { "" }
            ),
        };
        let latency = a
            .latency_ms
            .map(|ms| format!(", {ms} ms"))
            .unwrap_or_default();
        t.add_row([
            format!("attempt {}", i + 1),
            format!("{}: {outcome}{latency}", a.extension_id),
        ]);
    }
    if let Some(m) = &st.meter {
        t.add_row(["duration".to_owned(), format!("{} ms", m.usage.duration_ms)]);
        for u in &m.usage.measures {
            t.add_row([
                format!("usage {}", u.name),
                format!("{} {}", u.quantity.normalize(), u.unit),
            ]);
        }
        for li in &m.line_items {
            t.add_row([
                format!("line {}", li.description),
                format!(
                    "{} {} × {} = {}",
                    li.quantity.normalize(),
                    li.unit,
                    li.unit_price.normalize(),
                    li.amount.normalize()
                ),
            ]);
        }
        t.add_row([
            "meter (exact)".to_owned(),
            format!("{} {}", m.exact.normalize(), m.total.currency),
        ]);
        t.add_row(["charged".to_owned(), money(&m.total)]);
        t.add_row(["released".to_owned(), money(&m.released)]);
        if !m.written_off.amount.is_zero() {
            t.add_row(["written off".to_owned(), money(&m.written_off)]);
        }
        if !m.debt.amount.is_zero() {
            t.add_row(["debt".to_owned(), money(&m.debt)]);
        }
        t.add_row(["settlement", m.settlement_id.as_str()]);
        t.add_row(["meter event", m.event_id.as_str()]);
    }
    if let Some(e) = &st.error {
        t.add_row(["error", e.as_str()]);
    }
    println!("{t}");
}

fn print_list(list: &[SandboxStatus]) {
    if list.is_empty() {
        println!("no sandboxes");
        return;
    }
    // Narrow enough for 100 columns without wrapping an id; `status ID` has the rest.
    let mut t = table([
        "id",
        "tenant",
        "extension",
        "state",
        "created (UTC)",
        "credits",
    ]);
    for st in list {
        let credits = match (&st.meter, &st.held) {
            (Some(m), _) => format!("charged {}", money(&m.total)),
            (None, Some(h)) if st.state.is_live() => format!("held {}", money(h)),
            _ => "-".into(),
        };
        t.add_row([
            st.id.clone(),
            st.tenant.clone(),
            st.extension_id.clone().unwrap_or_else(|| "-".into()),
            st.state.to_string(),
            st.created_at.format("%m-%d %H:%M:%S").to_string(),
            credits,
        ]);
    }
    // Ids are copied into the next command: never wrap them.
    if let Some(c) = t.column_mut(0) {
        c.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
    }
    println!("{t}");
}
