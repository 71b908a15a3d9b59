//! `extensions check`: load one component and hold every function to the contract.
//!
//! The checks call each function with a sample request and validate the answers beyond
//! what every call already validates (decimals, currency, line items and totals): the
//! destroy usage echoes the host-measured lifetime, destroying twice gives the same usage,
//! the estimate for the full duration covers the meter reading for the same usage, and
//! malformed requests are refused with `invalid-request`. Every check is timed.
//! Surfaces (CLI, HTTP) only render the [`ConformanceReport`].

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::extension::{ArtifactSource, Extension};
use super::sidecar::ExtensionSpec;
use super::types::{
    BackendError, Capability, Cost, ExtensionError, ExtensionInfo, Fault, Resources,
    SandboxContext, SandboxRequest, Usage,
};
use super::{LoadError, Runtime};

/// `created_at_ms` of the sample sandbox (a fixed instant keeps the checks repeatable).
pub const SAMPLE_CREATED_AT_MS: u64 = 1_700_000_000_000;
/// Lifetime of the sample sandbox at `destroy`.
pub const SAMPLE_LIFETIME_MS: u64 = 60_000;

/// One check: its name, whether it passed, how long it took, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name, e.g. `estimate-cost`.
    pub name: String,
    /// Whether the extension met the contract here.
    pub passed: bool,
    /// Wall time of the check, in microseconds.
    pub micros: u64,
    /// What was seen (the answer, or why it failed).
    pub detail: String,
}

/// The outcome of checking one component.
#[derive(Debug, Clone, Serialize)]
pub struct ConformanceReport {
    /// The component checked.
    pub file: PathBuf,
    /// The id it was loaded as.
    pub id: String,
    /// Its `info`, when it loaded.
    pub info: Option<ExtensionInfo>,
    /// Where its compiled code came from, when it loaded.
    pub artifact: Option<ArtifactSource>,
    /// Every check in order.
    pub checks: Vec<Check>,
    /// True when every check passed.
    pub passed: bool,
}

/// The request every check uses: 2 vCPUs, 2 GiB, one hour.
pub fn sample_request() -> SandboxRequest {
    SandboxRequest {
        sandbox_id: "sbx-conformance-0001".into(),
        tenant: "conformance".into(),
        profile: "conformance".into(),
        template: "base".into(),
        resources: Resources {
            vcpus: 2,
            memory_mib: 2048,
            disk_mib: 0,
            gpu: None,
        },
        max_duration_secs: 3600,
        region: None,
        env: Vec::new(),
        metadata: vec![("purpose".into(), "conformance-check".into())],
        byok: Default::default(),
    }
}

/// Loads `spec` with `runtime` and runs every check.
pub fn check_spec(runtime: &Runtime, spec: ExtensionSpec) -> ConformanceReport {
    let file = spec.component.clone();
    let id = spec.id.clone();
    let started = Instant::now();
    let loaded = runtime.load_spec(spec);
    let load_micros = micros(started);
    match loaded {
        Ok(ext) => {
            let detail = format!(
                "{} (wasm sha256 {}…)",
                source_text(ext.artifact_source()),
                &ext.version_hash()[..12]
            );
            let mut checks = vec![Check {
                name: "load".into(),
                passed: true,
                micros: load_micros,
                detail,
            }];
            checks.extend(check_extension(&ext));
            let passed = checks.iter().all(|c| c.passed);
            ConformanceReport {
                file,
                id,
                info: Some(ext.info().clone()),
                artifact: Some(ext.artifact_source().clone()),
                checks,
                passed,
            }
        }
        Err(LoadError { failure, .. }) => ConformanceReport {
            file,
            id,
            info: None,
            artifact: None,
            checks: vec![Check {
                name: "load".into(),
                passed: false,
                micros: load_micros,
                detail: failure.to_string(),
            }],
            passed: false,
        },
    }
}

