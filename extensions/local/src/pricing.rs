//! Exact prices. Quantities: `cpu-seconds` (the CPU time the agent measured in the
//! sandbox's cgroup) and `gib-seconds` (the memory allocated to it × its lifetime). The
//! estimate prices the maximum of both for the maximum duration (every vCPU busy
//! throughout), and the meter caps its quantities at that maximum, so for the same request
//! the meter never exceeds the estimate.
//!
//! Every product and sum is exact or refused: `rust_decimal`'s own multiplication rounds
//! beyond 28 decimal places, so products are computed on the mantissas here.

use rust_decimal::Decimal;

/// One priced line: `quantity × unit_price = amount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub description: String,
    pub quantity: Decimal,
    pub unit: &'static str,
    pub unit_price: Decimal,
    pub amount: Decimal,
}

/// A price: its lines and their exact sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub lines: Vec<Line>,
    pub total: Decimal,
}

/// The measures `destroy` reports and `meter-actual` prices.
pub const CPU_SECONDS: &str = "cpu-seconds";
pub const GIB_SECONDS: &str = "gib-seconds";
/// Informational: the most memory the sandbox held at once.
pub const PEAK_MEMORY_BYTES: &str = "peak-memory-bytes";

/// The largest mantissa with 28 significant digits.
const MAX_MANTISSA: u128 = 10u128.pow(28) - 1;

fn from_parts(mut m: u128, mut scale: u32) -> Option<Decimal> {
    while scale > 0 && m.is_multiple_of(10) {
        m /= 10;
        scale -= 1;
    }
    if m > MAX_MANTISSA || scale > 28 {
        return None;
    }
    Decimal::try_from_i128_with_scale(i128::try_from(m).ok()?, scale).ok()
}

fn parts(d: Decimal) -> Option<(u128, u32)> {
    (!d.is_sign_negative() || d.is_zero()).then(|| (d.mantissa().unsigned_abs(), d.scale()))
}

/// `a × b` exactly, or `None`.
pub fn mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = parts(a)?;
    let (mb, sb) = parts(b)?;
    from_parts(ma.checked_mul(mb)?, sa + sb)
}

/// `a + b` exactly, or `None`.
pub fn add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = parts(a)?;
    let (mb, sb) = parts(b)?;
    let s = sa.max(sb);
    let ma = ma.checked_mul(10u128.checked_pow(s - sa)?)?;
    let mb = mb.checked_mul(10u128.checked_pow(s - sb)?)?;
    from_parts(ma.checked_add(mb)?, s)
}

/// CPU-seconds from microseconds, exactly.
pub fn cpu_seconds(cpu_us: u64) -> Decimal {
    from_parts(u128::from(cpu_us), 6).unwrap_or(Decimal::MAX)
}

/// GiB-seconds of `mib` over `ms`: mib × ms / (1024 × 1000) = mib × ms × 5^10 / 10^13.
pub fn gib_seconds(mib: u32, ms: u64) -> Decimal {
    from_parts(u128::from(mib) * u128::from(ms) * 9_765_625, 13).unwrap_or(Decimal::MAX)
}

/// The most CPU time a sandbox of `vcpus` can use over `max_secs`.
pub fn max_cpu_seconds(vcpus: u32, max_secs: u64) -> Decimal {
    from_parts(u128::from(vcpus) * u128::from(max_secs), 0).unwrap_or(Decimal::MAX)
}

/// Rates, in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub cpu_second: Decimal,
    pub gib_second: Decimal,
}

fn line(
    description: &str,
    quantity: Decimal,
    unit: &'static str,
    price: Decimal,
) -> Result<Line, String> {
    let amount = mul(quantity, price).ok_or_else(|| {
        format!("{description}: {quantity} × {price} is not exactly representable")
    })?;
    Ok(Line {
        description: description.to_owned(),
        quantity: quantity.normalize(),
        unit,
        unit_price: price.normalize(),
        amount: amount.normalize(),
    })
}

fn priced(rates: Rates, cpu_s: Decimal, gib_s: Decimal) -> Result<Price, String> {
    let lines = vec![
        line("CPU time", cpu_s, "cpu-second", rates.cpu_second)?,
        line("Memory", gib_s, "gib-second", rates.gib_second)?,
    ];
    let total = lines
        .iter()
        .try_fold(Decimal::ZERO, |t, l| add(t, l.amount))
        .ok_or("the total is not exactly representable")?;
    Ok(Price {
        lines,
        total: total.normalize(),
    })
}

/// The price of `vcpus` and `mib` for the whole `max_secs`.
pub fn estimate(rates: Rates, vcpus: u32, mib: u32, max_secs: u64) -> Result<Price, String> {
    priced(
        rates,
        max_cpu_seconds(vcpus, max_secs),
        gib_seconds(mib, max_secs.saturating_mul(1000)),
    )
}

