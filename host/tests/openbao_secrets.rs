//! Operator secrets read from a real OpenBao (dev server, KV v2) by the real
//! `sandboxer-host` binary, for the real E2B component against the fake E2B API: the key
//! in OpenBao is the one the fake receives; a key rotated in OpenBao reaches the next
//! create without a restart; OpenBao down at start skips only that extension, with a
//! reason naming the secret path (never the value), and the host loads it by itself once
//! OpenBao answers; the key never lands in the state folder's files or the host's log.
//!
//! Tenants' own keys (BYOK): a tenant stores its key through `PUT /v1/keys/e2b` (written
//! to OpenBao under its own path), and from then on every call of that tenant's
//! sandboxes carries its key while another tenant's carry the operator's, under
//! concurrent interleaved creates and destroys; bad key bodies are refused with nothing
//! written; the key shows up in no answer, log or state file.

#[path = "support/http_host.rs"]
mod http_host;
mod support;

use std::path::Path;
use std::time::Duration;

use fake_e2b::FakeE2b;
use http_host::{ADMIN, Host, Setup, TOKEN_A, TOKEN_B};
use serde_json::Value;
use support::openbao::{self, OpenBaoAddr, OpenBaoServer};

const E2B_ONLY: &str = r#"
id = "e2b-only"
description = "E2B, nothing else"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 512
[route]
strategy = "explicit"
explicit = "e2b"
fallback = false
"#;

/// A host folder with the saas-stub, an `e2b` sidecar whose key is read from OpenBao at
/// `path`, and the `e2b-only` profile; the config points at `bao`.
fn setup(bao: &OpenBaoAddr, fake: &FakeE2b, path: &str, refresh_secs: u64) -> Setup {
    setup_with(bao, fake, path, refresh_secs, "")
}

/// [`setup`] with `sidecar_extra` at the top of the sidecar and tenants' keys under
/// `PATH-tenants/` (each test its own).
fn setup_with(
    bao: &OpenBaoAddr,
    fake: &FakeE2b,
    path: &str,
    refresh_secs: u64,
    sidecar_extra: &str,
) -> Setup {
    let s = Setup::with_extensions(&["saas-stub.wasm"]);
    std::fs::write(
        s.extensions().join("e2b.toml"),
        format!(
            "component = {:?}\nid = \"e2b\"\ncall_timeout_ms = 10000\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n{sidecar_extra}\n\
             [secrets]\napi_key = {{ openbao = \"{path}\", key = \"api_key\" }}\n[config]\nbase_url = \"{}\"\n",
            support::built("extensions/e2b.wasm").display().to_string(),
            fake.base_url()
        ),
    )
    .unwrap();
    std::fs::write(s.profiles().join("e2b-only.toml"), E2B_ONLY).unwrap();
    s.write_config(&format!(
        "{}tenant_prefix = \"{path}-tenants\"\n",
        bao.config(refresh_secs)
    ));
    s
}

/// Stores `own` as tenant a's key for e2b through `PUT /v1/keys/e2b`; the answer.
fn put_own_key(h: &Host, own: &str) -> Value {
    let (st, v) = h.call(
        "PUT",
        "/v1/keys/e2b",
        Some(TOKEN_A),
        Some(&format!("{{\"api_key\":\"{own}\"}}")),
        &[],
    );
    assert_eq!(st, 200, "{v}");
    v
}

/// A host folder whose e2b takes tenants' keys (`extra` sidecar lines), with the
/// operator's key `operator` at `path` in `bao`, and a fake E2B that accepts it and `own`.
fn byok_setup(
    bao: &OpenBaoAddr,
    path: &str,
    (operator, own): (&str, &str),
    refresh_secs: u64,
    extra: &str,
) -> (FakeE2b, Setup) {
    bao.write(path, &[("api_key", operator)]);
    let fake = FakeE2b::start(operator).unwrap();
    fake.accept_key(own);
    let s = setup_with(
        bao,
        &fake,
        path,
        refresh_secs,
        &format!("byok = [\"api_key\"]\n{extra}"),
    );
    (fake, s)
}

/// Creates a sandbox on `profile` for tenant a and destroys it; returns the sandbox.
fn create_and_destroy(h: &Host, profile: &str) -> Value {
    create_and_destroy_as(h, TOKEN_A, profile)
}

/// [`create_and_destroy`] for the tenant of `token`.
fn create_and_destroy_as(h: &Host, token: &str, profile: &str) -> Value {
    let (s, sb) = h.post(
        "/v1/sandboxes",
        token,
        &format!("{{\"profile\":\"{profile}\"}}"),
    );
    assert_eq!(s, 201, "{sb}\n{}", h.log.lock().unwrap());
    let id = sb["id"].as_str().unwrap();
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), token);
    assert!(s == 200 || s == 202, "{s} {v}");
    sb
}

