//! sandboxer backend extension for [Modal](https://modal.com) sandboxes. Modal has no REST
//! API: the extension speaks its gRPC API (`modal.client.ModalClient`, and each task's
//! `modal.task_command_router.TaskCommandRouter` for commands and files) over `wasi:http`
//! with HTTP/2, the way Modal's own SDKs do, and bills like Modal: per second on the larger
//! of the requested and the used CPU and memory. See docs/extensions/modal.md.
//!
//! Built for `wasm32-wasip2` by `scripts/build-extensions.sh` (world `sandbox-extension`);
//! the native build is the same code for unit tests.

wit_bindgen::generate!({
    world: "sandbox-extension",
    path: "../../wit",
    generate_all,
});

pub mod client;
pub mod config;
pub mod exec;
pub mod files;
pub mod grpc;
pub mod handle;
pub mod pricing;
pub mod status;

pub use exports::sandboxer::extension::backend as wit;
pub use exports::sandboxer::extension::files as wfiles;
pub use exports::sandboxer::extension::process as wproc;

use guest_kit::cursor::StreamCursor;
use modal_proto::{self as pb, client_path as cp, router_path as rp};

use client::Modal;
use config::Config;
use exec::{Collect, StartError, Until};
use handle::{Handle, ProcessId};
use pricing::Prices;
use wit::{
    BackendError, Capability, Cost, Created, ExtensionInfo, Kind, PoolCapacity, SandboxContext,
    SandboxRequest, SandboxState, SandboxStatus, Usage,
};
use wproc::{ExecOutput, ExecRequest, Exit, ExitStatus, ProcessOutput};

/// The component.
pub struct ModalExtension;

fn load() -> Config {
    // An unreadable store counts as empty (info must not fail); calls that need a value
    // say which is missing.
    Config::from_pairs(wasi::config::store::get_all().unwrap_or_default())
}

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// A sandbox's context, opened: configuration, client, handle.
struct Opened {
    cfg: Config,
    modal: Modal,
    handle: Handle,
}

fn open(sandbox: &SandboxContext) -> Result<Opened, BackendError> {
    let cfg = load();
    let modal = Modal::new(&cfg)?;
    let handle = Handle::parse(&sandbox.handle)?;
    Ok(Opened { cfg, modal, handle })
}

/// Nanoseconds from now on the monotonic clock.
fn after_ms(ms: u64) -> u64 {
    guest_kit::clock::monotonic_ns().saturating_add(ms.saturating_mul(1_000_000))
}

impl ModalExtension {
    /// Creates the sandbox, finding the one a retried create already made by its name.
    fn create_sandbox(
        cfg: &Config,
        modal: &Modal,
        request: &SandboxRequest,
    ) -> Result<(String, String), BackendError> {
        let size = pricing::size_for(cfg, request)?;
        let image = handle::image_for(cfg, &request.template)?;
        let workdir = cfg.workdir().map_err(internal)?;
        let cap = cfg.cap_to_request().map_err(internal)?;
        let name = handle::sandbox_name(request);
        let timeout_secs = u32::try_from(request.max_duration_secs)
            .map_err(|_| internal("max duration overflows"))?;
        let build = |app_id: &str, image_id: String| pb::SandboxCreateRequest {
            app_id: app_id.to_owned(),
            definition: Some(pb::Sandbox {
                entrypoint_args: Vec::new(),
                image_id,
                resources: Some(pb::Resources {
                    memory_mb: size.memory_mib,
                    milli_cpu: size.milli_cpu,
                    // Limits at the request: the sandbox cannot use (and be billed) more
                    // than the estimate that was held.
                    memory_mb_max: if cap { size.memory_mib } else { 0 },
                    milli_cpu_max: if cap { size.milli_cpu } else { 0 },
                    ephemeral_disk_mb: request.resources.disk_mib,
                }),
                timeout_secs,
                workdir: Some(workdir.clone()),
                scheduler_placement: request.region.as_ref().map(|r| pb::SchedulerPlacement {
                    regions: vec![r.clone()],
                }),
                name: Some(name.clone()),
                environment_variables: (!request.env.is_empty()).then(|| pb::StringMap {
                    contents: request.env.iter().cloned().collect(),
                }),
            }),
            tags: handle::tags(request),
        };
        let mut retried = false;
        loop {
            let app_id = modal.app_id()?;
            let image_id = modal.image_id(&app_id, &image)?;
            let answer: Result<pb::SandboxCreateResponse, _> =
                modal.call_raw(cp::SANDBOX_CREATE, &build(&app_id, image_id));
            match answer {
                Ok(r) => return Ok((r.sandbox_id, app_id)),
                // The cached app (or image) is gone: look both up again, once.
                Err(e) if e.code() == Some(status::NOT_FOUND) && !retried => {
                    modal.forget_app();
                    retried = true;
                }
                // A retried create: the sandbox with this name is the one made before.
                Err(e) if e.code() == Some(status::ALREADY_EXISTS) => {
                    let found: pb::SandboxGetFromNameResponse = modal.call(
                        "SandboxGetFromName",
                        cp::SANDBOX_GET_FROM_NAME,
                        &pb::SandboxGetFromNameRequest {
                            sandbox_name: name.clone(),
                            environment_name: modal.environment().to_owned(),
                            app_name: modal.app_name().to_owned(),
                        },
                    )?;
                    return Ok((found.sandbox_id, app_id));
                }
                Err(e) => return Err(modal.error("SandboxCreate", e)),
            }
        }
    }
}

