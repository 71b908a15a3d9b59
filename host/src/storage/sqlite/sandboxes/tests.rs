//! The SQLite status store on a real file: keyset pages, plans that use the indexes,
//! counts in SQL, compare-and-set, and migrating a file from an earlier build.

use super::schema::MIGRATIONS;
use super::*;
use crate::domain::{Resources, SandboxRequest};
use crate::storage::sqlite::ledger::SqliteCreditsStore;

/// A running sandbox's status, for tests here and in the manager.
pub(crate) fn status(id: &str) -> SandboxStatus {
    let now = chrono::Utc::now();
    SandboxStatus {
        id: id.to_owned(),
        tenant: "acme".into(),
        profile: "p".into(),
        extension_id: Some("ext".into()),
        extension_version: None,
        handle: None,
        state: SandboxState::Running,
        created_at: now,
        started_at_ms: None,
        destroy_at_ms: None,
        request: SandboxRequest {
            sandbox_id: id.to_owned(),
            tenant: "acme".into(),
            profile: "p".into(),
            template: "base".into(),
            resources: Resources {
                vcpus: 1,
                memory_mib: 512,
                disk_mib: 0,
                gpu: None,
            },
            max_duration_secs: 60,
            region: None,
            env: Vec::new(),
            metadata: Vec::new(),
            byok: Default::default(),
        },
        estimate: None,
        hold_id: Some("h1".into()),
        held: None,
        attempts: Vec::new(),
        reading: None,
        meter: None,
        idempotency_key: None,
        error: None,
        meter_failures: 0,
        updated_at: now,
    }
}

fn open_store() -> (tempfile::TempDir, SqliteSandboxStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    SqliteCreditsStore::open(&path).unwrap();
    let store = SqliteSandboxStore::open(&path).unwrap();
    (dir, store)
}

fn insert_at(store: &SqliteSandboxStore, id: &str, tenant: &str, ms: i64, state: SandboxState) {
    let mut st = status(id);
    st.tenant = tenant.to_owned();
    st.state = state;
    st.created_at = chrono::DateTime::from_timestamp_millis(ms).unwrap();
    store.insert(&st, "fp", "mgr", None).unwrap();
}

fn ids(page: &Page<SandboxStatus, SandboxKey>) -> Vec<String> {
    page.items.iter().map(|s| s.id.clone()).collect()
}

#[test]
fn pages_are_keyset_ranges_that_new_rows_do_not_disturb() {
    let (_dir, store) = open_store();
    // 25 rows of acme, three per millisecond (ties broken by id), and some of globex.
    let mut expected = Vec::new();
    for i in 0..25 {
        let id = format!("sb-{i:03}");
        let state = if i % 2 == 0 {
            SandboxState::Running
        } else {
            SandboxState::Destroyed
        };
        insert_at(&store, &id, "acme", 1_000 + i / 3, state);
        expected.push(id);
        insert_at(&store, &format!("sb-g{i:03}"), "globex", 1_000 + i, state);
    }
    expected.reverse();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_page(Some("acme"), None, after.as_ref(), 10)
            .unwrap();
        pages += 1;
        seen.extend(ids(&page));
        if pages == 1 {
            // Newer rows created between pages come before the cursor: never seen
            // by the later pages, and they push nothing out of them.
            insert_at(&store, "sb-new1", "acme", 5_000, SandboxState::Running);
            insert_at(&store, "sb-new2", "acme", 1_008, SandboxState::Running);
        }
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);
    // An exact multiple of the page size ends with `next` = None on the last full page.
    let all = store.list_page(Some("globex"), None, None, 25).unwrap();
    assert_eq!((all.items.len(), all.next), (25, None));
    // Filters combine with the cursor; another tenant's key only positions in time.
    let running = store
        .list_page(Some("acme"), Some(SandboxState::Running), None, 100)
        .unwrap();
    assert!(
        running
            .items
            .iter()
            .all(|s| s.state == SandboxState::Running)
    );
    assert_eq!(running.items.len(), 13 + 2);
    let key = SandboxKey {
        created_at_ms: 1_010,
        id: "sb-g010".into(),
    };
    let p = store
        .list_page(Some("acme"), None, Some(&key), 100)
        .unwrap();
    assert!(p.items.iter().all(|s| s.tenant == "acme"));
    assert!(
        p.items
            .iter()
            .all(|s| s.created_at.timestamp_millis() <= 1_010)
    );
    // Every tenant, as the CLI lists without --tenant.
    let everyone = store.list_page(None, None, None, 1000).unwrap();
    assert_eq!(everyone.items.len(), 52);
}

#[test]
fn pages_and_counts_read_indexes_not_sorts() {
    let (_dir, store) = open_store();
    let conn = store.conn.lock();
    let plan = |sql: &str| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("; ")
    };
    for sql in [
        "SELECT doc FROM manager_sandboxes WHERE tenant = 'a' AND (created_at, id) < (1, 'x') \
         ORDER BY created_at DESC, id DESC LIMIT 101",
        "SELECT doc FROM manager_sandboxes WHERE tenant = 'a' AND state = 'running' \
         AND (created_at, id) < (1, 'x') ORDER BY created_at DESC, id DESC LIMIT 101",
        "SELECT doc FROM manager_sandboxes ORDER BY created_at DESC, id DESC LIMIT 101",
        "SELECT state, extension_id, COUNT(*) FROM manager_sandboxes GROUP BY state, extension_id",
    ] {
        let p = plan(sql);
        assert!(p.contains("INDEX"), "{sql}: {p}");
        assert!(!p.contains("TEMP B-TREE"), "{sql}: {p}");
    }
    assert!(plan("SELECT state, extension_id, COUNT(*) FROM manager_sandboxes GROUP BY state, extension_id").contains("COVERING INDEX"));
}

