//! Sizing and billing like Modal's: a sandbox is billed per second on the larger of what it
//! requested and what it used, of CPU (physical cores) and memory (GiB), at the configured
//! prices (Modal's public ones by default), times the region multiplier when the request
//! pins a region. The measured use comes from `SandboxGetResourceUsage` at `destroy`; when
//! it cannot be read the lifetime × the requested size stands in. All arithmetic is exact.

use rust_decimal::Decimal;

use crate::config::{Config, parse_decimal};
use crate::wit::{BackendError, Cost, LineItem, Measure, Money, SandboxRequest, Usage};

/// Modal caps a sandbox's lifetime at 24 hours.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// The measure names `destroy` reports and `meter-actual` prices.
pub const CPU_MEASURE: &str = "cpu-core-seconds";
/// See [`CPU_MEASURE`].
pub const MEM_MEASURE: &str = "gib-seconds";
/// Informational: what Modal measured (absent when it could not be read).
pub const MEASURED_CPU: &str = "measured-cpu-core-seconds";
/// See [`MEASURED_CPU`].
pub const MEASURED_MEM: &str = "measured-gib-seconds";

/// What a sandbox asks Modal for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Milli physical cores.
    pub milli_cpu: u32,
    /// MiB.
    pub memory_mib: u32,
}

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// The size of `request` on Modal, or why Modal (as configured) cannot serve it.
pub fn size_for(cfg: &Config, request: &SandboxRequest) -> Result<Size, BackendError> {
    let r = &request.resources;
    if r.gpu.is_some() {
        return Err(BackendError::Unsupported(
            "this extension does not request GPUs from Modal".into(),
        ));
    }
    let max_vcpus = cfg.max_vcpus().map_err(internal)?;
    let max_mib = cfg.max_memory_mib().map_err(internal)?;
    if r.vcpus == 0 || r.memory_mib == 0 {
        return Err(BackendError::InvalidRequest(
            "vcpus and memory-mib must be at least 1".into(),
        ));
    }
    if r.vcpus > max_vcpus || r.memory_mib > max_mib {
        return Err(BackendError::Unsupported(format!(
            "the request needs {} vCPUs and {} MiB; this extension serves up to {max_vcpus} vCPUs and {max_mib} MiB",
            r.vcpus, r.memory_mib
        )));
    }
    if request.max_duration_secs == 0 || request.max_duration_secs > MAX_TIMEOUT_SECS {
        return Err(BackendError::InvalidRequest(format!(
            "max duration {}s is outside Modal's 1..={MAX_TIMEOUT_SECS}s",
            request.max_duration_secs
        )));
    }
    let per_core = cfg.vcpus_per_core().map_err(internal)?;
    // vCPUs → milli physical cores, rounded up so the sandbox never gets less than asked.
    let milli = (u64::from(r.vcpus) * 1000).div_ceil(u64::from(per_core));
    Ok(Size {
        milli_cpu: u32::try_from(milli).map_err(|_| internal("CPU request overflows"))?,
        memory_mib: r.memory_mib,
    })
}

/// Unit prices for `request`: the configured ones, times the region multiplier when the
/// request pins a region.
pub struct Prices {
    pub core_second: Decimal,
    pub gib_second: Decimal,
    pub currency: String,
}

impl Prices {
    /// The prices that apply to `request`.
    pub fn for_request(cfg: &Config, request: &SandboxRequest) -> Result<Prices, BackendError> {
        let mut core = cfg.price_core_second().map_err(internal)?;
        let mut gib = cfg.price_gib_second().map_err(internal)?;
        if request.region.is_some() {
            let m = cfg.region_multiplier().map_err(internal)?;
            core = core
                .checked_mul(m)
                .ok_or_else(|| internal("price overflows"))?;
            gib = gib
                .checked_mul(m)
                .ok_or_else(|| internal("price overflows"))?;
        }
        Ok(Prices {
            core_second: core,
            gib_second: gib,
            currency: cfg.currency().to_owned(),
        })
    }
}

/// Core-seconds of `milli_cpu` over `ms`: milli × ms / 10^6, exact.
pub fn core_seconds(milli_cpu: u32, ms: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(milli_cpu) * i128::from(ms), 6)
}

/// GiB-seconds of `mib` over `ms`: mib × ms / (1024 × 1000) = mib × ms × 5^10 / 10^13, exact.
pub fn gib_seconds(mib: u32, ms: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(mib) * i128::from(ms) * 9_765_625, 13)
}

/// Nanosecond-based quantities (Modal's `cpu_core_nanosecs`, `mem_gib_nanosecs`) in seconds.
pub fn from_nanos(n: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(n), 9)
}

fn text(d: Decimal) -> String {
    d.normalize().to_string()
}