impl wit::Guest for ModalExtension {
    fn info() -> ExtensionInfo {
        let cfg = load();
        ExtensionInfo {
            id: cfg.id().into(),
            name: cfg.name().into(),
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
        let cfg = load();
        let size = pricing::size_for(&cfg, &request)?;
        handle::image_for(&cfg, &request.template)?;
        pricing::estimate(
            size,
            request.max_duration_secs,
            &Prices::for_request(&cfg, &request)?,
        )
    }

    fn create(request: SandboxRequest) -> Result<Created, BackendError> {
        let cfg = load();
        let modal = Modal::new(&cfg)?;
        let size = pricing::size_for(&cfg, &request)?;
        let (sandbox_id, app_id) = Self::create_sandbox(&cfg, &modal, &request)?;
        if !handle::modal_id(&sandbox_id, "") {
            return Err(internal(format!(
                "Modal SandboxCreate answered an unusable sandbox id {sandbox_id:?}"
            )));
        }
        let handle = Handle {
            v: 1,
            id: sandbox_id,
            app: app_id,
            mcpu: size.milli_cpu,
            mib: size.memory_mib,
            wd: cfg.workdir().map_err(internal)?,
        };
        Ok(Created {
            handle: handle.to_json(),
            region: request.region.clone(),
        })
    }

    fn status(sandbox: SandboxContext) -> Result<SandboxStatus, BackendError> {
        let o = open(&sandbox)?;
        let answer: Result<pb::SandboxWaitResponse, _> = o.modal.call_raw(
            cp::SANDBOX_WAIT,
            &pb::SandboxWaitRequest {
                sandbox_id: o.handle.id.clone(),
                timeout: 0.0,
            },
        );
        match answer {
            Ok(r) => Ok(match r.result {
                Some(result) => SandboxStatus {
                    state: SandboxState::Stopped,
                    detail: format!(
                        "ended at Modal: {}",
                        client::generic_status_name(result.status)
                    ),
                },
                None => SandboxStatus {
                    state: SandboxState::Running,
                    detail: "running at Modal".into(),
                },
            }),
            Err(e) if e.code() == Some(status::NOT_FOUND) => Ok(SandboxStatus {
                state: SandboxState::Stopped,
                detail: "gone at Modal".into(),
            }),
            Err(e) => Err(o.modal.error("SandboxWait", e)),
        }
    }

    fn destroy(sandbox: SandboxContext) -> Result<Usage, BackendError> {
        let o = open(&sandbox)?;
        let id = o.handle.id.clone();
        let terminated: Result<pb::SandboxTerminateResponse, _> = o.modal.call_raw(
            cp::SANDBOX_TERMINATE,
            &pb::SandboxTerminateRequest {
                sandbox_id: id.clone(),
            },
        );
        let gone = match terminated {
            Ok(_) => false,
            Err(e) if e.code() == Some(status::NOT_FOUND) => true,
            Err(e) => return Err(o.modal.error("SandboxTerminate", e)),
        };
        if !gone {
            // Let it end, so the usage read next is final (and a second destroy reads the
            // same). A failure here only means the usage may still move a little.
            let wait = o.cfg.terminate_wait_secs().map_err(internal)?;
            let _: Result<pb::SandboxWaitResponse, _> = o.modal.call_raw(
                cp::SANDBOX_WAIT,
                &pb::SandboxWaitRequest {
                    sandbox_id: id.clone(),
                    timeout: wait as f32,
                },
            );
        }
        let usage: Result<pb::SandboxGetResourceUsageResponse, _> = o.modal.call_raw(
            cp::SANDBOX_GET_RESOURCE_USAGE,
            &pb::SandboxGetResourceUsageRequest {
                sandbox_id: id.clone(),
            },
        );
        let measured = match usage {
            Ok(u) => Some((u.cpu_core_nanosecs, u.mem_gib_nanosecs)),
            // Modal forgot it (or never had it): bill the recorded lifetime.
            Err(e) if e.code() == Some(status::NOT_FOUND) => None,
            // Anything else may pass: fail, and let the host try again, rather than settle
            // on the fallback now and on the measurement next time.
            Err(e) => return Err(o.modal.error("SandboxGetResourceUsage", e)),
        };
        o.modal.forget_task(&id);
        let lifetime = sandbox.now_ms.saturating_sub(sandbox.created_at_ms);
        Ok(pricing::usage(o.handle.size(), lifetime, measured))
    }

    fn meter_actual(request: SandboxRequest, usage: Usage) -> Result<Cost, BackendError> {
        let cfg = load();
        pricing::meter(&usage, &Prices::for_request(&cfg, &request)?)
    }

    fn capacity() -> Result<PoolCapacity, BackendError> {
        let cfg = load();
        Ok(PoolCapacity {
            max_sandboxes: cfg.max_sandboxes().map_err(internal)?,
        })
    }
}

impl wproc::Guest for ModalExtension {
    fn exec(sandbox: SandboxContext, request: ExecRequest) -> Result<ExecOutput, BackendError> {
        let o = open(&sandbox)?;
        let task = o.modal.task_id(&o.handle.id)?;
        let mut router = o.modal.router(&task)?;
        let exec_id = guest_kit::clock::random_id("sbx-");
        let launch = exec::prepare(&sandbox, &o.handle, &request, &exec_id, false)?;
        let t0 = guest_kit::clock::monotonic_ns();
        let limit = request.output_limit_bytes;
        match exec::start(&mut router, launch) {
            Ok(()) => {}
            Err(StartError::Refused(msg)) => {
                return Ok(ExecOutput {
                    exit: exec::failed(msg),
                    stdout: Vec::new(),
                    stdout_truncated: false,
                    stderr: Vec::new(),
                    stderr_truncated: false,
                });
            }
            Err(StartError::Backend(e)) => return Err(e),
        }
        // Modal kills the command at its timeout (whole seconds); a little grace for that.
        let budget = if request.timeout_ms == 0 {
            pricing::MAX_TIMEOUT_SECS * 1000
        } else {
            request.timeout_ms + 5_000
        };
        let how = Collect {
            from: StreamCursor::default(),
            limits: [limit, limit],
            stop_stdout_at_limit: false,
            slice_ms: o.cfg.stream_slice_ms().map_err(internal)?,
            deadline_ns: t0.saturating_add(budget.saturating_mul(1_000_000)),
        };
        let done = exec::finish(&mut router, &exec_id, &how)?;
        let elapsed = (guest_kit::clock::monotonic_ns() - t0) / 1_000_000;
        let exit = match done.status {
            Some(s) => exec::exit_from(s, elapsed, request.timeout_ms),
            None => {
                exec::kill(&mut router, &o.handle, &exec_id, after_ms(20_000))?;
                Exit {
                    status: ExitStatus::TimedOut,
                    exit_code: None,
                    duration_ms: elapsed,
                    cpu_ms: None,
                    detail: "the command outlived its timeout at Modal and was killed".into(),
                }
            }
        };
        Ok(ExecOutput {
            exit,
            stdout: done.stdout,
            stdout_truncated: done.stdout_truncated,
            stderr: done.stderr,
            stderr_truncated: done.stderr_truncated,
        })
    }

