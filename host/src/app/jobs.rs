//! The background work that keeps a serving host correct, as use cases a service calls
//! on its timers (`server` only schedules them): the reaper and the lease keeper, event
//! delivery (the outbox into the JSONL log, the log to each HTTP hub with back-off), and
//! the gauges `/metrics` mirrors from stored state. Each returns what it did; metrics are
//! recorded where each event happens.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use serde::Serialize;

use super::{App, AppError, LeaseReport, ReconcileReport};
use crate::events::{HttpSink, HttpSinkOptions, LogRelay, cursor_path};
use crate::runtime::Skipped;
use crate::telemetry::metrics;

/// An HTTP event hub: where a relay POSTs the meter events of the JSONL log.
#[derive(Clone)]
pub struct EventHub {
    /// `http://…` or `https://…`.
    pub url: String,
    /// Events per POST.
    pub batch_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// A bearer token sent to the hub (resolved by the caller; never logged).
    pub bearer: Option<String>,
    /// The first wait before retrying a failing hub (the service's delivery interval).
    pub min_backoff: Duration,
    /// Every further wait doubles, up to this.
    pub max_backoff: Duration,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("url", &self.url)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// What [`App::start`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Started {
    /// What reconciliation finished or rolled back.
    pub reconciled: ReconcileReport,
    /// Extension files that did not load: `file: reason`.
    pub skipped: Vec<String>,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReapReport {
    /// Sandboxes past their maximum duration, destroyed and settled.
    pub destroyed: Vec<String>,
    /// Sandboxes that could not be finished now (they stay tracked), with the reason.
    pub left: Vec<(String, String)>,
}

/// What one delivery round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// Meter events moved from the outbox into the JSONL log.
    pub logged: usize,
    /// Events relayed to HTTP hubs.
    pub relayed: usize,
    /// Hubs that failed this round (retried after their back-off): `hub: error`.
    pub failed: Vec<String>,
}

/// One hub's relay and its back-off.
pub(super) struct Hub {
    relay: LogRelay,
    wait: Duration,
    next: Instant,
    min_backoff: Duration,
    max_backoff: Duration,
}

/// State the jobs keep between runs.
#[derive(Default)]
pub(super) struct JobState {
    hubs: OnceCell<Mutex<Vec<Hub>>>,
    // Gauge series set by the last refresh, so series that disappeared are zeroed.
    gauges: Mutex<Vec<(String, String)>>,
}

impl JobState {
    /// The hubs' relays, built on first use (a bad hub fails `start`).
    pub(super) fn hubs(&self, app: &App) -> Result<&Mutex<Vec<Hub>>, AppError> {
        self.hubs.get_or_try_init(|| {
            let settings = app.settings();
            let mut hubs = Vec::new();
            for h in &app.options().event_hubs {
                let mut o = HttpSinkOptions::new(h.url.clone());
                o.batch_size = h.batch_size;
                o.timeout = h.timeout;
                o.bearer = h.bearer.clone();
                let sink =
                    HttpSink::new(o).map_err(|e| AppError::open(format!("event sink: {e}")))?;
                let relay = LogRelay::new(
                    settings.events_path(),
                    cursor_path(&settings.state_dir, &h.url),
                    Box::new(sink),
                );
                hubs.push(Hub {
                    relay,
                    wait: h.min_backoff,
                    next: Instant::now(),
                    min_backoff: h.min_backoff,
                    max_backoff: h.max_backoff,
                });
            }
            Ok(Mutex::new(hubs))
        })
    }
}

