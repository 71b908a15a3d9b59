//! The HTTP API through the real `sandboxer-host` binary on loopback, with the real
//! saas-stub component and a real SQLite ledger: auth and tenant isolation, the error
//! shape, bad input, insufficient credits, idempotency, metrics, graceful shutdown.

#[path = "support/http_host.rs"]
mod http_host;

use std::time::Duration;

use http_host::{ADMIN, Host, Setup, TOKEN_A, TOKEN_B};
use serde_json::Value;

fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

fn entries(h: &Host, token: &str) -> Vec<Value> {
    let (s, v) = h.get("/v1/credits/entries", token);
    assert_eq!(s, 200, "{v}");
    v["entries"].as_array().unwrap().clone()
}

#[test]
fn tokens_decide_who_sees_what() {
    let setup = Setup::new();
    let h = Host::start(&setup);

    // No token, a wrong one, a malformed header: 401 with the error shape.
    let (s, v) = h.call("GET", "/v1/sandboxes", None, None, &[]);
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    let (s, v) = h.get("/v1/sandboxes", "not-a-token-at-all-xxxx");
    assert_eq!((s, error_code(&v)), (401, "unauthorized"));
    let (s, _) = h.call(
        "GET",
        "/v1/credits",
        None,
        None,
        &[("authorization", "Basic YTpi")],
    );
    assert_eq!(s, 401);
    // The token never reaches the log.
    assert!(!h.log.lock().unwrap().contains("not-a-token-at-all"));

    // Credits are admin-only; the admin token does not act as a tenant.
    let (s, v) = h.post("/v1/tenants/a/credits", TOKEN_A, r#"{"amount":"5.00"}"#);
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    let (s, v) = h.get("/v1/sandboxes", ADMIN);
    assert_eq!((s, error_code(&v)), (403, "forbidden"));
    h.grant("a", "5.00");
    h.grant("b", "5.00");

    // A's sandbox is invisible to B: 404 on read and destroy, absent from B's list.
    let (s, sb) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"saas-stub"}"#);
    assert_eq!(s, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    assert_eq!(sb["state"], "running");
    assert_eq!(sb["tenant"], "a");
    let (s, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_B);
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_B);
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = h.get("/v1/sandboxes", TOKEN_B);
    assert_eq!(s, 200);
    assert!(v["sandboxes"].as_array().unwrap().is_empty(), "{v}");
    // An id that exists nowhere answers exactly like another tenant's.
    let (s, v) = h.get("/v1/sandboxes/sb-doesnotexist", TOKEN_B);
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    // B's attempt changed nothing: A's sandbox still runs, B was charged nothing.
    let (s, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!((s, v["state"].as_str()), (200, Some("running")));
    let (s, v) = h.get("/v1/sandboxes?state=running", TOKEN_A);
    assert_eq!(s, 200);
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1);
    assert_eq!(entries(&h, TOKEN_B).len(), 1, "B has only its grant");

    // Credits and entries are per tenant.
    let (s, v) = h.get("/v1/credits", TOKEN_A);
    assert_eq!(s, 200, "{v}");
    let bal = &v["balances"][0];
    assert_eq!(bal["currency"], "USD");
    assert_ne!(bal["held"], "0", "{v}");
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "destroyed");
    assert!(v["meter"]["total"].is_object(), "{v}");
    let kinds: Vec<String> = entries(&h, TOKEN_A)
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        kinds.contains(&"hold".to_owned()) && kinds.contains(&"charge".to_owned()),
        "{kinds:?}"
    );
    // Extensions are visible to any authenticated caller.
    let (s, v) = h.get("/v1/extensions", TOKEN_B);
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"saas-stub") && ids.contains(&"local-pool"),
        "{ids:?}"
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let setup = Setup::new();
    std::fs::write(
        setup.profiles().join("nowhere.toml"),
        "id = \"nowhere\"\ntemplate = \"base\"\nmax_duration_secs = 60\n[resources]\nvcpus = 1\nmemory_mib = 512\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"ghost\"\n",
    )
    .unwrap();
    let h = Host::start(&setup);
    h.grant("a", "0.01");
    let before = entries(&h, TOKEN_A).len();

    let bad: &[(&str, &str, Option<&str>)] = &[
        (r#"{"profile":"saas-stub""#, "invalid JSON", None),
        (r#"{"profile":"saas-stub","colour":"red"}"#, "colour", None),
        (
            r#"{"profile":"saas-stub","vcpus":"two"}"#,
            "vcpus",
            Some("vcpus"),
        ),
        (
            r#"{"profile":"no-such-profile"}"#,
            "no-such-profile",
            Some("profile"),
        ),
        (
            r#"{"profile":"saas-stub","vcpus":100000}"#,
            "vcpus",
            Some("vcpus"),
        ),
        (r#"{"vcpus":1}"#, "profile", None),
        ("", "empty", None),
    ];
    for (body, needle, field) in bad {
        let (s, v) = h.post("/v1/sandboxes", TOKEN_A, body);
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(error_code(&v), "bad_request", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{body}: message {msg:?} should name {needle:?}"
        );
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], *f, "{v}");
        }
    }
    // Oversized body: refused before it is parsed, naming the limit.
    let big = format!(
        r#"{{"profile":"saas-stub","metadata":{{"x":"{}"}}}}"#,
        "y".repeat(200_000)
    );
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, &big);
    assert_eq!((s, error_code(&v)), (400, "body_too_large"), "{v}");
    // Money as a JSON number or a malformed decimal is refused.
    for body in [
        r#"{"amount":5}"#,
        r#"{"amount":"abc"}"#,
        r#"{"amount":"-5"}"#,
        r#"{"amount":"1e3"}"#,
    ] {
        let (s, v) = h.post("/v1/tenants/a/credits", ADMIN, body);
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["error"]["field"], "amount", "{v}");
    }
    let (s, v) = h.post(
        "/v1/tenants/Not%20A%20Tenant/credits",
        ADMIN,
        r#"{"amount":"1"}"#,
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("tenant")),
        "{v}"
    );

    // 0.01 USD does not cover the first 15-minute lease of saas-stub (0.01665): 402 with
    // need and available, and nothing created or held.
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"saas-stub"}"#);
    assert_eq!((s, error_code(&v)), (402, "insufficient_credits"), "{v}");
    assert!(
        v["error"]["need"].is_object() && v["error"]["available"].is_object(),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("insufficient credits: need"),
        "{v}"
    );
    // A tenant the ledger never saw (B is granted nothing here): the same 402 with the
    // same two amounts, zero available, rather than an "unknown tenant" the client
    // cannot act on.
    let (s, v) = h.post("/v1/sandboxes", TOKEN_B, r#"{"profile":"saas-stub"}"#);
    assert_eq!((s, error_code(&v)), (402, "insufficient_credits"), "{v}");
    assert_eq!(v["error"]["available"]["amount"], "0", "{v}");
    assert_eq!(v["error"]["available"]["currency"], "USD", "{v}");
    assert_eq!(v["error"]["need"]["amount"], "0.01665", "{v}");
    let (s, v) = h.get("/v1/sandboxes", TOKEN_B);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["sandboxes"].as_array().map(Vec::len), Some(0), "{v}");

    // A request that routes nowhere: 503 with every candidate's reason.
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"nowhere"}"#);
    assert_eq!((s, error_code(&v)), (503, "no_backend_available"), "{v}");
    let reasons = v["error"]["candidates"].as_array().unwrap();
    assert_eq!(reasons[0]["extension_id"], "ghost", "{v}");

    let (s, v) = h.get("/v1/sandboxes", TOKEN_A);
    assert_eq!(s, 200);
    assert!(
        v["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] != "running"),
        "{v}"
    );
    assert_eq!(
        entries(&h, TOKEN_A).len(),
        before,
        "refused requests left ledger lines"
    );
    let (_, c) = h.get("/v1/credits", TOKEN_A);
    assert_eq!(c["balances"][0]["held"], "0", "{c}");

    // Unknown endpoint and method: the same error shape.
    let (s, v) = h.get("/v1/nothing", TOKEN_A);
    assert_eq!((s, error_code(&v)), (404, "not_found"));
    let (s, v) = h.call("PUT", "/v1/sandboxes", Some(TOKEN_A), Some("{}"), &[]);
    assert_eq!((s, error_code(&v)), (405, "method_not_allowed"));
}

