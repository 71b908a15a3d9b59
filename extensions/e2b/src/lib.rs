//! sandboxer backend extension for E2B (<https://e2b.dev>): provisions sandboxes through
//! E2B's REST API (`POST /sandboxes`, `GET`/`DELETE /sandboxes/{id}`) over `wasi:http`.
//! Points at `https://api.e2b.app` by default, or at a self-hosted E2B by configuration.
//! Bills per second of allocated vCPUs and memory, like E2B does.

mod config;
mod decimal;
mod http;

wit_bindgen::generate!({
    world: "backend-extension",
    path: "../../wit",
    generate_all,
});

use std::collections::BTreeMap;

use exports::sandboxer::extension::backend::{
    BackendError, Capability, Cost, Created, ExtensionInfo, Guest, Kind, LineItem, Measure, Money,
    PoolCapacity, SandboxContext, SandboxRequest, SandboxState, SandboxStatus, Usage,
};
use serde::{Deserialize, Serialize};
use wasip2::http::types::{ErrorCode, Method};

use config::Config;
use decimal::Dec;

/// What `create` hands the host to keep: the E2B sandbox id and the size it was given,
/// read right after create (a killed sandbox answers 404, so usage cannot depend on
/// reading it later).
#[derive(Serialize, Deserialize)]
struct Handle {
    /// E2B's `sandboxID`.
    id: String,
    /// `cpuCount` of the sandbox.
    cpu: u32,
    /// `memoryMB` of the sandbox (MiB).
    mem: u32,
}

#[derive(Deserialize)]
struct SandboxCreated {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
}

#[derive(Deserialize)]
struct SandboxDetail {
    #[serde(rename = "cpuCount")]
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(default)]
    state: String,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_code: Option<String>,
}

#[derive(Serialize)]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    timeout: u64,
    metadata: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "envVars")]
    env_vars: BTreeMap<&'a str, &'a str>,
}

/// E2B caps a sandbox's lifetime at 24 hours.
const MAX_TIMEOUT_SECS: u64 = 86_400;

struct E2b;

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// Maps an HTTP answer that is not the expected success onto the contract's error variant,
/// so the router fails over only on what is retryable.
fn api_error(what: &str, status: u16, body: &[u8]) -> BackendError {
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

fn transport_error(what: &str, failure: http::Failure) -> BackendError {
    match failure {
        http::Failure::Transport(ErrorCode::HttpRequestDenied) => {
            BackendError::Unavailable(format!(
                "E2B {what}: request denied by the host (base_url not in allowed_outbound_hosts)"
            ))
        }
        http::Failure::Transport(
            code @ (ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::DnsTimeout),
        ) => BackendError::Unavailable(format!("E2B {what} timed out ({code:?})")),
        http::Failure::Transport(code) => {
            BackendError::Unavailable(format!("E2B {what} failed: {code:?}"))
        }
        http::Failure::Protocol(msg) => BackendError::Unavailable(format!("E2B {what}: {msg}")),
    }
}

/// One API call: `Ok` with the answer when its status is `expect`, else the mapped error.
fn call(
    cfg: &Config,
    method: Method,
    what: &str,
    path: &str,
    body: Option<&[u8]>,
    expect: &[u16],
) -> Result<http::Response, BackendError> {
    let base = cfg.base_url().map_err(internal)?;
    let key = cfg.api_key().ok_or_else(|| {
        BackendError::Unauthorized(
            "no api_key configured (grant it under [secrets] in the sidecar)".into(),
        )
    })?;
    let response =
        http::send(&base, method, path, key, body).map_err(|f| transport_error(what, f))?;
    if expect.contains(&response.status) {
        Ok(response)
    } else {
        Err(api_error(what, response.status, &response.body))
    }
}

fn parse_handle(handle: &str) -> Result<Handle, BackendError> {
    serde_json::from_str(handle).map_err(|e| internal(format!("unreadable handle: {e}")))
}

/// The id goes into a URL path: E2B ids are alphanumeric; refuse anything else.
fn checked_id(id: &str) -> Result<&str, BackendError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id)
    } else {
        Err(internal(format!(
            "handle holds a malformed sandbox id {id:?}"
        )))
    }
}

/// vCPU-seconds for `vcpus` over `ms` milliseconds, exactly.
fn vcpu_seconds(vcpus: u32, ms: u64) -> Dec {
    Dec::new(u128::from(vcpus) * u128::from(ms), 3)
}

