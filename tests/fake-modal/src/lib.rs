//! A fake Modal API on loopback, for tests and benchmarks of the `modal` extension.
//!
//! It serves the two gRPC services a sandbox client speaks, from the message subset in
//! `modal-proto` (field numbers of Modal's own `api.proto` and `task_command_router.proto`),
//! over prior-knowledge h2c ([`FakeModal::start`]) or TLS with ALPN `h2` and a certificate
//! from a CA generated at start ([`FakeModal::start_tls`], [`FakeModal::ca_pem`]):
//!
//! - `modal.client.ModalClient` (the control plane): `AppGetOrCreate`, `ImageGetOrCreate`,
//!   `ImageFromId`, `SandboxCreate`, `SandboxGetFromName`, `SandboxWait`, `SandboxTerminate`,
//!   `SandboxGetTaskId`, `SandboxGetResourceUsage`, `TaskGetCommandRouterAccess`. Every call
//!   needs the `x-modal-token-id` and `x-modal-token-secret` metadata Modal's SDKs send.
//! - `modal.task_command_router.TaskCommandRouter` (Modal runs one per worker; the fake
//!   serves it on the same port and hands out its own URL): `TaskExecStart`,
//!   `TaskExecStdinWrite`, `TaskExecStdioRead` (server-streaming from a byte offset),
//!   `TaskExecPoll`, `TaskExecWait`. Every call needs `authorization: Bearer <jwt>` with a
//!   JWT from `TaskGetCommandRouterAccess` for that task.
//!
//! Commands really run: each sandbox is a temporary folder (its `/`, home `/root`) and each
//! exec a child process in it (`fake-worker`), standing in for Modal's workers;
//! `modal-sandbox-fs-tools` (the tool Modal's SDKs use for files) is built in
//! ([`fs_tools`]). Knobs: injected gRPC errors ([`FakeModal::inject`]), a delay on every
//! answer, sandboxes that vanish, resource usage to report, tokens quoted back in
//! authentication errors. Every call is recorded with the credentials it carried
//! ([`FakeModal::calls`]). The server runs on its own thread and stops when dropped.

pub mod fs_tools;
pub mod native;

/// The generated tonic services and clients (tonic-build's manual builder over
/// `modal-proto`; see `build.rs`).
pub mod grpc {
    /// `modal.client.ModalClient`.
    pub mod client {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/modal.client.ModalClient.rs"));
    }
    /// `modal.task_command_router.TaskCommandRouter`.
    pub mod router {
        #![allow(clippy::all, missing_docs)]
        include!(concat!(
            env!("OUT_DIR"),
            "/modal.task_command_router.TaskCommandRouter.rs"
        ));
    }
}

pub use grpc::client::modal_client_client::ModalClientClient;
pub use grpc::router::task_command_router_client::TaskCommandRouterClient;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use fake_worker::{ExecSpec, Fd, Process, SandboxFs};
use modal_proto as pb;
use parking_lot::Mutex;
use tonic::{Code, Request, Response, Status};

use grpc::client::modal_client_server::{ModalClient, ModalClientServer};
use grpc::router::task_command_router_server::{TaskCommandRouter, TaskCommandRouterServer};

/// Which call an injected fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    AppGetOrCreate,
    ImageGetOrCreate,
    ImageFromId,
    SandboxCreate,
    SandboxGetFromName,
    SandboxWait,
    SandboxTerminate,
    SandboxGetTaskId,
    SandboxGetResourceUsage,
    TaskGetCommandRouterAccess,
    TaskExecStart,
    TaskExecStdinWrite,
    TaskExecStdinStatus,
    TaskExecStdioRead,
    TaskExecPoll,
    TaskExecWait,
    /// Any call.
    Any,
}

impl Route {
    /// The RPC's name, e.g. `SandboxCreate`.
    pub fn name(self) -> &'static str {
        match self {
            Route::AppGetOrCreate => "AppGetOrCreate",
            Route::ImageGetOrCreate => "ImageGetOrCreate",
            Route::ImageFromId => "ImageFromId",
            Route::SandboxCreate => "SandboxCreate",
            Route::SandboxGetFromName => "SandboxGetFromName",
            Route::SandboxWait => "SandboxWait",
            Route::SandboxTerminate => "SandboxTerminate",
            Route::SandboxGetTaskId => "SandboxGetTaskId",
            Route::SandboxGetResourceUsage => "SandboxGetResourceUsage",
            Route::TaskGetCommandRouterAccess => "TaskGetCommandRouterAccess",
            Route::TaskExecStart => "TaskExecStart",
            Route::TaskExecStdinWrite => "TaskExecStdinWrite",
            Route::TaskExecStdinStatus => "TaskExecStdinStatus",
            Route::TaskExecStdioRead => "TaskExecStdioRead",
            Route::TaskExecPoll => "TaskExecPoll",
            Route::TaskExecWait => "TaskExecWait",
            Route::Any => "*",
        }
    }

    fn is_router(self) -> bool {
        matches!(
            self,
            Route::TaskExecStart
                | Route::TaskExecStdinWrite
                | Route::TaskExecStdinStatus
                | Route::TaskExecStdioRead
                | Route::TaskExecPoll
                | Route::TaskExecWait
        )
    }
}