/// The API keys the fake received on create calls, in order.
fn create_keys(fake: &FakeE2b) -> Vec<String> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/sandboxes") && !r.envd)
        .filter_map(|r| r.api_key)
        .collect()
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

fn extension_row(h: &Host, id: &str) -> Option<Value> {
    let (s, v) = h.get("/v1/extensions", ADMIN);
    assert_eq!(s, 200, "{v}");
    v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

#[test]
fn the_operator_key_comes_from_openbao_and_a_rotation_needs_no_restart() {
    let bao = openbao::shared();
    let (k1, k2) = ("e2b_from_openbao_k1_5d1c", "e2b_rotated_in_openbao_k2_93af");
    bao.write("sandboxer/e2b-rotation", &[("api_key", k1)]);
    let fake = FakeE2b::start(k1).unwrap();
    let s = setup(&bao, &fake, "sandboxer/e2b-rotation", 1);
    let h = Host::start(&s);
    h.grant("a", "10");

    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [k1]);

    // Rotated in OpenBao (the provider accepts the new key): no restart, no reload.
    fake.accept_key(k2);
    bao.write("sandboxer/e2b-rotation", &[("api_key", k2)]);
    std::thread::sleep(Duration::from_millis(1100));
    create_and_destroy(&h, "e2b-only");
    let keys = create_keys(&fake);
    assert_eq!(keys.last().map(String::as_str), Some(k2), "{keys:?}");
    // Every later create carries the new key (the instances of the old one are retired).
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake).last().map(String::as_str), Some(k2));

    let log = h.log.lock().unwrap().clone();
    for k in [k1, k2] {
        assert!(!log.contains(k), "a key is in the host's log");
        assert_eq!(files_containing(&s.state(), k), Vec::<String>::new());
        let (_, sandboxes) = h.get("/v1/sandboxes", TOKEN_A);
        assert!(!sandboxes.to_string().contains(k));
    }
    assert!(h.terminate());
}

#[test]
fn openbao_down_skips_only_its_extension_and_the_host_loads_it_when_openbao_returns() {
    let port = openbao::free_port();
    let mut bao = OpenBaoServer::stopped_on(port);
    let key = "e2b_after_the_outage_key_61be";
    let fake = FakeE2b::start(key).unwrap();
    let s = setup(&bao.addr, &fake, "sandboxer/e2b-outage", 1);
    let h = Host::start(&s);
    h.grant("a", "10");

    // Skipped, with a reason that names the secret and says it is retried.
    let row = extension_row(&h, "e2b").expect("a row for the skipped e2b");
    assert_eq!(row["status"], "skipped", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains("secrets.api_key"), "{reason}");
    assert!(reason.contains("sandboxer/e2b-outage"), "{reason}");
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(reason.contains("retried"), "{reason}");
    // The others serve.
    create_and_destroy(&h, "saas-stub");
    let (st, v) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"e2b-only"}"#);
    assert!((400..600).contains(&st) && st != 500, "{st} {v}");

    // Up, but the secret is not written yet: still skipped, now for the missing secret.
    bao.resume();
    h.wait_for(Duration::from_secs(20), || {
        let row = extension_row(&h, "e2b")?;
        let reason = row["reason"].as_str()?.to_owned();
        reason
            .contains("no secret at secret/sandboxer/e2b-outage")
            .then_some(())
    });
    // Written: the host loads it by itself, and its calls carry the key.
    bao.addr.write("sandboxer/e2b-outage", &[("api_key", key)]);
    h.wait_for(Duration::from_secs(20), || {
        let row = extension_row(&h, "e2b")?;
        (row["status"] == "loaded").then_some(())
    });
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [key]);

    // OpenBao down again: the loaded extension keeps its last key and keeps serving.
    bao.stop();
    std::thread::sleep(Duration::from_millis(1100));
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [key, key]);

    let log = h.log.lock().unwrap().clone();
    assert!(!log.contains(key), "the key is in the host's log");
    assert_eq!(files_containing(&s.state(), key), Vec::<String>::new());
    assert!(h.terminate());
}

/// The tenant a request to the fake was made for: from the create body's metadata, else
/// from the sandbox its path names.
fn tenant_of(fake: &FakeE2b, r: &fake_e2b::RecordedRequest) -> Option<String> {
    if let Some(t) = r
        .body
        .as_ref()
        .and_then(|b| b["metadata"]["sandboxer_tenant"].as_str())
    {
        return Some(t.to_owned());
    }
    let id = r
        .path
        .strip_prefix("/sandboxes/")?
        .split(['/', '?'])
        .next()?;
    fake.sandbox(id)?.metadata.get("sandboxer_tenant").cloned()
}

