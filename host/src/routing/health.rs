//! Per-extension health: a circuit breaker over consecutive failures and an exponentially
//! weighted moving average of observed create latency. The manager feeds it after every
//! call; the router reads it (and records failures of the calls it makes itself).
//!
//! Circuit states, per extension:
//! - **closed**: calls flow; `failure_threshold` consecutive failures that count against
//!   health open it.
//! - **open**: no calls until the cool-down ends. The cool-down doubles each time the
//!   circuit re-opens without a success in between, up to `max_cool_down`.
//! - **half-open**: the cool-down has ended; exactly one trial call is let through
//!   ([`HealthTracker::acquire`]). Its success closes the circuit, its failure re-opens it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::domain::{ExtensionError, HealthStatus};

/// A source of monotonic time, injectable so tests can move time without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (for tests).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl ManualClock {
    /// A clock starting now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock()
    }
}

/// Tuning of the circuit breaker and the latency average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Consecutive failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// First cool-down of an open circuit.
    pub cool_down: Duration,
    /// The cool-down doubles on every re-open up to this.
    pub max_cool_down: Duration,
    /// Weight of a new latency sample in the moving average, in (0, 1].
    pub latency_alpha: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(600),
            latency_alpha: 0.3,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

#[derive(Debug, Clone)]
struct Entry {
    circuit: Circuit,
    consecutive_failures: u32,
    /// Opens since the last success: the exponent of the cool-down doubling.
    opens: u32,
    latency_ewma_us: Option<f64>,
    samples: u64,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            circuit: Circuit::Closed,
            consecutive_failures: 0,
            opens: 0,
            latency_ewma_us: None,
            samples: 0,
        }
    }
}

impl Entry {
    /// Moves an expired open circuit to half-open.
    fn refresh(&mut self, now: Instant) {
        if let Circuit::Open { until } = self.circuit
            && now >= until
        {
            self.circuit = Circuit::HalfOpen {
                trial_in_flight: false,
            };
        }
    }
}

/// Observed create latency of an extension.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyStats {
    /// The moving average, in milliseconds (fractional).
    pub ewma_ms: f64,
    /// How many calls were measured.
    pub samples: u64,
}

/// Health and latency of every extension; cheap to clone (shared state), thread safe.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    config: HealthConfig,
    clock: Arc<dyn Clock>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Default for HealthTracker {
    fn default() -> Self {
        Self::new(HealthConfig::default())
    }
}