#[test]
fn the_same_create_five_times_makes_one_sandbox() {
    let setup = Setup::new();
    let h = std::sync::Arc::new(Host::start(&setup));
    h.grant("a", "5.00");
    let body = r#"{"profile":"saas-stub","metadata":{"job":"ci-42"}}"#;
    let key = [("idempotency-key", "job-ci-42")];
    // Two at once, then three in a row.
    let ids: Vec<String> = std::thread::scope(|s| {
        let t: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                s.spawn(move || h.call("POST", "/v1/sandboxes", Some(TOKEN_A), Some(body), &key))
            })
            .collect();
        t.into_iter()
            .map(|j| {
                let (st, v) = j.join().unwrap();
                assert_eq!(st, 201, "{v}");
                v["id"].as_str().unwrap().to_owned()
            })
            .collect()
    });
    let mut all = ids;
    for _ in 0..3 {
        let (st, v) = h.call("POST", "/v1/sandboxes", Some(TOKEN_A), Some(body), &key);
        assert_eq!(st, 201, "{v}");
        all.push(v["id"].as_str().unwrap().to_owned());
    }
    assert!(all.iter().all(|i| *i == all[0]), "{all:?}");
    let (_, v) = h.get("/v1/sandboxes", TOKEN_A);
    assert_eq!(v["sandboxes"].as_array().unwrap().len(), 1, "{v}");
    let holds = entries(&h, TOKEN_A)
        .iter()
        .filter(|e| e["kind"] == "hold")
        .count();
    assert_eq!(holds, 1);
    // The same key for a different request is a conflict, and creates nothing.
    let (st, v) = h.call(
        "POST",
        "/v1/sandboxes",
        Some(TOKEN_A),
        Some(r#"{"profile":"saas-stub","vcpus":2}"#),
        &key,
    );
    assert_eq!((st, error_code(&v)), (409, "idempotency_conflict"), "{v}");
    // Another tenant's identical key is its own.
    h.grant("b", "5.00");
    let (st, v) = h.call("POST", "/v1/sandboxes", Some(TOKEN_B), Some(body), &key);
    assert_eq!(st, 201, "{v}");
    assert_ne!(v["id"], all[0].as_str());
    // A bad key is refused by name.
    let (st, v) = h.call(
        "POST",
        "/v1/sandboxes",
        Some(TOKEN_A),
        Some(body),
        &[("idempotency-key", "")],
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("Idempotency-Key")),
        "{v}"
    );
}