/// Runs every check on a loaded extension.
pub fn check_extension(ext: &Extension) -> Vec<Check> {
    let mut checks = Vec::new();
    let request = sample_request();

    checks.push(timed("info", || check_info(ext.info())));

    let mut estimate: Option<Cost> = None;
    checks.push(timed("estimate-cost", || {
        let cost = ext.estimate_cost(&request).map_err(|e| e.to_string())?;
        let detail = format!(
            "{} ({} line items) for {} s",
            cost.total,
            cost.line_items.len(),
            request.max_duration_secs
        );
        estimate = Some(cost);
        Ok(detail)
    }));

    let mut handle: Option<String> = None;
    checks.push(timed("create", || {
        let created = ext.create(&request).map_err(|e| e.to_string())?;
        let detail = format!("handle {:?}", shorten(&created.handle));
        handle = Some(created.handle);
        Ok(detail)
    }));
    let context = |now_offset_ms: u64| {
        handle.as_ref().map(|h| SandboxContext {
            request: request.clone(),
            handle: h.clone(),
            created_at_ms: SAMPLE_CREATED_AT_MS,
            now_ms: SAMPLE_CREATED_AT_MS + now_offset_ms,
        })
    };
    let no_handle = || Err("not run: create returned no handle".to_owned());

    checks.push(timed("status", || match context(1_000) {
        Some(ctx) => {
            let status = ext.status(&ctx).map_err(|e| e.to_string())?;
            Ok(format!("{:?}: {}", status.state, shorten(&status.detail)))
        }
        None => no_handle(),
    }));

    let mut usage: Option<Usage> = None;
    checks.push(timed("destroy", || match context(SAMPLE_LIFETIME_MS) {
        Some(ctx) => {
            let got = ext.destroy(&ctx).map_err(|e| e.to_string())?;
            if got.duration_ms != SAMPLE_LIFETIME_MS {
                return Err(format!(
                    "usage.duration-ms is {}, but the host-measured lifetime (now-ms - created-at-ms) is {SAMPLE_LIFETIME_MS}",
                    got.duration_ms
                ));
            }
            let detail = describe_usage(&got);
            usage = Some(got);
            Ok(detail)
        }
        None => no_handle(),
    }));

    checks.push(timed("destroy-twice", || {
        match (context(SAMPLE_LIFETIME_MS), &usage) {
            (Some(ctx), Some(first)) => {
                let second = ext.destroy(&ctx).map_err(|e| e.to_string())?;
                if &second == first {
                    Ok("same usage".into())
                } else {
                    Err(format!(
                        "second destroy reported {} instead of {}",
                        describe_usage(&second),
                        describe_usage(first)
                    ))
                }
            }
            _ => Err("not run: destroy failed".into()),
        }
    }));

    checks.push(timed("meter-actual", || match &usage {
        Some(u) => {
            let cost = ext.meter_actual(&request, u).map_err(|e| e.to_string())?;
            Ok(format!(
                "{} ({} line items) for {} ms",
                cost.total,
                cost.line_items.len(),
                u.duration_ms
            ))
        }
        None => Err("not run: destroy failed".into()),
    }));

    checks.push(timed("estimate-covers-meter", || {
        let Some(estimate) = &estimate else {
            return Err("not run: estimate-cost failed".into());
        };
        let full_ms = request.max_duration_secs.saturating_mul(1000);
        let Some(ctx) = context(full_ms) else {
            return no_handle();
        };
        let full = ext.destroy(&ctx).map_err(|e| e.to_string())?;
        let meter = ext
            .meter_actual(&request, &full)
            .map_err(|e| e.to_string())?;
        if meter.total.amount <= estimate.total.amount {
            Ok(format!(
                "meter {} ≤ estimate {} over {} s",
                meter.total, estimate.total, request.max_duration_secs
            ))
        } else {
            Err(format!(
                "meter-actual for the full {} s is {}, more than estimate-cost's {}",
                request.max_duration_secs, meter.total, estimate.total
            ))
        }
    }));

    checks.push(timed("invalid-requests", || check_invalid_requests(ext)));

    checks.push(timed("capacity", || {
        let capacity = ext.capacity().map_err(|e| e.to_string())?;
        let declared = ext.info().capabilities.contains(&Capability::Capacity);
        match (capacity.max_sandboxes, declared) {
            (None, true) => Err("declares the capacity capability but reports no limit".into()),
            (Some(n), _) => Ok(format!("{n} sandboxes")),
            (None, false) => Ok("unlimited".into()),
        }
    }));
    checks
}

