//! A lease renewal swaps a running sandbox's hold in one ledger transaction, so a tenant
//! needs only the increment, not the new total beside the old hold. It then
//! records the new hold in the status (a compare-and-set on the row's version). A destroy
//! in another process may interleave anywhere; whatever the order, the sandbox ends
//! destroyed, settled once against the hold that is open, with nothing left held and the
//! ledger verifying. Two managers (two `App`s, as the service and the CLI) share one
//! state folder; test hooks place the other's step exactly inside the race window. The
//! real CLI settles what a keeper that died between its two steps left behind.

#[path = "lifecycle_support/mod.rs"]
mod lifecycle_support;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle_support::Fixture;
use rust_decimal::Decimal;
use sandboxer_host::app::{App, AppOptions, GrantRequest, LeasePolicy};
use sandboxer_host::domain::{
    Currency, EntryKind, Money, SandboxSpec, SandboxState, SandboxStatus, Scope, TenantId,
};
use sandboxer_host::layers::manager::HookPoint;
use sandboxer_host::layers::payments::{CreditsStore, HoldState, SqliteCreditsStore};

/// Every keeper pass renews a fresh sandbox at once: the first lease (60 s) is due for
/// renewal as soon as it starts.
fn keeper() -> AppOptions {
    AppOptions {
        leases: Some(LeasePolicy {
            chunk: Duration::from_secs(60),
            renew_before: Duration::from_secs(60),
            grace: Duration::from_secs(60),
        }),
        ..AppOptions::default()
    }
}

/// An app over the fixture's folders (the service with `keeper()`, the CLI with the
/// defaults).
fn app(f: &Fixture, options: AppOptions) -> App {
    App::open(&f.settings(), options)
}

/// The ledger file itself, for what only the ledger records (holds, their states).
fn ledger(f: &Fixture) -> SqliteCreditsStore {
    SqliteCreditsStore::open(f.settings().ledger_path()).unwrap()
}

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

fn grant(app: &App, to: &str, amount: &Money, key: &str) {
    app.grant_credits(
        &tenant(to),
        &GrantRequest {
            amount: amount.clone(),
            note: String::new(),
            idempotency_key: Some(key.to_owned()),
        },
    )
    .unwrap();
}

fn usd(s: &str) -> Money {
    Money {
        amount: Decimal::from_str(s).unwrap(),
        currency: Currency::new("USD").unwrap(),
    }
}

fn create(app: &App) -> SandboxStatus {
    grant(app, "acme", &usd("10"), &format!("g-{}", uuid()));
    let st = app
        .create_sandbox(&tenant("acme"), &SandboxSpec::of_profile("saas-stub"), None)
        .unwrap();
    assert_eq!(st.state, SandboxState::Running);
    st
}

fn uuid() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The ledger after the race: the first hold voided by the renewal, the second settled
/// once, nothing open, one meter event, and `verify` passes.
fn assert_settled_on_the_renewed_hold(
    f: &Fixture,
    app: &App,
    first: &SandboxStatus,
    done: &SandboxStatus,
) {
    let ledger = ledger(f);
    let first_hold = first.hold_id.clone().unwrap();
    let hold = done.hold_id.clone().unwrap();
    assert_ne!(hold, first_hold, "settled against the renewed hold");
    assert_eq!(done.state, SandboxState::Destroyed);
    let meter = done.meter.as_ref().unwrap();
    assert_eq!(Some(&meter.held), done.held.as_ref());
    assert!(
        meter.held.amount > first.held.as_ref().unwrap().amount,
        "the renewed hold covers more"
    );
    let current = ledger.hold_for_sandbox(&done.id).unwrap().unwrap();
    assert_eq!(
        (current.id.as_str(), current.state),
        (hold.as_str(), HoldState::Posted)
    );
    assert!(ledger.open_holds().unwrap().is_empty());
    let kinds: Vec<_> = ledger
        .statement("acme")
        .unwrap()
        .into_iter()
        .filter(|e| e.sandbox_id.as_deref() == Some(done.id.as_str()))
        .map(|e| (e.kind, e.hold_id.unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EntryKind::Hold, first_hold.clone()),
            (EntryKind::Void, first_hold),
            (EntryKind::Hold, hold.clone()),
            (EntryKind::Charge, hold),
        ]
    );
    let report = ledger.verify().unwrap();
    assert!(report.ok, "{:?}", report.problems);
    // The stored status says the same.
    let stored = app.sandbox(&Scope::Operator, &done.id).unwrap();
    assert_eq!(
        (stored.state, stored.hold_id.as_deref()),
        (SandboxState::Destroyed, done.hold_id.as_deref())
    );
}

