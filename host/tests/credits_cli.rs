//! `sandboxer credits` through the real binary and the real ledger file.

use std::path::Path;
use std::process::{Command, Output};

use rust_decimal::Decimal;

fn sandboxer(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("SANDBOXER_STATE_DIR")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn add_then_show_as_a_new_user_types_it() {
    let dir = tempfile::tempdir().unwrap();
    // The state folder does not exist yet: `add` creates it.
    let state = dir.path().join("state");
    let added = ok(&sandboxer(&state, &["credits", "add", "acme", "100"]));
    assert!(added.contains("Added 100 USD to acme"), "{added}");
    assert!(state.join("ledger.sqlite3").exists());

    let shown = ok(&sandboxer(&state, &["credits", "show", "acme"]));
    for needle in [
        "tenant",
        "posted",
        "held",
        "available",
        "acme",
        "USD",
        "100.00",
    ] {
        assert!(shown.contains(needle), "{needle:?} missing from\n{shown}");
    }

    ok(&sandboxer(
        &state,
        &["credits", "add", "globex", "12.50", "--note", "trial"],
    ));
    let all = json(&sandboxer(&state, &["--json", "credits", "show"]));
    let balances = all["balances"].as_array().unwrap();
    assert_eq!(balances.len(), 2);
    assert_eq!(balances[0]["tenant"], "acme");
    assert_eq!(balances[0]["available"], "100");
    assert_eq!(balances[1]["tenant"], "globex");
    assert_eq!(balances[1]["posted"], "12.5");

    let with_entries = json(&sandboxer(
        &state,
        &["credits", "show", "globex", "--entries", "--json"],
    ));
    let entries = with_entries["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "grant");
    assert_eq!(entries[0]["note"], "trial");
    assert_eq!(entries[0]["posted_delta"], "12.5");
    let table = ok(&sandboxer(
        &state,
        &["credits", "show", "globex", "--entries"],
    ));
    assert!(
        table.contains("grant") && table.contains("+12.50") && table.contains("trial"),
        "{table}"
    );

    let verified = json(&sandboxer(&state, &["credits", "verify", "--json"]));
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["transfers"], 2);
    assert!(ok(&sandboxer(&state, &["credits", "verify"])).contains("ok"));
}

#[test]
fn the_state_folder_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .args(["credits", "add", "acme", "3"])
        .env("SANDBOXER_STATE_DIR", dir.path())
        .output()
        .unwrap();
    ok(&out);
    let shown = json(&sandboxer(
        dir.path(),
        &["--json", "credits", "show", "acme"],
    ));
    assert_eq!(shown["balances"][0]["posted"], "3");
}

#[test]
fn a_retried_add_with_the_same_key_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "credits",
        "add",
        "acme",
        "100",
        "--idempotency-key",
        "invoice-42",
    ];
    for _ in 0..3 {
        ok(&sandboxer(dir.path(), &args));
    }
    let shown = json(&sandboxer(
        dir.path(),
        &["--json", "credits", "show", "acme"],
    ));
    assert_eq!(shown["balances"][0]["posted"], "100");
    let conflict = err(&sandboxer(
        dir.path(),
        &[
            "credits",
            "add",
            "acme",
            "200",
            "--idempotency-key",
            "invoice-42",
        ],
    ));
    assert!(
        conflict.contains("invoice-42") && conflict.contains("different"),
        "{conflict}"
    );
    let shown = json(&sandboxer(
        dir.path(),
        &["--json", "credits", "show", "acme"],
    ));
    assert_eq!(shown["balances"][0]["posted"], "100");
}

#[test]
fn bad_amounts_and_tenants_are_refused_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    // Refused before a ledger even exists: none is created.
    let e = err(&sandboxer(dir.path(), &["credits", "add", "acme", "1e3"]));
    assert!(e.contains("\"1e3\"") && e.contains("exponent"), "{e}");
    assert!(!ledger.exists(), "a refused command created the ledger");

    ok(&sandboxer(dir.path(), &["credits", "add", "acme", "10"]));
    let before = std::fs::read(&ledger).unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["credits", "add", "acme", "1e3"], &["AMOUNT", "exponent"]),
        (
            &["credits", "add", "acme", "-5"],
            &["AMOUNT", "\"-5\"", "negative"],
        ),
        (
            &["credits", "add", "acme", "abc"],
            &["AMOUNT", "\"abc\"", "not a plain decimal"],
        ),
        (
            &["credits", "add", "acme", "0.0000000001"],
            &["AMOUNT", "more than 9 decimal places"],
        ),
        (
            &["credits", "add", "acme", "0"],
            &["AMOUNT", "greater than zero"],
        ),
        (
            &["credits", "add", "acme", "1", "--currency", "usd"],
            &["currency", "\"usd\""],
        ),
        (
            &["credits", "add", "Acme", "1"],
            &["invalid tenant id \"Acme\""],
        ),
        (&["credits", "show", "ghost"], &["unknown tenant \"ghost\""]),
        (
            &["credits", "show", "ghost", "--entries"],
            &["unknown tenant \"ghost\""],
        ),
    ];
    for (args, needles) in cases {
        let e = err(&sandboxer(dir.path(), args));
        for n in *needles {
            assert!(e.contains(n), "{args:?}: {n:?} missing from {e}");
        }
    }
    assert!(
        std::fs::read(&ledger).unwrap() == before,
        "a refused command changed the ledger"
    );
    let shown = json(&sandboxer(dir.path(), &["--json", "credits", "show"]));
    assert_eq!(shown["balances"].as_array().unwrap().len(), 1);
    assert_eq!(shown["balances"][0]["posted"], "10");
}