#[test]
fn metrics_health_json_logs_and_graceful_shutdown() {
    let setup = Setup::new();
    let h = Host::start_with(
        &setup,
        &[
            "--config",
            setup.config().to_str().unwrap(),
            "--log-format",
            "json",
        ],
    );
    let (s, v) = h.call("GET", "/healthz", None, None, &[]);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    h.grant("a", "5.00");
    let (_, sb) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"burst-sandbox"}"#);
    let id = sb["id"].as_str().unwrap();
    let (s, _) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200);
    let m = h.metrics();
    for family in [
        "sandboxer_sandboxes{",
        "sandboxer_route_decisions_total{",
        "sandboxer_settlements_total{currency=\"USD\"}",
        "sandboxer_outbox_pending_events",
        "sandboxer_http_requests_total{",
        "sandboxer_extension_call_seconds_bucket{",
    ] {
        assert!(m.contains(family), "{family} missing from /metrics:\n{m}");
    }
    assert!(m.contains("strategy=\"prefer-self-hosted\""), "{m}");
    assert!(
        m.contains("state=\"destroyed\",extension=\"local-pool\"")
            || m.contains("extension=\"local-pool\",state=\"destroyed\""),
        "{m}"
    );

    // JSON logs: one object per line, with the sandbox id as a field. (The log is read by
    // a thread, so the line may reach it a moment after the answer.)
    let created = h.wait_for(Duration::from_secs(10), || {
        h.log
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == "sandbox created" && v["sandbox_id"] == id)
    });
    assert_eq!(created["tenant"], "a", "{created}");

    // SIGTERM: clean exit, the meter event is in the log.
    assert!(h.terminate(), "host did not exit cleanly on SIGTERM");
    let events = std::fs::read_to_string(setup.state().join("events.jsonl")).unwrap();
    assert_eq!(
        events.lines().filter(|l| l.contains(id)).count(),
        1,
        "{events}"
    );
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn the_readme_curl_walkthrough_works() {
    let readme = std::fs::read_to_string(http_host::repo().join("README.md")).unwrap();
    let begin = readme
        .find("<!-- http-walkthrough:begin -->")
        .expect("README walkthrough markers");
    let end = readme.find("<!-- http-walkthrough:end -->").unwrap();
    let block = &readme[begin..end];
    let script = block
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();

    // No config: the host generates the tokens into <state>/tokens and says where, starts
    // its own sandboxer-agent and serves the shipped `local` and burst-sandbox profile.
    let setup = Setup::with_extensions(&["saas-stub.wasm", "local.wasm"]);
    std::fs::copy(
        http_host::repo().join("profiles/burst-sandbox.toml"),
        setup.profiles().join("burst-sandbox.toml"),
    )
    .unwrap();
    let h = Host::start_with(&setup, &[]);
    assert!(
        h.log.lock().unwrap().contains("tokens/local.token"),
        "{}",
        h.log.lock().unwrap()
    );
    // The README runs from the folder holding `.sandboxer/`.
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(setup.state(), cwd.path().join(".sandboxer")).unwrap();
    let script = script.replace("http://127.0.0.1:7733", &h.base);
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["extension_id"] == "local" && v["state"] == "running"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["stdout"] == "42\n" && v["exit_code"] == 0),
        "{stdout}"
    );
    assert!(stdout.contains("HELLO\nSANDBOX\n"), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|v| v == &serde_json::json!(["notes.txt", "shout.txt"])),
        "{stdout}"
    );
    let steps: Vec<&str> = lines
        .iter()
        .filter(|v| v["type"] == "stdout")
        .filter_map(|v| v["data"].as_str())
        .collect();
    assert_eq!(steps.concat(), "step 1\nstep 2\nstep 3\n", "{stdout}");
    let burned = lines
        .iter()
        .find_map(|v| v["cpu_ms"].as_u64())
        .expect("the CPU burn's cpu_ms");
    assert!(burned >= 900, "{stdout}");
    let destroyed = lines
        .iter()
        .find(|v| v["state"] == "destroyed")
        .expect("the destroy's answer");
    let cpu_line = destroyed["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["unit"] == "cpu-second")
        .expect("a CPU line on the bill");
    let billed: f64 = cpu_line["quantity"].as_str().unwrap().parse().unwrap();
    assert!(
        billed >= burned as f64 / 1000.0 * 0.9,
        "billed {billed} CPU-s for {burned} ms burned: {stdout}"
    );
    let kinds: Vec<&str> = lines.iter().filter_map(|v| v["kind"].as_str()).collect();
    assert_eq!(kinds, ["grant", "hold", "charge"], "{stdout}");
    // The token files are owner-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(setup.state().join("tokens/local.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "token file readable by others: {mode:o}");
}