#[test]
fn a_tenants_own_key_reaches_only_its_own_calls() {
    let bao = openbao::shared();
    let (operator, own) = (
        "e2b_operator_key_for_byok_3e7a",
        "e2b_tenant_a_own_key_c4d2",
    );
    let (fake, s) = byok_setup(&bao, "sandboxer/e2b-byok", (operator, own), 60, "");
    let h = Host::start(&s);
    h.grant("a", "50");
    h.grant("b", "50");

    let (st, v) = h.get("/v1/keys", TOKEN_A);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["keys"][0]["extension"], "e2b", "{v}");
    assert_eq!(v["keys"][0]["set"], false, "{v}");

    let v = put_own_key(&h, own);
    assert_eq!(v["set"], true, "{v}");
    assert!(
        v["fingerprint"].as_str().unwrap().starts_with("sha256:"),
        "{v}"
    );
    assert!(!v.to_string().contains(own));
    // It is in OpenBao, under tenant a's own path; b has none.
    let stored = bao.read("sandboxer/e2b-byok-tenants/a/e2b").unwrap();
    assert_eq!(stored["api_key"], own);
    assert!(bao.read("sandboxer/e2b-byok-tenants/b/e2b").is_none());
    let (_, v) = h.get("/v1/keys", TOKEN_B);
    assert_eq!(v["keys"][0]["set"], false, "{v}");

    // Interleaved, concurrent creates and destroys of both tenants.
    std::thread::scope(|scope| {
        for i in 0..6 {
            let h = &h;
            scope.spawn(move || {
                let token = if i % 2 == 0 { TOKEN_A } else { TOKEN_B };
                for _ in 0..2 {
                    let (st, sb) = h.post("/v1/sandboxes", token, r#"{"profile":"e2b-only"}"#);
                    assert_eq!(st, 201, "{sb}");
                    let id = sb["id"].as_str().unwrap();
                    assert!(!sb.to_string().contains(own));
                    let (st, v) = h.delete(&format!("/v1/sandboxes/{id}"), token);
                    assert!(st == 200 || st == 202, "{st} {v}");
                }
            });
        }
    });
    let api: Vec<_> = fake.requests().into_iter().filter(|r| !r.envd).collect();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for r in &api {
        let tenant = tenant_of(&fake, r).unwrap_or_else(|| panic!("whose is {r:?}?"));
        let want = if tenant == "a" { own } else { operator };
        assert_eq!(
            r.api_key.as_deref(),
            Some(want),
            "{tenant}: {} {}",
            r.method,
            r.path
        );
        *seen.entry(tenant).or_default() += 1;
    }
    // 6 creates and 6 destroys each, at least.
    assert!(seen.get("a").is_some_and(|n| *n >= 12), "{seen:?}");
    assert!(seen.get("b").is_some_and(|n| *n >= 12), "{seen:?}");

    // Removed: a's next calls carry the operator's key again.
    let (st, v) = h.delete("/v1/keys/e2b", TOKEN_A);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["set"], false, "{v}");
    assert!(bao.read("sandboxer/e2b-byok-tenants/a/e2b").is_none());
    let before = fake.requests().len();
    create_and_destroy(&h, "e2b-only");
    let after: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|r| !r.envd)
        .cloned()
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|r| r.api_key.as_deref() == Some(operator)),
        "{after:?}"
    );

    let log = h.log.lock().unwrap().clone();
    for k in [operator, own] {
        assert!(!log.contains(k), "a key is in the host's log");
        assert_eq!(files_containing(&s.state(), k), Vec::<String>::new());
    }
    for token in [TOKEN_A, ADMIN] {
        let (_, v) = h.get("/v1/sandboxes", token);
        assert!(!v.to_string().contains(own));
        let (_, v) = h.get("/v1/extensions", token);
        assert!(!v.to_string().contains(own) && !v.to_string().contains(operator));
    }
    assert!(h.terminate());
}

