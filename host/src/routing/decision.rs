//! [`resolve_extension`]: from a profile, a request and the loaded extensions to an
//! ordered list of attempts, with a report on every candidate (why it was ordered where
//! it is, or why it was dropped). Real routing and `route explain` both call it.

use std::cmp::Ordering;
use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

use super::health::{HealthStatus, HealthTracker};
use super::profile::{Candidates, Profile, Strategy};
use super::view::ExtensionView;
use crate::money::Money;
use crate::runtime::types::{Capability, Cost, ExtensionError, Kind, SandboxRequest};

/// One extension to try, in order, with the estimate to hold for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// The extension to call.
    pub extension_id: String,
    /// Its kind.
    pub kind: Kind,
    /// Its estimate for the request's whole maximum duration (the amount to hold).
    pub estimate: Cost,
    /// The estimate per hour of the maximum duration (rounded to 6 places, display only).
    pub cost_per_hour: Money,
}

/// Where a latency figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum LatencySource {
    /// Moving average over this many measured creates.
    Observed { samples: u64 },
    /// The extension's declared startup latency (nothing measured yet).
    Declared,
}

/// A candidate's create latency as the router ranks it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Milliseconds.
    pub ms: f64,
    /// Observed or declared.
    #[serde(flatten)]
    pub source: LatencySource,
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            LatencySource::Observed { samples } => {
                write!(f, "{:.0} ms (observed, {samples} calls)", self.ms)
            }
            LatencySource::Declared => write!(f, "{:.0} ms (declared)", self.ms),
        }
    }
}

/// A pool's size and use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapacityReport {
    /// `None`: unlimited.
    pub max_sandboxes: Option<u32>,
    /// Sandboxes the host runs there now.
    pub in_use: u32,
}

impl fmt::Display for CapacityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max_sandboxes {
            Some(max) => write!(f, "{}/{} in use", self.in_use, max),
            None => write!(f, "unlimited ({} in use)", self.in_use),
        }
    }
}

/// Why a candidate was not ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DropReason {
    /// No loaded extension has this id.
    NotLoaded,
    /// Its circuit is open after repeated failures.
    CircuitOpen { retry_in_ms: u64 },
    /// Its circuit is half-open and the one trial call is already out.
    TrialInFlight,
    /// It does not serve any region the request may run in.
    WrongRegion {
        wanted: Vec<String>,
        serves: Vec<String>,
    },
    /// It prices in another currency than the profile pays in.
    WrongCurrency { currency: String, wanted: String },
    /// Its pool is full.
    NoCapacity { in_use: u32, max: u32 },
    /// Asking for its capacity failed.
    CapacityFailed { error: String },
    /// It said it cannot serve this request (unsupported or invalid for it).
    CannotServe { error: String },
    /// Its estimate failed (error, timeout, trap or invalid answer).
    EstimateFailed { error: String },
    /// Its price per hour is above the route's `max_cost_per_hour`.
    OverPriceCap {
        #[serde(with = "rust_decimal::serde::str")]
        cost_per_hour: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        cap: Decimal,
        currency: String,
    },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::NotLoaded => f.write_str("not loaded (no extension has this id)"),
            DropReason::CircuitOpen { retry_in_ms } => {
                write!(
                    f,
                    "circuit open after repeated failures; trial in {:.1}s",
                    *retry_in_ms as f64 / 1000.0
                )
            }
            DropReason::TrialInFlight => {
                f.write_str("circuit half-open and its trial call is in flight")
            }
            DropReason::WrongRegion { wanted, serves } => {
                write!(
                    f,
                    "serves {} only; request needs {}",
                    serves.join(", "),
                    wanted.join(" or ")
                )
            }
            DropReason::WrongCurrency { currency, wanted } => {
                write!(f, "prices in {currency}; the profile pays in {wanted}")
            }
            DropReason::NoCapacity { in_use, max } => {
                write!(f, "no capacity ({in_use}/{max} in use)")
            }
            DropReason::CapacityFailed { error } => write!(f, "capacity check failed: {error}"),
            DropReason::CannotServe { error } => write!(f, "cannot serve this request: {error}"),
            DropReason::EstimateFailed { error } => write!(f, "estimate failed: {error}"),
            DropReason::OverPriceCap {
                cost_per_hour,
                cap,
                currency,
            } => write!(
                f,
                "over the price cap: {} {currency}/h > max_cost_per_hour {} {currency}",
                cost_per_hour.normalize(),
                cap.normalize()
            ),
        }
    }
}

