//! What `sandboxer-host run` does while it serves, through the real binary: the HTTP
//! event hub gets every meter event (exactly once by id, though it fails at first), a
//! dead hub never slows a destroy, the reaper ends sandboxes past their maximum
//! duration, and extensions are hot-reloaded (added, broken, replaced, removed).

#[path = "support/http_host.rs"]
mod http_host;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_host::{Host, Setup, TOKEN_A, TOKEN_B};
use serde_json::Value;

/// A CloudEvents batch receiver that answers 503 to its first `fail_first` requests and
/// records the events of every accepted batch.
struct Hub {
    url: String,
    accepted: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<usize>>,
}

fn hub(fail_first: usize) -> Hub {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", l.local_addr().unwrap());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(Mutex::new(0));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let Ok(k) = s.read(&mut chunk) else {
                    break None;
                };
                if k == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(pos) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= pos + 4 + len {
                        assert!(
                            text.to_ascii_lowercase()
                                .contains("content-type: application/cloudevents-batch+json"),
                            "{text}"
                        );
                        break Some(text[pos + 4..pos + 4 + len].to_owned());
                    }
                }
            };
            let Some(body) = body else { continue };
            let n = {
                let mut r = reqs.lock().unwrap();
                *r += 1;
                *r
            };
            let status = if n <= fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            if n > fail_first {
                let events: Vec<Value> = serde_json::from_str(&body).unwrap();
                acc.lock().unwrap().extend(events);
            }
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    Hub {
        url,
        accepted,
        requests,
    }
}

fn lifecycle(h: &Host, profile: &str) -> Value {
    let (s, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        &format!(r#"{{"profile":"{profile}"}}"#),
    );
    assert_eq!(s, 201, "{sb}");
    let (s, done) = h.delete(
        &format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200, "{done}");
    done
}

#[test]
fn the_event_hub_gets_every_event_once_although_it_fails_at_first() {
    let hub = hub(3);
    let setup = Setup::new();
    setup.write_config(&format!(
        "[events]\ndeliver_interval_ms = 50\nmax_backoff_ms = 200\n[[events.http]]\nurl = \"{}\"\nbatch_size = 2\ntimeout_ms = 500\n",
        hub.url
    ));
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let mut want: Vec<String> = (0..5)
        .map(|_| {
            lifecycle(&h, "saas-stub")["meter"]["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    want.sort();
    let got: Vec<String> = h.wait_for(Duration::from_secs(20), || {
        let acc = hub.accepted.lock().unwrap();
        let ids: Vec<String> = acc
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        (ids.len() >= want.len()).then_some(ids)
    });
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted, want,
        "accepted batches must carry each settlement's event exactly once"
    );
    assert!(
        *hub.requests.lock().unwrap() >= 4,
        "the hub's failures were not retried"
    );
    for e in hub.accepted.lock().unwrap().iter() {
        assert_eq!(e["type"], "sandboxer.sandbox.metered");
        assert_eq!(e["subject"], "a");
    }
    // The JSONL log has the same events, once each.
    let text = std::fs::read_to_string(setup.state().join("events.jsonl")).unwrap();
    let mut log: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    log.sort();
    assert_eq!(log, want);
    let m = h.metrics();
    assert!(
        m.contains("sandboxer_event_deliveries_total{sink=\"http\",outcome=\"failed\"}"),
        "{m}"
    );
}

#[test]
fn a_dead_hub_never_slows_a_destroy_and_its_backlog_shows() {
    // A port nobody listens on.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/ingest", l.local_addr().unwrap())
    };
    let setup = Setup::new();
    setup.write_config(&format!(
        "[events]\ndeliver_interval_ms = 50\nmax_backoff_ms = 400\n[[events.http]]\nurl = \"{dead}\"\ntimeout_ms = 2000\n"
    ));
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let start = Instant::now();
    for _ in 0..5 {
        lifecycle(&h, "saas-stub");
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "5 lifecycles took {:?} with a dead hub",
        start.elapsed()
    );
    // The events reach the log (off the request path) and count as pending for the hub.
    h.wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(setup.state().join("events.jsonl")).unwrap_or_default();
        (text.lines().count() == 5).then_some(())
    });
    h.wait_for(Duration::from_secs(10), || {
        let m = h.metrics();
        m.lines()
            .any(|l| l.starts_with("sandboxer_event_sink_pending_events{") && l.ends_with(" 5"))
            .then_some(())
    });
}

