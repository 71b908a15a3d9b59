//! Exec and files in a running sandbox: `POST /v1/sandboxes/{id}/exec` (JSON, or NDJSON
//! streamed with `Accept: application/x-ndjson`), `PUT`/`GET
//! /v1/sandboxes/{id}/files/{path}` (raw bytes) and `GET …/files/{dir}?list`. Parse, call
//! the app, render (docs/api.md, "Exec and files").

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::auth::Auth;
use super::error::ApiError;
use super::error::ErrorBody;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{AppState, call};
use crate::app::{AppError, ExecAnswer, ExecEvent, ExecSink, FileList, FileWritten};
use crate::domain::{Command, ExecRequest, Scope};

/// The largest exec request body (its `stdin` included): 2 MiB.
pub const MAX_EXEC_BODY_BYTES: usize = 2 << 20;

/// The NDJSON media type of a streamed exec.
const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/sandboxes/{id}/exec` body: `argv` or `shell`, and the rest optional.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"argv": ["python3", "-c", "print(6*7)"]}))]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// A program and its arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// A line for `/bin/sh -c`.
    pub shell: Option<String>,
    /// Environment variables on top of the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working folder (relative to the workspace).
    pub cwd: Option<String>,
    /// Standard input, as text.
    pub stdin: Option<String>,
    /// Standard input, as base64 (for bytes that are not text).
    pub stdin_b64: Option<String>,
    /// Killed after this many milliseconds (default 60 000, at most 3 600 000).
    #[schema(maximum = 3_600_000)]
    pub timeout_ms: Option<u64>,
    /// The most bytes kept per stream (default 1 MiB, at most 16 MiB).
    #[schema(maximum = 16_777_216)]
    pub output_limit_bytes: Option<u64>,
}

impl ExecBody {
    /// The request, or a 400 naming the field.
    pub fn into_request(self) -> Result<ExecRequest, ApiError> {
        let command = match (self.argv, self.shell) {
            (Some(a), None) => Command::Argv(a),
            (None, Some(s)) => Command::Shell(s),
            _ => {
                return Err(ApiError::bad_request(
                    Some("argv"),
                    "give exactly one of argv (a list: [\"python3\", \"-c\", \"print(6*7)\"]) or shell (a line for /bin/sh -c)",
                ));
            }
        };
        let stdin = match (self.stdin, self.stdin_b64) {
            (None, None) => Vec::new(),
            (Some(t), None) => t.into_bytes(),
            (None, Some(b)) => B64.decode(b.as_bytes()).map_err(|e| {
                ApiError::bad_request(Some("stdin_b64"), format!("stdin_b64 is not base64: {e}"))
            })?,
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    Some("stdin"),
                    "give stdin or stdin_b64, not both",
                ));
            }
        };
        Ok(ExecRequest {
            command,
            env: self.env.into_iter().collect(),
            cwd: self.cwd,
            stdin,
            keep_stdin_open: false,
            timeout_ms: self.timeout_ms.unwrap_or(0),
            output_limit_bytes: self.output_limit_bytes.unwrap_or(0),
        })
    }
}

fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().starts_with(NDJSON)))
}

/// Runs a command in a running sandbox to its end (at most its timeout); with `Accept:
/// application/x-ndjson`, streams its events as it runs (`POST /v1/sandboxes/{id}/exec`).
#[utoipa::path(
    post,
    path = "/v1/sandboxes/{id}/exec",
    tag = "exec and files",
    security(("tenant" = [])),
    params(("id" = String, Path, description = "The sandbox id (`sb-…`).")),
    request_body = ExecBody,
    responses(
        (status = 200, description = "How the command ended and what it printed; with `Accept: application/x-ndjson`, one event per line as it runs.", content(
            (ExecAnswer = "application/json"),
            (ExecEvent = "application/x-ndjson")
        )),
        (status = 400, description = "A body that is not JSON, an unknown or mistyped field (named in `field`), a value out of range, or a body over the limit (`bad_request`, `body_too_large`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox for this tenant (`not_found`; another tenant's is not revealed).", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`wrong_state`, with `state`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 501, description = "Its backend cannot do this (`unsupported`).", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn exec(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ApiError> {
    let scope = auth.tenant().map(Scope::Tenant)?;
    let request = body.into_request()?;
    if !wants_stream(&headers) {
        return call(&s, StatusCode::OK, move |app| {
            app.exec(&scope, &id, request)
        })
        .await
        .map(IntoResponse::into_response);
    }
    // The command runs on the blocking pool and sends its events here; the first one
    // decides the answer: an error before anything ran is a plain error response.
    let (tx, mut rx) = mpsc::channel::<Result<ExecEvent, AppError>>(16);
    let app = s.app.clone();
    tokio::task::spawn_blocking(move || {
        let mut sink = ChannelSink(tx.clone());
        if let Err(e) = app.exec_streamed(&scope, &id, request, &mut sink) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    match rx.recv().await {
        None => Err(ApiError::internal("the exec task ended without an answer")),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(first)) => {
            let body = Body::new(NdjsonBody {
                first: Some(first),
                rx,
            });
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, NDJSON)], body).into_response())
        }
    }
}

