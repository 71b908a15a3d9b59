//! The SaaS backends for real, through the host: the shipped `modal` component against the
//! fake Modal gRPC API (`tests/fake-modal`, h2c and TLS on loopback) and the shipped `e2b`
//! component against the fake E2B API and envd (`tests/fake-e2b`), both loaded from
//! sidecars by the app (the SandboxManager behind it, a real SQLite ledger):
//!
//! - create → exec (blocking and streamed) → file write/read/list → destroy → meter →
//!   settled, with the exact amounts the extensions' prices give (Modal: from
//!   `SandboxGetResourceUsage`, max(requested, used); E2B: the host-measured lifetime);
//! - a wrong Modal token is final, its hold voided, nothing charged;
//! - a sandbox that vanished at Modal is settled from the recorded lifetime;
//! - a rate-limited Modal fails over to E2B, one hold settled once;
//! - Modal over TLS with the fake's self-signed CA granted by `outbound_ca_file`;
//! - secrets (Modal's token secret, the router JWT, E2B's envd access token) appear in no
//!   status, error or log line.
//!
//! One h2c fake Modal and one fake E2B serve every test of this binary that injects no
//! fault; a test that injects one (failover) or needs TLS starts its own.

mod support;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fake_e2b::FakeE2b;
use fake_modal::{FakeModal, Fault, Route};
use rust_decimal::Decimal;
use sandboxer_host::Settings;
use sandboxer_host::app::{App, AppError, AppOptions, ExecEvent, ExecSink, GrantRequest};
use sandboxer_host::domain::{
    Command, Currency, ExecRequest, ExitStatus, FileKind, Money, OutputStream, SandboxSpec,
    SandboxState, SandboxStatus, Scope, TenantId,
};
use sandboxer_host::layers::payments::{CreditsStore, HoldState, SqliteCreditsStore};
use support::logs::{captured_logs, logs};

const TOKEN_ID: &str = "ak-host-test-31f0";
const TOKEN_SECRET: &str = "as-host-test-secret-9b7d52";
const WRONG_SECRET: &str = "as-host-test-wrong-secret-04c1e8";
const E2B_KEY: &str = "e2b_host_test_key_6a3f";

/// Modal's list prices, the extension's defaults.
const CORE_SECOND: &str = "0.00003942";
const GIB_SECOND: &str = "0.00000672";

/// The fake Modal (h2c) every fault-free test shares.
fn modal() -> &'static FakeModal {
    static FAKE: OnceLock<FakeModal> = OnceLock::new();
    FAKE.get_or_init(|| {
        let fake = FakeModal::start(TOKEN_ID, TOKEN_SECRET).unwrap();
        // A careless API quoting back the secret it was sent: the host must scrub it.
        fake.echo_token_in_errors(true);
        fake
    })
}

/// The fake E2B (API and envd) every fault-free test shares.
fn e2b() -> &'static FakeE2b {
    static FAKE: OnceLock<FakeE2b> = OnceLock::new();
    FAKE.get_or_init(|| FakeE2b::start(E2B_KEY).unwrap())
}

fn profile(id: &str, explicit: &str, fallback: &[&str], vcpus: u32, mib: u32) -> String {
    let candidates = fallback
        .iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "id = \"{id}\"\ndescription = \"test\"\ntemplate = \"base\"\nmax_duration_secs = 3600\nrequires = [\"exec\", \"files\"]\n\
         [resources]\nvcpus = {vcpus}\nmemory_mib = {mib}\n[route]\nstrategy = \"explicit\"\nexplicit = \"{explicit}\"\n\
         candidates = [{candidates}]\nfallback = {}\nmax_attempts = 2\n",
        !fallback.is_empty()
    )
}