/// The host's files are its own: the state folder 0700, the ledger and its WAL, the
/// event log and the generated tokens 0600.
#[test]
fn the_state_folder_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new();
    // A folder an operator created wide is tightened.
    std::fs::create_dir_all(setup.state()).unwrap();
    std::fs::set_permissions(setup.state(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let sb = h.create(TOKEN_A, "saas-stub");
    let (s, _) = h.delete(
        &format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200);
    let events = setup.state().join("events.jsonl");
    h.wait_for(Duration::from_secs(10), || events.is_file().then_some(()));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&setup.state()), 0o700);
    for f in ["ledger.sqlite3", "ledger.sqlite3-wal", "events.jsonl"] {
        let p = setup.state().join(f);
        assert_eq!(mode(&p), 0o600, "{f}");
    }
}

#[test]
fn a_token_given_to_two_principals_stops_the_host_with_both_keys_named() {
    let setup = Setup::new();
    std::fs::write(
        setup.config(),
        format!("[tenants.a]\ntoken = \"{TOKEN_A}\"\n[tenants.b]\ntoken = \"{TOKEN_A}\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer-host"))
        .args(["--extensions-dir", setup.extensions().to_str().unwrap()])
        .args(["--profiles-dir", setup.profiles().to_str().unwrap()])
        .args(["--state-dir", setup.state().to_str().unwrap()])
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(setup.config())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenants.a") && err.contains("tenants.b"),
        "{err}"
    );
    assert!(!err.contains(TOKEN_A), "the token leaked: {err}");
}

