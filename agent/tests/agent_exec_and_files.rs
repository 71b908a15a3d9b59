//! The real agent on loopback, real bubblewrap and cgroups: running commands (blocking and
//! streamed), moving files, and refusing bad requests. Needs root, bubblewrap and cgroups
//! (as in CI); `sandboxer-agent check` says what is missing.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use sandboxer_agent::wire::{ExitStatus, Output, Started};
use serde_json::json;
use support::{Agent, Setup};

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn exec_runs_commands_with_their_status_streams_env_cwd_and_stdin() {
    let a = Agent::start(Setup::default());
    a.create("run", 1, 256);

    let r = a.exec(
        "run",
        json!({"argv": ["echo", "hello", "world"], "timeout_ms": 5000, "output_limit_bytes": 1000}),
    );
    assert_eq!(r.exit.status, ExitStatus::Exited);
    assert_eq!(r.exit.exit_code, Some(0));
    assert_eq!(r.stdout, b"hello world\n");
    assert!(r.stderr.is_empty() && !r.stdout_truncated && !r.stderr_truncated);
    assert!(r.exit.cpu_ms.is_some());

    // Exit codes, and stderr kept apart from stdout.
    let r = a.sh("run", "echo out; echo err >&2; exit 7");
    assert_eq!(
        (r.exit.status, r.exit.exit_code),
        (ExitStatus::Exited, Some(7))
    );
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");

    // Env on top of the sandbox's own; cwd relative to the workspace; the workspace is HOME.
    a.sh("run", "mkdir -p sub/dir");
    let r = a.exec(
        "run",
        json!({"shell": "echo $GREETING $HOME; pwd", "env": {"GREETING": "bonjour"},
               "cwd": "sub/dir", "timeout_ms": 5000, "output_limit_bytes": 1000}),
    );
    assert_eq!(r.stdout, b"bonjour /workspace\n/workspace/sub/dir\n");

    // Stdin bytes, then closed.
    let r = a.exec(
        "run",
        json!({"argv": ["wc", "-c"], "stdin_b64": b64(&[7u8; 1000]), "timeout_ms": 5000,
               "output_limit_bytes": 100}),
    );
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "1000");

    // A shell line with a pipe; the sandbox's uid and hostname.
    let r = a.sh("run", "id -u; hostname; seq 1 5 | tail -n 1");
    assert_eq!(r.stdout, b"1000\nsandbox\n5\n");

    // A program that does not exist and a working folder that does not exist: failed.
    let r = a.exec(
        "run",
        json!({"argv": ["no-such-program"], "timeout_ms": 5000, "output_limit_bytes": 100}),
    );
    assert_eq!(r.exit.status, ExitStatus::Failed);
    assert!(
        r.exit.detail.contains("no-such-program"),
        "{}",
        r.exit.detail
    );
    let r = a.exec(
        "run",
        json!({"argv": ["true"], "cwd": "missing", "timeout_ms": 5000, "output_limit_bytes": 100}),
    );
    assert_eq!(r.exit.status, ExitStatus::Failed);
    assert!(
        r.exit.detail.contains("/workspace/missing"),
        "{}",
        r.exit.detail
    );
}

#[test]
fn timeouts_kill_the_command_and_output_is_capped_byte_exact() {
    let a = Agent::start(Setup::default());
    a.create("t", 1, 256);

    let started = Instant::now();
    let r = a.exec(
        "t",
        json!({"shell": "echo before; sleep 30 & sleep 30", "timeout_ms": 300,
               "output_limit_bytes": 1000}),
    );
    assert_eq!(r.exit.status, ExitStatus::TimedOut, "{:?}", r.exit);
    assert_eq!(r.exit.exit_code, None);
    assert_eq!(r.stdout, b"before\n");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!((300..3000).contains(&r.exit.duration_ms), "{:?}", r.exit);
    // The command's children went with it.
    let r = a.sh("t", "ps -eo comm | grep -c '^sleep$' || true");
    assert_eq!(r.stdout, b"0\n");

    // Over the cap: kept up to it, flagged, the command not stopped for it.
    let r = a.exec(
        "t",
        json!({"shell": "head -c 100000 /dev/zero; echo tail >&2; exit 3", "timeout_ms": 5000,
               "output_limit_bytes": 1000}),
    );
    assert_eq!(r.exit.exit_code, Some(3));
    assert_eq!(r.stdout, vec![0u8; 1000]);
    assert!(r.stdout_truncated);
    assert_eq!(r.stderr, b"tail\n");
    assert!(!r.stderr_truncated);

    // Bytes that are not UTF-8 come back as they were.
    let r = a.sh("t", r"printf '\377\376\000\200ok'");
    assert_eq!(r.stdout, [0xff, 0xfe, 0x00, 0x80, b'o', b'k']);
}

