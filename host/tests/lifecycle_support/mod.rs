//! Shared set-up of the sandbox-lifecycle tests: a temporary host folder with the real
//! saas-stub component (as `saas-stub` and as the self-hosted `local-pool`), the
//! misbehave guest as a failing pool, the shipped profiles plus test profiles, and a
//! runner for the real `sandboxer` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn built(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `make extensions` (scripts/build-extensions.sh) first",
        p.display()
    );
    p
}

/// A host folder: `extensions/`, `profiles/`, `state/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

/// A profile that tries the failing `flaky-pool` first, then falls over to `saas-stub`.
pub const FAILOVER_PROFILE: &str = r#"
id = "failover"
description = "A failing self-hosted pool first, the SaaS stub next"
template = "base"
max_duration_secs = 600
[resources]
vcpus = 1
memory_mib = 512
[route]
strategy = "prefer-self-hosted"
candidates = ["flaky-pool", "saas-stub"]
fallback = true
max_attempts = 2
"#;

impl Fixture {
    /// saas-stub.wasm + local-pool.toml, misbehave as `flaky-pool` (create answers
    /// `unavailable`), the shipped profiles and [`FAILOVER_PROFILE`].
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("extensions");
        let prof = dir.path().join("profiles");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::create_dir_all(&prof).unwrap();
        std::fs::copy(
            built("extensions/saas-stub.wasm"),
            ext.join("saas-stub.wasm"),
        )
        .unwrap();
        std::fs::copy(
            repo().join("tests/fixtures/extensions/local-pool.toml"),
            ext.join("local-pool.toml"),
        )
        .unwrap();
        std::fs::copy(
            built("tests/guests/misbehave.wasm"),
            ext.join("misbehave.wasm"),
        )
        .unwrap();
        std::fs::write(
            ext.join("flaky-pool.toml"),
            "component = \"misbehave.wasm\"\nid = \"flaky-pool\"\nkind = \"self-hosted\"\n\n[config]\nmode = \"fail-unavailable\"\nkind = \"self-hosted\"\n",
        )
        .unwrap();
        // The fixture burst-sandbox (local-pool, then saas-stub), not the shipped one.
        std::fs::copy(
            repo().join("tests/fixtures/profiles/burst-sandbox.toml"),
            prof.join("burst-sandbox.toml"),
        )
        .unwrap();
        std::fs::copy(
            repo().join("profiles/saas-stub.toml"),
            prof.join("saas-stub.toml"),
        )
        .unwrap();
        std::fs::write(prof.join("failover.toml"), FAILOVER_PROFILE).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn extensions(&self) -> PathBuf {
        self.path().join("extensions")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn settings(&self) -> sandboxer_host::Settings {
        sandboxer_host::Settings {
            extensions_dir: self.extensions(),
            profiles_dir: self.path().join("profiles"),
            state_dir: self.state(),
        }
    }

    /// A `sandboxer` command on this folder.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sandboxer"));
        c.arg("--extensions-dir")
            .arg(self.extensions())
            .arg("--profiles-dir")
            .arg(self.path().join("profiles"))
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env_remove("RUST_LOG");
        c
    }

    /// Runs `sandboxer ARGS`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs `sandboxer ARGS --json`, asserting success, and parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "sandboxer {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs `sandboxer ARGS`, asserting failure, and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "sandboxer {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The meter events delivered so far.
    pub fn events(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.state().join("events.jsonl")) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// `credits show TENANT --entries --json`.
    pub fn statement(&self, tenant: &str) -> Value {
        self.json(&["credits", "show", tenant, "--entries"])
    }
}
