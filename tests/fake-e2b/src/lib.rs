//! A fake E2B REST API on loopback, for tests and benchmarks.
//!
//! It follows E2B's OpenAPI contract (`spec/openapi.yml` of e2b-dev/infra) for the calls a
//! sandbox backend makes: `POST /sandboxes` (201 `Sandbox`), `GET /sandboxes/{sandboxID}`
//! (200 `SandboxDetail`, 404 when gone), `DELETE /sandboxes/{sandboxID}` (204, 404 when
//! gone), `POST /sandboxes/{sandboxID}/timeout` (204), `GET /v2/sandboxes` and `GET /health`.
//! Every call but `/health` needs the `X-API-Key` header; every error answers with the
//! `{code, message}` body (plus `error_code` where E2B sends one).
//!
//! Knobs let a test inject 429s and 5xx ([`FakeE2b::inject`]), slow every answer
//! ([`FakeE2b::set_delay`]) and make sandboxes vanish ([`FakeE2b::vanish`]). The server runs
//! on its own thread with its own tokio runtime, so blocking tests can use it directly; it
//! stops when the [`FakeE2b`] value is dropped.
//!
//! Every sandbox also has an envd ([`envd`]) on a second loopback port
//! ([`FakeE2b::envd_url`]): real commands in a per-sandbox folder, files from that folder,
//! and the `envdAccessToken` check for sandboxes created with `secure: true`.

pub mod envd;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

/// Which calls an injected fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /sandboxes`.
    Create,
    /// `GET /sandboxes/{id}`.
    Get,
    /// `DELETE /sandboxes/{id}`.
    Delete,
    /// Any authenticated call.
    Any,
}

/// An error answer to inject: HTTP status plus the optional machine-readable `error_code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// HTTP status, e.g. 429 or 503.
    pub status: u16,
    /// E2B's `error_code`, e.g. `sandbox_capacity_unavailable`.
    pub error_code: Option<String>,
}

impl Fault {
    /// A fault with a status and no `error_code`.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            error_code: None,
        }
    }

    /// A fault with a status and an `error_code`.
    pub fn with_code(status: u16, error_code: &str) -> Self {
        Self {
            status,
            error_code: Some(error_code.to_owned()),
        }
    }
}

/// A template the fake knows: its id and the size every sandbox from it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Template id or alias, e.g. `base`.
    pub id: String,
    /// vCPUs of its sandboxes.
    pub cpu_count: u32,
    /// Memory of its sandboxes in MiB.
    pub memory_mb: u32,
    /// Disk of its sandboxes in MiB.
    pub disk_size_mb: u32,
}

/// One sandbox as the fake stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// E2B's sandbox id.
    pub sandbox_id: String,
    /// The template it was started from.
    pub template_id: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it expires.
    pub end_at: DateTime<Utc>,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Disk in MiB.
    pub disk_size_mb: u32,
    /// `metadata` of the create request.
    pub metadata: BTreeMap<String, String>,
    /// `envVars` of the create request.
    pub env_vars: BTreeMap<String, String>,
    /// Set when it was killed with `DELETE`.
    pub killed_at: Option<DateTime<Utc>>,
    /// Whether it was created with `secure: true`.
    pub secure: bool,
    /// The token its envd requires (secured sandboxes).
    pub envd_access_token: Option<String>,
}

/// One request the fake received, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Whether the `X-API-Key` header carried the right key.
    pub authorized: bool,
    /// The JSON body, when there was one.
    pub body: Option<Value>,
    /// The HTTP status answered.
    pub status: u16,
    /// `X-API-Key` as received (API calls).
    pub api_key: Option<String>,
    /// `X-Access-Token` as received (envd calls).
    pub access_token: Option<String>,
    /// Whether the call went to envd rather than the API.
    pub envd: bool,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub(crate) envd: HashMap<String, envd::EnvdState>,
    sandboxes: HashMap<String, SandboxRecord>,
    templates: HashMap<String, Template>,
    faults: VecDeque<(Route, Fault)>,
    pub(crate) delay: Duration,
    pub(crate) requests: Vec<RecordedRequest>,
    created: u64,
    pub(crate) echo_key: bool,
    /// Keys accepted besides the one the fake started with (another account, a rotation).
    more_keys: Vec<String>,
}

pub(crate) struct Shared {
    api_key: String,
    pub(crate) inner: Mutex<Inner>,
}

