//! The router in-process (`oneshot`, no socket) over a real [`App`]: real components
//! (saas-stub, the misbehave guest), a real SQLite ledger in a temp folder. One test per
//! error status of docs/api.md, each asserting the status, the stable code and the
//! details a client reads; the binary-on-loopback tests in `tests/http_*.rs` cover the
//! rest of the service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::auth::{Principal, TokenSet};
use super::{AppState, router};
use crate::app::{App, AppOptions};
use crate::domain::TenantId;
use crate::settings::Settings;

const TENANT: &str = "tenant-a-token-0123456789";
const OTHER: &str = "tenant-b-token-0123456789";
const ADMIN: &str = "admin-token-0123456789abc";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn built(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(
        p.is_file(),
        "{rel} is missing: run `make extensions` (scripts/build-extensions.sh) first"
    );
    p
}

/// A host folder: saas-stub; misbehave as `flaky` (create refused for good), as `frail`
/// (destroy unavailable) and as `gone` (removed later); profiles routing to each.
struct Fixture {
    dir: tempfile::TempDir,
}

const PROFILE: &str = "template = \"base\"\nmax_duration_secs = 600\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"explicit\"\nfallback = false\n";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("extensions");
        let prof = dir.path().join("profiles");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::create_dir_all(&prof).unwrap();
        std::fs::copy(
            built("extensions/saas-stub.wasm"),
            ext.join("saas-stub.wasm"),
        )
        .unwrap();
        std::fs::copy(
            built("tests/guests/misbehave.wasm"),
            ext.join("misbehave.wasm"),
        )
        .unwrap();
        for (id, config) in [
            ("flaky", "mode = \"fail-unauthorized\""),
            (
                "frail",
                "mode = \"fail-unavailable\"\nfunctions = \"destroy\"",
            ),
            ("gone", "mode = \"ok\""),
        ] {
            std::fs::write(
                ext.join(format!("{id}.toml")),
                format!("component = \"misbehave.wasm\"\nid = \"{id}\"\n\n[config]\n{config}\n"),
            )
            .unwrap();
        }
        std::fs::copy(
            repo().join("profiles/saas-stub.toml"),
            prof.join("saas-stub.toml"),
        )
        .unwrap();
        for id in ["flaky", "frail", "gone"] {
            std::fs::write(
                prof.join(format!("{id}.toml")),
                format!("id = \"{id}\"\n{PROFILE}explicit = \"{id}\"\n"),
            )
            .unwrap();
        }
        Self { dir }
    }

    fn settings(&self) -> Settings {
        Settings {
            extensions_dir: self.dir.path().join("extensions"),
            profiles_dir: self.dir.path().join("profiles"),
            state_dir: self.dir.path().join("state"),
        }
    }

    fn app(&self) -> App {
        let options = AppOptions {
            cache_dir: Some(repo().join("target/test-cache/http-handlers")),
            deliver_after_settle: false,
            ..AppOptions::default()
        };
        App::open(&self.settings(), options)
    }
}

fn state(app: App) -> AppState {
    let mut tokens = TokenSet::new();
    tokens.insert(TENANT, Principal::Tenant(TenantId::parse("a").unwrap()));
    tokens.insert(OTHER, Principal::Tenant(TenantId::parse("b").unwrap()));
    tokens.insert(ADMIN, Principal::Admin);
    AppState {
        app,
        tokens: Arc::new(tokens),
        metrics: None,
        metrics_tokens: None,
        draining: Arc::new(AtomicBool::new(false)),
        writers: Arc::new(tokio::sync::Semaphore::new(4)),
    }
}