/// A host folder: sidecars for `modal` and `modal-bad` (a wrong secret) against `modal`,
/// `e2b` against `e2b`, and the profiles the tests route by.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(modal: &FakeModal, e2b: &FakeE2b) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("extensions")).unwrap();
        std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
        let f = Self { dir };
        f.add_modal("modal", modal, TOKEN_SECRET, "");
        f.add_modal("modal-bad", modal, WRONG_SECRET, "");
        write_e2b_sidecar(&f.extensions(), "e2b", e2b);
        for (id, explicit, fallback, vcpus, mib) in [
            ("modal-only", "modal", &[][..], 2, 1024),
            ("modal-bad", "modal-bad", &[], 2, 1024),
            ("modal-then-e2b", "modal", &["e2b"], 2, 512),
            ("e2b-only", "e2b", &[], 2, 512),
        ] {
            f.add_profile(id, &profile(id, explicit, fallback, vcpus, mib));
        }
        f
    }

    fn extensions(&self) -> PathBuf {
        self.dir.path().join("extensions")
    }

    fn add_profile(&self, id: &str, text: &str) {
        std::fs::write(self.dir.path().join(format!("profiles/{id}.toml")), text).unwrap();
    }

    /// A sidecar `ID.toml` for the modal component against `fake` with the token secret
    /// `secret` (from a file beside it); `extra` goes at its top level.
    fn add_modal(&self, id: &str, fake: &FakeModal, secret: &str, extra: &str) {
        write_modal_sidecar(&self.extensions(), id, fake, secret, extra);
    }

    fn settings(&self) -> Settings {
        Settings {
            extensions_dir: self.extensions(),
            profiles_dir: self.dir.path().join("profiles"),
            state_dir: self.dir.path().join("state"),
        }
    }

    /// The app over this folder, started, with 10 USD for `acme`.
    fn host(&self) -> Host {
        let options = AppOptions {
            cache_dir: Some(support::root().join("target/test-cache/saas-host")),
            ..Default::default()
        };
        let app = App::open(&self.settings(), options);
        let started = app.start().unwrap();
        assert!(started.skipped.is_empty(), "{:?}", started.skipped);
        app.grant_credits(
            &tenant(),
            &GrantRequest {
                amount: usd("10"),
                note: "test credits".into(),
                idempotency_key: Some("grant-acme".into()),
            },
        )
        .unwrap();
        let ledger = SqliteCreditsStore::open(self.settings().ledger_path()).unwrap();
        Host { app, ledger }
    }
}

/// Writes `ID.toml` (and `ID.secret`) for the modal component against `fake`.
fn write_modal_sidecar(dir: &Path, id: &str, fake: &FakeModal, secret: &str, extra: &str) {
    std::fs::write(dir.join(format!("{id}.secret")), format!("{secret}\n")).unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!(
            "component = {:?}\nid = \"{id}\"\ncall_timeout_ms = 60000\noutbound_timeout_ms = 15000\n\
             allowed_outbound_hosts = [\"{url}\"]\n{extra}\n[secrets]\ntoken_secret = {{ file = \"{id}.secret\" }}\n\
             [config]\ntoken_id = \"{TOKEN_ID}\"\nserver_url = \"{url}\"\nterminate_wait_secs = \"2\"\nstream_slice_ms = \"2000\"\n",
            support::built("extensions/modal.wasm").display().to_string(),
            url = fake.url(),
        ),
    )
    .unwrap();
}

/// Writes `ID.toml` (and `ID.key`) for the e2b component against `fake` and its envd.
fn write_e2b_sidecar(dir: &Path, id: &str, fake: &FakeE2b) {
    std::fs::write(dir.join(format!("{id}.key")), format!("{E2B_KEY}\n")).unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!(
            "component = {:?}\nid = \"{id}\"\ncall_timeout_ms = 60000\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n\
             [secrets]\napi_key = {{ file = \"{id}.key\" }}\n[config]\nbase_url = \"{}\"\nenvd_url = \"{}\"\n",
            support::built("extensions/e2b.wasm").display().to_string(),
            fake.base_url(),
            fake.envd_url(),
        ),
    )
    .unwrap();
}

/// The app, and the ledger file it writes.
struct Host {
    app: App,
    ledger: SqliteCreditsStore,
}

impl Host {
    fn create(&self, profile: &str) -> Result<SandboxStatus, AppError> {
        self.app
            .create_sandbox(&tenant(), &SandboxSpec::of_profile(profile), None)
    }

    fn held(&self) -> Decimal {
        self.ledger.balance("acme", &usd_code()).unwrap().held
    }

    fn posted(&self) -> Decimal {
        self.ledger.balance("acme", &usd_code()).unwrap().posted
    }

    fn exec(&self, id: &str, command: Command, stdin: &[u8]) -> sandboxer_host::app::ExecAnswer {
        self.app
            .exec(&acme(), id, exec_request(command, stdin))
            .unwrap()
    }
}

fn exec_request(command: Command, stdin: &[u8]) -> ExecRequest {
    ExecRequest {
        command,
        env: vec![("GREETING".into(), "hello".into())],
        cwd: None,
        stdin: stdin.to_vec(),
        keep_stdin_open: false,
        timeout_ms: 20_000,
        output_limit_bytes: 0,
    }
}