/// The price of measured usage, each quantity capped at what the estimate covers.
pub fn meter(
    rates: Rates,
    vcpus: u32,
    mib: u32,
    max_secs: u64,
    cpu_s: Decimal,
    gib_s: Decimal,
) -> Result<Price, String> {
    let max_cpu = max_cpu_seconds(vcpus, max_secs);
    let max_gib = gib_seconds(mib, max_secs.saturating_mul(1000));
    priced(rates, cpu_s.min(max_cpu), gib_s.min(max_gib))
}

/// The quantities `destroy` reports for a sandbox alive `duration_ms` (host clock) that
/// used `cpu_us` of CPU: CPU-seconds, and allocated GiB-seconds up to the max duration.
pub fn usage_quantities(
    mib: u32,
    max_secs: u64,
    duration_ms: u64,
    cpu_us: u64,
) -> (Decimal, Decimal) {
    let ms = duration_ms.min(max_secs.saturating_mul(1000));
    (cpu_seconds(cpu_us), gib_seconds(mib, ms))
}

/// The contract's decimal format: ASCII digits with at most one `.`, no sign or exponent.
pub fn parse_plain(raw: &str) -> Option<Decimal> {
    let ok = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && raw.bytes().filter(|b| *b == b'.').count() <= 1;
    ok.then(|| raw.parse::<Decimal>().ok()).flatten()
}

/// A measure's quantity.
pub fn parse_quantity(name: &str, raw: &str) -> Result<Decimal, String> {
    parse_plain(raw).ok_or_else(|| format!("measure {name}: not a decimal: {raw:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    const RATES: Rates = Rates {
        cpu_second: Decimal::from_parts(1, 0, 0, false, 5),
        gib_second: Decimal::from_parts(25, 0, 0, false, 7),
    };

    #[test]
    fn the_estimate_prices_the_maximum_exactly() {
        let p = estimate(RATES, 2, 2048, 3600).unwrap();
        assert_eq!(p.lines[0].quantity, d("7200"));
        assert_eq!(p.lines[0].amount, d("0.072"));
        assert_eq!(p.lines[1].quantity, d("7200"));
        assert_eq!(p.lines[1].amount, d("0.018"));
        assert_eq!(p.total, d("0.09"));
        for l in &p.lines {
            assert_eq!(mul(l.quantity, l.unit_price), Some(l.amount));
        }
    }

    #[test]
    fn the_meter_prices_measured_cpu_and_allocated_memory_and_never_exceeds_the_estimate() {
        // 1.234567 s of CPU over 90.5 s with 512 MiB.
        let (cpu, gib) = usage_quantities(512, 3600, 90_500, 1_234_567);
        assert_eq!(cpu, d("1.234567"));
        assert_eq!(gib, d("45.25"));
        let m = meter(RATES, 2, 512, 3600, cpu, gib).unwrap();
        assert_eq!(m.lines[0].amount, d("0.00001234567"));
        assert_eq!(m.lines[1].amount, d("0.000113125"));
        assert_eq!(m.total, d("0.00012547067"));
        // A lifetime past the maximum and impossible CPU readings are capped.
        let est = estimate(RATES, 2, 512, 60).unwrap();
        let (cpu, gib) = usage_quantities(512, 60, 999_999, 999_000_000);
        let m = meter(RATES, 2, 512, 60, cpu, gib).unwrap();
        assert_eq!(m.total, est.total);
        for ms in [0u64, 1, 59_999, 60_000] {
            for cpu_us in [0u64, 1, 120_000_000] {
                let (c, g) = usage_quantities(777, 60, ms, cpu_us);
                assert!(
                    meter(RATES, 2, 777, 60, c, g).unwrap().total
                        <= estimate(RATES, 2, 777, 60).unwrap().total
                );
            }
        }
    }

    #[test]
    fn arithmetic_is_exact_or_refused() {
        assert_eq!(gib_seconds(1, 1), d("0.0000009765625"));
        assert_eq!(cpu_seconds(1), d("0.000001"));
        assert_eq!(mul(d("0.1"), d("0.2")), Some(d("0.02")));
        assert_eq!(add(d("0.1"), d("0.2")), Some(d("0.3")));
        // 28 significant digits would be lost: refused, not rounded.
        assert_eq!(mul(d("0.0000000000001"), d("0.0000000000000001")), None);
        assert!(line("x", d("0.0000000000001"), "u", d("0.0000000000000001")).is_err());
        assert_eq!(parse_quantity("cpu-seconds", "1.5").unwrap(), d("1.5"));
        for bad in ["", "-1", "1e3", "1.2.3", "abc"] {
            assert!(parse_quantity("cpu-seconds", bad).is_err(), "{bad}");
        }
    }
}