#[test]
fn a_renewal_needs_only_the_increment_so_a_tenant_with_exactly_that_keeps_running() {
    let f = Fixture::new();
    // What 120 s of saas-stub cost: a sandbox of that maximum duration, held whole.
    let whole = app(&f, AppOptions::default());
    grant(&whole, "probe", &usd("10"), "g-probe");
    let probe = whole
        .create_sandbox(
            &tenant("probe"),
            &SandboxSpec {
                max_duration_secs: Some(120),
                ..SandboxSpec::of_profile("saas-stub")
            },
            None,
        )
        .unwrap();
    let two_minutes = probe.held.clone().unwrap();
    whole.destroy_sandbox(&Scope::Operator, &probe.id).unwrap();
    drop(whole);

    // A tenant with exactly that much: the first lease holds 60 s, the renewal to
    // 120 s needs the whole 120 s once the first hold is released, and nothing more.
    let service = app(&f, keeper());
    grant(&service, "exact", &two_minutes, "g-exact");
    let st = service
        .create_sandbox(
            &tenant("exact"),
            &SandboxSpec::of_profile("saas-stub"),
            None,
        )
        .unwrap();
    let first = st.held.clone().unwrap();
    assert!(first.amount < two_minutes.amount);
    let available = service
        .balance(&tenant("exact"), &two_minutes.currency)
        .unwrap()
        .available;
    assert!(
        available < two_minutes.amount,
        "holding a new 120 s beside the first lease would be refused"
    );

    let report = service.keep_leases_once().unwrap();
    assert_eq!(report.renewed, std::slice::from_ref(&st.id), "{report:?}");
    assert!(report.refused.is_empty() && report.errors.is_empty());
    let now = service.sandbox(&Scope::Operator, &st.id).unwrap();
    assert_eq!(now.held.as_ref(), Some(&two_minutes));
    assert_ne!(now.hold_id, st.hold_id);
    assert!(now.error.is_none());
    let b = service
        .balance(&tenant("exact"), &two_minutes.currency)
        .unwrap();
    assert_eq!((b.held, b.available), (two_minutes.amount, Decimal::ZERO));
    assert_eq!(ledger(&f).open_holds().unwrap().len(), 1);
    let done = service.destroy_sandbox(&Scope::Operator, &st.id).unwrap();
    assert_eq!(done.state, SandboxState::Destroyed);
    assert!(service.verify_ledger().unwrap().ok);
}

#[test]
fn a_renewal_between_a_destroys_read_and_its_claim_makes_the_destroy_retry_with_the_new_hold() {
    let f = Fixture::new();
    let service = app(&f, keeper());
    let cli = app(&f, AppOptions::default());
    let first = create(&service);

    // The destroy (CLI) has read the row (`running`, first hold); before it claims it,
    // the service's lease keeper renews: new hold, row version bumped.
    let renewed = Arc::new(Mutex::new(Vec::new()));
    let fired = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    {
        let (keeper, renewed, fired, reads) = (
            service.clone(),
            renewed.clone(),
            fired.clone(),
            reads.clone(),
        );
        cli.set_test_hook(Some(Arc::new(move |point, _id: &str| {
            if point != HookPoint::DestroyBeforeClaim {
                return;
            }
            reads.fetch_add(1, Ordering::SeqCst);
            if !fired.swap(true, Ordering::SeqCst) {
                let report = keeper.keep_leases_once().unwrap();
                assert!(report.errors.is_empty(), "{:?}", report.errors);
                renewed.lock().unwrap().extend(report.renewed);
            }
        })))
        .unwrap();
    }
    let done = cli.destroy_sandbox(&Scope::Operator, &first.id).unwrap();
    assert!(
        fired.load(Ordering::SeqCst),
        "the hook ran inside the window"
    );
    // Its claim of the stale row lost (the version moved); it read the row again and
    // claimed the fresh one.
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert_eq!(*renewed.lock().unwrap(), std::slice::from_ref(&first.id));
    assert_settled_on_the_renewed_hold(&f, &service, &first, &done);
    assert_eq!(f.events().len(), 1, "one meter event");
}

