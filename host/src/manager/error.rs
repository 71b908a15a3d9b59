//! Why a manager call failed. Every variant says what and which sandbox; none carries a
//! secret.

use super::store::StoreError;
use crate::domain::{ExtensionError, RouteError, SandboxState, SandboxStatus};
use crate::events::EventError;
use crate::payments::LedgerError;
use crate::routing::profile::RequestError;

/// A failed manager call.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No profile has this id.
    #[error("no profile {profile:?} (known: {})", if known.is_empty() { "none".to_owned() } else { known.join(", ") })]
    UnknownProfile {
        /// The id asked for.
        profile: String,
        /// The loaded profile ids.
        known: Vec<String>,
    },
    /// The request does not fit the profile (out-of-range override, …).
    #[error(transparent)]
    InvalidRequest(#[from] RequestError),
    /// No extension can serve the request (each candidate's reason is in the error).
    #[error(transparent)]
    NoRoute(#[from] RouteError),
    /// The ledger refused or failed (insufficient credits, invalid tenant, storage…).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Every attempt failed, or one failed finally; the status (state `failed`) lists
    /// each attempt with its error. Its holds were released.
    #[error("sandbox {} could not be created: {}", status.id, status.error.as_deref().unwrap_or("every attempt failed"))]
    CreateFailed {
        /// The failed sandbox.
        status: Box<SandboxStatus>,
    },
    /// No sandbox has this id (or it belongs to another tenant).
    #[error("no sandbox {id:?}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The sandbox is not in a state that allows the operation.
    #[error("sandbox {id} is {state}: {hint}")]
    WrongState {
        /// The sandbox.
        id: String,
        /// Its state.
        state: SandboxState,
        /// What to do.
        hint: &'static str,
    },
    /// Another live process is working on the sandbox right now.
    #[error("sandbox {id} is being worked on by another process ({owner}); try again shortly")]
    Busy {
        /// The sandbox.
        id: String,
        /// The instance working on it.
        owner: String,
    },
    /// The extension that serves the sandbox is not loaded; the sandbox stays tracked
    /// so a later destroy (or reconciliation) can finish once it is back.
    #[error(
        "sandbox {id} runs on extension {extension:?}, which is not loaded (its file is gone?); the sandbox is still tracked, retry when the extension is back"
    )]
    ExtensionMissing {
        /// The sandbox.
        id: String,
        /// The extension id recorded in its status.
        extension: String,
    },
    /// The extension failed while destroying, metering or checking a sandbox; the sandbox
    /// stays tracked for a retry.
    #[error("sandbox {id}: {error}")]
    Extension {
        /// The sandbox.
        id: String,
        /// The failed call.
        error: ExtensionError,
    },
    /// Running a command or moving a file in a running sandbox failed (a bad path, a
    /// missing file, a backend without exec, the backend down…). Nothing changed on the
    /// host's side; the error's fault says whose it was.
    #[error("sandbox {id}: {error}")]
    Session {
        /// The sandbox.
        id: String,
        /// The failed call.
        error: ExtensionError,
    },
    /// The extension's meter reading cannot be settled (e.g. another currency than the
    /// hold); the sandbox stays in `destroying` for an operator to look at.
    #[error("sandbox {id}: meter reading refused: {reason}")]
    BadMeter {
        /// The sandbox.
        id: String,
        /// Why.
        reason: String,
    },
    /// The idempotency key was used before for a different request.
    #[error(
        "idempotency key {key:?} was already used by tenant {tenant:?} for a different create request (sandbox {sandbox_id})"
    )]
    IdempotencyConflict {
        /// The tenant.
        tenant: String,
        /// The key.
        key: String,
        /// The sandbox created with it.
        sandbox_id: String,
    },
    /// An idempotency key that cannot be stored.
    #[error("invalid idempotency key {0:?}: use 1 to 200 printable characters")]
    InvalidKey(String),
    /// The status store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A meter event could not be built.
    #[error(transparent)]
    Event(#[from] EventError),
    /// Manager set-up failed (state folder not writable, …).
    #[error("sandbox manager: {0}")]
    Setup(String),
}

impl ManagerError {
    /// Whether the caller named something that does not exist (404 for the HTTP API).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ManagerError::NotFound { .. } | ManagerError::UnknownProfile { .. }
        )
    }
}