#[test]
fn bad_key_bodies_are_refused_and_nothing_is_written() {
    let bao = openbao::shared();
    bao.write(
        "sandboxer/e2b-badkeys",
        &[("api_key", "e2b_operator_badkeys_0000")],
    );
    let fake = FakeE2b::start("e2b_operator_badkeys_0000").unwrap();
    let s = setup_with(
        &bao,
        &fake,
        "sandboxer/e2b-badkeys",
        60,
        "byok = [\"api_key\"]",
    );
    let h = Host::start(&s);
    let put = |ext: &str, body: &str| {
        h.call(
            "PUT",
            &format!("/v1/keys/{ext}"),
            Some(TOKEN_A),
            Some(body),
            &[],
        )
    };
    for (ext, body, needle) in [
        ("e2b", r#"{"api_key":""}"#, "empty"),
        ("e2b", r#"{"api_key":"   "}"#, "empty"),
        ("e2b", r#"{}"#, "needs the key field"),
        (
            "e2b",
            r#"{"api_key":"e2b_x_secret_1","region":"eu"}"#,
            "takes no key field",
        ),
        ("e2b", r#"{"api_key":7}"#, ""),
        (
            "saas-stub",
            r#"{"api_key":"e2b_x_secret_2"}"#,
            "does not take tenants' own keys",
        ),
        ("nope", r#"{"api_key":"e2b_x_secret_3"}"#, "no extension"),
        (
            "..%2Fb%2Fe2b",
            r#"{"api_key":"e2b_x_secret_4"}"#,
            "no extension",
        ),
    ] {
        let (st, v) = put(ext, body);
        assert_eq!(st, 400, "{ext} {body}: {v}");
        let text = v.to_string();
        assert!(text.contains(needle), "{ext} {body}: {text}");
        assert!(!text.contains("e2b_x_secret"), "{text}");
    }
    // Tenant b's key cannot be written by a: the path is a's own, whatever is asked.
    assert!(bao.read("sandboxer/e2b-badkeys-tenants/a/e2b").is_none());
    assert!(bao.read("sandboxer/e2b-badkeys-tenants/b/e2b").is_none());
    let (st, _) = h.call(
        "PUT",
        "/v1/keys/e2b",
        Some(ADMIN),
        Some(r#"{"api_key":"e2b_x_admin"}"#),
        &[],
    );
    assert!(st == 401 || st == 403, "{st}");
    let (_, v) = h.get("/v1/keys", TOKEN_A);
    assert_eq!(v["keys"][0]["set"], false, "{v}");
    let log = h.log.lock().unwrap().clone();
    assert!(
        !log.contains("e2b_x_secret"),
        "a refused key is in the host's log"
    );
    assert!(h.terminate());
}

#[test]
fn a_byok_sandbox_is_destroyed_on_the_tenants_account_while_openbao_is_down() {
    let mut bao = OpenBaoServer::start();
    let (operator, own) = (
        "e2b_operator_key_outage_77aa",
        "e2b_tenant_a_key_outage_19bc",
    );
    // A short refresh: the tenant's key is due for a re-read when the destroy comes.
    let (fake, s) = byok_setup(&bao.addr, "sandboxer/e2b-byok-down", (operator, own), 1, "");
    let h = Host::start(&s);
    h.grant("a", "10");
    put_own_key(&h, own);
    let (st, sb) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"e2b-only"}"#);
    assert_eq!(st, 201, "{sb}");

    bao.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let id = sb["id"].as_str().unwrap();
    let (st, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert!(st == 200 || st == 202, "{st} {v}");
    let kills: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && !r.envd)
        .collect();
    assert_eq!(kills.len(), 1, "{kills:?}");
    assert_eq!(kills[0].api_key.as_deref(), Some(own));
    // The keys API says OpenBao is unreachable, naming no key.
    let (st, v) = h.get("/v1/keys", TOKEN_A);
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], "secret_store_unavailable", "{v}");
    assert!(!v.to_string().contains(own));
    assert!(h.terminate());
}

/// Runs `sandboxer keys ARGS` on `s` against `bao` with `stdin`; (success, stdout, stderr).
fn keys_cli(s: &Setup, bao: &OpenBaoAddr, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .args(["--extensions-dir", s.extensions().to_str().unwrap()])
        .args(["--profiles-dir", s.profiles().to_str().unwrap()])
        .args(["--state-dir", s.state().to_str().unwrap()])
        .arg("keys")
        .args(["--openbao-address", &bao.address])
        .args(["--tenant-prefix", "sandboxer/e2b-cli-tenants"])
        .args(args)
        .env("BAO_TOKEN", openbao::ROOT_TOKEN)
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_sets_lists_and_removes_a_tenants_key() {
    let bao = openbao::shared();
    bao.write(
        "sandboxer/e2b-cli",
        &[("api_key", "e2b_operator_cli_key_0a0a")],
    );
    let fake = FakeE2b::start("e2b_operator_cli_key_0a0a").unwrap();
    let s = setup_with(&bao, &fake, "sandboxer/e2b-cli", 60, "byok = [\"api_key\"]");
    let own = "e2b_tenant_key_through_the_cli_5f5f";
    let (ok, out, err) = keys_cli(
        &s,
        &bao,
        &["set", "a", "e2b"],
        &format!("{{\"api_key\":\"{own}\"}}"),
    );
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("sha256:") && !out.contains(own), "{out}");
    assert!(!err.contains(own), "the key is in the CLI's log");
    assert_eq!(
        bao.read("sandboxer/e2b-cli-tenants/a/e2b").unwrap()["api_key"],
        own
    );
    let (ok, out, _) = keys_cli(&s, &bao, &["--json", "list", "a"], "");
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["keys"][0]["set"], true, "{v}");
    // Bad input on stdin: refused, nothing changed.
    let (ok, _, err) = keys_cli(&s, &bao, &["set", "a", "e2b"], "api_key=e2b_plain_text_9");
    assert!(!ok && err.contains("JSON object"), "{err}");
    assert!(!err.contains("e2b_plain_text_9"), "{err}");
    let (ok, out, err) = keys_cli(&s, &bao, &["remove", "a", "e2b"], "");
    assert!(ok, "{out}\n{err}");
    assert!(bao.read("sandboxer/e2b-cli-tenants/a/e2b").is_none());
}

/// The meter event of sandbox `id` in the host's event log (written by the delivery
/// timer: waited for).
fn meter_event(h: &Host, s: &Setup, id: &str) -> Value {
    h.wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(s.state().join("events.jsonl")).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["data"]["sandbox_id"] == id)
    })
}