/// A gRPC error to answer instead of serving a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The status code.
    pub code: Code,
    /// The status message.
    pub message: String,
}

impl Fault {
    /// `UNAVAILABLE`, as Modal answers while a backend is down.
    pub fn unavailable() -> Fault {
        Fault {
            code: Code::Unavailable,
            message: "Modal is temporarily unavailable".into(),
        }
    }

    /// `RESOURCE_EXHAUSTED`, Modal's rate limit and capacity answer.
    pub fn rate_limited() -> Fault {
        Fault {
            code: Code::ResourceExhausted,
            message: "Rate limit exceeded, please retry later".into(),
        }
    }

    /// Any status.
    pub fn status(code: Code, message: &str) -> Fault {
        Fault {
            code,
            message: message.into(),
        }
    }
}

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCall {
    /// The RPC, e.g. `SandboxCreate`.
    pub method: &'static str,
    /// `x-modal-token-id` as received.
    pub token_id: Option<String>,
    /// `x-modal-token-secret` as received (tests check which key a request carried).
    pub token_secret: Option<String>,
    /// `authorization` as received (router calls).
    pub authorization: Option<String>,
    /// `x-modal-client-type` as received.
    pub client_type: Option<String>,
    /// The answer's status code.
    pub code: Code,
}

/// A sandbox as the fake stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub sandbox_id: String,
    pub app_id: String,
    pub image_id: String,
    pub task_id: String,
    pub name: Option<String>,
    pub milli_cpu: u32,
    pub milli_cpu_max: u32,
    pub memory_mb: u32,
    pub memory_mb_max: u32,
    pub timeout_secs: u32,
    pub workdir: Option<String>,
    pub regions: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub entrypoint_args: Vec<String>,
    /// How it ended, once it has.
    pub ended: Option<pb::GenericStatus>,
}

struct SandboxState {
    record: SandboxRecord,
    fs: Arc<SandboxFs>,
    started: Instant,
    ended_at: Option<Instant>,
    execs: HashMap<String, Process>,
    usage: Option<(u64, u64)>,
}

impl SandboxState {
    /// Ends it at its timeout when that has passed (Modal ends sandboxes on their own).
    fn refresh(&mut self) {
        if self.record.ended.is_none() {
            let limit = Duration::from_secs(u64::from(self.record.timeout_secs));
            if self.started.elapsed() >= limit {
                self.end(pb::GenericStatus::Timeout, self.started + limit);
            }
        }
    }

    fn end(&mut self, status: pb::GenericStatus, at: Instant) {
        if self.record.ended.is_none() {
            self.record.ended = Some(status);
            self.ended_at = Some(at);
            for p in self.execs.values() {
                p.kill(libc::SIGKILL);
            }
        }
    }

    fn result(&self) -> Option<pb::GenericResult> {
        self.record.ended.map(|s| pb::GenericResult {
            status: s as i32,
            exception: String::new(),
            exitcode: 0,
        })
    }

    fn usage(&self) -> (u64, u64) {
        if let Some(u) = self.usage {
            return u;
        }
        let lifetime = self
            .ended_at
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(self.started)
            .as_nanos();
        // What Modal bills at least: the requested size over the lifetime.
        let cpu = u128::from(self.record.milli_cpu) * lifetime / 1000;
        let mem = u128::from(self.record.memory_mb) * lifetime / 1024;
        (
            u64::try_from(cpu).unwrap_or(u64::MAX),
            u64::try_from(mem).unwrap_or(u64::MAX),
        )
    }
}

#[derive(Default)]
struct Inner {
    apps: HashMap<(String, String), String>,
    images: HashMap<String, Vec<String>>,
    image_ids: HashMap<Vec<String>, String>,
    failing_images: Vec<String>,
    sandboxes: HashMap<String, SandboxState>,
    tasks: HashMap<String, String>,
    jwts: HashMap<String, (String, u64)>,
    faults: VecDeque<(Route, Fault)>,
    delay: Duration,
    calls: Vec<RecordedCall>,
    echo_token: bool,
    jwt_ttl_secs: u64,
}

struct Shared {
    token_id: String,
    token_secret: String,
    url: String,
    inner: Mutex<Inner>,
}

/// TLS material of a [`FakeModal::start_tls`] server.
struct Tls {
    ca_pem: String,
}

