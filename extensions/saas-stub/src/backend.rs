//! The backend's behaviour in plain Rust, mirroring the WIT `backend` interface: the
//! component's bindings (`wasm.rs`) only convert types, and native code (unit tests, the
//! host's native-vs-wasm benchmark) calls these same functions.

use rust_decimal::Decimal;

use crate::config::{Config, Kind};
use crate::exact;

/// Why a call failed; the cases are the WIT `backend-error` cases this backend uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Final: the request is out of range.
    InvalidRequest(String),
    /// This backend cannot serve the request (region).
    Unsupported(String),
    /// The handle does not belong to the sandbox in the context.
    NotFound(String),
    /// Bad configuration, or an amount that cannot be computed exactly.
    Internal(String),
}

/// The parts of the WIT `sandbox-request` this backend looks at, borrowed from it (a
/// call copies nothing it does not return).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub sandbox_id: &'a str,
    pub template: &'a str,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub max_duration_secs: u64,
    pub region: Option<&'a str>,
}

/// One line of a price, as contract decimal strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub description: String,
    pub quantity: String,
    pub unit: String,
    pub unit_price: String,
    pub amount: String,
}

/// A price: `total` (in `currency`) equals the sum of the line amounts exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    pub total: String,
    pub currency: String,
    pub line_items: Vec<LineItem>,
}

/// One measured quantity of usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    pub name: String,
    pub quantity: String,
    pub unit: String,
}

/// What a sandbox consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub duration_ms: u64,
    pub measures: Vec<Measure>,
}

/// What `create` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub handle: String,
    pub region: Option<String>,
}

/// The simulated sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Stopped,
}

/// The WIT `info` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub id: String,
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub currency: String,
    pub regions: Vec<String>,
    pub startup_latency_ms: u32,
    /// Whether to report the `capacity` capability (a finite pool is configured).
    pub has_capacity: bool,
}

/// Measure names, units and line descriptions: what `destroy` reports and `meter-actual` prices.
const VCPU: (&str, &str, &str) = ("vcpu-seconds", "vcpu-second", "vCPU time");
const MEMORY: (&str, &str, &str) = ("gib-seconds", "gib-second", "Memory");
const SANDBOXES: (&str, &str, &str) = ("sandboxes", "sandbox", "Sandbox fee");

/// Prefix of the handles `create` returns: `stub-<sandbox-id>`.
const HANDLE_PREFIX: &str = "stub-";

/// Static facts; never fails. With a bad configuration, the defaults are reported and
/// the name says what is wrong (every other call returns the error).
pub fn info(config: Result<&Config, &str>) -> Info {
    let (config, name) = match config {
        Ok(c) => (c.clone(), c.name.clone()),
        Err(why) => {
            let d = Config::default();
            let name = format!("{} (configuration error: {why})", d.name);
            (d, name)
        }
    };
    Info {
        id: "saas-stub".to_owned(),
        name,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        kind: config.kind,
        currency: config.currency,
        regions: config.regions,
        startup_latency_ms: config.startup_latency_ms,
        has_capacity: config.capacity.is_some(),
    }
}

/// The price of `request` over its whole maximum duration.
pub fn estimate_cost(config: &Config, request: &Request) -> Result<Cost, Error> {
    check_request(config, request)?;
    let secs = Decimal::from(request.max_duration_secs);
    let vcpu_seconds = too_large(
        exact::mul(Decimal::from(request.vcpus), secs),
        "vCPU-seconds",
    )?;
    let gib_seconds = too_large(
        exact::mul(exact::mib_to_gib(request.memory_mib), secs),
        "GiB-seconds",
    )?;
    price(config, vcpu_seconds, gib_seconds, Decimal::ONE)
}

/// Validates the request and returns a handle that needs no state behind it.
pub fn create(config: &Config, request: &Request) -> Result<Created, Error> {
    check_request(config, request)?;
    // The pool's capacity is counted by the host; the simulator has nothing to allocate.
    let region = request
        .region
        .map(str::to_owned)
        .or_else(|| config.regions.first().cloned());
    Ok(Created {
        handle: format!("{HANDLE_PREFIX}{}", request.sandbox_id),
        region,
    })
}