#[test]
fn metrics_want_their_token_when_one_is_configured() {
    let setup = Setup::new();
    setup.write_config("[metrics]\ntoken = \"metrics-token-0123456789\"\n");
    let h = Host::start(&setup);
    let (s, v) = h.call("GET", "/metrics", None, None, &[]);
    assert_eq!(s, 401, "{v}");
    let (s, _) = h.raw("GET", "/metrics", Some(TOKEN_A), None, &[]);
    assert_eq!(s, 401, "a tenant's token is not enough");
    for token in ["metrics-token-0123456789", ADMIN] {
        let (s, text) = h.raw("GET", "/metrics", Some(token), None, &[]);
        assert_eq!(s, 200, "{text}");
        assert!(text.contains("sandboxer_"), "{text}");
    }
}

/// A grant's idempotency key is scoped to its tenant on both surfaces; the longest
/// tenant id with the longest key still fits, and a retry grants once.
#[test]
fn an_admin_grant_with_the_longest_tenant_and_key_is_idempotent() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    let tenant = "t".repeat(64);
    let key = "k".repeat(200);
    for _ in 0..2 {
        let (s, v) = h.call(
            "POST",
            &format!("/v1/tenants/{tenant}/credits"),
            Some(ADMIN),
            Some(r#"{"amount":"2.50"}"#),
            &[("idempotency-key", key.as_str())],
        );
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["balance"]["available"], "2.5", "{v}");
    }
}

/// Half-sent requests are cut at the header timeout, the connection cap holds new ones
/// back instead of serving without bound, and SIGTERM finishes within the grace period
/// even with a client that never completes its request.
#[test]
fn slow_clients_are_cut_connections_are_capped_and_shutdown_is_bounded() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let setup = Setup::new();
    // Top-level keys go before the tables `write_config` wrote.
    let tables = std::fs::read_to_string(setup.config()).unwrap();
    std::fs::write(
        setup.config(),
        format!(
            "header_timeout_ms = 700\nmax_connections = 40\nshutdown_grace_ms = 1000\n{tables}"
        ),
    )
    .unwrap();
    let h = Host::start(&setup);
    let addr = h.base.trim_start_matches("http://").to_owned();
    let half_sent = |n: usize| -> Vec<std::net::TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s
            })
            .collect()
    };
    // 40 slow clients take every slot: a request behind them waits for the cut.
    let slow = half_sent(40);
    let start = Instant::now();
    let (s, _) = h.call("GET", "/healthz", None, None, &[]);
    assert_eq!(s, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "the 41st connection was served at once ({:?}): no cap",
        start.elapsed()
    );
    // Every slow client was disconnected by the host.
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // A client that never finishes does not hold shutdown up past the grace period.
    let _stuck = half_sent(1);
    let mut body = std::net::TcpStream::connect(&addr).unwrap();
    body.write_all(b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let start = Instant::now();
    h.terminate();
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "shutdown took {:?}",
        start.elapsed()
    );
}

/// An extension's huge error reaches the tenant cut to a few KiB, not echoed whole.
#[test]
fn a_huge_extension_error_is_answered_in_a_few_kib() {
    let setup = Setup::new();
    setup.add_misbehave("chatty", "mode = \"long-error\"\n", 600);
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, text) = h.raw(
        "POST",
        "/v1/sandboxes",
        Some(TOKEN_A),
        Some(r#"{"profile":"chatty"}"#),
        &[],
    );
    assert_eq!(s, 503, "{}", &text[..text.len().min(300)]);
    assert!(text.len() < 16 * 1024, "{} bytes", text.len());
    assert!(text.contains("truncated"), "{}", &text[..300]);
    let log = h.log.lock().unwrap().len();
    assert!(log < 256 * 1024, "the log grew to {log} bytes");
}

