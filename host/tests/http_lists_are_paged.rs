//! `GET /v1/sandboxes` and `GET /v1/credits/entries` answer bounded pages through the real
//! `sandboxer-host` on loopback (real saas-stub component, real SQLite file): complete and
//! duplicate-free under concurrent creates, private to the tenant, strict about their
//! parameters; the `sandboxer_sandboxes` gauge stays right; the CLI's `--limit` agrees.

#[path = "support/http_host.rs"]
mod http_host;

use std::collections::HashSet;

use http_host::{Host, Setup, TOKEN_A, TOKEN_B};
use serde_json::Value;

fn create(h: &Host, token: &str) -> String {
    let (s, v) = h.post("/v1/sandboxes", token, r#"{"profile":"saas-stub"}"#);
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn destroy(h: &Host, token: &str, id: &str) {
    let (s, v) = h.delete(&format!("/v1/sandboxes/{id}"), token);
    assert_eq!((s, v["state"].as_str()), (200, Some("destroyed")), "{v}");
}

/// One page: the rows under `key` and the `next` cursor (which must be present).
fn page(h: &Host, token: &str, path: &str, key: &str) -> (Vec<Value>, Option<String>) {
    let (s, v) = h.get(path, token);
    assert_eq!(s, 200, "{path}: {v}");
    let obj = v.as_object().unwrap();
    assert!(obj.contains_key("next"), "no `next` in {v}");
    let next = match &v["next"] {
        Value::Null => None,
        Value::String(c) => Some(c.clone()),
        other => panic!("next is neither a string nor null: {other}"),
    };
    (v[key].as_array().unwrap().clone(), next)
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// 400 naming `field`.
fn refused(h: &Host, token: &str, path: &str, field: &str) {
    let (s, v) = h.get(path, token);
    assert_eq!(
        (s, v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (400, Some("bad_request"), Some(field)),
        "{path}: {v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{path}: {message}");
}

/// The value of `sandboxer_sandboxes{state, extension}` in a scrape, if the series exists.
fn gauge(h: &Host, state: &str, extension: &str) -> Option<u64> {
    let text = h.metrics();
    let s = format!("state=\"{state}\"");
    let e = format!("extension=\"{extension}\"");
    text.lines()
        .find(|l| l.starts_with("sandboxer_sandboxes{") && l.contains(&s) && l.contains(&e))
        .map(|l| {
            let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
            v as u64
        })
}

fn created_ms(row: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(row["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[test]
fn sandbox_pages_are_complete_stable_and_private_and_the_gauge_counts_them() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    h.grant("a", "100.00");
    h.grant("b", "10.00");

    // 250 of A's (every fifth destroyed), 3 of B's.
    let original: Vec<String> = (0..250).map(|_| create(&h, TOKEN_A)).collect();
    for id in original.iter().step_by(5) {
        destroy(&h, TOKEN_A, id);
    }
    let theirs: Vec<String> = (0..3).map(|_| create(&h, TOKEN_B)).collect();

    // Three pages of 100, 100 and 50; more sandboxes are created between the pages.
    let (p1, next1) = page(&h, TOKEN_A, "/v1/sandboxes?limit=100", "sandboxes");
    let late: Vec<String> = (0..7).map(|_| create(&h, TOKEN_A)).collect();
    let c1 = next1.expect("a second page");
    let (p2, next2) = page(
        &h,
        TOKEN_A,
        &format!("/v1/sandboxes?limit=100&after={c1}"),
        "sandboxes",
    );
    let c2 = next2.expect("a third page");
    let _ = create(&h, TOKEN_A);
    let (p3, next3) = page(
        &h,
        TOKEN_A,
        &format!("/v1/sandboxes?after={c2}&limit=100"),
        "sandboxes",
    );
    assert_eq!((p1.len(), p2.len(), p3.len()), (100, 100, 50));
    assert_eq!(next3, None, "the last page has no next");
    let seen: Vec<String> = [&p1, &p2, &p3].iter().flat_map(|p| ids(p)).collect();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a sandbox appeared twice");
    // Exactly the original set: nothing skipped, none of the late ones.
    let want: HashSet<&String> = original.iter().collect();
    let missing: Vec<_> = want.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    // Newest first: by creation time, ties (same millisecond) by id, both descending.
    let rows: Vec<&Value> = p1.iter().chain(&p2).chain(&p3).collect();
    for w in rows.windows(2) {
        let (a, b) = (
            (created_ms(w[0]), &w[0]["id"]),
            (created_ms(w[1]), &w[1]["id"]),
        );
        assert!(
            a.0 > b.0 || (a.0 == b.0 && a.1.as_str() > b.1.as_str()),
            "{a:?} before {b:?}"
        );
    }
    assert!(p1.iter().chain(&p2).chain(&p3).all(|r| r["tenant"] == "a"));

    // Without a limit: 100 and a cursor; the newest ones created meanwhile come first.
    let (d, next) = page(&h, TOKEN_A, "/v1/sandboxes", "sandboxes");
    assert_eq!(d.len(), 100);
    assert!(next.is_some());
    let newest: HashSet<String> = ids(&d[..8]).into_iter().collect();
    assert!(late.iter().all(|id| newest.contains(id)), "{newest:?}");
    // The maximum takes everything: 250 + 8, then no next.
    let (all, next) = page(&h, TOKEN_A, "/v1/sandboxes?limit=1000", "sandboxes");
    assert_eq!((all.len(), next), (258, None));

    // A state filter pages too.
    let mut destroyed = Vec::new();
    let mut path = "/v1/sandboxes?state=destroyed&limit=20".to_owned();
    loop {
        let (rows, next) = page(&h, TOKEN_A, &path, "sandboxes");
        assert!(rows.iter().all(|r| r["state"] == "destroyed"));
        destroyed.extend(ids(&rows));
        match next {
            Some(c) => path = format!("/v1/sandboxes?state=destroyed&limit=20&after={c}"),
            None => break,
        }
    }
    assert_eq!(destroyed.len(), 50);

    // B sees only its own, and A's cursor is refused for B, on either list.
    let (b_rows, b_next) = page(&h, TOKEN_B, "/v1/sandboxes?limit=2", "sandboxes");
    assert_eq!(b_rows.len(), 2);
    let (b_rest, none) = page(
        &h,
        TOKEN_B,
        &format!("/v1/sandboxes?limit=2&after={}", b_next.unwrap()),
        "sandboxes",
    );
    assert_eq!(none, None);
    let mut b_ids: Vec<String> = ids(&b_rows).into_iter().chain(ids(&b_rest)).collect();
    b_ids.reverse();
    assert_eq!(b_ids, theirs);
    refused(&h, TOKEN_B, &format!("/v1/sandboxes?after={c1}"), "after");
    refused(
        &h,
        TOKEN_A,
        &format!("/v1/credits/entries?after={c1}"),
        "after",
    );

    // Bad parameters: 400 naming them, on both lists.
    for list in ["/v1/sandboxes", "/v1/credits/entries"] {
        for bad in ["0", "1001", "ten", "-1", "", "2.5"] {
            refused(&h, TOKEN_A, &format!("{list}?limit={bad}"), "limit");
        }
        refused(&h, TOKEN_A, &format!("{list}?limit=5&limit=6"), "limit");
        for bad in ["nothex", "abcd", "", "7331"] {
            refused(&h, TOKEN_A, &format!("{list}?after={bad}"), "after");
        }
        refused(&h, TOKEN_A, &format!("{list}?colour=red"), "colour");
        refused(&h, TOKEN_A, &format!("{list}?limit=5&offset=10"), "offset");
    }
    refused(&h, TOKEN_A, "/v1/credits/entries?state=running", "state");
    refused(&h, TOKEN_A, "/v1/sandboxes?state=sleeping", "state");

    // The gauge matches the store after creates and destroys, and drops to zero.
    assert_eq!(gauge(&h, "running", "saas-stub"), Some(200 + 8 + 3));
    assert_eq!(gauge(&h, "destroyed", "saas-stub"), Some(50));
    let running: Vec<String> = all
        .iter()
        .filter(|r| r["state"] == "running")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    for id in running.iter().take(40) {
        destroy(&h, TOKEN_A, id);
    }
    assert_eq!(gauge(&h, "running", "saas-stub"), Some(171));
    assert_eq!(gauge(&h, "destroyed", "saas-stub"), Some(90));
    for id in running.iter().skip(40) {
        destroy(&h, TOKEN_A, id);
    }
    for id in &theirs {
        destroy(&h, TOKEN_B, id);
    }
    // Nothing runs any more: the series stays, at zero (as before paging existed).
    assert_eq!(gauge(&h, "running", "saas-stub"), Some(0));
    assert_eq!(gauge(&h, "destroyed", "saas-stub"), Some(261));
    assert!(h.terminate(), "host did not exit cleanly");

    // The CLI reads the same store in pages: `--limit N` is the N newest, no limit is all.
    let list = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["--json", "sandbox", "list", "--tenant", "a"];
        a.extend_from_slice(args);
        let (ok, out, err) = setup.cli(&a);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        ids(v.as_array().unwrap())
    };
    let newest = list(&["--limit", "3"]);
    assert_eq!(newest, ids(&all[..3]));
    assert_eq!(list(&[]), ids(&all));
    let (ok, out, _) = setup.cli(&["sandbox", "list", "--tenant", "a", "--limit", "2"]);
    assert!(ok);
    assert!(
        out.contains(&newest[0]) && !out.contains(&newest[2]),
        "{out}"
    );
    assert!(out.contains("raise --limit"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
    let (ok, _, err) = setup.cli(&["sandbox", "list", "--limit", "0"]);
    assert!(!ok && err.contains("--limit"), "{err}");
}

#[test]
fn statement_pages_are_complete_and_private() {
    let setup = Setup::new();
    let h = Host::start(&setup);
    // Grants interleaved between the tenants: each statement is a sparse subsequence of
    // the ledger's transfers.
    for i in 0..23 {
        h.grant("a", &format!("{}.00", i + 1));
        h.grant("b", "1.00");
    }
    let a_sandbox = create(&h, TOKEN_A);
    destroy(&h, TOKEN_A, &a_sandbox);
    // 23 grants, a hold, a charge.
    let (all, next) = page(&h, TOKEN_A, "/v1/credits/entries?limit=1000", "entries");
    assert_eq!((all.len(), next), (25, None));
    let tid = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["transfer_id"].as_str().unwrap().to_owned())
            .collect()
    };

    let mut paged = Vec::new();
    let mut path = "/v1/credits/entries?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let (rows, next) = page(&h, TOKEN_A, &path, "entries");
        pages += 1;
        assert!(rows.len() <= 10);
        paged.extend(rows);
        if pages == 1 {
            // A transfer recorded between pages comes once, at the end.
            h.grant("a", "0.50");
        }
        match next {
            Some(c) => path = format!("/v1/credits/entries?after={c}&limit=10"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(paged.len(), 26);
    assert_eq!(
        tid(&paged[..25]),
        tid(&all),
        "oldest first, none missing or repeated"
    );
    assert_eq!(paged[25]["kind"], "grant");
    assert_eq!(paged[25]["posted_delta"], "0.5");
    // The default is 100 lines: everything here, and no next.
    let (d, next) = page(&h, TOKEN_A, "/v1/credits/entries", "entries");
    assert_eq!((d.len(), next), (26, None));

    // B's pages hold only B's lines, and B cannot continue from A's cursor.
    let (b1, bnext) = page(&h, TOKEN_B, "/v1/credits/entries?limit=20", "entries");
    let (b2, none) = page(
        &h,
        TOKEN_B,
        &format!("/v1/credits/entries?limit=20&after={}", bnext.unwrap()),
        "entries",
    );
    assert_eq!((b1.len(), b2.len(), none), (20, 3, None));
    let a_ids: HashSet<String> = tid(&paged).into_iter().collect();
    assert!(tid(&b1).iter().chain(&tid(&b2)).all(|t| !a_ids.contains(t)));
    let (_, a_next) = page(&h, TOKEN_A, "/v1/credits/entries?limit=1", "entries");
    refused(
        &h,
        TOKEN_B,
        &format!("/v1/credits/entries?after={}", a_next.clone().unwrap()),
        "after",
    );
    refused(
        &h,
        TOKEN_A,
        &format!("/v1/sandboxes?after={}", a_next.unwrap()),
        "after",
    );
    assert!(h.terminate(), "host did not exit cleanly");

    // The CLI's `--limit` shows the oldest N lines; without it, all.
    let show = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["--json", "credits", "show", "a", "--entries"];
        a.extend_from_slice(args);
        let (ok, out, err) = setup.cli(&a);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        tid(v["entries"].as_array().unwrap())
    };
    assert_eq!(show(&["--limit", "4"]), tid(&paged[..4]));
    assert_eq!(show(&[]), tid(&paged));
    let (ok, out, _) = setup.cli(&["credits", "show", "a", "--entries", "--limit", "3"]);
    assert!(ok && out.contains("raise --limit"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");
    let (ok, _, err) = setup.cli(&["credits", "show", "a", "--limit", "3"]);
    assert!(!ok && err.contains("--entries"), "{err}");
}
