//! A sandbox's life from route to settlement through the real `sandboxer` binary, the
//! real saas-stub and misbehave components and the real SQLite file: the README
//! walkthrough, insufficient credits, failover, idempotency, and bad destroys.

#[path = "lifecycle_support/mod.rs"]
mod lifecycle_support;

use std::str::FromStr;

use lifecycle_support::Fixture;
use rust_decimal::Decimal;
use sandboxer_host::domain::{LineItem, SandboxContext, SandboxRequest};
use sandboxer_host::layers::runtime::{Runtime, RuntimeConfig};
use serde_json::Value;

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

fn entries_for<'a>(statement: &'a Value, sandbox: &str) -> Vec<&'a Value> {
    statement["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["sandbox_id"] == sandbox)
        .collect()
}

fn kinds(entries: &[&Value]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn balance(f: &Fixture, tenant: &str) -> (Decimal, Decimal, Decimal) {
    let s = f.json(&["credits", "show", tenant]);
    let b = &s["balances"][0];
    (dec(&b["posted"]), dec(&b["held"]), dec(&b["available"]))
}

#[test]
fn walkthrough_pool_then_burst_destroy_meter_statement_and_event() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "10"]);

    // The pool (capacity 2) takes the first two, the third bursts to SaaS.
    let a = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "burst-sandbox",
        "--tenant",
        "acme",
    ]);
    let b = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "burst-sandbox",
        "--tenant",
        "acme",
    ]);
    let c = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "burst-sandbox",
        "--tenant",
        "acme",
    ]);
    assert_eq!(a["extension_id"], "local-pool");
    assert_eq!(b["extension_id"], "local-pool");
    assert_eq!(c["extension_id"], "saas-stub");
    for s in [&a, &b, &c] {
        assert_eq!(s["state"], "running");
        assert_eq!(s["attempts"].as_array().unwrap().len(), 1);
    }
    let held: Decimal = [&a, &b, &c].iter().map(|s| dec(&s["held"]["amount"])).sum();
    assert_eq!(
        balance(&f, "acme"),
        (Decimal::from(10), held, Decimal::from(10) - held)
    );
    let list = f.json(&["sandbox", "list", "--tenant", "acme", "--state", "running"]);
    assert_eq!(list.as_array().unwrap().len(), 3);

    std::thread::sleep(std::time::Duration::from_millis(300));
    let id = a["id"].as_str().unwrap();
    let d = f.json(&["sandbox", "destroy", id]);
    assert_eq!(d["state"], "destroyed");
    let meter = &d["meter"];

    // The meter is the extension's own reading for the host-measured lifetime: ask the
    // same component, configured the same way, for that window.
    let started = d["started_at_ms"].as_u64().unwrap();
    let ended = d["destroy_at_ms"].as_u64().unwrap();
    assert!(
        ended >= started + 300,
        "lifetime {started}..{ended} shorter than the sleep"
    );
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let loaded = runtime.load_dir(&f.extensions()).unwrap();
    let pool = loaded
        .loaded
        .iter()
        .find(|e| e.id() == "local-pool")
        .unwrap();
    let request: SandboxRequest = serde_json::from_value(d["request"].clone()).unwrap();
    let ctx = SandboxContext {
        request: request.clone(),
        handle: d["handle"].as_str().unwrap().to_owned(),
        created_at_ms: started,
        now_ms: ended,
    };
    let usage = pool.destroy(&ctx).unwrap();
    let cost = pool.meter_actual(&request, &usage).unwrap();
    assert_eq!(usage.duration_ms, ended - started);
    assert_eq!(dec(&meter["exact"]), cost.total.amount);
    let items: Vec<LineItem> = serde_json::from_value(meter["line_items"].clone()).unwrap();
    assert_eq!(items, cost.line_items);
    assert_eq!(
        meter["usage"]["duration_ms"].as_u64().unwrap(),
        usage.duration_ms
    );
    let charged = dec(&meter["total"]["amount"]);
    assert_eq!(
        charged,
        cost.total
            .amount
            .round_dp_with_strategy(9, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    );
    assert_eq!(
        dec(&meter["released"]["amount"]),
        dec(&a["held"]["amount"]) - charged
    );

    // Statement: the sandbox's hold, then its charge; nothing else.
    let st = f.statement("acme");
    let lines = entries_for(&st, id);
    assert_eq!(kinds(&lines), ["hold", "charge"]);
    assert_eq!(dec(&lines[0]["held_delta"]), dec(&a["held"]["amount"]));
    assert_eq!(dec(&lines[1]["posted_delta"]), -charged);
    assert_eq!(dec(&lines[1]["held_delta"]), -dec(&a["held"]["amount"]));
    let (posted, _, _) = balance(&f, "acme");
    assert_eq!(posted, Decimal::from(10) - charged);

    // Exactly one event, carrying the settlement's id and figures.
    let events = f.events();
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "sandboxer.sandbox.metered");
    assert_eq!(ev["subject"], "acme");
    assert_eq!(ev["id"], meter["settlement_id"]);
    assert_eq!(ev["id"], meter["event_id"]);
    assert_eq!(ev["data"]["sandbox_id"], id);
    assert_eq!(ev["data"]["extension_id"], "local-pool");
    assert_eq!(dec(&ev["data"]["amount_exact"]), cost.total.amount);

    // Destroying again answers the same and changes nothing.
    let again = f.json(&["sandbox", "destroy", id]);
    assert_eq!(again["meter"], d["meter"]);
    assert_eq!(f.statement("acme")["entries"], st["entries"]);
    assert_eq!(f.events().len(), 1);

    // The freed pool slot is used again.
    let e = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "burst-sandbox",
        "--tenant",
        "acme",
    ]);
    assert_eq!(e["extension_id"], "local-pool");
    let verify = f.json(&["credits", "verify"]);
    assert_eq!(verify["ok"], true, "{verify}");
}

