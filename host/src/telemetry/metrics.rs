//! Prometheus metrics: every name in one place, the recorder, and one helper per event.
//! Each helper is called where its event happens (a settlement in the manager, an
//! extension call in the app's instrumented backend, a request in the HTTP layer); with
//! no recorder installed (the CLI) they cost next to nothing. Gauges that mirror stored
//! state (sandboxes by state, outbox lag) are refreshed at scrape time from the store, so
//! they are right after a restart too.

use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Sandboxes the host tracks, by `state` and `extension` (refreshed per scrape).
pub const SANDBOXES: &str = "sandboxer_sandboxes";
/// Route decisions, by `strategy` and `outcome` (`routed`, `no_backend`, `failed`).
pub const ROUTE_DECISIONS: &str = "sandboxer_route_decisions_total";
/// Extension call latency, by `extension` and `function`.
pub const EXTENSION_CALL_SECONDS: &str = "sandboxer_extension_call_seconds";
/// Failed extension calls, by `extension`, `function` and `kind`.
pub const EXTENSION_CALL_FAILURES: &str = "sandboxer_extension_call_failures_total";
/// Settlements, by `currency`.
pub const SETTLEMENTS: &str = "sandboxer_settlements_total";
/// Amount charged by settlements since start, by `currency` (observability only: the
/// ledger is the record of money).
pub const SETTLED_AMOUNT: &str = "sandboxer_settled_amount";
/// Outbox events not yet delivered to every sink.
pub const OUTBOX_PENDING: &str = "sandboxer_outbox_pending_events";
/// Age of the oldest undelivered outbox event.
pub const OUTBOX_LAG_SECONDS: &str = "sandboxer_outbox_lag_seconds";
/// Event delivery rounds, by `sink` (`jsonl`, `http`) and `outcome`.
pub const EVENT_DELIVERIES: &str = "sandboxer_event_deliveries_total";
/// Events in the JSONL log not yet accepted by an HTTP hub, by `sink`.
pub const SINK_PENDING: &str = "sandboxer_event_sink_pending_events";
/// Leases renewed or refused, by `outcome`.
pub const LEASE_RENEWALS: &str = "sandboxer_lease_renewals_total";
/// Sandboxes ended by the host, by `reason` (`max_duration`, `lease_unpaid`).
pub const REAPED: &str = "sandboxer_reaped_total";
/// Hot reloads, by `kind` (`extension`, `profile`) and `outcome`.
pub const RELOADS: &str = "sandboxer_reloads_total";
/// HTTP requests, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "sandboxer_http_requests_total";
/// HTTP request latency, by `route`.
pub const HTTP_REQUEST_SECONDS: &str = "sandboxer_http_request_duration_seconds";
/// Extension versions kept loaded: the current ones and those live sandboxes were
/// created on.
pub const EXTENSION_VERSIONS: &str = "sandboxer_extension_versions";

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the process-wide Prometheus recorder and describes every metric. Returns
/// `None` if a recorder is already installed (a second host in one process, tests).
pub fn install() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    Some(handle)
}

fn describe() {
    describe_gauge!(
        SANDBOXES,
        "Sandboxes tracked by the host, by state and extension"
    );
    describe_counter!(ROUTE_DECISIONS, "Route decisions, by strategy and outcome");
    describe_histogram!(
        EXTENSION_CALL_SECONDS,
        Unit::Seconds,
        "Extension call latency, by extension and function"
    );
    describe_counter!(
        EXTENSION_CALL_FAILURES,
        "Failed extension calls, by extension, function and kind"
    );
    describe_counter!(SETTLEMENTS, "Settlements, by currency");
    describe_gauge!(
        SETTLED_AMOUNT,
        "Amount charged by settlements since the host started, by currency"
    );
    describe_gauge!(
        EXTENSION_VERSIONS,
        "Extension versions kept loaded (current, or used by a live sandbox)"
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Meter events stored but not yet delivered to every sink"
    );
    describe_gauge!(
        OUTBOX_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest undelivered meter event"
    );
    describe_counter!(
        EVENT_DELIVERIES,
        "Event delivery rounds, by sink and outcome"
    );
    describe_gauge!(
        SINK_PENDING,
        "Events in the JSONL log not yet accepted by an HTTP event hub"
    );
    describe_counter!(LEASE_RENEWALS, "Credit lease renewals, by outcome");
    describe_counter!(REAPED, "Sandboxes ended by the host, by reason");
    describe_counter!(
        RELOADS,
        "Hot reloads of extensions and profiles, by kind and outcome"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by method, route and status");
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by route"
    );
}

