//! Test guest `misbehave`: implements the `backend-extension` world and misbehaves in the
//! way its `wasi:config` tells it to, so the host's defences can be tested through the
//! real runtime. Configuration keys (all optional):
//!
//! - `mode` (default `ok`):
//!   - `ok`: valid answers; estimate and meter are a flat `price`.
//!   - `loop`: never returns. `alloc`: allocates without bound. `panic`: panics.
//!   - `sleep`: sleeps `sleep-ms` (default 5000) in a WASI sleep, i.e. blocked in a host
//!     call where no epoch interrupt reaches it, then answers as `ok`.
//!   - `abc`, `negative` (`-1`), `huge` (a 40-digit number), `float` (`1e-5`): that string
//!     as the cost's total, the line's unit price and amount (and, in `destroy`, as a
//!     measure's quantity).
//!   - `no-currency`: an empty currency (in `info`, too, when `info` is targeted).
//!   - `bad-sum`: line items 0.0001 + 0.0002 with a total of 0.0004.
//!   - `fail-unavailable`, `fail-capacity`, `fail-unauthorized`: return `unavailable`,
//!     `capacity-exhausted`, `unauthorized`.
//!   - `long-error`: `create` fails `unavailable` with a 4 MiB message. `long-decimal`: a
//!     10-million-digit total. `many-items`: 200,000 line items.
//!   - `lax`: as `ok`, but accepts malformed requests (vCPUs, memory or maximum duration
//!     of 0) instead of refusing them with `invalid-request` as every other mode does.
//! - `functions`: comma-separated WIT function names the mode applies to (`info`,
//!   `estimate-cost`, `create`, `status`, `destroy`, `meter-actual`, `capacity`). Default:
//!   `loop`/`alloc`/`panic`/`sleep` every function but `info` (so the extension loads, then fails
//!   its calls); amount modes `estimate-cost,meter-actual`; `fail-*` modes `create`.
//!   Elsewhere the guest behaves as in `ok`.
//! - `price` (default `0.0001`): the flat price in `ok` behaviour.
//! - `echo` (a config key): its value goes into `info`'s name and a region, the status
//!   detail and every line item's description (a guest leaking a secret).
//! - `meter-price`, `meter-currency`: what `meter-actual` answers instead of `price` and
//!   USD (an over-meter, a meter in the wrong currency).
//! - `kind` (`saas` default | `self-hosted`), `capacity` (a pool size): what `info` and
//!   `capacity` report, so the guest can stand in for a pool in routing tests.
//!
//! An unknown mode makes every call return `internal` naming it.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "backend-extension",
    generate_all,
});

use exports::sandboxer::extension::backend::{
    BackendError, Capability, Cost, Created, ExtensionInfo, Guest, Kind, LineItem, Measure, Money,
    PoolCapacity, SandboxContext, SandboxRequest, SandboxState, SandboxStatus, Usage,
};

struct Misbehave;

/// Every mode, for the error message on an unknown one.
const MODES: &str = "ok, loop, alloc, panic, sleep, abc, negative, huge, float, no-currency, bad-sum, \
                     fail-unavailable, fail-capacity, fail-unauthorized, lax, long-error, \
                     long-decimal, many-items";

fn setting(key: &str) -> Option<String> {
    wasi::config::store::get(key).ok().flatten()
}

/// The mode that applies to `function`, or `"ok"`.
fn mode_for(function: &str) -> Result<String, BackendError> {
    let mode = setting("mode").unwrap_or_else(|| "ok".to_owned());
    if !MODES.split(", ").any(|m| m == mode) {
        return Err(BackendError::Internal(format!(
            "misbehave: unknown mode {mode:?} (modes: {MODES})"
        )));
    }
    let applies = match setting("functions") {
        Some(list) => list.split(',').any(|f| f.trim() == function),
        None => match mode.as_str() {
            "loop" | "alloc" | "panic" | "sleep" => function != "info",
            "fail-unavailable" | "fail-capacity" | "fail-unauthorized" | "long-error" => {
                function == "create"
            }
            _ => matches!(function, "estimate-cost" | "meter-actual"),
        },
    };
    Ok(if applies { mode } else { "ok".to_owned() })
}