fn shell(line: &str) -> Command {
    Command::Shell(line.to_owned())
}

fn usd_code() -> Currency {
    Currency::new("USD").unwrap()
}

fn usd(s: &str) -> Money {
    Money {
        amount: dec(s),
        currency: usd_code(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn acme() -> Scope {
    Scope::Tenant(tenant())
}

/// The provider's id in a handle (`{"id": …}` for both extensions).
fn provider_id(st: &SandboxStatus) -> String {
    let v: serde_json::Value = serde_json::from_str(st.handle.as_deref().unwrap()).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

fn measure(st: &SandboxStatus, name: &str) -> Decimal {
    st.meter
        .as_ref()
        .unwrap()
        .usage
        .measures
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", st.meter))
        .quantity
}

/// The seconds a destroyed sandbox lived, as the host measured them.
fn lived_secs(st: &SandboxStatus) -> Decimal {
    let ms = st.destroy_at_ms.unwrap() - st.started_at_ms.unwrap();
    assert_eq!(st.meter.as_ref().unwrap().usage.duration_ms, ms);
    Decimal::from(ms) / Decimal::from(1000)
}

/// Checks the meter's exact amount and that the ledger settled it: the hold posted,
/// nothing held, the rounded charge gone from the balance (which started at `before`).
fn assert_settled(host: &Host, st: &SandboxStatus, exact: Decimal, before: Decimal) {
    let meter = st.meter.as_ref().expect("a destroyed sandbox has a meter");
    assert_eq!(meter.exact, exact, "{meter:?}");
    assert_eq!(
        meter.total.amount,
        exact.round_dp_with_strategy(
            meter.total.amount.scale(),
            rust_decimal::RoundingStrategy::MidpointAwayFromZero
        )
    );
    let hold = host.ledger.hold_for_sandbox(&st.id).unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Posted);
    assert_eq!(host.held(), Decimal::ZERO);
    assert_eq!(host.posted(), before - meter.total.amount);
    assert!(host.ledger.verify().unwrap().ok, "the ledger verifies");
}

/// A streamed command's events with when each arrived.
#[derive(Default)]
struct Collect {
    start: Option<Instant>,
    events: Vec<(Duration, ExecEvent)>,
}

impl ExecSink for Collect {
    fn send(&mut self, event: ExecEvent) -> bool {
        let start = *self.start.get_or_insert_with(Instant::now);
        self.events.push((start.elapsed(), event));
        true
    }
}

/// Runs the verbs every backend serves on a running sandbox: blocking and streamed exec,
/// files written, read and listed (also across exec).
fn exercise(host: &Host, id: &str) {
    let out = host.exec(
        id,
        shell("echo \"$GREETING world\"; echo oops >&2; cat; exit 3"),
        b"from stdin",
    );
    assert_eq!(out.exit.status, ExitStatus::Exited, "{out:?}");
    assert_eq!(out.exit.exit_code, Some(3), "{out:?}");
    assert_eq!(out.stdout.0, b"hello world\nfrom stdin", "{out:?}");
    assert_eq!(out.stderr.0, b"oops\n", "{out:?}");
    let out = host.exec(id, Command::Argv(vec!["no-such-program-x".into()]), b"");
    assert_eq!(out.exit.status, ExitStatus::Failed, "{out:?}");

    // Streamed: the first chunk comes while the command still runs.
    let mut sink = Collect::default();
    host.app
        .exec_streamed(
            &acme(),
            id,
            exec_request(shell("echo first; sleep 1.5; echo second"), b""),
            &mut sink,
        )
        .unwrap();
    let stdout: Vec<(Duration, Vec<u8>)> = sink
        .events
        .iter()
        .filter_map(|(at, e)| match e {
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data,
            } => Some((*at, data.0.clone())),
            _ => None,
        })
        .collect();
    let all: Vec<u8> = stdout.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(all, b"first\nsecond\n", "{:?}", sink.events);
    let Some((exit_at, ExecEvent::Exit { exit, .. })) = sink.events.last() else {
        panic!("no exit: {:?}", sink.events);
    };
    assert_eq!(exit.exit_code, Some(0));
    assert!(
        *exit_at - stdout[0].0 > Duration::from_millis(1000),
        "first output at {:?}, exit at {exit_at:?}: not streamed",
        stdout[0].0
    );

    // Files: bytes in exactly, read by a command, written by a command, listed.
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let written = host
        .app
        .write_file(&acme(), id, "work/data/blob.bin", &data)
        .unwrap();
    assert_eq!(written.size, 300_000);
    let back = host
        .app
        .read_file(&acme(), id, "work/data/blob.bin")
        .unwrap();
    assert!(
        back == data,
        "the file came back changed ({} bytes)",
        back.len()
    );
    let out = host.exec(id, shell("wc -c < work/data/blob.bin"), b"");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout.0).trim(),
        "300000",
        "{out:?}"
    );
    host.exec(id, shell("printf 'made inside' > work/made.txt"), b"");
    assert_eq!(
        host.app.read_file(&acme(), id, "work/made.txt").unwrap(),
        b"made inside"
    );
    let list = host.app.list_files(&acme(), id, "work").unwrap();
    let mut entries: Vec<(String, FileKind, u64)> = list
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.kind, e.size))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].0, "data");
    assert_eq!(entries[0].1, FileKind::Directory);
    assert_eq!(
        (entries[1].0.as_str(), entries[1].1, entries[1].2),
        ("made.txt", FileKind::File, 11)
    );
    let missing = host.app.read_file(&acme(), id, "work/nothing-here");
    assert!(missing.is_err(), "{missing:?}");
}