#[test]
fn insufficient_credits_is_a_clear_error_and_leaves_nothing() {
    let f = Fixture::new();
    f.json(&["credits", "add", "poor", "0.01"]);
    let err = f.fails(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "poor",
    ]);
    assert!(err.contains("insufficient credits: need"), "{err}");
    assert!(err.contains("available 0.01"), "{err}");
    assert_eq!(f.json(&["sandbox", "list"]).as_array().unwrap().len(), 0);
    assert_eq!(
        balance(&f, "poor"),
        (
            Decimal::from_str("0.01").unwrap(),
            Decimal::ZERO,
            Decimal::from_str("0.01").unwrap()
        )
    );
    let st = f.statement("poor");
    assert_eq!(
        st["entries"].as_array().unwrap().len(),
        1,
        "only the grant: {st}"
    );
    // An unknown tenant has no credits at all.
    let err = f.fails(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "nobody",
    ]);
    assert!(
        err.contains("insufficient credits") || err.contains("unknown tenant"),
        "{err}"
    );
    assert_eq!(f.json(&["sandbox", "list"]).as_array().unwrap().len(), 0);
    assert_eq!(f.json(&["credits", "verify"])["open_holds"], 0);
}

#[test]
fn a_retryable_failure_voids_its_hold_and_the_next_candidate_serves() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    let s = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "failover",
        "--tenant",
        "acme",
    ]);
    assert_eq!(s["state"], "running");
    assert_eq!(s["extension_id"], "saas-stub");
    let attempts = s["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["extension_id"], "flaky-pool");
    assert!(
        attempts[0]["error"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{}",
        attempts[0]
    );
    assert_eq!(attempts[0]["retryable"], true);
    assert_eq!(attempts[1]["extension_id"], "saas-stub");
    assert!(attempts[1]["error"].is_null());

    let id = s["id"].as_str().unwrap();
    let st = f.statement("acme");
    let lines = entries_for(&st, id);
    assert_eq!(kinds(&lines), ["hold", "void", "hold"]);
    assert_eq!(lines[1]["hold_id"], attempts[0]["hold_id"]);
    assert_eq!(lines[2]["hold_id"], s["hold_id"]);
    // Exactly one hold open: the serving one.
    let (_, held, _) = balance(&f, "acme");
    assert_eq!(held, dec(&s["held"]["amount"]));
    assert_eq!(f.json(&["credits", "verify"])["open_holds"], 1);

    // A final error stops: no fallback past `unauthorized`.
    std::fs::write(
        f.extensions().join("flaky-pool.toml"),
        "component = \"misbehave.wasm\"\nid = \"flaky-pool\"\nkind = \"self-hosted\"\n\n[config]\nmode = \"fail-unauthorized\"\nkind = \"self-hosted\"\n",
    )
    .unwrap();
    let out = f.run(&[
        "sandbox",
        "create",
        "--profile",
        "failover",
        "--tenant",
        "acme",
        "--json",
    ]);
    assert!(!out.status.success());
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(failed["attempts"][0]["retryable"], false);
    assert_eq!(f.json(&["credits", "verify"])["open_holds"], 1);
}

#[test]
fn the_same_create_five_times_makes_one_sandbox_and_destroy_three_times_one_settlement() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    let create = [
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
        "--idempotency-key",
        "job-42",
    ];
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(f.json(&create)["id"].as_str().unwrap().to_owned());
    }
    // Two more at once, from two processes.
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut c = f.cmd(&create);
            c.arg("--json")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    assert_eq!(f.json(&["sandbox", "list"]).as_array().unwrap().len(), 1);
    let id = ids[0].as_str();
    assert_eq!(kinds(&entries_for(&f.statement("acme"), id)), ["hold"]);

    // The same key with another request is refused.
    let err = f.fails(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
        "--idempotency-key",
        "job-42",
        "--vcpus",
        "2",
    ]);
    assert!(err.contains("idempotency key \"job-42\""), "{err}");

    // Destroy three times, two at once.
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut c = f.cmd(&["sandbox", "destroy", id, "--json"]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut meters = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            meters.push(v["meter"].clone());
        } else {
            // The loser of the race may be told the other process is on it.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("another process"), "{err}");
        }
    }
    let last = f.json(&["sandbox", "destroy", id]);
    assert_eq!(last["state"], "destroyed");
    for m in &meters {
        assert_eq!(m, &last["meter"]);
    }
    assert_eq!(
        kinds(&entries_for(&f.statement("acme"), id)),
        ["hold", "charge"]
    );
    let events = f.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], last["meter"]["settlement_id"]);
}

