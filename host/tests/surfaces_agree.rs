//! The two surfaces give the same answer: the same request through the real `sandboxer`
//! CLI (`--json`) and through the real `sandboxer-host run` over HTTP yields
//! byte-identical JSON, one test per use case, on one state folder. Both surfaces call
//! one typed use case of the app and print its one serialisation, so they cannot drift.

#[path = "support/http_host.rs"]
mod http_host;

use http_host::{ADMIN, Host, Setup, TOKEN_A};

/// The CLI's `--json` answer (one line), asserting success.
fn cli(setup: &Setup, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = setup.cli(&all);
    assert!(ok, "sandboxer {args:?} failed:\n{out}{err}");
    out.trim_end().to_owned()
}

/// The HTTP answer's body, asserting the status.
fn http(
    h: &Host,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    status: u16,
) -> String {
    let (s, text) = h.raw(method, path, Some(token), body, headers);
    assert_eq!(s, status, "{method} {path}: {text}");
    text
}

fn same(cli: &str, http: &str) {
    assert!(!cli.is_empty());
    assert_eq!(cli, http, "the CLI and the HTTP API answered differently");
}

#[test]
fn extensions_list_the_same_live_registry() {
    let setup = Setup::new();
    // The first CLI run compiles into the shared cache; the host and the next CLI run
    // then both load from it, so the two registries are alike field for field.
    cli(&setup, &["extensions", "list"]);
    let h = Host::start(&setup);
    let over_http = http(&h, "GET", "/v1/extensions", ADMIN, None, &[], 200);
    same(&cli(&setup, &["extensions", "list"]), &over_http);
    let v: serde_json::Value = serde_json::from_str(&over_http).unwrap();
    assert_eq!(v["extensions"][0]["artifact"]["kind"], "cache", "{v}");
    // A tenant sees the offer and the circuit, not the operator's files and records.
    let (_, tenant) = h.get("/v1/extensions", TOKEN_A);
    assert!(tenant["extensions"][0].get("file").is_none(), "{tenant}");
    assert!(tenant.get("cache").is_none(), "{tenant}");
    assert_eq!(tenant["extensions"][0]["id"], v["extensions"][0]["id"]);
}

#[test]
fn route_explain_is_the_same_decision() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    for profile in ["burst-sandbox", "saas-stub"] {
        let over_http = http(
            &h,
            "POST",
            "/v1/route/explain",
            TOKEN_A,
            Some(&format!(r#"{{"profile":"{profile}","vcpus":2}}"#)),
            &[],
            200,
        );
        let over_cli = cli(
            &setup,
            &[
                "route",
                "explain",
                "--profile",
                profile,
                "--tenant",
                "a",
                "--vcpus",
                "2",
            ],
        );
        same(&over_cli, &over_http);
    }
}

/// A host with credits for tenant `a` and one sandbox created over HTTP with the
/// idempotency key `agree-1`: its answer, and its id.
fn with_a_sandbox(setup: &Setup) -> (Host, String, String) {
    let h = Host::start(setup);
    h.grant("a", "5.00");
    let created = http(
        &h,
        "POST",
        "/v1/sandboxes",
        TOKEN_A,
        Some(r#"{"profile":"saas-stub"}"#),
        &[("idempotency-key", "agree-1")],
        201,
    );
    let v: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = v["id"].as_str().unwrap().to_owned();
    (h, created, id)
}

#[test]
fn create_answers_the_same_sandbox() {
    let setup = Setup::new();
    let (_h, created, _) = with_a_sandbox(&setup);
    // The same key from the CLI (one key space per tenant on both surfaces) replays the
    // sandbox the HTTP create made.
    let replayed = cli(
        &setup,
        &[
            "sandbox",
            "create",
            "--profile",
            "saas-stub",
            "--tenant",
            "a",
            "--idempotency-key",
            "agree-1",
        ],
    );
    same(&replayed, &created);
}

#[test]
fn status_is_the_same_record() {
    let setup = Setup::new();
    let (h, _, id) = with_a_sandbox(&setup);
    let status = http(
        &h,
        "GET",
        &format!("/v1/sandboxes/{id}"),
        TOKEN_A,
        None,
        &[],
        200,
    );
    same(&cli(&setup, &["sandbox", "status", &id]), &status);
}

#[test]
fn destroy_answers_the_same_settlement() {
    let setup = Setup::new();
    let (h, _, id) = with_a_sandbox(&setup);
    // Destroy over HTTP; destroying again from the CLI answers the same settlement.
    let destroyed = http(
        &h,
        "DELETE",
        &format!("/v1/sandboxes/{id}"),
        TOKEN_A,
        None,
        &[],
        200,
    );
    same(&cli(&setup, &["sandbox", "destroy", &id]), &destroyed);
    let v: serde_json::Value = serde_json::from_str(&destroyed).unwrap();
    assert_eq!(v["state"], "destroyed", "{v}");
}

#[test]
fn credits_balances_and_a_keyed_grant_are_the_same() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    // The same grant key on both surfaces grants once and answers the same receipt.
    let granted = http(
        &h,
        "POST",
        "/v1/tenants/a/credits",
        ADMIN,
        Some(r#"{"amount":"7.50","note":"invoice 7"}"#),
        &[("idempotency-key", "invoice-7")],
        201,
    );
    let again = cli(
        &setup,
        &[
            "credits",
            "add",
            "a",
            "7.50",
            "--note",
            "invoice 7",
            "--idempotency-key",
            "invoice-7",
        ],
    );
    same(&again, &granted);
    let balances = http(&h, "GET", "/v1/credits", TOKEN_A, None, &[], 200);
    same(&cli(&setup, &["credits", "show", "a"]), &balances);
    let v: serde_json::Value = serde_json::from_str(&balances).unwrap();
    assert_eq!(v["balances"][0]["posted"], "7.5", "granted once: {v}");
}

#[test]
fn statement_pages_and_their_cursors_are_the_same() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    h.grant("a", "5.00");
    for _ in 0..2 {
        let (s, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"saas-stub"}"#);
        assert_eq!(s, 201, "{v}");
        let (s, _) = h.delete(
            &format!("/v1/sandboxes/{}", v["id"].as_str().unwrap()),
            TOKEN_A,
        );
        assert_eq!(s, 200);
    }
    let whole = http(&h, "GET", "/v1/credits/entries", TOKEN_A, None, &[], 200);
    same(&cli(&setup, &["credits", "statement", "a"]), &whole);
    // Page by page: the same lines and the same cursors.
    let first = http(
        &h,
        "GET",
        "/v1/credits/entries?limit=2",
        TOKEN_A,
        None,
        &[],
        200,
    );
    same(
        &cli(&setup, &["credits", "statement", "a", "--limit", "2"]),
        &first,
    );
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let next = v["next"].as_str().expect("more lines than one page");
    let second = http(
        &h,
        "GET",
        &format!("/v1/credits/entries?limit=2&after={next}"),
        TOKEN_A,
        None,
        &[],
        200,
    );
    same(
        &cli(
            &setup,
            &["credits", "statement", "a", "--limit", "2", "--after", next],
        ),
        &second,
    );
}