/// The JWTs the fake handed out (seen in the router calls' `authorization`).
fn router_jwts(fake: &FakeModal) -> Vec<String> {
    let mut jwts: Vec<String> = fake
        .calls()
        .into_iter()
        .filter_map(|c| c.authorization)
        .filter_map(|a| a.strip_prefix("Bearer ").map(str::to_owned))
        .collect();
    jwts.sort();
    jwts.dedup();
    jwts
}

#[test]
fn modal_create_exec_files_destroy_settles_from_resource_usage() {
    let f = Fixture::new(modal(), e2b());
    let host = f.host();
    let st = host.create("modal-only").unwrap();
    assert_eq!(st.state, SandboxState::Running);
    assert_eq!(st.extension_id.as_deref(), Some("modal"));
    // 2 vCPU = 1 core, 1 GiB, an hour: 3600 × 0.00003942 + 3600 × 0.00000672.
    assert_eq!(st.estimate.as_ref().unwrap().total.amount, dec("0.166104"));
    assert_eq!(host.held(), dec("0.166104"));
    let sb = provider_id(&st);
    let record = modal().sandbox(&sb).unwrap();
    assert_eq!((record.milli_cpu, record.memory_mb), (1000, 1024));
    assert_eq!(record.timeout_secs, 3600);
    assert_eq!(
        record.tags.get("sandboxer_id").map(String::as_str),
        Some(st.id.as_str())
    );
    assert_eq!(
        record.tags.get("sandboxer_tenant").map(String::as_str),
        Some("acme")
    );

    exercise(&host, &st.id);

    // Modal measured little CPU (below the request) and much memory (above it): billed
    // max(requested × lifetime, used) of each.
    modal().set_usage(&sb, 100_000_000, 1_000_000_000_000);
    let before = host.posted();
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    assert!(modal().sandbox(&sb).unwrap().ended.is_some(), "terminated");
    let secs = lived_secs(&done);
    assert_eq!(measure(&done, "cpu-core-seconds"), secs);
    assert_eq!(measure(&done, "gib-seconds"), dec("1000"));
    assert_eq!(measure(&done, "measured-cpu-core-seconds"), dec("0.1"));
    assert_eq!(measure(&done, "measured-gib-seconds"), dec("1000"));
    let exact = secs * dec(CORE_SECOND) + dec("1000") * dec(GIB_SECOND);
    assert_settled(&host, &done, exact, before);
    assert!(modal().count(Route::SandboxGetResourceUsage) >= 1);
    // A second destroy charges nothing more.
    assert_eq!(
        host.app.destroy_sandbox(&acme(), &st.id).unwrap().meter,
        done.meter
    );
    assert_eq!(
        host.posted(),
        before - done.meter.as_ref().unwrap().total.amount
    );

    // No secret in the status, the sandbox list, or the log.
    let jwts = router_jwts(modal());
    assert!(!jwts.is_empty(), "exec went through the command router");
    let shown = serde_json::to_string(&host.app.sandbox(&Scope::Operator, &st.id).unwrap())
        .unwrap()
        + &serde_json::to_string(&host.app.all_sandboxes(&acme(), None, None).unwrap().0).unwrap();
    let logs = captured_logs();
    for secret in jwts.iter().map(String::as_str).chain([TOKEN_SECRET]) {
        assert!(!shown.contains(secret), "{secret} in a status");
        assert!(!logs.contains(secret), "{secret} in the log");
    }
}