fn read_output(a: &Agent, id: &str, pid: &str, cursor: &str, wait_ms: u64) -> Output {
    let (s, v) = a.call(
        Method::GET,
        &format!("/v1/sandboxes/{id}/processes/{pid}/output?cursor={cursor}&wait_ms={wait_ms}"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    serde_json::from_value(v).unwrap()
}

fn start(a: &Agent, id: &str, body: serde_json::Value) -> String {
    let (s, v) = a.call(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes"),
        Some(body),
    );
    assert_eq!(s, 201, "{v}");
    serde_json::from_value::<Started>(v).unwrap().process_id
}

#[test]
fn streamed_output_arrives_before_the_command_ends_and_stdin_and_kill_work() {
    let a = Agent::start(Setup::default());
    a.create("s", 1, 256);

    let started = Instant::now();
    let pid = start(
        &a,
        "s",
        json!({"shell": "echo first; sleep 1.5; echo second >&2", "timeout_ms": 10000,
               "output_limit_bytes": 1000}),
    );
    let first = read_output(&a, "s", &pid, "", 5000);
    let first_at = started.elapsed();
    assert_eq!(first.chunks.len(), 1, "{first:?}");
    assert_eq!(first.chunks[0].data, b"first\n");
    assert!(first.exit.is_none());
    assert!(
        first_at < Duration::from_millis(1000),
        "first chunk after {first_at:?}"
    );
    // Nothing new within a short wait: an empty answer with the same cursor.
    let none = read_output(&a, "s", &pid, &first.cursor, 100);
    assert!(none.chunks.is_empty() && none.exit.is_none());
    assert_eq!(none.cursor, first.cursor);
    let mut cursor = first.cursor;
    let mut rest = Vec::new();
    let exit = loop {
        let o = read_output(&a, "s", &pid, &cursor, 5000);
        rest.extend(o.chunks);
        cursor = o.cursor;
        if let Some(e) = o.exit {
            break e;
        }
    };
    let ended_at = started.elapsed();
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].data, b"second\n");
    assert!(
        ended_at >= first_at + Duration::from_millis(1000),
        "{first_at:?} {ended_at:?}"
    );
    // Reading again from the start gives everything, in order, and the exit.
    let all = read_output(&a, "s", &pid, "", 0);
    assert_eq!(all.chunks.len(), 2);
    assert!(all.exit.is_some());
    let (s, v) = a.call(
        Method::GET,
        &format!("/v1/sandboxes/s/processes/{pid}/output?cursor=999999"),
        None,
    );
    assert_eq!(s, 400, "{v}");

    // stdin kept open, written later, then closed.
    let cat = start(
        &a,
        "s",
        json!({"argv": ["cat"], "stdin_b64": b64(b"one "), "keep_stdin_open": true,
               "timeout_ms": 10000, "output_limit_bytes": 1000}),
    );
    let (s, v) = a.call(
        Method::POST,
        &format!("/v1/sandboxes/s/processes/{cat}/stdin"),
        Some(json!({"data_b64": b64(b"two"), "close": true})),
    );
    assert_eq!(s, 204, "{v}");
    let mut got = Vec::new();
    let mut cursor = String::new();
    let exit = loop {
        let o = read_output(&a, "s", &cat, &cursor, 5000);
        for c in o.chunks {
            got.extend(c.data);
        }
        cursor = o.cursor;
        if let Some(e) = o.exit {
            break e;
        }
    };
    assert_eq!(got, b"one two");
    assert_eq!(exit.exit_code, Some(0));
    let (s, _) = a.call(
        Method::POST,
        &format!("/v1/sandboxes/s/processes/{cat}/stdin"),
        Some(json!({"data_b64": b64(b"late")})),
    );
    assert_eq!(s, 409);

    // Kill: the process and its children; killing again is not an error.
    let sleeper = start(
        &a,
        "s",
        json!({"shell": "sleep 60 & sleep 60", "timeout_ms": 60000, "output_limit_bytes": 10}),
    );
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..2 {
        let (s, v) = a.call(
            Method::POST,
            &format!("/v1/sandboxes/s/processes/{sleeper}/kill"),
            None,
        );
        assert_eq!(s, 204, "{v}");
    }
    let o = read_output(&a, "s", &sleeper, "", 5000);
    let exit = o.exit.expect("ended");
    assert_eq!(exit.status, ExitStatus::Killed);
    assert_eq!(exit.detail, "killed by request");
    let r = a.sh("s", "ps -eo comm | grep -c '^sleep$' || true");
    assert_eq!(r.stdout, b"0\n");
    let (s, _) = a.call(Method::GET, "/v1/sandboxes/s/processes/p999/output", None);
    assert_eq!(s, 404);
}

