//! The fake's envd: what E2B runs inside every sandbox, served on its own loopback port for
//! all the fake's sandboxes (the sandbox is picked by the `E2b-Sandbox-Id` header, or by a
//! `Host` of the form `49983-<sandboxID>.<domain>`, as E2B's proxy does).
//!
//! It follows `ref/e2b-envd/` (`process.proto`, `filesystem.proto`, `envd.yaml`) and envd's
//! behaviour: Connect-RPC with the JSON codec, `process.Process/Start` streaming start,
//! data and end events (keep-alives at `Keepalive-Ping-Interval`, the command killed at
//! `Connect-Timeout-Ms`, the command left running when the client goes away, output kept
//! for nobody), `SendInput`, `CloseStdin`, `SendSignal`, `List`;
//! `filesystem.Filesystem/ListDir`, `Move`, `Stat`; `GET /files` (with `Range`, as
//! `http.ServeContent` serves it), `POST /files` (multipart or raw), `POST /files/compose`.
//! A secured sandbox needs its `X-Access-Token` on every call but `/health`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use fake_worker::{ExecSpec, Fd, Process, SandboxFs};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{RecordedRequest, Shared};

/// The port envd listens on in a sandbox.
pub const ENVD_PORT: u16 = 49983;

/// One sandbox's envd state.
pub(crate) struct EnvdState {
    pub(crate) fs: Arc<SandboxFs>,
    pub(crate) processes: BTreeMap<u32, Started>,
    pub(crate) env: BTreeMap<String, String>,
}

/// A process started through `Start`.
#[derive(Clone)]
pub(crate) struct Started {
    pub(crate) process: Process,
    pub(crate) tag: Option<String>,
    pub(crate) config: Value,
}

impl EnvdState {
    /// A fresh sandbox filesystem (home `/home/user`) with `env` as its global environment.
    pub(crate) fn new(env: BTreeMap<String, String>) -> std::io::Result<EnvdState> {
        Ok(EnvdState {
            fs: Arc::new(SandboxFs::new("/home/user")?),
            processes: BTreeMap::new(),
            env,
        })
    }

    /// Kills every process (the sandbox is gone).
    pub(crate) fn shut_down(&self) {
        for p in self.processes.values() {
            p.process.kill(libc::SIGKILL);
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .route("/process.Process/Start", post(start))
        .route("/files", get(download).post(upload))
        .route("/files/compose", post(compose))
        .route("/{service}/{method}", post(rpc))
        .with_state(shared)
}

/// A Connect error answer of a unary call.
fn connect_error(code: &str, message: &str) -> Response {
    let status = match code {
        "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "already_exists" => StatusCode::CONFLICT,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// envd's REST error body (`{"message", "code"}`).
fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "message": message, "code": status.as_u16() })),
    )
        .into_response()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The sandbox a request is for.
fn sandbox_id(headers: &HeaderMap) -> Option<String> {
    if let Some(id) = headers.get("e2b-sandbox-id").and_then(|v| v.to_str().ok()) {
        return Some(id.to_owned());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let first = host.split('.').next()?;
    let (port, id) = first.split_once('-')?;
    (port == ENVD_PORT.to_string()).then(|| id.to_owned())
}

/// The front of every call: delay, sandbox lookup, token check, recording. Returns the
/// sandbox's state or the answer to send instead.
async fn gate(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(String, Arc<SandboxFs>), Response> {
    let delay = shared.inner.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let sent = headers
        .get("x-access-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let id = sandbox_id(headers);
    let mut inner = shared.inner.lock();
    let live = id.as_deref().and_then(|id| crate::live(&mut inner, id));
    let (answer, authorized) = match (&id, live) {
        (None, _) => (
            Some(json_error(
                StatusCode::BAD_REQUEST,
                "missing E2b-Sandbox-Id header",
            )),
            false,
        ),
        (Some(_), None) => (
            // E2B's proxy answers for a sandbox that is gone.
            Some(json_error(
                StatusCode::BAD_GATEWAY,
                "The sandbox was not found: it may have been killed or timed out",
            )),
            false,
        ),
        (Some(_), Some(record)) => match &record.envd_access_token {
            Some(token) if sent.as_deref() != Some(token.as_str()) => {
                let message = match (inner.echo_key, &sent) {
                    (true, Some(t)) => format!("unauthorized access, invalid access token {t}"),
                    _ => "unauthorized access, please provide a valid access token or method signing if supported".to_owned(),
                };
                (Some(json_error(StatusCode::UNAUTHORIZED, &message)), false)
            }
            _ => (None, true),
        },
    };
    inner.requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
        authorized,
        body: None,
        status: answer.as_ref().map_or(0, |r| r.status().as_u16()),
        api_key: None,
        access_token: sent,
        envd: true,
    });
    if let Some(r) = answer {
        return Err(r);
    }
    let id = id.unwrap_or_default();
    match inner.envd.get(&id) {
        Some(state) => Ok((id, state.fs.clone())),
        None => Err(json_error(
            StatusCode::BAD_GATEWAY,
            "The sandbox was not found",
        )),
    }
}

#[derive(Deserialize, Default)]
struct ProcessConfig {
    cmd: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Deserialize)]