    fn start(sandbox: SandboxContext, request: ExecRequest) -> Result<String, BackendError> {
        let o = open(&sandbox)?;
        let task = o.modal.task_id(&o.handle.id)?;
        let mut router = o.modal.router(&task)?;
        let exec_id = guest_kit::clock::random_id("sbx-");
        let launch = exec::prepare(
            &sandbox,
            &o.handle,
            &request,
            &exec_id,
            request.keep_stdin_open,
        )?;
        match exec::start(&mut router, launch) {
            Ok(()) => Ok(exec::process_id(&task, &exec_id, &sandbox, &request).to_string()),
            Err(StartError::Refused(msg)) => Err(BackendError::InvalidRequest(format!(
                "the command did not start: {msg}"
            ))),
            Err(StartError::Backend(e)) => Err(e),
        }
    }

    fn read_output(
        sandbox: SandboxContext,
        process_id: String,
        cursor: String,
        wait_ms: u32,
        max_bytes: u32,
    ) -> Result<ProcessOutput, BackendError> {
        let o = open(&sandbox)?;
        let pid = ProcessId::parse(&process_id)?;
        let mut cursor = StreamCursor::parse(&cursor).map_err(BackendError::InvalidRequest)?;
        let mut router = o.modal.router(&pid.task_id)?;
        let deadline = after_ms(u64::from(wait_ms));
        let until = Until {
            deadline_ns: deadline,
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX).max(1),
            first_output: true,
        };
        let read = exec::read_round(
            &mut router,
            &pid.exec_id,
            &mut cursor,
            [pid.limit, pid.limit],
            &until,
            [false, false],
        )?;
        let mut exit = None;
        if read.ended == [true, true] {
            // All output is in: the end follows (at once, or after the wait when nothing
            // else is to be handed out).
            let status = match exec::poll(&mut router, &pid.exec_id)? {
                Some(s) => Some(s),
                None if read.bytes == 0 => exec::wait_exit(&mut router, &pid.exec_id, deadline)?,
                None => None,
            };
            exit = status.map(|s| {
                exec::exit_from(
                    s,
                    guest_kit::clock::now_ms().saturating_sub(pid.started_ms),
                    pid.timeout_ms,
                )
            });
        }
        Ok(ProcessOutput {
            chunks: read.chunks,
            truncated: cursor.stdout > pid.limit || cursor.stderr > pid.limit,
            cursor: cursor.to_string(),
            exit,
        })
    }

