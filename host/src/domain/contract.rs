//! Host-side, validated mirrors of the WIT types (`wit/extension.wit`). Every decimal
//! string an extension returns is parsed into a `Decimal` before it gets here; nothing
//! above the runtime sees raw strings or generated binding types. They live in the
//! domain, not in the wasm adapter, because routing, payments, events and both surfaces
//! speak them too; the runtime still names them `runtime::types`.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{Currency, Money};
use super::route::ByokMode;

/// Where a backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    SelfHosted,
    Saas,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::SelfHosted => "self-hosted",
            Kind::Saas => "saas",
        })
    }
}

/// Optional functions an extension implements meaningfully. `Capacity` and `Status` come
/// from the WIT `capability` list of `info`; `Exec`, `ExecStream` and `Files` are not in
/// that enum (it cannot grow compatibly): the runtime adds them when the component exports
/// the `process` and `files` interfaces (contract 0.1.1), and profiles may require them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `capacity` reports a finite pool size.
    Capacity,
    /// `status` queries the real backend.
    Status,
    /// Runs a command to completion (`process.exec`).
    Exec,
    /// Streams a long command's output (`process.start`, `read-output`, `write-stdin`, `kill`).
    ExecStream,
    /// Writes, reads and lists files (`files`).
    Files,
}

impl Capability {
    /// The kebab-case name, as profiles write it (`exec`, `exec-stream`, `files`).
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Capacity => "capacity",
            Capability::Status => "status",
            Capability::Exec => "exec",
            Capability::ExecStream => "exec-stream",
            Capability::Files => "files",
        }
    }
}

/// What `info` returned, validated (currency code checked; `kind` may be overridden by
/// the sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionInfo {
    pub id: String,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub currency: Currency,
    pub regions: Vec<String>,
    pub startup_latency_ms: u32,
    pub capabilities: Vec<Capability>,
}

/// Compute resources of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub gpu: Option<String>,
}

/// What the host asks a backend to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxRequest {
    pub sandbox_id: String,
    pub tenant: String,
    pub profile: String,
    pub template: String,
    pub resources: Resources,
    pub max_duration_secs: u64,
    pub region: Option<String>,
    pub env: Vec<(String, String)>,
    pub metadata: Vec<(String, String)>,
    /// Whether its calls may carry the tenant's own key (host-side only, never sent to the
    /// extension; records written before it existed read as the default).
    #[serde(default, skip_serializing_if = "ByokMode::is_default")]
    pub byok: ByokMode,
}

impl SandboxRequest {
    /// The tenant whose own keys this request's calls may carry: `None` with
    /// `byok = "never"` (the operator's key, always).
    pub fn key_tenant(&self) -> Option<&str> {
        (self.byok != ByokMode::Never).then_some(self.tenant.as_str())
    }
}

/// A running sandbox as handed back to `status` and `destroy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxContext {
    pub request: SandboxRequest,
    pub handle: String,
    /// Unix milliseconds, host clock, when `create` returned.
    pub created_at_ms: u64,
    /// Unix milliseconds, host clock, at this call.
    pub now_ms: u64,
}

/// One priced line: `quantity × unit_price = amount`, checked exactly by the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineItem {
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub unit: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// An estimate or a meter reading; `total.amount` equals the sum of the line items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cost {
    pub total: Money,
    pub line_items: Vec<LineItem>,
}

/// What `create` returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub handle: String,
    pub region: Option<String>,
}

/// Lifecycle state as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Starting,
    Running,
    Stopped,
}

/// What `status` returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub state: BackendState,
    pub detail: String,
}

/// One measured quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Measure {
    pub name: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub unit: String,
}

/// What a sandbox consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub duration_ms: u64,
    pub measures: Vec<Measure>,
}

/// Pool size; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub max_sandboxes: Option<u32>,
}