fn put(a: &Agent, id: &str, path: &str, data: &[u8], append: bool) -> (u16, serde_json::Value) {
    let resp = a
        .req(Method::PUT, &format!("/v1/sandboxes/{id}/files"))
        .query(&[
            ("path", path),
            ("append", if append { "true" } else { "false" }),
        ])
        .body(data.to_vec())
        .send()
        .unwrap();
    let s = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn get(a: &Agent, id: &str, path: &str, offset: u64) -> (u16, Vec<u8>, Option<String>) {
    let resp = a
        .req(Method::GET, &format!("/v1/sandboxes/{id}/files"))
        .query(&[("path", path), ("offset", &offset.to_string())])
        .send()
        .unwrap();
    let s = resp.status().as_u16();
    let size = resp
        .headers()
        .get("x-file-size")
        .map(|v| v.to_str().unwrap().to_owned());
    (s, resp.bytes().unwrap().to_vec(), size)
}

#[test]
fn files_round_trip_byte_exact_and_escapes_are_refused() {
    let a = Agent::start(Setup {
        config: "max_file_bytes = 1048576\n".into(),
        ..Setup::default()
    });
    a.create("f", 1, 256);
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(put(&a, "f", "deep/er/data.bin", &data, false).0, 204);
    // The sandbox sees the same bytes.
    let r = a.sh("f", "cat deep/er/data.bin");
    assert_eq!(r.stdout, data);
    let (s, back, size) = get(&a, "f", "/workspace/deep/er/data.bin", 0);
    assert_eq!(s, 200);
    assert_eq!(back, data);
    assert_eq!(size.as_deref(), Some("70000"));
    let (_, tail, _) = get(&a, "f", "deep/er/data.bin", 69_990);
    assert_eq!(tail, &data[69_990..]);
    assert_eq!(put(&a, "f", "deep/er/data.bin", b"++", true).0, 204);
    let r = a.sh("f", "wc -c < deep/er/data.bin; tail -c 2 deep/er/data.bin");
    assert_eq!(r.stdout, b"70002\n++");
    // A file the sandbox wrote, read through the API.
    a.sh("f", "printf 'made inside' > inside.txt");
    assert_eq!(get(&a, "f", "inside.txt", 0).1, b"made inside");

    let (s, v) = a.call(Method::GET, "/v1/sandboxes/f/dir?path=deep/er", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["entries"][0]["name"], "data.bin");
    assert_eq!(v["entries"][0]["kind"], "file");
    assert_eq!(v["entries"][0]["size"], 70002);
    let (_, v) = a.call(Method::GET, "/v1/sandboxes/f/dir?path=", None);
    let names: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["deep", "inside.txt"]);

    // Escapes: `..`, absolute paths elsewhere, symlinks leading out (made by the sandbox).
    a.sh(
        "f",
        "ln -s /etc/passwd pw; ln -s /tmp tmplink; ln -s ../../etc up",
    );
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        "pw",
        "tmplink/x",
        "up/passwd",
        "a/../../b",
    ] {
        let (s, body, _) = get(&a, "f", path, 0);
        assert_eq!(s, 400, "read {path}: {}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("invalid_request") && text.contains("workspace"),
            "{text}"
        );
        let (s, v) = put(&a, "f", path, b"evil", false);
        assert_eq!(s, 400, "write {path}: {v}");
    }
    let (s, _) = put(&a, "f", "tmplink/evil", b"evil", false);
    assert_eq!(s, 400);
    // Nothing was written through any of them.
    let r = a.sh("f", "ls -A /tmp; grep -c evil /etc/passwd || true");
    assert_eq!(r.stdout, b"0\n", "{}", String::from_utf8_lossy(&r.stdout));
    let (s, _, _) = get(&a, "f", "missing.txt", 0);
    assert_eq!(s, 404);
    let (s, _, _) = get(&a, "f", "deep", 0);
    assert_eq!(s, 400);

    // Over-size uploads are refused with a clear error and write nothing.
    let (s, v) = put(&a, "f", "big.bin", &vec![1u8; 1_048_577], false);
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "too_large");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_file_bytes"),
        "{v}"
    );
    assert_eq!(get(&a, "f", "big.bin", 0).0, 404);
}

