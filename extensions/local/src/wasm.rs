//! The component: WIT calls in, agent API calls out (docs/agent.md), WIT answers back.

wit_bindgen::generate!({
    path: "../../wit",
    world: "sandbox-extension",
    generate_all,
});

use std::collections::BTreeMap;
use std::sync::OnceLock;

use exports::sandboxer::extension::backend::{
    self as wit, BackendError, Capability, Cost, Created, ExtensionInfo, Kind, LineItem, Measure,
    Money, PoolCapacity, SandboxContext, SandboxRequest, SandboxState, SandboxStatus, Usage,
};
use exports::sandboxer::extension::files::{self, EntryKind, FileChunk, FileEntry};
use exports::sandboxer::extension::process::{
    self, Command, ExecOutput, ExecRequest, Exit, ExitStatus, OutputChunk, OutputStream,
    ProcessOutput,
};
use sandboxer_agent_wire as api;
use wasip2::http::types::{ErrorCode, Method};

use crate::config::{AgentConfig, Config};
use crate::handle::{Handle, query_escape, valid_id};
use crate::http::{self, Call, Failure, Response};
use crate::placement::{self, Seen};
use crate::pricing::{self, Rates};

struct Local;

/// Margin on top of a command's own timeout or wait before a call is given up.
const MARGIN_MS: u64 = 10_000;
/// Timeout of lifecycle calls (create waits for the sandbox's init).
const LIFECYCLE_MS: u64 = 30_000;
/// Timeout of a health probe.
const PROBE_MS: u64 = 5_000;

/// The configuration, parsed once per instance: the host grants it when it instantiates
/// the component and it cannot change during the instance's life (an input, not state).
fn config() -> Result<&'static Config, BackendError> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return c.as_ref().map_err(|e| BackendError::Internal(e.clone()));
    }
    let pairs = wasi::config::store::get_all().map_err(|e| {
        let why = match e {
            wasi::config::store::Error::Upstream(m) | wasi::config::store::Error::Io(m) => m,
        };
        BackendError::Internal(format!("reading the configuration: {why}"))
    })?;
    CONFIG
        .get_or_init(|| Config::from_pairs(&pairs))
        .as_ref()
        .map_err(|e| BackendError::Internal(e.clone()))
}

fn agents() -> Result<&'static [AgentConfig], BackendError> {
    config()?
        .require_agents()
        .map_err(BackendError::Unavailable)
}

fn rates(c: &Config) -> Rates {
    Rates {
        cpu_second: c.price_cpu_second,
        gib_second: c.price_gib_second,
    }
}

fn transport(url: &str, what: &str, f: Failure) -> BackendError {
    BackendError::Unavailable(match f {
        Failure::Transport(ErrorCode::HttpRequestDenied) => format!(
            "agent {url}: {what} denied by the host (add the agent's host:port to \
             allowed_outbound_hosts)"
        ),
        Failure::Transport(code) => format!("agent {url}: {what} failed: {code:?}"),
        Failure::Protocol(m) => format!("agent {url}: {what}: {m}"),
    })
}