impl HealthTracker {
    /// A tracker on the system clock.
    pub fn new(config: HealthConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A tracker on the given clock (tests pass a [`ManualClock`]).
    pub fn with_clock(config: HealthConfig, clock: Arc<dyn Clock>) -> Self {
        let config = HealthConfig {
            failure_threshold: config.failure_threshold.max(1),
            latency_alpha: if config.latency_alpha > 0.0 && config.latency_alpha <= 1.0 {
                config.latency_alpha
            } else {
                HealthConfig::default().latency_alpha
            },
            ..config
        };
        Self {
            config,
            clock,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The circuit of `id` now (an extension never seen is healthy).
    pub fn status(&self, id: &str) -> HealthStatus {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(id) else {
            return HealthStatus::Closed {
                consecutive_failures: 0,
            };
        };
        entry.refresh(now);
        match entry.circuit {
            Circuit::Closed => HealthStatus::Closed {
                consecutive_failures: entry.consecutive_failures,
            },
            Circuit::Open { until } => HealthStatus::Open {
                retry_in_ms: u64::try_from(until.saturating_duration_since(now).as_millis())
                    .unwrap_or(u64::MAX),
                consecutive_failures: entry.consecutive_failures,
            },
            Circuit::HalfOpen { trial_in_flight } => HealthStatus::HalfOpen { trial_in_flight },
        }
    }

    /// Asks to call `id` now. Always granted while the circuit is closed; granted once
    /// (the trial) while half-open; refused while open. The manager calls this right
    /// before `create` and reports the outcome with `record_success`/`record_failure`.
    pub fn acquire(&self, id: &str) -> bool {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let entry = entries.entry(id.to_owned()).or_default();
        entry.refresh(now);
        match entry.circuit {
            Circuit::Closed => true,
            Circuit::Open { .. }
            | Circuit::HalfOpen {
                trial_in_flight: true,
            } => false,
            Circuit::HalfOpen {
                trial_in_flight: false,
            } => {
                entry.circuit = Circuit::HalfOpen {
                    trial_in_flight: true,
                };
                true
            }
        }
    }

    /// A call to `id` succeeded after `latency`: the circuit closes and the latency
    /// joins the moving average.
    pub fn record_success(&self, id: &str, latency: Duration) {
        let mut entries = self.entries.lock();
        let entry = entries.entry(id.to_owned()).or_default();
        if !matches!(entry.circuit, Circuit::Closed) {
            tracing::info!(extension = id, "circuit closed after a successful call");
        }
        entry.circuit = Circuit::Closed;
        entry.consecutive_failures = 0;
        entry.opens = 0;
        let sample = latency.as_secs_f64() * 1e6;
        entry.latency_ewma_us = Some(match entry.latency_ewma_us {
            None => sample,
            Some(avg) => avg + self.config.latency_alpha * (sample - avg),
        });
        entry.samples += 1;
    }

    /// A call to `id` failed. Only failures that count against health
    /// ([`ExtensionError::counts_against_health`]) move the circuit; a final answer
    /// (invalid request, unauthorized…) proves the extension is up, so it only frees a
    /// half-open trial for the next caller.
    pub fn record_failure(&self, id: &str, error: &ExtensionError) {
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let entry = entries.entry(id.to_owned()).or_default();
        entry.refresh(now);
        if !error.counts_against_health() {
            if let Circuit::HalfOpen { .. } = entry.circuit {
                entry.circuit = Circuit::HalfOpen {
                    trial_in_flight: false,
                };
            }
            return;
        }
        entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        let open = match entry.circuit {
            Circuit::Closed => entry.consecutive_failures >= self.config.failure_threshold,
            Circuit::HalfOpen { .. } => true,
            // A call that started before the circuit opened: already open.
            Circuit::Open { .. } => false,
        };
        if open {
            let cool_down = self.cool_down_for(entry.opens);
            entry.opens = entry.opens.saturating_add(1);
            entry.circuit = Circuit::Open {
                until: now + cool_down,
            };
            tracing::warn!(
                extension = id,
                failures = entry.consecutive_failures,
                cool_down_ms = u64::try_from(cool_down.as_millis()).unwrap_or(u64::MAX),
                error = %error,
                "circuit opened"
            );
        }
    }

    /// The observed create latency of `id`, if any call has been measured.
    pub fn latency(&self, id: &str) -> Option<LatencyStats> {
        let entries = self.entries.lock();
        let entry = entries.get(id)?;
        entry.latency_ewma_us.map(|us| LatencyStats {
            ewma_ms: us / 1000.0,
            samples: entry.samples,
        })
    }

    /// `cool_down × 2^opens`, capped.
    fn cool_down_for(&self, opens: u32) -> Duration {
        let factor = 1u32.checked_shl(opens.min(31)).unwrap_or(u32::MAX);
        self.config
            .cool_down
            .saturating_mul(factor)
            .min(self.config.max_cool_down.max(self.config.cool_down))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BackendError, Fault, Function};

    fn err(fault: Fault) -> ExtensionError {
        ExtensionError {
            extension: "x".into(),
            function: Function::Create,
            fault,
        }
    }
    fn unavailable() -> ExtensionError {
        err(Fault::Backend(BackendError::Unavailable("down".into())))
    }

    fn tracker() -> (HealthTracker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let config = HealthConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(30),
            max_cool_down: Duration::from_secs(100),
            latency_alpha: 0.5,
        };
        (HealthTracker::with_clock(config, clock.clone()), clock)
    }

    #[test]
    fn opens_after_threshold_then_half_open_then_closes() {
        let (t, clock) = tracker();
        t.record_failure("x", &unavailable());
        t.record_failure("x", &unavailable());
        assert_eq!(
            t.status("x"),
            HealthStatus::Closed {
                consecutive_failures: 2
            }
        );
        t.record_failure("x", &unavailable());
        assert!(matches!(
            t.status("x"),
            HealthStatus::Open {
                retry_in_ms: 30_000,
                ..
            }
        ));
        assert!(!t.acquire("x"));
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            t.status("x"),
            HealthStatus::HalfOpen {
                trial_in_flight: false
            }
        );
        assert!(t.acquire("x"), "one trial is granted");
        assert!(!t.acquire("x"), "only one trial");
        t.record_success("x", Duration::from_millis(10));
        assert_eq!(
            t.status("x"),
            HealthStatus::Closed {
                consecutive_failures: 0
            }
        );
        assert!(t.acquire("x"));
    }

    #[test]
    fn failed_trial_reopens_with_doubled_cool_down_capped() {
        let (t, clock) = tracker();
        for _ in 0..3 {
            t.record_failure("x", &unavailable());
        }
        clock.advance(Duration::from_secs(30));
        assert!(t.acquire("x"));
        t.record_failure("x", &unavailable());
        assert!(matches!(
            t.status("x"),
            HealthStatus::Open {
                retry_in_ms: 60_000,
                ..
            }
        ));
        clock.advance(Duration::from_secs(60));
        assert!(t.acquire("x"));
        t.record_failure("x", &err(Fault::Timeout { budget_ms: 1000 }));
        // 120 s capped at 100 s.
        assert!(matches!(
            t.status("x"),
            HealthStatus::Open {
                retry_in_ms: 100_000,
                ..
            }
        ));
    }

    #[test]
    fn final_errors_do_not_open() {
        let (t, _) = tracker();
        for _ in 0..10 {
            t.record_failure(
                "x",
                &err(Fault::Backend(BackendError::InvalidRequest("no".into()))),
            );
            t.record_failure(
                "x",
                &err(Fault::Backend(BackendError::Unauthorized("no".into()))),
            );
        }
        assert_eq!(
            t.status("x"),
            HealthStatus::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[test]
    fn success_resets_the_count() {
        let (t, _) = tracker();
        t.record_failure("x", &unavailable());
        t.record_failure("x", &unavailable());
        t.record_success("x", Duration::from_millis(5));
        t.record_failure("x", &unavailable());
        t.record_failure("x", &unavailable());
        assert_eq!(
            t.status("x"),
            HealthStatus::Closed {
                consecutive_failures: 2
            }
        );
    }

    #[test]
    fn latency_is_an_ewma() {
        let (t, _) = tracker();
        assert!(t.latency("x").is_none());
        t.record_success("x", Duration::from_millis(100));
        t.record_success("x", Duration::from_millis(200));
        let l = t.latency("x").unwrap();
        assert_eq!(l.samples, 2);
        assert!((l.ewma_ms - 150.0).abs() < 1e-6, "{l:?}");
    }
}
