//! Runs the real `sandboxer-host` binary on loopback for the HTTP tests: a temp folder
//! with copies of the shipped extensions and profiles, a fresh state folder (real SQLite
//! ledger), a config with two tenants and an admin, and small blocking HTTP helpers.
//!
//! Include with `#[path = "support/http_host.rs"] mod http_host;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Tokens of the test config.
pub const TOKEN_A: &str = "tenant-a-token-0123456789";
pub const TOKEN_B: &str = "tenant-b-token-0123456789";
pub const ADMIN: &str = "admin-token-0123456789abc";

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A folder with `extensions/`, `profiles/`, `state/` and a config.
pub struct Setup {
    pub root: tempfile::TempDir,
}

impl Setup {
    /// Copies the saas-stub component and the `local-pool` sidecar (the simulated
    /// backends the test profiles route to) and the test profiles into a temp folder.
    pub fn new() -> Self {
        Self::with_extensions(&["saas-stub.wasm", "local-pool.toml"])
    }

    /// Like [`Setup::new`] with the named files from `extensions/` (or the test
    /// fixtures, `tests/fixtures/extensions/`).
    pub fn with_extensions(files: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let s = Self { root };
        std::fs::create_dir_all(s.extensions()).unwrap();
        std::fs::create_dir_all(s.profiles()).unwrap();
        for f in files {
            let from = extension_source(f);
            assert!(
                from.is_file(),
                "{} is missing: run `make extensions` (scripts/build-extensions.sh) first",
                from.display()
            );
            std::fs::copy(&from, s.extensions().join(f)).unwrap();
        }
        copy_test_profiles(&s.profiles());
        s.write_config("");
        s
    }