struct StartRequest {
    process: ProcessConfig,
    #[serde(default)]
    stdin: Option<bool>,
    #[serde(default)]
    tag: Option<String>,
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

fn event(ev: Value) -> Bytes {
    envelope(0, json!({ "event": ev }).to_string().as_bytes())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A stream that ends at once with a Connect error.
fn stream_error(code: &str, message: &str) -> Response {
    let end = json!({ "error": { "code": code, "message": message } });
    streaming(vec![envelope(2, end.to_string().as_bytes())])
}

fn streaming(frames: Vec<Bytes>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(frames.len().max(1));
    for f in frames {
        let _ = tx.try_send(Ok(f));
    }
    streaming_from(rx)
}

fn streaming_from(rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

async fn start(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, fs) = match gate(&shared, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if body.len() < 5 {
        return stream_error(
            "invalid_argument",
            "the request is not an enveloped message",
        );
    }
    let req: StartRequest = match serde_json::from_slice(&body[5..]) {
        Ok(r) => r,
        Err(e) => return stream_error("invalid_argument", &format!("unreadable request: {e}")),
    };
    let env = shared
        .inner
        .lock()
        .envd
        .get(&id)
        .map(|s| s.env.clone())
        .unwrap_or_default();
    let mut all_env: Vec<(String, String)> = env.into_iter().collect();
    all_env.extend(req.process.envs.clone());
    let spec = ExecSpec {
        argv: std::iter::once(req.process.cmd.clone())
            .chain(req.process.args.iter().cloned())
            .collect(),
        env: all_env,
        cwd: req.process.cwd.clone().filter(|c| !c.is_empty()),
        timeout: header_u64(&headers, "connect-timeout-ms")
            .filter(|t| *t > 0)
            .map(Duration::from_millis),
    };
    let process = match Process::spawn(&fs, &spec) {
        Ok(p) => p,
        Err(e) => return stream_error("invalid_argument", &e.to_string()),
    };
    if !req.stdin.unwrap_or(true) {
        let _ = process.write_stdin(0, &[], true).await;
    }
    let pid = process.pid();
    let config = json!({
        "cmd": req.process.cmd,
        "args": req.process.args,
        "envs": req.process.envs,
        "cwd": req.process.cwd,
    });
    if let Some(state) = shared.inner.lock().envd.get_mut(&id) {
        state.processes.insert(
            pid,
            Started {
                process: process.clone(),
                tag: req.tag.clone(),
                config,
            },
        );
    }
    let keepalive = Duration::from_secs(
        header_u64(&headers, "keepalive-ping-interval")
            .unwrap_or(30)
            .max(1),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        // A client that goes away ends this task, not the process (as envd does).
        if tx
            .send(Ok(event(json!({ "start": { "pid": pid } }))))
            .await
            .is_err()
        {
            return;
        }
        let (mut out_at, mut err_at) = (0u64, 0u64);
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            let frame = tokio::select! {
                (data, eof) = process.read_more(Fd::Stdout, out_at), if !out_done => {
                    out_at += data.len() as u64;
                    out_done = eof && data.is_empty();
                    (!data.is_empty()).then(|| event(json!({ "data": { "stdout": b64(&data) } })))
                }
                (data, eof) = process.read_more(Fd::Stderr, err_at), if !err_done => {
                    err_at += data.len() as u64;
                    err_done = eof && data.is_empty();
                    (!data.is_empty()).then(|| event(json!({ "data": { "stderr": b64(&data) } })))
                }
                () = tokio::time::sleep(keepalive) => Some(event(json!({ "keepalive": {} }))),
            };
            if let Some(f) = frame
                && tx.send(Ok(f)).await.is_err()
            {
                return;
            }
        }
        let exit = process.wait().await;
        let end = match (exit.code, exit.signal) {
            (Some(code), _) => {
                json!({ "exitCode": code, "exited": true, "status": format!("exit status {code}") })
            }
            (None, sig) => json!({
                "exitCode": -1,
                "exited": false,
                "status": if sig == Some(libc::SIGKILL) { "signal: killed".to_owned() } else { format!("signal: {}", sig.unwrap_or(0)) },
            }),
        };
        if tx.send(Ok(event(json!({ "end": end })))).await.is_ok() {
            let _ = tx.send(Ok(envelope(2, b"{}"))).await;
        }
    });
    streaming_from(rx)
}

#[derive(Deserialize)]
struct Selector {
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    tag: Option<String>,
}

fn find(shared: &Shared, id: &str, sel: &Selector) -> Option<Started> {
    let inner = shared.inner.lock();
    let state = inner.envd.get(id)?;
    match (sel.pid, &sel.tag) {
        (Some(pid), _) => state.processes.get(&pid).cloned(),
        (None, Some(tag)) => state
            .processes
            .values()
            .find(|p| p.tag.as_deref() == Some(tag.as_str()) && p.process.exit().is_none())
            .cloned(),
        (None, None) => None,
    }
}

/// A Connect error of a unary call: its code and message.
struct RpcError(&'static str, String);

impl RpcError {
    fn into_response(self) -> Response {
        connect_error(self.0, &self.1)
    }
}

type Rpc = Result<Value, RpcError>;

fn process_not_found(sel: &Selector) -> RpcError {
    RpcError(
        "not_found",
        match (sel.pid, &sel.tag) {
            (Some(pid), _) => format!("process with pid {pid} not found"),
            (None, Some(tag)) => format!("process with tag {tag} not found"),
            _ => "process selector is empty".to_owned(),
        },
    )
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, RpcError> {
    serde_json::from_slice(body)
        .map_err(|e| RpcError("invalid_argument", format!("unreadable request: {e}")))
}

fn resolved(fs: &SandboxFs, path: &str) -> Result<std::path::PathBuf, RpcError> {
    fs.resolve(path)
        .map_err(|e| RpcError("invalid_argument", e.to_string()))
}

/// Every unary Connect call (`POST /<service>/<Method>`, JSON).
async fn rpc(
    State(shared): State<Arc<Shared>>,
    Path((service, name)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, fs) = match gate(&shared, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let answer = async {
        match (service.as_str(), name.as_str()) {
            ("process.Process", "SendInput") => send_input(&shared, &id, parse(&body)?).await,
            ("process.Process", "CloseStdin") => close_stdin(&shared, &id, parse(&body)?).await,
            ("process.Process", "SendSignal") => send_signal(&shared, &id, parse(&body)?),
            ("process.Process", "List") => Ok(list(&shared, &id)),
            ("filesystem.Filesystem", "ListDir") => list_dir(&fs, parse(&body)?),
            ("filesystem.Filesystem", "Stat") => stat(&fs, parse(&body)?),
            ("filesystem.Filesystem", "Move") => move_entry(&fs, parse(&body)?),
            _ => Err(RpcError(
                "unimplemented",
                format!("{service}/{name} is not implemented"),
            )),
        }
    };
    match answer.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct SendInputRequest {
    process: Selector,
    input: Input,
}

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

async fn send_input(shared: &Shared, id: &str, req: SendInputRequest) -> Rpc {
    let p = find(shared, id, &req.process).ok_or_else(|| process_not_found(&req.process))?;
    let data = match req.input.stdin.or(req.input.pty) {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| RpcError("invalid_argument", format!("bad input: {e}")))?,
        None => Vec::new(),
    };
    let (written, closed) = p.process.stdin_status();
    if closed {
        return Err(RpcError(
            "failed_precondition",
            "stdin is not enabled or already closed".into(),
        ));
    }
    p.process
        .write_stdin(written, &data, false)
        .await
        .map_err(|e| RpcError("internal", e.to_string()))?;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct ProcessOnly {
    process: Selector,
}

async fn close_stdin(shared: &Shared, id: &str, req: ProcessOnly) -> Rpc {
    let p = find(shared, id, &req.process).ok_or_else(|| process_not_found(&req.process))?;
    let (written, _) = p.process.stdin_status();
    let _ = p.process.write_stdin(written, &[], true).await;
    Ok(json!({}))
}

#[derive(Deserialize)]
struct SignalRequest {
    process: Selector,
    #[serde(default)]
    signal: Value,
}

fn send_signal(shared: &Shared, id: &str, req: SignalRequest) -> Rpc {
    let p = find(shared, id, &req.process).ok_or_else(|| process_not_found(&req.process))?;
    let signal = match &req.signal {
        Value::String(s) if s == "SIGNAL_SIGKILL" => libc::SIGKILL,
        Value::String(s) if s == "SIGNAL_SIGTERM" => libc::SIGTERM,
        Value::Number(n) if n.as_i64() == Some(9) => libc::SIGKILL,
        Value::Number(n) if n.as_i64() == Some(15) => libc::SIGTERM,
        other => {
            return Err(RpcError(
                "invalid_argument",
                format!("invalid signal {other}"),
            ));
        }
    };
    p.process.kill(signal);
    Ok(json!({}))
}

fn list(shared: &Shared, id: &str) -> Value {
    let inner = shared.inner.lock();
    let processes: Vec<Value> = inner
        .envd
        .get(id)
        .map(|s| {
            s.processes
                .iter()
                .filter(|(_, p)| p.process.exit().is_none())
                .map(|(pid, p)| {
                    let mut v = json!({ "config": p.config, "pid": pid });
                    if let Some(tag) = &p.tag {
                        v["tag"] = Value::String(tag.clone());
                    }
                    v
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "processes": processes })
}

/// An `EntryInfo` as protojson.
fn entry_info(fs: &SandboxFs, host: &std::path::Path) -> std::io::Result<Value> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(host)?;
    let kind = if meta.file_type().is_symlink() {
        "FILE_TYPE_SYMLINK"
    } else if meta.is_dir() {
        "FILE_TYPE_DIRECTORY"
    } else {
        "FILE_TYPE_FILE"
    };
    let modified: DateTime<Utc> = meta.modified().map_or_else(|_| Utc::now(), DateTime::from);
    let mut v = json!({
        "name": host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "type": kind,
        "path": fs.sandbox_path(host).unwrap_or_default(),
        "size": meta.len().to_string(),
        "mode": meta.mode(),
        "permissions": format!("{:o}", meta.mode() & 0o777),
        "owner": "user",
        "group": "user",
        "modifiedTime": rfc3339(modified),
    });
    if meta.file_type().is_symlink()
        && let Ok(t) = std::fs::read_link(host)
    {
        v["symlinkTarget"] = Value::String(t.to_string_lossy().into_owned());
    }
    Ok(v)
}

#[derive(Deserialize)]
struct PathRequest {
    #[serde(default)]
    path: String,
}

fn list_dir(fs: &SandboxFs, req: PathRequest) -> Rpc {
    let host = resolved(fs, if req.path.is_empty() { "~" } else { &req.path })?;
    if !host.exists() {
        return Err(RpcError(
            "not_found",
            format!("path '{}' does not exist", req.path),
        ));
    }
    if !host.is_dir() {
        return Err(RpcError(
            "invalid_argument",
            format!("path '{}' is not a directory", req.path),
        ));
    }
    let mut entries = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&host) {
        for e in rd.flatten() {
            if let Ok(info) = entry_info(fs, &e.path()) {
                entries.push(info);
            }
        }
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json!({ "entries": entries }))
}

fn stat(fs: &SandboxFs, req: PathRequest) -> Rpc {
    let host = resolved(fs, &req.path)?;
    let info = entry_info(fs, &host)
        .map_err(|_| RpcError("not_found", format!("path '{}' does not exist", req.path)))?;
    Ok(json!({ "entry": info }))
}

#[derive(Deserialize)]
struct MoveRequest {
    source: String,
    destination: String,
}

fn move_entry(fs: &SandboxFs, req: MoveRequest) -> Rpc {
    let from = resolved(fs, &req.source)?;
    let to = resolved(fs, &req.destination)?;
    if !from.exists() {
        return Err(RpcError(
            "not_found",
            format!("source '{}' does not exist", req.source),
        ));
    }
    if let Some(parent) = to.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::rename(&from, &to).map_err(|e| RpcError("internal", format!("error moving: {e}")))?;
    let info = entry_info(fs, &to).map_err(|e| RpcError("internal", e.to_string()))?;
    Ok(json!({ "entry": info }))
}

/// `key=value` pairs of a query, percent-decoded.
fn query(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `bytes=a-b` / `bytes=a-` of a `Range` header over a file of `size` bytes: the range, or
/// `None` when unsatisfiable.
fn byte_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    if start >= size {
        return None;
    }
    let end = match b.trim() {
        "" => size - 1,
        e => e.parse::<u64>().ok()?.min(size - 1),
    };
    (end >= start).then_some((start, end))
}

async fn download(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (_, fs) = match gate(&shared, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = query(&uri);
    let path = q.get("path").cloned().unwrap_or_default();
    let host = match fs.resolve(&path) {
        Ok(h) => h,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("error expanding and resolving path '{path}': {e}"),
            );
        }
    };
    let sandbox_path = fs.sandbox_path(&host).unwrap_or_default();
    if !host.exists() {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("path '{sandbox_path}' does not exist"),
        );
    }
    if host.is_dir() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("path '{sandbox_path}' is a directory"),
        );
    }
    let data = match std::fs::read(&host) {
        Ok(d) => d,
        Err(e) => {
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("error opening file '{sandbox_path}': {e}"),
            );
        }
    };
    let size = data.len() as u64;
    match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            data,
        )
            .into_response(),
        Some(r) => match byte_range(r, size) {
            Some((a, b)) => (
                StatusCode::PARTIAL_CONTENT,
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}")),
                ],
                data[a as usize..=b as usize].to_vec(),
            )
                .into_response(),
            None => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response(),
        },
    }
}

