//! [`AppError`]: the one error of every use case. Its variants are what a caller can act
//! on (fix the input, add credits, retry later, look for another id), not which layer
//! failed: each surface maps them once (the HTTP statuses in `http::error`, the CLI
//! prints the message). Messages name what was wrong and where, and never carry a secret.

use std::path::PathBuf;

use crate::domain::{
    BackendError, CandidateReport, Fault, InvalidTenant, Money, RouteError, SandboxState,
    SandboxStatus,
};
use crate::manager::{ManagerError, StoreError};
use crate::payments::LedgerError;

/// A failed use case. `Display` is the message for people.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or out of range; `field` names the part at fault when one
    /// is (`profile`, `vcpus`, `amount`, `tenant`, `after`, `Idempotency-Key`…).
    #[error("{message}")]
    Invalid {
        /// The field or parameter at fault.
        field: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The tenant's credits do not cover the hold; nothing was created or held.
    #[error("{message}")]
    InsufficientCredits {
        /// What was asked to be held.
        need: Money,
        /// What the tenant could still hold.
        available: Money,
        /// `insufficient credits: need …, available …`.
        message: String,
    },
    /// The tenant has no credits at all on this ledger.
    #[error("{message}")]
    NoCredits {
        /// `unknown tenant …: no credits were ever added for it`.
        message: String,
    },
    /// No sandbox has this id (or it belongs to another tenant: its existence is not
    /// revealed).
    #[error("no sandbox {id:?}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// An idempotency key was used before for a different request.
    #[error("{message}")]
    IdempotencyConflict {
        /// Which key, for what.
        message: String,
    },
    /// The sandbox is not in a state that allows the operation.
    #[error("{message}")]
    WrongState {
        /// Its state.
        state: SandboxState,
        /// What to do.
        message: String,
    },
    /// Another live process is working on the sandbox; try again shortly.
    #[error("{message}")]
    Busy {
        /// Which sandbox, which process.
        message: String,
    },
    /// A ledger write raced another on the same hold.
    #[error("{message}")]
    Conflict {
        /// What was already resolved.
        message: String,
    },
    /// No extension can serve the request; every candidate's reason is in `candidates`.
    #[error("{message}")]
    NoRoute {
        /// Why, in one line.
        message: String,
        /// Every candidate with its estimate, health, capacity and fate.
        candidates: Vec<CandidateReport>,
    },
    /// `byok = "require"` and the tenant has no own key on any candidate: the tenant
    /// stores one (`PUT /v1/keys/EXTENSION`) or routes with `prefer`. Nothing was held.
    #[error("{message}")]
    OwnKeyRequired {
        /// Which profile, which extensions take a key, what to do.
        message: String,
        /// The candidates that take tenants' own keys.
        extensions: Vec<String>,
        /// Every candidate with its fate.
        candidates: Vec<CandidateReport>,
    },
    /// Every attempt failed (each hold was released); the failed status lists them.
    #[error("{message}")]
    CreateFailed {
        /// The failed sandbox (state `failed`).
        status: Box<SandboxStatus>,
        /// Why, in one line.
        message: String,
    },
    /// The sandbox's extension is not loaded; it stays tracked, retry once it is back.
    #[error("{message}")]
    ExtensionMissing {
        /// Which sandbox, which extension.
        message: String,
    },
    /// The extension failed while destroying or metering; the sandbox stays tracked.
    #[error("{message}")]
    ExtensionFailed {
        /// The failed call.
        message: String,
    },
    /// A file or process the call named does not exist in the sandbox.
    #[error("{message}")]
    Missing {
        /// What is missing, in which sandbox.
        message: String,
    },
    /// The sandbox's backend cannot do that (no exec, no files, no streaming).
    #[error("{message}")]
    Unsupported {
        /// What, and on which extension.
        message: String,
    },
    /// The sandbox's backend cannot be reached or is full right now; retry later.
    #[error("{message}")]
    Unavailable {
        /// Which backend, and why.
        message: String,
    },
    /// The extension's meter cannot be settled; the sandbox stays `destroying`.
    #[error("{message}")]
    BadMeter {
        /// Why.
        message: String,
    },
    /// A reading command found no ledger (nothing was ever added); none is created.
    #[error("there is no ledger at {} to verify", path.display())]
    NoLedger {
        /// Where it would be.
        path: PathBuf,
    },
    /// The host cannot be opened: the state folder, the extensions folder, a profile
    /// file, an event hub (each message names the file and the key).
    #[error("cannot open the host: {message}")]
    Open {
        /// What failed.
        message: String,
    },
    /// The secret store (OpenBao) holding tenants' own keys is not configured or cannot
    /// be reached; nothing was stored. The message names the store, never a key.
    #[error("{message}")]
    SecretStore {
        /// What failed.
        message: String,
    },
    /// Storage or another internal failure; the message names the file and is logged.
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl AppError {
    /// Bad input, naming the field.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        AppError::Invalid {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub(crate) fn open(e: impl std::fmt::Display) -> Self {
        AppError::Open {
            message: e.to_string(),
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        AppError::Internal {
            message: e.to_string(),
        }
    }
}

impl From<InvalidTenant> for AppError {
    fn from(e: InvalidTenant) -> Self {
        AppError::invalid("tenant", e.to_string())
    }
}

impl From<LedgerError> for AppError {
    fn from(e: LedgerError) -> Self {
        let message = e.to_string();
        match e {
            LedgerError::InsufficientCredits { need, available } => AppError::InsufficientCredits {
                need,
                available,
                message,
            },
            LedgerError::UnknownTenant(_) => AppError::NoCredits { message },
            LedgerError::InvalidTenant(_) => AppError::invalid("tenant", message),
            LedgerError::InvalidInput { what, .. } => AppError::invalid(what, message),
            LedgerError::IdempotencyConflict { .. } => AppError::IdempotencyConflict { message },
            LedgerError::HoldNotFound(_) | LedgerError::HoldAlreadyResolved { .. } => {
                AppError::Conflict { message }
            }
            LedgerError::Corrupt { .. } | LedgerError::Storage { .. } => {
                AppError::Internal { message }
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::internal(e)
    }
}

impl From<ManagerError> for AppError {
    fn from(e: ManagerError) -> Self {
        let message = e.to_string();
        match e {
            ManagerError::UnknownProfile { .. } => AppError::invalid("profile", message),
            ManagerError::InvalidRequest(r) => AppError::invalid(r.field, message),
            ManagerError::NoRoute(RouteError::OwnKeyRequired {
                extensions,
                candidates,
                ..
            }) => AppError::OwnKeyRequired {
                message,
                extensions,
                candidates,
            },
            ManagerError::NoRoute(r) => AppError::NoRoute {
                message,
                candidates: r.candidates().to_vec(),
            },
            ManagerError::Ledger(l) => l.into(),
            ManagerError::CreateFailed { status } => AppError::CreateFailed { status, message },
            ManagerError::NotFound { id } => AppError::NotFound { id },
            ManagerError::WrongState { state, .. } => AppError::WrongState { state, message },
            ManagerError::Busy { .. } => AppError::Busy { message },
            ManagerError::ExtensionMissing { .. } => AppError::ExtensionMissing { message },
            ManagerError::Extension { .. } => AppError::ExtensionFailed { message },
            ManagerError::Session { error, .. } => session_error(&error.fault, message),
            ManagerError::BadMeter { .. } => AppError::BadMeter { message },
            ManagerError::IdempotencyConflict { .. } => AppError::IdempotencyConflict { message },
            ManagerError::InvalidKey(_) => AppError::invalid("Idempotency-Key", message),
            ManagerError::Store(_) | ManagerError::Event(_) | ManagerError::Setup(_) => {
                AppError::Internal { message }
            }
        }
    }
}

/// What a failed command or file call means for the caller: the tenant's own mistake
/// (a bad path, a missing file), something the backend cannot do, or the backend's fault.
fn session_error(fault: &Fault, message: String) -> AppError {
    match fault {
        Fault::Backend(BackendError::InvalidRequest(_)) => AppError::Invalid {
            field: None,
            message,
        },
        Fault::Backend(BackendError::NotFound(_)) => AppError::Missing { message },
        Fault::Backend(BackendError::Unsupported(_)) => AppError::Unsupported { message },
        Fault::Backend(BackendError::Unavailable(_) | BackendError::CapacityExhausted(_))
        | Fault::Quarantined { .. } => AppError::Unavailable { message },
        _ => AppError::ExtensionFailed { message },
    }
}