fn line(
    description: &str,
    quantity: Decimal,
    unit: &str,
    price: Decimal,
) -> Result<(LineItem, Decimal), BackendError> {
    let amount = quantity
        .checked_mul(price)
        .ok_or_else(|| internal(format!("{description}: amount overflows")))?;
    Ok((
        LineItem {
            description: description.into(),
            quantity: text(quantity),
            unit: unit.into(),
            unit_price: text(price),
            amount: text(amount),
        },
        amount,
    ))
}

/// The price of `core_s` core-seconds and `gib_s` GiB-seconds.
pub fn price(core_s: Decimal, gib_s: Decimal, prices: &Prices) -> Result<Cost, BackendError> {
    let (cpu, a) = line("CPU", core_s, "core-second", prices.core_second)?;
    let (mem, b) = line("Memory", gib_s, "gib-second", prices.gib_second)?;
    let total = a
        .checked_add(b)
        .ok_or_else(|| internal("total overflows"))?;
    Ok(Cost {
        total: Money {
            amount: text(total),
            currency: prices.currency.clone(),
        },
        line_items: vec![cpu, mem],
    })
}

/// The estimate: the requested size over the whole maximum duration.
pub fn estimate(size: Size, max_secs: u64, prices: &Prices) -> Result<Cost, BackendError> {
    let ms = max_secs.saturating_mul(1000);
    price(
        core_seconds(size.milli_cpu, ms),
        gib_seconds(size.memory_mib, ms),
        prices,
    )
}

/// The usage `destroy` reports: billed quantities max(requested × lifetime, measured), and
/// the measured ones beside them when Modal reported them.
pub fn usage(size: Size, lifetime_ms: u64, measured: Option<(u64, u64)>) -> Usage {
    let req_cpu = core_seconds(size.milli_cpu, lifetime_ms);
    let req_mem = gib_seconds(size.memory_mib, lifetime_ms);
    let mut measures = Vec::with_capacity(4);
    let (cpu, mem) = match measured {
        Some((cpu_ns, mem_ns)) => {
            let used_cpu = from_nanos(cpu_ns);
            let used_mem = from_nanos(mem_ns);
            measures.push(Measure {
                name: MEASURED_CPU.into(),
                quantity: text(used_cpu),
                unit: "core-second".into(),
            });
            measures.push(Measure {
                name: MEASURED_MEM.into(),
                quantity: text(used_mem),
                unit: "gib-second".into(),
            });
            (req_cpu.max(used_cpu), req_mem.max(used_mem))
        }
        None => (req_cpu, req_mem),
    };
    measures.insert(
        0,
        Measure {
            name: CPU_MEASURE.into(),
            quantity: text(cpu),
            unit: "core-second".into(),
        },
    );
    measures.insert(
        1,
        Measure {
            name: MEM_MEASURE.into(),
            quantity: text(mem),
            unit: "gib-second".into(),
        },
    );
    Usage {
        duration_ms: lifetime_ms,
        measures,
    }
}