/// A guest that echoes its secret into `info`, regions and line items never shows it to a
/// tenant, in the events or in the log.
#[test]
fn a_secret_an_extension_echoes_is_shown_nowhere() {
    const SECRET: &str = "sk-live-very-secret-0123456789";
    let setup = Setup::new();
    setup.add_misbehave(
        "leaky",
        "echo = \"api_key\"\nprice = \"0.01\"\n\n[secrets]\napi_key = { file = \"leaky.key\" }\n",
        600,
    );
    std::fs::write(setup.extensions().join("leaky.key"), SECRET).unwrap();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (_, list) = h.raw("GET", "/v1/extensions", Some(TOKEN_B), None, &[]);
    assert!(
        list.contains("leaky") && list.contains("[redacted]"),
        "{list}"
    );
    let sb = h.create(TOKEN_A, "leaky");
    let id = sb["id"].as_str().unwrap();
    let (s, done) = h.raw(
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        Some(TOKEN_A),
        None,
        &[],
    );
    assert_eq!(s, 200, "{done}");
    assert!(done.contains("Flat fee [redacted]"), "{done}");
    let (_, admin_list) = h.raw("GET", "/v1/extensions", Some(ADMIN), None, &[]);
    let events = setup.state().join("events.jsonl");
    h.wait_for(Duration::from_secs(10), || events.is_file().then_some(()));
    let events = std::fs::read_to_string(events).unwrap();
    for (what, text) in [
        ("tenant listing", &list),
        ("admin listing", &admin_list),
        ("destroy answer", &done),
        ("events", &events),
        ("host log", &*h.log.lock().unwrap()),
    ] {
        assert!(
            !text.contains(SECRET),
            "the secret is in the {what}: {text}"
        );
    }
}

/// A create stuck on a slow extension does not hold up another tenant's create on a
/// profile that does not route to it: no lock is held across extension calls.
#[test]
fn a_slow_extension_does_not_delay_creates_elsewhere() {
    let setup = Setup::new();
    setup.add_misbehave(
        "slowpoke",
        "mode = \"loop\"\nfunctions = \"estimate-cost\"\n",
        600,
    );
    // Each estimate loops until the call's budget ends it.
    let sidecar = setup.extensions().join("slowpoke.toml");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(&sidecar, format!("call_timeout_ms = 2000\n{text}")).unwrap();
    let h = std::sync::Arc::new(Host::start(&setup));
    h.grant("a", "5.00");
    h.grant("b", "5.00");
    h.create(TOKEN_B, "saas-stub"); // warm
    let slow = {
        let h = std::sync::Arc::clone(&h);
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let (s, _) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"slowpoke"}"#);
            (s, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = std::time::Instant::now();
    h.create(TOKEN_B, "saas-stub");
    let other = start.elapsed();
    let (status, slow_took) = slow.join().unwrap();
    assert!(
        slow_took >= Duration::from_millis(1500),
        "the slow create took {slow_took:?} ({status})"
    );
    assert!(
        other < Duration::from_millis(1000),
        "tenant b's create took {other:?} while a's waited on a slow extension"
    );
}

#[test]
fn the_dashboard_is_served_with_a_strict_csp_and_its_overview_is_admin_only() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    h.grant("a", "3.00");
    h.grant("b", "4.00");
    let sb = h.create(TOKEN_A, "saas-stub");

    let (s, v) = h.get("/v1/admin/overview", TOKEN_A);
    assert_eq!(s, 403, "{v}");
    let (s, v) = h.get("/v1/admin/overview", "wrong-token-0123456789");
    assert_eq!(s, 401, "{v}");
    let (s, v) = h.get("/v1/admin/overview", ADMIN);
    assert_eq!(s, 200, "{v}");
    let balances = v["balances"].as_array().unwrap();
    assert!(balances.iter().any(|b| b["tenant"] == "a"), "{v}");
    assert!(balances.iter().any(|b| b["tenant"] == "b"), "{v}");
    let in_use = v["in_use"].as_array().unwrap();
    assert!(
        in_use
            .iter()
            .any(|u| u["extension"] == "saas-stub" && u["sandboxes"] == 1),
        "{v}"
    );
    let (s, _) = h.delete(
        &format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200);

    // The page itself: no token needed, and nothing but its own assets may run.
    let page = reqwest::blocking::get(h.url("/")).unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        header("content-type").starts_with("text/html"),
        "{:?}",
        page.headers()
    );
    assert!(
        header("content-security-policy").starts_with("default-src 'none'; script-src 'self'"),
        "{:?}",
        page.headers()
    );
}

