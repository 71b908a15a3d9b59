//! [`resolve_extension`]: from a profile, a request and the loaded extensions to an
//! ordered list of attempts, with a report on every candidate (why it was ordered where
//! it is, or why it was dropped). Real routing and `route explain` both call it.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::health::HealthTracker;
use super::profile::{Candidates, Profile};
use super::view::ExtensionView;
use crate::domain::{
    Attempt, ByokMode, CandidateReport, Capability, CapacityReport, Cost, DropReason,
    ExtensionError, HealthStatus, KeyUse, Kind, LatencyReport, LatencySource, Money, Outcome,
    RouteDecision, RouteError, SandboxRequest, Strategy,
};

/// A candidate that survived the filters, with its sort keys.
struct Survivor {
    index: usize,
    kind: Kind,
    cost: Decimal,
    latency_ms: f64,
    /// Its calls would carry the tenant's own key.
    own_key: bool,
    /// Moved into the attempt (the report keeps only the total): one copy, not two.
    estimate: Cost,
}

/// Routes `req` (built from `profile`): lists the candidates of its route spec, drops
/// those that are not loaded, have an open circuit, serve none of the wanted regions,
/// price in another currency, lack a capability the profile requires, have no capacity, cannot or fail to estimate, or exceed
/// `max_cost_per_hour`; orders the rest by the strategy, and returns the attempts the
/// manager should make in order (each with its estimate, so it never asks twice).
///
/// Failures of the calls it makes (capacity, estimate-cost) that count against health
/// are recorded in `health`; nothing else changes: nothing is created or held.
pub fn resolve_extension(
    profile: &Profile,
    req: &SandboxRequest,
    view: &dyn ExtensionView,
    health: &HealthTracker,
) -> Result<RouteDecision, RouteError> {
    let spec = &profile.route;
    let ids: Vec<String> = match (&spec.strategy, &spec.explicit) {
        (Strategy::Explicit, Some(target)) => {
            let mut ids = vec![target.clone()];
            if spec.fallback {
                let rest = match &spec.candidates {
                    Candidates::All => view.extension_ids(),
                    Candidates::List(list) => list.clone(),
                };
                ids.extend(rest.into_iter().filter(|id| id != target));
            }
            ids
        }
        _ => match &spec.candidates {
            Candidates::All => {
                let mut all = view.extension_ids();
                all.sort();
                all
            }
            Candidates::List(list) => list.clone(),
        },
    };
    let wanted_regions = profile.wanted_regions(req);

    let mut reports = Vec::with_capacity(ids.len());
    let mut survivors = Vec::with_capacity(ids.len());
    for id in ids {
        let (report, survivor) = assess(
            id,
            profile,
            req,
            &wanted_regions,
            view,
            health,
            reports.len(),
        );
        if let Some(s) = survivor {
            survivors.push(s);
        }
        reports.push(report);
    }

    if spec.strategy == Strategy::Explicit {
        // Listed order: the target, then the fallbacks as written.
        survivors.sort_by_key(|s| s.index);
    } else {
        let prefer_self_hosted = spec.strategy == Strategy::PreferSelfHosted;
        let by_latency = spec.strategy == Strategy::LowestLatency;
        let own_keys_first = req.byok == ByokMode::Prefer;
        survivors.sort_by(|a, b| {
            let own = if own_keys_first {
                b.own_key.cmp(&a.own_key)
            } else {
                Ordering::Equal
            };
            let group = if prefer_self_hosted {
                (a.kind != Kind::SelfHosted).cmp(&(b.kind != Kind::SelfHosted))
            } else {
                Ordering::Equal
            };
            let (first, second) = if by_latency {
                (a.latency_ms.total_cmp(&b.latency_ms), a.cost.cmp(&b.cost))
            } else {
                (a.cost.cmp(&b.cost), a.latency_ms.total_cmp(&b.latency_ms))
            };
            own.then(group)
                .then(first)
                .then(second)
                .then_with(|| reports_id(&reports, a.index).cmp(reports_id(&reports, b.index)))
        });
    }

    let explicit_target_dropped = match (&spec.strategy, &spec.explicit) {
        (Strategy::Explicit, Some(target)) => match reports.first() {
            Some(CandidateReport {
                outcome: Outcome::Dropped { reason },
                ..
            }) => Some((target.clone(), Box::new(reason.clone()))),
            _ => None,
        },
        _ => None,
    };

    let limit = spec.attempt_limit();
    let mut attempts = Vec::with_capacity(limit.min(survivors.len()));
    let order: Vec<usize> = survivors.iter().map(|s| s.index).collect();
    for (rank, s) in survivors.into_iter().enumerate() {
        let attempted = rank < limit;
        let report = &mut reports[s.index];
        report.outcome = Outcome::Ordered {
            rank: rank as u32 + 1,
            attempted,
        };
        if attempted && let Some(cost_per_hour) = &report.cost_per_hour {
            attempts.push(Attempt {
                extension_id: report.extension_id.clone(),
                kind: s.kind,
                estimate: s.estimate,
                cost_per_hour: cost_per_hour.clone(),
            });
        }
    }
    // Ordered candidates by rank, then the dropped ones in listed order.
    let mut sorted: Vec<Option<CandidateReport>> = reports.into_iter().map(Some).collect();
    let mut candidates: Vec<CandidateReport> =
        order.iter().filter_map(|&i| sorted[i].take()).collect();
    candidates.extend(sorted.into_iter().flatten());

    // `require` and nothing left because the tenant has no key where one was needed: the
    // tenant's to fix (store a key), so its own error, naming where a key would do.
    if attempts.is_empty()
        && req.byok == ByokMode::Require
        && let Some(extensions) = missing_own_keys(&candidates)
    {
        tracing::info!(profile = %profile.id, tenant = %req.tenant, extensions = ?extensions, "no candidate with the tenant's own key");
        return Err(RouteError::OwnKeyRequired {
            profile: profile.id.clone(),
            tenant: req.tenant.clone(),
            extensions,
            candidates,
        });
    }
    // Its own error only when the target was the sole candidate; with fallbacks listed
    // (and all dropped too) the general error lists every reason.
    if let Some((target, reason)) = explicit_target_dropped
        && attempts.is_empty()
        && candidates.len() == 1
    {
        tracing::info!(profile = %profile.id, tenant = %req.tenant, target = %target, %reason, "explicit target cannot serve");
        return Err(RouteError::ExplicitUnavailable {
            profile: profile.id.clone(),
            target,
            reason,
            candidates,
        });
    }
    if attempts.is_empty() {
        tracing::info!(profile = %profile.id, tenant = %req.tenant, "no candidate can serve");
        return Err(RouteError::NoCandidate {
            profile: profile.id.clone(),
            candidates,
        });
    }
    tracing::debug!(
        profile = %profile.id,
        tenant = %req.tenant,
        sandbox_id = %req.sandbox_id,
        extension = %attempts[0].extension_id,
        attempts = attempts.len(),
        "routed"
    );
    Ok(RouteDecision {
        profile: profile.id.clone(),
        strategy: spec.strategy,
        attempts,
        candidates,
    })
}