/// GiB-seconds for `mib` over `ms`: mib × ms / (1024 × 1000) = mib × ms × 5^10 / 10^13, exact.
fn gib_seconds(mib: u32, ms: u64) -> Dec {
    Dec::new(u128::from(mib) * u128::from(ms) * 9_765_625, 13)
}

fn line(
    description: &str,
    quantity: Dec,
    unit: &str,
    price: Dec,
) -> Result<(LineItem, Dec), BackendError> {
    let amount = quantity
        .checked_mul(price)
        .ok_or_else(|| internal(format!("{description}: amount overflows")))?;
    Ok((
        LineItem {
            description: description.into(),
            quantity: quantity.to_string(),
            unit: unit.into(),
            unit_price: price.to_string(),
            amount: amount.to_string(),
        },
        amount,
    ))
}

fn price(cfg: &Config, vcpu_s: Dec, gib_s: Dec) -> Result<Cost, BackendError> {
    let (cpu_line, cpu_amount) = line(
        "vCPU time",
        vcpu_s,
        "vcpu-second",
        cfg.price_vcpu_second().map_err(internal)?,
    )?;
    let (mem_line, mem_amount) = line(
        "Memory",
        gib_s,
        "gib-second",
        cfg.price_gib_second().map_err(internal)?,
    )?;
    let total = cpu_amount
        .checked_add(mem_amount)
        .ok_or_else(|| internal("total overflows"))?;
    Ok(Cost {
        total: Money {
            amount: total.to_string(),
            currency: cfg.currency().into(),
        },
        line_items: vec![cpu_line, mem_line],
    })
}

/// E2B sizes a sandbox by its template; refuse requests the configured template cannot meet
/// (another backend may) and give the size to bill on.
fn template_size(cfg: &Config, request: &SandboxRequest) -> Result<(u32, u32), BackendError> {
    let vcpus = cfg.template_vcpus().map_err(internal)?;
    let mib = cfg.template_memory_mib().map_err(internal)?;
    let r = &request.resources;
    if r.gpu.is_some() {
        return Err(BackendError::Unsupported(
            "E2B sandboxes have no GPU".into(),
        ));
    }
    if r.vcpus > vcpus || r.memory_mib > mib {
        return Err(BackendError::Unsupported(format!(
            "the template gives {vcpus} vCPUs and {mib} MiB; the request needs {} vCPUs and {} MiB",
            r.vcpus, r.memory_mib
        )));
    }
    if request.max_duration_secs == 0 || request.max_duration_secs > MAX_TIMEOUT_SECS {
        return Err(BackendError::InvalidRequest(format!(
            "max duration {}s is outside E2B's 1..={MAX_TIMEOUT_SECS}s",
            request.max_duration_secs
        )));
    }
    Ok((vcpus, mib))
}

