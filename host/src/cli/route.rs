//! `sandboxer route explain`: how a profile would be routed right now, candidate by
//! candidate. The same use case as `POST /v1/route/explain` (and the very code a create
//! routes with); creates and holds nothing.

use clap::{Args, Subcommand};
use std::process::ExitCode;

use super::output::{print_json, table};
use super::sandbox::parse_tenant;
use super::spec::SpecArgs;
use crate::app::{App, Explanation, ExtensionStatus};
use crate::domain::{CandidateReport, LatencySource, Outcome, Scope, Strategy, TenantId};

/// `sandboxer route` subcommands.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Show every candidate of a profile's route for a request: its estimate, cost per
    /// hour, latency, health, capacity, and why it was chosen, ordered or dropped.
    /// Nothing is created and no credits are held.
    Explain(ExplainArgs),
}

/// Arguments of `sandboxer route explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Tenant the request is made for.
    #[arg(long, default_value = "explain", value_parser = parse_tenant)]
    pub tenant: TenantId,
    /// The OpenBao holding operator secrets and tenants' keys, to show whose key each
    /// candidate would use (`--openbao-address`, or BAO_ADDR; token from BAO_TOKEN).
    #[command(flatten)]
    pub openbao: super::keys::OpenBaoArgs,
}

/// Runs a `sandboxer route` subcommand.
pub fn run(cmd: RouteCommand, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        RouteCommand::Explain(args) => explain(args, app, json),
    }
}

fn explain(args: ExplainArgs, app: &App, json: bool) -> anyhow::Result<ExitCode> {
    let x = app.explain_route(&args.tenant, &args.spec.spec())?;
    let code = if x.routable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    };
    if json {
        print_json(&x)?;
        return Ok(code);
    }
    render_text(app, &x)?;
    Ok(code)
}

fn render_text(app: &App, x: &Explanation) -> anyhow::Result<()> {
    let p = &x.profile;
    let request = &x.request;
    let r = &request.resources;
    println!(
        "Profile {} ({}): {}",
        p.id,
        p.strategy,
        if p.description.is_empty() {
            "-"
        } else {
            &p.description
        }
    );
    println!(
        "Request: {} vCPU, {} MiB, up to {} s, region {}, tenant {}",
        r.vcpus,
        r.memory_mib,
        request.max_duration_secs,
        request.region.as_deref().unwrap_or("any"),
        request.tenant
    );
    println!(
        "Route: fallback {}, max {} attempt(s){}, byok {}",
        if p.fallback { "on" } else { "off" },
        p.max_attempts,
        p.max_cost_per_hour
            .map(|c| format!(", max {} {}/h", c.normalize(), p.currency))
            .unwrap_or_default(),
        x.byok
    );
    let candidates = x.all_candidates();
    println!("{}", render(candidates));
    println!("Order: {}", order_rule(p.strategy));
    for c in candidates {
        match &c.outcome {
            Outcome::Dropped { reason } => println!("  {} dropped: {reason}", c.extension_id),
            Outcome::Ordered {
                rank,
                attempted: false,
            } => println!(
                "  {} ordered #{rank} but not attempted: the route stops after {} attempt(s)",
                c.extension_id, p.max_attempts
            ),
            Outcome::Ordered { .. } => {}
        }
    }
    for w in &x.warnings {
        eprintln!("warning: {w}");
    }
    // The operator's view of the folder: files that did not load.
    let list = app.extensions(&Scope::Operator)?;
    let skipped = list
        .extensions
        .iter()
        .filter(|r| r.status == ExtensionStatus::Skipped);
    for row in skipped {
        eprintln!(
            "warning: extension skipped: {}: {}",
            row.file.as_deref().unwrap_or("?"),
            row.reason.as_deref().unwrap_or_default()
        );
    }
    match (&x.decision, &x.reason) {
        (Some(d), _) => {
            let order: Vec<&str> = d.attempts.iter().map(|a| a.extension_id.as_str()).collect();
            println!(
                "Would try: {}. Nothing was created and no credits were held.",
                order.join(" → ")
            );
        }
        (None, reason) => eprintln!("error: {}", reason.as_deref().unwrap_or("not routable")),
    }
    Ok(())
}

/// The strategy's ordering rule, in words.
fn order_rule(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::PreferSelfHosted => {
            "self-hosted pools with free capacity first (cheapest first), then SaaS by cost; ties by latency, then id"
        }
        Strategy::LowestCost => "estimate ascending; ties by latency, then id",
        Strategy::LowestLatency => {
            "create latency ascending (observed average, else declared); ties by cost, then id"
        }
        Strategy::Explicit => "the explicit target, then the listed fallbacks in the order written",
    }
}

fn render(candidates: &[CandidateReport]) -> comfy_table::Table {
    let mut t = table([
        "#",
        "extension",
        "kind",
        "estimate",
        "latency",
        "health",
        "capacity",
        "key",
        "decision",
    ]);
    for c in candidates {
        let rank = match c.outcome {
            Outcome::Ordered { rank, .. } => rank.to_string(),
            Outcome::Dropped { .. } => "-".into(),
        };
        let estimate = match (&c.estimate, &c.cost_per_hour) {
            (Some(e), Some(h)) => format!("{e}\n{}/h", h.amount.normalize()),
            _ => "-".into(),
        };
        let latency = c.latency.map_or("-".into(), |l| match l.source {
            LatencySource::Observed { samples } => format!("{:.0} ms\nobserved ×{samples}", l.ms),
            LatencySource::Declared => format!("{:.0} ms\ndeclared", l.ms),
        });
        let decision = match &c.outcome {
            Outcome::Ordered {
                rank: 1,
                attempted: true,
            } => "chosen".to_owned(),
            Outcome::Ordered {
                rank,
                attempted: true,
            } => format!("fallback #{rank}"),
            Outcome::Ordered {
                rank,
                attempted: false,
            } => format!("#{rank}, not attempted"),
            Outcome::Dropped { .. } => "dropped (below)".to_owned(),
        };
        let capacity = c.capacity.map_or("-".into(), |cap| cap.to_string());
        t.add_row([
            rank,
            c.extension_id.clone(),
            c.kind.map_or("-".into(), |k| k.to_string()),
            estimate,
            latency,
            c.health.to_string(),
            capacity,
            c.key.map_or("-", |k| k.as_str()).to_owned(),
            decision,
        ]);
    }
    t
}
