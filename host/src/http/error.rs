//! The one error shape of the HTTP API: `{"error": {"code", "message", …details}}`, and
//! the one mapping from the app's errors to statuses and codes (docs/api.md, "Errors").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::app::AppError;

/// An error answer: status, a stable machine-readable code, a human message, and
/// details merged into the `error` object (`field`, `need`/`available`, `candidates`).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `insufficient_credits`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Extra keys of the `error` object.
    pub details: Map<String, Value>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail key.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400, naming the offending field when known.
    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        let e = Self::new(StatusCode::BAD_REQUEST, "bad_request", message);
        match field {
            Some(f) if !f.is_empty() && f != "." => e.with("field", f),
            _ => e,
        }
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated, but this token may not do that.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 (also for another tenant's sandbox: its existence is not revealed).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id:?} not found"),
        )
        .with("id", id)
    }

    /// 409.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500: the message is logged in full and answered generically (it may carry paths).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the host's log",
        )
    }

    /// The body as a JSON value.
    pub fn body(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("code".into(), Value::from(self.code));
        obj.insert("message".into(), Value::from(self.message.clone()));
        for (k, v) in &self.details {
            obj.insert(k.clone(), v.clone());
        }
        json!({ "error": Value::Object(obj) })
    }
}

/// The body of every error answer, as the OpenAPI document describes it
/// ([`ApiError::body`] writes it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// The `error` object: a stable `code`, a `message` for people, and the details some
/// codes carry (docs/api.md, "Errors").
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorObject {
    /// Stable and machine-readable: `bad_request`, `body_too_large`, `unauthorized`,
    /// `forbidden`, `not_found`, `method_not_allowed`, `insufficient_credits`,
    /// `idempotency_conflict`, `wrong_state`, `busy`, `conflict`, `own_key_required`,
    /// `no_backend_available`, `create_failed`, `extension_missing`, `extension_failed`,
    /// `bad_meter`, `unsupported`, `backend_unavailable`, `secret_store_unavailable`,
    /// `metrics_unavailable`, `internal`.
    #[schema(example = "bad_request")]
    pub code: String,
    /// What went wrong, for people.
    #[schema(example = "invalid field vcpus: invalid type: string \"two\", expected u32")]
    pub message: String,
    /// `bad_request`: the offending field or parameter, when known.
    #[schema(required = false, example = "vcpus")]
    pub field: Option<String>,
    /// `not_found`: the id asked for.
    #[schema(required = false)]
    pub id: Option<String>,
    /// `insufficient_credits`: the amount to hold.
    #[schema(required = false)]
    pub need: Option<crate::domain::Money>,
    /// `insufficient_credits`: what is available now.
    #[schema(required = false)]
    pub available: Option<crate::domain::Money>,
    /// `wrong_state`: the sandbox's state.
    #[schema(required = false)]
    pub state: Option<crate::domain::SandboxState>,
    /// `no_backend_available`, `own_key_required`: every candidate and its fate.
    #[schema(required = false)]
    pub candidates: Option<Vec<crate::domain::CandidateReport>>,
    /// `own_key_required`: the candidates that take a tenant's own key.
    #[schema(required = false)]
    pub extensions: Option<Vec<String>>,
    /// `create_failed`: the sandbox as recorded (state `failed`).
    #[schema(required = false)]
    pub sandbox: Option<Box<crate::domain::SandboxStatus>>,
}

fn to_value(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        match e {
            AppError::Invalid { field, .. } => Self::bad_request(field.as_deref(), message),
            AppError::InsufficientCredits {
                need, available, ..
            } => Self::new(
                S::PAYMENT_REQUIRED,
                "insufficient_credits",
                format!("{message}; ask the operator to add credits"),
            )
            .with("need", to_value(&need))
            .with("available", to_value(&available)),
            AppError::NoCredits { .. } => Self::new(
                S::PAYMENT_REQUIRED,
                "insufficient_credits",
                format!("{message}; ask the operator to add credits"),
            ),
            AppError::NotFound { id } => Self::not_found("sandbox", &id),
            AppError::IdempotencyConflict { .. } => Self::conflict("idempotency_conflict", message),
            AppError::WrongState { state, .. } => {
                Self::conflict("wrong_state", message).with("state", state.as_str())
            }
            AppError::Busy { .. } => Self::conflict("busy", message),
            AppError::Conflict { .. } => Self::conflict("conflict", message),
            AppError::NoRoute { candidates, .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "no_backend_available", message)
                    .with("candidates", to_value(&candidates))
            }
            AppError::OwnKeyRequired {
                extensions,
                candidates,
                ..
            } => Self::conflict("own_key_required", message)
                .with("extensions", to_value(&extensions))
                .with("candidates", to_value(&candidates)),
            AppError::CreateFailed { status, .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "create_failed", message)
                    .with("sandbox", to_value(&status))
            }
            AppError::ExtensionMissing { .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "extension_missing", message)
            }
            AppError::ExtensionFailed { .. } => {
                Self::new(S::BAD_GATEWAY, "extension_failed", message)
            }
            AppError::Missing { .. } => Self::new(S::NOT_FOUND, "not_found", message),
            AppError::Unsupported { .. } => Self::new(S::NOT_IMPLEMENTED, "unsupported", message),
            AppError::Unavailable { .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "backend_unavailable", message)
            }
            AppError::BadMeter { .. } => Self::new(S::BAD_GATEWAY, "bad_meter", message),
            AppError::SecretStore { .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "secret_store_unavailable", message)
            }
            AppError::NoLedger { .. } | AppError::Open { .. } | AppError::Internal { .. } => {
                Self::internal(message)
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = (status, axum::Json(self.body())).into_response();
        if self.code == "body_too_large" {
            // The rest of the body is not read, so this connection cannot carry another
            // request: say so, or a client may reuse it and see it cut.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"sandboxer\""),
            );
        }
        resp
    }
}
