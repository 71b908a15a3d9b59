//! `sandboxer route explain`: how a profile would be routed right now, candidate by
//! candidate. Runs the same `resolve_extension` as real routing; creates and holds nothing.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::process::ExitCode;

use super::output::{print_json, table};
use crate::config::Settings;
use crate::host::Host;
use crate::routing::profile::Strategy;
use crate::routing::{
    CandidateReport, LatencySource, Outcome, RequestOverrides, RouteDecision, RouteError,
};
use crate::runtime::types::SandboxRequest;

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
    /// Profile id (a file in the profiles folder), e.g. burst-sandbox.
    #[arg(long)]
    pub profile: String,
    /// Tenant the request is made for.
    #[arg(long, default_value = "explain")]
    pub tenant: String,
    /// vCPUs instead of the profile's.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory in MiB instead of the profile's.
    #[arg(long)]
    pub memory_mib: Option<u32>,
    /// Maximum duration in seconds (at most the profile's).
    #[arg(long = "max-duration")]
    pub max_duration_secs: Option<u64>,
    /// Pin a region.
    #[arg(long)]
    pub region: Option<String>,
}

/// Runs a `sandboxer route` subcommand.
pub fn run(cmd: RouteCommand, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        RouteCommand::Explain(args) => explain(args, settings, json),
    }
}

#[derive(Serialize)]
struct ExplainJson<'a> {
    request: &'a SandboxRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<&'a RouteDecision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RouteError>,
    warnings: Vec<String>,
    skipped_extensions: Vec<String>,
}

fn explain(args: ExplainArgs, settings: &Settings, json: bool) -> anyhow::Result<ExitCode> {
    // The same host (extensions, profiles, health, in-use counts from the sandbox store)
    // and the same call as real routing and the HTTP API's `POST /v1/route/explain`.
    let host = Host::open(settings).context("cannot open the host")?;
    let overrides = RequestOverrides {
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        max_duration_secs: args.max_duration_secs,
        region: args.region,
        ..RequestOverrides::default()
    };
    let (request, result) = host
        .manager()
        .explain(&args.tenant, &args.profile, &overrides)?;
    let profiles = host.profiles();
    let profile = profiles
        .get(&args.profile)
        .context("the profile disappeared while explaining")?;
    let skipped: Vec<String> = host
        .skipped_extensions()
        .iter()
        .map(|s| format!("{}: {}", s.file.display(), s.reason))
        .collect();
    let warnings: Vec<String> = host
        .profile_warnings()
        .iter()
        .filter(|w| w.profile == profile.id)
        .map(|w| w.message.clone())
        .collect();

    if json {
        let (decision, error) = match &result {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        print_json(&ExplainJson {
            request: &request,
            decision,
            error,
            warnings,
            skipped_extensions: skipped,
        })?;
        return Ok(if result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }

    let r = &request.resources;
    println!(
        "Profile {} ({}): {}",
        profile.id,
        profile.route.strategy,
        if profile.description.is_empty() {
            "-"
        } else {
            &profile.description
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
    let spec = &profile.route;
    println!(
        "Route: fallback {}, max {} attempt(s){}",
        if spec.fallback { "on" } else { "off" },
        spec.attempt_limit(),
        spec.max_cost_per_hour
            .map(|c| format!(", max {} {}/h", c.normalize(), spec.currency))
            .unwrap_or_default()
    );
    let candidates = match &result {
        Ok(d) => d.candidates.as_slice(),
        Err(e) => e.candidates(),
    };
    println!("{}", render(candidates));
    println!("Order: {}", order_rule(spec.strategy));
    for c in candidates {
        match &c.outcome {
            Outcome::Dropped { reason } => println!("  {} dropped: {reason}", c.extension_id),
            Outcome::Ordered {
                rank,
                attempted: false,
            } => println!(
                "  {} ordered #{rank} but not attempted: the route stops after {} attempt(s)",
                c.extension_id,
                spec.attempt_limit()
            ),
            Outcome::Ordered { .. } => {}
        }
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for s in &skipped {
        eprintln!("warning: extension skipped: {s}");
    }
    match result {
        Ok(d) => {
            let order: Vec<&str> = d.attempts.iter().map(|a| a.extension_id.as_str()).collect();
            println!(
                "Would try: {}. Nothing was created and no credits were held.",
                order.join(" → ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
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
            decision,
        ]);
    }
    t
}