/// `[grants]` of sandboxer.toml bounds what a sidecar grants itself, at start and on hot
/// reload: no host variable, no bare `*` host without the operator's opt-in; and the host
/// config can own an extension's grants outright (a secret file outside the extensions
/// folder, the sidecar's own grants ignored).
#[test]
fn sidecars_grant_only_what_the_operator_allows() {
    const SECRET: &str = "sk-owned-by-the-operator-42";
    let setup = Setup::new();
    // The sidecar asks for a host of its choosing; the operator's grants replace it.
    setup.add_misbehave("owned", "echo = \"api_key\"\nprice = \"0.01\"\n", 600);
    let owned = setup.extensions().join("owned.toml");
    let text = std::fs::read_to_string(&owned).unwrap();
    std::fs::write(
        &owned,
        format!("allowed_outbound_hosts = [\"https://evil.example\"]\n{text}"),
    )
    .unwrap();
    std::fs::write(setup.path().join("owned.key"), SECRET).unwrap();
    setup.write_config(
        "[grants]\nany_host = [\"wide\"]\n\
         [grants.extensions.owned]\nsecrets = { api_key = { file = \"owned.key\" } }\n",
    );
    let h = Host::start(&setup);
    let (_, list) = h.raw("GET", "/v1/extensions", Some(ADMIN), None, &[]);
    assert!(
        list.contains("\"owned\"") && list.contains("r [redacted]"),
        "the operator's secret reaches the guest (and is redacted): {list}"
    );
    h.grant("a", "5.00");
    let sb = h.create(TOKEN_A, "owned");
    assert_eq!(sb["state"], "running", "{sb}");

    // Hot reload: three sidecars arrive while the host runs.
    let sidecar = |id: &str, grants: &str| {
        std::fs::write(
            setup.extensions().join(format!("{id}.toml")),
            format!("component = \"misbehave.wasm\"\nid = \"{id}\"\n{grants}\n[config]\nprice = \"0.01\"\n"),
        )
        .unwrap();
    };
    sidecar(
        "peeker",
        "[secrets]\napi_key = { env = \"SANDBOXER_ADMIN_TOKEN\" }\n",
    );
    sidecar("roamer", "allowed_outbound_hosts = [\"*://*:*\"]\n");
    sidecar("wide", "allowed_outbound_hosts = [\"*://*:*\"]\n");
    let rows = h.wait_for(Duration::from_secs(30), || {
        let (_, v) = h.get("/v1/extensions", ADMIN);
        let rows = v["extensions"].as_array()?.clone();
        let row = |id: &str| rows.iter().find(|r| r["id"] == id).cloned();
        let all = ["peeker", "roamer", "wide"].map(row);
        all.iter()
            .all(Option::is_some)
            .then(|| all.map(Option::unwrap))
    });
    let [peeker, roamer, wide] = rows;
    assert_eq!(peeker["status"], "skipped", "{peeker}");
    let reason = peeker["reason"].as_str().unwrap();
    assert!(
        reason.contains("SANDBOXER_ADMIN_TOKEN") && reason.contains("host's own"),
        "{reason}"
    );
    assert_eq!(roamer["status"], "skipped", "{roamer}");
    let reason = roamer["reason"].as_str().unwrap();
    assert!(
        reason.contains("any_host") && reason.contains("roamer"),
        "{reason}"
    );
    assert_eq!(
        wide["status"], "loaded",
        "opted in by [grants] any_host: {wide}"
    );
}

/// The OpenAPI document: served without a token, the same bytes as docs/openapi.json
/// (the lib test `http::openapi` checks the generator; this checks what a client gets),
/// and the same as `sandboxer-host openapi` prints.
#[test]
fn the_openapi_document_is_served_without_a_token_and_is_the_checked_in_one() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    let resp = reqwest::blocking::get(h.url("/v1/openapi.json")).unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served = resp.text().unwrap();
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let checked_in = std::fs::read_to_string(http_host::repo().join("docs/openapi.json")).unwrap();
    assert!(
        served == checked_in,
        "docs/openapi.json differs from GET /v1/openapi.json: regenerate it with\n  \
         cargo run -q --bin sandboxer-host -- openapi > docs/openapi.json"
    );
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer-host"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert!(
        printed.stdout == served.as_bytes(),
        "`sandboxer-host openapi` prints another document"
    );
}

