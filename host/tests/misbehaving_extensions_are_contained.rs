//! Bad input through the real runtime and the real `sandboxer` binary: a file that is not
//! wasm, a core module, a component of another world, and an extension that loops,
//! allocates without bound, panics or answers out of contract. Each gives a clear error
//! naming the file or extension and the function, and saas-stub, loaded in the same
//! process, keeps answering after every one of them. An extension that keeps trapping is
//! quarantined with back-off.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sandboxer_host::domain::{ExtensionError, Fault, Function};
use sandboxer_host::layers::runtime::{Extension, LoadFailure, QuarantinePolicy, Runtime};
use support::*;

/// One runtime for the whole file, as in a host process; saas-stub loaded in it.
fn shared() -> &'static (Runtime, Arc<Extension>, tempfile::TempDir) {
    static SHARED: OnceLock<(Runtime, Arc<Extension>, tempfile::TempDir)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cache = tempfile::tempdir().unwrap();
        let rt = runtime(cache.path());
        let stub = rt.load_file(&saas_stub()).unwrap();
        (rt, stub, cache)
    })
}

/// saas-stub still prices the sample request, in the same runtime.
fn stub_still_works() {
    let (_, stub, _) = shared();
    let cost = stub
        .estimate_cost(&request())
        .expect("saas-stub stopped answering");
    assert!(cost.total.amount > rust_decimal::Decimal::ZERO);
}

fn fault(err: &ExtensionError) -> &Fault {
    &err.fault
}