/// A running fake E2B server on `127.0.0.1`.
pub struct FakeE2b {
    addr: SocketAddr,
    envd_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeE2b {
    /// Starts a fake on a free loopback port that accepts `api_key` in `X-API-Key`.
    /// It knows the template `base` (2 vCPUs, 512 MiB, E2B's default size).
    pub fn start(api_key: &str) -> std::io::Result<Self> {
        Self::start_on(api_key, 0)
    }

    /// Starts a fake on `port` (0 for a free one).
    pub fn start_on(api_key: &str, port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let envd_listener = TcpListener::bind(("127.0.0.1", 0))?;
        envd_listener.set_nonblocking(true)?;
        let envd_addr = envd_listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            inner: Mutex::new(Inner::default()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let app = router(shared.clone());
        let envd_app = envd::router(shared.clone());
        let thread = std::thread::Builder::new()
            .name("fake-e2b".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (Ok(listener), Ok(envd_listener)) = (
                        tokio::net::TcpListener::from_std(listener),
                        tokio::net::TcpListener::from_std(envd_listener),
                    ) else {
                        return;
                    };
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let until = |mut w: tokio::sync::watch::Receiver<bool>| async move {
                        let _ = w.wait_for(|s| *s).await;
                    };
                    let api =
                        axum::serve(listener, app).with_graceful_shutdown(until(stopped.clone()));
                    let envd =
                        axum::serve(envd_listener, envd_app).with_graceful_shutdown(until(stopped));
                    tokio::spawn(async move {
                        let _ = rx.await;
                        let _ = stop.send(true);
                    });
                    let _ = tokio::join!(api, envd);
                });
            })?;
        let fake = Self {
            addr,
            envd_addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        };
        fake.add_template(Template {
            id: "base".into(),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 512,
        });
        Ok(fake)
    }

    /// `http://127.0.0.1:PORT`, the base URL to configure an extension with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` of the envd of every sandbox (the sandbox is named by the
    /// `E2b-Sandbox-Id` header): the extension's `envd_url` for this fake.
    pub fn envd_url(&self) -> String {
        format!("http://{}", self.envd_addr)
    }

    /// The envd's bound address.
    pub fn envd_addr(&self) -> SocketAddr {
        self.envd_addr
    }

    /// The folder on this machine that is the sandbox's `/` (to look at what it wrote).
    pub fn sandbox_root(&self, sandbox_id: &str) -> Option<std::path::PathBuf> {
        let inner = self.shared.inner.lock();
        inner
            .envd
            .get(sandbox_id)
            .map(|e| e.fs.root().to_path_buf())
    }

    /// How many processes were started in the sandbox through envd.
    pub fn processes_started(&self, sandbox_id: &str) -> usize {
        let inner = self.shared.inner.lock();
        inner.envd.get(sandbox_id).map_or(0, |e| e.processes.len())
    }

    /// Makes `template` known (or replaces it).
    pub fn add_template(&self, template: Template) {
        self.shared
            .inner
            .lock()
            .templates
            .insert(template.id.clone(), template);
    }

    /// Answers the next `times` calls matching `route` with `fault` instead of serving them.
    pub fn inject(&self, route: Route, fault: Fault, times: usize) {
        let mut inner = self.shared.inner.lock();
        for _ in 0..times {
            inner.faults.push_back((route, fault.clone()));
        }
    }

    /// Delays every answer by `delay` (zero turns it off).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.inner.lock().delay = delay;
    }

    /// Accepts `key` too from now on (a rotated key, another tenant's own account); the
    /// recorded requests tell which key each call carried.
    pub fn accept_key(&self, key: &str) {
        self.shared.inner.lock().more_keys.push(key.to_owned());
    }

    /// Makes a 401 answer quote the key it was sent, as some APIs do: a test of the host's
    /// redaction of secrets from error messages.
    pub fn echo_key_in_errors(&self, on: bool) {
        self.shared.inner.lock().echo_key = on;
    }

    /// Makes a sandbox disappear as if E2B had reaped it: later calls answer 404.
    /// Returns whether it existed.
    pub fn vanish(&self, sandbox_id: &str) -> bool {
        let mut inner = self.shared.inner.lock();
        if let Some(state) = inner.envd.remove(sandbox_id) {
            state.shut_down();
        }
        inner.sandboxes.remove(sandbox_id).is_some()
    }

    /// Gives a secured sandbox a new envd access token (envd refuses the old one from now
    /// on; `GET /sandboxes/{id}` answers the new one). A client that kept the old token
    /// meets a 401, which quotes that token when [`FakeE2b::echo_key_in_errors`] is on: a
    /// test of the extension's own redaction of a secret the host does not know. Returns
    /// the new token.
    pub fn rotate_envd_token(&self, sandbox_id: &str) -> Option<String> {
        let mut inner = self.shared.inner.lock();
        let record = inner.sandboxes.get_mut(sandbox_id)?;
        record.envd_access_token.as_ref()?;
        let token = format!("ea_{}", random_id());
        record.envd_access_token = Some(token.clone());
        Some(token)
    }

    /// The sandbox with this id, killed or not, if the fake still has it.
    pub fn sandbox(&self, sandbox_id: &str) -> Option<SandboxRecord> {
        self.shared.inner.lock().sandboxes.get(sandbox_id).cloned()
    }

    /// Every sandbox that is running (not killed, not expired).
    pub fn running(&self) -> Vec<SandboxRecord> {
        let now = Utc::now();
        let inner = self.shared.inner.lock();
        inner
            .sandboxes
            .values()
            .filter(|s| s.killed_at.is_none() && s.end_at > now)
            .cloned()
            .collect()
    }

    /// How many sandboxes were created since start.
    pub fn created_count(&self) -> u64 {
        self.shared.inner.lock().created
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.inner.lock().requests.clone()
    }
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        for state in self.shared.inner.lock().envd.values() {
            state.shut_down();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(|| async { StatusCode::OK }))
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .fallback(fallback)
        .with_state(shared)
}