#[test]
fn the_reaper_ends_a_sandbox_past_its_maximum_duration() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        r#"{"profile":"saas-stub","max_duration_secs":1}"#,
    );
    assert_eq!(s, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    let done = h.wait_for(Duration::from_secs(10), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        (v["state"] == "destroyed").then_some(v)
    });
    let meter = &done["meter"];
    assert!(meter["total"]["amount"].is_string(), "{done}");
    // Settled once: one charge line for it, one event.
    let (_, e) = h.get("/v1/credits/entries", TOKEN_A);
    let charges = e["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "charge" && x["sandbox_id"] == id.as_str())
        .count();
    assert_eq!(charges, 1, "{e}");
    h.wait_for(Duration::from_secs(5), || {
        h.metrics()
            .contains("sandboxer_reaped_total{reason=\"max_duration\"} 1")
            .then_some(())
    });
    // Destroying it again returns the same settlement.
    let (s, again) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200);
    assert_eq!(again["meter"]["settlement_id"], meter["settlement_id"]);
}

fn extension_ids(h: &Host) -> HashMap<String, String> {
    let (s, v) = h.get("/v1/extensions", TOKEN_A);
    assert_eq!(s, 200, "{v}");
    v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["version_hash"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn extensions_are_hot_reloaded_while_serving() {
    let setup = Setup::new();
    let misbehave = http_host::repo().join("tests/guests/misbehave.wasm");
    assert!(
        misbehave.is_file(),
        "build the test guests first (scripts/build-extensions.sh)"
    );
    std::fs::write(
        setup.profiles().join("fresh.toml"),
        "id = \"fresh\"\ntemplate = \"base\"\nmax_duration_secs = 600\n[resources]\nvcpus = 1\nmemory_mib = 512\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"fresh-ext\"\n",
    )
    .unwrap();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"fresh"}"#);
    assert_eq!(s, 503, "{v}");

    // Added while serving: the next request routes to it.
    let file = setup.extensions().join("fresh-ext.wasm");
    std::fs::copy(setup.extensions().join("saas-stub.wasm"), &file).unwrap();
    let v1 = h.wait_for(Duration::from_secs(20), || {
        extension_ids(&h).get("fresh-ext").cloned()
    });
    let (s, old) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"fresh"}"#);
    assert_eq!(s, 201, "{old}");
    assert_eq!(old["extension_id"], "fresh-ext");
    assert_eq!(old["extension_version"], v1.as_str());
    let old_id = old["id"].as_str().unwrap().to_owned();

    // Replaced by a broken file: reported, and the previous version keeps serving.
    std::fs::write(&file, b"\0asm\x01\0\0\0 not a component").unwrap();
    h.wait_for(Duration::from_secs(20), || {
        h.metrics()
            .contains("sandboxer_reloads_total{kind=\"extension\",outcome=\"rejected\"}")
            .then_some(())
    });
    assert_eq!(extension_ids(&h).get("fresh-ext"), Some(&v1));
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"fresh"}"#);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["extension_version"], v1.as_str());
    let (s, _) = h.delete(
        &format!("/v1/sandboxes/{}", v["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200);

    // Replaced by another valid component: new sandboxes get it, the old sandbox is still
    // destroyed and metered by the version that created it.
    std::fs::copy(&misbehave, &file).unwrap();
    let v2 = h.wait_for(Duration::from_secs(20), || {
        extension_ids(&h)
            .get("fresh-ext")
            .filter(|v| **v != v1)
            .cloned()
    });
    let (s, new) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"fresh"}"#);
    assert_eq!(s, 201, "{new}");
    assert_eq!(new["extension_version"], v2.as_str());
    let (s, old_done) = h.delete(&format!("/v1/sandboxes/{old_id}"), TOKEN_A);
    assert_eq!(s, 200, "{old_done}");
    let stub_lines = lifecycle(&h, "saas-stub")["meter"]["line_items"].clone();
    let desc = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["description"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        desc(&old_done["meter"]["line_items"]),
        desc(&stub_lines),
        "the old sandbox was not metered by the saas-stub version"
    );

    // A profile added while serving is routable; a broken profile file leaves the
    // previous profiles serving.
    std::fs::write(
        setup.profiles().join("later.toml"),
        "id = \"later\"\ntemplate = \"base\"\nmax_duration_secs = 60\n[resources]\nvcpus = 1\nmemory_mib = 512\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"saas-stub\"\n",
    )
    .unwrap();
    h.wait_for(Duration::from_secs(20), || {
        let (s, _) = h.call(
            "POST",
            "/v1/route/explain",
            Some(TOKEN_A),
            Some(r#"{"profile":"later"}"#),
            &[],
        );
        (s == 200).then_some(())
    });
    std::fs::write(
        setup.profiles().join("broken.toml"),
        "id = \"broken\"\nvcpus = \"many\"\n",
    )
    .unwrap();
    h.wait_for(Duration::from_secs(20), || {
        h.metrics()
            .contains("sandboxer_reloads_total{kind=\"profile\",outcome=\"rejected\"}")
            .then_some(())
    });
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"later"}"#);
    assert_eq!(s, 201, "{v}");
    let (s, _) = h.delete(
        &format!("/v1/sandboxes/{}", v["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200);
    // Profiles reload file by file: with broken.toml still there, a new file is picked
    // up, and a file broken in place keeps serving its previous version.
    std::fs::write(
        setup.profiles().join("later2.toml"),
        "id = \"later2\"\ntemplate = \"base\"\nmax_duration_secs = 60\n[resources]\nvcpus = 1\nmemory_mib = 512\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"saas-stub\"\n",
    )
    .unwrap();
    std::fs::write(
        setup.profiles().join("later.toml"),
        "id = \"later\"\n[route\n",
    )
    .unwrap();
    h.wait_for(Duration::from_secs(20), || {
        let (s, _) = h.call(
            "POST",
            "/v1/route/explain",
            Some(TOKEN_A),
            Some(r#"{"profile":"later2"}"#),
            &[],
        );
        (s == 200).then_some(())
    });
    for profile in ["later", "later2"] {
        let (s, v) = h.post(
            "/v1/sandboxes",
            TOKEN_A,
            &format!(r#"{{"profile":"{profile}"}}"#),
        );
        assert_eq!(s, 201, "{profile}: {v}");
        let (s, _) = h.delete(
            &format!("/v1/sandboxes/{}", v["id"].as_str().unwrap()),
            TOKEN_A,
        );
        assert_eq!(s, 200);
    }
    // A profile whose file is removed leaves.
    std::fs::remove_file(setup.profiles().join("later2.toml")).unwrap();
    h.wait_for(Duration::from_secs(20), || {
        let (s, _) = h.call(
            "POST",
            "/v1/route/explain",
            Some(TOKEN_A),
            Some(r#"{"profile":"later2"}"#),
            &[],
        );
        (s == 400).then_some(())
    });

    // Removed: it leaves /v1/extensions and routing; its sandbox can still be destroyed.
    std::fs::remove_file(&file).unwrap();
    h.wait_for(Duration::from_secs(20), || {
        (!extension_ids(&h).contains_key("fresh-ext")).then_some(())
    });
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"fresh"}"#);
    assert_eq!(s, 503, "{v}");
    let (s, v) = h.delete(
        &format!("/v1/sandboxes/{}", new["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "destroyed");
}

fn entry_kinds(h: &Host, id: &str) -> Vec<String> {
    let (_, e) = h.get("/v1/credits/entries", TOKEN_A);
    e["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["sandbox_id"] == id)
        .map(|x| x["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn leases_are_renewed_while_credits_last() {
    let setup = Setup::new();
    setup.write_config("[leases]\nchunk_secs = 1\nrenew_before_secs = 0\ngrace_secs = 1\n");
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        r#"{"profile":"saas-stub","max_duration_secs":600}"#,
    );
    assert_eq!(s, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    // Only the first 1 s lease is held, not the 600 s maximum (0.0111 USD).
    assert_eq!(sb["held"]["amount"], "0.0000185", "{sb}");
    let renewed = h.wait_for(Duration::from_secs(10), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        (v["hold_id"] != sb["hold_id"] && v["state"] == "running").then_some(v)
    });
    let held: f64 = renewed["held"]["amount"].as_str().unwrap().parse().unwrap();
    assert!(held > 0.0000185, "{renewed}");
    // The old hold was released, not left open: exactly one open hold.
    let (_, c) = h.get("/v1/credits", TOKEN_A);
    assert_eq!(c["balances"][0]["held"], renewed["held"]["amount"], "{c}");
    let (s, done) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 200, "{done}");
    let kinds = entry_kinds(&h, &id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "charge").count(),
        1,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "hold").count() >= 2,
        "{kinds:?}"
    );
    assert!(
        h.metrics()
            .contains("sandboxer_lease_renewals_total{outcome=\"renewed\"}")
    );
    let (ok, out, err) = setup.cli(&["credits", "verify"]);
    assert!(ok, "{out}{err}");
}

#[test]
fn a_lease_that_cannot_be_renewed_ends_the_sandbox_and_settles_it() {
    let setup = Setup::new();
    setup.write_config("[leases]\nchunk_secs = 1\nrenew_before_secs = 0\ngrace_secs = 1\n");
    let h = Host::start(&setup);
    // Enough for the first second (0.0000185 USD), not for renewing to two.
    h.grant("a", "0.00005");
    let (s, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        r#"{"profile":"saas-stub","max_duration_secs":600}"#,
    );
    assert_eq!(s, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    // The status says why it will end, while it still runs.
    let warned = h.wait_for(Duration::from_secs(10), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("lease renewal refused"))
            .then_some(v)
    });
    assert!(
        warned["error"]
            .as_str()
            .unwrap()
            .contains("insufficient credits"),
        "{warned}"
    );
    // Then it is destroyed and settled by the host, once.
    let done = h.wait_for(Duration::from_secs(10), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        (v["state"] == "destroyed").then_some(v)
    });
    assert!(done["meter"]["total"]["amount"].is_string(), "{done}");
    let kinds = entry_kinds(&h, &id);
    assert_eq!(
        kinds.iter().filter(|k| *k == "charge").count(),
        1,
        "{kinds:?}"
    );
    // The tenant never owes more than it had (write-off policy): available is not negative.
    let (_, c) = h.get("/v1/credits", TOKEN_A);
    let available: f64 = c["balances"][0]["available"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(available >= 0.0, "{c}");
    assert_eq!(c["balances"][0]["held"], "0", "{c}");
    h.wait_for(Duration::from_secs(5), || {
        h.metrics()
            .contains("sandboxer_reaped_total{reason=\"lease_unpaid\"} 1")
            .then_some(())
    });
    let (ok, out, err) = setup.cli(&["credits", "verify"]);
    assert!(ok, "{out}{err}");
}

#[test]
fn the_circuit_breaker_follows_the_health_settings() {
    // One failure opens the circuit for ten minutes (the defaults: three failures, 30 s).
    let setup = Setup::new();
    let misbehave = http_host::repo().join("tests/guests/misbehave.wasm");
    std::fs::copy(&misbehave, setup.extensions().join("misbehave.wasm")).unwrap();
    std::fs::write(
        setup.extensions().join("flaky.toml"),
        "component = \"misbehave.wasm\"\n[config]\nmode = \"fail-unavailable\"\n",
    )
    .unwrap();
    std::fs::write(
        setup.profiles().join("flaky.toml"),
        "id = \"flaky\"\ntemplate = \"base\"\nmax_duration_secs = 60\n[resources]\nvcpus = 1\nmemory_mib = 512\n\
         [route]\nstrategy = \"explicit\"\nexplicit = \"flaky\"\nfallback = false\n",
    )
    .unwrap();
    setup.write_config(
        "[health]\nfailure_threshold = 1\ncool_down_secs = 600\nmax_cool_down_secs = 3600\n",
    );
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"flaky"}"#);
    assert_eq!(s, 503, "{v}");
    let (s, v) = h.get("/v1/extensions", TOKEN_A);
    assert_eq!(s, 200, "{v}");
    let flaky = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "flaky")
        .cloned()
        .unwrap_or_else(|| panic!("flaky not listed: {v}"));
    assert_eq!(flaky["health"]["state"], "open", "{flaky}");
    let retry = flaky["health"]["retry_in_ms"].as_u64().unwrap();
    assert!(
        retry > 500_000,
        "cool-down {retry} ms: health.cool_down_secs = 600 not applied"
    );
    // The credits held for the attempt were released.
    let (_, c) = h.get("/v1/credits", TOKEN_A);
    let held: rust_decimal::Decimal = c["balances"][0]["held"].as_str().unwrap().parse().unwrap();
    assert!(held.is_zero(), "{c}");

    // A bad value stops the host with the key named.
    setup.write_config("[health]\nfailure_threshold = 0\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer-host"))
        .args(["--state-dir", setup.state().to_str().unwrap()])
        .args(["run", "--config", setup.config().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health.failure_threshold"), "{err}");
}

#[test]
fn the_reaper_settles_a_destroy_whose_meter_keeps_failing_by_the_fallback() {
    let setup = Setup::new();
    setup.add_misbehave("euro", "price = \"0.36\"\nmeter-currency = \"EUR\"\n", 3600);
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let sb = h.create(TOKEN_A, "euro");
    let id = sb["id"].as_str().unwrap().to_owned();
    let (s, err) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(s, 502, "{err}");
    assert!(err.to_string().contains("EUR"), "{err}");
    // Nobody retries; the reaper does, and its third failed meter settles by the fallback.
    let done = h.wait_for(Duration::from_secs(10), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        (v["state"] == "destroyed").then_some(v)
    });
    let meter = &done["meter"];
    assert!(
        meter["fallback"].as_str().unwrap().contains("EUR"),
        "{done}"
    );
    assert_eq!(meter["total"]["currency"], "USD");
    let (_, b) = h.get("/v1/credits", TOKEN_A);
    assert_eq!(b["balances"][0]["held"], "0", "{b}");
    h.wait_for(Duration::from_secs(5), || {
        h.metrics()
            .contains("sandboxer_reaped_total{reason=\"destroy_retried\"} 1")
            .then_some(())
    });
}

#[test]
fn a_slow_extension_does_not_hold_up_the_reaper_for_the_others() {
    let setup = Setup::new();
    // Its destroy loops until the 2 s budget of each call ends it.
    setup.add_misbehave("slowpoke", "mode = \"loop\"\nfunctions = \"destroy\"\n", 1);
    let sidecar = setup.extensions().join("slowpoke.toml");
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(&sidecar, format!("call_timeout_ms = 2000\n{text}")).unwrap();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    h.grant("b", "5.00");
    let (s, quick) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        r#"{"profile":"saas-stub","max_duration_secs":2}"#,
    );
    assert_eq!(s, 201, "{quick}");
    // Overdue first, and listed first (newest): a serial reaper would meet it first.
    h.create(http_host::TOKEN_B, "slowpoke");
    let id = quick["id"].as_str().unwrap().to_owned();
    let done = h.wait_for(Duration::from_secs(15), || {
        let (_, v) = h.get(&format!("/v1/sandboxes/{id}"), TOKEN_A);
        (v["state"] == "destroyed").then_some(v)
    });
    let started = done["started_at_ms"].as_u64().unwrap();
    let decided = done["destroy_at_ms"].as_u64().unwrap();
    // Reaped within a pass or two of its end, not after the slow extension's turns.
    assert!(
        decided < started + 2000 + 700,
        "reaped {} ms after its maximum duration",
        decided - started - 2000
    );
}

#[test]
fn a_sidecar_edited_while_a_sandbox_runs_does_not_change_its_terms() {
    let setup = Setup::new();
    setup.add_misbehave("terms", "price = \"0.25\"\n", 600);
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let v1 = extension_ids(&h)["terms"].clone();
    // One version per loaded extension, before any edit.
    let baseline = extension_ids(&h).len() as u64;
    let old = h.create(TOKEN_A, "terms");
    assert_eq!(old["extension_version"], v1.as_str(), "{old}");

    // Same .wasm, new terms: a new version serves new sandboxes.
    std::fs::write(
        setup.extensions().join("terms.toml"),
        "component = \"misbehave.wasm\"\nid = \"terms\"\n\n[config]\nprice = \"0.75\"\n",
    )
    .unwrap();
    let v2 = h.wait_for(Duration::from_secs(20), || {
        extension_ids(&h)
            .get("terms")
            .filter(|v| **v != v1)
            .cloned()
    });
    let new = h.create(TOKEN_A, "terms");
    assert_eq!(new["extension_version"], v2.as_str(), "{new}");

    // The sandbox created before the edit is metered by the terms it was created on.
    let (s, gone) = h.delete(
        &format!("/v1/sandboxes/{}", old["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200, "{gone}");
    assert_eq!(gone["meter"]["total"]["amount"], "0.25", "{gone}");
    let (s, gone) = h.delete(
        &format!("/v1/sandboxes/{}", new["id"].as_str().unwrap()),
        TOKEN_A,
    );
    assert_eq!(s, 200, "{gone}");
    assert_eq!(gone["meter"]["total"]["amount"], "0.75", "{gone}");
    // With no sandbox left on it, the old version is dropped at the reaper's next pass.
    let kept = |h: &Host| {
        h.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("sandboxer_extension_versions "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    h.wait_for(Duration::from_secs(10), || {
        (kept(&h) == Some(baseline)).then_some(())
    });
}

/// A half-open circuit's one trial goes to a create whose hold is then refused (a tenant
/// without credits): the extension was never called, so the trial is handed back and the
/// next create gets it. Before the fix the trial stayed taken and the extension was
/// unroutable for good.
#[test]
fn a_trial_whose_hold_is_refused_is_handed_back() {
    let setup = Setup::new();
    setup.add_misbehave("flaky", "mode = \"fail-unavailable\"\n", 60);
    setup.write_config("[health]\nfailure_threshold = 1\ncool_down_secs = 1\n");
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"flaky"}"#);
    assert_eq!(s, 503, "{v}");
    let health = |h: &Host| {
        let (_, v) = h.get("/v1/extensions", TOKEN_A);
        let row = v["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == "flaky")
            .cloned()
            .unwrap_or_else(|| panic!("flaky not listed: {v}"));
        (
            row["health"]["state"].as_str().unwrap_or("").to_owned(),
            row,
        )
    };
    assert_eq!(health(&h).0, "open");
    // The backend recovers (hot reload) while its circuit cools down.
    setup.add_misbehave("flaky", "mode = \"ok\"\n", 60);
    h.wait_for(Duration::from_secs(20), || {
        let (state, row) = health(&h);
        (state != "open" && row["version_hash"].is_string()).then_some(())
    });
    // Tenant b has no credits: routing grants it the trial, the hold is refused.
    let (s, v) = h.post("/v1/sandboxes", TOKEN_B, r#"{"profile":"flaky"}"#);
    assert_eq!(s, 402, "{v}");
    // The trial is free again: a's create is that trial, and it closes the circuit.
    let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"flaky"}"#);
    assert_eq!(s, 201, "the trial was not handed back: {v}");
    assert_eq!(health(&h).0, "closed");
}