/// The behaviours every function shares: diverge, or fail with a chosen error.
fn misbehave(mode: &str, function: &str) -> Result<(), BackendError> {
    match mode {
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch the pages so the memory is really committed.
                hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        "panic" => panic!("misbehave: panic in {function}, as configured"),
        "sleep" => {
            let ms = setting("sleep-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(())
        }
        "fail-unavailable" => Err(BackendError::Unavailable(format!(
            "misbehave: {function} unavailable, as configured"
        ))),
        "fail-capacity" => Err(BackendError::CapacityExhausted(format!(
            "misbehave: {function} has no capacity, as configured"
        ))),
        "fail-unauthorized" => Err(BackendError::Unauthorized(format!(
            "misbehave: {function} unauthorized, as configured"
        ))),
        "long-error" => Err(BackendError::Unavailable(format!(
            "misbehave: {function} unavailable: {}",
            "x".repeat(4 << 20)
        ))),
        _ => Ok(()),
    }
}

/// Refuses malformed requests with `invalid-request`, as a real backend does; mode `lax`
/// accepts anything (for proving that `extensions check` notices).
fn validate(request: &SandboxRequest) -> Result<(), BackendError> {
    if setting("mode").as_deref() == Some("lax") {
        return Ok(());
    }
    let r = &request.resources;
    if r.vcpus < 1 || r.memory_mib < 1 || request.max_duration_secs < 1 {
        return Err(BackendError::InvalidRequest(format!(
            "misbehave: vcpus {}, memory-mib {} and max-duration-secs {} must each be at least 1",
            r.vcpus, r.memory_mib, request.max_duration_secs
        )));
    }
    Ok(())
}

/// The bad decimal string of an amount mode.
fn bad_amount(mode: &str) -> Option<String> {
    match mode {
        "abc" => Some("abc".to_owned()),
        "negative" => Some("-1".to_owned()),
        "huge" => Some("1234567890123456789012345678901234567890".to_owned()),
        "float" => Some("1e-5".to_owned()),
        "long-decimal" => Some("9".repeat(10_000_000)),
        _ => None,
    }
}

fn price() -> String {
    setting("price").unwrap_or_else(|| "0.0001".to_owned())
}

fn currency(mode: &str) -> String {
    if mode == "no-currency" {
        String::new()
    } else {
        "USD".to_owned()
    }
}

/// With `echo = KEY`: `" "` and the value of config key `KEY` (a secret, say), which the
/// guest then puts into `info`'s name and regions, status detail and line items.
fn echoed() -> String {
    setting("echo")
        .and_then(|k| setting(&k))
        .map(|v| format!(" {v}"))
        .unwrap_or_default()
}

fn line(amount: &str) -> LineItem {
    LineItem {
        description: format!("Flat fee{}", echoed()),
        quantity: "1".to_owned(),
        unit: "sandbox".to_owned(),
        unit_price: amount.to_owned(),
        amount: amount.to_owned(),
    }
}

/// A cost shaped by `mode`: valid in `ok`, broken as the amount modes ask.
fn cost(function: &str) -> Result<Cost, BackendError> {
    let mode = mode_for(function)?;
    misbehave(&mode, function)?;
    if mode == "many-items" {
        return Ok(Cost {
            total: Money {
                amount: "0".to_owned(),
                currency: currency(&mode),
            },
            line_items: (0..200_000).map(|_| line("0")).collect(),
        });
    }
    if mode == "bad-sum" {
        return Ok(Cost {
            total: Money {
                amount: "0.0004".to_owned(),
                currency: currency(&mode),
            },
            line_items: vec![line("0.0001"), line("0.0002")],
        });
    }
    let amount = bad_amount(&mode).unwrap_or_else(price);
    Ok(Cost {
        total: Money {
            amount: amount.clone(),
            currency: currency(&mode),
        },
        line_items: vec![line(&amount)],
    })
}

impl Guest for Misbehave {
    fn info() -> ExtensionInfo {
        let mode = mode_for("info").unwrap_or_else(|_| "ok".to_owned());
        // `info` cannot fail: only the diverging modes and `no-currency` affect it.
        if matches!(mode.as_str(), "loop" | "alloc" | "panic" | "sleep") {
            let _ = misbehave(&mode, "info");
        }
        let capacity = setting("capacity");
        ExtensionInfo {
            id: "misbehave".to_owned(),
            name: format!(
                "Misbehaving test guest (mode {}){}",
                setting("mode").unwrap_or_else(|| "ok".to_owned()),
                echoed()
            ),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kind: if setting("kind").as_deref() == Some("self-hosted") {
                Kind::SelfHosted
            } else {
                Kind::Saas
            },
            currency: currency(&mode),
            regions: setting("echo")
                .map(|_| vec![format!("r{}", echoed())])
                .unwrap_or_default(),
            startup_latency_ms: 10,
            capabilities: if capacity.is_some() {
                vec![Capability::Capacity]
            } else {
                Vec::new()
            },
        }
    }

    fn estimate_cost(request: SandboxRequest) -> Result<Cost, BackendError> {
        validate(&request)?;
        cost("estimate-cost")
    }

    fn create(request: SandboxRequest) -> Result<Created, BackendError> {
        validate(&request)?;
        misbehave(&mode_for("create")?, "create")?;
        Ok(Created {
            handle: format!("misbehave-{}", request.sandbox_id),
            region: request.region,
        })
    }

    fn status(_sandbox: SandboxContext) -> Result<SandboxStatus, BackendError> {
        misbehave(&mode_for("status")?, "status")?;
        Ok(SandboxStatus {
            state: SandboxState::Running,
            detail: format!("misbehave{}", echoed()),
        })
    }

    fn destroy(sandbox: SandboxContext) -> Result<Usage, BackendError> {
        let mode = mode_for("destroy")?;
        misbehave(&mode, "destroy")?;
        let duration_ms = sandbox.now_ms.saturating_sub(sandbox.created_at_ms);
        let quantity = bad_amount(&mode).unwrap_or_else(|| "1".to_owned());
        Ok(Usage {
            duration_ms,
            measures: vec![Measure {
                name: "sandboxes".to_owned(),
                quantity,
                unit: "sandbox".to_owned(),
            }],
        })
    }

    fn meter_actual(_request: SandboxRequest, _usage: Usage) -> Result<Cost, BackendError> {
        let mut cost = cost("meter-actual")?;
        if let Some(p) = setting("meter-price") {
            cost.total.amount = p.clone();
            cost.line_items = vec![line(&p)];
        }
        if let Some(c) = setting("meter-currency") {
            cost.total.currency = c;
        }
        Ok(cost)
    }

    fn capacity() -> Result<PoolCapacity, BackendError> {
        misbehave(&mode_for("capacity")?, "capacity")?;
        let max_sandboxes = match setting("capacity") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| {
                BackendError::Internal(format!(
                    "misbehave: config key \"capacity\" = {v:?} is not a whole number"
                ))
            })?),
        };
        Ok(PoolCapacity { max_sandboxes })
    }
}

export!(Misbehave);