#[test]
fn e2b_create_exec_files_destroy_settles_the_lifetime() {
    let f = Fixture::new(modal(), e2b());
    let host = f.host();
    let st = host.create("e2b-only").unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("e2b"));
    // 2 vCPU × 3600 × 0.000014 + 0.5 GiB × 3600 × 0.0000045.
    assert_eq!(st.estimate.as_ref().unwrap().total.amount, dec("0.1089"));
    let sb = provider_id(&st);
    assert!(e2b().sandbox(&sb).unwrap().secure, "envd needs its token");

    exercise(&host, &st.id);

    let before = host.posted();
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    assert!(e2b().sandbox(&sb).unwrap().killed_at.is_some());
    let secs = lived_secs(&done);
    assert_eq!(measure(&done, "vcpu-seconds"), secs * Decimal::from(2));
    assert_eq!(measure(&done, "gib-seconds"), secs * dec("0.5"));
    let exact = secs * Decimal::from(2) * dec("0.000014") + secs * dec("0.5") * dec("0.0000045");
    assert_settled(&host, &done, exact, before);

    // Neither the API key nor the envd access token is shown or logged.
    let token = e2b().sandbox(&sb).unwrap().envd_access_token.unwrap();
    let shown =
        serde_json::to_string(&host.app.sandbox(&Scope::Operator, &st.id).unwrap()).unwrap();
    let logs = captured_logs();
    for secret in [token.as_str(), E2B_KEY] {
        assert!(!shown.contains(secret), "{secret} in the status");
        assert!(!logs.contains(secret), "{secret} in the log");
    }
}

#[test]
fn a_wrong_modal_token_is_final_the_hold_voided_nothing_charged() {
    let f = Fixture::new(modal(), e2b());
    let host = f.host();
    let err = host.create("modal-bad").unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(WRONG_SECRET), "{text}");
    let AppError::CreateFailed { status, .. } = err else {
        panic!("expected CreateFailed, got {err}");
    };
    assert_eq!(status.state, SandboxState::Failed);
    assert_eq!(status.attempts.len(), 1, "{:?}", status.attempts);
    let attempt = &status.attempts[0];
    assert!(!attempt.retryable, "{attempt:?}");
    let error = attempt.error.as_deref().unwrap();
    assert!(error.contains("unauthorized"), "{error}");
    // The fake quoted the secret back; the host scrubbed it.
    assert!(
        error.contains("[redacted]") && !error.contains(WRONG_SECRET),
        "{error}"
    );
    assert!(
        modal()
            .calls()
            .iter()
            .any(|c| c.token_secret.as_deref() == Some(WRONG_SECRET)),
        "the wrong secret reached the fake"
    );
    let hold = host.ledger.hold_for_sandbox(&status.id).unwrap().unwrap();
    assert_eq!(hold.state, HoldState::Voided);
    assert_eq!(host.held(), Decimal::ZERO);
    assert_eq!(host.posted(), dec("10"), "nothing charged");
    let recorded =
        serde_json::to_string(&host.app.sandbox(&Scope::Operator, &status.id).unwrap()).unwrap();
    assert!(!recorded.contains(WRONG_SECRET), "{recorded}");
    assert!(!captured_logs().contains(WRONG_SECRET));
}

#[test]
fn a_sandbox_vanished_at_modal_is_settled_from_the_recorded_lifetime() {
    let f = Fixture::new(modal(), e2b());
    let host = f.host();
    let st = host.create("modal-only").unwrap();
    assert!(modal().vanish(&provider_id(&st)));
    std::thread::sleep(Duration::from_millis(300));
    let before = host.posted();
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    let secs = lived_secs(&done);
    // NOT_FOUND: the lifetime × the requested size (1 core, 1 GiB), nothing measured.
    assert_eq!(measure(&done, "cpu-core-seconds"), secs);
    assert_eq!(measure(&done, "gib-seconds"), secs);
    let measures = &done.meter.as_ref().unwrap().usage.measures;
    assert!(
        measures.iter().all(|m| !m.name.starts_with("measured-")),
        "{measures:?}"
    );
    let exact = secs * dec(CORE_SECOND) + secs * dec(GIB_SECOND);
    assert!(exact > Decimal::ZERO);
    assert_settled(&host, &done, exact, before);
}

