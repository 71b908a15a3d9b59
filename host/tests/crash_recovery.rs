//! Crash safety: a child process runs sandbox lifecycles (create, fail over, destroy,
//! settle, deliver) through the real `App` on the real SQLite file; the harness
//! SIGKILLs it at random moments, again and again, and restarts it (each start
//! reconciles). At the end every sandbox is settled exactly once or still running and
//! tracked, no hold is dangling, the ledger verifies, and the event file holds exactly
//! one line per settlement.
//!
//! The child is this very test binary, re-run with an environment variable: no extra
//! shipped binary.

#[path = "lifecycle_support/mod.rs"]
mod lifecycle_support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_support::Fixture;
use sandboxer_host::app::{App, AppOptions};
use sandboxer_host::domain::{EntryKind, SandboxSpec, SandboxState, Scope, TenantId};
use sandboxer_host::layers::manager::HookPoint;
use sandboxer_host::layers::payments::{CreditsStore, SqliteCreditsStore};

const CHILD_DIR: &str = "SANDBOXER_CRASH_CHILD_DIR";
const CHILD_MODE: &str = "SANDBOXER_CRASH_CHILD_MODE";
const KILLS: usize = 20;
const LIFECYCLES: usize = 200;

fn settings(dir: &Path) -> sandboxer_host::Settings {
    sandboxer_host::Settings {
        extensions_dir: dir.join("extensions"),
        profiles_dir: dir.join("profiles"),
        state_dir: dir.join("state"),
    }
}

/// The app over `dir`, opened (and so reconciled) as a service opens it.
fn open(dir: &Path) -> App {
    let options = AppOptions {
        // One process at a time here: a hold without a sandbox record is an orphan.
        orphan_hold_grace: Duration::ZERO,
        ..AppOptions::default()
    };
    let app = App::open(&settings(dir), options);
    app.start().unwrap();
    app
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

/// Small deterministic-enough generator (no extra dependency).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos as u64) | 1
}

/// The child's body: lifecycles until killed (mode `run`), or destroy everything still
/// running and exit (mode `finish`). Does nothing unless spawned by the harness.
#[test]
fn child_process_entry_point() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let dir = Path::new(&dir);
    let app = open(dir);
    let r = app.reconciled();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("reconciled"))
        .unwrap();
    // One write call, so a kill cannot leave half a line (see `progress` below).
    let line = format!(
        "{} {} {} {} {}\n",
        r.recovered.len(),
        r.rolled_back.len(),
        r.settled.len(),
        r.voided_holds.len(),
        r.left.len()
    );
    log.write_all(line.as_bytes()).unwrap();
    if std::env::var(CHILD_MODE).as_deref() == Ok("die-after-create") {
        // Dies the moment the backend's create returned, before its handle is recorded.
        app.set_test_hook(Some(std::sync::Arc::new(|point, _id: &str| {
            if point == HookPoint::CreateAfterBackend {
                std::process::exit(3);
            }
        })))
        .unwrap();
        let _ = app.create_sandbox(&acme(), &SandboxSpec::of_profile("saas-stub"), Some("lost"));
        panic!("the hook did not run");
    }
    if std::env::var(CHILD_MODE).as_deref() == Ok("finish") {
        let (running, _) = app
            .all_sandboxes(&Scope::Operator, Some(SandboxState::Running), None)
            .unwrap();
        for st in running {
            app.destroy_sandbox(&Scope::Operator, &st.id).unwrap();
        }
        return;
    }
    let mut progress = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("progress"))
        .unwrap();
    let mut rng = Rng(seed());
    let profiles = ["burst-sandbox", "saas-stub", "failover"];
    for i in 0.. {
        let profile = profiles[rng.below(3) as usize];
        let key = format!("{}-{i}", std::process::id());
        // Errors are part of the game (e.g. a pool momentarily full); keep going.
        let _ = app.create_sandbox(&acme(), &SandboxSpec::of_profile(profile), Some(&key));
        let tenant = Scope::Tenant(acme());
        let (running, _) = app
            .all_sandboxes(&tenant, Some(SandboxState::Running), None)
            .unwrap();
        if running.len() > 2 {
            let victim = &running[rng.below(running.len() as u64) as usize];
            if app.destroy_sandbox(&tenant, &victim.id).is_ok() {
                // One write call: `writeln!` writes the id and the newline apart, and a
                // kill between the two would glue this id to the next child's.
                progress
                    .write_all(format!("{}\n", victim.id).as_bytes())
                    .unwrap();
            }
        }
    }
}