#[test]
fn bad_destroys_are_clear_errors_and_change_nothing() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    f.json(&["credits", "add", "other", "5"]);
    let s = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
    ]);
    let id = s["id"].as_str().unwrap();
    let before = (f.statement("acme"), f.json(&["sandbox", "list"]));

    let err = f.fails(&["sandbox", "destroy", "sb-000000000000deadbeef"]);
    assert!(
        err.contains("no sandbox \"sb-000000000000deadbeef\""),
        "{err}"
    );
    let err = f.fails(&["sandbox", "destroy", id, "--tenant", "other"]);
    assert!(err.contains(&format!("no sandbox \"{id}\"")), "{err}");
    let err = f.fails(&["sandbox", "status", "sb-nope"]);
    assert!(err.contains("no sandbox"), "{err}");
    let err = f.fails(&["sandbox", "create", "--profile", "nope", "--tenant", "acme"]);
    assert!(
        err.contains("no profile \"nope\"") && err.contains("burst-sandbox"),
        "{err}"
    );
    let err = f.fails(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
        "--vcpus",
        "0",
    ]);
    assert!(err.contains("vcpus"), "{err}");
    let err = f.fails(&["sandbox", "list", "--state", "sleeping"]);
    assert!(err.contains("sleeping"), "{err}");
    assert_eq!((f.statement("acme"), f.json(&["sandbox", "list"])), before);

    // The extension's file is gone: a clear error, the sandbox stays tracked and running.
    let wasm = f.extensions().join("saas-stub.wasm");
    let aside = f.path().join("saas-stub.wasm.aside");
    std::fs::rename(&wasm, &aside).unwrap();
    let err = f.fails(&["sandbox", "destroy", id]);
    assert!(
        err.contains("not loaded") && err.contains("saas-stub"),
        "{err}"
    );
    assert_eq!(f.json(&["sandbox", "status", id])["state"], "running");
    assert_eq!((f.statement("acme"), f.json(&["sandbox", "list"])), before);

    // Back in place: the retry settles it.
    std::fs::rename(&aside, &wasm).unwrap();
    let d = f.json(&["sandbox", "destroy", id]);
    assert_eq!(d["state"], "destroyed");
    assert_eq!(f.events().len(), 1);
}