/// `running` until `created-at + max-duration`, then `stopped` (the provider's timeout).
pub fn status(
    request: &Request,
    handle: &str,
    created_at_ms: u64,
    now_ms: u64,
) -> Result<(State, String), Error> {
    // An empty handle is the host asking after a create whose answer it lost: the
    // sandbox is found by its id, as a provider finds one by the tag `create` set.
    if !handle.is_empty() && handle.strip_prefix(HANDLE_PREFIX) != Some(request.sandbox_id) {
        return Err(Error::NotFound(format!(
            "handle {handle:?} does not name sandbox {:?}",
            request.sandbox_id
        )));
    }
    let expires_at_ms =
        created_at_ms.saturating_add(request.max_duration_secs.saturating_mul(1000));
    if now_ms < expires_at_ms {
        Ok((
            State::Running,
            format!("simulated; expires in {} ms", expires_at_ms - now_ms),
        ))
    } else {
        Ok((
            State::Stopped,
            format!("simulated; expired {} ms ago", now_ms - expires_at_ms),
        ))
    }
}

/// Usage over `now - created-at`. The measures stop at the maximum duration (the
/// simulated provider stops the sandbox then, see [`status`]); `duration_ms` echoes the
/// host-measured lifetime unchanged. Depends on the context only, so it is idempotent.
pub fn destroy(request: &Request, created_at_ms: u64, now_ms: u64) -> Result<Usage, Error> {
    let duration_ms = now_ms.saturating_sub(created_at_ms);
    let billed_ms = duration_ms.min(request.max_duration_secs.saturating_mul(1000));
    let secs = exact::millis_to_secs(billed_ms);
    let vcpu_seconds = too_large(
        exact::mul(Decimal::from(request.vcpus), secs),
        "vCPU-seconds",
    )?;
    let gib_seconds = too_large(
        exact::mul(exact::mib_to_gib(request.memory_mib), secs),
        "GiB-seconds",
    )?;
    let measure = |(name, unit, _): (&str, &str, &str), quantity: Decimal| Measure {
        name: name.to_owned(),
        quantity: exact::to_contract_string(quantity),
        unit: unit.to_owned(),
    };
    Ok(Usage {
        duration_ms,
        measures: vec![
            measure(VCPU, vcpu_seconds),
            measure(MEMORY, gib_seconds),
            measure(SANDBOXES, Decimal::ONE),
        ],
    })
}

/// Prices `usage` with the same rates and line items as [`estimate_cost`], so the meter
/// over the full maximum duration equals the estimate.
pub fn meter_actual(config: &Config, usage: &Usage) -> Result<Cost, Error> {
    let mut found: [Option<Decimal>; 3] = [None; 3];
    for m in &usage.measures {
        let slot = [VCPU, MEMORY, SANDBOXES]
            .iter()
            .position(|(name, _, _)| *name == m.name)
            .ok_or_else(|| Error::InvalidRequest(format!("unknown measure {:?}", m.name)))?;
        if found[slot].is_some() {
            return Err(Error::InvalidRequest(format!(
                "measure {:?} appears twice",
                m.name
            )));
        }
        let q = exact::parse(&m.quantity).map_err(|why| {
            Error::InvalidRequest(format!("measure {:?} = {:?}: {why}", m.name, m.quantity))
        })?;
        found[slot] = Some(q);
    }
    let [vcpu, mem, sandboxes] = found;
    // A missing measure is nothing used (e.g. usage recorded before a measure existed).
    price(
        config,
        vcpu.unwrap_or(Decimal::ZERO),
        mem.unwrap_or(Decimal::ZERO),
        sandboxes.unwrap_or(Decimal::ZERO),
    )
}

/// The pool size: `Some` only when `capacity` is configured.
pub fn capacity(config: &Config) -> Option<u32> {
    config.capacity
}

fn check_request(config: &Config, r: &Request) -> Result<(), Error> {
    let invalid = |what: String| Err(Error::InvalidRequest(what));
    if r.vcpus < 1 {
        return invalid(format!("vcpus = {}: at least 1 is needed", r.vcpus));
    }
    if r.memory_mib < 128 {
        return invalid(format!(
            "memory-mib = {}: at least 128 MiB is needed",
            r.memory_mib
        ));
    }
    if r.max_duration_secs < 1 {
        return invalid("max-duration-secs = 0: at least 1 second is needed".to_owned());
    }
    if r.template.trim().is_empty() {
        return invalid("template is empty".to_owned());
    }
    if let Some(region) = r.region
        && !config.regions.is_empty()
        && !config.regions.iter().any(|r| r == region)
    {
        return Err(Error::Unsupported(format!(
            "region {region:?} is not served (regions: {})",
            config.regions.join(", ")
        )));
    }
    Ok(())
}

fn too_large(d: Option<Decimal>, what: &str) -> Result<Decimal, Error> {
    d.ok_or_else(|| Error::InvalidRequest(format!("{what} too large to price exactly")))
}