/// E2B's error body.
fn error(status: StatusCode, message: &str, error_code: Option<&str>) -> Response {
    let mut body = json!({ "code": status.as_u16(), "message": message });
    if let Some(code) = error_code {
        body["error_code"] = Value::String(code.to_owned());
    }
    (status, axum::Json(body)).into_response()
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
        None,
    )
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The common front of every authenticated call: delay, auth, injected faults, recording.
/// Returns the early answer when the call must not be served.
async fn gate(
    shared: &Shared,
    route: Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Result<(), Response> {
    let delay = shared.inner.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let sent = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let mut inner = shared.inner.lock();
    let authorized =
        sent.is_some_and(|s| s == shared.api_key || inner.more_keys.iter().any(|k| k == s));
    let answer = if !authorized {
        let message = match (inner.echo_key, sent) {
            (true, Some(key)) => format!("Invalid API key {key}"),
            _ => "Invalid API key, it must start with 'e2b_' prefix".to_owned(),
        };
        Some(error(StatusCode::UNAUTHORIZED, &message, None))
    } else if let Some(pos) = inner
        .faults
        .iter()
        .position(|(r, _)| *r == route || *r == Route::Any)
    {
        let (_, fault) = inner
            .faults
            .remove(pos)
            .unwrap_or((route, Fault::status(500)));
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match status.as_u16() {
            429 => "Rate limit exceeded, please try again later",
            503 => "Service unavailable",
            _ => "Internal server error",
        };
        Some(error(status, message, fault.error_code.as_deref()))
    } else {
        None
    };
    let status = answer.as_ref().map_or(0, |r| r.status().as_u16());
    inner.requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.to_string()),
        authorized,
        body,
        status,
        api_key: sent.map(str::to_owned),
        access_token: None,
        envd: false,
    });
    match answer {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// Records the status of the last request (the gate records 0 for calls it let through).
fn finish(shared: &Shared, response: Response) -> Response {
    if let Some(last) = shared.inner.lock().requests.last_mut()
        && last.status == 0
    {
        last.status = response.status().as_u16();
    }
    response
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(default = "default_timeout")]
    timeout: i64,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env_vars: BTreeMap<String, String>,
    #[serde(default)]
    secure: bool,
}

fn default_timeout() -> i64 {
    15
}

fn random_id() -> String {
    // E2B ids are 20 lowercase alphanumerics.
    uuid::Uuid::new_v4().simple().to_string()[..20].to_owned()
}

async fn create(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    if let Err(r) = gate(
        &shared,
        Route::Create,
        &method,
        &uri,
        &headers,
        parsed.as_ref().ok().cloned(),
    )
    .await
    {
        return r;
    }
    let response = create_inner(&shared, parsed);
    finish(&shared, response)
}

fn create_inner(shared: &Shared, parsed: Result<Value, serde_json::Error>) -> Response {
    let Ok(value) = parsed else {
        return error(
            StatusCode::BAD_REQUEST,
            "request body has an error: failed to decode request body",
            None,
        );
    };
    let new: NewSandbox = match serde_json::from_value(value) {
        Ok(n) => n,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("request body has an error: {e}"),
                None,
            );
        }
    };
    if !(0..=86_400).contains(&new.timeout) {
        return error(
            StatusCode::BAD_REQUEST,
            "timeout must be between 0 and 86400 seconds",
            None,
        );
    }
    let mut inner = shared.inner.lock();
    let Some(template) = inner.templates.get(&new.template_id).cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("template '{}' not found", new.template_id),
            None,
        );
    };
    let now = Utc::now();
    let token = new.secure.then(|| format!("ea_{}", random_id()));
    let state = match envd::EnvdState::new(new.env_vars.clone()) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot make the sandbox: {e}"),
                None,
            );
        }
    };
    let record = SandboxRecord {
        sandbox_id: random_id(),
        template_id: template.id.clone(),
        started_at: now,
        end_at: now + chrono::Duration::seconds(new.timeout),
        cpu_count: template.cpu_count,
        memory_mb: template.memory_mb,
        disk_size_mb: template.disk_size_mb,
        metadata: new.metadata,
        env_vars: new.env_vars,
        killed_at: None,
        secure: new.secure,
        envd_access_token: token.clone(),
    };
    let mut body = json!({
        "templateID": record.template_id,
        "sandboxID": record.sandbox_id,
        "alias": template.id,
        "clientID": "6532622b",
        "envdVersion": "0.6.4",
        "trafficAccessToken": null,
        "domain": "e2b.app",
    });
    if let Some(t) = token {
        body["envdAccessToken"] = Value::String(t);
    }
    inner.envd.insert(record.sandbox_id.clone(), state);
    inner.created += 1;
    inner.sandboxes.insert(record.sandbox_id.clone(), record);
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// The sandbox if it is alive; expired or killed ones are dropped (E2B forgets them), and
/// their commands end.
pub(crate) fn live(inner: &mut Inner, id: &str) -> Option<SandboxRecord> {
    let now = Utc::now();
    let alive = inner
        .sandboxes
        .get(id)
        .is_some_and(|s| s.killed_at.is_none() && s.end_at > now);
    if alive {
        inner.sandboxes.get(id).cloned()
    } else {
        if let Some(state) = inner.envd.get(id) {
            state.shut_down();
        }
        None
    }
}