#[test]
fn the_reaper_settles_sandboxes_past_their_maximum_duration_only() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    let short = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
        "--max-duration",
        "1",
    ]);
    let long = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "saas-stub",
        "--tenant",
        "acme",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let app = sandboxer_host::app::App::open(&f.settings(), Default::default());
    let reaped = app.reap_once().unwrap();
    let (reaped, left) = (reaped.destroyed, reaped.left);
    assert!(left.is_empty());
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0], short["id"].as_str().unwrap());
    let reaped = app
        .sandbox(&sandboxer_host::domain::Scope::Operator, &reaped[0])
        .unwrap();
    let meter = reaped.meter.as_ref().unwrap();
    // The stub stops metering at the maximum duration: 1 vCPU-second at most.
    assert_eq!(meter.usage.measures[0].quantity, Decimal::from(1));
    assert_eq!(
        f.json(&["sandbox", "status", long["id"].as_str().unwrap()])["state"],
        "running"
    );
    assert_eq!(f.events().len(), 1);
}

#[test]
fn a_destroy_the_extension_fails_stays_tracked_and_a_retry_settles_it_once() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    let sidecar = |mode: &str| {
        format!(
            "component = \"misbehave.wasm\"\nid = \"shaky\"\n\n[config]\nmode = \"{mode}\"\nfunctions = \"destroy\"\n"
        )
    };
    std::fs::write(f.extensions().join("shaky.toml"), sidecar("ok")).unwrap();
    std::fs::write(
        f.path().join("profiles/shaky.toml"),
        "id = \"shaky\"\ndescription = \"d\"\ntemplate = \"base\"\nmax_duration_secs = 600\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nexplicit = \"shaky\"\nfallback = false\n",
    )
    .unwrap();
    let s = f.json(&[
        "sandbox",
        "create",
        "--profile",
        "shaky",
        "--tenant",
        "acme",
    ]);
    let id = s["id"].as_str().unwrap();

    std::fs::write(
        f.extensions().join("shaky.toml"),
        sidecar("fail-unavailable"),
    )
    .unwrap();
    let err = f.fails(&["sandbox", "destroy", id]);
    assert!(err.contains("unavailable"), "{err}");
    let st = f.json(&["sandbox", "status", id]);
    assert_eq!(st["state"], "destroying");
    let window = st["destroy_at_ms"].clone();
    assert_eq!(kinds(&entries_for(&f.statement("acme"), id)), ["hold"]);
    assert!(f.events().is_empty());

    std::fs::write(f.extensions().join("shaky.toml"), sidecar("ok")).unwrap();
    let d = f.json(&["sandbox", "destroy", id]);
    assert_eq!(d["state"], "destroyed");
    // The usage window was fixed by the first try, not moved by the retry.
    assert_eq!(d["destroy_at_ms"], window);
    assert_eq!(
        kinds(&entries_for(&f.statement("acme"), id)),
        ["hold", "charge"]
    );
    assert_eq!(f.events().len(), 1);
}