    fn write_stdin(
        sandbox: SandboxContext,
        process_id: String,
        data: Vec<u8>,
        close: bool,
    ) -> Result<(), BackendError> {
        let o = open(&sandbox)?;
        let pid = ProcessId::parse(&process_id)?;
        let mut router = o.modal.router(&pid.task_id)?;
        let st: pb::TaskExecStdinStatusResponse = router.call(
            "TaskExecStdinStatus",
            rp::TASK_EXEC_STDIN_STATUS,
            &pb::TaskExecStdinStatusRequest {
                task_id: pid.task_id.clone(),
                exec_id: pid.exec_id.clone(),
            },
        )?;
        if st.closed {
            return Err(BackendError::InvalidRequest(
                "the process's standard input is closed".into(),
            ));
        }
        exec::write_stdin(
            &mut router,
            &pid.exec_id,
            st.num_bytes_written,
            &data,
            close,
        )
    }

    fn kill(sandbox: SandboxContext, process_id: String) -> Result<(), BackendError> {
        let o = open(&sandbox)?;
        let pid = ProcessId::parse(&process_id)?;
        let mut router = match o.modal.router(&pid.task_id) {
            Ok(r) => r,
            // The sandbox has ended: nothing runs in it any more.
            Err(BackendError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        exec::kill(&mut router, &o.handle, &pid.exec_id, after_ms(20_000))
    }
}

impl wfiles::Guest for ModalExtension {
    fn write_file(
        sandbox: SandboxContext,
        path: String,
        data: Vec<u8>,
        append: bool,
    ) -> Result<(), BackendError> {
        let o = open(&sandbox)?;
        let task = o.modal.task_id(&o.handle.id)?;
        let mut router = o.modal.router(&task)?;
        files::write_file(&mut router, &o.handle, &path, &data, append)
    }

    fn read_file(
        sandbox: SandboxContext,
        path: String,
        offset: u64,
        max_bytes: u32,
    ) -> Result<wfiles::FileChunk, BackendError> {
        let o = open(&sandbox)?;
        let task = o.modal.task_id(&o.handle.id)?;
        let mut router = o.modal.router(&task)?;
        files::read_file(&mut router, &o.handle, &path, offset, max_bytes)
    }

    fn list_files(
        sandbox: SandboxContext,
        path: String,
    ) -> Result<Vec<wfiles::FileEntry>, BackendError> {
        let o = open(&sandbox)?;
        let task = o.modal.task_id(&o.handle.id)?;
        let mut router = o.modal.router(&task)?;
        files::list_files(&mut router, &o.handle, &path)
    }
}

#[cfg(target_arch = "wasm32")]
export!(ModalExtension);