fn detail_json(s: &SandboxRecord) -> Value {
    let mut v = json!({
        "templateID": s.template_id,
        "alias": s.template_id,
        "sandboxID": s.sandbox_id,
        "clientID": "6532622b",
        "startedAt": rfc3339(s.started_at),
        "endAt": rfc3339(s.end_at),
        "envdVersion": "0.2.0",
        "cpuCount": s.cpu_count,
        "memoryMB": s.memory_mb,
        "diskSizeMB": s.disk_size_mb,
        "metadata": s.metadata,
        "state": "running",
    });
    if let Some(t) = &s.envd_access_token {
        v["envdAccessToken"] = Value::String(t.clone());
    }
    v
}

async fn detail(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&shared, Route::Get, &method, &uri, &headers, None).await {
        return r;
    }
    let found = live(&mut shared.inner.lock(), &id);
    let response = match found {
        Some(s) => (StatusCode::OK, axum::Json(detail_json(&s))).into_response(),
        None => not_found(&id),
    };
    finish(&shared, response)
}

async fn kill(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&shared, Route::Delete, &method, &uri, &headers, None).await {
        return r;
    }
    let response = {
        let mut inner = shared.inner.lock();
        if live(&mut inner, &id).is_some() {
            if let Some(s) = inner.sandboxes.get_mut(&id) {
                s.killed_at = Some(Utc::now());
            }
            StatusCode::NO_CONTENT.into_response()
        } else {
            not_found(&id)
        }
    };
    finish(&shared, response)
}

#[derive(Deserialize)]
struct NewTimeout {
    timeout: i64,
}

async fn set_timeout(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    if let Err(r) = gate(
        &shared,
        Route::Any,
        &method,
        &uri,
        &headers,
        parsed.as_ref().ok().cloned(),
    )
    .await
    {
        return r;
    }
    let response = match parsed
        .ok()
        .and_then(|v| serde_json::from_value::<NewTimeout>(v).ok())
    {
        None => error(
            StatusCode::BAD_REQUEST,
            "request body has an error: timeout is required",
            None,
        ),
        Some(t) if !(0..=86_400).contains(&t.timeout) => error(
            StatusCode::BAD_REQUEST,
            "timeout must be between 0 and 86400 seconds",
            None,
        ),
        Some(t) => {
            let mut inner = shared.inner.lock();
            if live(&mut inner, &id).is_some() {
                if let Some(s) = inner.sandboxes.get_mut(&id) {
                    s.end_at = Utc::now() + chrono::Duration::seconds(t.timeout);
                }
                StatusCode::NO_CONTENT.into_response()
            } else {
                not_found(&id)
            }
        }
    };
    finish(&shared, response)
}

fn listed(shared: &Shared) -> Vec<Value> {
    let mut inner = shared.inner.lock();
    let ids: Vec<String> = inner.sandboxes.keys().cloned().collect();
    let mut out: Vec<Value> = ids
        .iter()
        .filter_map(|id| live(&mut inner, id))
        .map(|s| detail_json(&s))
        .collect();
    out.sort_by(|a, b| a["startedAt"].as_str().cmp(&b["startedAt"].as_str()));
    out
}

async fn list_v1(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = gate(&shared, Route::Any, &method, &uri, &headers, None).await {
        return r;
    }
    let response = (StatusCode::OK, axum::Json(listed(&shared))).into_response();
    finish(&shared, response)
}

async fn list_v2(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    list_v1(State(shared), method, uri, headers).await
}

async fn fallback(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!("no route for {method} {}", uri.path()),
        None,
    )
}