#[test]
fn concurrent_creates_from_several_processes_never_overfill_the_pool() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "10"]);
    // Compile once, so the racers start together.
    f.json(&["sandbox", "list"]);
    let children: Vec<_> = (0..5)
        .map(|_| {
            let mut c = f.cmd(&[
                "sandbox",
                "create",
                "--profile",
                "burst-sandbox",
                "--tenant",
                "acme",
                "--json",
            ]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut on_pool = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["extension_id"] == "local-pool" {
            on_pool += 1;
        } else {
            assert_eq!(v["extension_id"], "saas-stub");
        }
    }
    assert_eq!(on_pool, 2, "the pool holds 2");
    assert_eq!(
        f.json(&["sandbox", "list", "--state", "running"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

/// An extension `id` (the misbehave guest with `config`) behind a profile of the same name
/// that routes to it alone, with `max_duration_secs`.
fn misbehave_profile(f: &Fixture, id: &str, config: &str, max_duration_secs: u64) {
    std::fs::write(
        f.extensions().join(format!("{id}.toml")),
        format!("component = \"misbehave.wasm\"\nid = \"{id}\"\n\n[config]\n{config}"),
    )
    .unwrap();
    std::fs::write(
        f.path().join(format!("profiles/{id}.toml")),
        format!(
            "id = \"{id}\"\ndescription = \"d\"\ntemplate = \"base\"\nmax_duration_secs = {max_duration_secs}\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nexplicit = \"{id}\"\nfallback = false\n"
        ),
    )
    .unwrap();
}

fn create_on(f: &Fixture, profile: &str) -> String {
    let s = f.json(&[
        "sandbox",
        "create",
        "--profile",
        profile,
        "--tenant",
        "acme",
    ]);
    s["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_meter_above_the_hold_is_charged_at_the_hold_and_its_excess_recorded() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    misbehave_profile(
        &f,
        "greedy",
        "price = \"0.0006\"\nmeter-price = \"0.75\"\n",
        600,
    );
    let id = create_on(&f, "greedy");
    let d = f.json(&["sandbox", "destroy", &id]);
    assert_eq!(d["state"], "destroyed");
    let meter = &d["meter"];
    assert_eq!(dec(&meter["held"]["amount"]), Decimal::new(6, 4));
    assert_eq!(
        dec(&meter["total"]["amount"]),
        Decimal::new(6, 4),
        "{meter}"
    );
    assert_eq!(dec(&meter["over_hold"]["amount"]), Decimal::new(7494, 4));
    assert_eq!(dec(&meter["written_off"]["amount"]), Decimal::ZERO);
    // The tenant paid the hold and not a unit more; no overdraft was taken.
    assert_eq!(
        balance(&f, "acme"),
        (
            Decimal::from(5) - Decimal::new(6, 4),
            Decimal::ZERO,
            Decimal::from(5) - Decimal::new(6, 4)
        )
    );
    assert_eq!(
        kinds(&entries_for(&f.statement("acme"), &id)),
        ["hold", "charge"]
    );
    let events = f.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["amount_charged"], "0.0006");
    f.json(&["credits", "verify"]);
}

#[test]
fn a_meter_that_keeps_failing_settles_by_the_prorated_estimate_after_three_tries() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    misbehave_profile(
        &f,
        "euro",
        "price = \"0.36\"\nmeter-currency = \"EUR\"\n",
        3600,
    );
    let id = create_on(&f, "euro");
    // Every start of the CLI retries unfinished destroys, so the tries are counted across
    // processes: the third failed meter settles by the fallback, whoever makes it.
    let err = f.fails(&["sandbox", "destroy", &id]);
    assert!(err.contains("EUR") && err.contains("USD"), "{err}");
    assert_eq!(kinds(&entries_for(&f.statement("acme"), &id)), ["hold"]);
    let mut tries = 1;
    let d = loop {
        let out = f.run(&["sandbox", "destroy", &id, "--json"]);
        tries += 1;
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("EUR"), "{err}");
        assert!(tries < 3, "still failing after {tries} destroys: {err}");
    };
    let meter = &d["meter"];
    let fallback = meter["fallback"].as_str().unwrap();
    assert!(fallback.contains("EUR"), "{fallback}");
    // The estimate (0.36 for an hour) prorated over a lifetime of seconds: under a cent,
    // charged in the hold's currency, the rest released.
    let charged = dec(&meter["total"]["amount"]);
    assert!(
        charged > Decimal::ZERO && charged < Decimal::new(1, 2),
        "{charged}"
    );
    assert_eq!(meter["total"]["currency"], "USD");
    assert_eq!(balance(&f, "acme").1, Decimal::ZERO);
    assert_eq!(
        kinds(&entries_for(&f.statement("acme"), &id)),
        ["hold", "charge"]
    );
    assert_eq!(f.events().len(), 1);
    f.json(&["credits", "verify"]);
}

#[test]
fn billed_time_never_runs_past_the_maximum_duration() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "5"]);
    // misbehave reports `now - created` as it is handed: the host's window decides.
    misbehave_profile(&f, "brief", "price = \"0.0001\"\n", 1);
    let id = create_on(&f, "brief");
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let d = f.json(&["sandbox", "destroy", &id]);
    assert_eq!(d["state"], "destroyed");
    let started = d["started_at_ms"].as_u64().unwrap();
    let decided = d["destroy_at_ms"].as_u64().unwrap();
    assert!(decided >= started + 1600, "{started}..{decided}");
    assert_eq!(d["meter"]["usage"]["duration_ms"], 1000, "{}", d["meter"]);
}
