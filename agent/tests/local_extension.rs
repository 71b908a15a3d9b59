//! The real `local` component (`extensions/local.wasm`) through the host's own loader
//! (`sandboxer extensions check`, which calls every backend function the way the host does)
//! against a real agent on loopback: create starts a real sandbox, destroy returns its
//! cgroup usage, the meter stays within the estimate; a wrong token is refused and creates
//! nothing. Needs `make extensions` and the host's `sandboxer` binary (`make test` builds
//! both).

mod support;

use std::path::{Path, PathBuf};

use support::{Agent, Setup};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The host's CLI, built beside this test binary (target/debug/deps/…).
fn sandboxer() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("sandboxer");
    assert!(
        bin.is_file(),
        "{} is missing: build the host first (`cargo build -p sandboxer-host`, or `make test`)",
        bin.display()
    );
    bin
}

fn component() -> PathBuf {
    let wasm = repo().join("extensions/local.wasm");
    assert!(
        wasm.is_file(),
        "{} is missing: run `make extensions` (scripts/build-extensions.sh) first",
        wasm.display()
    );
    wasm
}

/// An extensions folder with `local.wasm` and a sidecar pointing at `agent`.
fn folder(agent: &Agent, token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component(), dir.path().join("local.wasm")).unwrap();
    std::fs::write(dir.path().join("agents.token"), token).unwrap();
    std::fs::write(
        dir.path().join("local.toml"),
        format!(
            "component = \"local.wasm\"\nkind = \"self-hosted\"\ncall_timeout_ms = 30000\n\
             allowed_outbound_hosts = [\"{url}\"]\n[secrets]\ntoken = {{ file = \"agents.token\" }}\n\
             [config]\nagents = \"{url}\"\n",
            url = agent.url
        ),
    )
    .unwrap();
    dir
}

fn check(dir: &Path) -> (bool, serde_json::Value) {
    let state = dir.join("host-state");
    let out = std::process::Command::new(sandboxer())
        .arg("--state-dir")
        .arg(&state)
        .args(["extensions", "check"])
        .arg(dir.join("local.toml"))
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

#[test]
fn the_component_runs_real_sandboxes_on_a_real_agent_through_the_hosts_loader() {
    let a = Agent::start(Setup::default());
    let dir = folder(&a, &a.token);
    let (ok, report) = check(dir.path());
    assert!(ok, "{report:#}\n{}", a.log());
    let text = report.to_string();
    assert!(
        text.contains("cpu-seconds") && text.contains("gib-seconds"),
        "{text}"
    );
    assert!(!text.contains(&a.token), "the token leaked into the report");
    // The check's sandbox really ran on the agent and was destroyed with cgroup usage.
    let (_, list) = a.call(reqwest::Method::GET, "/v1/sandboxes", None);
    let sandboxes = list["sandboxes"].as_array().unwrap();
    assert_eq!(sandboxes.len(), 1, "{list}");
    let sb = &sandboxes[0];
    assert_eq!(sb["state"], "destroyed", "{sb}");
    assert_eq!(sb["usage"]["source"], "cgroup", "{sb}");
    assert!(sb["usage"]["cpu_us"].as_u64().unwrap() > 0, "{sb}");
    let id = sb["id"].as_str().unwrap();
    assert!(a.cgroup_dirs(id).is_empty());
    assert_eq!(a.health().free, a.setup.slots);
}

#[test]
fn a_wrong_agent_token_is_refused_and_creates_nothing() {
    let a = Agent::start(Setup::default());
    let dir = folder(&a, "wrong-token-0123456789abcdef");
    let (ok, report) = check(dir.path());
    assert!(!ok, "{report:#}");
    let text = report.to_string();
    assert!(text.contains("token was refused"), "{text}");
    assert!(!text.contains("wrong-token-0123456789abcdef"), "{text}");
    let (_, list) = a.call(reqwest::Method::GET, "/v1/sandboxes", None);
    assert!(list["sandboxes"].as_array().unwrap().is_empty(), "{list}");
}

/// Runs the host's CLI on `dir` (extensions, profiles and state in it).
fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(sandboxer())
        .arg("--extensions-dir")
        .arg(dir.join("extensions"))
        .arg("--profiles-dir")
        .arg(dir.join("profiles"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn two_agents_are_one_pool_placed_by_free_slots_and_each_runs_its_sandboxes() {
    let a = Agent::start(Setup {
        slots: 1,
        ..Setup::default()
    });
    let b = Agent::start(Setup {
        slots: 2,
        ..Setup::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (ext, prof) = (dir.path().join("extensions"), dir.path().join("profiles"));
    std::fs::create_dir_all(&ext).unwrap();
    std::fs::create_dir_all(&prof).unwrap();
    std::fs::copy(component(), ext.join("local.wasm")).unwrap();
    std::fs::write(ext.join("a.token"), &a.token).unwrap();
    std::fs::write(ext.join("b.token"), &b.token).unwrap();
    std::fs::write(
        ext.join("local.toml"),
        format!(
            "component = \"local.wasm\"\nkind = \"self-hosted\"\ncall_timeout_ms = 30000\n\
             allowed_outbound_hosts = [\"{a}\", \"{b}\"]\n[secrets]\ntoken_1 = {{ file = \"a.token\" }}\n\
             token_2 = {{ file = \"b.token\" }}\n[config]\nagents = \"{a},{b}\"\n",
            a = a.url,
            b = b.url
        ),
    )
    .unwrap();
    std::fs::write(
        prof.join("pool.toml"),
        "template = \"base\"\nmax_duration_secs = 600\nrequires = [\"exec\"]\n[resources]\nvcpus = 1\nmemory_mib = 256\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"local\"\nfallback = false\n",
    )
    .unwrap();
    let out = cli(dir.path(), &["credits", "add", "t", "10"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Three slots in all: three creates land, a fourth finds the pool full.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = cli(
            dir.path(),
            &[
                "--json",
                "sandbox",
                "create",
                "--profile",
                "pool",
                "--tenant",
                "t",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["extension_id"], "local", "{st}");
        ids.push(st["id"].as_str().unwrap().to_owned());
    }
    let out = cli(
        dir.path(),
        &["sandbox", "create", "--profile", "pool", "--tenant", "t"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no capacity (3/3 in use)"), "{err}");
    assert_eq!((a.health().free, b.health().free), (0, 0));
    let on = |agent: &Agent| {
        let (_, list) = agent.call(reqwest::Method::GET, "/v1/sandboxes", None);
        list["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] == "running")
            .count()
    };
    assert_eq!((on(&a), on(&b)), (1, 2));

    // Each runs its command on the agent that holds it.
    for id in &ids {
        let out = cli(dir.path(), &["sandbox", "exec", id, "--", "echo", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    }
    for id in &ids {
        let out = cli(dir.path(), &["--json", "sandbox", "destroy", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["state"], "destroyed", "{st}");
    }
    assert_eq!((a.health().free, b.health().free), (1, 2));
    let out = cli(dir.path(), &["--json", "credits", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