/// The first part's content of a `multipart/form-data` body.
fn first_part<'a>(body: &'a [u8], boundary: &str) -> Option<&'a [u8]> {
    let delim = format!("--{boundary}");
    let start = find_bytes(body, delim.as_bytes())? + delim.len();
    let rest = &body[start..];
    let headers_end = find_bytes(rest, b"\r\n\r\n")? + 4;
    let content = &rest[headers_end..];
    let end = find_bytes(content, format!("\r\n{delim}").as_bytes())?;
    Some(&content[..end])
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, fs) = match gate(&shared, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = query(&uri);
    let Some(path) = q.get("path").cloned() else {
        return json_error(StatusCode::BAD_REQUEST, "path is required");
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let data: &[u8] = if content_type.starts_with("application/octet-stream") {
        &body
    } else if content_type.starts_with("multipart/") {
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .map(|b| b.trim_matches('"').to_owned())
            .unwrap_or_default();
        match first_part(&body, &boundary) {
            Some(d) => d,
            None => return json_error(StatusCode::BAD_REQUEST, "error parsing multipart form"),
        }
    } else {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
            ),
        );
    };
    let host = match fs.resolve(&path) {
        Ok(h) => h,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if host.is_dir() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("path '{path}' is a directory"),
        );
    }
    if let Some(parent) = host.parent()
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("error ensuring directories: {e}"),
        );
    }
    if let Err(e) = std::fs::write(&host, data) {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("error writing file: {e}"),
        );
    }
    let sandbox_path = fs.sandbox_path(&host).unwrap_or_default();
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    axum::Json(json!([{ "path": sandbox_path, "name": name, "type": "file" }])).into_response()
}

