//! The embedded agent: `sandboxer-host run` starts a `sandboxer-agent` on loopback itself
//! and wires the shipped `local` extension to it, so a fresh install runs real sandboxes
//! with no configuration (docs/agent.md, "Embedded in sandboxer-host run").
//!
//! It applies when `extensions/local.wasm` is there and no operator's `local.toml`
//! configures it, unless `[local] enabled = false`. The agent must pass `sandboxer-agent
//! check` first; when it does not, `local` is reported skipped with what is missing and
//! how to fix it, and the other backends serve. The agent is a child process: it gets
//! SIGTERM when the host's supervising thread (hence the host) dies (`PR_SET_PDEATHSIG`
//! follows the forking *thread*, so that thread lives as long as the child), SIGTERM and a
//! wait at shutdown, and is restarted on the same address if it dies meanwhile (a
//! restarted agent settles the sandboxes its predecessor left from their cgroups).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{LocalConfig, LocalMode};
use super::tokens;
use crate::app::{ExtensionSpec, GrantSpec, Overlay, SecretSource};
use crate::domain::Kind;
use crate::settings::Settings;

/// The extension id the embedded agent serves.
pub const LOCAL_ID: &str = "local";

/// The agent's default `max_output_bytes` (docs/agent.md): one exec answer carries up to
/// two streams of it, base64 in JSON (4/3), plus the envelope.
const AGENT_MAX_OUTPUT_BYTES: u64 = 16 << 20;
const MAX_RESPONSE_BYTES: u64 = AGENT_MAX_OUTPUT_BYTES * 2 * 4 / 3 + (1 << 20);

/// How long the agent may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to stop its sandboxes and record their usage at shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the embedded agent could not be started when it was required (`enabled = true`).
#[derive(Debug, thiserror::Error)]
#[error("[local] enabled = true, but {0}")]
pub struct EmbedError(String);

/// What the host does about `local`.
pub enum Embedding {
    /// Not embedding: no `local.wasm`, the operator's own sidecar, or `enabled = false`.
    None,
    /// `local` is off, with the reason (reported as a skipped extension).
    Off(Overlay),
    /// The agent runs; the overlay wires `local` to it.
    Running(EmbeddedAgent, Overlay),
}

impl Embedding {
    /// The overlay for the app, if any.
    pub fn overlay(&self) -> Option<Overlay> {
        match self {
            Embedding::None => None,
            Embedding::Off(o) | Embedding::Running(_, o) => Some(o.clone()),
        }
    }
}