/// What became of a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// Ordered at `rank` (1 = tried first); `attempted` is false past the route's attempt
    /// limit (or past the first when fallback is off).
    Ordered { rank: u32, attempted: bool },
    /// Dropped, with the reason.
    Dropped {
        #[serde(flatten)]
        reason: DropReason,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ordered {
                rank: 1,
                attempted: true,
            } => f.write_str("chosen (#1)"),
            Outcome::Ordered {
                rank,
                attempted: true,
            } => write!(f, "fallback #{rank}"),
            Outcome::Ordered {
                rank,
                attempted: false,
            } => write!(f, "#{rank}, beyond the attempt limit"),
            Outcome::Dropped { reason } => write!(f, "dropped: {reason}"),
        }
    }
}

/// Everything the router learned about one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateReport {
    /// The candidate id.
    pub extension_id: String,
    /// Its kind (unknown when not loaded).
    pub kind: Option<Kind>,
    /// Its estimate's total for the request, when one was obtained (the line items are
    /// in the attempt).
    pub estimate: Option<Money>,
    /// The estimate per hour (6 places), when one was obtained.
    pub cost_per_hour: Option<Money>,
    /// Latency the router ranks it by.
    pub latency: Option<LatencyReport>,
    /// Its circuit.
    pub health: HealthStatus,
    /// Its pool, when it was asked (self-hosted pools with the capacity capability).
    pub capacity: Option<CapacityReport>,
    /// Ordered or dropped, and why.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The router's answer: whom to try, in order, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteDecision {
    /// The profile routed.
    pub profile: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// Extensions to try in order (at least one), each with its estimate.
    pub attempts: Vec<Attempt>,
    /// Every candidate: ordered ones by rank first, then dropped ones in listed order.
    pub candidates: Vec<CandidateReport>,
}

/// Why no extension can serve a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "error", rename_all = "kebab-case")]
pub enum RouteError {
    /// Every candidate was dropped (the report says why each).
    #[error(
        "no extension can serve profile {profile:?}: {}",
        summarize(candidates)
    )]
    NoCandidate {
        profile: String,
        candidates: Vec<CandidateReport>,
    },
    /// The `explicit` target cannot serve and the profile lists no fallbacks.
    #[error(
        "profile {profile:?} routes explicitly to {target:?}, which cannot serve: {reason} (no fallbacks listed)"
    )]
    ExplicitUnavailable {
        profile: String,
        target: String,
        reason: Box<DropReason>,
        candidates: Vec<CandidateReport>,
    },
}

impl RouteError {
    /// The per-candidate report, for `route explain`.
    pub fn candidates(&self) -> &[CandidateReport] {
        match self {
            RouteError::NoCandidate { candidates, .. }
            | RouteError::ExplicitUnavailable { candidates, .. } => candidates,
        }
    }
}

