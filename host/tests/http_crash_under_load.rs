//! Crash under load: clients drive sandbox lifecycles over HTTP while the host is
//! SIGKILLed and restarted again and again. At the end the ledger verifies, every sandbox
//! is settled exactly once (or still tracked), and the event log holds exactly one event
//! per settlement.

#[path = "support/http_host.rs"]
mod http_host;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_host::{Host, Setup, TOKEN_A};
use serde_json::Value;

const KILLS: usize = 10;
const CLIENTS: usize = 4;

/// One blocking call against whatever host currently runs; `None` when the connection
/// failed (host killed mid-request).
fn call(
    client: &reqwest::blocking::Client,
    base: &RwLock<String>,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    let url = format!("{}{path}", base.read().unwrap());
    let mut req = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
        .bearer_auth(TOKEN_A);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().ok()?;
    let status = resp.status().as_u16();
    let text = resp.text().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

#[test]
fn lifecycles_survive_repeated_sigkill() {
    let setup = Setup::new();
    let mut host = Host::start(&setup);
    host.grant("a", "1000.00");
    let base = Arc::new(RwLock::new(host.base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let destroyed = Arc::new(AtomicUsize::new(0));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (base, stop, created, destroyed) = (
                base.clone(),
                stop.clone(),
                created.clone(),
                destroyed.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Retried with the same key across crashes: at most one sandbox per key.
                    let key = format!("client{c}-{n}");
                    let profile = if n % 3 == 0 {
                        "burst-sandbox"
                    } else {
                        "saas-stub"
                    };
                    let body = format!(r#"{{"profile":"{profile}"}}"#);
                    let id = loop {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        match call(
                            &client,
                            &base,
                            "POST",
                            "/v1/sandboxes",
                            Some(&body),
                            Some(&key),
                        ) {
                            Some((201, v)) => break v["id"].as_str().unwrap().to_owned(),
                            // The pool or a busy claim: try the next key.
                            Some((s, v)) if s == 503 || s == 409 => {
                                let _ = v;
                                break String::new();
                            }
                            Some((s, v)) => panic!("create answered {s}: {v}"),
                            None => std::thread::sleep(Duration::from_millis(20)),
                        }
                    };
                    if id.is_empty() {
                        continue;
                    }
                    created.fetch_add(1, Ordering::Relaxed);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        match call(
                            &client,
                            &base,
                            "DELETE",
                            &format!("/v1/sandboxes/{id}"),
                            None,
                            None,
                        ) {
                            Some((200, v)) => {
                                assert_eq!(v["state"], "destroyed", "{v}");
                                destroyed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            // Being finished by reconciliation or another claim: retry.
                            Some((409, _)) | Some((502, _)) | Some((503, _)) | None => {}
                            Some((s, v)) => panic!("destroy of {id} answered {s}: {v}"),
                        }
                        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();

    // Kill at pseudo-random moments (a fixed LCG: reproducible, no dependency).
    let mut seed: u64 = 0x5eed_1234;
    for _ in 0..KILLS {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 150 + (seed >> 33) % 450;
        std::thread::sleep(Duration::from_millis(wait));
        host.kill();
        host = Host::start(&setup);
        *base.write().unwrap() = host.base.clone();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert!(
        created.load(Ordering::Relaxed) >= 20,
        "too little load: {} creates",
        created.load(Ordering::Relaxed)
    );

    // A last clean run: destroy what is left running, then stop gracefully.
    host.kill();
    let host = Host::start(&setup);
    for sb in &host.get_all("/v1/sandboxes", "sandboxes", "", TOKEN_A) {
        if sb["state"] == "running" {
            let (s, v) = host.delete(
                &format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap()),
                TOKEN_A,
            );
            assert_eq!(s, 200, "{v}");
        }
    }
    let all = host.get_all("/v1/sandboxes", "sandboxes", "", TOKEN_A);
    assert!(host.terminate(), "graceful stop failed");

    // Every sandbox ended: destroyed (settled) or failed (never created, hold released).
    let mut settled: HashMap<String, String> = HashMap::new();
    for sb in &all {
        let state = sb["state"].as_str().unwrap();
        assert!(
            state == "destroyed" || state == "failed",
            "sandbox left {state}: {sb}"
        );
        if state == "destroyed" {
            settled.insert(
                sb["id"].as_str().unwrap().to_owned(),
                sb["meter"]["event_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert!(settled.len() >= created.load(Ordering::Relaxed).min(20));

    // The ledger agrees with itself and charged each sandbox once.
    let (ok, out, err) = setup.cli(&["credits", "verify"]);
    assert!(ok, "credits verify failed:\n{out}\n{err}");
    let (ok, out, err) = setup.cli(&["credits", "show", "a", "--entries", "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let text = v.to_string();
    for id in settled.keys() {
        assert!(text.contains(id.as_str()), "no ledger line for {id}");
    }

    // One event per settlement, by id, nothing else.
    let log = std::fs::read_to_string(setup.state().join("events.jsonl")).unwrap();
    let ids: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate events in the log");
    let want: HashSet<&String> = settled.values().collect();
    assert_eq!(unique, want, "events and settlements differ");
    eprintln!(
        "crash under load: {KILLS} kills, {} creates, {} destroys answered, {} settled, {} failed",
        created.load(Ordering::Relaxed),
        destroyed.load(Ordering::Relaxed),
        settled.len(),
        all.len() - settled.len()
    );
}