struct ChannelSink(mpsc::Sender<Result<ExecEvent, AppError>>);

impl ExecSink for ChannelSink {
    fn send(&mut self, event: ExecEvent) -> bool {
        self.0.blocking_send(Ok(event)).is_ok()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// One line per event; an error after the start is a last `{"type":"error"}` line.
struct NdjsonBody {
    first: Option<ExecEvent>,
    rx: mpsc::Receiver<Result<ExecEvent, AppError>>,
}

fn line(item: Result<ExecEvent, AppError>) -> Bytes {
    let mut text = match item {
        Ok(event) => serde_json::to_string(&event).unwrap_or_default(),
        Err(e) => {
            let api = ApiError::from(e);
            serde_json::json!({"type": "error", "code": api.code, "message": api.message})
                .to_string()
        }
    };
    text.push('\n');
    Bytes::from(text)
}

impl http_body::Body for NdjsonBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(line(Ok(first))))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(http_body::Frame::data(line(item))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `?list` on a files URL.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FilesQuery {
    /// Present (any value, or none): list the folder instead of reading a file.
    list: Option<String>,
}

/// Writes a file in a running sandbox: the body is the file (parents created, an existing
/// file replaced).
#[utoipa::path(
    put,
    path = "/v1/sandboxes/{id}/files/{path}",
    tag = "exec and files",
    security(("tenant" = [])),
    params(
        ("id" = String, Path, description = "The sandbox id (`sb-…`)."),
        ("path" = String, Path, description = "The file, relative to the workspace (it may hold `/`); parents are created.", example = "data/in.txt")
    ),
    request_body(content = String, content_type = "application/octet-stream", description = "The file's bytes (at most the host's `max_file_bytes`)."),
    responses(
        (status = 201, description = "Written.", body = FileWritten),
        (status = 400, description = "A bad path (`bad_request`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox for this tenant (`not_found`; another tenant's is not revealed).", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`wrong_state`, with `state`).", body = ErrorBody),
        (status = 413, description = "The file is over the host's `max_file_bytes` (`body_too_large`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 501, description = "Its backend cannot do this (`unsupported`).", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn put_file(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, path)): ApiPath<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = auth.tenant().map(Scope::Tenant)?;
    let max = s.app.max_file_bytes();
    let data = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the file is over the host's max_file_bytes ({max} bytes)"),
            )
        } else {
            ApiError::bad_request(None, format!("cannot read the file: {}", e.body_text()))
        }
    })?;
    call(&s, StatusCode::CREATED, move |app| {
        app.write_file(&scope, &id, &path, &data)
    })
    .await
}

/// Reads a file of a running sandbox (its bytes); with `?list`, lists the folder.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files/{path}",
    tag = "exec and files",
    security(("tenant" = [])),
    params(
        ("id" = String, Path, description = "The sandbox id (`sb-…`)."),
        ("path" = String, Path, description = "The file or folder, relative to the workspace (it may hold `/`).", example = "data/out.txt"),
        FilesQuery
    ),
    responses(
        (status = 200, description = "The file's bytes; with `?list`, the folder's entries.", content(
            (String = "application/octet-stream"),
            (FileList = "application/json")
        )),
        (status = 400, description = "A bad path (`bad_request`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox, file or folder (`not_found`).", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`wrong_state`, with `state`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 501, description = "Its backend cannot do this (`unsupported`).", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn get_file(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath((id, path)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Response, ApiError> {
    read_or_list(s, auth, id, path, q).await
}

/// Lists the workspace of a running sandbox (`?list` is required).
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}/files",
    tag = "exec and files",
    security(("tenant" = [])),
    params(("id" = String, Path, description = "The sandbox id (`sb-…`)."), FilesQuery),
    responses(
        (status = 200, description = "The workspace's entries (`?list`; also at `…/files/`).", body = FileList),
        (status = 400, description = "No `?list`: name a file (`bad_request`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox for this tenant (`not_found`; another tenant's is not revealed).", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`wrong_state`, with `state`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 501, description = "Its backend cannot do this (`unsupported`).", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn get_root(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Response, ApiError> {
    read_or_list(s, auth, id, String::new(), q).await
}

async fn read_or_list(
    s: AppState,
    auth: Auth,
    id: String,
    path: String,
    q: FilesQuery,
) -> Result<Response, ApiError> {
    let scope = auth.tenant().map(Scope::Tenant)?;
    let path = path.trim_end_matches('/').to_owned();
    if q.list.is_some() {
        return call(&s, StatusCode::OK, move |app| {
            app.list_files(&scope, &id, &path)
        })
        .await
        .map(IntoResponse::into_response);
    }
    if path.is_empty() {
        return Err(ApiError::bad_request(
            Some("path"),
            "name a file (…/files/data/out.txt), or add ?list to list the folder",
        ));
    }
    let app = s.app.clone();
    let data = tokio::task::spawn_blocking(move || app.read_file(&scope, &id, &path))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))??;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        data,
    )
        .into_response())
}
