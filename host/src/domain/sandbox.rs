//! A sandbox as asked for ([`SandboxSpec`]: a profile and what the caller changes about
//! it) and as recorded ([`SandboxStatus`]: durable in the status store, returned by every
//! lifecycle call and rendered by both surfaces).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::contract::{Cost, LineItem, SandboxRequest, Usage};
use super::money::Money;

/// A sandbox asked for: the profile, and what the caller changes about its request. The
/// body of `POST /v1/sandboxes` and `POST /v1/route/explain`, and what the flags of
/// `sandboxer sandbox create` and `sandboxer route explain` build. Overrides are checked
/// against the profile when the request is built (never above its maximum duration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// Profile id, e.g. `burst-sandbox`.
    #[schema(example = "saas-stub")]
    pub profile: String,
    /// vCPUs instead of the profile's.
    #[schema(example = 1)]
    pub vcpus: Option<u32>,
    /// Memory in MiB instead of the profile's.
    #[schema(example = 512)]
    pub memory_mib: Option<u32>,
    /// A shorter maximum lifetime in seconds (never longer than the profile's).
    #[schema(example = 60)]
    pub max_duration_secs: Option<u64>,
    /// Pin a region (one of the profile's, when it lists any).
    pub region: Option<String>,
    /// Environment variables handed to the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra labels (override the profile's on the same key).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `prefer`, `require` or `never` the tenant's own provider key, instead of the
    /// profile's `[route] byok` (docs/secrets.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byok: Option<super::route::ByokMode>,
}

impl SandboxSpec {
    /// The profile's request, unchanged.
    pub fn of_profile(profile: impl Into<String>) -> Self {
        Self {
            profile: profile.into(),
            ..Self::default()
        }
    }
}

/// Where a sandbox is in its lifecycle.
///
/// `creating` and `destroying` are intents: they are written before the extension is
/// called, so a crash there is found and finished by reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Credits may be held and the extension's `create` may be under way.
    Creating,
    /// Created; credits held.
    Running,
    /// `destroy` was decided at `destroy_at_ms`; the usage window is fixed.
    Destroying,
    /// Destroyed and settled; `meter` is set.
    Destroyed,
    /// Never came up; its holds were released.
    Failed,
}

impl SandboxState {
    /// All states, in lifecycle order.
    pub const ALL: [SandboxState; 5] = [
        SandboxState::Creating,
        SandboxState::Running,
        SandboxState::Destroying,
        SandboxState::Destroyed,
        SandboxState::Failed,
    ];

    /// The lowercase name, e.g. `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Destroying => "destroying",
            SandboxState::Destroyed => "destroyed",
            SandboxState::Failed => "failed",
        }
    }

    /// Whether the sandbox occupies a slot of its extension (counts as in use).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            SandboxState::Creating | SandboxState::Running | SandboxState::Destroying
        )
    }

    /// Whether nothing more will happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, SandboxState::Destroyed | SandboxState::Failed)
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown sandbox state {0:?}: expected one of creating, running, destroying, destroyed, failed"
)]
pub struct UnknownState(pub String);

impl FromStr for SandboxState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// One try of one extension during `create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// The extension tried.
    pub extension_id: String,
    /// Its wasm's sha256 at the time.
    pub extension_version: String,
    /// The estimate held for this try.
    pub estimate: Money,
    /// The hold taken for this try (released when the try failed).
    pub hold_id: Option<String>,
    /// When the try started.
    pub started_at: DateTime<Utc>,
    /// How long the extension's `create` took, when it was called.
    pub latency_ms: Option<u64>,
    /// Why it failed; `None` for the try that created the sandbox.
    pub error: Option<String>,
    /// Whether that failure let the manager try the next candidate.
    pub retryable: bool,
}

/// The meter reading of a destroyed sandbox, as settled on the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Meter {
    /// The charge after rounding (half away from zero, at the ledger's scale).
    pub total: Money,
    /// The extension's `meter-actual` total, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub exact: Decimal,
    /// The extension's line items (exact).
    pub line_items: Vec<LineItem>,
    /// What was measured (host-measured duration, the extension's measures).
    pub usage: Usage,
    /// The amount that had been held.
    pub held: Money,
    /// Released back to the tenant's available credits.
    pub released: Money,
    /// Part of the charge the tenant could not cover (overdraft policy `write-off`).
    pub written_off: Money,
    /// Part of the charge taken as debt (overdraft policy `debt`).
    pub debt: Money,
    /// The settlement's id (`settle-<sandbox id>`): the ledger's idempotency key for it
    /// and the meter event's `id`, stable across retries.
    pub settlement_id: String,
    /// The ledger's posting transfer.
    pub transfer_id: String,
    /// The meter event's CloudEvents id.
    pub event_id: String,
    /// When it was settled.
    pub settled_at: DateTime<Utc>,
    /// What the extension's meter asked beyond the hold: not charged (the charge is capped
    /// at the hold), recorded for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_hold: Option<Money>,
    /// Set when the meter kept failing and the host settled at its estimate prorated over
    /// the sandbox's lifetime: the meter's last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The reading taken from the extension before settlement; persisted first, so a crash
/// between reading and settling settles the same figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reading {
    /// What `destroy` reported.
    pub usage: Usage,
    /// What `meter-actual` priced it at (or the fallback, when `fallback` is set).
    pub cost: Cost,
    /// Set when the meter kept failing and `cost` is the host's fallback: the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// Everything the host knows about one sandbox. Durable before any manager call answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxStatus {
    /// The host's sandbox id (`sb-…`).
    pub id: String,
    /// Who pays.
    pub tenant: String,
    /// The profile it was created from.
    pub profile: String,
    /// The extension serving it (the current try while `creating`).
    pub extension_id: Option<String>,
    /// That extension's version (sha256 over its wasm and resolved spec): destroy and
    /// metering use this version.
    pub extension_version: Option<String>,
    /// The backend's opaque handle (empty only on a sandbox whose create was interrupted
    /// before the handle was recorded; reconciliation destroys such a sandbox at once).
    pub handle: Option<String>,
    /// Lifecycle state.
    pub state: SandboxState,
    /// When the request was accepted.
    pub created_at: DateTime<Utc>,
    /// Unix ms (host clock) from which usage is measured: when `create` returned.
    pub started_at_ms: Option<u64>,
    /// Unix ms (host clock) at which destroy was decided: the end of the usage window.
    pub destroy_at_ms: Option<u64>,
    /// The request as validated against the profile (handed back to the extension).
    pub request: SandboxRequest,
    /// The serving extension's estimate for the whole maximum duration.
    pub estimate: Option<Cost>,
    /// The open (or settled) hold.
    pub hold_id: Option<String>,
    /// The amount held (the estimate rounded up to a ledger unit).
    pub held: Option<Money>,
    /// Every try, in order.
    pub attempts: Vec<AttemptRecord>,
    /// Usage and price read from the extension at destroy, before settlement.
    pub reading: Option<Reading>,
    /// The settled meter, once destroyed.
    pub meter: Option<Meter>,
    /// The caller's idempotency key for `create`, if any.
    pub idempotency_key: Option<String>,
    /// Why it failed, or why the last operation on it could not finish.
    pub error: Option<String>,
    /// Destroys whose meter could not be used so far (see `manager::meter`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub meter_failures: u32,
    /// When this record last changed.
    pub updated_at: DateTime<Utc>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