/// Sends one request through the router; the status and the JSON body.
async fn send(
    s: &AppState,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = router(s.clone(), 4096).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A request without a body or extra headers.
async fn bare(s: &AppState, method: Method, path: &str, token: &str) -> (StatusCode, Value) {
    send(s, method, path, Some(token), None, &[]).await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn grant(s: &AppState, tenant: &str, amount: &str) {
    let (st, v) = send(
        s,
        Method::POST,
        &format!("/v1/tenants/{tenant}/credits"),
        Some(ADMIN),
        Some(&format!("{{\"amount\":\"{amount}\"}}")),
        &[],
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

async fn create(s: &AppState, profile: &str) -> (StatusCode, Value) {
    send(
        s,
        Method::POST,
        "/v1/sandboxes",
        Some(TENANT),
        Some(&format!("{{\"profile\":\"{profile}\"}}")),
        &[],
    )
    .await
}

#[tokio::test]
async fn bad_requests_are_400_and_name_the_field() {
    let f = Fixture::new();
    let s = state(f.app());
    // (method, path, token, body, the field the error names)
    type Case<'a> = (Method, &'a str, &'a str, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (
            Method::POST,
            "/v1/sandboxes",
            TENANT,
            Some(r#"{"profile":"#),
            None,
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            TENANT,
            Some(r#"{"profile":"saas-stub","vcpus":"two"}"#),
            Some("vcpus"),
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            TENANT,
            Some(r#"{"profile":"saas-stub","colour":1}"#),
            Some("colour"),
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            TENANT,
            Some(r#"{"profile":"nope"}"#),
            Some("profile"),
        ),
        (
            Method::POST,
            "/v1/sandboxes",
            TENANT,
            Some(r#"{"profile":"saas-stub","vcpus":0}"#),
            Some("vcpus"),
        ),
        (
            Method::GET,
            "/v1/sandboxes?limit=0",
            TENANT,
            None,
            Some("limit"),
        ),
        (
            Method::GET,
            "/v1/sandboxes?state=dead",
            TENANT,
            None,
            Some("state"),
        ),
        (
            Method::GET,
            "/v1/sandboxes?after=zz",
            TENANT,
            None,
            Some("after"),
        ),
        (
            Method::GET,
            "/v1/credits/entries?offset=1",
            TENANT,
            None,
            Some("offset"),
        ),
        (
            Method::POST,
            "/v1/tenants/Not%20A%20Tenant/credits",
            ADMIN,
            Some(r#"{"amount":"1"}"#),
            Some("tenant"),
        ),
        (
            Method::POST,
            "/v1/tenants/a/credits",
            ADMIN,
            Some(r#"{"amount":"1e3"}"#),
            Some("amount"),
        ),
        (
            Method::POST,
            "/v1/tenants/a/credits",
            ADMIN,
            Some(r#"{"amount":5}"#),
            Some("amount"),
        ),
    ];
    for (method, path, token, body, field) in cases {
        let (st, v) = send(&s, method.clone(), path, Some(token), *body, &[]).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body:?}: {v}");
        assert_eq!(code(&v), "bad_request", "{v}");
        if let Some(field) = field {
            assert_eq!(v["error"]["field"], *field, "{path} {body:?}: {v}");
        }
    }
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/sandboxes",
        Some(TENANT),
        Some(r#"{"profile":"saas-stub"}"#),
        &[("idempotency-key", "")],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "Idempotency-Key", "{v}");
    // Over the router's 4 KiB limit: refused before it is parsed.
    let big = format!(
        r#"{{"profile":"saas-stub","metadata":{{"x":"{}"}}}}"#,
        "y".repeat(8000)
    );
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/sandboxes",
        Some(TENANT),
        Some(&big),
        &[],
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "body_too_large"),
        "{v}"
    );
}

#[tokio::test]
async fn a_missing_malformed_or_unknown_token_is_401_and_the_wrong_kind_403() {
    let f = Fixture::new();
    let s = state(f.app());
    for token in [None, Some("not-a-known-token-000000")] {
        let (st, v) = send(&s, Method::GET, "/v1/credits", token, None, &[]).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{v}"
        );
    }
    let req = Request::builder()
        .uri("/v1/credits")
        .header("authorization", "Basic abc")
        .body(Body::empty())
        .unwrap();
    let resp = router(s.clone(), 4096).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let (st, v) = bare(&s, Method::GET, "/v1/credits", ADMIN).await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/tenants/a/credits",
        Some(TENANT),
        Some(r#"{"amount":"1"}"#),
        &[],
    )
    .await;
    assert_eq!((st, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
}

#[tokio::test]
async fn credits_that_do_not_cover_the_hold_are_402_with_need_and_available() {
    let f = Fixture::new();
    let s = state(f.app());
    // No account at all.
    let (st, v) = create(&s, "saas-stub").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_credits"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ask the operator"),
        "{v}"
    );
    // Too little.
    grant(&s, "a", "0.001").await;
    let (st, v) = create(&s, "saas-stub").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::PAYMENT_REQUIRED, "insufficient_credits"),
        "{v}"
    );
    assert_eq!(v["error"]["available"]["amount"], "0.001", "{v}");
    assert_eq!(v["error"]["need"]["currency"], "USD", "{v}");
    // Nothing was created or held.
    let (_, c) = bare(&s, Method::GET, "/v1/credits", TENANT).await;
    assert_eq!(c["balances"][0]["held"], "0", "{c}");
}

#[tokio::test]
async fn unknown_ids_other_tenants_sandboxes_and_endpoints_are_404_and_methods_405() {
    let f = Fixture::new();
    let s = state(f.app());
    grant(&s, "a", "5").await;
    let (st, sb) = create(&s, "saas-stub").await;
    assert_eq!(st, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap();
    for (token, path) in [
        (TENANT, "/v1/sandboxes/sb-nope".to_owned()),
        (OTHER, format!("/v1/sandboxes/{id}")),
    ] {
        for method in [Method::GET, Method::DELETE] {
            let (st, v) = send(&s, method, &path, Some(token), None, &[]).await;
            assert_eq!(
                (st, code(&v)),
                (StatusCode::NOT_FOUND, "not_found"),
                "{path}: {v}"
            );
        }
    }
    let (st, v) = bare(&s, Method::GET, "/v1/nothing", TENANT).await;
    assert_eq!((st, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (st, v) = send(
        &s,
        Method::PUT,
        "/v1/sandboxes",
        Some(TENANT),
        Some("{}"),
        &[],
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn conflicts_are_409_idempotency_wrong_state_and_busy() {
    let f = Fixture::new();
    let s = state(f.app());
    grant(&s, "a", "5").await;
    let key = [("idempotency-key", "job-1")];
    let body = r#"{"profile":"saas-stub"}"#;
    let (st, first) = send(
        &s,
        Method::POST,
        "/v1/sandboxes",
        Some(TENANT),
        Some(body),
        &key,
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{first}");
    let (st, v) = send(
        &s,
        Method::POST,
        "/v1/sandboxes",
        Some(TENANT),
        Some(r#"{"profile":"saas-stub","vcpus":2}"#),
        &key,
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::CONFLICT, "idempotency_conflict"),
        "{v}"
    );

    // A create the extension refused for good leaves a failed sandbox: 503 create_failed
    // with its attempts; destroying it is 409 wrong_state naming the state.
    let (st, v) = create(&s, "flaky").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "create_failed"),
        "{v}"
    );
    let failed = v["error"]["sandbox"]["id"].as_str().unwrap().to_owned();
    assert_eq!(v["error"]["sandbox"]["state"], "failed", "{v}");
    let (st, v) = bare(
        &s,
        Method::DELETE,
        &format!("/v1/sandboxes/{failed}"),
        TENANT,
    )
    .await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "wrong_state"), "{v}");
    assert_eq!(v["error"]["state"], "failed");

    // A sandbox another live process is destroying: 409 busy.
    let id = first["id"].as_str().unwrap().to_owned();
    let other = f.app();
    other.reconcile().unwrap();
    let run = f.settings().state_dir.join("run");
    let mine: Vec<String> = lock_owners(&run);
    assert_eq!(mine.len(), 2, "two managers, two locks: {mine:?}");
    // Whichever lock is not the first app's: the first app opened first, so its lock
    // file is the older one (ids are time-ordered).
    let owner = mine.iter().max().unwrap().clone();
    set_row(
        &f.settings().ledger_path(),
        &id,
        |doc| {
            doc["state"] = "destroying".into();
        },
        Some(("destroying", &owner)),
    );
    let (st, v) = bare(&s, Method::DELETE, &format!("/v1/sandboxes/{id}"), TENANT).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "busy"), "{v}");
    drop(other);
}

#[tokio::test]
async fn extension_failures_are_502_and_unavailable_backends_503() {
    let f = Fixture::new();
    let s = state(f.app());
    grant(&s, "a", "5").await;
    // The extension's destroy fails: 502, and the sandbox stays tracked.
    let (st, sb) = create(&s, "frail").await;
    assert_eq!(st, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap();
    let (st, v) = bare(&s, Method::DELETE, &format!("/v1/sandboxes/{id}"), TENANT).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_GATEWAY, "extension_failed"),
        "{v}"
    );
    let (st, v) = bare(&s, Method::GET, &format!("/v1/sandboxes/{id}"), TENANT).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["state"], "destroying", "{v}");

    // Nothing can serve the profile: 503 with every candidate's reason.
    std::fs::write(
        f.settings().profiles_dir.join("nowhere.toml"),
        format!("id = \"nowhere\"\n{PROFILE}explicit = \"ghost\"\n"),
    )
    .unwrap();
    s.app.reload_profiles().unwrap();
    let (st, v) = create(&s, "nowhere").await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "no_backend_available"),
        "{v}"
    );
    assert_eq!(v["error"]["candidates"][0]["extension_id"], "ghost", "{v}");

    // The sandbox's extension is not loaded in this process: 503 extension_missing.
    let (st, sb) = create(&s, "gone").await;
    assert_eq!(st, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap();
    std::fs::remove_file(f.settings().extensions_dir.join("gone.toml")).unwrap();
    let later = state(f.app());
    let (st, v) = bare(
        &later,
        Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        TENANT,
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "extension_missing"),
        "{v}"
    );

    // No metrics recorder in this process.
    let (st, v) = send(&s, Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "metrics_unavailable")
    );
}