/// Malformed requests (no vCPU, no memory, no duration) must be refused by
/// `estimate-cost` and `create` with `invalid-request`: not priced, not created, and not
/// reported as a retryable failure the router would fail over on.
fn check_invalid_requests(ext: &Extension) -> Result<String, String> {
    type Breakage = (&'static str, fn(&mut SandboxRequest));
    let breakages: [Breakage; 3] = [
        ("resources.vcpus = 0", |r| r.resources.vcpus = 0),
        ("resources.memory-mib = 0", |r| r.resources.memory_mib = 0),
        ("max-duration-secs = 0", |r| r.max_duration_secs = 0),
    ];
    let mut problems = Vec::new();
    let mut refused = 0;
    for (what, breaks) in breakages {
        let mut request = sample_request();
        request.sandbox_id = "sbx-conformance-invalid".into();
        breaks(&mut request);
        let estimate = ext
            .estimate_cost(&request)
            .map(|c| format!("priced at {}", c.total));
        let create = ext.create(&request).map(|c| {
            // Undo what should not exist; the verdict is already failed.
            let ctx = SandboxContext {
                request: request.clone(),
                handle: c.handle.clone(),
                created_at_ms: SAMPLE_CREATED_AT_MS,
                now_ms: SAMPLE_CREATED_AT_MS,
            };
            let _ = ext.destroy(&ctx);
            format!("created (handle {:?})", shorten(&c.handle))
        });
        for (function, outcome) in [("estimate-cost", estimate), ("create", create)] {
            match outcome {
                Err(ExtensionError {
                    fault: Fault::Backend(BackendError::InvalidRequest(_)),
                    ..
                }) => refused += 1,
                Err(e) => problems.push(format!(
                    "{function} with {what}: expected invalid-request, got {}",
                    e.fault
                )),
                Ok(answer) => problems.push(format!(
                    "{function} with {what}: expected invalid-request, got an answer ({answer})"
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{refused} malformed requests refused with invalid-request (vcpus, memory-mib, max-duration-secs = 0)"
        ))
    } else {
        Err(problems.join("; "))
    }
}

fn check_info(info: &ExtensionInfo) -> Result<String, String> {
    if info.name.trim().is_empty() {
        return Err("name is empty".into());
    }
    if info.version.trim().is_empty() {
        return Err("version is empty".into());
    }
    if let Some(bad) = info.regions.iter().find(|r| r.trim().is_empty()) {
        return Err(format!("regions contains an empty name ({bad:?})"));
    }
    let regions = if info.regions.is_empty() {
        "any region".to_owned()
    } else {
        info.regions.join(",")
    };
    Ok(format!(
        "{} {} ({}, {}, {regions}, ~{} ms start)",
        info.name, info.version, info.kind, info.currency, info.startup_latency_ms
    ))
}

fn timed(name: &str, check: impl FnOnce() -> Result<String, String>) -> Check {
    let started = Instant::now();
    let outcome = check();
    let micros = micros(started);
    match outcome {
        Ok(detail) => Check {
            name: name.into(),
            passed: true,
            micros,
            detail,
        },
        Err(detail) => Check {
            name: name.into(),
            passed: false,
            micros,
            detail,
        },
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn describe_usage(u: &Usage) -> String {
    let measures: Vec<String> = u
        .measures
        .iter()
        .map(|m| format!("{} {}", m.quantity.normalize(), m.name))
        .collect();
    format!(
        "{} ms: {}",
        u.duration_ms,
        if measures.is_empty() {
            "no measures".into()
        } else {
            measures.join(", ")
        }
    )
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 60 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(60).collect::<String>())
    }
}

fn source_text(source: &ArtifactSource) -> String {
    match source {
        ArtifactSource::Compiled => "compiled".into(),
        ArtifactSource::Recompiled { reason } => {
            format!("recompiled (cached artifact unusable: {reason})")
        }
        ArtifactSource::Cache => "loaded from the precompiled cache".into(),
        ArtifactSource::Shared => "shared with another id".into(),
    }
}