    /// Adds the misbehave test guest as extension `id` with the sidecar `[config]` lines
    /// `config`, and a profile `id` routing to it alone.
    pub fn add_misbehave(&self, id: &str, config: &str, max_duration_secs: u64) {
        let wasm = self.extensions().join("misbehave.wasm");
        if !wasm.is_file() {
            std::fs::copy(repo().join("tests/guests/misbehave.wasm"), &wasm).unwrap();
        }
        std::fs::write(
            self.extensions().join(format!("{id}.toml")),
            format!("component = \"misbehave.wasm\"\nid = \"{id}\"\n\n[config]\n{config}"),
        )
        .unwrap();
        std::fs::write(
            self.profiles().join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\ndescription = \"d\"\ntemplate = \"base\"\nmax_duration_secs = {max_duration_secs}\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nexplicit = \"{id}\"\nfallback = false\n"
            ),
        )
        .unwrap();
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }
    pub fn extensions(&self) -> PathBuf {
        self.path().join("extensions")
    }
    pub fn profiles(&self) -> PathBuf {
        self.path().join("profiles")
    }
    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }
    pub fn config(&self) -> PathBuf {
        self.path().join("sandboxer.toml")
    }

    /// Writes the config: tenants `a` and `b`, the admin, short intervals, plus `extra`.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "[tenants.a]\ntoken = \"{TOKEN_A}\"\n[tenants.b]\ntoken = \"{TOKEN_B}\"\n[admin]\ntoken = \"{ADMIN}\"\n\
             [reaper]\ninterval_ms = 100\n[reload]\ndebounce_ms = 100\n{extra}\n"
        );
        // `[events]` etc. in `extra` must not repeat the tables above.
        std::fs::write(self.config(), text).unwrap();
    }

    /// Runs the `sandboxer` CLI on this state; returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
            .args(["--extensions-dir", self.extensions().to_str().unwrap()])
            .args(["--profiles-dir", self.profiles().to_str().unwrap()])
            .args(["--state-dir", self.state().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A running `sandboxer-host run`.
pub struct Host {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything the host wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
}

impl Host {
    /// Starts the host on `setup` with its config and an OS-chosen port; waits until it
    /// listens.
    pub fn start(setup: &Setup) -> Self {
        Self::start_with(setup, &["--config", setup.config().to_str().unwrap()])
    }

    /// Starts the host with extra `run` arguments (e.g. none, for the no-config mode).
    pub fn start_with(setup: &Setup, run_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxer-host"))
            .args(["--extensions-dir", setup.extensions().to_str().unwrap()])
            .args(["--profiles-dir", setup.profiles().to_str().unwrap()])
            .args(["--state-dir", setup.state().to_str().unwrap()])
            .arg("run")
            .args(["--listen", "127.0.0.1:0"])
            .args(run_args)
            .env("RUST_LOG", "info")
            .env_remove("SANDBOXER_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("sandboxer-host: listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("host did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            child: Some(child),
            base,
            log,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Starts a streamed exec (`accept: application/x-ndjson`) of `body` in sandbox `id`;
    /// the response is returned unread, so a test can read it line by line or leave it.
    pub fn exec_stream(&self, token: &str, id: &str, body: &Value) -> reqwest::blocking::Response {
        reqwest::blocking::Client::new()
            .post(self.url(&format!("/v1/sandboxes/{id}/exec")))
            .bearer_auth(token)
            .header("accept", "application/x-ndjson")
            .body(body.to_string())
            .timeout(Duration::from_secs(30))
            .send()
            .unwrap()
    }

    /// Sends a request; returns status and JSON body (`Value::Null` if not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, text) = self.raw(method, path, token, body, headers);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sends a request; returns status and the body's text as sent.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(m, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().unwrap())
    }

    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None, &[])
    }
    /// Every item of a paged list (`GET /v1/sandboxes`, `/v1/credits/entries`), following
    /// `next` with the largest page; `query` is e.g. `state=running` or empty.
    pub fn get_all(&self, list: &str, key: &str, query: &str, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut path = format!("{list}?limit=1000");
            if !query.is_empty() {
                path.push('&');
                path.push_str(query);
            }
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let (s, v) = self.get(&path, token);
            assert_eq!(s, 200, "{path}: {v}");
            out.extend(v[key].as_array().unwrap().iter().cloned());
            match v["next"].as_str() {
                Some(n) => after = Some(n.to_owned()),
                None => return out,
            }
        }
    }
    pub fn post(&self, path: &str, token: &str, body: &str) -> (u16, Value) {
        self.call("POST", path, Some(token), Some(body), &[])
    }
    pub fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("DELETE", path, Some(token), None, &[])
    }

    /// Creates a sandbox of `profile` for the tenant of `token` (201 asserted, with the
    /// host's log on failure); its status.
    pub fn create(&self, token: &str, profile: &str) -> Value {
        let body = serde_json::json!({ "profile": profile }).to_string();
        let (st, sb) = self.post("/v1/sandboxes", token, &body);
        assert_eq!(st, 201, "{sb}\n{}", self.log.lock().unwrap());
        sb
    }

    /// Grants credits to `tenant` through the admin endpoint.
    pub fn grant(&self, tenant: &str, amount: &str) {
        let (s, v) = self.post(
            &format!("/v1/tenants/{tenant}/credits"),
            ADMIN,
            &format!("{{\"amount\":\"{amount}\"}}"),
        );
        assert_eq!(s, 201, "{v}");
    }

    /// Text of `/metrics`.
    pub fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Polls `f` until it returns `Some` or `timeout` passes.
    pub fn wait_for<T>(&self, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "condition not met within {timeout:?}; host log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `tests/fixtures/extensions/NAME` when the fixtures have it, else `extensions/NAME`.
pub fn extension_source(name: &str) -> PathBuf {
    let fixture = repo().join("tests/fixtures/extensions").join(name);
    if fixture.is_file() {
        fixture
    } else {
        repo().join("extensions").join(name)
    }
}

/// The profiles the tests route by: the shipped `profiles/*.toml`, with the fixtures of
/// `tests/fixtures/profiles/` in place of the shipped files of the same name (the
/// fixture `burst-sandbox` routes to the simulated `local-pool` and `saas-stub`).
pub fn copy_test_profiles(dest: &Path) {
    for dir in [
        repo().join("profiles"),
        repo().join("tests/fixtures/profiles"),
    ] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) == Some("toml") {
                std::fs::copy(&p, dest.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
}