#[test]
fn show_and_verify_without_a_ledger_do_not_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let shown = ok(&sandboxer(dir.path(), &["credits", "show"]));
    assert!(shown.contains("No tenants"), "{shown}");
    let e = err(&sandboxer(dir.path(), &["credits", "show", "acme"]));
    assert!(e.contains("unknown tenant \"acme\""), "{e}");
    let e = err(&sandboxer(dir.path(), &["credits", "verify"]));
    assert!(e.contains("no ledger"), "{e}");
    assert!(!dir.path().join("ledger.sqlite3").exists());
}

#[test]
fn a_corrupt_ledger_file_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.sqlite3");
    let garbage = b"this is not an SQLite database, it is a shopping list: eggs, milk".repeat(100);
    std::fs::write(&ledger, &garbage).unwrap();
    for args in [
        &["credits", "show"][..],
        &["credits", "add", "acme", "5"],
        &["credits", "verify"],
    ] {
        let e = err(&sandboxer(dir.path(), args));
        assert!(
            e.contains("corrupt") && e.contains(&ledger.display().to_string()),
            "{args:?}: {e}"
        );
    }
    assert!(
        std::fs::read(&ledger).unwrap() == garbage,
        "the corrupt file was modified"
    );
}

#[test]
fn killed_writers_lose_no_acknowledged_grant_and_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    ok(&sandboxer(dir.path(), &["credits", "add", "acme", "1"]));
    let posted = |dir: &Path| -> Decimal {
        let shown = json(&sandboxer(dir, &["--json", "credits", "show", "acme"]));
        shown["balances"][0]["posted"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut acknowledged = 0u32;
    let keys: Vec<String> = (0..16).map(|i| format!("crash-{i}")).collect();
    for (round, chunk) in keys.chunks(8).enumerate() {
        let mut children: Vec<_> = chunk
            .iter()
            .map(|k| {
                Command::new(env!("CARGO_BIN_EXE_sandboxer"))
                    .arg("--state-dir")
                    .arg(dir.path())
                    .args(["credits", "add", "acme", "1", "--idempotency-key", k])
                    .env_remove("SANDBOXER_STATE_DIR")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // Kill every other writer (SIGKILL) at varying moments of its run.
        std::thread::sleep(std::time::Duration::from_millis(5 + 20 * round as u64));
        for (i, child) in children.iter_mut().enumerate() {
            if i % 2 == 1 {
                let _ = child.kill();
            }
        }
        for mut child in children {
            if child.wait().unwrap().success() {
                acknowledged += 1;
            }
        }
    }
    // Every acknowledged grant is there, nothing is half-applied, the ledger verifies.
    let after_crash = posted(dir.path());
    eprintln!(
        "{acknowledged} of 16 writers acknowledged; ledger holds {after_crash} before retries"
    );
    assert!(
        after_crash >= Decimal::from(1 + acknowledged),
        "{after_crash} < 1 + {acknowledged}"
    );
    assert!(after_crash <= Decimal::from(17));
    assert_eq!(
        json(&sandboxer(dir.path(), &["--json", "credits", "verify"]))["ok"],
        true
    );
    // Retrying every request (as a client would after a crash) applies each exactly once.
    for k in &keys {
        ok(&sandboxer(
            dir.path(),
            &["credits", "add", "acme", "1", "--idempotency-key", k],
        ));
    }
    assert_eq!(posted(dir.path()), Decimal::from(17));
    assert_eq!(
        json(&sandboxer(dir.path(), &["--json", "credits", "verify"]))["transfers"],
        17
    );
}

#[test]
fn credits_commands_answer_with_a_broken_component_in_the_extensions_folder() {
    // They open the ledger only: no runtime starts and no component is compiled, so a
    // broken `.wasm` (or a half-copied one) beside a good one cannot stop them.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let extensions = dir.path().join("extensions");
    std::fs::create_dir_all(&extensions).unwrap();
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../extensions/saas-stub.wasm");
    assert!(good.is_file(), "run `make extensions` first");
    std::fs::copy(&good, extensions.join("saas-stub.wasm")).unwrap();
    std::fs::write(
        extensions.join("broken.wasm"),
        b"\0asm\x01\0\0\0 half a component",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sandboxer"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--extensions-dir")
            .arg(&extensions)
            .args(args)
            .env_remove("SANDBOXER_STATE_DIR")
            .output()
            .unwrap()
    };
    ok(&run(&["credits", "add", "acme", "10"]));
    let shown = ok(&run(&["credits", "show", "acme"]));
    assert!(shown.contains("10.00"), "{shown}");
    let shown = json(&run(&["--json", "credits", "show", "acme"]));
    assert_eq!(shown["tenant"], "acme");
    assert_eq!(shown["balances"][0]["posted"], "10");
    assert_eq!(json(&run(&["--json", "credits", "verify"]))["ok"], true);
    assert!(
        !state.join("cache").exists(),
        "a credits command compiled an extension"
    );
    // The same folder, for a command that does load it: the good one loads, the broken
    // one is reported.
    let listed = json(&run(&["--json", "extensions", "list"]));
    let rows = listed["extensions"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["id"] == "saas-stub" && r["status"] == "loaded"),
        "{listed}"
    );
    assert!(
        rows.iter()
            .any(|r| r["id"] == "broken" && r["status"] == "skipped"),
        "{listed}"
    );
    assert!(state.join("cache").exists());
}
