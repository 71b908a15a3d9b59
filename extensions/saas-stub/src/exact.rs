//! Exact decimal arithmetic for prices: every result is either exact or refused, never
//! rounded, and never has more significant digits than the contract allows (28).
//!
//! `rust_decimal`'s own operators round silently when a product needs more than 28
//! decimal places, so products and sums are computed on the mantissas here.

use rust_decimal::Decimal;

/// The largest mantissa with at most 28 significant digits.
const MAX_MANTISSA: u128 = 10u128.pow(28) - 1;

// Prices are small numbers: the helpers below take a 64-bit path when the mantissas fit,
// because 128-bit multiplication and division are library calls on wasm32.

/// The non-negative mantissa and scale of `d` as stored (no normalisation).
fn raw(d: Decimal) -> Option<(u128, u32)> {
    if d.is_sign_negative() && !d.is_zero() {
        return None;
    }
    Some((d.mantissa().unsigned_abs(), d.scale()))
}

/// Drops trailing zeros of `m × 10^-scale` (1.500 → 1.5).
fn strip(mut m: u128, mut scale: u32) -> (u128, u32) {
    if m == 0 {
        return (0, 0);
    }
    if let Ok(mut small) = u64::try_from(m) {
        while scale > 0 && small.is_multiple_of(10) {
            small /= 10;
            scale -= 1;
        }
        return (u128::from(small), scale);
    }
    while scale > 0 && m.is_multiple_of(10) {
        m /= 10;
        scale -= 1;
    }
    (m, scale)
}

/// Builds `m × 10^-scale` without trailing zeros; `None` if it cannot be represented
/// exactly within 28 significant digits and a scale of at most 28.
fn from_parts(m: u128, scale: u32) -> Option<Decimal> {
    let (m, scale) = strip(m, scale);
    if scale > 28 || m > MAX_MANTISSA {
        return None;
    }
    if let Ok(small) = u64::try_from(m) {
        // The common case, without the 128-bit checks.
        return Some(Decimal::from_parts(
            small as u32,
            (small >> 32) as u32,
            0,
            false,
            scale,
        ));
    }
    Decimal::try_from_i128_with_scale(i128::try_from(m).ok()?, scale).ok()
}

/// `a × b` exactly; `None` for negative input or a product that is not representable.
pub fn mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = raw(a)?;
    let (mb, sb) = raw(b)?;
    let (ma, sa) = strip(ma, sa);
    let (mb, sb) = strip(mb, sb);
    let product = if ma <= u128::from(u32::MAX) && mb <= u128::from(u32::MAX) {
        // Both below 2^32: the product fits 64 bits.
        u128::from((ma as u64) * (mb as u64))
    } else {
        ma.checked_mul(mb)?
    };
    from_parts(product, sa + sb)
}

/// `a + b` exactly; `None` for negative input or a sum that is not representable.
pub fn add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let (ma, sa) = raw(a)?;
    let (mb, sb) = raw(b)?;
    let scale = sa.max(sb);
    if let (Ok(a), Ok(b)) = (u64::try_from(ma), u64::try_from(mb))
        && let Some(sum) = pow10_u64(scale - sa)
            .and_then(|p| a.checked_mul(p))
            .zip(pow10_u64(scale - sb).and_then(|p| b.checked_mul(p)))
            .and_then(|(a, b)| a.checked_add(b))
    {
        return from_parts(u128::from(sum), scale);
    }
    let ma = ma.checked_mul(10u128.checked_pow(scale - sa)?)?;
    let mb = mb.checked_mul(10u128.checked_pow(scale - sb)?)?;
    from_parts(ma.checked_add(mb)?, scale)
}

/// `10^exp` when it fits 64 bits.
fn pow10_u64(exp: u32) -> Option<u64> {
    10u64.checked_pow(exp)
}

/// `mib / 1024` exactly: 1024 divides 10^10, so the quotient has at most 10 decimals.
pub fn mib_to_gib(mib: u32) -> Decimal {
    // 10^10 / 1024 = 9_765_625; a u32 times that fits 28 digits with room to spare.
    from_parts(u128::from(mib) * 9_765_625, 10).unwrap_or(Decimal::ZERO)
}

/// Milliseconds as exact seconds (`1500` → `1.5`).
pub fn millis_to_secs(ms: u64) -> Decimal {
    from_parts(u128::from(ms), 3).unwrap_or(Decimal::ZERO)
}

/// The contract's decimal string: plain digits, no exponent, no trailing zeros after
/// the point (`0.10080` → `"0.1008"`, `12.0` → `"12"`).
pub fn to_contract_string(d: Decimal) -> String {
    let Some((m, scale)) = raw(d) else {
        return d.normalize().to_string();
    };
    let (m, scale) = strip(m, scale);
    let Ok(mut m) = u64::try_from(m) else {
        return d.normalize().to_string();
    };
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    let digits = &digits[start..];
    let scale = scale as usize;
    // Written as bytes into a buffer and copied into the string once: at most 20 digits,
    // a point, and a scale of at most 28 ("0." and leading zeros), 30 bytes in all.
    let mut text = [b'0'; 32];
    let len = if scale == 0 {
        text[..digits.len()].copy_from_slice(digits);
        digits.len()
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        text[..int.len()].copy_from_slice(int);
        text[int.len()] = b'.';
        text[int.len() + 1..=digits.len()].copy_from_slice(frac);
        digits.len() + 1
    } else {
        // "0." then zeros (already in the buffer) then the digits.
        text[1] = b'.';
        let len = 2 + scale;
        text[len - digits.len()..len].copy_from_slice(digits);
        len
    };
    match text.get(..len).map(std::str::from_utf8) {
        Some(Ok(s)) => s.to_owned(),
        _ => d.normalize().to_string(),
    }
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
        assert_eq!(
            mul(d("4294967296"), d("4294967296")),
            Some(d("18446744073709551616"))
        );
        assert_eq!(mul(d("0"), d("0.5")), Some(d("0")));
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

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn decimal() -> impl Strategy<Value = Decimal> {
            (any::<u64>(), 0u32..=20)
                .prop_map(|(m, s)| Decimal::from_i128_with_scale(i128::from(m), s))
        }

        proptest! {
            #[test]
            fn strings_match_rust_decimal(d in decimal()) {
                let s = to_contract_string(d);
                prop_assert_eq!(&s, &d.normalize().to_string());
                prop_assert_eq!(parse(&s), Ok(d));
            }

            #[test]
            fn products_are_exact_when_they_exist(a in decimal(), b in decimal()) {
                // The exact product of two u64 mantissas fits a u128.
                let mut m = a.mantissa().unsigned_abs() * b.mantissa().unsigned_abs();
                let mut scale = a.scale() + b.scale();
                while m != 0 && scale > 0 && m % 10 == 0 {
                    m /= 10;
                    scale -= 1;
                }
                let representable = m < 10u128.pow(28) && scale <= 28;
                match mul(a, b) {
                    Some(p) => {
                        prop_assert!(representable);
                        prop_assert_eq!(p.mantissa().unsigned_abs(), if m == 0 { 0 } else { m });
                        prop_assert_eq!(p.scale(), if m == 0 { p.scale() } else { scale });
                    }
                    None => prop_assert!(!representable),
                }
            }

            #[test]
            fn sums_match_rust_decimal_when_exact(a in decimal(), b in decimal()) {
                if let Some(s) = add(a, b) {
                    prop_assert_eq!(s, a + b);
                }
            }
        }
    }
}
