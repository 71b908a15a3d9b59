//! The agent's HTTP API (docs/agent.md): parse, call the [`Agent`], render. Every route
//! needs `Authorization: Bearer TOKEN`; every error is `{"error": {"code", "message"}}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::manager::{Agent, AgentError};
use crate::wire::{
    CreateRequest, Destroyed, ErrorBody, ErrorDetail, ExecRequest, Listing, SandboxList, Started,
    StdinRequest,
};

/// The longest `wait_ms` of an output read.
pub const MAX_WAIT_MS: u64 = 60_000;

/// The router's state.
#[derive(Clone)]
pub struct Api {
    agent: Arc<Agent>,
    token: Arc<str>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let (status, code) = match &e {
            AgentError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AgentError::Capacity(_) => (StatusCode::SERVICE_UNAVAILABLE, "capacity_exhausted"),
            AgentError::Unsupported(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
            AgentError::NoSpace(_) => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            AgentError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

type Answer<T> = Result<T, ApiError>;

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Reads a body of at most `limit` bytes; a longer one is refused with `too_large`.
/// Up to how many bytes of a refused (over-size) upload are read and dropped before the 413,
/// so that the client gets the answer rather than a reset connection.
const DRAIN_REFUSED_BYTES: u64 = 16 * 1024 * 1024;

async fn body_bytes(body: Body, limit: u64, what: &str) -> Answer<Bytes> {
    axum::body::to_bytes(body, limit as usize).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{what} of more than {limit} bytes refused (the agent's max_file_bytes); send it \
                 in several parts"
            ),
        )
    })
}

async fn body_json<T: for<'de> Deserialize<'de>>(body: Body, limit: u64) -> Answer<T> {
    let bytes = body_bytes(body, limit, "a request body").await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Answer<T> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::invalid(format!("query: {}", e.body_text())))
}

/// Compares in time independent of where the first difference is.
fn same_token(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    diff == 0
}

async fn auth(State(api): State<Api>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same_token(given.as_bytes(), api.token.as_bytes()) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        )
        .into_response();
    }
    next.run(req).await
}

/// The API's routes over `agent`, guarded by `token`.
pub fn router(agent: Arc<Agent>, token: String) -> Router {
    let api = Api {
        agent,
        token: token.into(),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{id}", get(status).delete(destroy))
        .route("/v1/sandboxes/{id}/exec", post(exec))
        .route("/v1/sandboxes/{id}/processes", post(start))
        .route("/v1/sandboxes/{id}/processes/{pid}/output", get(output))
        .route("/v1/sandboxes/{id}/processes/{pid}/stdin", post(stdin))
        .route("/v1/sandboxes/{id}/processes/{pid}/kill", post(kill))
        .route("/v1/sandboxes/{id}/files", get(read_file).put(write_file))
        .route("/v1/sandboxes/{id}/dir", get(list_dir))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint (see docs/agent.md)",
            )
        })
        .layer(middleware::from_fn_with_state(api.clone(), auth))
        // Bodies are read with explicit limits by the handlers (JSON errors, not text).
        .layer(DefaultBodyLimit::disable())
        .with_state(api)
}

fn json_limit(api: &Api) -> u64 {
    // Base64 of the largest stdin, plus room for the rest of the request.
    api.agent.config().max_file_bytes / 3 * 4 + 64 * 1024
}

async fn health(State(api): State<Api>) -> Response {
    json(StatusCode::OK, &api.agent.health())
}

async fn list(State(api): State<Api>) -> Response {
    json(
        StatusCode::OK,
        &SandboxList {
            sandboxes: api.agent.list(),
        },
    )
}

async fn create(State(api): State<Api>, body: Body) -> Answer<Response> {
    let req: CreateRequest = body_json(body, 1 << 20).await?;
    let (created, info) = api.agent.create(req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &info))
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Answer<Response> {
    Ok(json(StatusCode::OK, &api.agent.info(&id)?))
}

async fn destroy(State(api): State<Api>, Path(id): Path<String>) -> Answer<Response> {
    let usage = api.agent.destroy(&id).await?;
    Ok(json(StatusCode::OK, &Destroyed { id, usage }))
}