#[test]
fn a_file_that_is_not_wasm_is_refused_by_name() {
    let (rt, _, _) = shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.wasm");
    std::fs::write(&path, "these are my notes, not a component\n").unwrap();
    let err = rt.load_file(&path).unwrap_err();
    assert_eq!(err.failure, LoadFailure::NotWasm);
    assert!(err.to_string().contains("notes.wasm"), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
    stub_still_works();
}

#[test]
fn a_core_module_is_refused_as_not_a_component() {
    let (rt, _, _) = shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = rt.load_file(&path).unwrap_err();
    assert_eq!(err.failure, LoadFailure::CoreModule);
    let text = err.to_string();
    assert!(
        text.contains("core.wasm") && text.contains("not a component"),
        "{text}"
    );
    stub_still_works();
}

#[test]
fn a_component_of_another_world_names_the_missing_export() {
    let (rt, _, _) = shared();
    let err = rt.load_file(&guest("wrong-world")).unwrap_err();
    let LoadFailure::WrongWorld { reason } = &err.failure else {
        panic!("expected WrongWorld, got {err}")
    };
    assert!(
        reason.contains("sandboxer:extension/backend@0.1.1"),
        "{reason}"
    );
    assert!(
        reason.contains("hello"),
        "should say what it does export: {reason}"
    );
    assert!(err.to_string().contains("wrong-world.wasm"), "{err}");
    stub_still_works();
}

#[test]
fn a_looping_estimate_is_interrupted_and_the_next_call_gets_a_fresh_instance() {
    let (rt, _, _) = shared();
    let ext = misbehave(rt, "loop", &[("functions", "estimate-cost")]);
    let started = Instant::now();
    let err = ext.estimate_cost(&request()).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(fault(&err), &Fault::Timeout { budget_ms: 1000 });
    assert_eq!(err.function, Function::EstimateCost);
    assert!(
        err.to_string().contains("misbehave-loop") && err.to_string().contains("estimate-cost"),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_secs(3),
        "interrupted after {elapsed:?}"
    );
    // The trapped instance was discarded: other functions answer from a fresh one.
    assert_eq!(ext.capacity().unwrap().max_sandboxes, None);
    stub_still_works();
}

#[test]
fn unbounded_allocation_hits_the_memory_cap() {
    let (rt, _, _) = shared();
    let ext = misbehave(rt, "alloc", &[]);
    let err = ext.estimate_cost(&request()).unwrap_err();
    assert_eq!(fault(&err), &Fault::OutOfMemory { limit_mib: 64 });
    assert!(
        err.to_string().contains("misbehave-alloc") && err.to_string().contains("estimate-cost"),
        "{err}"
    );
    // A sidecar's memory_limit_mib applies instead of the default.
    let mut small = spec(
        &guest("misbehave"),
        "misbehave-alloc-16",
        &[("mode", "alloc")],
    );
    small.memory_limit_mib = Some(16);
    let ext = rt.load_spec(small).unwrap();
    assert_eq!(
        fault(&ext.create(&request()).unwrap_err()),
        &Fault::OutOfMemory { limit_mib: 16 }
    );
    stub_still_works();
}

#[test]
fn a_panic_is_a_trap_carrying_the_panic_message() {
    let (rt, _, _) = shared();
    let ext = misbehave(rt, "panic", &[]);
    let err = ext.estimate_cost(&request()).unwrap_err();
    let Fault::Trap { message } = fault(&err) else {
        panic!("expected a trap, got {err}")
    };
    assert!(
        message.contains("misbehave: panic in estimate-cost, as configured"),
        "{message}"
    );
    assert!(err.to_string().contains("misbehave-panic"), "{err}");
    stub_still_works();
}

#[test]
fn malformed_amounts_are_refused_naming_field_and_value() {
    let (rt, _, _) = shared();
    let cases = [
        ("abc", "\"abc\""),
        ("negative", "\"-1\""),
        ("huge", "\"1234567890123456789012345678901234567890\""),
        ("float", "\"1e-5\""),
        ("no-currency", "total.currency: \"\""),
        ("bad-sum", "not the sum"),
    ];
    for (mode, expected) in cases {
        let ext = misbehave(rt, mode, &[]);
        for (function, result) in [
            (
                Function::EstimateCost,
                ext.estimate_cost(&request()).map(|_| ()),
            ),
            (
                Function::MeterActual,
                ext.meter_actual(&request(), &usage()).map(|_| ()),
            ),
        ] {
            let err = result.expect_err(mode);
            let Fault::BadAnswer { message } = fault(&err) else {
                panic!("{mode}: expected BadAnswer, got {err}")
            };
            assert!(
                message.contains(expected),
                "{mode}: {message:?} should contain {expected}"
            );
            assert_eq!(err.function, function);
            let text = err.to_string();
            assert!(
                text.contains(&format!("misbehave-{mode}")) && text.contains(function.wit_name()),
                "{text}"
            );
        }
        // Contract breaches are not traps: the extension is not quarantined for them.
        assert!(ext.quarantine().is_none());
        stub_still_works();
    }
}

#[test]
fn an_extension_that_keeps_trapping_is_quarantined_with_back_off() {
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime_with(cache.path(), |c| {
        c.quarantine = QuarantinePolicy {
            after_traps: 3,
            base_backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(60),
        }
    });
    let stub = rt.load_file(&saas_stub()).unwrap();
    let ext = misbehave(&rt, "panic", &[]);
    for _ in 0..3 {
        assert!(matches!(
            fault(&ext.estimate_cost(&request()).unwrap_err()),
            Fault::Trap { .. }
        ));
    }
    // Refused without running the guest.
    let err = ext.estimate_cost(&request()).unwrap_err();
    let Fault::Quarantined {
        reason,
        until_unix_ms,
    } = fault(&err)
    else {
        panic!("expected quarantine, got {err}")
    };
    assert!(
        reason.contains("3 traps in a row") && reason.contains("panic"),
        "{reason}"
    );
    let health = ext.health();
    assert_eq!(health.traps, 3);
    assert_eq!(
        health.quarantine.as_ref().map(|q| q.until_unix_ms),
        Some(*until_unix_ms)
    );
    assert!(
        !err.counts_against_health(),
        "a refused call is not another failure"
    );
    stub.estimate_cost(&request()).unwrap();

    // After the back-off one trial call runs; it traps again, so the next quarantine is
    // twice as long.
    std::thread::sleep(Duration::from_millis(350));
    assert!(matches!(
        fault(&ext.estimate_cost(&request()).unwrap_err()),
        Fault::Trap { .. }
    ));
    assert_eq!(ext.health().traps, 4);
    let q = ext.quarantine().expect("quarantined again");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        q.until_unix_ms >= now_ms + 450,
        "second back-off should be ~600 ms, ends in {} ms",
        q.until_unix_ms - now_ms
    );
    stub.estimate_cost(&request()).unwrap();
}