#[test]
fn bad_requests_and_wrong_tokens_are_refused_and_change_nothing() {
    let a = Agent::start(Setup::default());
    // No token, a wrong token: 401 on every endpoint.
    for (m, p) in [
        (Method::GET, "/v1/health"),
        (Method::POST, "/v1/sandboxes"),
        (Method::GET, "/v1/sandboxes/x"),
        (Method::DELETE, "/v1/sandboxes/x"),
        (Method::POST, "/v1/sandboxes/x/exec"),
    ] {
        let r = reqwest::blocking::Client::new()
            .request(m.clone(), format!("{}{p}", a.url))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{m} {p}");
        let r = reqwest::blocking::Client::new()
            .request(m.clone(), format!("{}{p}", a.url))
            .bearer_auth(format!("{}x", a.token))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{m} {p}");
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(!v.to_string().contains(&a.token));
    }
    assert_eq!(a.health().used, 0);

    let bad = [
        (
            json!({"id": "../x", "vcpus": 1, "memory_mib": 256, "max_duration_secs": 60}),
            400,
            "id",
        ),
        (
            json!({"id": "a", "vcpus": 64, "memory_mib": 256, "max_duration_secs": 60}),
            422,
            "vcpus",
        ),
        (
            json!({"id": "a", "vcpus": 1, "memory_mib": 256, "max_duration_secs": 60,
                "template": "nope"}),
            422,
            "template",
        ),
        (
            json!({"id": "a", "vcpus": 1, "memory_mib": 256, "max_duration_secs": 0}),
            400,
            "max_duration",
        ),
        (json!({"id": "a", "vcpus": 1}), 400, "memory_mib"),
        (
            json!({"id": "a", "vcpus": 1, "memory_mib": 256, "max_duration_secs": 60, "colour": 1}),
            400,
            "colour",
        ),
    ];
    for (body, status, word) in bad {
        let (s, v) = a.call(Method::POST, "/v1/sandboxes", Some(body.clone()));
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(word),
            "{v}"
        );
    }
    assert_eq!(a.health().used, 0);
    assert!(
        a.call(Method::GET, "/v1/sandboxes", None).1["sandboxes"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Creating the same id twice is one sandbox; a different request under it is refused.
    a.create("same", 1, 128);
    let (s, v) = a.call(
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": "same", "vcpus": 1, "memory_mib": 128, "max_duration_secs": 600})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = a.call(
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": "same", "vcpus": 1, "memory_mib": 256, "max_duration_secs": 600})),
    );
    assert_eq!(s, 409);
    assert_eq!(a.health().used, 1);

    for body in [
        json!({"timeout_ms": 1000, "output_limit_bytes": 10}),
        json!({"argv": ["true"], "shell": "true", "timeout_ms": 1000, "output_limit_bytes": 10}),
        json!({"argv": ["true"], "timeout_ms": 0, "output_limit_bytes": 10}),
        json!({"argv": ["true"], "timeout_ms": 1000, "output_limit_bytes": 1u64 << 40}),
        json!({"argv": ["true"], "timeout_ms": 1000, "output_limit_bytes": 10, "stdin_b64": "!!"}),
    ] {
        let (s, v) = a.call(Method::POST, "/v1/sandboxes/same/exec", Some(body.clone()));
        assert_eq!(s, 400, "{body}: {v}");
    }
    let (s, _) = a.call(
        Method::POST,
        "/v1/sandboxes/nope/exec",
        Some(json!({"argv": ["true"], "timeout_ms": 1000, "output_limit_bytes": 10})),
    );
    assert_eq!(s, 404);

    // Destroyed: exec is a conflict, destroy again gives the same usage, the id is spent.
    let first = a.destroy("same");
    assert_eq!(a.destroy("same"), first);
    let (s, _) = a.call(
        Method::POST,
        "/v1/sandboxes/same/exec",
        Some(json!({"argv": ["true"], "timeout_ms": 1000, "output_limit_bytes": 10})),
    );
    assert_eq!(s, 409);
    let (s, _) = a.call(
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": "same", "vcpus": 1, "memory_mib": 128, "max_duration_secs": 600})),
    );
    assert_eq!(s, 409);
    assert_eq!(a.health().free, a.setup.slots);
}

#[test]
fn slots_are_the_capacity_and_a_sandbox_expires_at_its_max_duration() {
    let a = Agent::start(Setup {
        slots: 2,
        ..Setup::default()
    });
    a.create("one", 1, 128);
    let (s, _) = a.call(
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": "short", "vcpus": 1, "memory_mib": 128, "max_duration_secs": 1})),
    );
    assert_eq!(s, 201);
    let h = a.health();
    assert_eq!((h.slots, h.used, h.free), (2, 2, 0));
    let (s, v) = a.call(
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"id": "three", "vcpus": 1, "memory_mib": 128, "max_duration_secs": 60})),
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "capacity_exhausted");
    // `short` ends by itself; its slot comes back and its usage is recorded.
    let deadline = Instant::now() + Duration::from_secs(5);
    let info = loop {
        let i = a.info("short");
        if i.usage.is_some() || Instant::now() > deadline {
            break i;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        info.state,
        sandboxer_agent::wire::State::Stopped,
        "{info:?}"
    );
    assert!(info.detail.contains("expired"), "{}", info.detail);
    assert!(info.usage.unwrap().wall_ms >= 1000);
    assert_eq!(a.health().free, 1);
    // The usage is written before the cgroup is removed (a crash between them leaves a
    // cgroup the next start removes): the removal follows within moments.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !a.cgroup_dirs("short").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(a.cgroup_dirs("short").is_empty());
    let d = a.destroy("short");
    assert_eq!(Some(d.usage), info.usage);
}

#[test]
fn check_reports_what_is_there_and_what_is_missing() {
    let a = Agent::start(Setup::default());
    let out = a.command("check").arg("--json").output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert_eq!(report["ok"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bubblewrap",
            "privileges",
            "user namespaces",
            "cgroups",
            "sandbox"
        ]
    );

    // Without bubblewrap: check says so and how to fix it, and serve refuses to start.
    std::fs::write(
        a.dir.path().join("agent.toml"),
        "bwrap = \"/nonexistent/bwrap\"\n",
    )
    .unwrap();
    let out = a.command("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  bubblewrap") && text.contains("apt-get install bubblewrap"),
        "{text}"
    );
    let out = a.command("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bubblewrap") && err.contains("apt-get install bubblewrap"),
        "{err}"
    );

    // A malformed config names the file and the key.
    std::fs::write(a.dir.path().join("agent.toml"), "slots = \"many\"\n").unwrap();
    let out = a.command("check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.toml") && err.contains("slots"), "{err}");
    let out = std::process::Command::new(support::BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("bubblewrap") && help.contains("check") && help.contains("serve"),
        "{help}"
    );
}