async fn exec(State(api): State<Api>, Path(id): Path<String>, body: Body) -> Answer<Response> {
    let req: ExecRequest = body_json(body, json_limit(&api)).await?;
    if req.keep_stdin_open {
        return Err(ApiError::invalid(
            "keep_stdin_open is for started processes (POST …/processes)",
        ));
    }
    let live = api.agent.live(&id)?;
    let out = live.exec(&req).await?;
    Ok(json(StatusCode::OK, &out))
}

async fn start(State(api): State<Api>, Path(id): Path<String>, body: Body) -> Answer<Response> {
    let req: ExecRequest = body_json(body, json_limit(&api)).await?;
    let live = api.agent.live(&id)?;
    let (pid, _) = live.start_process(&req)?;
    Ok(json(
        StatusCode::CREATED,
        &Started {
            process_id: format!("p{pid}"),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    max_bytes: Option<u64>,
}

async fn output(
    State(api): State<Api>,
    Path((id, pid)): Path<(String, String)>,
    q: Result<Query<OutputQuery>, QueryRejection>,
) -> Answer<Response> {
    let q = query(q)?;
    let live = api.agent.live(&id)?;
    let (_, proc) = live.process(&pid)?;
    let max = q
        .max_bytes
        .unwrap_or(1 << 20)
        .min(api.agent.config().max_output_bytes) as usize;
    let out = proc
        .read(
            &q.cursor,
            Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS)),
            max,
        )
        .await?;
    Ok(json(StatusCode::OK, &out))
}

async fn stdin(
    State(api): State<Api>,
    Path((id, pid)): Path<(String, String)>,
    body: Body,
) -> Answer<Response> {
    let req: StdinRequest = body_json(body, json_limit(&api)).await?;
    api.agent
        .live(&id)?
        .write_stdin(&pid, req.data, req.close)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kill(State(api): State<Api>, Path((id, pid)): Path<(String, String)>) -> Answer<Response> {
    api.agent.live(&id)?.kill(&pid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    path: String,
    #[serde(default)]
    append: bool,
}

async fn write_file(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<WriteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Answer<Response> {
    let q = query(q)?;
    let limit = api.agent.config().max_file_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        // Read the refused body away first (when it is not huge): a client still writing it
        // when the answer comes and the connection closes sees a broken pipe instead of the 413.
        if n <= limit.saturating_mul(4).max(DRAIN_REFUSED_BYTES) {
            let _ = axum::body::to_bytes(body, usize::try_from(n).unwrap_or(usize::MAX)).await;
        }
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an upload of {} bytes is over the agent's max_file_bytes ({limit}); send it in \
                 parts with append=true",
                n
            ),
        ));
    }
    let live = api.agent.live(&id)?;
    let data = body_bytes(body, limit, "an upload").await?;
    live.write_file(&q.path, data.to_vec(), q.append).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    path: String,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    max_bytes: Option<u64>,
}

async fn read_file(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<ReadQuery>, QueryRejection>,
) -> Answer<Response> {
    let q = query(q)?;
    let limit = api.agent.config().max_file_bytes;
    let max = q
        .max_bytes
        .unwrap_or(limit)
        .min(limit)
        .min(u64::from(u32::MAX)) as u32;
    let live = api.agent.live(&id)?;
    let (data, size) = live.read_file(&q.path, q.offset, max).await?;
    let mut resp = (StatusCode::OK, data).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        h.insert("x-file-size", v);
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirQuery {
    #[serde(default)]
    path: String,
}

async fn list_dir(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<DirQuery>, QueryRejection>,
) -> Answer<Response> {
    let q = query(q)?;
    let live = api.agent.live(&id)?;
    let entries = live.list(&q.path).await?;
    Ok(json(StatusCode::OK, &Listing { entries }))
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"abcdef0123456789", b"abcdef0123456789"));
        assert!(!same_token(b"abcdef012345678", b"abcdef0123456789"));
        assert!(!same_token(b"abcdef01234567890", b"abcdef0123456789"));
        assert!(!same_token(b"", b"abcdef0123456789"));
        assert!(!same_token(b"Abcdef0123456789", b"abcdef0123456789"));
    }
}