impl Guest for E2b {
    fn info() -> ExtensionInfo {
        let cfg = Config::load();
        ExtensionInfo {
            id: cfg.id().into(),
            name: cfg.name(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: if cfg.self_hosted() {
                Kind::SelfHosted
            } else {
                Kind::Saas
            },
            currency: cfg.currency().into(),
            regions: cfg.regions(),
            startup_latency_ms: cfg.startup_latency_ms(),
            capabilities: if cfg.max_sandboxes().ok().flatten().is_some() {
                vec![Capability::Status, Capability::Capacity]
            } else {
                vec![Capability::Status]
            },
        }
    }

    fn estimate_cost(request: SandboxRequest) -> Result<Cost, BackendError> {
        let cfg = Config::load();
        let (vcpus, mib) = template_size(&cfg, &request)?;
        let ms = request.max_duration_secs.saturating_mul(1000);
        price(&cfg, vcpu_seconds(vcpus, ms), gib_seconds(mib, ms))
    }

    fn create(request: SandboxRequest) -> Result<Created, BackendError> {
        let cfg = Config::load();
        let (vcpus, mib) = template_size(&cfg, &request)?;
        let template = if request.template.trim().is_empty() {
            cfg.default_template()
        } else {
            request.template.as_str()
        };
        let mut metadata: BTreeMap<&str, &str> = request
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        metadata.insert("sandboxer_id", &request.sandbox_id);
        metadata.insert("sandboxer_tenant", &request.tenant);
        metadata.insert("sandboxer_profile", &request.profile);
        let body = NewSandbox {
            template_id: template,
            timeout: request.max_duration_secs,
            metadata,
            env_vars: request
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| internal(format!("encoding the request: {e}")))?;
        let created = call(
            &cfg,
            Method::Post,
            "POST /sandboxes",
            "/sandboxes",
            Some(&body),
            &[200, 201],
        )?;
        let created: SandboxCreated = serde_json::from_slice(&created.body)
            .map_err(|e| internal(format!("E2B POST /sandboxes: unexpected answer: {e}")))?;
        let id = checked_id(&created.sandbox_id)?.to_owned();
        // The size is read now: after the sandbox is killed E2B answers 404. When the read
        // fails the sandbox still exists, so the configured template size stands in rather
        // than leaking a sandbox the host does not know about.
        let (cpu, mem) = match call(
            &cfg,
            Method::Get,
            "GET /sandboxes/{id}",
            &format!("/sandboxes/{id}"),
            None,
            &[200],
        ) {
            Ok(r) => match serde_json::from_slice::<SandboxDetail>(&r.body) {
                Ok(d) => (d.cpu_count, d.memory_mb),
                Err(_) => (vcpus, mib),
            },
            Err(_) => (vcpus, mib),
        };
        let handle =
            serde_json::to_string(&Handle { id, cpu, mem }).map_err(|e| internal(e.to_string()))?;
        Ok(Created {
            handle,
            region: request.region.clone(),
        })
    }

    fn status(sandbox: SandboxContext) -> Result<SandboxStatus, BackendError> {
        let cfg = Config::load();
        let handle = parse_handle(&sandbox.handle)?;
        let id = checked_id(&handle.id)?;
        match call(
            &cfg,
            Method::Get,
            "GET /sandboxes/{id}",
            &format!("/sandboxes/{id}"),
            None,
            &[200],
        ) {
            Ok(r) => {
                let d: SandboxDetail = serde_json::from_slice(&r.body).map_err(|e| {
                    internal(format!("E2B GET /sandboxes/{{id}}: unexpected answer: {e}"))
                })?;
                let state = if d.state == "running" {
                    SandboxState::Running
                } else {
                    SandboxState::Stopped
                };
                Ok(SandboxStatus {
                    state,
                    detail: format!("E2B state {:?}", d.state),
                })
            }
            // Killed or expired: E2B forgets it.
            Err(BackendError::NotFound(_)) => Ok(SandboxStatus {
                state: SandboxState::Stopped,
                detail: "gone at E2B (killed or expired)".into(),
            }),
            Err(e) => Err(e),
        }
    }

    fn destroy(sandbox: SandboxContext) -> Result<Usage, BackendError> {
        let cfg = Config::load();
        let handle = parse_handle(&sandbox.handle)?;
        let id = checked_id(&handle.id)?;
        // 204 killed now; 404 already gone (expired, killed before): not an error, the
        // usage comes from the recorded lifetime either way.
        call(
            &cfg,
            Method::Delete,
            "DELETE /sandboxes/{id}",
            &format!("/sandboxes/{id}"),
            None,
            &[200, 204, 404],
        )?;
        let ms = sandbox.now_ms.saturating_sub(sandbox.created_at_ms);
        Ok(Usage {
            duration_ms: ms,
            measures: vec![
                Measure {
                    name: "vcpu-seconds".into(),
                    quantity: vcpu_seconds(handle.cpu, ms).to_string(),
                    unit: "vcpu-second".into(),
                },
                Measure {
                    name: "gib-seconds".into(),
                    quantity: gib_seconds(handle.mem, ms).to_string(),
                    unit: "gib-second".into(),
                },
            ],
        })
    }

    fn meter_actual(_request: SandboxRequest, usage: Usage) -> Result<Cost, BackendError> {
        let cfg = Config::load();
        let measure = |name: &str| -> Result<Dec, BackendError> {
            let m = usage.measures.iter().find(|m| m.name == name);
            match m {
                None => Ok(Dec::ZERO),
                Some(m) => Dec::parse(&m.quantity).ok_or_else(|| {
                    BackendError::InvalidRequest(format!(
                        "measure {name}: not a decimal: {:?}",
                        m.quantity
                    ))
                }),
            }
        };
        price(&cfg, measure("vcpu-seconds")?, measure("gib-seconds")?)
    }

    fn capacity() -> Result<PoolCapacity, BackendError> {
        let cfg = Config::load();
        Ok(PoolCapacity {
            max_sandboxes: cfg.max_sandboxes().map_err(internal)?,
        })
    }
}

export!(E2b);
