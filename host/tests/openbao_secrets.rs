//! Operator secrets read from a real OpenBao (dev server, KV v2) by the real
//! `sandboxer-host` binary, for the real E2B component against the fake E2B API: the key
//! in OpenBao is the one the fake receives; a key rotated in OpenBao reaches the next
//! create without a restart; OpenBao down at start skips only that extension, with a
//! reason naming the secret path (never the value), and the host loads it by itself once
//! OpenBao answers; the key never lands in the state folder's files or the host's log.

#[path = "support/http_host.rs"]
mod http_host;
mod support;

use std::path::Path;
use std::time::Duration;

use fake_e2b::FakeE2b;
use http_host::{ADMIN, Host, Setup, TOKEN_A};
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
    let s = Setup::with_extensions(&["saas-stub.wasm"]);
    std::fs::write(
        s.extensions().join("e2b.toml"),
        format!(
            "component = {:?}\nid = \"e2b\"\ncall_timeout_ms = 10000\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [secrets]\napi_key = {{ openbao = \"{path}\", key = \"api_key\" }}\n[config]\nbase_url = \"{}\"\n",
            support::built("extensions/e2b.wasm").display().to_string(),
            fake.base_url()
        ),
    )
    .unwrap();
    std::fs::write(s.profiles().join("e2b-only.toml"), E2B_ONLY).unwrap();
    s.write_config(&bao.config(refresh_secs));
    s
}

/// Creates a sandbox on `profile` for tenant a and destroys it; returns the sandbox.
fn create_and_destroy(h: &Host, profile: &str) -> Value {
    let (s, sb) = h.post(
        "/v1/sandboxes",
        TOKEN_A,
        &format!("{{\"profile\":\"{profile}\"}}"),
    );
    assert_eq!(s, 201, "{sb}\n{}", h.log.lock().unwrap());
    let id = sb["id"].as_str().unwrap();
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
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