#[test]
fn a_rate_limited_modal_fails_over_to_e2b_and_settles_once() {
    // Its own fake Modal: the injected fault must meet this test's create.
    let limited = FakeModal::start(TOKEN_ID, TOKEN_SECRET).unwrap();
    let f = Fixture::new(&limited, e2b());
    let host = f.host();
    limited.inject(Route::SandboxCreate, Fault::rate_limited(), 1);
    let st = host.create("modal-then-e2b").unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("e2b"), "{:?}", st.attempts);
    assert_eq!(st.attempts.len(), 2, "{:?}", st.attempts);
    let first = &st.attempts[0];
    assert_eq!(first.extension_id, "modal");
    assert!(first.retryable, "{first:?}");
    assert!(
        first.error.as_deref().unwrap().contains("capacity"),
        "{first:?}"
    );
    assert!(limited.running().is_empty(), "nothing runs at Modal");
    // The Modal try's hold was voided; one hold is open, E2B's estimate.
    let first_hold = first.hold_id.as_deref().unwrap();
    let open = host.ledger.open_holds().unwrap();
    assert!(open.iter().all(|h| h.id != first_hold));
    assert_eq!(open.iter().filter(|h| h.sandbox_id == st.id).count(), 1);
    assert_eq!(host.held(), dec("0.1089"));

    let out = host.exec(&st.id, shell("echo served by e2b"), b"");
    assert_eq!(out.stdout.0, b"served by e2b\n");
    let before = host.posted();
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    let secs = lived_secs(&done);
    let exact = secs * Decimal::from(2) * dec("0.000014") + secs * dec("0.5") * dec("0.0000045");
    assert_settled(&host, &done, exact, before);
    // Settled once: a second destroy changes nothing.
    host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert_eq!(
        host.posted(),
        before - done.meter.as_ref().unwrap().total.amount
    );
    assert!(host.ledger.open_holds().unwrap().is_empty());
}

#[test]
fn modal_over_tls_trusts_the_ca_file_the_sidecar_grants() {
    let tls = FakeModal::start_tls(TOKEN_ID, TOKEN_SECRET).unwrap();
    let f = Fixture::new(modal(), e2b());
    std::fs::write(f.extensions().join("modal-ca.pem"), tls.ca_pem().unwrap()).unwrap();
    f.add_modal(
        "modal-tls",
        &tls,
        TOKEN_SECRET,
        "outbound_ca_file = \"modal-ca.pem\"",
    );
    f.add_modal("modal-untrusted", &tls, TOKEN_SECRET, "");
    for id in ["modal-tls", "modal-untrusted"] {
        f.add_profile(id, &profile(id, id, &[], 2, 1024));
    }
    let host = f.host();
    assert!(tls.url().starts_with("https://"), "{}", tls.url());

    let st = host.create("modal-tls").unwrap();
    assert_eq!(st.extension_id.as_deref(), Some("modal-tls"));
    let out = host.exec(&st.id, shell("echo over tls"), b"");
    assert_eq!(out.stdout.0, b"over tls\n", "{out:?}");
    host.app
        .write_file(&acme(), &st.id, "t.txt", b"tls bytes")
        .unwrap();
    assert_eq!(
        host.app.read_file(&acme(), &st.id, "t.txt").unwrap(),
        b"tls bytes"
    );
    let before = host.posted();
    let done = host.app.destroy_sandbox(&acme(), &st.id).unwrap();
    assert!(done.meter.as_ref().unwrap().exact > Decimal::ZERO);
    let secs = lived_secs(&done);
    // The fake's default usage is the requested size over its lifetime: at least ours.
    assert!(measure(&done, "cpu-core-seconds") >= secs);
    assert_settled(
        &host,
        &done,
        measure(&done, "cpu-core-seconds") * dec(CORE_SECOND)
            + measure(&done, "gib-seconds") * dec(GIB_SECOND),
        before,
    );

    // Without the CA the certificate is not trusted: a retryable failure, nothing held.
    let err = host.create("modal-untrusted").unwrap_err();
    let AppError::CreateFailed { status, .. } = err else {
        panic!("expected CreateFailed, got {err}");
    };
    let attempt = &status.attempts[0];
    assert!(attempt.retryable, "{attempt:?}");
    assert_eq!(
        host.ledger
            .hold_for_sandbox(&status.id)
            .unwrap()
            .unwrap()
            .state,
        HoldState::Voided
    );
    assert!(
        tls.count(Route::SandboxCreate) == 1,
        "only the trusting extension reached the fake"
    );
}

#[path = "support/http_host.rs"]
mod http_host;