fn summarize(report: &[CandidateReport]) -> String {
    if report.is_empty() {
        return "the route lists no candidates and no extension is loaded".into();
    }
    report
        .iter()
        .map(|c| format!("{} {}", c.extension_id, c.outcome))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A candidate that survived the filters, with its sort keys.
struct Survivor {
    index: usize,
    kind: Kind,
    cost: Decimal,
    latency_ms: f64,
    /// Moved into the attempt (the report keeps only the total): one copy, not two.
    estimate: Cost,
}

/// Routes `req` (built from `profile`): lists the candidates of its route spec, drops
/// those that are not loaded, have an open circuit, serve none of the wanted regions,
/// price in another currency, have no capacity, cannot or fail to estimate, or exceed
/// `max_cost_per_hour`; orders the rest by the strategy, and returns the attempts the
/// manager should make in order (each with its estimate, so it never asks twice).
///
/// Failures of the calls it makes (capacity, estimate-cost) that count against health
/// are recorded in `health`; nothing else changes: nothing is created or held.
pub fn resolve_extension(
    profile: &Profile,
    req: &SandboxRequest,
    view: &dyn ExtensionView,
    health: &HealthTracker,
) -> Result<RouteDecision, RouteError> {
    let spec = &profile.route;
    let ids: Vec<String> = match (&spec.strategy, &spec.explicit) {
        (Strategy::Explicit, Some(target)) => {
            let mut ids = vec![target.clone()];
            if spec.fallback {
                let rest = match &spec.candidates {
                    Candidates::All => view.extension_ids(),
                    Candidates::List(list) => list.clone(),
                };
                ids.extend(rest.into_iter().filter(|id| id != target));
            }
            ids
        }
        _ => match &spec.candidates {
            Candidates::All => {
                let mut all = view.extension_ids();
                all.sort();
                all
            }
            Candidates::List(list) => list.clone(),
        },
    };
    let wanted_regions = profile.wanted_regions(req);

    let mut reports = Vec::with_capacity(ids.len());
    let mut survivors = Vec::with_capacity(ids.len());
    for id in ids {
        let (report, survivor) = assess(
            id,
            profile,
            req,
            &wanted_regions,
            view,
            health,
            reports.len(),
        );
        if let Some(s) = survivor {
            survivors.push(s);
        }
        reports.push(report);
    }

    if spec.strategy == Strategy::Explicit {
        // Listed order: the target, then the fallbacks as written.
        survivors.sort_by_key(|s| s.index);
    } else {
        let prefer_self_hosted = spec.strategy == Strategy::PreferSelfHosted;
        let by_latency = spec.strategy == Strategy::LowestLatency;
        survivors.sort_by(|a, b| {
            let group = if prefer_self_hosted {
                (a.kind != Kind::SelfHosted).cmp(&(b.kind != Kind::SelfHosted))
            } else {
                Ordering::Equal
            };
            let (first, second) = if by_latency {
                (a.latency_ms.total_cmp(&b.latency_ms), a.cost.cmp(&b.cost))
            } else {
                (a.cost.cmp(&b.cost), a.latency_ms.total_cmp(&b.latency_ms))
            };
            group
                .then(first)
                .then(second)
                .then_with(|| reports_id(&reports, a.index).cmp(reports_id(&reports, b.index)))
        });
    }

    let explicit_target_dropped = match (&spec.strategy, &spec.explicit) {
        (Strategy::Explicit, Some(target)) => match reports.first() {
            Some(CandidateReport {
                outcome: Outcome::Dropped { reason },
                ..
            }) => Some((target.clone(), Box::new(reason.clone()))),
            _ => None,
        },
        _ => None,
    };

    let limit = spec.attempt_limit();
    let mut attempts = Vec::with_capacity(limit.min(survivors.len()));
    let order: Vec<usize> = survivors.iter().map(|s| s.index).collect();
    for (rank, s) in survivors.into_iter().enumerate() {
        let attempted = rank < limit;
        let report = &mut reports[s.index];
        report.outcome = Outcome::Ordered {
            rank: rank as u32 + 1,
            attempted,
        };
        if attempted && let Some(cost_per_hour) = &report.cost_per_hour {
            attempts.push(Attempt {
                extension_id: report.extension_id.clone(),
                kind: s.kind,
                estimate: s.estimate,
                cost_per_hour: cost_per_hour.clone(),
            });
        }
    }
    // Ordered candidates by rank, then the dropped ones in listed order.
    let mut sorted: Vec<Option<CandidateReport>> = reports.into_iter().map(Some).collect();
    let mut candidates: Vec<CandidateReport> =
        order.iter().filter_map(|&i| sorted[i].take()).collect();
    candidates.extend(sorted.into_iter().flatten());

    // Its own error only when the target was the sole candidate; with fallbacks listed
    // (and all dropped too) the general error lists every reason.
    if let Some((target, reason)) = explicit_target_dropped
        && attempts.is_empty()
        && candidates.len() == 1
    {
        tracing::info!(profile = %profile.id, tenant = %req.tenant, target = %target, %reason, "explicit target cannot serve");
        return Err(RouteError::ExplicitUnavailable {
            profile: profile.id.clone(),
            target,
            reason,
            candidates,
        });
    }
    if attempts.is_empty() {
        tracing::info!(profile = %profile.id, tenant = %req.tenant, "no candidate can serve");
        return Err(RouteError::NoCandidate {
            profile: profile.id.clone(),
            candidates,
        });
    }
    tracing::debug!(
        profile = %profile.id,
        tenant = %req.tenant,
        sandbox_id = %req.sandbox_id,
        extension = %attempts[0].extension_id,
        attempts = attempts.len(),
        "routed"
    );
    Ok(RouteDecision {
        profile: profile.id.clone(),
        strategy: spec.strategy,
        attempts,
        candidates,
    })
}

fn reports_id(reports: &[CandidateReport], i: usize) -> &str {
    &reports[i].extension_id
}

/// Checks one candidate, cheapest checks first so a dropped candidate costs no
/// extension call when it can be avoided.
fn assess(
    id: String,
    profile: &Profile,
    req: &SandboxRequest,
    wanted_regions: &[String],
    view: &dyn ExtensionView,
    health: &HealthTracker,
    index: usize,
) -> (CandidateReport, Option<Survivor>) {
    let status = health.status(&id);
    let mut report = CandidateReport {
        extension_id: id,
        kind: None,
        estimate: None,
        cost_per_hour: None,
        latency: None,
        health: status,
        capacity: None,
        outcome: Outcome::Dropped {
            reason: DropReason::NotLoaded,
        },
    };
    let drop = |mut report: CandidateReport, reason: DropReason| {
        report.outcome = Outcome::Dropped { reason };
        (report, None)
    };
    let id = report.extension_id.as_str();
    let Some(info) = view.info(id) else {
        return (report, None);
    };
    report.kind = Some(info.kind);
    report.latency = Some(match health.latency(id) {
        Some(l) => LatencyReport {
            ms: l.ewma_ms,
            source: LatencySource::Observed { samples: l.samples },
        },
        None => LatencyReport {
            ms: f64::from(info.startup_latency_ms),
            source: LatencySource::Declared,
        },
    });
    match status {
        HealthStatus::Open { retry_in_ms, .. } => {
            return drop(report, DropReason::CircuitOpen { retry_in_ms });
        }
        HealthStatus::HalfOpen {
            trial_in_flight: true,
        } => return drop(report, DropReason::TrialInFlight),
        _ => {}
    }
    if !wanted_regions.is_empty()
        && !info.regions.is_empty()
        && !wanted_regions.iter().any(|w| info.regions.contains(w))
    {
        let reason = DropReason::WrongRegion {
            wanted: wanted_regions.to_vec(),
            serves: info.regions.clone(),
        };
        return drop(report, reason);
    }
    if info.currency != profile.route.currency {
        let reason = DropReason::WrongCurrency {
            currency: info.currency.to_string(),
            wanted: profile.route.currency.to_string(),
        };
        return drop(report, reason);
    }
    if info.capabilities.contains(&Capability::Capacity) {
        match view.capacity(id) {
            Ok(cap) => {
                let in_use = view.in_use(id);
                report.capacity = Some(CapacityReport {
                    max_sandboxes: cap.max_sandboxes,
                    in_use,
                });
                if let Some(max) = cap.max_sandboxes
                    && in_use >= max
                {
                    return drop(report, DropReason::NoCapacity { in_use, max });
                }
            }
            Err(e) => {
                health.record_failure(id, &e);
                return drop(
                    report,
                    DropReason::CapacityFailed {
                        error: fault_text(&e),
                    },
                );
            }
        }
    }
    let kind = info.kind;
    let estimate = match view.estimate_cost(id, req) {
        Ok(c) => c,
        Err(e) => {
            health.record_failure(id, &e);
            let reason = if e.counts_against_health() || e.is_retryable() {
                DropReason::EstimateFailed {
                    error: fault_text(&e),
                }
            } else {
                DropReason::CannotServe {
                    error: fault_text(&e),
                }
            };
            return drop(report, reason);
        }
    };
    let duration = Decimal::from(req.max_duration_secs.max(1));
    let hour = Decimal::from(3600u32);
    let total = estimate.total.amount;
    let cost_per_hour = total
        .checked_mul(hour)
        .and_then(|x| x.checked_div(duration))
        .unwrap_or(Decimal::MAX);
    report.cost_per_hour = Some(Money {
        amount: cost_per_hour.round_dp(6).normalize(),
        currency: estimate.total.currency.clone(),
    });
    report.estimate = Some(estimate.total.clone());
    if let Some(cap) = profile.route.max_cost_per_hour {
        // Exact comparison: total × 3600 > cap × duration, no division.
        let over = match (total.checked_mul(hour), cap.checked_mul(duration)) {
            (Some(lhs), Some(rhs)) => lhs > rhs,
            _ => true,
        };
        if over {
            let reason = DropReason::OverPriceCap {
                cost_per_hour: cost_per_hour.round_dp(6),
                cap,
                currency: profile.route.currency.to_string(),
            };
            return drop(report, reason);
        }
    }
    let latency_ms = report.latency.map_or(f64::MAX, |l| l.ms);
    (
        report,
        Some(Survivor {
            index,
            kind,
            cost: total,
            latency_ms,
            estimate,
        }),
    )
}

/// The failure without the "extension X" prefix (the table already names it).
fn fault_text(e: &ExtensionError) -> String {
    format!("{}: {}", e.function, e.fault)
}
