//! The host's vocabulary, with no I/O: exact money, tenant ids and scopes, the mirrors of
//! the extension contract, sandboxes as asked for and as recorded, what credits and route
//! decisions look like. Every layer and both surfaces speak these types; none of them
//! opens a file or calls an extension.

pub mod contract;
pub mod credits;
pub mod exec;
pub mod money;
pub mod route;
pub mod sandbox;
pub mod tenant;
pub mod text;

pub use contract::{
    BackendError, BackendState, BackendStatus, Capability, Capacity, Cost, Created, ExtensionError,
    ExtensionInfo, Fault, Function, Kind, LineItem, Measure, Resources, SandboxContext,
    SandboxRequest, Usage,
};
pub use credits::{Balance, Entry, EntryKind, Grant, VerifyReport};
pub use exec::{
    Command, ExecOutput, ExecRequest, Exit, ExitStatus, FileChunk, FileEntry, FileKind,
    OutputChunk, OutputStream, ProcessOutput,
};
pub use money::{Currency, CurrencyError, DecimalError, Money, display_decimal, parse_decimal};
pub use route::{
    Attempt, ByokMode, CandidateReport, CapacityReport, DropReason, HealthStatus, KeyUse,
    LatencyReport, LatencySource, Outcome, RouteDecision, RouteError, Strategy,
};
pub use sandbox::{
    AttemptRecord, Meter, Reading, SandboxSpec, SandboxState, SandboxStatus, UnknownState,
};
pub use tenant::{InvalidTenant, Scope, TenantId};
