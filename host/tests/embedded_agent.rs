//! `sandboxer-host run` with its embedded `sandboxer-agent` (server/embedded.rs): real
//! binaries on loopback, real bubblewrap and cgroups. With no config the host starts its
//! agent and `local` runs real sandboxes on it; the agent goes with the host (SIGTERM and
//! SIGKILL); where the agent cannot run, `local` is reported off with why and the other
//! backends serve.

#[path = "support/http_host.rs"]
mod http_host;

use std::path::Path;
use std::time::Duration;

use http_host::{Host, Setup};
use serde_json::Value;

const LOCAL_PROFILE: &str = r#"
id = "local-only"
description = "On the embedded agent"
template = "base"
max_duration_secs = 600

[resources]
vcpus = 1
memory_mib = 256

[route]
strategy = "explicit"
explicit = "local"
fallback = false
max_cost_per_hour = "1.00"
"#;

fn setup() -> Setup {
    let s = Setup::with_extensions(&["saas-stub.wasm", "local.wasm"]);
    std::fs::write(s.profiles().join("local-only.toml"), LOCAL_PROFILE).unwrap();
    s
}

fn agent_binary() -> String {
    let p = Path::new(env!("CARGO_BIN_EXE_sandboxer-host")).with_file_name("sandboxer-agent");
    assert!(
        p.is_file(),
        "{} is missing: `cargo build -p sandboxer-agent` (make test does)",
        p.display()
    );
    p.display().to_string()
}

/// The embedded agent's URL and token, from the files the host gave it.
fn agent_of(s: &Setup) -> (String, String) {
    let addr = std::fs::read_to_string(s.state().join("agent/listen.addr")).unwrap();
    let token = std::fs::read_to_string(s.state().join("tokens/agent.token")).unwrap();
    (format!("http://{}", addr.trim()), token.trim().to_owned())
}

fn agent_get(url: &str, token: &str, path: &str) -> Option<Value> {
    let r = reqwest::blocking::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?;
    r.json().ok()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes (its parent has not reaped it yet).
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The pid listening for the agent: the embedded agent's `serve` process.
fn agent_pid(s: &Setup) -> u32 {
    let state = s.state().join("agent");
    let needle = state.to_str().unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("sandboxer-agent serve") && cmd.contains(needle) {
            return pid;
        }
    }
    panic!("no embedded agent process for {needle}");
}

fn wait_gone(pid: u32) {
    let start = std::time::Instant::now();
    while alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent {pid} outlived the host"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn no_config_runs_real_sandboxes_on_the_embedded_agent_and_it_goes_with_the_host() {
    agent_binary();
    let s = setup();
    let h = Host::start_with(&s, &[]);
    let tenant = std::fs::read_to_string(s.state().join("tokens/local.token")).unwrap();
    let tenant = tenant.trim();
    let admin = std::fs::read_to_string(s.state().join("tokens/admin.token")).unwrap();
    let (st, v) = h.post(
        "/v1/tenants/local/credits",
        admin.trim(),
        r#"{"amount":"10"}"#,
    );
    assert_eq!(st, 201, "{v}");

    let (st, v) = h.get("/v1/extensions", tenant);
    assert_eq!(st, 200, "{v}");
    let local = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "local")
        .cloned()
        .unwrap();
    assert_eq!(local["status"], "loaded", "{local}");

    let sb = h.create(tenant, "local-only");
    assert_eq!(sb["extension_id"], "local", "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();

    // The agent itself runs it: a real bwrap sandbox in its cgroup.
    let (url, token) = agent_of(&s);
    let seen = agent_get(&url, &token, &format!("/v1/sandboxes/{id}")).unwrap();
    assert_eq!(seen["state"], "running", "{seen}");
    let health = agent_get(&url, &token, "/v1/health").unwrap();
    assert_eq!(health["used"], 1, "{health}");

    let (st, done) = h.delete(&format!("/v1/sandboxes/{id}"), tenant);
    assert!(st == 200 || st == 202, "{st} {done}");
    let gone = h.wait_for(Duration::from_secs(20), || {
        let v = agent_get(&url, &token, &format!("/v1/sandboxes/{id}"))?;
        (v["state"] == "destroyed").then_some(v)
    });
    assert!(gone["usage"]["cpu_us"].as_u64().unwrap() > 0, "{gone}");

    // SIGTERM: the host stops its agent before it exits.
    let pid = agent_pid(&s);
    assert!(h.terminate(), "the host did not exit cleanly");
    wait_gone(pid);

    // SIGKILL: the agent's parent-death signal stops it.
    let h = Host::start_with(&s, &[]);
    let pid = agent_pid(&s);
    assert!(alive(pid));
    h.kill();
    wait_gone(pid);
}