/// A skipped file in one line.
pub(super) fn skipped_line(s: &Skipped) -> String {
    format!("{}: {}", file_name(&s.file), s.reason)
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

impl App {
    /// Destroys and settles every running sandbox past its maximum duration, and retries
    /// unfinished destroys.
    pub fn reap_once(&self) -> Result<ReapReport, AppError> {
        let reaped = self.manager()?.reap_overdue()?;
        for st in &reaped.destroyed {
            tracing::info!(sandbox_id = %st.id, tenant = %st.tenant, extension = st.extension_id.as_deref().unwrap_or(""), "reaper destroyed and settled a sandbox (past its maximum duration, or a destroy retried)");
        }
        for (id, e) in &reaped.left {
            tracing::warn!(sandbox_id = %id, error = %e, "reaper could not destroy a sandbox; will retry");
        }
        Ok(ReapReport {
            destroyed: reaped.destroyed.into_iter().map(|s| s.id).collect(),
            left: reaped
                .left
                .into_iter()
                .map(|(id, e)| (id, e.to_string()))
                .collect(),
        })
    }

    /// One pass of the lease keeper: renews leases about to run out, and destroys and
    /// settles sandboxes whose unpaid lease's grace period is over.
    pub fn keep_leases_once(&self) -> Result<LeaseReport, AppError> {
        let report = self.manager()?.keep_leases();
        for (id, e) in &report.errors {
            tracing::warn!(sandbox_id = %id, error = %e, "lease keeper could not handle a sandbox; will retry");
        }
        Ok(report)
    }

    /// Finishes or rolls back whatever a dead process left between two steps, releases
    /// holds no live sandbox needs and delivers pending meter events (safe at any time,
    /// from several processes).
    pub fn reconcile(&self) -> Result<ReconcileReport, AppError> {
        Ok(self.manager()?.reconcile()?)
    }

    /// One delivery round: the outbox into the JSONL event log, then the log to each
    /// HTTP hub whose back-off has passed. A failing hub never delays the log or another
    /// hub.
    pub fn deliver_once(&self) -> Result<DeliveryReport, AppError> {
        self.deliver(false)
    }

    /// Hands what the outbox holds to the sinks, if this app opened the lifecycle (a
    /// command-line process before it exits; a failure leaves the events for the next
    /// run, which delivers them when it reconciles).
    pub fn deliver_before_exit(&self) {
        if self.inner.lifecycle.get().is_some()
            && let Err(e) = self.deliver_once()
        {
            tracing::warn!(error = %e, "meter events stay in the outbox for the next run");
        }
    }

    /// Delivers everything pending now, ignoring back-off (at shutdown); how many events.
    pub fn drain_events(&self) -> Result<usize, AppError> {
        let r = self.deliver(true)?;
        Ok(r.logged + r.relayed)
    }

    fn deliver(&self, drain: bool) -> Result<DeliveryReport, AppError> {
        let mut report = DeliveryReport::default();
        match self.manager()?.deliver_outbox() {
            Ok(n) => report.logged = n,
            Err(e) => {
                metrics::event_delivery("jsonl", "failed");
                tracing::warn!(error = %e, "outbox delivery failed; will retry");
                report.failed.push(format!("jsonl: {e}"));
            }
        }
        let hubs = self.inner.jobs.hubs(self)?;
        for hub in hubs.lock().iter_mut() {
            let base = hub.min_backoff;
            if !drain && Instant::now() < hub.next {
                continue;
            }
            loop {
                match hub.relay.pump(500) {
                    Ok(0) => {
                        hub.wait = base;
                        break;
                    }
                    Ok(n) => {
                        metrics::event_delivery("http", "delivered");
                        tracing::debug!(sink = %hub.relay.name(), events = n, "events relayed");
                        report.relayed += n;
                    }
                    Err(e) => {
                        metrics::event_delivery("http", "failed");
                        hub.wait = (hub.wait * 2).min(hub.max_backoff).max(base);
                        hub.next = Instant::now() + hub.wait;
                        tracing::warn!(sink = %hub.relay.name(), error = %e, retry_in_ms = hub.wait.as_millis() as u64, "event hub delivery failed; will retry");
                        report.failed.push(format!("{}: {e}", hub.relay.name()));
                        break;
                    }
                }
            }
            metrics::sink_pending(&hub.relay.name(), hub.relay.pending());
        }
        Ok(report)
    }

    /// Refreshes the gauges that mirror stored state (sandboxes by state and extension,
    /// the outbox's backlog), just before a scrape.
    pub fn refresh_gauges(&self) {
        let Ok(manager) = self.manager() else {
            return;
        };
        match manager.counts_by_state() {
            Ok(rows) => {
                // Sandboxes never routed are labelled `none` (summed with an extension
                // of that name, should one exist).
                let mut merged: HashMap<(&'static str, String), u64> = HashMap::new();
                for (state, ext, n) in rows {
                    let ext = ext.unwrap_or_else(|| "none".to_owned());
                    *merged.entry((state.as_str(), ext)).or_default() += n;
                }
                let counts: Vec<(String, String, u64)> = merged
                    .into_iter()
                    .map(|((s, e), n)| (s.to_owned(), e, n))
                    .collect();
                metrics::sandboxes(&counts, &mut self.inner.jobs.gauges.lock());
            }
            Err(e) => tracing::warn!(error = %e, "cannot count sandboxes for /metrics"),
        }
        if let Ok((n, age)) = manager.ledger().outbox_lag() {
            metrics::outbox(n, age);
        }
    }
}