#[derive(Deserialize)]
struct ComposeRequest {
    source_paths: Vec<String>,
    destination: String,
}

async fn compose(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, fs) = match gate(&shared, &method, &uri, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let req: ComposeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            );
        }
    };
    if req.source_paths.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "source_paths must not be empty");
    }
    let dest = match fs.resolve(&req.destination) {
        Ok(d) => d,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut sources = Vec::new();
    for src in &req.source_paths {
        let s = match fs.resolve(src) {
            Ok(s) => s,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        if s == dest {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("source path {src:?} cannot be the same as destination"),
            );
        }
        if !s.exists() {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("source file not found: {src}"),
            );
        }
        if !s.is_file() {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("source path is not a regular file: {src}"),
            );
        }
        sources.push(s);
    }
    let mut joined = Vec::new();
    for s in &sources {
        match std::fs::read(s) {
            Ok(d) => joined.extend_from_slice(&d),
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    if let Some(parent) = dest.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&dest, joined) {
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    for s in &sources {
        let _ = std::fs::remove_file(s);
    }
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    axum::Json(
        json!({ "path": fs.sandbox_path(&dest).unwrap_or_default(), "name": name, "type": "file" }),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_queries_and_multipart() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(byte_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(byte_range("bytes=10-20", 10), None);
        assert_eq!(byte_range("bytes=0-0", 0), None);
        let uri: Uri = "/files?path=dir%2Fa%20b.txt&username=user".parse().unwrap();
        let q = query(&uri);
        assert_eq!(q["path"], "dir/a b.txt");
        assert_eq!(decode("100%"), "100%");
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhello\r\n--XY--\r\n";
        assert_eq!(first_part(body, "XY"), Some(&b"hello"[..]));
    }
}
