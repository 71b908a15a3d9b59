//! E2B's REST API (`POST /sandboxes`, `GET`/`DELETE /sandboxes/{id}`) with `X-API-Key`,
//! and the mapping of its answers (and of transport failures) onto the contract's errors.

use guest_kit::http::{self, ErrorCode, Failure, Method, Request, Response};
use serde::Deserialize;

use crate::config::Config;
use crate::exports::sandboxer::extension::backend::BackendError;

/// The largest answer read from E2B's API.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_code: Option<String>,
}

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// Maps an HTTP answer that is not the expected success onto the contract's error variant,
/// so the router fails over only on what is retryable.
pub fn api_error(what: &str, status: u16, body: &[u8]) -> BackendError {
    let parsed: Option<ApiError> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .map(|e| e.message.as_str())
        .filter(|m| !m.is_empty())
        .unwrap_or("no message");
    let capacity = parsed.as_ref().and_then(|e| e.error_code.as_deref())
        == Some("sandbox_capacity_unavailable");
    let text = format!("E2B {what} answered {status}: {message}");
    match status {
        _ if capacity => BackendError::CapacityExhausted(text),
        429 => BackendError::CapacityExhausted(text),
        400 | 409 | 422 => BackendError::InvalidRequest(text),
        401 | 403 => BackendError::Unauthorized(text),
        404 | 410 => BackendError::NotFound(text),
        500..=599 => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

/// The contract's error for a failure below HTTP of `what`; `grant` says which setting
/// names the host (for the message when the host denied the request).
pub fn transport_error(what: &str, grant: &str, failure: Failure) -> BackendError {
    match failure {
        Failure::Transport(ErrorCode::HttpRequestDenied) => BackendError::Unavailable(format!(
            "E2B {what}: request denied by the host ({grant} not in allowed_outbound_hosts)"
        )),
        Failure::Transport(
            code @ (ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::DnsTimeout),
        ) => BackendError::Unavailable(format!("E2B {what} timed out ({code:?})")),
        Failure::Transport(code) => {
            BackendError::Unavailable(format!("E2B {what} failed: {code:?}"))
        }
        Failure::Protocol(msg) => BackendError::Unavailable(format!("E2B {what}: {msg}")),
    }
}

/// One API call: `Ok` with the answer when its status is in `expect`, else the mapped error.
pub fn call(
    cfg: &Config,
    method: Method,
    what: &str,
    path: &str,
    body: Option<&[u8]>,
    expect: &[u16],
) -> Result<Response, BackendError> {
    let base = cfg.base_url().map_err(internal)?;
    let key = cfg.api_key().ok_or_else(|| {
        BackendError::Unauthorized(
            "no api_key configured (grant it under [secrets] in the sidecar)".into(),
        )
    })?;
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("x-api-key", key.as_bytes()),
        ("accept", b"application/json"),
        ("user-agent", b"sandboxer-e2b/0.1"),
    ];
    if body.is_some() {
        headers.push(("content-type", b"application/json"));
    }
    let request = Request {
        method,
        base: &base,
        path,
        headers: &headers,
        body,
    };
    let response =
        http::send(&request, MAX_ANSWER).map_err(|f| transport_error(what, "base_url", f))?;
    if expect.contains(&response.status) {
        Ok(response)
    } else {
        Err(api_error(what, response.status, &response.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_onto_retryable_and_final_errors() {
        let capacity = br#"{"code":429,"message":"x","error_code":"sandbox_capacity_unavailable"}"#;
        assert!(matches!(
            api_error("POST /sandboxes", 400, capacity),
            BackendError::CapacityExhausted(_)
        ));
        assert!(matches!(
            api_error("x", 429, b""),
            BackendError::CapacityExhausted(_)
        ));
        assert!(matches!(
            api_error("x", 401, b""),
            BackendError::Unauthorized(_)
        ));
        assert!(matches!(
            api_error("x", 404, b""),
            BackendError::NotFound(_)
        ));
        assert!(matches!(
            api_error("x", 503, b""),
            BackendError::Unavailable(_)
        ));
        assert!(matches!(
            api_error("x", 418, b""),
            BackendError::Internal(_)
        ));
        let denied = transport_error(
            "POST /sandboxes",
            "base_url",
            Failure::Transport(ErrorCode::HttpRequestDenied),
        );
        assert!(
            matches!(&denied, BackendError::Unavailable(m) if m.contains("denied") && m.contains("base_url"))
        );
        let slow = transport_error(
            "x",
            "base_url",
            Failure::Transport(ErrorCode::ConnectionReadTimeout),
        );
        assert!(matches!(&slow, BackendError::Unavailable(m) if m.contains("timed out")));
    }
}