#[test]
fn a_byok_sandbox_is_billed_the_platform_fee_and_its_event_says_so() {
    let bao = openbao::shared();
    let (operator, own) = (
        "e2b_operator_key_billing_4b4b",
        "e2b_tenant_a_billing_key_6c6c",
    );
    let (_fake, s) = byok_setup(
        &bao,
        "sandboxer/e2b-billing",
        (operator, own),
        60,
        "byok_fee_percent = \"10\"\nbyok_fee_per_sandbox_hour = \"0.36\"",
    );
    let h = Host::start(&s);
    h.grant("a", "10");
    h.grant("b", "10");
    put_own_key(&h, own);

    let a = create_and_destroy(&h, "e2b-only");
    let b = create_and_destroy_as(&h, TOKEN_B, "e2b-only");
    let (ea, eb) = (
        meter_event(&h, &s, a["id"].as_str().unwrap()),
        meter_event(&h, &s, b["id"].as_str().unwrap()),
    );
    let dec = |v: &Value| rust_decimal::Decimal::from_str_exact(v.as_str().unwrap()).unwrap();
    // b: the provider's price, no BYOK marks.
    assert!(eb["data"].get("byok").is_none(), "{eb}");
    assert!(
        dec(&eb["data"]["amount_exact"]) > rust_decimal::Decimal::ZERO,
        "{eb}"
    );
    // a: 10% of the provider's price plus 0.36 per sandbox-hour of its lifetime.
    let d = &ea["data"];
    assert_eq!(d["byok"], true, "{ea}");
    let provider = dec(&d["provider_price"]);
    assert!(provider > rust_decimal::Decimal::ZERO, "{ea}");
    let hours = rust_decimal::Decimal::from(d["duration_ms"].as_u64().unwrap())
        / rust_decimal::Decimal::from(3_600_000);
    let want =
        provider * rust_decimal::Decimal::new(1, 1) + hours * rust_decimal::Decimal::new(36, 2);
    assert_eq!(dec(&d["amount_exact"]), want, "{ea}");
    let lines = d["line_items"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{ea}");
    assert!(
        lines[0]["description"]
            .as_str()
            .unwrap()
            .contains("provider price")
    );
    // The statement charges the fee, not the provider's price.
    let entry = |token: &str, id: &Value, kind: &str| {
        let (_, stmt) = h.get("/v1/credits/entries", token);
        let e = stmt["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["sandbox_id"] == *id && e["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} of {id} in {stmt}"));
        dec(&e["exact"])
    };
    assert_eq!(entry(TOKEN_A, &a["id"], "charge"), want, "{ea}");
    // The estimate (and so the hold) follows the same rule: 10% of the provider's
    // estimate plus 0.36 for the hour the profile allows.
    let estimate = |token: &str| {
        let x = explain(&h, token, r#"{"profile":"e2b-only"}"#);
        dec(&x["decision"]["attempts"][0]["estimate"]["total"]["amount"])
    };
    let (est_a, est_b) = (estimate(TOKEN_A), estimate(TOKEN_B));
    assert_eq!(
        est_a,
        est_b * rust_decimal::Decimal::new(1, 1) + rust_decimal::Decimal::new(36, 2)
    );
    let (hold_a, hold_b) = (
        entry(TOKEN_A, &a["id"], "hold"),
        entry(TOKEN_B, &b["id"], "hold"),
    );
    assert_eq!(hold_a * est_b, hold_b * est_a, "holds {hold_a} {hold_b}");
    assert!(!ea.to_string().contains(own));
    assert!(h.terminate());
}

/// Over the self-hosted `local-pool` and `e2b`: `prefer-self-hosted` puts the pool first
/// unless the tenant's own key ranks e2b first.
const BYOK_ROUTE: &str = r#"
id = "byok-route"
description = "the pool, or E2B"
template = "base"
max_duration_secs = 3600
[resources]
vcpus = 2
memory_mib = 512
[route]
strategy = "prefer-self-hosted"
candidates = ["local-pool", "e2b"]
"#;

/// Explains `body` for the tenant of `token` over HTTP.
fn explain(h: &Host, token: &str, body: &str) -> Value {
    let (st, v) = h.post("/v1/route/explain", token, body);
    assert_eq!(st, 200, "{v}");
    v
}

/// Whose key each candidate would use, by extension id.
fn keys_of(x: &Value) -> std::collections::BTreeMap<String, String> {
    let candidates = x["decision"]["candidates"]
        .as_array()
        .or_else(|| x["candidates"].as_array())
        .unwrap();
    candidates
        .iter()
        .map(|c| {
            (
                c["extension_id"].as_str().unwrap().to_owned(),
                c["key"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn first_attempt(x: &Value) -> &str {
    x["decision"]["attempts"][0]["extension_id"]
        .as_str()
        .unwrap_or("-")
}

#[test]
fn routing_prefers_requires_or_never_uses_the_tenants_own_key() {
    let bao = openbao::shared();
    let (operator, own) = (
        "e2b_operator_key_routing_1d1d",
        "e2b_tenant_a_routing_key_2e2e",
    );
    let (fake, s) = byok_setup(
        &bao,
        "sandboxer/e2b-routing",
        (operator, own),
        60,
        "byok_fee_percent = \"10\"",
    );
    std::fs::copy(
        support::built("tests/fixtures/extensions/local-pool.toml"),
        s.extensions().join("local-pool.toml"),
    )
    .unwrap();
    std::fs::write(s.profiles().join("byok-route.toml"), BYOK_ROUTE).unwrap();
    std::fs::write(
        s.profiles().join("e2b-own-key.toml"),
        E2B_ONLY
            .replace("id = \"e2b-only\"", "id = \"e2b-own-key\"")
            .replace("fallback = false", "fallback = false\nbyok = \"require\""),
    )
    .unwrap();
    let h = Host::start(&s);
    h.grant("a", "10");
    h.grant("b", "10");
    put_own_key(&h, own);

    // prefer (the default): a's key ranks e2b before the self-hosted pool; b's order is
    // the strategy's. Explain says whose key each would use.
    let xa = explain(&h, TOKEN_A, r#"{"profile":"byok-route"}"#);
    assert_eq!(xa["byok"], "prefer", "{xa}");
    assert_eq!(first_attempt(&xa), "e2b", "{xa}");
    let ka = keys_of(&xa);
    assert_eq!(ka["e2b"], "tenant", "{xa}");
    assert_eq!(ka["local-pool"], "none", "{xa}");
    let xb = explain(&h, TOKEN_B, r#"{"profile":"byok-route"}"#);
    assert_eq!(first_attempt(&xb), "local-pool", "{xb}");
    assert_eq!(keys_of(&xb)["e2b"], "operator", "{xb}");
    // never: a's order is the strategy's and e2b would use the operator's key.
    let xn = explain(&h, TOKEN_A, r#"{"profile":"byok-route","byok":"never"}"#);
    assert_eq!(first_attempt(&xn), "local-pool", "{xn}");
    assert_eq!(keys_of(&xn)["e2b"], "operator", "{xn}");

    // A create with never: the operator's key, the provider's price (no BYOK marks).
    let before = fake.requests().len();
    let (st, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        r#"{"profile":"e2b-only","byok":"never"}"#,
    );
    assert_eq!(st, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    let (st, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert!(st == 200 || st == 202, "{st} {v}");
    let calls: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|r| !r.envd)
        .cloned()
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(
        calls.iter().all(|r| r.api_key.as_deref() == Some(operator)),
        "{calls:?}"
    );
    let event = meter_event(&h, &s, &id);
    assert!(event["data"].get("byok").is_none(), "{event}");

    // require, from the profile: b has no key → 409 naming e2b and what to do, nothing
    // held; a's create runs on its own key.
    let (_, credits_before) = h.get("/v1/credits", TOKEN_B);
    let (st, v) = h.post("/v1/sandboxes", TOKEN_B, r#"{"profile":"e2b-own-key"}"#);
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["error"]["code"], "own_key_required", "{v}");
    assert_eq!(v["error"]["extensions"], serde_json::json!(["e2b"]), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("e2b") && msg.contains("PUT /v1/keys/"),
        "{msg}"
    );
    let (_, credits_after) = h.get("/v1/credits", TOKEN_B);
    assert_eq!(credits_before, credits_after);
    // The request may say otherwise: prefer runs b on the operator's key.
    let (st, v) = h.post(
        "/v1/sandboxes",
        TOKEN_B,
        r#"{"profile":"e2b-own-key","byok":"prefer"}"#,
    );
    assert_eq!(st, 201, "{v}");
    h.delete(
        &format!("/v1/sandboxes/{}", v["id"].as_str().unwrap()),
        TOKEN_B,
    );
    // require over a route with a candidate that takes no keys: the pool is dropped.
    let (st, v) = h.post(
        "/v1/sandboxes",
        TOKEN_B,
        r#"{"profile":"byok-route","byok":"require"}"#,
    );
    assert_eq!(st, 409, "{v}");
    let pool = v["error"]["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["extension_id"] == "local-pool")
        .cloned()
        .unwrap();
    assert_eq!(pool["reason"], "no-tenant-key", "{v}");
    assert_eq!(pool["takes_keys"], false, "{v}");
    let before = fake.requests().len();
    let (st, sb) = h.post("/v1/sandboxes", TOKEN_A, r#"{"profile":"e2b-own-key"}"#);
    assert_eq!(st, 201, "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert!(
        fake.requests()[before..]
            .iter()
            .filter(|r| !r.envd)
            .all(|r| r.api_key.as_deref() == Some(own))
    );
    assert_eq!(meter_event(&h, &s, &id)["data"]["byok"], true);

    // The CLI's explain shows the same, as a table and as JSON.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxer"))
            .args(["--extensions-dir", s.extensions().to_str().unwrap()])
            .args(["--profiles-dir", s.profiles().to_str().unwrap()])
            .args(["--state-dir", s.state().to_str().unwrap()])
            .args(args)
            .args(["--openbao-address", &bao.address])
            .args(["--tenant-prefix", "sandboxer/e2b-routing-tenants"])
            .env("BAO_TOKEN", openbao::ROOT_TOKEN)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&[
        "route",
        "explain",
        "--profile",
        "byok-route",
        "--tenant",
        "a",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let e2b_row = out
        .lines()
        .find(|l| l.contains("┆ e2b "))
        .unwrap_or_default();
    assert!(e2b_row.contains("┆ tenant "), "{out}");
    assert!(out.contains("byok prefer"), "{out}");
    assert!(out.contains("Would try: e2b → local-pool"), "{out}");
    let (code, out, err) = cli(&[
        "--json",
        "route",
        "explain",
        "--profile",
        "byok-route",
        "--tenant",
        "b",
    ]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let xb: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys_of(&xb)["e2b"], "operator", "{xb}");
    let (code, out, err) = cli(&[
        "route",
        "explain",
        "--profile",
        "e2b-own-key",
        "--tenant",
        "b",
    ]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(err.contains("own key") && err.contains("e2b"), "{err}");

    // No key in any answer, the log or the state files.
    for x in [&xa, &xb, &xn] {
        assert!(!x.to_string().contains(own) && !x.to_string().contains(operator));
    }
    let log = h.log.lock().unwrap().clone();
    for k in [operator, own] {
        assert!(!log.contains(k), "a key is in the host's log");
        assert_eq!(files_containing(&s.state(), k), Vec::<String>::new());
    }
    assert!(h.terminate());
}

/// Enables AppRole on the shared server (once) with a role whose tokens live `ttl`
/// seconds and may read `sandboxer/*`; its role id and a fresh secret id.
fn approle(bao: &OpenBaoAddr, role: &str, ttl: u32) -> (String, String) {
    let c = reqwest::blocking::Client::new();
    let a = &bao.address;
    let root = Some(openbao::ROOT_TOKEN);
    let enabled = c
        .get(format!("{a}/v1/sys/auth"))
        .header("X-Vault-Token", openbao::ROOT_TOKEN)
        .send()
        .unwrap()
        .json::<Value>()
        .unwrap();
    if enabled["approle/"].is_null() {
        openbao::api(
            &c,
            "POST",
            &format!("{a}/v1/sys/auth/approle"),
            root,
            &serde_json::json!({ "type": "approle" }),
        );
    }
    openbao::api(
        &c,
        "PUT",
        &format!("{a}/v1/sys/policies/acl/{role}"),
        root,
        &serde_json::json!({
            "policy": "path \"secret/data/sandboxer/*\" { capabilities = [\"read\"] }"
        }),
    );
    openbao::api(
        &c,
        "POST",
        &format!("{a}/v1/auth/approle/role/{role}"),
        root,
        &serde_json::json!({
            "token_policies": [role],
            "token_ttl": format!("{ttl}s"),
            "token_max_ttl": format!("{ttl}s"),
        }),
    );
    let role_id = openbao::api(
        &c,
        "GET",
        &format!("{a}/v1/auth/approle/role/{role}/role-id"),
        root,
        &Value::Null,
    )["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = openbao::api(
        &c,
        "POST",
        &format!("{a}/v1/auth/approle/role/{role}/secret-id"),
        root,
        &serde_json::json!({}),
    )["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (role_id, secret_id)
}

#[test]
fn an_approle_login_reads_the_key_and_logs_in_again_when_its_token_expires() {
    let bao = openbao::shared();
    let (k1, k2) = ("e2b_approle_key_one_3c3c", "e2b_approle_key_two_4d4d");
    bao.write("sandboxer/e2b-approle", &[("api_key", k1)]);
    // Tokens of 2 s: every create after the first few seconds needs a fresh login.
    let (role_id, secret_id) = approle(&bao, "sandboxer-host", 2);
    let fake = FakeE2b::start(k1).unwrap();
    fake.accept_key(k2);
    let s = setup(&bao, &fake, "sandboxer/e2b-approle", 1);
    std::fs::write(s.path().join("secret-id"), format!("{secret_id}\n")).unwrap();
    s.write_config(&format!(
        "[openbao]\naddress = \"{}\"\nrole_id = \"{role_id}\"\nsecret_id_file = \"secret-id\"\nrefresh_secs = 1\nretry_secs = 1\ntimeout_ms = 1000\n",
        bao.address
    ));
    let h = Host::start(&s);
    h.grant("a", "10");
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [k1]);

    // Past the first token's lifetime: the rotated key is read with a new login.
    bao.write("sandboxer/e2b-approle", &[("api_key", k2)]);
    std::thread::sleep(Duration::from_millis(2500));
    create_and_destroy(&h, "e2b-only");
    std::thread::sleep(Duration::from_millis(1100));
    create_and_destroy(&h, "e2b-only");
    let keys = create_keys(&fake);
    assert_eq!(keys.last().map(String::as_str), Some(k2), "{keys:?}");

    let log = h.log.lock().unwrap().clone();
    assert!(log.contains("logged in to OpenBao with AppRole"), "{log}");
    for secret in [secret_id.as_str(), k1, k2] {
        assert!(!log.contains(secret), "a secret is in the host's log");
        assert_eq!(files_containing(&s.state(), secret), Vec::<String>::new());
    }
    assert!(h.terminate());
}

#[test]
fn openbao_over_https_is_verified_against_the_ca_file() {
    let tls = openbao::TlsServer::start();
    let key = "e2b_key_over_https_5e5e";
    tls.write("sandboxer/e2b-tls", &[("api_key", key)]);
    let fake = FakeE2b::start(key).unwrap();
    let s = setup(&tls.server.addr, &fake, "sandboxer/e2b-tls", 60);
    // The CA the server wrote: trusted, the key is read over https.
    std::fs::copy(&tls.ca, s.path().join("bao-ca.pem")).unwrap();
    s.write_config(&format!(
        "{}ca_file = \"bao-ca.pem\"\n",
        tls.server.addr.config(60)
    ));
    let h = Host::start(&s);
    h.grant("a", "10");
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [key]);
    assert!(h.terminate());

    // A file without the server's CA (its own leaf certificate, which signs nothing):
    // the server is not trusted, the extension is skipped saying so.
    std::fs::copy(
        tls.ca.with_file_name("vault-cert.pem"),
        s.path().join("bao-ca.pem"),
    )
    .unwrap();
    let h = Host::start(&s);
    let row = extension_row(&h, "e2b").expect("a row for the skipped e2b");
    assert_eq!(row["status"], "skipped", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("sandboxer/e2b-tls") && reason.contains("TLS"),
        "{reason}"
    );
    assert!(!reason.contains(key));
    assert!(h.terminate());
}

#[test]
fn a_sealed_openbao_skips_the_extension_until_it_is_unsealed() {
    let sealed = openbao::SealedServer::start();
    let key = "e2b_key_behind_the_seal_6f6f";
    sealed.unseal();
    sealed.write_kv("sandboxer/e2b-sealed", &[("api_key", key)]);
    sealed.seal();
    let fake = FakeE2b::start(key).unwrap();
    let addr = &sealed.server.addr;
    let s = setup(addr, &fake, "sandboxer/e2b-sealed", 60);
    s.write_config(&format!(
        "[openbao]\naddress = \"{}\"\ntoken = \"{}\"\nrefresh_secs = 60\nretry_secs = 1\ntimeout_ms = 1000\ntenant_prefix = \"sandboxer/e2b-sealed-tenants\"\n",
        addr.address, sealed.root_token
    ));
    let h = Host::start(&s);
    h.grant("a", "10");
    let row = extension_row(&h, "e2b").expect("a row for the skipped e2b");
    assert_eq!(row["status"], "skipped", "{row}");
    let reason = row["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("is sealed"), "{reason}");
    assert!(
        reason.contains("secrets.api_key") && reason.contains("sandboxer/e2b-sealed"),
        "{reason}"
    );
    create_and_destroy(&h, "saas-stub");

    // Unsealed: loaded by itself, and its calls carry the key.
    sealed.unseal();
    h.wait_for(Duration::from_secs(20), || {
        (extension_row(&h, "e2b")?["status"] == "loaded").then_some(())
    });
    create_and_destroy(&h, "e2b-only");
    assert_eq!(create_keys(&fake), [key]);
    let log = h.log.lock().unwrap().clone();
    assert!(!log.contains(key) && !log.contains(&sealed.root_token));
    assert!(!reason.contains(key));
    assert!(h.terminate());
}
