//! Exec and files through the real surfaces: `sandboxer-host run` with its embedded
//! `sandboxer-agent` (real bubblewrap and cgroups), the shipped `local` component and the
//! shipped `burst-sandbox` profile; the HTTP API and the `sandboxer` CLI on the same state.

#[path = "support/http_host.rs"]
mod http_host;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_host::{Host, Setup, TOKEN_A, TOKEN_B, repo};
use serde_json::{Value, json};

const STUB_PROFILE: &str = r#"
id = "stub-only"
description = "saas-stub: no exec"
template = "base"
max_duration_secs = 600
[resources]
vcpus = 1
memory_mib = 256
[route]
strategy = "explicit"
explicit = "saas-stub"
fallback = false
"#;

const STUB_REQUIRING_EXEC: &str = r#"
id = "stub-exec"
description = "saas-stub, but exec is required"
template = "base"
max_duration_secs = 600
requires = ["exec"]
[resources]
vcpus = 1
memory_mib = 256
[route]
strategy = "lowest-cost"
candidates = ["saas-stub", "local"]
"#;

/// The shipped `local` and saas-stub, the shipped burst-sandbox (local, e2b, modal;
/// requires exec and files), two profiles on saas-stub; tenants `a` and `b`; top-level
/// config keys in `extra_config`.
fn setup(extra_config: &str) -> Setup {
    let agent = Path::new(env!("CARGO_BIN_EXE_sandboxer-host")).with_file_name("sandboxer-agent");
    assert!(
        agent.is_file(),
        "{} is missing: `cargo build -p sandboxer-agent` (make test does)",
        agent.display()
    );
    let s = Setup::with_extensions(&["saas-stub.wasm", "local.wasm"]);
    std::fs::copy(
        repo().join("profiles/burst-sandbox.toml"),
        s.profiles().join("burst-sandbox.toml"),
    )
    .unwrap();
    std::fs::write(s.profiles().join("stub-only.toml"), STUB_PROFILE).unwrap();
    std::fs::write(s.profiles().join("stub-exec.toml"), STUB_REQUIRING_EXEC).unwrap();
    s.write_config("");
    // Top-level keys go before the config's tables.
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(s.config(), format!("{extra_config}\n{text}")).unwrap();
    s
}

fn create(h: &Host, token: &str, profile: &str) -> String {
    let (st, v) = h.post(
        "/v1/sandboxes",
        token,
        &json!({ "profile": profile }).to_string(),
    );
    assert_eq!(st, 201, "{v}\n{}", h.log.lock().unwrap());
    v["id"].as_str().unwrap().to_owned()
}

fn exec(h: &Host, token: &str, id: &str, body: Value) -> (u16, Value) {
    h.post(
        &format!("/v1/sandboxes/{id}/exec"),
        token,
        &body.to_string(),
    )
}

fn ok_exec(h: &Host, id: &str, body: Value) -> Value {
    let (st, v) = exec(h, TOKEN_A, id, body.clone());
    assert_eq!(st, 200, "{body}: {v}");
    v
}

fn put(h: &Host, token: &str, id: &str, path: &str, data: &[u8]) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .put(h.url(&format!("/v1/sandboxes/{id}/files/{path}")))
        .bearer_auth(token)
        .body(data.to_vec())
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().unwrap_or(Value::Null))
}

fn get_bytes(h: &Host, token: &str, id: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::blocking::Client::new()
        .get(h.url(&format!("/v1/sandboxes/{id}/files/{path}")))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60))
        .send()
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.bytes().unwrap().to_vec())
}