fn spawn_child(dir: &Path, mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn progress(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("progress"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn sigkilled_lifecycles_settle_exactly_once_and_leave_no_dangling_hold() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "1000"]);
    let dir = f.path();
    // Compile the components into the state's cache first: a child killed while
    // compiling would never get to run a lifecycle.
    drop(open(dir));
    let mut rng = Rng(seed());
    let started = Instant::now();
    let mut kills = 0;
    while kills < KILLS || progress(dir) < LIFECYCLES {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "too slow: {kills} kills, {} lifecycles",
            progress(dir)
        );
        let mut child = spawn_child(dir, "run");
        std::thread::sleep(Duration::from_millis(40 + rng.below(360)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    // A last start reconciles what the last kill interrupted and destroys the rest.
    let status = spawn_child(dir, "finish").wait().unwrap();
    assert!(status.success(), "the finishing run failed");
    eprintln!(
        "{kills} kills, {} lifecycles acknowledged, {:?}",
        progress(dir),
        started.elapsed()
    );
    // What the restarts found: [recovered creates, rolled-back creates, finished
    // destroys, released holds, left for later]. The kills must have hit mid-operation.
    let mut found = [0usize; 5];
    for line in std::fs::read_to_string(dir.join("reconciled"))
        .unwrap()
        .lines()
    {
        for (i, n) in line.split(' ').enumerate() {
            found[i] += n.parse::<usize>().unwrap();
        }
    }
    eprintln!("reconciliation over all restarts: {found:?}");
    assert!(
        found[..4].iter().sum::<usize>() > 0,
        "no kill landed mid-operation"
    );
    assert_eq!(found[4], 0, "something could not be reconciled");

    let app = open(dir);
    let (all, _) = app.all_sandboxes(&Scope::Operator, None, None).unwrap();
    let by_state = |s: SandboxState| all.iter().filter(|st| st.state == s).count();
    assert_eq!(
        by_state(SandboxState::Creating) + by_state(SandboxState::Destroying),
        0,
        "unfinished sandboxes"
    );
    let destroyed: Vec<_> = all
        .iter()
        .filter(|s| s.state == SandboxState::Destroyed)
        .collect();
    assert!(
        destroyed.len() >= LIFECYCLES,
        "only {} settled lifecycles",
        destroyed.len()
    );

    // Every acknowledged destroy is settled.
    let acknowledged: HashSet<String> = std::fs::read_to_string(dir.join("progress"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let settled_ids: HashSet<String> = destroyed.iter().map(|s| s.id.clone()).collect();
    let unsettled: Vec<_> = acknowledged.difference(&settled_ids).collect();
    assert!(
        unsettled.is_empty(),
        "acknowledged destroys not settled: {unsettled:?}"
    );

    // Ledger: exactly one charge per destroyed sandbox, none for the others; no open hold
    // except those of running sandboxes (none are left running).
    let (statement, _) = app.statement_lines(&acme(), None).unwrap();
    // Holds and the outbox are the ledger's own records: read them from the ledger file.
    let ledger = SqliteCreditsStore::open(settings(dir).ledger_path()).unwrap();
    let mut charges: HashMap<String, usize> = HashMap::new();
    for e in statement.iter().filter(|e| e.kind == EntryKind::Charge) {
        *charges.entry(e.sandbox_id.clone().unwrap()).or_default() += 1;
    }
    for st in &all {
        let n = charges.get(&st.id).copied().unwrap_or(0);
        match st.state {
            SandboxState::Destroyed => assert_eq!(n, 1, "{} settled {n} times", st.id),
            _ => assert_eq!(n, 0, "{} ({}) was charged", st.id, st.state),
        }
    }
    assert_eq!(
        charges.len(),
        destroyed.len(),
        "a charge for a sandbox the manager does not know"
    );
    let running_holds: HashSet<String> = all
        .iter()
        .filter(|s| s.state == SandboxState::Running)
        .filter_map(|s| s.hold_id.clone())
        .collect();
    for h in ledger.open_holds().unwrap() {
        assert!(
            running_holds.contains(&h.id),
            "dangling hold {} of {}",
            h.id,
            h.sandbox_id
        );
    }
    let verify = app.verify_ledger().unwrap();
    assert!(verify.ok, "{:?}", verify.problems);
    let cli = f.json(&["credits", "verify"]);
    assert_eq!(cli["ok"], true);

    // Events: exactly one line per settlement, with its id.
    let events = f.events();
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate event ids");
    let expected: HashSet<String> = destroyed
        .iter()
        .map(|s| s.meter.as_ref().unwrap().settlement_id.clone())
        .collect();
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), expected);
    assert_eq!(ledger.outbox_lag().unwrap().0, 0);
}

/// A process that dies after the backend started a sandbox but before its handle was
/// recorded leaves a `creating` row and an open hold. The next start finds the sandbox
/// at the backend by its id, and since nothing could address it without its handle,
/// destroys it at once and bills it from the create's start: never `running` with an
/// empty handle, charged once, nothing left held.
#[test]
fn a_create_whose_handle_was_lost_is_destroyed_and_billed_once_on_restart() {
    let f = Fixture::new();
    f.json(&["credits", "add", "acme", "1000"]);
    let dir = f.path();
    drop(open(dir));
    let status = spawn_child(dir, "die-after-create").wait().unwrap();
    assert_eq!(status.code(), Some(3), "the child did not die at the hook");

    let app = open(dir);
    let (all, _) = app.all_sandboxes(&Scope::Operator, None, None).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let st = &all[0];
    assert_eq!(st.state, SandboxState::Destroyed, "{st:?}");
    assert!(
        st.error
            .as_deref()
            .unwrap_or("")
            .contains("before its handle was recorded"),
        "{:?}",
        st.error
    );
    let meter = st.meter.as_ref().expect("settled");
    assert!(
        meter.total.amount > rust_decimal::Decimal::ZERO,
        "{meter:?}"
    );
    let (statement, _) = app.statement_lines(&acme(), None).unwrap();
    let charges = statement
        .iter()
        .filter(|e| e.kind == EntryKind::Charge && e.sandbox_id.as_deref() == Some(st.id.as_str()))
        .count();
    assert_eq!(charges, 1);
    let ledger = SqliteCreditsStore::open(settings(dir).ledger_path()).unwrap();
    assert!(ledger.open_holds().unwrap().is_empty(), "a hold is left");
    // A second start finds nothing more to do.
    drop(app);
    let again = open(dir);
    let verify = again.verify_ledger().unwrap();
    assert!(verify.ok, "{:?}", verify.problems);
}