/// The WIT functions, for naming them in errors and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    Info,
    EstimateCost,
    Create,
    Status,
    Destroy,
    MeterActual,
    Capacity,
    /// `process.exec` and the rest of `process` (since 0.1.1).
    Exec,
    Start,
    ReadOutput,
    WriteStdin,
    Kill,
    /// `files` (since 0.1.1).
    WriteFile,
    ReadFile,
    ListFiles,
}

impl Function {
    /// The WIT interface the function belongs to: `backend`, `process` or `files`.
    pub fn interface(self) -> &'static str {
        match self {
            Function::Exec
            | Function::Start
            | Function::ReadOutput
            | Function::WriteStdin
            | Function::Kill => "process",
            Function::WriteFile | Function::ReadFile | Function::ListFiles => "files",
            _ => "backend",
        }
    }

    /// The WIT name, e.g. `estimate-cost`.
    pub fn wit_name(self) -> &'static str {
        match self {
            Function::Info => "info",
            Function::EstimateCost => "estimate-cost",
            Function::Create => "create",
            Function::Status => "status",
            Function::Destroy => "destroy",
            Function::MeterActual => "meter-actual",
            Function::Capacity => "capacity",
            Function::Exec => "exec",
            Function::Start => "start",
            Function::ReadOutput => "read-output",
            Function::WriteStdin => "write-stdin",
            Function::Kill => "kill",
            Function::WriteFile => "write-file",
            Function::ReadFile => "read-file",
            Function::ListFiles => "list-files",
        }
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wit_name())
    }
}

/// The `backend-error` variant an extension answered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "kebab-case")]
pub enum BackendError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("capacity exhausted: {0}")]
    CapacityExhausted(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How a call into an extension failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// The extension answered with its error variant.
    #[error("{0}")]
    Backend(BackendError),
    /// The call ran past its time budget and was interrupted.
    #[error("interrupted after its {budget_ms} ms time budget (does it loop?)")]
    Timeout { budget_ms: u64 },
    /// The extension tried to grow its memory past the cap.
    #[error("exceeded its memory limit of {limit_mib} MiB")]
    OutOfMemory { limit_mib: u64 },
    /// The extension trapped or panicked.
    #[error("trapped: {message}")]
    Trap { message: String },
    /// The extension answered, but the answer breaks the contract (malformed decimal,
    /// wrong currency, totals that do not add up…).
    #[error("returned an invalid answer: {message}")]
    BadAnswer { message: String },
    /// The extension keeps trapping and is refused calls until the back-off ends.
    #[error("quarantined until {until_unix_ms} (unix ms) after repeated traps: {reason}")]
    Quarantined { until_unix_ms: u64, reason: String },
}

/// A failed extension call, naming the extension and the function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("extension {extension:?}, {function}: {fault}")]
pub struct ExtensionError {
    pub extension: String,
    pub function: Function,
    pub fault: Fault,
}

impl ExtensionError {
    /// Whether another backend (or a later attempt) may succeed where this failed. The
    /// router fails over on these and they count against the extension's health.
    pub fn is_retryable(&self) -> bool {
        match &self.fault {
            Fault::Backend(e) => matches!(
                e,
                BackendError::CapacityExhausted(_)
                    | BackendError::Unavailable(_)
                    | BackendError::Internal(_)
            ),
            Fault::Timeout { .. }
            | Fault::OutOfMemory { .. }
            | Fault::Trap { .. }
            | Fault::BadAnswer { .. }
            | Fault::Quarantined { .. } => true,
        }
    }

    /// Whether this failure should count against the extension's health (open its
    /// circuit). Final answers about the request (invalid, unsupported, unauthorized,
    /// not found) do not.
    pub fn counts_against_health(&self) -> bool {
        match &self.fault {
            Fault::Backend(e) => {
                matches!(e, BackendError::Unavailable(_) | BackendError::Internal(_))
            }
            Fault::Quarantined { .. } => false,
            _ => true,
        }
    }
}