#[test]
fn a_destroy_between_a_renewals_replace_and_its_status_write_settles_the_new_hold() {
    let f = Fixture::new();
    let service = app(&f, keeper());
    let cli = app(&f, AppOptions::default());
    let first = create(&service);

    // The keeper has swapped the holds in the ledger but not yet recorded the new one;
    // the CLI destroys now: it claims the row (still naming the first hold), finds that
    // hold voided and settles the one that replaced it.
    let destroyed = Arc::new(Mutex::new(None));
    {
        let (cli, destroyed) = (cli.clone(), destroyed.clone());
        service
            .set_test_hook(Some(Arc::new(move |point, id: &str| {
                if point == HookPoint::LeaseAfterReplace {
                    *destroyed.lock().unwrap() =
                        Some(cli.destroy_sandbox(&Scope::Operator, id).unwrap());
                }
            })))
            .unwrap();
    }
    let report = service.keep_leases_once().unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.renewed.is_empty(),
        "the renewal is not recorded on a destroyed sandbox"
    );
    let done = destroyed.lock().unwrap().take().expect("the hook ran");
    assert_settled_on_the_renewed_hold(&f, &service, &first, &done);
    // A later keeper pass and reconciliation find nothing to do.
    assert_eq!(service.keep_leases_once().unwrap(), Default::default());
    let rec = service.reconcile().unwrap();
    assert!(
        rec.voided_holds.is_empty() && rec.settled.is_empty(),
        "{rec:?}"
    );
    assert_eq!(f.events().len(), 1, "one meter event");
}

fn dec(v: &serde_json::Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}"))).unwrap()
}

#[test]
fn a_sandbox_whose_renewal_died_before_its_status_write_is_settled_on_the_new_hold() {
    let f = Fixture::new();
    let (a, b) = {
        let service = app(&f, keeper());
        let (a, b) = (create(&service), create(&service));
        // A keeper that died between its two steps: the ledger swapped each hold, the
        // rows still name the first ones.
        for st in [&a, &b] {
            let old = st.hold_id.as_deref().unwrap();
            ledger(&f)
                .replace_hold(old, &usd("0.5"), &format!("{old}/replace/test"))
                .unwrap();
        }
        (a, b)
    };

    // Before any reconciliation: a destroy claims `b` (its row names the voided hold),
    // finds that hold voided and settles the one that replaced it.
    {
        let host = app(
            &f,
            AppOptions {
                skip_reconcile: true,
                ..AppOptions::default()
            },
        );
        let done = host.destroy_sandbox(&Scope::Operator, &b.id).unwrap();
        assert_eq!(done.state, SandboxState::Destroyed);
        assert_ne!(done.hold_id, b.hold_id);
        assert_eq!(done.meter.as_ref().unwrap().held, usd("0.5"));
    }

    // Through the real CLI: any command reconciles first; it keeps `a`'s replacement hold
    // (its only open hold) and records it in the row, and the destroy settles it.
    let shown = f.json(&["sandbox", "status", &a.id]);
    assert_eq!(shown["state"], "running");
    assert_ne!(shown["hold_id"].as_str(), a.hold_id.as_deref());
    let balance = f.json(&["credits", "show", "acme"]);
    assert_eq!(
        dec(&balance["balances"][0]["held"]),
        Decimal::from_str("0.5").unwrap()
    );
    let done = f.json(&["sandbox", "destroy", &a.id]);
    assert_eq!(done["state"], "destroyed", "{done}");
    assert_eq!(done["hold_id"], shown["hold_id"]);
    assert_eq!(
        dec(&done["meter"]["held"]["amount"]),
        Decimal::from_str("0.5").unwrap()
    );

    let statement = f.statement("acme");
    let entries = statement["entries"].as_array().unwrap();
    for st in [&a, &b] {
        let kinds: Vec<_> = entries
            .iter()
            .filter(|e| e["sandbox_id"] == st.id.as_str())
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["hold", "void", "hold", "charge"], "{}", st.id);
    }
    let balance = f.json(&["credits", "show", "acme"]);
    assert_eq!(dec(&balance["balances"][0]["held"]), Decimal::ZERO);
    let verify = f.run(&["credits", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert_eq!(f.events().len(), 2, "one meter event per sandbox");
}