/// Prices the billed measures of `usage`.
pub fn meter(usage: &Usage, prices: &Prices) -> Result<Cost, BackendError> {
    let measure = |name: &str| -> Result<Decimal, BackendError> {
        match usage.measures.iter().find(|m| m.name == name) {
            None => Ok(Decimal::ZERO),
            Some(m) => parse_decimal(&m.quantity).ok_or_else(|| {
                BackendError::InvalidRequest(format!(
                    "measure {name}: not a decimal: {:?}",
                    m.quantity
                ))
            }),
        }
    };
    price(measure(CPU_MEASURE)?, measure(MEM_MEASURE)?, prices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit::Resources;

    fn request(vcpus: u32, mib: u32, secs: u64, region: Option<&str>) -> SandboxRequest {
        SandboxRequest {
            sandbox_id: "sb-1".into(),
            tenant: "acme".into(),
            profile: "p".into(),
            template: "base".into(),
            resources: Resources {
                vcpus,
                memory_mib: mib,
                disk_mib: 0,
                gpu: None,
            },
            max_duration_secs: secs,
            region: region.map(str::to_owned),
            env: vec![],
            metadata: vec![],
        }
    }

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        Config::from_pairs(pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())))
    }

    #[test]
    fn vcpus_become_milli_physical_cores_rounded_up() {
        let c = cfg(&[]);
        assert_eq!(
            size_for(&c, &request(2, 2048, 60, None)).unwrap().milli_cpu,
            1000
        );
        assert_eq!(
            size_for(&c, &request(1, 512, 60, None)).unwrap().milli_cpu,
            500
        );
        let three = cfg(&[("vcpus_per_core", "3")]);
        assert_eq!(
            size_for(&three, &request(1, 512, 60, None))
                .unwrap()
                .milli_cpu,
            334
        );
        assert!(matches!(
            size_for(&c, &request(65, 512, 60, None)),
            Err(BackendError::Unsupported(_))
        ));
        assert!(matches!(
            size_for(&c, &request(1, 512, 86_401, None)),
            Err(BackendError::InvalidRequest(_))
        ));
        let mut gpu = request(1, 512, 60, None);
        gpu.resources.gpu = Some("A100".into());
        assert!(matches!(
            size_for(&c, &gpu),
            Err(BackendError::Unsupported(_))
        ));
    }

    #[test]
    fn the_estimate_is_the_requested_size_over_the_maximum_duration() {
        let c = cfg(&[]);
        let req = request(2, 2048, 3600, None);
        let size = size_for(&c, &req).unwrap();
        let cost = estimate(size, 3600, &Prices::for_request(&c, &req).unwrap()).unwrap();
        // 1 core × 3600 s × 0.00003942 + 2 GiB × 3600 s × 0.00000672.
        assert_eq!(cost.line_items[0].quantity, "3600");
        assert_eq!(cost.line_items[0].amount, "0.141912");
        assert_eq!(cost.line_items[1].quantity, "7200");
        assert_eq!(cost.line_items[1].amount, "0.048384");
        assert_eq!(cost.total.amount, "0.190296");
        assert_eq!(cost.total.currency, "USD");
        // A pinned region multiplies both prices.
        let c = cfg(&[("region_multiplier", "1.25")]);
        let req = request(2, 2048, 3600, Some("us-east"));
        let cost = estimate(size, 3600, &Prices::for_request(&c, &req).unwrap()).unwrap();
        assert_eq!(cost.line_items[0].unit_price, "0.000049275");
        assert_eq!(cost.total.amount, "0.23787");
    }

    #[test]
    fn billing_is_the_larger_of_requested_and_used() {
        let c = cfg(&[]);
        let req = request(2, 2048, 3600, None);
        let size = size_for(&c, &req).unwrap();
        let prices = Prices::for_request(&c, &req).unwrap();
        // 90 s; Modal measured 30 core-seconds (idle, below the request: 90) and 200
        // GiB-seconds (above the request: 180).
        let u = usage(size, 90_000, Some((30_000_000_000, 200_000_000_000)));
        let q = |n: &str| {
            u.measures
                .iter()
                .find(|m| m.name == n)
                .unwrap()
                .quantity
                .clone()
        };
        assert_eq!(q(CPU_MEASURE), "90");
        assert_eq!(q(MEM_MEASURE), "200");
        assert_eq!(q(MEASURED_CPU), "30");
        let cost = meter(&u, &prices).unwrap();
        assert_eq!(cost.line_items[0].amount, "0.0035478");
        assert_eq!(cost.line_items[1].amount, "0.001344");
        assert_eq!(cost.total.amount, "0.0048918");
        // Unreadable usage: lifetime × requested, no measured lines.
        let u = usage(size, 1_500, None);
        assert_eq!(u.measures.len(), 2);
        assert_eq!(u.duration_ms, 1_500);
        let q = |n: &str| {
            u.measures
                .iter()
                .find(|m| m.name == n)
                .unwrap()
                .quantity
                .clone()
        };
        assert_eq!(q(CPU_MEASURE), "1.5");
        assert_eq!(q(MEM_MEASURE), "3");
        // 512 MiB over 1 ms is a terminating decimal.
        assert_eq!(text(gib_seconds(512, 1)), "0.0005");
        assert_eq!(text(gib_seconds(500, 1)), "0.00048828125");
    }

    #[test]
    fn the_meter_never_exceeds_the_estimate_when_capped_at_the_request() {
        let c = cfg(&[]);
        for (vcpus, mib, secs) in [
            (1, 256, 1),
            (2, 2048, 3600),
            (7, 3000, 86_400),
            (64, 65_536, 600),
        ] {
            let req = request(vcpus, mib, secs, None);
            let size = size_for(&c, &req).unwrap();
            let prices = Prices::for_request(&c, &req).unwrap();
            let est = estimate(size, secs, &prices).unwrap();
            // Used exactly what was requested (the limits equal the request).
            let ms = secs * 1000;
            let cpu_ns = u64::from(size.milli_cpu) * ms * 1000;
            let mem_ns = u64::from(size.memory_mib) * ms * 1_000_000 / 1024;
            let met = meter(&usage(size, ms, Some((cpu_ns, mem_ns))), &prices).unwrap();
            let e: Decimal = est.total.amount.parse().unwrap();
            let m: Decimal = met.total.amount.parse().unwrap();
            assert!(m <= e, "{vcpus} vCPU {mib} MiB {secs}s: {m} > {e}");
        }
    }

    #[test]
    fn a_garbled_measure_is_refused() {
        let c = cfg(&[]);
        let req = request(1, 512, 60, None);
        let u = Usage {
            duration_ms: 1,
            measures: vec![Measure {
                name: CPU_MEASURE.into(),
                quantity: "1e3".into(),
                unit: "core-second".into(),
            }],
        };
        assert!(matches!(
            meter(&u, &Prices::for_request(&c, &req).unwrap()),
            Err(BackendError::InvalidRequest(_))
        ));
    }
}