#[test]
fn extensions_check_fails_clearly_on_each_bad_guest() {
    let state = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let notes = state.path().join("notes.wasm");
    std::fs::write(&notes, "not wasm").unwrap();
    let misbehave = guest("misbehave");
    let wrong = guest("wrong-world");
    let m = misbehave.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![notes.to_str().unwrap()], "not a WebAssembly file"),
        (
            vec![wrong.to_str().unwrap()],
            "does not export sandboxer:extension/backend@0.1.1",
        ),
        (
            vec![m, "--config", "mode=loop", "--timeout-ms", "100"],
            "interrupted after its 100 ms time budget",
        ),
        (
            vec![m, "--config", "mode=alloc", "--memory-mib", "16"],
            "exceeded its memory limit of 16 MiB",
        ),
        (
            vec![m, "--config", "mode=panic"],
            "misbehave: panic in estimate-cost",
        ),
        (
            vec![m, "--config", "mode=huge"],
            "1234567890123456789012345678901234567890",
        ),
        (vec![m, "--config", "mode=abc"], "total.amount: \"abc\""),
    ];
    for (args, expected) in cases {
        let mut all = vec!["extensions", "check"];
        all.extend(&args);
        let out = sandboxer(state.path(), empty.path(), &all);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} passed:\n{stdout}");
        assert!(
            stdout.contains(expected),
            "{args:?}: {expected:?} not in\n{stdout}{stderr}"
        );
        assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    }
    // The same check passes on the guest behaving (no false alarms).
    let out = sandboxer(
        state.path(),
        empty.path(),
        &["extensions", "check", m, "--config", "mode=ok"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
}

#[test]
fn extensions_list_loads_the_good_and_explains_the_bad() {
    let state = tempfile::tempdir().unwrap();
    let dir = folder_with(&[
        (&saas_stub(), "saas-stub.wasm"),
        (&guest("wrong-world"), "wrong-world.wasm"),
    ]);
    std::fs::write(dir.path().join("notes.wasm"), "not wasm").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let out = sandboxer(state.path(), dir.path(), &["extensions", "list", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = json["extensions"].as_array().unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {stdout}"))
    };
    assert_eq!(row("saas-stub")["status"], "loaded");
    assert_eq!(row("saas-stub")["kind"], "saas");
    for (id, reason) in [
        ("notes", "not a WebAssembly file"),
        ("core", "not a component"),
        ("wrong-world", "backend@0.1.1"),
    ] {
        assert_eq!(row(id)["status"], "skipped", "{id}");
        assert!(
            row(id)["reason"].as_str().unwrap().contains(reason),
            "{id}: {}",
            row(id)["reason"]
        );
    }
    // The table names each skipped file and its reason too, and logs it.
    let out = sandboxer(state.path(), dir.path(), &["extensions", "list"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("1 loaded, 3 skipped"), "{stdout}");
    assert!(
        stderr.contains("notes.wasm") && stderr.contains("extension skipped"),
        "{stderr}"
    );
}

fn usage() -> sandboxer_host::domain::Usage {
    sandboxer_host::domain::Usage {
        duration_ms: 60_000,
        measures: Vec::new(),
    }
}

#[test]
fn huge_answers_are_cut_or_refused_and_quoted_by_a_prefix_only() {
    let (rt, _, _) = shared();
    // A 10-million-digit decimal: refused, the error quotes 64 bytes of it.
    let ext = misbehave(rt, "long-decimal", &[]);
    let err = ext.estimate_cost(&request()).unwrap_err().to_string();
    assert!(err.len() < 1024, "{} bytes: {}", err.len(), &err[..200]);
    assert!(err.contains("(10000000 bytes)"), "{err}");
    // 200,000 line items: refused without storing any.
    let ext = misbehave(rt, "many-items", &[]);
    let err = ext.estimate_cost(&request()).unwrap_err().to_string();
    assert!(err.contains("line_items: 200000 of them"), "{err}");
    // A 4 MiB error message: kept to 4 KiB, marked as cut.
    let ext = misbehave(rt, "long-error", &[]);
    let err = ext.create(&request()).unwrap_err().to_string();
    assert!(err.len() < 5000, "{} bytes", err.len());
    assert!(
        err.contains("truncated, 4194"),
        "{}",
        &err[err.len() - 80..]
    );
    stub_still_works();
}

/// Concurrent calls of one extension are bounded (`PoolPolicy::max_instances`): with a
/// cap of one, three looping calls at once never run side by side, and a call that
/// cannot get an instance within its budget is refused as capacity exhausted (retryable)
/// instead of building one more instance. Without the cap all three run and time out.
#[test]
fn concurrent_instances_of_one_extension_are_capped() {
    fn three_at_once(max_instances: usize) -> Vec<ExtensionError> {
        let cache = tempfile::tempdir().unwrap();
        let rt = runtime_with(cache.path(), |c| c.pool.max_instances = max_instances);
        let mut s = spec(&guest("misbehave"), "misbehave-loop", &[("mode", "loop")]);
        s.call_timeout_ms = Some(400);
        let ext = rt.load_spec(s).unwrap();
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let ext = Arc::clone(&ext);
                std::thread::spawn(move || ext.estimate_cost(&request()).unwrap_err())
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    }
    let refused = |errs: &[ExtensionError]| {
        errs.iter()
            .filter(|e| {
                matches!(&e.fault, Fault::Backend(sandboxer_host::domain::BackendError::CapacityExhausted(m)) if m.contains("instances"))
            })
            .count()
    };

    let capped = three_at_once(1);
    assert!(refused(&capped) >= 1, "{capped:?}");
    assert!(capped.iter().all(|e| e.is_retryable()), "{capped:?}");
    let open = three_at_once(8);
    assert_eq!(refused(&open), 0, "{open:?}");
    assert!(
        open.iter()
            .all(|e| matches!(e.fault, Fault::Timeout { .. })),
        "{open:?}"
    );
}

/// A guest blocked in a host call (a WASI sleep) is not running guest code, so epoch
/// interruption cannot stop it: the bounded `wasi:io/poll` does, at the call's budget,
/// and the call fails as a timeout like a loop. A sleep within the budget answers.
#[test]
fn a_guest_asleep_in_a_host_call_is_stopped_at_its_budget() {
    let (rt, _, _) = shared();
    let load = |id: &str, sleep_ms: &str, budget_ms: u64| {
        let mut s = spec(
            &guest("misbehave"),
            id,
            &[("mode", "sleep"), ("sleep-ms", sleep_ms)],
        );
        s.call_timeout_ms = Some(budget_ms);
        rt.load_spec(s).unwrap()
    };
    let sleeper = load("misbehave-sleep", "5000", 300);
    let started = Instant::now();
    let err = sleeper.estimate_cost(&request()).unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err.fault, Fault::Timeout { budget_ms: 300 }),
        "{err}"
    );
    assert!(err.is_retryable() && err.counts_against_health(), "{err}");
    // It waited its budget, not the guest's five seconds.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The next call gets a fresh instance and is bounded the same way.
    assert!(matches!(
        sleeper.create(&request()).unwrap_err().fault,
        Fault::Timeout { .. }
    ));

    let napper = load("misbehave-nap", "50", 5000);
    napper
        .estimate_cost(&request())
        .expect("a 50 ms sleep within a 5 s budget");
    stub_still_works();
}