/// The reaper and the lease keeper list one state on every pass: that must be an index
/// search, not a scan of every sandbox ever created (the cost grew with the history and
/// was paid under the connection's lock), and each filter answers its own rows.
#[test]
fn filtered_lists_search_an_index_and_filter_right() {
    let (_dir, store) = open_store();
    insert_at(&store, "s1", "acme", 1, SandboxState::Running);
    insert_at(&store, "s2", "acme", 2, SandboxState::Destroyed);
    insert_at(&store, "s3", "globex", 3, SandboxState::Running);
    let list = |tenant, state| -> Vec<String> {
        store
            .list(tenant, state)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };
    assert_eq!(list(None, None), ["s3", "s2", "s1"]);
    assert_eq!(list(None, Some(SandboxState::Running)), ["s3", "s1"]);
    assert_eq!(list(Some("acme"), None), ["s2", "s1"]);
    assert_eq!(list(Some("acme"), Some(SandboxState::Running)), ["s1"]);
    assert!(list(Some("initech"), None).is_empty());
    let conn = store.conn.lock();
    for (tenant, state) in [(false, true), (true, false), (true, true)] {
        let sql = list_sql(tenant, state);
        // Planned as the cached statement is: without the values.
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(["a", "running"].iter().take(sql.matches('?').count())),
                |r| r.get::<_, String>(3),
            )
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let plan = plan.join("; ");
        assert!(
            plan.contains("SEARCH") && plan.contains("INDEX"),
            "{sql}: {plan}"
        );
    }
}

#[test]
fn counts_by_state_group_in_sql() {
    let (_dir, store) = open_store();
    insert_at(&store, "sb-1", "acme", 1, SandboxState::Running);
    insert_at(&store, "sb-2", "acme", 2, SandboxState::Running);
    insert_at(&store, "sb-3", "globex", 3, SandboxState::Destroyed);
    let mut st = status("sb-4");
    st.extension_id = None;
    st.state = SandboxState::Failed;
    store.insert(&st, "fp", "mgr", None).unwrap();
    let mut counts = store.counts_by_state().unwrap();
    counts.sort_by_key(|(s, e, _)| (s.as_str(), e.clone()));
    assert_eq!(
        counts,
        vec![
            (SandboxState::Destroyed, Some("ext".to_owned()), 1),
            (SandboxState::Failed, None, 1),
            (SandboxState::Running, Some("ext".to_owned()), 2),
        ]
    );
}

#[test]
fn a_writer_that_read_a_stale_row_loses_its_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    SqliteCreditsStore::open(&path).unwrap();
    let store = SqliteSandboxStore::open(&path).unwrap();
    let st = status("sb-1");
    store.insert(&st, "fp", "mgr-a", None).unwrap();
    store.release("sb-1", "mgr-a").unwrap();
    // Two readers of the same row.
    let a = store.get("sb-1").unwrap().unwrap();
    let b = store.get("sb-1").unwrap().unwrap();
    assert_eq!(a.version, 1, "insert, then the release");
    // A renews: same state and owner, new hold, version bumped.
    let mut renewed = a.status.clone();
    renewed.hold_id = Some("h2".into());
    assert!(
        store
            .transition(&renewed, SandboxState::Running, None, a.version, None)
            .unwrap()
    );
    // B read before that write: its claim compares state and owner (still equal) and
    // the version (not): it loses and nothing is written.
    let mut claim = b.status.clone();
    claim.state = SandboxState::Destroying;
    assert!(
        !store
            .transition(
                &claim,
                SandboxState::Running,
                None,
                b.version,
                Some("mgr-b")
            )
            .unwrap()
    );
    let now = store.get("sb-1").unwrap().unwrap();
    assert_eq!(now.status.hold_id.as_deref(), Some("h2"));
    assert_eq!((now.status.state, now.version), (SandboxState::Running, 2));
    // With the fresh row it wins.
    let mut claim = now.status.clone();
    claim.state = SandboxState::Destroying;
    assert!(
        store
            .transition(
                &claim,
                SandboxState::Running,
                None,
                now.version,
                Some("mgr-b")
            )
            .unwrap()
    );
    store.update(&claim, Some("mgr-b"), false).unwrap();
    assert_eq!(store.get("sb-1").unwrap().unwrap().version, 4);
}

#[test]
fn a_file_from_before_the_version_column_migrates_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.sqlite3");
    SqliteCreditsStore::open(&path).unwrap();
    // The schema as the first release wrote it, with a row in it.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "CREATE TABLE manager_schema (version INTEGER NOT NULL) STRICT;
             INSERT INTO manager_schema (version) VALUES (1);",
        )
        .unwrap();
        let st = status("sb-old");
        conn.exec_cached(
            "INSERT INTO manager_sandboxes (id, tenant, state, extension_id, fingerprint, created_at, updated_at, doc) \
             VALUES (?1, 'acme', 'running', 'ext', 'fp', 0, 0, ?2)",
            params![st.id, serde_json::to_string(&st).unwrap()],
        )
        .unwrap();
    }
    let store = SqliteSandboxStore::open(&path).unwrap();
    let row = store.get("sb-old").unwrap().unwrap();
    assert_eq!((row.status.id.as_str(), row.version), ("sb-old", 0));
    let mut next = row.status.clone();
    next.hold_id = Some("h2".into());
    assert!(
        store
            .transition(&next, SandboxState::Running, None, 0, None)
            .unwrap()
    );
    assert_eq!(store.get("sb-old").unwrap().unwrap().version, 1);
    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .row_cached("SELECT version FROM manager_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, i64::try_from(MIGRATIONS.len()).unwrap());
    // Opening again is a no-op.
    drop(store);
    SqliteSandboxStore::open(&path).unwrap();
}
