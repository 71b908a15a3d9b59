//! What routing reports: the strategy names, the router's decision and its per-candidate
//! report, why a candidate was dropped, and an extension's circuit. Pure data, shared by
//! routing (which produces it), the manager, and the surfaces (which render it as a
//! table or JSON); the algorithm is in `routing`.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::contract::{Capability, Cost, Kind};
use super::money::Money;

/// How the router orders the candidates that survive the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Self-hosted candidates with capacity first (cheapest first), then SaaS by cost.
    PreferSelfHosted,
    /// Estimate ascending; ties by latency, then id.
    LowestCost,
    /// Observed create latency (EWMA; declared startup latency until measured); ties by
    /// cost, then id.
    LowestLatency,
    /// Only the named extension (plus the listed candidates when `fallback` is on).
    Explicit,
}

impl Strategy {
    /// The name used in profiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PreferSelfHosted => "prefer-self-hosted",
            Strategy::LowestCost => "lowest-cost",
            Strategy::LowestLatency => "lowest-latency",
            Strategy::Explicit => "explicit",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// It lacks a capability the profile requires (`requires = [...]`).
    MissingCapability {
        /// What the profile requires and it does not have.
        missing: Vec<Capability>,
    },
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
            DropReason::MissingCapability { missing } => {
                let names: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
                write!(
                    f,
                    "cannot {} (the profile requires {})",
                    names
                        .iter()
                        .map(|n| match *n {
                            "exec" => "run commands",
                            "exec-stream" => "stream commands",
                            "files" => "move files",
                            other => other,
                        })
                        .collect::<Vec<_>>()
                        .join(" or "),
                    names.join(", ")
                )
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

/// An extension's circuit as the router sees it at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum HealthStatus {
    /// Calls flow.
    Closed { consecutive_failures: u32 },
    /// No calls until the cool-down ends.
    Open {
        retry_in_ms: u64,
        consecutive_failures: u32,
    },
    /// One trial call decides; `trial_in_flight` when it has been handed out.
    HalfOpen { trial_in_flight: bool },
}

impl HealthStatus {
    /// Whether the router may route to the extension now.
    pub fn admits_calls(&self) -> bool {
        matches!(
            self,
            HealthStatus::Closed { .. }
                | HealthStatus::HalfOpen {
                    trial_in_flight: false
                }
        )
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HealthStatus::Closed {
                consecutive_failures: 0,
            } => f.write_str("healthy"),
            HealthStatus::Closed {
                consecutive_failures: n,
            } => {
                write!(
                    f,
                    "healthy ({n} recent failure{})",
                    if n == 1 { "" } else { "s" }
                )
            }
            HealthStatus::Open { retry_in_ms, .. } => {
                write!(f, "circuit open (trial in {})", human_ms(retry_in_ms))
            }
            HealthStatus::HalfOpen {
                trial_in_flight: false,
            } => f.write_str("half-open (next call is a trial)"),
            HealthStatus::HalfOpen {
                trial_in_flight: true,
            } => f.write_str("half-open (trial in flight)"),
        }
    }
}

fn human_ms(ms: u64) -> String {
    if ms >= 1000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}