/// With `require`: the candidates that take tenants' keys, when at least one candidate
/// was dropped for want of the tenant's key (`None`: dropped for other reasons only).
fn missing_own_keys(candidates: &[CandidateReport]) -> Option<Vec<String>> {
    let mut any = false;
    let mut takers = Vec::new();
    for c in candidates {
        if let Outcome::Dropped {
            reason: DropReason::NoTenantKey { takes_keys, .. },
        } = &c.outcome
        {
            any = true;
            if *takes_keys {
                takers.push(c.extension_id.clone());
            }
        }
    }
    any.then_some(takers)
}

fn reports_id(reports: &[CandidateReport], i: usize) -> &str {
    &reports[i].extension_id
}

/// Checks one candidate, cheapest checks first so a dropped candidate costs no
/// extension call when it can be avoided.
fn assess(
    id: String,
    profile: &Profile,
    req: &SandboxRequest,
    wanted_regions: &[String],
    view: &dyn ExtensionView,
    health: &HealthTracker,
    index: usize,
) -> (CandidateReport, Option<Survivor>) {
    let status = health.status(&id);
    let mut report = CandidateReport {
        extension_id: id,
        kind: None,
        estimate: None,
        cost_per_hour: None,
        latency: None,
        health: status,
        capacity: None,
        key: None,
        outcome: Outcome::Dropped {
            reason: DropReason::NotLoaded,
        },
    };
    let drop = |mut report: CandidateReport, reason: DropReason| {
        report.outcome = Outcome::Dropped { reason };
        (report, None)
    };
    let id = report.extension_id.as_str();
    let Some(info) = view.info(id) else {
        return (report, None);
    };
    report.kind = Some(info.kind);
    report.latency = Some(match health.latency(id) {
        Some(l) => LatencyReport {
            ms: l.ewma_ms,
            source: LatencySource::Observed { samples: l.samples },
        },
        None => LatencyReport {
            ms: f64::from(info.startup_latency_ms),
            source: LatencySource::Declared,
        },
    });
    match status {
        HealthStatus::Open { retry_in_ms, .. } => {
            return drop(report, DropReason::CircuitOpen { retry_in_ms });
        }
        HealthStatus::HalfOpen {
            trial_in_flight: true,
        } => return drop(report, DropReason::TrialInFlight),
        _ => {}
    }
    if !wanted_regions.is_empty()
        && !info.regions.is_empty()
        && !wanted_regions.iter().any(|w| info.regions.contains(w))
    {
        let reason = DropReason::WrongRegion {
            wanted: wanted_regions.to_vec(),
            serves: info.regions.clone(),
        };
        return drop(report, reason);
    }
    if info.currency != profile.route.currency {
        let reason = DropReason::WrongCurrency {
            currency: info.currency.to_string(),
            wanted: profile.route.currency.to_string(),
        };
        return drop(report, reason);
    }
    let missing: Vec<Capability> = profile
        .requires
        .iter()
        .filter(|c| !info.capabilities.contains(c))
        .copied()
        .collect();
    if !missing.is_empty() {
        return drop(report, DropReason::MissingCapability { missing });
    }
    // Whose key: with `require`, a candidate without the tenant's is dropped before it is
    // asked for capacity or an estimate.
    let keys = view.keys(id, req);
    report.key = Some(keys.key);
    let own_key = keys.key == KeyUse::Tenant;
    if req.byok == ByokMode::Require && !own_key {
        let reason = DropReason::NoTenantKey {
            extension: id.to_owned(),
            takes_keys: keys.takes_keys,
            error: keys.error,
        };
        return drop(report, reason);
    }
    if info.capabilities.contains(&Capability::Capacity) {
        match view.capacity(id) {
            Ok(cap) => {
                let in_use = view.in_use(id);
                report.capacity = Some(CapacityReport {
                    max_sandboxes: cap.max_sandboxes,
                    in_use,
                });
                if let Some(max) = cap.max_sandboxes
                    && in_use >= max
                {
                    return drop(report, DropReason::NoCapacity { in_use, max });
                }
            }
            Err(e) => {
                health.record_failure(id, &e);
                return drop(
                    report,
                    DropReason::CapacityFailed {
                        error: fault_text(&e),
                    },
                );
            }
        }
    }
    let kind = info.kind;
    let estimate = match view.estimate_cost(id, req) {
        Ok(c) => c,
        Err(e) => {
            health.record_failure(id, &e);
            let reason = if e.counts_against_health() || e.is_retryable() {
                DropReason::EstimateFailed {
                    error: fault_text(&e),
                }
            } else {
                DropReason::CannotServe {
                    error: fault_text(&e),
                }
            };
            return drop(report, reason);
        }
    };
    let duration = Decimal::from(req.max_duration_secs.max(1));
    let hour = Decimal::from(3600u32);
    let total = estimate.total.amount;
    let cost_per_hour = total
        .checked_mul(hour)
        .and_then(|x| x.checked_div(duration))
        .unwrap_or(Decimal::MAX);
    report.cost_per_hour = Some(Money {
        amount: cost_per_hour.round_dp(6).normalize(),
        currency: estimate.total.currency.clone(),
    });
    report.estimate = Some(estimate.total.clone());
    if let Some(cap) = profile.route.max_cost_per_hour {
        // Exact comparison: total × 3600 > cap × duration, no division.
        let over = match (total.checked_mul(hour), cap.checked_mul(duration)) {
            (Some(lhs), Some(rhs)) => lhs > rhs,
            _ => true,
        };
        if over {
            let reason = DropReason::OverPriceCap {
                cost_per_hour: cost_per_hour.round_dp(6),
                cap,
                currency: profile.route.currency.to_string(),
            };
            return drop(report, reason);
        }
    }
    let latency_ms = report.latency.map_or(f64::MAX, |l| l.ms);
    (
        report,
        Some(Survivor {
            index,
            kind,
            cost: total,
            latency_ms,
            own_key,
            estimate,
        }),
    )
}

/// The failure without the "extension X" prefix (the table already names it).
fn fault_text(e: &ExtensionError) -> String {
    format!("{}: {}", e.function, e.fault)
}