/// A request sent byte for byte as written (URL clients resolve `..` and `%2e%2e` away
/// before sending, as a hostile client would not): the status and the body.
fn raw_http(h: &Host, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = h.base.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN_A}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn commands_run_for_real_with_their_output_exit_limits_stream_owner_and_bill() {
    let s = setup("");
    let h = Host::start(&s);
    h.grant("a", "10");
    h.grant("b", "10");
    let id = create(&h, TOKEN_A, "burst-sandbox");
    let (_, st) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(st["extension_id"], "local", "{st}");

    // Python runs, and prints 42.
    let v = ok_exec(&h, &id, json!({"argv": ["python3", "-c", "print(6*7)"]}));
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"], "42\n", "{v}");
    // Exit codes and stderr apart from stdout.
    let v = ok_exec(&h, &id, json!({"shell": "echo out; echo err >&2; exit 3"}));
    assert_eq!(
        (
            v["exit_code"].clone(),
            v["stdout"].clone(),
            v["stderr"].clone()
        ),
        (json!(3), json!("out\n"), json!("err\n")),
        "{v}"
    );
    // Env, cwd and stdin.
    ok_exec(&h, &id, json!({"shell": "mkdir -p sub/dir"}));
    let v = ok_exec(
        &h,
        &id,
        json!({"shell": "echo \"$GREETING from $(pwd)\"; cat", "env": {"GREETING": "hi"}, "cwd": "sub/dir", "stdin": "piped in"}),
    );
    assert_eq!(v["stdout"], "hi from /workspace/sub/dir\npiped in", "{v}");
    // A timeout kills it and says so.
    let t = Instant::now();
    let v = ok_exec(&h, &id, json!({"argv": ["sleep", "30"], "timeout_ms": 500}));
    assert_eq!(v["status"], "timed-out", "{v}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Output over the cap is cut and flagged; bytes that are not UTF-8 come as base64.
    let v = ok_exec(
        &h,
        &id,
        json!({"shell": "head -c 5000 /dev/zero | tr '\\0' x", "output_limit_bytes": 1000}),
    );
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1000, "{v}");
    assert_eq!(v["stdout_truncated"], true, "{v}");
    let v = ok_exec(&h, &id, json!({"shell": "printf '\\377\\000\\200'"}));
    assert!(v.get("stdout").is_none(), "{v}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["stdout_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, [0xff, 0x00, 0x80]);
    // A program that does not exist: it never ran.
    let v = ok_exec(&h, &id, json!({"argv": ["no-such-program"]}));
    assert_eq!(v["status"], "failed", "{v}");

    // Bad requests name their field and run nothing.
    let (st, v) = exec(&h, TOKEN_A, &id, json!({"argv": ["true"], "shell": "true"}));
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (400, json!("argv")),
        "{v}"
    );
    let (st, v) = exec(
        &h,
        TOKEN_A,
        &id,
        json!({"argv": ["true"], "timeout_ms": 999_999_999}),
    );
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (400, json!("timeout_ms")),
        "{v}"
    );

    // Streamed: the first chunk arrives while the command still runs.
    let started = Instant::now();
    let resp = h.exec_stream(
        TOKEN_A,
        &id,
        &json!({"shell": "echo first; sleep 2; echo second"}),
    );
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let mut events: Vec<(Duration, Value)> = Vec::new();
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        events.push((started.elapsed(), serde_json::from_str(&line).unwrap()));
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["started", "stdout", "stdout", "exit"], "{events:?}");
    assert_eq!(events[1].1["data"], "first\n");
    assert_eq!(events[3].1["exit_code"], 0);
    let (first_at, exit_at) = (events[1].0, events[3].0);
    assert!(
        exit_at - first_at > Duration::from_millis(1500),
        "the first chunk came at {first_at:?}, the exit at {exit_at:?}: not streamed"
    );

    // Another tenant cannot see it; the operator's saas-stub cannot run anything.
    let (st, v) = exec(&h, TOKEN_B, &id, json!({"argv": ["true"]}));
    assert_eq!(st, 404, "{v}");
    let (st, _) = get_bytes(&h, TOKEN_B, &id, "sub");
    assert_eq!(st, 404);
    let stub = create(&h, TOKEN_A, "stub-only");
    let (st, v) = exec(&h, TOKEN_A, &stub, json!({"argv": ["true"]}));
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (501, json!("unsupported")),
        "{v}"
    );

    // The CLI on the same state reaches the same sandbox through the host's agent: its
    // output streams to our stdout and its exit code is ours.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer"))
            .args(["--extensions-dir", s.extensions().to_str().unwrap()])
            .args(["--profiles-dir", s.profiles().to_str().unwrap()])
            .args(["--state-dir", s.state().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&[
        "sandbox",
        "exec",
        &id,
        "--env",
        "N=7",
        "--",
        "sh",
        "-c",
        "echo $((N*6)); exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("in.txt");
    std::fs::write(&src, "from the cli\n").unwrap();
    let out = cli(&[
        "sandbox",
        "cp",
        src.to_str().unwrap(),
        &format!("{id}:cli/in.txt"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "sandbox",
        "exec",
        &id,
        "--shell",
        "--",
        "tr a-z A-Z < cli/in.txt > cli/out.txt",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "sandbox",
        "cp",
        &format!("{id}:cli/out.txt"),
        local.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(local.path().join("out.txt")).unwrap(),
        "FROM THE CLI\n"
    );
    let out = cli(&["--json", "sandbox", "ls", &format!("{id}:cli")]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["in.txt", "out.txt"], "{list}");

    // Billing: a command burning about a second of CPU is on the meter, within 10 % of
    // what the backend measured for the commands (the cgroup's reading).
    let v = ok_exec(
        &h,
        &id,
        json!({"argv": ["python3", "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<1.0: pass"]}),
    );
    let burn_ms = v["cpu_ms"].as_u64().expect("local measures cpu_ms");
    assert!((900..3000).contains(&burn_ms), "{v}");
    let (st, done) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(st, 200, "{done}");
    let measures = done["meter"]["usage"]["measures"].as_array().unwrap();
    let cpu: f64 = measures
        .iter()
        .find(|m| m["name"] == "cpu-seconds")
        .and_then(|m| m["quantity"].as_str())
        .and_then(|q| q.parse().ok())
        .expect("a cpu-seconds measure");
    let burned = burn_ms as f64 / 1000.0;
    assert!(
        cpu >= burned * 0.9 && cpu <= burned * 1.1 + 0.5,
        "billed {cpu} CPU-seconds for a command that used {burned}: {done}"
    );
    let lines: Vec<&str> = done["meter"]["line_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["description"].as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.to_lowercase().contains("cpu")),
        "{lines:?}"
    );
    let held: f64 = done["meter"]["held"]["amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let total: f64 = done["meter"]["total"]["amount"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total <= held, "{done}");
    // A destroyed sandbox runs nothing.
    let (st, v) = exec(&h, TOKEN_A, &id, json!({"argv": ["true"]}));
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (409, json!("wrong_state")),
        "{v}"
    );
}

#[test]
fn files_move_bytes_exactly_and_paths_never_leave_the_workspace() {
    let s = setup("max_file_bytes = 6000000");
    let h = Host::start(&s);
    h.grant("a", "10");
    let id = create(&h, TOKEN_A, "burst-sandbox");

    // Bytes in, a command reads them, bytes out, exactly; parents are created.
    let data: Vec<u8> = (0..=255u8).cycle().take(5_000_000).collect();
    let (st, v) = put(&h, TOKEN_A, &id, "deep/er/blob.bin", &data);
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["size"], 5_000_000);
    let v = ok_exec(
        &h,
        &id,
        json!({"shell": "wc -c < deep/er/blob.bin && sha256sum deep/er/blob.bin | cut -c1-16"}),
    );
    let expected = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))[..16].to_owned()
    };
    assert_eq!(v["stdout"], format!("5000000\n{expected}\n"), "{v}");
    let (st, back) = get_bytes(&h, TOKEN_A, &id, "deep/er/blob.bin");
    assert_eq!(st, 200);
    assert!(
        back == data,
        "the file came back changed ({} bytes)",
        back.len()
    );
    // Written by a command, read by the API.
    ok_exec(
        &h,
        &id,
        json!({"shell": "printf 'made inside' > deep/made.txt"}),
    );
    let (st, back) = get_bytes(&h, TOKEN_A, &id, "deep/made.txt");
    assert_eq!((st, back.as_slice()), (200, b"made inside".as_slice()));
    // Lists.
    let (st, v) = h.get(&format!("/v1/sandboxes/{id}/files/deep?list"), TOKEN_A);
    assert_eq!(st, 200, "{v}");
    let entries: Vec<(String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("er".to_owned(), "directory".to_owned()),
            ("made.txt".to_owned(), "file".to_owned())
        ]
    );
    let (st, v) = h.get(&format!("/v1/sandboxes/{id}/files?list"), TOKEN_A);
    assert_eq!(st, 200, "{v}");
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "deep"),
        "{v}"
    );

    // Paths out of the workspace are refused with the path named, and nothing is written.
    for bad in [
        "../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "a/%2E%2E/%2E%2E/x",
        "a/../../../x",
    ] {
        let path = format!("/v1/sandboxes/{id}/files/{bad}");
        let (st, v) = raw_http(&h, "PUT", &path, b"owned");
        assert_eq!(st, 400, "{bad}: {v}");
        assert!(v.contains(r#""field":"path""#), "{v}");
        let (st, v) = raw_http(&h, "GET", &path, b"");
        assert_eq!(st, 400, "{bad}: {v}");
    }
    let (st, v) = put(&h, TOKEN_A, &id, "%2Fetc%2Fcron.d%2Fowned", b"owned");
    assert_eq!(st, 400, "an absolute path outside the workspace: {v}");
    assert!(!Path::new("/etc/cron.d/owned").exists());
    let (st, _) = get_bytes(&h, TOKEN_A, &id, "%2Fetc%2Fshadow");
    assert_eq!(st, 400);
    ok_exec(
        &h,
        &id,
        json!({"shell": "ln -s /etc out-link && ln -s /root/.bashrc file-link"}),
    );
    let (st, v) = put(&h, TOKEN_A, &id, "out-link/owned", b"owned");
    assert_eq!(st, 400, "a symlink pointing out: {v}");
    assert!(!Path::new("/etc/owned").exists());
    let (st, body) = get_bytes(&h, TOKEN_A, &id, "file-link");
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    // A missing file is 404; an upload over max_file_bytes is 413 and writes nothing.
    let (st, _) = get_bytes(&h, TOKEN_A, &id, "no/such/file");
    assert_eq!(st, 404);
    let big = vec![b'x'; 6_000_001];
    let (st, v) = put(&h, TOKEN_A, &id, "big.bin", &big);
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (413, json!("body_too_large")),
        "{v}"
    );
    let (st, _) = get_bytes(&h, TOKEN_A, &id, "big.bin");
    assert_eq!(st, 404);

    // A profile requiring exec never lands on saas-stub, and explain says why.
    let (st, v) = h.post("/v1/route/explain", TOKEN_A, r#"{"profile":"stub-exec"}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["profile"]["requires"], json!(["exec"]), "{v}");
    let candidates = v["decision"]["candidates"].as_array().unwrap();
    let stub = candidates
        .iter()
        .find(|c| c["extension_id"] == "saas-stub")
        .unwrap();
    assert_eq!(
        (
            stub["outcome"].clone(),
            stub["reason"].clone(),
            stub["missing"].clone()
        ),
        (
            json!("dropped"),
            json!("missing-capability"),
            json!(["exec"])
        ),
        "{stub}"
    );
    assert_eq!(v["decision"]["attempts"][0]["extension_id"], "local", "{v}");
    let other = create(&h, TOKEN_A, "stub-exec");
    let (_, st) = h.get(&format!("/v1/sandboxes/{other}"), TOKEN_A);
    assert_eq!(st["extension_id"], "local", "{st}");
    let (out_ok, stdout, _) = s.cli(&["route", "explain", "--profile", "stub-exec"]);
    assert!(out_ok, "{stdout}");
    assert!(
        stdout.contains("cannot run commands (the profile requires exec)"),
        "{stdout}"
    );
}

/// A client that leaves a streamed exec gets its command killed promptly, even a silent
/// one: it must not run on to its end (here: write a file three seconds in).
#[test]
fn a_streamed_command_is_killed_soon_after_its_client_leaves() {
    let s = setup("");
    let h = Host::start(&s);
    h.grant("a", "10");
    let id = create(&h, TOKEN_A, "burst-sandbox");
    let resp = h.exec_stream(
        TOKEN_A,
        &id,
        &json!({"shell": "echo go; sleep 3; echo late > late.txt"}),
    );
    assert_eq!(resp.status().as_u16(), 200);
    let mut lines = BufReader::new(resp).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "started", "{first}");
    let out: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(out["data"], "go\n", "{out}");
    // The client leaves while the command is silent in its sleep.
    drop(lines);
    std::thread::sleep(Duration::from_secs(5));
    let (st, body) = get_bytes(&h, TOKEN_A, &id, "late.txt");
    assert_eq!(
        st,
        404,
        "the command ran on after its client left: {}",
        String::from_utf8_lossy(&body)
    );
    // The sandbox still serves.
    let v = ok_exec(&h, &id, json!({"argv": ["echo", "still here"]}));
    assert_eq!(v["stdout"], "still here\n", "{v}");
}