/// A running fake Modal API on `127.0.0.1`.
pub struct FakeModal {
    addr: SocketAddr,
    tls: Option<Tls>,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The fake's certificate authority and the server certificate it signed for
/// `localhost`/`127.0.0.1`, all PEM.
struct Certs {
    ca: String,
    cert: String,
    key: String,
}

fn generate_certs() -> Result<Certs, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-modal test CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "fake-modal");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Certs {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn random_id(prefix: &str) -> String {
    // Modal's V1 ids: a prefix, a dash and 22 alphanumerics.
    let raw = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &raw[..22])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FakeModal {
    /// Starts a fake over prior-knowledge h2c on a free loopback port that accepts the
    /// token `token_id`/`token_secret`.
    pub fn start(token_id: &str, token_secret: &str) -> std::io::Result<FakeModal> {
        Self::start_on(token_id, token_secret, 0, false)
    }

    /// Starts a fake over TLS (ALPN `h2`) with a certificate for `127.0.0.1` and `localhost`
    /// signed by a CA generated now ([`FakeModal::ca_pem`]).
    pub fn start_tls(token_id: &str, token_secret: &str) -> std::io::Result<FakeModal> {
        Self::start_on(token_id, token_secret, 0, true)
    }

    /// Starts a fake on `port` (0 for a free one), with TLS or over h2c.
    pub fn start_on(
        token_id: &str,
        token_secret: &str,
        port: u16,
        tls: bool,
    ) -> std::io::Result<FakeModal> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let certs = if tls {
            Some(generate_certs().map_err(std::io::Error::other)?)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let shared = Arc::new(Shared {
            token_id: token_id.to_owned(),
            token_secret: token_secret.to_owned(),
            url: format!("{scheme}://{addr}"),
            inner: Mutex::new(Inner {
                jwt_ttl_secs: 3600,
                ..Inner::default()
            }),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let service = Service(shared.clone());
        let identity = certs
            .as_ref()
            .map(|c| tonic::transport::Identity::from_pem(&c.cert, &c.key));
        let thread = std::thread::Builder::new()
            .name("fake-modal".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    // Answers go out at once (no Nagle delay behind the client's delayed ACK).
                    let incoming = tokio_stream::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        |conn| {
                            if let Ok(c) = &conn {
                                let _ = c.set_nodelay(true);
                            }
                            conn
                        },
                    );
                    let mut builder = tonic::transport::Server::builder();
                    if let Some(identity) = identity {
                        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
                        builder = match builder.tls_config(config) {
                            Ok(b) => b,
                            Err(_) => return,
                        };
                    }
                    let _ = builder
                        .add_service(ModalClientServer::new(service.clone()))
                        .add_service(TaskCommandRouterServer::new(service))
                        .serve_with_incoming_shutdown(incoming, async move {
                            let _ = rx.await;
                        })
                        .await;
                });
            })?;
        Ok(FakeModal {
            addr,
            tls: certs.map(|c| Tls { ca_pem: c.ca }),
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`: the server URL to configure an
    /// extension with (the router URL it hands out is the same).
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server's certificate (TLS fakes only).
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
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

    /// Makes authentication errors quote the token secret they were sent, as a careless
    /// API might: a test of the host's redaction of secrets.
    pub fn echo_token_in_errors(&self, on: bool) {
        self.shared.inner.lock().echo_token = on;
    }

    /// How long router JWTs stay valid (default an hour).
    pub fn set_jwt_ttl(&self, ttl: Duration) {
        self.shared.inner.lock().jwt_ttl_secs = ttl.as_secs();
    }

    /// Makes image builds of `image` (a registry reference such as `python:3.13`) fail.
    pub fn fail_image_builds(&self, image: &str) {
        self.shared
            .inner
            .lock()
            .failing_images
            .push(image.to_owned());
    }

    /// Makes a sandbox disappear as if Modal had forgotten it: later calls answer
    /// `NOT_FOUND`; its commands are killed. Returns whether it existed.
    pub fn vanish(&self, sandbox_id: &str) -> bool {
        let mut inner = self.shared.inner.lock();
        match inner.sandboxes.remove(sandbox_id) {
            Some(mut sb) => {
                sb.end(pb::GenericStatus::Terminated, Instant::now());
                inner.tasks.remove(&sb.record.task_id);
                true
            }
            None => false,
        }
    }

    /// Makes `SandboxGetResourceUsage` report this usage for the sandbox (by default it
    /// reports the requested size over its lifetime).
    pub fn set_usage(&self, sandbox_id: &str, cpu_core_nanosecs: u64, mem_gib_nanosecs: u64) {
        if let Some(sb) = self.shared.inner.lock().sandboxes.get_mut(sandbox_id) {
            sb.usage = Some((cpu_core_nanosecs, mem_gib_nanosecs));
        }
    }

    /// The sandbox with this id, if the fake has it.
    pub fn sandbox(&self, sandbox_id: &str) -> Option<SandboxRecord> {
        let mut inner = self.shared.inner.lock();
        let sb = inner.sandboxes.get_mut(sandbox_id)?;
        sb.refresh();
        Some(sb.record.clone())
    }

    /// Every sandbox still running.
    pub fn running(&self) -> Vec<SandboxRecord> {
        let mut inner = self.shared.inner.lock();
        inner
            .sandboxes
            .values_mut()
            .filter_map(|sb| {
                sb.refresh();
                sb.record.ended.is_none().then(|| sb.record.clone())
            })
            .collect()
    }

    /// The folder on this machine that is the sandbox's `/` (to look at files it wrote).
    pub fn sandbox_root(&self, sandbox_id: &str) -> Option<std::path::PathBuf> {
        let inner = self.shared.inner.lock();
        inner
            .sandboxes
            .get(sandbox_id)
            .map(|sb| sb.fs.root().to_path_buf())
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.inner.lock().calls.clone()
    }

    /// How many calls of `route` were received.
    pub fn count(&self, route: Route) -> usize {
        self.shared
            .inner
            .lock()
            .calls
            .iter()
            .filter(|c| c.method == route.name())
            .count()
    }
}

impl Drop for FakeModal {
    fn drop(&mut self) {
        {
            let mut inner = self.shared.inner.lock();
            for sb in inner.sandboxes.values_mut() {
                sb.end(pb::GenericStatus::Terminated, Instant::now());
            }
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

fn meta(req: &tonic::metadata::MetadataMap, key: &str) -> Option<String> {
    req.get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

type Answer<T> = Result<Response<T>, Status>;

impl Service {
    /// The front of every call: delay, authentication, injected faults, recording.
    /// Returns the index of the recorded call.
    async fn gate(&self, route: Route, md: &tonic::metadata::MetadataMap) -> Result<usize, Status> {
        let delay = self.0.inner.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let token_id = meta(md, "x-modal-token-id");
        let token_secret = meta(md, "x-modal-token-secret");
        let authorization = meta(md, "authorization");
        let mut inner = self.0.inner.lock();
        let refused = if route.is_router() {
            let jwt = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            match jwt.and_then(|j| inner.jwts.get(j)) {
                Some((_, exp)) if *exp > unix_now() => None,
                Some(_) => Some(Status::unauthenticated("command router token has expired")),
                None => Some(Status::unauthenticated(
                    "missing or invalid command router token",
                )),
            }
        } else {
            match (&token_id, &token_secret) {
                (Some(id), Some(secret))
                    if *id == self.0.token_id && *secret == self.0.token_secret =>
                {
                    None
                }
                (None, _) | (_, None) => Some(Status::unauthenticated(
                    "missing token_id or token_secret in request metadata",
                )),
                (_, Some(secret)) => Some(Status::unauthenticated(if inner.echo_token {
                    format!("Token ID or secret is invalid (secret {secret})")
                } else {
                    "Token ID or secret is invalid".to_owned()
                })),
            }
        };
        let answer = refused.or_else(|| {
            let pos = inner
                .faults
                .iter()
                .position(|(r, _)| *r == route || *r == Route::Any)?;
            let (_, fault) = inner.faults.remove(pos)?;
            Some(Status::new(fault.code, fault.message))
        });
        inner.calls.push(RecordedCall {
            method: route.name(),
            token_id,
            token_secret,
            authorization,
            client_type: meta(md, "x-modal-client-type"),
            code: answer.as_ref().map_or(Code::Ok, |s| s.code()),
        });
        let index = inner.calls.len() - 1;
        match answer {
            Some(status) => Err(status),
            None => Ok(index),
        }
    }

    /// Records the code of an answer the gate let through.
    fn done<T>(&self, index: usize, answer: Result<T, Status>) -> Answer<T> {
        if let Err(status) = &answer
            && let Some(call) = self.0.inner.lock().calls.get_mut(index)
        {
            call.code = status.code();
        }
        answer.map(Response::new)
    }

    /// The running sandbox `id` (NOT_FOUND when the fake has no such sandbox).
    fn with_sandbox<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxState) -> Result<R, Status>,
    ) -> Result<R, Status> {
        let mut inner = self.0.inner.lock();
        match inner.sandboxes.get_mut(id) {
            Some(sb) => {
                sb.refresh();
                f(sb)
            }
            None => Err(Status::not_found(format!("Sandbox {id} not found"))),
        }
    }

    /// The exec `exec_id` of task `task_id`, checking the router token is for that task.
    fn exec(
        &self,
        md: &tonic::metadata::MetadataMap,
        task_id: &str,
        exec_id: &str,
    ) -> Result<Process, Status> {
        let inner = self.0.inner.lock();
        check_jwt_task(&inner, md, task_id)?;
        let sandbox_id = inner
            .tasks
            .get(task_id)
            .ok_or_else(|| Status::not_found(format!("task {task_id} not found")))?;
        let sb = inner
            .sandboxes
            .get(sandbox_id)
            .ok_or_else(|| Status::not_found(format!("task {task_id} not found")))?;
        sb.execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("exec {exec_id} not found")))
    }
}

fn check_jwt_task(
    inner: &Inner,
    md: &tonic::metadata::MetadataMap,
    task_id: &str,
) -> Result<(), Status> {
    let jwt = meta(md, "authorization");
    let jwt = jwt.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    match jwt.and_then(|j| inner.jwts.get(j)) {
        Some((task, _)) if task == task_id => Ok(()),
        _ => Err(Status::permission_denied(format!(
            "command router token is not valid for task {task_id}"
        ))),
    }
}

fn exit_status(p: &Process) -> Option<pb::ExitStatus> {
    p.exit().map(|e| match (e.code, e.signal) {
        (Some(code), _) => pb::ExitStatus::Code(code),
        (None, Some(sig)) => pb::ExitStatus::Signal(sig),
        (None, None) => pb::ExitStatus::Signal(libc::SIGKILL),
    })
}

fn jwt_for(task_id: &str, exp: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(format!(r#"{{"task_id":"{task_id}","exp":{exp}}}"#));
    let signature = b64.encode(uuid::Uuid::new_v4().as_bytes());
    format!("{header}.{payload}.{signature}")
}

#[tonic::async_trait]
impl ModalClient for Service {
    async fn app_get_or_create(
        &self,
        request: Request<pb::AppGetOrCreateRequest>,
    ) -> Answer<pb::AppGetOrCreateResponse> {
        let index = self.gate(Route::AppGetOrCreate, request.metadata()).await?;
        let req = request.into_inner();
        let answer = (|| {
            if req.app_name.is_empty() {
                return Err(Status::invalid_argument("app_name is required"));
            }
            let mut inner = self.0.inner.lock();
            let key = (req.environment_name.clone(), req.app_name.clone());
            if let Some(id) = inner.apps.get(&key) {
                return Ok(pb::AppGetOrCreateResponse { app_id: id.clone() });
            }
            if req.object_creation_type != pb::ObjectCreationType::CreateIfMissing as i32 {
                return Err(Status::not_found(format!(
                    "App '{}' not found",
                    req.app_name
                )));
            }
            let id = random_id("ap");
            inner.apps.insert(key, id.clone());
            Ok(pb::AppGetOrCreateResponse { app_id: id })
        })();
        self.done(index, answer)
    }

    async fn image_get_or_create(
        &self,
        request: Request<pb::ImageGetOrCreateRequest>,
    ) -> Answer<pb::ImageGetOrCreateResponse> {
        let index = self
            .gate(Route::ImageGetOrCreate, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = (|| {
            let mut inner = self.0.inner.lock();
            if !inner.apps.values().any(|id| *id == req.app_id) {
                return Err(Status::not_found(format!("App {} not found", req.app_id)));
            }
            let commands = req.image.map(|i| i.dockerfile_commands).unwrap_or_default();
            let Some(base) = commands
                .first()
                .and_then(|c| c.strip_prefix("FROM "))
                .map(str::trim)
                .filter(|b| !b.is_empty())
            else {
                return Err(Status::invalid_argument(
                    "image definition must start with a FROM command",
                ));
            };
            let failed = inner.failing_images.iter().any(|f| f == base);
            let id = match inner.image_ids.get(&commands) {
                Some(id) => id.clone(),
                None => {
                    let id = random_id("im");
                    inner.image_ids.insert(commands.clone(), id.clone());
                    if !failed {
                        inner.images.insert(id.clone(), commands.clone());
                    }
                    id
                }
            };
            let result = if failed {
                pb::GenericResult {
                    status: pb::GenericStatus::Failure as i32,
                    exception: format!("Image build for {base} failed: manifest unknown"),
                    exitcode: 1,
                }
            } else {
                pb::GenericResult {
                    status: pb::GenericStatus::Success as i32,
                    exception: String::new(),
                    exitcode: 0,
                }
            };
            Ok(pb::ImageGetOrCreateResponse {
                image_id: id,
                result: Some(result),
            })
        })();
        self.done(index, answer)
    }

    async fn image_from_id(
        &self,
        request: Request<pb::ImageFromIdRequest>,
    ) -> Answer<pb::ImageFromIdResponse> {
        let index = self.gate(Route::ImageFromId, request.metadata()).await?;
        let req = request.into_inner();
        let known = self.0.inner.lock().images.contains_key(&req.image_id);
        let answer = if known {
            Ok(pb::ImageFromIdResponse {
                image_id: req.image_id,
            })
        } else {
            Err(Status::not_found(format!(
                "Image {} not found",
                req.image_id
            )))
        };
        self.done(index, answer)
    }

    async fn sandbox_create(
        &self,
        request: Request<pb::SandboxCreateRequest>,
    ) -> Answer<pb::SandboxCreateResponse> {
        let index = self.gate(Route::SandboxCreate, request.metadata()).await?;
        let req = request.into_inner();
        let answer = self.create(req);
        self.done(index, answer)
    }

    async fn sandbox_get_from_name(
        &self,
        request: Request<pb::SandboxGetFromNameRequest>,
    ) -> Answer<pb::SandboxGetFromNameResponse> {
        let index = self
            .gate(Route::SandboxGetFromName, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = (|| {
            let mut inner = self.0.inner.lock();
            let app_id = inner
                .apps
                .get(&(req.environment_name.clone(), req.app_name.clone()))
                .cloned()
                .ok_or_else(|| Status::not_found(format!("App '{}' not found", req.app_name)))?;
            for sb in inner.sandboxes.values_mut() {
                sb.refresh();
                if sb.record.app_id == app_id
                    && sb.record.ended.is_none()
                    && sb.record.name.as_deref() == Some(req.sandbox_name.as_str())
                {
                    return Ok(pb::SandboxGetFromNameResponse {
                        sandbox_id: sb.record.sandbox_id.clone(),
                    });
                }
            }
            Err(Status::not_found(format!(
                "Sandbox with name '{}' not found in App '{}'",
                req.sandbox_name, req.app_name
            )))
        })();
        self.done(index, answer)
    }

    async fn sandbox_wait(
        &self,
        request: Request<pb::SandboxWaitRequest>,
    ) -> Answer<pb::SandboxWaitResponse> {
        let index = self.gate(Route::SandboxWait, request.metadata()).await?;
        let req = request.into_inner();
        let deadline = Instant::now() + Duration::from_secs_f32(req.timeout.clamp(0.0, 60.0));
        let answer = loop {
            match self.with_sandbox(&req.sandbox_id, |sb| Ok(sb.result())) {
                Ok(Some(result)) => {
                    break Ok(pb::SandboxWaitResponse {
                        result: Some(result),
                    });
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) => break Ok(pb::SandboxWaitResponse { result: None }),
                Err(e) => break Err(e),
            }
        };
        self.done(index, answer)
    }

    async fn sandbox_terminate(
        &self,
        request: Request<pb::SandboxTerminateRequest>,
    ) -> Answer<pb::SandboxTerminateResponse> {
        let index = self
            .gate(Route::SandboxTerminate, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = self.with_sandbox(&req.sandbox_id, |sb| {
            let existing_result = sb.result();
            sb.end(pb::GenericStatus::Terminated, Instant::now());
            Ok(pb::SandboxTerminateResponse { existing_result })
        });
        self.done(index, answer)
    }

    async fn sandbox_get_task_id(
        &self,
        request: Request<pb::SandboxGetTaskIdRequest>,
    ) -> Answer<pb::SandboxGetTaskIdResponse> {
        let index = self
            .gate(Route::SandboxGetTaskId, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = self.with_sandbox(&req.sandbox_id, |sb| {
            Ok(match sb.result() {
                Some(result) => pb::SandboxGetTaskIdResponse {
                    task_id: None,
                    task_result: Some(result),
                },
                None => pb::SandboxGetTaskIdResponse {
                    task_id: Some(sb.record.task_id.clone()),
                    task_result: None,
                },
            })
        });
        self.done(index, answer)
    }

    async fn sandbox_get_resource_usage(
        &self,
        request: Request<pb::SandboxGetResourceUsageRequest>,
    ) -> Answer<pb::SandboxGetResourceUsageResponse> {
        let index = self
            .gate(Route::SandboxGetResourceUsage, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = self.with_sandbox(&req.sandbox_id, |sb| {
            let (cpu, mem) = sb.usage();
            Ok(pb::SandboxGetResourceUsageResponse {
                cpu_core_nanosecs: cpu,
                mem_gib_nanosecs: mem,
                gpu_nanosecs: 0,
                gpu_type: None,
            })
        });
        self.done(index, answer)
    }

    async fn task_get_command_router_access(
        &self,
        request: Request<pb::TaskGetCommandRouterAccessRequest>,
    ) -> Answer<pb::TaskGetCommandRouterAccessResponse> {
        let index = self
            .gate(Route::TaskGetCommandRouterAccess, request.metadata())
            .await?;
        let req = request.into_inner();
        let answer = (|| {
            let mut inner = self.0.inner.lock();
            let sandbox_id = inner
                .tasks
                .get(&req.task_id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))?;
            let ended = inner.sandboxes.get_mut(&sandbox_id).is_none_or(|sb| {
                sb.refresh();
                sb.record.ended.is_some()
            });
            if ended {
                return Err(Status::failed_precondition(format!(
                    "task {} has already finished",
                    req.task_id
                )));
            }
            let exp = unix_now() + inner.jwt_ttl_secs;
            let jwt = jwt_for(&req.task_id, exp);
            inner.jwts.insert(jwt.clone(), (req.task_id.clone(), exp));
            Ok(pb::TaskGetCommandRouterAccessResponse {
                jwt,
                url: self.0.url.clone(),
            })
        })();
        self.done(index, answer)
    }
}

impl Service {
    fn create(&self, req: pb::SandboxCreateRequest) -> Result<pb::SandboxCreateResponse, Status> {
        let def = req
            .definition
            .ok_or_else(|| Status::invalid_argument("definition is required"))?;
        let mut inner = self.0.inner.lock();
        if !inner.apps.values().any(|id| *id == req.app_id) {
            return Err(Status::not_found(format!("App {} not found", req.app_id)));
        }
        if !inner.images.contains_key(&def.image_id) {
            return Err(Status::not_found(format!(
                "Image {} not found",
                def.image_id
            )));
        }
        let timeout_secs = match def.timeout_secs {
            0 => 300,
            t if t > 86_400 => {
                return Err(Status::invalid_argument(
                    "timeout_secs must be at most 86400 (24 hours)",
                ));
            }
            t => t,
        };
        let resources = def.resources.unwrap_or_default();
        if resources.milli_cpu_max != 0 && resources.milli_cpu_max < resources.milli_cpu {
            return Err(Status::invalid_argument(
                "milli_cpu_max cannot be lower than milli_cpu",
            ));
        }
        if resources.memory_mb_max != 0 && resources.memory_mb_max < resources.memory_mb {
            return Err(Status::invalid_argument(
                "memory_mb_max cannot be lower than memory_mb",
            ));
        }
        if let Some(name) = def.name.as_deref().filter(|n| !n.is_empty()) {
            let taken = inner.sandboxes.values_mut().any(|sb| {
                sb.refresh();
                sb.record.app_id == req.app_id
                    && sb.record.ended.is_none()
                    && sb.record.name.as_deref() == Some(name)
            });
            if taken {
                return Err(Status::already_exists(format!(
                    "A Sandbox with name '{name}' already exists in this App"
                )));
            }
        }
        let fs = SandboxFs::new("/root")
            .map_err(|e| Status::internal(format!("cannot make the sandbox folder: {e}")))?;
        if let Some(workdir) = def.workdir.as_deref() {
            let dir = fs
                .resolve(workdir)
                .map_err(|e| Status::invalid_argument(format!("workdir: {e}")))?;
            std::fs::create_dir_all(dir)
                .map_err(|e| Status::internal(format!("cannot make workdir: {e}")))?;
        }
        let sandbox_id = random_id("sb");
        let task_id = random_id("ta");
        let record = SandboxRecord {
            sandbox_id: sandbox_id.clone(),
            app_id: req.app_id,
            image_id: def.image_id,
            task_id: task_id.clone(),
            name: def.name.filter(|n| !n.is_empty()),
            milli_cpu: resources.milli_cpu,
            milli_cpu_max: resources.milli_cpu_max,
            memory_mb: resources.memory_mb,
            memory_mb_max: resources.memory_mb_max,
            timeout_secs,
            workdir: def.workdir,
            regions: def
                .scheduler_placement
                .map(|p| p.regions)
                .unwrap_or_default(),
            tags: req
                .tags
                .into_iter()
                .map(|t| (t.tag_name, t.tag_value))
                .collect(),
            env: def
                .environment_variables
                .map(|m| m.contents)
                .unwrap_or_default(),
            entrypoint_args: def.entrypoint_args,
            ended: None,
        };
        inner.tasks.insert(task_id, sandbox_id.clone());
        inner.sandboxes.insert(
            sandbox_id.clone(),
            SandboxState {
                record,
                fs: Arc::new(fs),
                started: Instant::now(),
                ended_at: None,
                execs: HashMap::new(),
                usage: None,
            },
        );
        Ok(pb::SandboxCreateResponse { sandbox_id })
    }

    fn exec_start(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::TaskExecStartRequest,
    ) -> Result<pb::TaskExecStartResponse, Status> {
        let mut inner = self.0.inner.lock();
        check_jwt_task(&inner, md, &req.task_id)?;
        let sandbox_id = inner
            .tasks
            .get(&req.task_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))?;
        let sb = inner
            .sandboxes
            .get_mut(&sandbox_id)
            .ok_or_else(|| Status::not_found(format!("task {} not found", req.task_id)))?;
        sb.refresh();
        if sb.record.ended.is_some() {
            return Err(Status::failed_precondition(format!(
                "task {} has already finished",
                req.task_id
            )));
        }
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("exec_id is required"));
        }
        // Exec ids make a start idempotent: the same id is the same command.
        if sb.execs.contains_key(&req.exec_id) {
            return Ok(pb::TaskExecStartResponse {});
        }
        if let Some(workdir) = req.workdir.as_deref()
            && !workdir.starts_with('/')
        {
            return Err(Status::invalid_argument(format!(
                "workdir must be an absolute path, got: {workdir:?}"
            )));
        }
        let process = if req.command_args.first().map(String::as_str)
            == Some(fs_tools::FS_TOOLS_PATH)
        {
            let fs = sb.fs.clone();
            let arg = req.command_args.get(1).cloned().unwrap_or_default();
            Process::builtin(Box::new(move |stdin| fs_tools::run(&fs, &arg, stdin)))
        } else {
            let mut env: Vec<(String, String)> = sb.record.env.clone().into_iter().collect();
            env.extend(req.env);
            let spec = ExecSpec {
                argv: req.command_args,
                env,
                cwd: req.workdir.or_else(|| sb.record.workdir.clone()),
                timeout: req.timeout_secs.map(|s| Duration::from_secs(u64::from(s))),
            };
            Process::spawn(&sb.fs, &spec).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        sb.execs.insert(req.exec_id, process);
        Ok(pb::TaskExecStartResponse {})
    }
}

type StdioStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TaskExecStdioReadResponse, Status>> + Send>>;

/// The most bytes in one `TaskExecStdioReadResponse`.
const STDIO_CHUNK: usize = 64 * 1024;

#[tonic::async_trait]
impl TaskCommandRouter for Service {
    async fn task_exec_start(
        &self,
        request: Request<pb::TaskExecStartRequest>,
    ) -> Answer<pb::TaskExecStartResponse> {
        let index = self.gate(Route::TaskExecStart, request.metadata()).await?;
        let (md, _, req) = request.into_parts();
        let answer = self.exec_start(&md, req);
        self.done(index, answer)
    }

    async fn task_exec_stdin_write(
        &self,
        request: Request<pb::TaskExecStdinWriteRequest>,
    ) -> Answer<pb::TaskExecStdinWriteResponse> {
        let index = self
            .gate(Route::TaskExecStdinWrite, request.metadata())
            .await?;
        let (md, _, req) = request.into_parts();
        let answer = match self.exec(&md, &req.task_id, &req.exec_id) {
            Ok(p) => p
                .write_stdin(req.offset, &req.data, req.eof)
                .await
                .map(|()| pb::TaskExecStdinWriteResponse {})
                .map_err(|e| Status::failed_precondition(e.to_string())),
            Err(e) => Err(e),
        };
        self.done(index, answer)
    }

    async fn task_exec_stdin_status(
        &self,
        request: Request<pb::TaskExecStdinStatusRequest>,
    ) -> Answer<pb::TaskExecStdinStatusResponse> {
        let index = self
            .gate(Route::TaskExecStdinStatus, request.metadata())
            .await?;
        let (md, _, req) = request.into_parts();
        let answer = self.exec(&md, &req.task_id, &req.exec_id).map(|p| {
            let (written, closed) = p.stdin_status();
            pb::TaskExecStdinStatusResponse {
                num_bytes_written: written,
                closed,
            }
        });
        self.done(index, answer)
    }

    type TaskExecStdioReadStream = StdioStream;

    async fn task_exec_stdio_read(
        &self,
        request: Request<pb::TaskExecStdioReadRequest>,
    ) -> Answer<StdioStream> {
        let index = self
            .gate(Route::TaskExecStdioRead, request.metadata())
            .await?;
        let (md, _, req) = request.into_parts();
        let process = match self.exec(&md, &req.task_id, &req.exec_id) {
            Ok(p) => p,
            Err(e) => return self.done(index, Err(e)),
        };
        let fd = if req.file_descriptor == pb::TaskExecStdioFileDescriptor::Stderr as i32 {
            Fd::Stderr
        } else {
            Fd::Stdout
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut offset = req.offset;
        tokio::spawn(async move {
            loop {
                let (data, eof) = process.read_more(fd, offset).await;
                for chunk in data.chunks(STDIO_CHUNK) {
                    let msg = pb::TaskExecStdioReadResponse {
                        data: chunk.to_vec(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                offset += data.len() as u64;
                if eof {
                    return;
                }
            }
        });
        let stream: StdioStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.done(index, Ok(stream))
    }

    async fn task_exec_poll(
        &self,
        request: Request<pb::TaskExecPollRequest>,
    ) -> Answer<pb::TaskExecPollResponse> {
        let index = self.gate(Route::TaskExecPoll, request.metadata()).await?;
        let (md, _, req) = request.into_parts();
        let answer = self
            .exec(&md, &req.task_id, &req.exec_id)
            .map(|p| pb::TaskExecPollResponse {
                exit_status: exit_status(&p),
            });
        self.done(index, answer)
    }

    async fn task_exec_wait(
        &self,
        request: Request<pb::TaskExecWaitRequest>,
    ) -> Answer<pb::TaskExecWaitResponse> {
        let index = self.gate(Route::TaskExecWait, request.metadata()).await?;
        let (md, _, req) = request.into_parts();
        let answer = match self.exec(&md, &req.task_id, &req.exec_id) {
            Ok(p) => {
                p.wait().await;
                Ok(pb::TaskExecWaitResponse {
                    exit_status: exit_status(&p),
                })
            }
            Err(e) => Err(e),
        };
        self.done(index, answer)
    }
}