#[tokio::test]
async fn a_storage_failure_is_500_with_the_details_only_in_the_log() {
    let f = Fixture::new();
    let s = state(f.app());
    grant(&s, "a", "5").await;
    let (st, sb) = create(&s, "saas-stub").await;
    assert_eq!(st, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap();
    let ledger = f.settings().ledger_path();
    let conn = rusqlite::Connection::open(&ledger).unwrap();
    conn.execute(
        "UPDATE manager_sandboxes SET doc = 'not json' WHERE id = ?1",
        [id],
    )
    .unwrap();
    let (st, v) = bare(&s, Method::GET, &format!("/v1/sandboxes/{id}"), TENANT).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains(&ledger.display().to_string()),
        "a path leaked: {message}"
    );
}

/// The owner ids of the live manager locks in `run`.
fn lock_owners(run: &Path) -> Vec<String> {
    std::fs::read_dir(run)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            Some(
                name.strip_prefix("manager-")?
                    .strip_suffix(".lock")?
                    .to_owned(),
            )
        })
        .collect()
}

/// Rewrites one status row as another process would have left it.
fn set_row(db: &Path, id: &str, edit: impl FnOnce(&mut Value), columns: Option<(&str, &str)>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let doc: String = conn
        .query_row(
            "SELECT doc FROM manager_sandboxes WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let mut doc: Value = serde_json::from_str(&doc).unwrap();
    edit(&mut doc);
    conn.execute(
        "UPDATE manager_sandboxes SET doc = ?2 WHERE id = ?1",
        [id, &doc.to_string()],
    )
    .unwrap();
    if let Some((state, owner)) = columns {
        conn.execute(
            "UPDATE manager_sandboxes SET state = ?2, owner = ?3 WHERE id = ?1",
            [id, state, owner],
        )
        .unwrap();
    }
}