/// Records one route decision.
pub fn route_decision(strategy: &str, outcome: &'static str) {
    counter!(ROUTE_DECISIONS, "strategy" => strategy.to_owned(), "outcome" => outcome).increment(1);
}

/// Records one extension call (latency, and the failure kind if it failed).
pub fn extension_call(
    extension: &str,
    function: &'static str,
    took: Duration,
    failure: Option<&'static str>,
) {
    histogram!(EXTENSION_CALL_SECONDS, "extension" => extension.to_owned(), "function" => function)
        .record(took.as_secs_f64());
    if let Some(kind) = failure {
        counter!(EXTENSION_CALL_FAILURES, "extension" => extension.to_owned(), "function" => function, "kind" => kind).increment(1);
    }
}

/// Records one settlement of `amount` (already rounded) in `currency`.
pub fn settlement(currency: &str, amount: f64) {
    counter!(SETTLEMENTS, "currency" => currency.to_owned()).increment(1);
    gauge!(SETTLED_AMOUNT, "currency" => currency.to_owned()).increment(amount);
}

/// Sets the kept-versions gauge.
pub fn extension_versions(kept: usize) {
    gauge!(EXTENSION_VERSIONS).set(kept as f64);
}

/// Sets the outbox gauges.
pub fn outbox(pending: u64, oldest: Option<Duration>) {
    gauge!(OUTBOX_PENDING).set(pending as f64);
    gauge!(OUTBOX_LAG_SECONDS).set(oldest.map_or(0.0, |d| d.as_secs_f64()));
}

/// Sets the per-state, per-extension sandbox gauge; `counts` is the full current picture,
/// so series not in it are zeroed via `previous`.
pub fn sandboxes(counts: &[(String, String, u64)], previous: &mut Vec<(String, String)>) {
    for (state, ext) in previous.drain(..) {
        if !counts.iter().any(|(s, e, _)| *s == state && *e == ext) {
            gauge!(SANDBOXES, "state" => state, "extension" => ext).set(0.0);
        }
    }
    for (state, ext, n) in counts {
        gauge!(SANDBOXES, "state" => state.clone(), "extension" => ext.clone()).set(*n as f64);
        previous.push((state.clone(), ext.clone()));
    }
}

/// Counts one event delivery round.
pub fn event_delivery(sink: &'static str, outcome: &'static str) {
    counter!(EVENT_DELIVERIES, "sink" => sink, "outcome" => outcome).increment(1);
}

/// Sets how many events an HTTP hub has yet to accept.
pub fn sink_pending(sink: &str, pending: u64) {
    gauge!(SINK_PENDING, "sink" => sink.to_owned()).set(pending as f64);
}

/// Counts a lease renewal attempt.
pub fn lease_renewal(outcome: &'static str) {
    counter!(LEASE_RENEWALS, "outcome" => outcome).increment(1);
}

/// Counts a sandbox ended by the host.
pub fn reaped(reason: &'static str) {
    counter!(REAPED, "reason" => reason).increment(1);
}

/// Counts a reload.
pub fn reload(kind: &'static str, outcome: &'static str) {
    counter!(RELOADS, "kind" => kind, "outcome" => outcome).increment(1);
}

/// Records one HTTP request.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "method" => method.to_owned(), "route" => route.to_owned(), "status" => status.to_string()).increment(1);
    histogram!(HTTP_REQUEST_SECONDS, "route" => route.to_owned()).record(took.as_secs_f64());
}