/// Maps an agent's error answer onto the contract's variant.
fn answer_error(url: &str, what: &str, r: &Response) -> BackendError {
    let parsed: Option<api::ErrorBody> = serde_json::from_slice(&r.body).ok();
    let (code, message) = parsed
        .map(|b| (b.error.code, b.error.message))
        .unwrap_or_else(|| (String::new(), format!("HTTP {}", r.status)));
    let text = format!("agent {url}: {what}: {message}");
    match code.as_str() {
        "invalid_request" | "conflict" | "too_large" | "no_space" => {
            BackendError::InvalidRequest(text)
        }
        "unauthorized" => BackendError::Unauthorized(format!(
            "agent {url}: the token was refused (check the `token` secret)"
        )),
        "not_found" => BackendError::NotFound(text),
        "capacity_exhausted" => BackendError::CapacityExhausted(text),
        "unsupported" => BackendError::Unsupported(text),
        _ if r.status >= 500 => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

fn call(
    agent: &AgentConfig,
    method: Method,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout_ms: u64,
    what: &str,
) -> Result<Response, BackendError> {
    http::send(&Call {
        base: &agent.url,
        method,
        path,
        token: agent.token.as_deref(),
        body,
        timeout_ms,
    })
    .map_err(|f| transport(&agent.url, what, f))
}

/// A call whose success is `204 No Content` (`ok` also accepted, e.g. 404 for a kill).
fn empty_call(
    agent: &AgentConfig,
    method: Method,
    path: &str,
    body: Option<(&str, &[u8])>,
    what: &str,
    ok: &[u16],
) -> Result<(), BackendError> {
    let r = call(agent, method, path, body, LIFECYCLE_MS, what)?;
    if r.status == 204 || ok.contains(&r.status) {
        Ok(())
    } else {
        Err(answer_error(&agent.url, what, &r))
    }
}

/// A call whose success is one of `ok`, with a JSON answer.
fn json_call<T: for<'de> serde::Deserialize<'de>>(
    agent: &AgentConfig,
    method: Method,
    path: &str,
    body: Option<&[u8]>,
    timeout_ms: u64,
    what: &str,
    ok: &[u16],
) -> Result<T, BackendError> {
    let r = call(
        agent,
        method,
        path,
        body.map(|b| ("application/json", b)),
        timeout_ms,
        what,
    )?;
    if !ok.contains(&r.status) {
        return Err(answer_error(&agent.url, what, &r));
    }
    serde_json::from_slice(&r.body).map_err(|e| {
        BackendError::Internal(format!(
            "agent {}: {what}: unexpected answer: {e}",
            agent.url
        ))
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, BackendError> {
    serde_json::to_vec(v).map_err(|e| BackendError::Internal(format!("encoding a request: {e}")))
}

/// The agent and id a context's handle names.
fn located(ctx: &SandboxContext) -> Result<(&'static AgentConfig, Handle), BackendError> {
    let h = Handle::parse(&ctx.handle).map_err(BackendError::Internal)?;
    let agent = config()?.agent(&h.agent).ok_or_else(|| {
        BackendError::Internal(format!(
            "the sandbox is on agent {}, which is no longer in `agents`",
            h.agent
        ))
    })?;
    Ok((agent, h))
}

fn health(agent: &AgentConfig) -> Seen {
    match json_call::<api::Health>(
        agent,
        Method::Get,
        "/v1/health",
        None,
        PROBE_MS,
        "GET /v1/health",
        &[200],
    ) {
        Ok(h) => Seen::Up {
            slots: h.slots,
            free: h.free,
        },
        Err(e) => Seen::Down(match e {
            BackendError::Unavailable(m)
            | BackendError::Unauthorized(m)
            | BackendError::Internal(m) => m,
            other => format!("{other:?}"),
        }),
    }
}

fn cost(currency: &str, p: pricing::Price) -> Cost {
    Cost {
        total: Money {
            amount: p.total.to_string(),
            currency: currency.to_owned(),
        },
        line_items: p
            .lines
            .into_iter()
            .map(|l| LineItem {
                description: l.description,
                quantity: l.quantity.to_string(),
                unit: l.unit.to_owned(),
                unit_price: l.unit_price.to_string(),
                amount: l.amount.to_string(),
            })
            .collect(),
    }
}

/// What this pool can serve at all (the router drops it otherwise, before any hold).
fn servable(c: &Config, r: &SandboxRequest) -> Result<(), BackendError> {
    if r.resources.gpu.is_some() {
        return Err(BackendError::Unsupported(
            "the local pool has no GPUs".into(),
        ));
    }
    if !c.templates.contains(&r.template) {
        return Err(BackendError::Unsupported(format!(
            "template {:?} is not offered (templates: {})",
            r.template,
            c.templates.join(", ")
        )));
    }
    if r.resources.vcpus == 0 || r.resources.memory_mib == 0 || r.max_duration_secs == 0 {
        return Err(BackendError::InvalidRequest(
            "vcpus, memory_mib and max_duration_secs must be at least 1".into(),
        ));
    }
    if let Some(region) = &r.region
        && !c.regions.is_empty()
        && !c.regions.contains(region)
    {
        return Err(BackendError::Unsupported(format!(
            "region {region:?} is not served (regions: {})",
            c.regions.join(", ")
        )));
    }
    Ok(())
}

fn measures(r: &SandboxRequest, duration_ms: u64, cpu_us: u64, peak: Option<u64>) -> Vec<Measure> {
    let (cpu, gib) = pricing::usage_quantities(
        r.resources.memory_mib,
        r.max_duration_secs,
        duration_ms,
        cpu_us,
    );
    let mut v = vec![
        Measure {
            name: pricing::CPU_SECONDS.into(),
            quantity: cpu.normalize().to_string(),
            unit: "cpu-second".into(),
        },
        Measure {
            name: pricing::GIB_SECONDS.into(),
            quantity: gib.normalize().to_string(),
            unit: "gib-second".into(),
        },
    ];
    if let Some(p) = peak {
        v.push(Measure {
            name: pricing::PEAK_MEMORY_BYTES.into(),
            quantity: p.to_string(),
            unit: "byte".into(),
        });
    }
    v
}

impl wit::Guest for Local {
    fn info() -> ExtensionInfo {
        let (name, currency, latency, regions) = match config() {
            Ok(c) => (
                c.name.clone(),
                c.currency.clone(),
                c.startup_latency_ms,
                c.regions.clone(),
            ),
            Err(BackendError::Internal(m)) => (
                format!("local (bad configuration: {m})"),
                "USD".into(),
                20,
                Vec::new(),
            ),
            Err(_) => (
                "local (unreadable configuration)".into(),
                "USD".into(),
                20,
                Vec::new(),
            ),
        };
        ExtensionInfo {
            id: "local".into(),
            name,
            version: env!("CARGO_PKG_VERSION").into(),
            kind: Kind::SelfHosted,
            currency,
            regions,
            startup_latency_ms: latency,
            capabilities: vec![Capability::Capacity, Capability::Status],
        }
    }

    fn estimate_cost(r: SandboxRequest) -> Result<Cost, BackendError> {
        let c = config()?;
        servable(c, &r)?;
        let p = pricing::estimate(
            rates(c),
            r.resources.vcpus,
            r.resources.memory_mib,
            r.max_duration_secs,
        )
        .map_err(BackendError::Internal)?;
        Ok(cost(&c.currency, p))
    }

    fn create(r: SandboxRequest) -> Result<Created, BackendError> {
        let c = config()?;
        servable(c, &r)?;
        let agents = agents()?;
        if !valid_id(&r.sandbox_id) {
            return Err(BackendError::InvalidRequest(format!(
                "sandbox id {:?}: the agents take 1-64 of A-Z a-z 0-9 - _",
                r.sandbox_id
            )));
        }
        let body = encode(&api::CreateRequest {
            id: r.sandbox_id.clone(),
            template: r.template.clone(),
            vcpus: r.resources.vcpus,
            memory_mib: r.resources.memory_mib,
            disk_mib: r.resources.disk_mib,
            max_duration_secs: r.max_duration_secs,
            env: r.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        })?;
        let seen: Vec<Seen> = agents.iter().map(health).collect();
        let mut last = None;
        for i in placement::order(&seen) {
            let agent = &agents[i];
            match json_call::<api::SandboxInfo>(
                agent,
                Method::Post,
                "/v1/sandboxes",
                Some(&body),
                LIFECYCLE_MS,
                "POST /v1/sandboxes",
                &[200, 201],
            ) {
                Ok(info) => {
                    return Ok(Created {
                        handle: Handle::new(&agent.url, &info.id).encode(),
                        region: r.region.clone(),
                    });
                }
                // Full meanwhile or gone: the next agent may take it.
                Err(e @ (BackendError::CapacityExhausted(_) | BackendError::Unavailable(_))) => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        let urls: Vec<String> = agents.iter().map(|a| a.url.clone()).collect();
        Err(match last {
            Some(e) => e,
            None if seen.iter().all(|s| matches!(s, Seen::Down(_))) => BackendError::Unavailable(
                format!("no agent answered: {}", placement::why_none(&urls, &seen)),
            ),
            None => BackendError::CapacityExhausted(format!(
                "every agent is full: {}",
                placement::why_none(&urls, &seen)
            )),
        })
    }

    fn status(ctx: SandboxContext) -> Result<SandboxStatus, BackendError> {
        let (agent, h) = located(&ctx)?;
        let info: api::SandboxInfo = json_call(
            agent,
            Method::Get,
            &format!("/v1/sandboxes/{}", h.id),
            None,
            LIFECYCLE_MS,
            "GET /v1/sandboxes/{id}",
            &[200],
        )?;
        let state = match info.state {
            api::State::Starting => SandboxState::Starting,
            api::State::Running => SandboxState::Running,
            api::State::Stopped | api::State::Destroyed => SandboxState::Stopped,
        };
        Ok(SandboxStatus {
            state,
            detail: format!("on {}: {}", h.agent, info.detail),
        })
    }

    fn destroy(ctx: SandboxContext) -> Result<Usage, BackendError> {
        let (agent, h) = located(&ctx)?;
        let duration_ms = ctx.now_ms.saturating_sub(ctx.created_at_ms);
        let r = call(
            agent,
            Method::Delete,
            &format!("/v1/sandboxes/{}", h.id),
            None,
            LIFECYCLE_MS,
            "DELETE /v1/sandboxes/{id}",
        )?;
        let (cpu_us, peak) = match r.status {
            200 => {
                let d: api::Destroyed = serde_json::from_slice(&r.body).map_err(|e| {
                    BackendError::Internal(format!(
                        "agent {}: destroy: unexpected answer: {e}",
                        h.agent
                    ))
                })?;
                (d.usage.cpu_us, d.usage.peak_memory_bytes)
            }
            // The agent no longer has the record (it keeps them for `keep_destroyed_hours`):
            // the most the sandbox could have used, every vCPU busy all its life.
            404 => {
                let ms = duration_ms.min(ctx.request.max_duration_secs.saturating_mul(1000));
                (
                    u64::from(ctx.request.resources.vcpus)
                        .saturating_mul(ms)
                        .saturating_mul(1000),
                    None,
                )
            }
            _ => return Err(answer_error(&h.agent, "DELETE /v1/sandboxes/{id}", &r)),
        };
        Ok(Usage {
            duration_ms,
            measures: measures(&ctx.request, duration_ms, cpu_us, peak),
        })
    }

    fn meter_actual(r: SandboxRequest, usage: Usage) -> Result<Cost, BackendError> {
        let c = config()?;
        let find = |name: &str| -> Result<rust_decimal::Decimal, BackendError> {
            let m = usage
                .measures
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| {
                    BackendError::InvalidRequest(format!("the usage has no {name} measure"))
                })?;
            pricing::parse_quantity(name, &m.quantity).map_err(BackendError::InvalidRequest)
        };
        let p = pricing::meter(
            rates(c),
            r.resources.vcpus,
            r.resources.memory_mib,
            r.max_duration_secs,
            find(pricing::CPU_SECONDS)?,
            find(pricing::GIB_SECONDS)?,
        )
        .map_err(BackendError::Internal)?;
        Ok(cost(&c.currency, p))
    }

    fn capacity() -> Result<PoolCapacity, BackendError> {
        let agents = agents()?;
        let seen: Vec<Seen> = agents.iter().map(health).collect();
        match placement::capacity(&seen) {
            Some(n) => Ok(PoolCapacity {
                max_sandboxes: Some(n),
            }),
            None => {
                let urls: Vec<String> = agents.iter().map(|a| a.url.clone()).collect();
                Err(BackendError::Unavailable(format!(
                    "no agent answered: {}",
                    placement::why_none(&urls, &seen)
                )))
            }
        }
    }
}

fn exec_body(req: &ExecRequest) -> api::ExecRequest {
    let (argv, shell) = match &req.command {
        Command::Argv(a) => (Some(a.clone()), None),
        Command::Shell(s) => (None, Some(s.clone())),
    };
    api::ExecRequest {
        argv,
        shell,
        env: req.env.iter().cloned().collect(),
        cwd: req.cwd.clone(),
        stdin: req.stdin.clone(),
        keep_stdin_open: req.keep_stdin_open,
        timeout_ms: req.timeout_ms,
        output_limit_bytes: req.output_limit_bytes,
    }
}

fn exit(e: api::Exit) -> Exit {
    Exit {
        status: match e.status {
            api::ExitStatus::Exited => ExitStatus::Exited,
            api::ExitStatus::TimedOut => ExitStatus::TimedOut,
            api::ExitStatus::Killed => ExitStatus::Killed,
            api::ExitStatus::Failed => ExitStatus::Failed,
        },
        exit_code: e.exit_code,
        duration_ms: e.duration_ms,
        cpu_ms: e.cpu_ms,
        detail: e.detail,
    }
}

/// A process id goes into a URL path: the agent's are `p` and digits.
fn checked_pid(pid: &str) -> Result<&str, BackendError> {
    if !pid.is_empty() && pid.len() <= 32 && pid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(pid)
    } else {
        Err(BackendError::InvalidRequest(format!(
            "{pid:?} is not a process id of this backend"
        )))
    }
}

impl process::Guest for Local {
    fn exec(ctx: SandboxContext, req: ExecRequest) -> Result<ExecOutput, BackendError> {
        let (agent, h) = located(&ctx)?;
        let body = encode(&exec_body(&ExecRequest {
            keep_stdin_open: false,
            ..req.clone()
        }))?;
        let out: api::ExecResponse = json_call(
            agent,
            Method::Post,
            &format!("/v1/sandboxes/{}/exec", h.id),
            Some(&body),
            req.timeout_ms.saturating_add(MARGIN_MS),
            "exec",
            &[200],
        )?;
        Ok(ExecOutput {
            exit: exit(out.exit),
            stdout: out.stdout,
            stdout_truncated: out.stdout_truncated,
            stderr: out.stderr,
            stderr_truncated: out.stderr_truncated,
        })
    }

    fn start(ctx: SandboxContext, req: ExecRequest) -> Result<String, BackendError> {
        let (agent, h) = located(&ctx)?;
        let body = encode(&exec_body(&req))?;
        let s: api::Started = json_call(
            agent,
            Method::Post,
            &format!("/v1/sandboxes/{}/processes", h.id),
            Some(&body),
            LIFECYCLE_MS,
            "start",
            &[201],
        )?;
        Ok(s.process_id)
    }

    fn read_output(
        ctx: SandboxContext,
        pid: String,
        cursor: String,
        wait_ms: u32,
        max_bytes: u32,
    ) -> Result<ProcessOutput, BackendError> {
        let (agent, h) = located(&ctx)?;
        let pid = checked_pid(&pid)?;
        let o: api::Output = json_call(
            agent,
            Method::Get,
            &format!(
                "/v1/sandboxes/{}/processes/{pid}/output?cursor={}&wait_ms={wait_ms}&max_bytes={max_bytes}",
                h.id,
                query_escape(&cursor)
            ),
            None,
            u64::from(wait_ms).saturating_add(MARGIN_MS),
            "read output",
            &[200],
        )?;
        Ok(ProcessOutput {
            chunks: o
                .chunks
                .into_iter()
                .map(|c| OutputChunk {
                    stream: match c.stream {
                        api::Stream::Stdout => OutputStream::Stdout,
                        api::Stream::Stderr => OutputStream::Stderr,
                    },
                    data: c.data,
                })
                .collect(),
            cursor: o.cursor,
            exit: o.exit.map(exit),
            truncated: o.truncated,
        })
    }

    fn write_stdin(
        ctx: SandboxContext,
        pid: String,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), BackendError> {
        let (agent, h) = located(&ctx)?;
        let pid = checked_pid(&pid)?;
        let body = encode(&api::StdinRequest { data, close })?;
        empty_call(
            agent,
            Method::Post,
            &format!("/v1/sandboxes/{}/processes/{pid}/stdin", h.id),
            Some(("application/json", &body)),
            "write stdin",
            &[],
        )
    }

    fn kill(ctx: SandboxContext, pid: String) -> Result<(), BackendError> {
        let (agent, h) = located(&ctx)?;
        let pid = checked_pid(&pid)?;
        // 404: ended long ago and forgotten; killing it is not an error.
        empty_call(
            agent,
            Method::Post,
            &format!("/v1/sandboxes/{}/processes/{pid}/kill", h.id),
            None,
            "kill",
            &[404],
        )
    }
}

impl files::Guest for Local {
    fn write_file(
        ctx: SandboxContext,
        path: String,
        data: Vec<u8>,
        append: bool,
    ) -> Result<(), BackendError> {
        let (agent, h) = located(&ctx)?;
        empty_call(
            agent,
            Method::Put,
            &format!(
                "/v1/sandboxes/{}/files?path={}&append={append}",
                h.id,
                query_escape(&path)
            ),
            Some(("application/octet-stream", &data)),
            "write file",
            &[],
        )
    }

    fn read_file(
        ctx: SandboxContext,
        path: String,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FileChunk, BackendError> {
        let (agent, h) = located(&ctx)?;
        let r = call(
            agent,
            Method::Get,
            &format!(
                "/v1/sandboxes/{}/files?path={}&offset={offset}&max_bytes={max_bytes}",
                h.id,
                query_escape(&path)
            ),
            None,
            LIFECYCLE_MS,
            "read file",
        )?;
        if r.status != 200 {
            return Err(answer_error(&h.agent, "read file", &r));
        }
        let size = r.file_size.ok_or_else(|| {
            BackendError::Internal(format!(
                "agent {}: read file: no x-file-size in the answer",
                h.agent
            ))
        })?;
        Ok(FileChunk { data: r.body, size })
    }

    fn list_files(ctx: SandboxContext, path: String) -> Result<Vec<FileEntry>, BackendError> {
        let (agent, h) = located(&ctx)?;
        let l: api::Listing = json_call(
            agent,
            Method::Get,
            &format!("/v1/sandboxes/{}/dir?path={}", h.id, query_escape(&path)),
            None,
            LIFECYCLE_MS,
            "list files",
            &[200],
        )?;
        Ok(l.entries
            .into_iter()
            .map(|e| FileEntry {
                kind: match e.kind.as_str() {
                    "file" => EntryKind::File,
                    "directory" => EntryKind::Directory,
                    "symlink" => EntryKind::Symlink,
                    _ => EntryKind::Other,
                },
                name: e.name,
                size: e.size,
                modified_ms: e.modified_ms,
            })
            .collect())
    }
}

export!(Local);