/// A supervised `sandboxer-agent serve`.
pub struct EmbeddedAgent {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pid: Arc<AtomicI32>,
    stopping: Arc<AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

/// `sandboxer-agent check --json`.
#[derive(Debug, Deserialize)]
struct CheckReport {
    ok: bool,
    checks: Vec<CheckLine>,
}

#[derive(Debug, Deserialize)]
struct CheckLine {
    name: String,
    ok: bool,
    detail: String,
    fix: Option<String>,
}

/// The agent's flags, shared by `check` and `serve`.
struct AgentArgs {
    binary: PathBuf,
    state_dir: PathBuf,
    token_file: PathBuf,
    cgroup_parent: String,
    uid_base: u32,
    slots: Option<u32>,
}

impl AgentArgs {
    fn command(&self, verb: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg(verb)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--uid-base")
            .arg(self.uid_base.to_string());
        if let Some(n) = self.slots {
            c.arg("--slots").arg(n.to_string());
        }
        c.env_remove("SANDBOXER_AGENT_CONFIG")
            .env_remove("SANDBOXER_AGENT_TOKEN");
        c
    }
}

/// Decides about `local` and starts the agent when it can run.
pub fn prepare(cfg: &LocalConfig, settings: &Settings) -> Result<Embedding, EmbedError> {
    if cfg.mode == LocalMode::Off {
        return Ok(Embedding::None);
    }
    let component = settings.extensions_dir.join(format!("{LOCAL_ID}.wasm"));
    if !component.is_file() {
        tracing::info!(file = %component.display(), "no local.wasm: no embedded agent");
        return Ok(Embedding::None);
    }
    let sidecar = settings.extensions_dir.join(format!("{LOCAL_ID}.toml"));
    if sidecar.is_file() {
        tracing::info!(file = %sidecar.display(), "local.toml configures local: no embedded agent");
        return Ok(Embedding::None);
    }
    let off = |reason: String| -> Result<Embedding, EmbedError> {
        if cfg.mode == LocalMode::On {
            return Err(EmbedError(reason));
        }
        tracing::warn!(extension = LOCAL_ID, reason = %reason, "local is off; the other backends serve");
        Ok(Embedding::Off(Overlay::Skip {
            id: LOCAL_ID.to_owned(),
            reason,
        }))
    };
    let Some(binary) = find_agent(cfg) else {
        return off(
            "no sandboxer-agent binary (looked beside this executable and on PATH): build it \
             with `cargo build -p sandboxer-agent` or set `[local] agent` in sandboxer.toml"
                .to_owned(),
        );
    };
    let args = match agent_args(binary, cfg, settings) {
        Ok(a) => a,
        Err(reason) => return off(reason),
    };
    if let Err(reason) = check(&args) {
        return off(reason);
    }
    match start(args) {
        Ok(agent) => {
            let overlay = Overlay::Configure(Box::new(local_spec(
                component,
                &agent.url,
                &settings.state_dir.join("tokens").join("agent.token"),
            )));
            tracing::info!(extension = LOCAL_ID, agent = %agent.url, "embedded sandboxer-agent serving local");
            Ok(Embedding::Running(agent, overlay))
        }
        Err(reason) => off(reason),
    }
}

/// For the `sandboxer` CLI on the same state folder as a running `sandboxer-host run`:
/// wires `local` to the agent that host started (its address file and token), so the CLI
/// creates, uses and destroys local sandboxes too. `None` when the host would not embed
/// one (no `local.wasm`, or the operator's own `local.toml`); a skip with the reason when
/// no agent answers there.
pub fn attach(settings: &Settings) -> Option<Overlay> {
    let component = settings.extensions_dir.join(format!("{LOCAL_ID}.wasm"));
    let sidecar = settings.extensions_dir.join(format!("{LOCAL_ID}.toml"));
    if !component.is_file() || sidecar.is_file() {
        return None;
    }
    let state = std::path::absolute(&settings.state_dir).ok()?;
    let token = state.join("tokens").join("agent.token");
    let addr = std::fs::read_to_string(state.join("agent").join("listen.addr"))
        .ok()
        .and_then(|t| t.trim().parse::<std::net::SocketAddr>().ok());
    let answering = addr.filter(|a| {
        token.is_file()
            && std::net::TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok()
    });
    Some(match answering {
        Some(a) => Overlay::Configure(Box::new(local_spec(
            component,
            &format!("http://{a}"),
            &token,
        ))),
        None => Overlay::Skip {
            id: LOCAL_ID.to_owned(),
            reason: format!(
                "no sandboxer-agent answers for the state folder {}: `local` runs on the agent                  `sandboxer-host run` starts; start the host on this state folder",
                settings.state_dir.display()
            ),
        },
    })
}

/// `[local] agent`; else `sandboxer-agent` beside the running executable; else on `PATH`.
fn find_agent(cfg: &LocalConfig) -> Option<PathBuf> {
    if let Some(a) = &cfg.agent {
        return Some(a.clone());
    }
    let name = "sandboxer-agent";
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.join(name).is_file()
    {
        return Some(dir.join(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// The agent's folders, token, and a cgroup parent and uid range of its own: derived from
/// the state folder, so a restarted host's agent finds (and cleans up) its predecessor's
/// cgroups, and two hosts on one machine never share them.
fn agent_args(
    binary: PathBuf,
    cfg: &LocalConfig,
    settings: &Settings,
) -> Result<AgentArgs, String> {
    let state = std::path::absolute(&settings.state_dir).map_err(|e| {
        format!(
            "cannot resolve the state folder {}: {e}",
            settings.state_dir.display()
        )
    })?;
    let digest = Sha256::digest(state.as_os_str().as_encoded_bytes());
    let tag = hex::encode(&digest[..6]);
    let slots = cfg.slots;
    if slots.is_some_and(|n| n > 256) {
        return Err("[local] slots: at most 256 for the embedded agent".to_owned());
    }
    // 1 000 000 + 256 × (0..3900): a range no distribution hands out.
    let bucket = u32::from_be_bytes([digest[6], digest[7], digest[8], digest[9]]) % 3900;
    let tokens_dir = state.join("tokens");
    tokens::create_private_dir(&tokens_dir).map_err(|e| e.to_string())?;
    let token_file = tokens_dir.join("agent.token");
    tokens::read_or_generate(&token_file).map_err(|e| e.to_string())?;
    let state_dir = state.join("agent");
    tokens::create_private_dir(&state_dir).map_err(|e| e.to_string())?;
    Ok(AgentArgs {
        binary,
        state_dir,
        token_file,
        cgroup_parent: format!("sandboxer-host-{tag}"),
        uid_base: 1_000_000 + bucket * 256,
        slots,
    })
}

/// Runs `sandboxer-agent check --json`; the failed checks, each with its fix, as one line.
fn check(args: &AgentArgs) -> Result<(), String> {
    let out = args
        .command("check")
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.binary.display()))?;
    let report: CheckReport = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{} check --json gave no report ({e}); stderr: {}",
            args.binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if report.ok {
        return Ok(());
    }
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| match &c.fix {
            Some(fix) => format!("{}: {} (fix: {fix})", c.name, c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    Err(format!(
        "this machine cannot run sandboxes: {}",
        if failed.is_empty() {
            "the check failed".to_owned()
        } else {
            failed.join("; ")
        }
    ))
}

/// `local` configured as a sidecar would configure it for this agent
/// (docs/extensions/local.md).
fn local_spec(component: PathBuf, url: &str, token_file: &Path) -> ExtensionSpec {
    let mut secrets = BTreeMap::new();
    secrets.insert(
        "token".to_owned(),
        SecretSource::File {
            // Absolute: a sidecar's relative secret file is read from the extensions folder,
            // and the default state folder (`.sandboxer`) is relative to where the host runs.
            file: std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_path_buf()),
        },
    );
    ExtensionSpec {
        id: LOCAL_ID.to_owned(),
        component,
        sidecar: None,
        kind: Some(Kind::SelfHosted),
        config: BTreeMap::from([("agents".to_owned(), url.to_owned())]),
        memory_limit_mib: None,
        call_timeout_ms: Some(30_000),
        grants: GrantSpec {
            allowed_outbound_hosts: vec![url.to_owned()],
            secrets,
            outbound_timeout_ms: Some(30_000),
            max_response_bytes: Some(MAX_RESPONSE_BYTES),
            // The machine's own pool: no tenant keys, no platform fee.
            byok: Vec::new(),
            byok_fee_percent: None,
            byok_fee_per_sandbox_hour: None,
            outbound_ca_file: None,
        },
    }
}

/// Starts `serve` on 127.0.0.1:0 and waits for its address; then supervises it.
fn start(args: AgentArgs) -> Result<EmbeddedAgent, String> {
    let addr_file = args.state_dir.join("listen.addr");
    let _ = std::fs::remove_file(&addr_file);
    let pid = Arc::new(AtomicI32::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let (first_tx, first_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (p2, s2, a2) = (pid.clone(), stopping.clone(), addr_file.clone());
    let supervisor = std::thread::Builder::new()
        .name("embedded-agent".into())
        .spawn(move || supervise(args, a2, p2, s2, first_tx))
        .map_err(|e| format!("cannot start the agent's supervising thread: {e}"))?;
    let fail = |reason: String, supervisor: std::thread::JoinHandle<()>| {
        stopping.store(true, Ordering::SeqCst);
        signal(&pid, libc::SIGKILL);
        let _ = supervisor.join();
        Err(reason)
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Err(reason)) = first_rx.try_recv() {
            return fail(reason, supervisor);
        }
        if let Ok(text) = std::fs::read_to_string(&addr_file)
            && !text.trim().is_empty()
        {
            return Ok(EmbeddedAgent {
                url: format!("http://{}", text.trim()),
                pid,
                stopping,
                supervisor: Some(supervisor),
            });
        }
        if Instant::now() > deadline {
            return fail(
                format!("sandboxer-agent did not listen within {START_TIMEOUT:?}"),
                supervisor,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The supervising thread: spawns the agent (its parent-death signal bound to this
/// thread), waits for it, and restarts it on the address it had until told to stop.
fn supervise(
    args: AgentArgs,
    addr_file: PathBuf,
    pid: Arc<AtomicI32>,
    stopping: Arc<AtomicBool>,
    first: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let host = std::process::id() as libc::pid_t;
    let mut listen = "127.0.0.1:0".to_owned();
    let mut first = Some(first);
    loop {
        let mut cmd = args.command("serve");
        cmd.arg("--listen")
            .arg(&listen)
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                // SIGTERM: the agent then stops its sandboxes and records their usage.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The host died before the signal was armed: do not outlive it.
                if libc::getppid() != host {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot start {}: {e}", args.binary.display());
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(reason));
                        return;
                    }
                    None => {
                        tracing::error!(extension = LOCAL_ID, reason = %reason, "embedded agent not restarted");
                        return;
                    }
                }
            }
        };
        pid.store(child.id() as i32, Ordering::SeqCst);
        let status = child.wait();
        pid.store(0, Ordering::SeqCst);
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        // The address file (removed before the first start) says the agent was serving:
        // from then on a death is a restart, not a failure to start.
        let served = std::fs::read_to_string(&addr_file).is_ok_and(|t| !t.trim().is_empty());
        if served {
            first = None;
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(Err(format!("sandboxer-agent exited at start ({status})")));
            return;
        }
        tracing::warn!(extension = LOCAL_ID, status = %status, "embedded sandboxer-agent exited; restarting it on the same address");
        if let Ok(text) = std::fs::read_to_string(&addr_file) {
            listen = text.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(500));
        if stopping.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn signal(pid: &AtomicI32, sig: libc::c_int) {
    let p = pid.load(Ordering::SeqCst);
    if p > 0 {
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

impl EmbeddedAgent {
    /// SIGTERM, then waits for the agent to stop its sandboxes and exit (SIGKILL after
    /// [`STOP_TIMEOUT`]).
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        signal(&self.pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !supervisor.is_finished() {
            if Instant::now() > deadline {
                tracing::warn!(
                    extension = LOCAL_ID,
                    "embedded agent did not stop in time: killing it"
                );
                signal(&self.pid, libc::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = supervisor.join();
        tracing::info!(extension = LOCAL_ID, "embedded sandboxer-agent stopped");
    }
}

impl Drop for EmbeddedAgent {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default state folder is relative (`.sandboxer`); the token must still be found
    /// when the runtime reads secret files relative to the extensions folder.
    #[test]
    fn the_token_file_is_given_absolute() {
        let spec = local_spec(
            PathBuf::from("extensions/local.wasm"),
            "http://127.0.0.1:1",
            Path::new(".sandboxer/tokens/agent.token"),
        );
        let Some(SecretSource::File { file }) = spec.grants.secrets.get("token") else {
            panic!("no token file secret: {:?}", spec.grants.secrets);
        };
        assert!(file.is_absolute(), "{}", file.display());
        assert!(file.ends_with(".sandboxer/tokens/agent.token"));
    }
}