#[test]
fn without_bubblewrap_local_is_off_with_the_reason_and_the_others_serve() {
    let s = setup();
    // A real agent that cannot find bwrap: the wrapper runs it with an empty PATH.
    let wrapper = s.path().join("agent-without-bwrap");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPATH=/nonexistent exec {} \"$@\"\n",
            agent_binary()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.write_config(&format!("[local]\nagent = \"{}\"\n", wrapper.display()));
    let h = Host::start(&s);

    // Skipped files are the operator's view.
    let (st, v) = h.get("/v1/extensions", http_host::ADMIN);
    assert_eq!(st, 200, "{v}");
    let rows = v["extensions"].as_array().unwrap();
    let local = rows.iter().find(|e| e["id"] == "local").unwrap();
    assert_eq!(local["status"], "skipped", "{local}");
    let reason = local["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("bubblewrap") && reason.contains("apt-get install bubblewrap"),
        "{local}"
    );
    assert!(h.log.lock().unwrap().contains("local is off"));
    let stub = rows.iter().find(|e| e["id"] == "saas-stub").unwrap();
    assert_eq!(stub["status"], "loaded", "{stub}");

    h.grant("a", "10");
    let sb = h.create(http_host::TOKEN_A, "saas-stub");
    assert_eq!(sb["extension_id"], "saas-stub");
    let (st, v) = h.post(
        "/v1/sandboxes",
        http_host::TOKEN_A,
        r#"{"profile":"local-only"}"#,
    );
    assert!(st >= 400, "{st} {v}");
    assert!(h.terminate());
}

#[test]
fn kill_9_of_the_agent_with_a_sandbox_running_settles_it_from_what_was_measured() {
    let s = setup();
    let h = Host::start(&s);
    h.grant("a", "10");
    let sb = h.create(http_host::TOKEN_A, "local-only");
    let id = sb["id"].as_str().unwrap().to_owned();
    // Some CPU the bill must show even though the agent dies.
    let (st, v) = h.post(
        &format!("/v1/sandboxes/{id}/exec"),
        http_host::TOKEN_A,
        r#"{"argv":["python3","-c","import time\nt=time.process_time()\nwhile time.process_time()-t<0.4: pass"]}"#,
    );
    assert_eq!(st, 200, "{v}");
    let burned = v["cpu_ms"].as_u64().unwrap();

    // The agent's own id for it (the only sandbox on this agent).
    let (url, token) = agent_of(&s);
    let listing = agent_get(&url, &token, "/v1/sandboxes").unwrap();
    let agent_id = listing["sandboxes"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no sandbox on the agent: {listing}"))
        .to_owned();

    let pid = agent_pid(&s);
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_gone(pid);
    // The host restarts it on the same address; the new agent finds the dead one's
    // sandbox, stops it and records its usage from its cgroup.
    let seen = h.wait_for(Duration::from_secs(30), || {
        let v = agent_get(&url, &token, &format!("/v1/sandboxes/{agent_id}"))?;
        (v["state"] == "stopped").then_some(v)
    });
    assert!(seen["usage"]["cpu_us"].as_u64().unwrap() > 0, "{seen}");
    // Running code there now fails clearly; the sandbox is still the host's to settle.
    let (st, v) = h.post(
        &format!("/v1/sandboxes/{id}/exec"),
        http_host::TOKEN_A,
        r#"{"argv":["true"]}"#,
    );
    assert!((400..600).contains(&st) && st != 500, "{st} {v}");
    let (st, done) = h.delete(&format!("/v1/sandboxes/{id}"), http_host::TOKEN_A);
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["state"], "destroyed", "{done}");
    let cpu: f64 = done["meter"]["usage"]["measures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "cpu-seconds")
        .and_then(|m| m["quantity"].as_str()?.parse().ok())
        .unwrap();
    assert!(
        cpu * 1000.0 >= burned as f64 * 0.9,
        "billed {cpu} s for {burned} ms: {done}"
    );
    // No hold dangles.
    let (_, credits) = h.get("/v1/credits", http_host::TOKEN_A);
    let held: f64 = credits["balances"][0]["held"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(held, 0.0, "{credits}");
    assert!(h.terminate());
}