/// The line items and total for the given quantities, all exact.
fn price(
    config: &Config,
    vcpu_seconds: Decimal,
    gib_seconds: Decimal,
    sandboxes: Decimal,
) -> Result<Cost, Error> {
    let lines = [
        (VCPU, vcpu_seconds, config.price_vcpu_second),
        (MEMORY, gib_seconds, config.price_gib_second),
        (SANDBOXES, sandboxes, config.price_per_sandbox),
    ];
    // The fee line only when a fee is configured.
    let count = if config.price_per_sandbox.is_zero() {
        2
    } else {
        3
    };
    let mut total = Decimal::ZERO;
    let mut line_items = Vec::with_capacity(count);
    for ((_, unit, description), quantity, unit_price) in lines.into_iter().take(count) {
        let amount = exact::mul(quantity, unit_price).ok_or_else(|| {
            Error::Internal(format!(
                "{description}: {quantity} × {unit_price} is not exact within 28 digits"
            ))
        })?;
        total = exact::add(total, amount)
            .ok_or_else(|| Error::Internal("the total is not exact within 28 digits".to_owned()))?;
        line_items.push(LineItem {
            description: description.to_owned(),
            quantity: exact::to_contract_string(quantity),
            unit: unit.to_owned(),
            unit_price: exact::to_contract_string(unit_price),
            amount: exact::to_contract_string(amount),
        });
    }
    Ok(Cost {
        total: exact::to_contract_string(total),
        currency: config.currency.clone(),
        line_items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn request() -> Request<'static> {
        Request {
            sandbox_id: "sb-1",
            template: "base",
            vcpus: 2,
            memory_mib: 512,
            max_duration_secs: 3600,
            region: None,
        }
    }

    fn config(kv: &[(&str, &str)]) -> Config {
        let pairs: Vec<_> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_pairs(&pairs).unwrap()
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// Every line is quantity × unit price exactly, and the total is their exact sum.
    fn assert_consistent(cost: &Cost) {
        let mut sum = Decimal::ZERO;
        for l in &cost.line_items {
            assert_eq!(
                dec(&l.quantity) * dec(&l.unit_price),
                dec(&l.amount),
                "{l:?}"
            );
            sum += dec(&l.amount);
        }
        assert_eq!(sum, dec(&cost.total));
        for s in cost
            .line_items
            .iter()
            .flat_map(|l| [&l.quantity, &l.unit_price, &l.amount])
            .chain([&cost.total])
        {
            assert!(exact::parse(s).is_ok(), "{s:?} is not a contract decimal");
        }
    }

    #[test]
    fn estimate_prices_the_whole_duration() {
        let cost = estimate_cost(&Config::default(), &request()).unwrap();
        // 2 vCPU × 3600 s × 0.000014 = 0.1008; 0.5 GiB × 3600 s × 0.0000045 = 0.0081.
        assert_eq!(cost.line_items[0].quantity, "7200");
        assert_eq!(cost.line_items[0].amount, "0.1008");
        assert_eq!(cost.line_items[1].quantity, "1800");
        assert_eq!(cost.line_items[1].amount, "0.0081");
        assert_eq!(cost.line_items.len(), 2);
        assert_eq!(cost.total, "0.1089");
        assert_eq!(cost.currency, "USD");
        assert_consistent(&cost);
    }

    #[test]
    fn fee_line_only_when_configured() {
        let cost = estimate_cost(
            &config(&[("price_per_sandbox", "0.01"), ("currency", "EUR")]),
            &request(),
        )
        .unwrap();
        assert_eq!(cost.line_items.len(), 3);
        assert_eq!(cost.line_items[2].amount, "0.01");
        assert_eq!(cost.total, "0.1189");
        assert_eq!(cost.currency, "EUR");
        assert_consistent(&cost);
    }

    #[test]
    fn meter_for_the_full_duration_equals_the_estimate() {
        for cfg in [
            Config::default(),
            config(&[
                ("price_per_sandbox", "0.25"),
                ("price_gib_second", "0.0000001234"),
            ]),
        ] {
            for (vcpus, mib, secs) in [
                (1, 128, 1),
                (2, 1000, 3600),
                (7, 3333, 86_399),
                (64, 262_144, 604_800),
            ] {
                let r = Request {
                    vcpus,
                    memory_mib: mib,
                    max_duration_secs: secs,
                    ..request()
                };
                let estimate = estimate_cost(&cfg, &r).unwrap();
                let usage = destroy(&r, 1_000, 1_000 + secs * 1000).unwrap();
                let meter = meter_actual(&cfg, &usage).unwrap();
                assert_eq!(meter, estimate);
                assert_consistent(&meter);
            }
        }
    }

    #[test]
    fn destroy_measures_the_lifetime_and_is_idempotent() {
        let usage = destroy(&request(), 10_000, 11_500).unwrap();
        assert_eq!(usage.duration_ms, 1500);
        assert_eq!(
            usage.measures[0],
            Measure {
                name: "vcpu-seconds".into(),
                quantity: "3".into(),
                unit: "vcpu-second".into()
            }
        );
        assert_eq!(usage.measures[1].quantity, "0.75");
        assert_eq!(usage.measures[2].quantity, "1");
        assert_eq!(destroy(&request(), 10_000, 11_500).unwrap(), usage);
        let cost = meter_actual(&Config::default(), &usage).unwrap();
        assert_eq!(cost.total, "0.000045375");
        assert_consistent(&cost);
        // Past the maximum duration the measures stop; the lifetime is echoed as measured.
        let late = destroy(&request(), 0, 4_000_000).unwrap();
        assert_eq!(late.duration_ms, 4_000_000);
        assert_eq!(late.measures[0].quantity, "7200");
        // A clock that went backwards measures nothing rather than wrapping.
        assert_eq!(
            destroy(&request(), 5_000, 4_000).unwrap().measures[0].quantity,
            "0"
        );
    }

    #[test]
    fn meter_refuses_what_it_did_not_measure() {
        let mut usage = destroy(&request(), 0, 1000).unwrap();
        usage.measures[0].quantity = "1e-5".into();
        assert!(
            matches!(meter_actual(&Config::default(), &usage), Err(Error::InvalidRequest(m)) if m.contains("1e-5"))
        );
        usage.measures[0] = Measure {
            name: "gpu-seconds".into(),
            quantity: "1".into(),
            unit: "s".into(),
        };
        assert!(
            matches!(meter_actual(&Config::default(), &usage), Err(Error::InvalidRequest(m)) if m.contains("gpu-seconds"))
        );
    }

    #[test]
    fn requests_out_of_range_are_refused() {
        let cfg = config(&[("regions", "eu-west,us-east")]);
        for bad in [
            Request {
                vcpus: 0,
                ..request()
            },
            Request {
                memory_mib: 127,
                ..request()
            },
            Request {
                max_duration_secs: 0,
                ..request()
            },
            Request {
                template: " ",
                ..request()
            },
        ] {
            assert!(
                matches!(create(&cfg, &bad), Err(Error::InvalidRequest(_))),
                "{bad:?}"
            );
            assert!(
                matches!(estimate_cost(&cfg, &bad), Err(Error::InvalidRequest(_))),
                "{bad:?}"
            );
        }
        let elsewhere = Request {
            region: Some("ap-south"),
            ..request()
        };
        assert!(
            matches!(create(&cfg, &elsewhere), Err(Error::Unsupported(m)) if m.contains("ap-south"))
        );
        let here = Request {
            region: Some("us-east"),
            ..request()
        };
        assert_eq!(
            create(&cfg, &here).unwrap().region.as_deref(),
            Some("us-east")
        );
        assert_eq!(
            create(&cfg, &request()).unwrap().region.as_deref(),
            Some("eu-west")
        );
    }

    #[test]
    fn huge_requests_are_refused_not_rounded() {
        let r = Request {
            vcpus: u32::MAX,
            memory_mib: u32::MAX,
            max_duration_secs: u64::MAX,
            ..request()
        };
        assert!(matches!(
            estimate_cost(&Config::default(), &r),
            Err(Error::InvalidRequest(_))
        ));
        let cfg = config(&[("price_vcpu_second", "0.1234567890123456789012345678")]);
        let r = Request {
            vcpus: 3,
            ..request()
        };
        assert!(matches!(estimate_cost(&cfg, &r), Err(Error::Internal(_))));
    }

    #[test]
    fn status_follows_the_maximum_duration() {
        let r = request();
        let h = create(&Config::default(), &r).unwrap().handle;
        assert_eq!(h, "stub-sb-1");
        assert_eq!(status(&r, &h, 0, 3_599_999).unwrap().0, State::Running);
        assert_eq!(status(&r, &h, 0, 3_600_000).unwrap().0, State::Stopped);
        assert!(matches!(
            status(&r, "stub-other", 0, 0),
            Err(Error::NotFound(_))
        ));
        // A lost handle: found by the request's sandbox id.
        assert_eq!(status(&r, "", 0, 1).unwrap().0, State::Running);
    }

    #[test]
    fn info_reports_the_configuration() {
        let pool = config(&[("kind", "self-hosted"), ("capacity", "2")]);
        let i = info(Ok(&pool));
        assert_eq!(
            (i.id.as_str(), i.kind, i.has_capacity, i.startup_latency_ms),
            ("saas-stub", Kind::SelfHosted, true, 20)
        );
        assert_eq!(capacity(&pool), Some(2));
        assert_eq!(capacity(&Config::default()), None);
        let broken = info(Err("config key \"kind\" = \"x\""));
        assert!(broken.name.contains("configuration error"));
    }
}