/// Found while fuzzing the API from its OpenAPI document (tests/contract/run.sh): a path
/// parameter that is not UTF-8 once percent-decoded, and a files query that repeats
/// `list`, were answered by axum's own rejections in `text/plain`, not in the API's one
/// JSON error shape. Now both are 400 `bad_request` like every other bad input, naming the
/// parameter where axum tells which.
#[test]
fn bad_path_parameters_and_queries_are_answered_in_the_error_shape() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let sb = h.create(TOKEN_A, "saas-stub");
    let id = sb["id"].as_str().unwrap();
    for (method, path, field) in [
        ("GET", "/v1/sandboxes/%FF".to_owned(), Some("id")),
        ("DELETE", "/v1/sandboxes/%FF%FE".to_owned(), Some("id")),
        ("POST", "/v1/sandboxes/%C3%28/exec".to_owned(), Some("id")),
        ("GET", format!("/v1/sandboxes/{id}/files/%FF"), Some("path")),
        (
            "PUT",
            format!("/v1/sandboxes/{id}/files/a%FF"),
            Some("path"),
        ),
        (
            "GET",
            format!("/v1/sandboxes/{id}/files?list=a&list=b"),
            None,
        ),
        ("GET", format!("/v1/sandboxes/{id}/files/a?list&list"), None),
        ("DELETE", "/v1/keys/%FF".to_owned(), Some("extension")),
    ] {
        let body = (method == "POST").then_some(r#"{"argv":["true"]}"#);
        let (s, text) = h.raw(method, &path, Some(TOKEN_A), body, &[]);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
        assert_eq!(
            (s, error_code(&v)),
            (400, "bad_request"),
            "{method} {path}: {v}"
        );
        match field {
            Some(f) => assert_eq!(v["error"]["field"], f, "{method} {path}: {v}"),
            None => assert!(
                v["error"]["message"].as_str().unwrap().contains("list"),
                "{v}"
            ),
        }
    }
    // The admin's path parameter too.
    let (s, text) = h.raw(
        "POST",
        "/v1/tenants/%FF/credits",
        Some(ADMIN),
        Some(r#"{"amount":"1.00"}"#),
        &[],
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (s, error_code(&v), v["error"]["field"].as_str()),
        (400, "bad_request", Some("tenant")),
        "{v}"
    );
}

/// Found by the contract fuzzing (tests/contract/run.sh, response schema conformance): a
/// candidate dropped over the price cap flattened its reason's `cost_per_hour` (a decimal
/// string) over its own `cost_per_hour` (a `Money` object), so the report said a string
/// where the document and docs/api.md say `{"amount", "currency"}`. The reason's figure
/// is `per_hour` now, beside `cap`.
#[test]
fn a_candidate_over_the_price_cap_keeps_its_cost_per_hour_as_money() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    // 125 vCPUs price saas-stub over its profile's max_cost_per_hour of 1.00.
    let (s, v) = h.post(
        "/v1/route/explain",
        TOKEN_A,
        r#"{"profile":"saas-stub","vcpus":125}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["routable"], false, "{v}");
    let c = &v["candidates"][0];
    assert_eq!(
        (c["outcome"].as_str(), c["reason"].as_str()),
        (Some("dropped"), Some("over-price-cap")),
        "{c}"
    );
    assert_eq!(c["cost_per_hour"]["currency"], "USD", "{c}");
    let amount = c["cost_per_hour"]["amount"]
        .as_str()
        .expect("Money, not a string");
    assert_eq!(c["per_hour"].as_str(), Some(amount), "{c}");
    assert_eq!(c["cap"], "1.00", "{c}");
    let (s, text) = h.raw(
        "POST",
        "/v1/route/explain",
        Some(TOKEN_A),
        Some(r#"{"profile":"saas-stub","vcpus":125}"#),
        &[],
    );
    assert_eq!(s, 200);
    assert_eq!(text.matches("\"cost_per_hour\"").count(), 1, "{text}");
}
