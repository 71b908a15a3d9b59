//! Exact decimal arithmetic for prices: every result is either exact or refused, never
//! rounded, and never has more significant digits than the contract allows (28).
//!
//! `rust_decimal`'s own operators round silently when a product needs more than 28
//! decimal places, so products and sums are computed on the mantissas here.

use rust_decimal::Decimal;

/// The largest mantissa with at most 28 significant digits.
const MAX_MANTISSA: u128 = 10u128.pow(28) - 1;

/// Builds `m × 10^-scale`, dropping trailing zeros as needed; `None` if it cannot be
/// represented exactly within 28 significant digits and a scale of at most 28.
fn from_parts(mut m: u128, mut scale: u32) -> Option<Decimal> {
    while scale > 28 || m > MAX_MANTISSA {
        if scale == 0 || !m.is_multiple_of(10) {
            return None;
        }
        m /= 10;
        scale -= 1;
    }
    let m = i128::try_from(m).ok()?;
    Decimal::try_from_i128_with_scale(m, scale)
        .ok()
        .map(|d| d.normalize())
}

/// The non-negative mantissa of `d` after dropping trailing zeros, and its scale.
fn parts(d: Decimal) -> Option<(u128, u32)> {
    if d.is_sign_negative() && !d.is_zero() {
        return None;
    }
    let d = d.normalize();
    Some((d.mantissa().unsigned_abs(), d.scale()))
}

/// `a × b` exactly; `None` when the product is negative input or not representable.
pub fn mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = parts(a)?;
    let (mb, sb) = parts(b)?;
    from_parts(ma.checked_mul(mb)?, sa + sb)
}

/// `a + b` exactly; `None` for negative input or a sum that is not representable.
pub fn add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = parts(a)?;
    let (mb, sb) = parts(b)?;
    let scale = sa.max(sb);
    let ma = ma.checked_mul(10u128.checked_pow(scale - sa)?)?;
    let mb = mb.checked_mul(10u128.checked_pow(scale - sb)?)?;
    from_parts(ma.checked_add(mb)?, scale)
}

/// `mib / 1024` exactly: 1024 divides 10^10, so the quotient has at most 10 decimals.
pub fn mib_to_gib(mib: u32) -> Decimal {
    // 10^10 / 1024 = 9_765_625; a u32 times that fits 28 digits with room to spare.
    from_parts(u128::from(mib) * 9_765_625, 10).unwrap_or(Decimal::ZERO)
}

/// Milliseconds as exact seconds (`1500` → `1.5`).
pub fn millis_to_secs(ms: u64) -> Decimal {
    Decimal::from_i128_with_scale(i128::from(ms), 3).normalize()
}

/// The contract's decimal string: plain digits, no exponent, trailing zeros dropped.
pub fn to_contract_string(d: Decimal) -> String {
    d.normalize().to_string()
}

/// Parses the contract's strict decimal format: ASCII digits with at most one inner `.`,
/// no sign, no exponent, at most 28 significant digits.
pub fn parse(s: &str) -> Result<Decimal, String> {
    let well_formed = !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().filter(|&c| c == '.').count() <= 1;
    if !well_formed {
        return Err(
            "not a plain decimal (digits with at most one '.', no sign or exponent)".into(),
        );
    }
    let significant = s
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    if significant > 28 {
        return Err("has more than 28 significant digits".into());
    }
    Decimal::from_str_exact(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn products_are_exact_or_refused() {
        assert_eq!(mul(d("7200"), d("0.000014")), Some(d("0.1008")));
        // 28 decimals of each factor: the product needs 56 and does not end in zeros.
        assert_eq!(mul(d("0.1234567890123456789012345678"), d("0.3")), None);
        // Needs more than 28 digits only before trailing zeros are dropped.
        assert_eq!(
            mul(d("1000000000000000000000"), d("0.0000000000000000000001")),
            Some(d("0.1"))
        );
        assert_eq!(mul(d("10000000000000000000000000000"), d("10")), None);
        assert_eq!(mul(d("-1"), d("1")), None);
    }

    #[test]
    fn sums_are_exact_or_refused() {
        assert_eq!(add(d("0.1008"), d("0.0162")), Some(d("0.117")));
        assert_eq!(add(d("9999999999999999999999999999"), d("1")), None);
        assert_eq!(add(d("0.0000000000000000000000000001"), d("1000")), None);
    }

    #[test]
    fn memory_and_time_conversions_are_exact() {
        assert_eq!(mib_to_gib(512), d("0.5"));
        assert_eq!(mib_to_gib(1000), d("0.9765625"));
        assert_eq!(mib_to_gib(u32::MAX), d("4194303.9990234375"));
        assert_eq!(millis_to_secs(1500), d("1.5"));
        assert_eq!(to_contract_string(d("0.10080")), "0.1008");
        assert_eq!(
            to_contract_string(mul(d("0.00001"), d("0.00001")).unwrap()),
            "0.0000000001"
        );
    }

    #[test]
    fn parse_is_strict() {
        assert_eq!(parse("0.000014"), Ok(d("0.000014")));
        for bad in [
            "", "abc", "-1", "1e-5", "+1", "1.2.3", ".5", "5.", " 1", "1,0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&"1".repeat(40)).is_err());
    }
}