/// Every candidate of an explanation, in report order: (id, kind, estimate, outcome, rank).
fn candidates(v: &serde_json::Value) -> Vec<(String, String, Decimal, String, u64)> {
    v["decision"]["candidates"]
        .as_array()
        .unwrap_or_else(|| panic!("no decision: {v}"))
        .iter()
        .map(|c| {
            (
                c["extension_id"].as_str().unwrap().to_owned(),
                c["kind"].as_str().unwrap_or("").to_owned(),
                c["estimate"]["amount"].as_str().map_or(Decimal::ZERO, dec),
                c["outcome"].as_str().unwrap().to_owned(),
                c["rank"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn the_real_binary_explains_routes_and_runs_modal_end_to_end() {
    use http_host::{ADMIN, Host as Binary, Setup, TOKEN_A};
    use serde_json::json;

    logs();
    let s = Setup::with_extensions(&["local.wasm"]);
    write_modal_sidecar(&s.extensions(), "modal", modal(), TOKEN_SECRET, "");
    write_e2b_sidecar(&s.extensions(), "e2b", e2b());
    std::fs::copy(
        support::root().join("profiles/burst-sandbox.toml"),
        s.profiles().join("burst-sandbox.toml"),
    )
    .unwrap();
    std::fs::write(
        s.profiles().join("cheapest.toml"),
        "id = \"cheapest\"\ndescription = \"the cheapest that runs code\"\ntemplate = \"base\"\nmax_duration_secs = 3600\n\
         requires = [\"exec\", \"files\"]\n[resources]\nvcpus = 1\nmemory_mib = 512\n[route]\nstrategy = \"lowest-cost\"\n\
         candidates = [\"local\", \"e2b\", \"modal\"]\nfallback = true\nmax_attempts = 3\n",
    )
    .unwrap();
    std::fs::write(
        s.profiles().join("modal-only.toml"),
        profile("modal-only", "modal", &[], 2, 1024),
    )
    .unwrap();
    let h = Binary::start(&s);
    h.grant("a", "10");
    let mut seen = String::new();

    // Route explain: the same three candidates, two strategies.
    for (profile, strategy) in [
        ("cheapest", "lowest-cost"),
        ("burst-sandbox", "prefer-self-hosted"),
    ] {
        let (st, v) = h.post(
            "/v1/route/explain",
            TOKEN_A,
            &json!({ "profile": profile }).to_string(),
        );
        assert_eq!(st, 200, "{v}\n{}", h.log.lock().unwrap());
        seen.push_str(&v.to_string());
        assert_eq!(v["profile"]["strategy"], strategy, "{v}");
        let c = candidates(&v);
        let ids: Vec<&str> = c.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(c.len(), 3, "{v}");
        assert!(c.iter().all(|c| c.3 == "ordered"), "{c:?}");
        let estimate = |id: &str| c.iter().find(|c| c.0 == id).unwrap().2;
        // 1 vCPU (half a Modal core) and 0.5 GiB for an hour at Modal's prices; E2B's
        // template (2 vCPU, 512 MiB) at E2B's.
        assert_eq!(estimate("modal"), dec("0.083052"), "{v}");
        assert_eq!(estimate("e2b"), dec("0.1089"), "{v}");
        assert_eq!(ids[0], "local", "{c:?}");
        assert_eq!(c[0].1, "self-hosted");
        match strategy {
            "lowest-cost" => {
                let estimates: Vec<Decimal> = c.iter().map(|c| c.2).collect();
                let mut sorted = estimates.clone();
                sorted.sort();
                assert_eq!(estimates, sorted, "cheapest first: {c:?}");
            }
            _ => assert!(c[1..].iter().all(|c| c.1 == "saas"), "{c:?}"),
        }
        assert_eq!(
            c.iter().map(|c| c.4).collect::<Vec<_>>(),
            [1, 2, 3],
            "{c:?}"
        );
    }

    // A Modal sandbox: create, exec (blocking and streamed), files, destroy, settled.
    let sb = h.create(TOKEN_A, "modal-only");
    seen.push_str(&sb.to_string());
    assert_eq!(sb["extension_id"], "modal", "{sb}");
    let id = sb["id"].as_str().unwrap().to_owned();
    let (st, v) = h.post(
        &format!("/v1/sandboxes/{id}/exec"),
        TOKEN_A,
        &json!({"shell": "echo \"$X\"; echo err >&2; exit 2", "env": {"X": "from modal"}})
            .to_string(),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["exit_code"].clone(),
            v["stdout"].clone(),
            v["stderr"].clone()
        ),
        (json!(2), json!("from modal\n"), json!("err\n")),
        "{v}"
    );
    let resp = h.exec_stream(
        TOKEN_A,
        &id,
        &json!({"shell": "echo one; sleep 1; echo two"}),
    );
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "started", "{text}");
    assert_eq!(events.last().unwrap()["type"], "exit", "{text}");
    assert_eq!(events.last().unwrap()["exit_code"], 0, "{text}");
    let out: String = events
        .iter()
        .filter(|e| e["type"] == "stdout")
        .map(|e| e["data"].as_str().unwrap())
        .collect();
    assert_eq!(out, "one\ntwo\n", "{text}");
    let resp = reqwest::blocking::Client::new()
        .put(h.url(&format!("/v1/sandboxes/{id}/files/in/data.txt")))
        .bearer_auth(TOKEN_A)
        .body(b"round trip".to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let (st, body) = h.raw(
        "GET",
        &format!("/v1/sandboxes/{id}/files/in/data.txt"),
        Some(TOKEN_A),
        None,
        &[],
    );
    assert_eq!((st, body.as_str()), (200, "round trip"));
    let (st, v) = h.get(&format!("/v1/sandboxes/{id}/files/in?list"), TOKEN_A);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["entries"][0]["name"], "data.txt", "{v}");
    assert_eq!(v["entries"][0]["size"], 10, "{v}");

    let (st, done) = h.delete(&format!("/v1/sandboxes/{id}"), TOKEN_A);
    assert_eq!(st, 200, "{done}");
    seen.push_str(&done.to_string());
    assert_eq!(done["state"], "destroyed", "{done}");
    let meter = &done["meter"];
    let lived = done["destroy_at_ms"].as_u64().unwrap() - done["started_at_ms"].as_u64().unwrap();
    let secs = Decimal::from(lived) / Decimal::from(1000);
    let billed = |name: &str| {
        meter["usage"]["measures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| dec(m["quantity"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("no {name}: {meter}"))
    };
    // The fake measures the requested size (1 core, 1 GiB) over its own lifetime, from
    // its SandboxCreate to its SandboxTerminate: billed is the larger of that and the
    // host's lifetime × the request.
    let (cpu, mem) = (billed("cpu-core-seconds"), billed("gib-seconds"));
    assert_eq!(
        cpu,
        secs.max(billed("measured-cpu-core-seconds")),
        "{meter}"
    );
    assert_eq!(mem, secs.max(billed("measured-gib-seconds")), "{meter}");
    assert!(cpu - secs < dec("2"), "{meter}");
    let exact = cpu * dec(CORE_SECOND) + mem * dec(GIB_SECOND);
    assert_eq!(dec(meter["exact"].as_str().unwrap()), exact, "{meter}");
    let (st, credits) = h.get("/v1/credits", TOKEN_A);
    assert_eq!(st, 200, "{credits}");
    seen.push_str(&credits.to_string());
    let charged = dec(meter["total"]["amount"].as_str().unwrap());
    let usd = credits["balances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["currency"] == "USD")
        .unwrap_or_else(|| panic!("{credits}"));
    assert_eq!(
        dec(usd["available"].as_str().unwrap()),
        dec("10") - charged,
        "{credits}"
    );
    assert_eq!(
        dec(usd["held"].as_str().unwrap()),
        Decimal::ZERO,
        "{credits}"
    );

    // The meter event reaches the event log.
    let events_path = s.state().join("events.jsonl");
    let events = h.wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&events_path).ok()?;
        text.contains(&id).then_some(text)
    });
    seen.push_str(&events);
    let (_, list) = h.get("/v1/sandboxes?limit=1000", ADMIN);
    seen.push_str(&list.to_string());
    let (_, exts) = h.get("/v1/extensions", ADMIN);
    seen.push_str(&exts.to_string());
    seen.push_str(&h.log.lock().unwrap());
    let jwts = router_jwts(modal());
    assert!(!jwts.is_empty());
    let envd_tokens: Vec<String> = e2b()
        .running()
        .into_iter()
        .filter_map(|r| r.envd_access_token)
        .collect();
    for secret in jwts
        .iter()
        .chain(envd_tokens.iter())
        .map(String::as_str)
        .chain([TOKEN_SECRET, E2B_KEY])
    {
        assert!(!seen.contains(secret), "{secret} leaked:\n{seen}");
    }
}
