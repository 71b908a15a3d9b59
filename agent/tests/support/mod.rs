//! The real `sandboxer-agent` binary on loopback, and a small client for its API.
//! Each agent gets its own state folder, token, cgroup parent and uid range, so agents of
//! one test binary never share anything.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sandboxer_agent::wire::{Destroyed, ExecResponse, Health, SandboxInfo};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_sandboxer-agent");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What an agent is started with.
#[derive(Clone)]
pub struct Setup {
    pub slots: u32,
    pub pids_max: u32,
    /// Extra TOML for its config file.
    pub config: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            slots: 8,
            pids_max: 128,
            config: String::new(),
        }
    }
}

/// A running agent.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub url: String,
    pub token: String,
    pub cgroup_parent: String,
    pub uid_base: u32,
    pub setup: Setup,
    http: reqwest::blocking::Client,
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

impl Agent {
    /// Starts an agent with `setup` in a new folder.
    pub fn start(setup: Setup) -> Agent {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let token = format!("test-token-{}-{n}-0123456789abcdef", std::process::id());
        std::fs::write(dir.path().join("token"), &token).unwrap();
        std::fs::set_permissions(
            dir.path().join("token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let uid_base = 1_000_000 + (std::process::id() % 1000) * 1000 + n * 64;
        let mut agent = Agent {
            dir,
            child: None,
            url: String::new(),
            token,
            cgroup_parent: format!("sandboxer-test-{}-{n}", std::process::id()),
            uid_base,
            setup,
            http: client(),
        };
        std::fs::write(agent.dir.path().join("agent.toml"), &agent.setup.config).unwrap();
        agent.spawn();
        agent
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The command line this agent runs with.
    pub fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(BIN);
        c.arg(sub)
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--uid-base")
            .arg(self.uid_base.to_string())
            .arg("--slots")
            .arg(self.setup.slots.to_string())
            .arg("--pids-max")
            .arg(self.setup.pids_max.to_string());
        if sub == "serve" {
            c.arg("--token-file")
                .arg(self.dir.path().join("token"))
                .arg("--listen")
                .arg("127.0.0.1:0");
        }
        c
    }

    /// Starts (or restarts) the process on this agent's folder.
    pub fn spawn(&mut self) {
        let mut child = self
            .command("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("agent.log"))
                    .unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("sandboxer-agent: listening on ")
            .unwrap_or_else(|| panic!("agent did not start: {line:?}\n{}", self.log()))
            .to_owned();
        self.url = addr;
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL, like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// A JSON call: status and body.
    pub fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub fn health(&self) -> Health {
        let (s, v) = self.call(reqwest::Method::GET, "/v1/health", None);
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    /// Creates a sandbox (panics unless it was created).
    pub fn create(&self, id: &str, vcpus: u32, memory_mib: u32) -> SandboxInfo {
        let (s, v) = self.call(
            reqwest::Method::POST,
            "/v1/sandboxes",
            Some(json!({"id": id, "vcpus": vcpus, "memory_mib": memory_mib, "max_duration_secs": 600})),
        );
        assert_eq!(s, 201, "create {id}: {v}\n{}", self.log());
        serde_json::from_value(v).unwrap()
    }

    pub fn info(&self, id: &str) -> SandboxInfo {
        let (s, v) = self.call(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"), None);
        assert_eq!(s, 200, "{v}");
        serde_json::from_value(v).unwrap()
    }

    pub fn destroy(&self, id: &str) -> Destroyed {
        let (s, v) = self.call(
            reqwest::Method::DELETE,
            &format!("/v1/sandboxes/{id}"),
            None,
        );
        assert_eq!(s, 200, "destroy {id}: {v}");
        serde_json::from_value(v).unwrap()
    }

    /// Runs `body` (an exec request) and returns the answer.
    pub fn exec(&self, id: &str, body: Value) -> ExecResponse {
        let (s, v) = self.call(
            reqwest::Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(body),
        );
        assert_eq!(s, 200, "exec in {id}: {v}");
        serde_json::from_value(v).unwrap()
    }

    /// Runs a shell line with a 10 s timeout and a 1 MiB cap.
    pub fn sh(&self, id: &str, line: &str) -> ExecResponse {
        self.exec(
            id,
            json!({"shell": line, "timeout_ms": 10_000, "output_limit_bytes": 1 << 20}),
        )
    }

    /// The folders of sandbox `id`'s cgroup (v1 here) that exist now.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        ["cpu", "cpuacct", "memory", "pids", "freezer"]
            .iter()
            .map(|c| {
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent)
                    .join(id)
            })
            .filter(|p| p.exists())
            .collect()
    }

    /// A number from a file of sandbox `id`'s cgroup, e.g. `("cpuacct", "cpuacct.usage")`.
    pub fn cgroup_value(&self, id: &str, controller: &str, file: &str) -> u64 {
        let p = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.cgroup_parent)
            .join(id)
            .join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits (up to 20 s) until sandbox `id`'s cgroup has counted `min_us` of CPU time;
    /// returns what it counted (robust on a busy machine, where wall time says little).
    pub fn wait_for_cpu(&self, id: &str, min_us: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let us = self.cgroup_value(id, "cpuacct", "cpuacct.usage") / 1000;
            if us >= min_us || Instant::now() > deadline {
                return us;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Live (not zombie) processes of this agent's uid range, waiting up to 2 s for them to
    /// go (a killed tree's last members are reaped a moment later).
    pub fn live_processes_settle(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let found = live_processes(self.uid_base..self.uid_base + self.setup.slots);
            if found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `pid uid state cmdline` of every non-zombie process whose uid is in `uids`.
pub fn live_processes(uids: std::ops::Range<u32>) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_owned())
                .unwrap_or_default()
        };
        let uid: u32 = field("Uid:")
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        let state = field("State:");
        if uids.contains(&uid) && !state.starts_with('Z') {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(format!(
                "{pid} uid={uid} {state} {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            let _ = std::fs::remove_dir(
                Path::new("/sys/fs/cgroup")
                    .join(c)
                    .join(&self.cgroup_parent),
            );
        }
    }
}
