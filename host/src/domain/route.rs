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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Whether a sandbox runs on the tenant's own provider key (BYOK) where it stored one:
/// `byok` in a profile's `[route]` or in a create request (the request's wins). See
/// docs/secrets.md, "Routing by key".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ByokMode {
    /// Candidates where the tenant has its own key are ranked first (then the strategy's
    /// order); each runs on the tenant's key where it has one, else the operator's.
    #[default]
    Prefer,
    /// Only candidates where the tenant has its own key; none: refused (409,
    /// `own_key_required`) naming the extensions that take one.
    Require,
    /// The operator's key always, even where the tenant stored one (billed the
    /// provider's price).
    Never,
}

impl ByokMode {
    /// The name used in profiles and requests.
    pub fn as_str(self) -> &'static str {
        match self {
            ByokMode::Prefer => "prefer",
            ByokMode::Require => "require",
            ByokMode::Never => "never",
        }
    }

    /// Whether serde may leave it out (the default).
    pub fn is_default(&self) -> bool {
        *self == ByokMode::Prefer
    }
}

impl fmt::Display for ByokMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ByokMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prefer" => Ok(ByokMode::Prefer),
            "require" => Ok(ByokMode::Require),
            "never" => Ok(ByokMode::Never),
            other => Err(format!(
                "unknown byok mode {other:?}: expected prefer, require or never"
            )),
        }
    }
}

/// Whose provider key a candidate's calls would carry (never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyUse {
    /// The tenant's own key (BYOK; billed the platform fee).
    Tenant,
    /// The operator's key (the tenant has none here, the extension takes none, or
    /// `byok = "never"`).
    Operator,
    /// The extension has no secrets at all (a self-hosted pool, a stub).
    None,
}

impl KeyUse {
    /// `tenant`, `operator` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUse::Tenant => "tenant",
            KeyUse::Operator => "operator",
            KeyUse::None => "none",
        }
    }
}

impl fmt::Display for KeyUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyUse::Tenant => "tenant's own",
            KeyUse::Operator => "operator's",
            KeyUse::None => "none",
        })
    }
}

/// One extension to try, in order, with the estimate to hold for it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum LatencySource {
    /// Moving average over this many measured creates.
    Observed { samples: u64 },
    /// The extension's declared startup latency (nothing measured yet).
    Declared,
}

/// A candidate's create latency as the router ranks it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// `byok = "require"` and the tenant has no own key here (`takes_keys`: whether the
    /// extension takes tenants' keys at all); `error`: the key could not be read.
    NoTenantKey {
        /// The candidate (so the reason says where to store a key).
        extension: String,
        takes_keys: bool,
        error: Option<String>,
    },
    /// Its price per hour is above the route's `max_cost_per_hour`.
    OverPriceCap {
        /// The candidate's price per hour (6 places). Serialised as `per_hour`: a dropped
        /// candidate's report flattens its reason beside its own `cost_per_hour` (a
        /// `Money`), which the same key would overwrite.
        #[serde(rename = "per_hour", with = "rust_decimal::serde::str")]
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
            DropReason::NoTenantKey {
                takes_keys: false, ..
            } => f.write_str(
                "takes no tenant's own key (byok = \"require\"); route it with byok = \"prefer\"",
            ),
            DropReason::NoTenantKey {
                error: Some(error), ..
            } => write!(
                f,
                "the tenant's own key cannot be read now (byok = \"require\"): {error}"
            ),
            DropReason::NoTenantKey { extension, .. } => write!(
                f,
                "the tenant has no own key for it (byok = \"require\"); store one with PUT /v1/keys/{extension}"
            ),
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// Whose key its calls would carry (unknown when not loaded); never the key.
    pub key: Option<KeyUse>,
    /// Ordered or dropped, and why.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The router's answer: whom to try, in order, and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    /// `byok = "require"` and the tenant has no own key on any candidate that could
    /// otherwise serve: a 4xx the tenant fixes by storing a key (or routing with
    /// `prefer`).
    #[error(
        "profile {profile:?} needs the tenant's own key (byok = \"require\"), and tenant {tenant:?} has none for {}: store one with PUT /v1/keys/EXTENSION (sandboxer keys set), or create with byok = \"prefer\"",
        if extensions.is_empty() { "any candidate (none of them takes tenants' keys)".to_owned() } else { extensions.join(", ") }
    )]
    OwnKeyRequired {
        profile: String,
        tenant: String,
        /// The candidates that take tenants' keys (where one could be stored).
        extensions: Vec<String>,
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
            | RouteError::OwnKeyRequired { candidates, .. }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
