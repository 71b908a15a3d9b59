//! The agent's one error type: each case maps to an HTTP status and code in [`crate::api`].

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Capacity(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for AgentError {
    fn from(e: crate::store::StoreError) -> Self {
        AgentError::Internal(e.to_string())
    }
}
