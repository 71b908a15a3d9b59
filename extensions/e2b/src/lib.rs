//! sandboxer backend extension for E2B (<https://e2b.dev>): provisions sandboxes through
//! E2B's REST API (`POST /sandboxes`, `GET`/`DELETE /sandboxes/{id}`) and runs commands and
//! moves files through each sandbox's envd (Connect-RPC `process.Process`,
//! `filesystem.Filesystem`, and `/files`), over `wasi:http`. Points at `https://api.e2b.app`
//! by default, or at a self-hosted E2B by configuration. Bills per second of allocated
//! vCPUs and memory, like E2B does. See docs/extensions/e2b.md.

wit_bindgen::generate!({
    world: "sandbox-extension",
    path: "../../wit",
    generate_all,
});

pub mod api;
pub mod config;
pub mod connect;
pub mod decimal;
pub mod envd;
pub mod exec;
pub mod files;
pub mod handle;
pub mod pricing;

use std::collections::BTreeMap;

use exports::sandboxer::extension::backend::{
    BackendError, Capability, Cost, Created, ExtensionInfo, Guest, Kind, Measure, PoolCapacity,
    SandboxContext, SandboxRequest, SandboxState, SandboxStatus, Usage,
};
use exports::sandboxer::extension::{files as wfiles, process as wproc};
use guest_kit::http::Method;
use serde::{Deserialize, Serialize};

use config::Config;
use decimal::Dec;
use envd::Envd;
use handle::{Handle, ProcessId, checked_id};
use pricing::{gib_seconds, price, template_size, vcpu_seconds};

#[derive(Deserialize)]
struct SandboxCreated {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(flatten)]
    access: handle::Access,
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

#[derive(Serialize)]
struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    template_id: &'a str,
    timeout: u64,
    secure: bool,
    metadata: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "envVars")]
    env_vars: BTreeMap<&'a str, &'a str>,
}

/// The component.
pub struct E2b;

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// The envd of the sandbox a context names.
fn envd_of(sandbox: &SandboxContext) -> Result<Envd, BackendError> {
    let cfg = Config::load();
    Envd::new(&cfg, &Handle::parse(&sandbox.handle)?)
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
            secure: cfg.secure().map_err(internal)?,
            metadata,
            env_vars: request
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| internal(format!("encoding the request: {e}")))?;
        let created = api::call(
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
        envd::remember(&cfg, &id, created.access);
        // The size is read now: after the sandbox is killed E2B answers 404. When the read
        // fails the sandbox still exists, so the configured template size stands in rather
        // than leaking a sandbox the host does not know about.
        let (cpu, mem) = match api::call(
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
        let handle = Handle { id, cpu, mem };
        Ok(Created {
            handle: handle.to_json(),
            region: request.region.clone(),
        })
    }

    fn status(sandbox: SandboxContext) -> Result<SandboxStatus, BackendError> {
        let cfg = Config::load();
        let handle = Handle::parse(&sandbox.handle)?;
        match api::call(
            &cfg,
            Method::Get,
            "GET /sandboxes/{id}",
            &format!("/sandboxes/{}", handle.id),
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
        let handle = Handle::parse(&sandbox.handle)?;
        // 204 killed now; 404 already gone (expired, killed before): not an error, the
        // usage comes from the recorded lifetime either way.
        api::call(
            &cfg,
            Method::Delete,
            "DELETE /sandboxes/{id}",
            &format!("/sandboxes/{}", handle.id),
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

impl wproc::Guest for E2b {
    fn exec(
        sandbox: SandboxContext,
        request: wproc::ExecRequest,
    ) -> Result<wproc::ExecOutput, BackendError> {
        exec::exec(&envd_of(&sandbox)?, &request)
    }

    fn start(sandbox: SandboxContext, request: wproc::ExecRequest) -> Result<String, BackendError> {
        exec::start(&envd_of(&sandbox)?, &sandbox, &request)
    }

    fn read_output(
        sandbox: SandboxContext,
        process_id: String,
        cursor: String,
        wait_ms: u32,
        max_bytes: u32,
    ) -> Result<wproc::ProcessOutput, BackendError> {
        let pid = ProcessId::parse(&process_id)?;
        exec::read_output(&envd_of(&sandbox)?, &pid, &cursor, wait_ms, max_bytes)
    }

    fn write_stdin(
        sandbox: SandboxContext,
        process_id: String,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), BackendError> {
        let pid = ProcessId::parse(&process_id)?;
        exec::send_stdin(&envd_of(&sandbox)?, pid.pid, &data, close)
    }

    fn kill(sandbox: SandboxContext, process_id: String) -> Result<(), BackendError> {
        let pid = ProcessId::parse(&process_id)?;
        exec::kill(&envd_of(&sandbox)?, &pid)
    }
}

impl wfiles::Guest for E2b {
    fn write_file(
        sandbox: SandboxContext,
        path: String,
        data: Vec<u8>,
        append: bool,
    ) -> Result<(), BackendError> {
        files::write_file(&envd_of(&sandbox)?, &path, &data, append)
    }

    fn read_file(
        sandbox: SandboxContext,
        path: String,
        offset: u64,
        max_bytes: u32,
    ) -> Result<wfiles::FileChunk, BackendError> {
        files::read_file(&envd_of(&sandbox)?, &path, offset, max_bytes)
    }

    fn list_files(
        sandbox: SandboxContext,
        path: String,
    ) -> Result<Vec<wfiles::FileEntry>, BackendError> {
        files::list_files(&envd_of(&sandbox)?, &path)
    }
}

#[cfg(target_arch = "wasm32")]
export!(E2b);
