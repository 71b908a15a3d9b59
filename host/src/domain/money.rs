//! Exact money, in one module: the strict decimal-string format of the extension
//! contract, currencies and amounts tagged with them, and how the ledger stores amounts
//! (integers at a fixed scale, rounded once by a written rule). Never floats.
//!
//! Two renderings, each for one context: [`Money`]'s `Display` (`0.018 USD`, the exact
//! amount without trailing zeros) in messages and logs, and [`display_decimal`] (at
//! least two decimal places, `100.00`) in table cells. JSON carries amounts as decimal
//! strings through serde.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("empty string is not a decimal")]
    Empty,
    // Each variant holds the value as quoted by `text::quoted` (a prefix when long).
    #[error("{0} is negative; amounts and quantities must be zero or more")]
    Negative(String),
    #[error("{0} uses an exponent; write the digits out (e.g. 0.00001, not 1e-5)")]
    Exponent(String),
    #[error("{0} is not a plain decimal (digits with at most one '.')")]
    Malformed(String),
    #[error("{0} has more than 28 significant digits")]
    TooLarge(String),
}

/// Parses the contract's decimal format: ASCII digits with at most one `.`, no sign, no
/// exponent, no separators, at most 28 significant digits. `"0.000014"` → 0.000014.
pub fn parse_decimal(s: &str) -> Result<Decimal, DecimalError> {
    // Every string an extension returns passes here: the common case (up to 19 digits,
    // which fit a u64 mantissa) is parsed in one pass; anything else takes the full path.
    if let Some(d) = parse_short(s.as_bytes()) {
        return Ok(d);
    }
    parse_decimal_slow(s)
}

/// One pass over `digits[.digits]` with at most 19 digits in all; `None` for anything
/// else (including every malformed string, which [`parse_decimal_slow`] then explains).
/// The result keeps the written scale (`"3.50"` is 350 × 10⁻²), as `from_str_exact` does.
fn parse_short(bytes: &[u8]) -> Option<Decimal> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut dot: Option<usize> = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' if digits < 19 => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                digits += 1;
            }
            b'.' if dot.is_none() && i > 0 && i + 1 < bytes.len() => dot = Some(i),
            _ => return None,
        }
    }
    let scale = dot.map_or(0, |i| bytes.len() - i - 1);
    let scale = u32::try_from(scale).ok()?;
    // 19 digits are below 10^19 < 2^64: no overflow above, and the scale is at most 18.
    Some(Decimal::from_parts(
        mantissa as u32,
        (mantissa >> 32) as u32,
        0,
        false,
        scale,
    ))
}

/// The full check, with an error that says what is wrong.
fn parse_decimal_slow(s: &str) -> Result<Decimal, DecimalError> {
    if s.is_empty() {
        return Err(DecimalError::Empty);
    }
    if s.starts_with('-') {
        return Err(DecimalError::Negative(super::text::quoted(s)));
    }
    if s.contains(['e', 'E']) && s.chars().all(|c| c.is_ascii_digit() || "eE.+-".contains(c)) {
        return Err(DecimalError::Exponent(super::text::quoted(s)));
    }
    let mut dots = 0;
    for c in s.chars() {
        match c {
            '0'..='9' => {}
            '.' => dots += 1,
            _ => return Err(DecimalError::Malformed(super::text::quoted(s))),
        }
    }
    if dots > 1 || s == "." || s.starts_with('.') || s.ends_with('.') {
        return Err(DecimalError::Malformed(super::text::quoted(s)));
    }
    let significant = s
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    if significant > 28 {
        return Err(DecimalError::TooLarge(super::text::quoted(s)));
    }
    Decimal::from_str_exact(s).map_err(|_| DecimalError::TooLarge(super::text::quoted(s)))
}

/// A currency code such as `USD`: 3 to 8 ASCII uppercase letters or digits.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "USD")]
pub struct Currency(String);

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a currency code (3 to 8 uppercase letters or digits, e.g. USD)")]
pub struct CurrencyError(pub String);

impl Currency {
    /// Validates and wraps a currency code.
    pub fn new(code: &str) -> Result<Self, CurrencyError> {
        let ok = (3..=8).contains(&code.len())
            && code
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(code.to_owned()))
        } else {
            Err(CurrencyError(super::text::quoted(code)))
        }
    }

    /// The code, e.g. `"USD"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Currency {
    type Error = CurrencyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exact amount in a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Money {
    /// Exact amount, serialized as a decimal string.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(example = "0.05")]
    pub amount: Decimal,
    pub currency: Currency,
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount.normalize(), self.currency)
    }
}

// ---- ledger units ---------------------------------------------------------------
//
// Ledger amounts: integers at a fixed scale of 10^-9 of a currency unit ("nano-units").
//
// Prices and metering stay in exact `Decimal`; they are turned into ledger units exactly
// once, by one written rule, and the exact decimal is kept beside the rounded integer:
//
// - a **hold** rounds *up* (away from zero): the hold must cover the cost;
// - a **charge** rounds *half away from zero* (`0.5` nano-units → 1).
//
// `rust_decimal`'s default rounding is banker's rounding; it is never used here: every
// conversion names its strategy.

/// Decimal places of a ledger unit: one unit is 10^-9 of a currency unit, so a per-second
/// rate such as `0.0000045` stays exact through a sandbox's total.
pub const SCALE: u32 = 9;

/// Ledger units per currency unit (10^SCALE).
pub const UNITS_PER_CURRENCY_UNIT: i64 = 1_000_000_000;

/// An amount in ledger units (10^-9 of a currency unit). `i64` holds about ±9.2 billion
/// currency units, which is ample for one tenant's prepaid credits; every operation on it
/// is checked.
pub type Units = i64;

/// Why an amount cannot be put on the ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The string is not a plain decimal.
    #[error("amount {input:?}: {reason}")]
    Syntax {
        /// What was given.
        input: String,
        /// Why it was refused.
        reason: DecimalError,
    },
    /// More decimal places than the ledger keeps.
    #[error("amount {0:?} has more than {SCALE} decimal places (the ledger's precision)")]
    TooPrecise(String),
    /// Negative where only zero or more makes sense.
    #[error("amount {0} is negative")]
    Negative(Decimal),
    /// Zero where only a positive amount makes sense.
    #[error("amount must be greater than zero")]
    Zero,
    /// Does not fit the ledger's integer range.
    #[error("amount {0} is too large for the ledger")]
    Overflow(Decimal),
}

/// How an exact decimal becomes ledger units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Holds: round up so the hold always covers the cost.
    Hold,
    /// Charges: round half away from zero.
    Charge,
    /// Grants and typed-in amounts: no rounding allowed; more places than [`SCALE`] is an
    /// error.
    Exact,
}

impl Rounding {
    fn strategy(self) -> RoundingStrategy {
        match self {
            // Amounts are never negative here, so away-from-zero is "up".
            Rounding::Hold => RoundingStrategy::AwayFromZero,
            Rounding::Charge | Rounding::Exact => RoundingStrategy::MidpointAwayFromZero,
        }
    }
}

/// An amount as the ledger stores it: the rounded integer and the exact decimal it came
/// from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerAmount {
    /// Rounded ledger units.
    pub units: Units,
    /// The exact amount before rounding.
    pub exact: Decimal,
}

/// Converts a non-negative exact amount into ledger units by `rounding`.
pub fn to_units(exact: Decimal, rounding: Rounding) -> Result<LedgerAmount, AmountError> {
    if exact.is_sign_negative() && !exact.is_zero() {
        return Err(AmountError::Negative(exact));
    }
    if rounding == Rounding::Exact && exact.normalize().scale() > SCALE {
        return Err(AmountError::TooPrecise(exact.to_string()));
    }
    let rounded = exact.round_dp_with_strategy(SCALE, rounding.strategy());
    let mantissa = rounded.mantissa();
    let shift = SCALE
        .checked_sub(rounded.scale())
        .ok_or(AmountError::Overflow(exact))?;
    let factor = 10i128
        .checked_pow(shift)
        .ok_or(AmountError::Overflow(exact))?;
    let units = mantissa
        .checked_mul(factor)
        .and_then(|u| i64::try_from(u).ok())
        .ok_or(AmountError::Overflow(exact))?;
    Ok(LedgerAmount { units, exact })
}

/// The exact decimal value of `units` ledger units, without trailing zeros.
pub fn from_units(units: Units) -> Decimal {
    Decimal::new(units, SCALE).normalize()
}

/// Renders `units` for people: trailing zeros trimmed, at least two decimal places
/// (`100.00`, `0.0000045`).
pub fn display_units(units: Units) -> String {
    display_decimal(from_units(units))
}

/// Renders a decimal for people with at least two decimal places.
pub fn display_decimal(d: Decimal) -> String {
    let mut d = d.normalize();
    if d.scale() < 2 {
        d.rescale(2);
    }
    d.to_string()
}

/// Parses a typed-in amount (`12.50`): the contract's plain decimal format, no more than
/// [`SCALE`] decimal places, greater than zero. Refuses `1e3`, `-5`, `abc`.
pub fn parse_amount(input: &str) -> Result<LedgerAmount, AmountError> {
    let exact = parse_decimal(input).map_err(|reason| AmountError::Syntax {
        input: input.to_owned(),
        reason,
    })?;
    if exact.normalize().scale() > SCALE {
        return Err(AmountError::TooPrecise(input.to_owned()));
    }
    if exact.is_zero() {
        return Err(AmountError::Zero);
    }
    to_units(exact, Rounding::Exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn accepts_plain_decimals() {
        assert_eq!(parse_decimal("0.000014").unwrap().to_string(), "0.000014");
        assert_eq!(parse_decimal("12").unwrap().to_string(), "12");
        assert_eq!(parse_decimal("3.50").unwrap().to_string(), "3.50");
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "", "abc", "-1", "1e-5", "1E3", "+1", "1.2.3", ".5", "5.", " 1", "1,000", "NaN",
        ] {
            assert!(parse_decimal(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            parse_decimal("1e-5"),
            Err(DecimalError::Exponent(_))
        ));
        assert!(matches!(
            parse_decimal("-1"),
            Err(DecimalError::Negative(_))
        ));
        let forty = "1".repeat(40);
        assert!(matches!(
            parse_decimal(&forty),
            Err(DecimalError::TooLarge(_))
        ));
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_parser() {
        let cases = [
            "0",
            "00",
            "7",
            "0.000014",
            "3.50",
            "1234567890123456789",
            "9999999999999999999",
            "18446744073709551615",
            "0.1234567890123456789",
            "123456789.0123456789",
            "1.000000000000000000",
            "0000000000000000000.1",
            "12345678901234567890",
        ];
        for s in cases {
            let fast = parse_decimal(s).unwrap();
            let full = parse_decimal_slow(s).unwrap();
            assert_eq!(fast, full, "{s}");
            assert_eq!(fast.scale(), full.scale(), "{s}");
            assert_eq!(fast.mantissa(), full.mantissa(), "{s}");
        }
        for bad in [
            "", ".", "1.", ".1", "1..2", "1.2.3", "-0", "+0", "1e5", " 1", "1 ", "٣",
        ] {
            assert_eq!(parse_decimal(bad), parse_decimal_slow(bad), "{bad:?}");
            assert!(parse_decimal(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn both_paths_parse_any_plain_decimal_alike(m in proptest::prelude::any::<u64>(), scale in 0u32..=24, pad in 0usize..3) {
            let d = Decimal::from_i128_with_scale(i128::from(m), scale);
            let s = format!("{}{d}", "0".repeat(pad));
            let fast = parse_decimal(&s).unwrap();
            let full = parse_decimal_slow(&s).unwrap();
            proptest::prop_assert_eq!((fast.mantissa(), fast.scale()), (full.mantissa(), full.scale()));
        }
    }

    #[test]
    fn currency_codes() {
        assert!(Currency::new("USD").is_ok());
        assert!(Currency::new("usd").is_err());
        assert!(Currency::new("").is_err());
    }

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn holds_round_up_and_charges_round_half_away() {
        assert_eq!(
            to_units(d("0.0000000001"), Rounding::Hold).unwrap().units,
            1
        );
        assert_eq!(
            to_units(d("0.0000000001"), Rounding::Charge).unwrap().units,
            0
        );
        assert_eq!(
            to_units(d("0.0000000005"), Rounding::Charge).unwrap().units,
            1
        );
        // banker's rounding would give 2 here.
        assert_eq!(
            to_units(d("0.0000000025"), Rounding::Charge).unwrap().units,
            3
        );
        assert_eq!(
            to_units(d("12.5"), Rounding::Exact).unwrap().units,
            12_500_000_000
        );
        assert!(matches!(
            to_units(d("0.0000000001"), Rounding::Exact),
            Err(AmountError::TooPrecise(_))
        ));
    }

    #[test]
    fn parse_refuses_bad_amounts() {
        assert_eq!(parse_amount("12.50").unwrap().units, 12_500_000_000);
        for bad in ["1e3", "-5", "abc", "0.0000000001", "0", ""] {
            assert!(parse_amount(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_amount("99999999999999").is_err());
    }

    #[test]
    fn display() {
        assert_eq!(display_units(100 * UNITS_PER_CURRENCY_UNIT), "100.00");
        assert_eq!(display_units(4_500), "0.0000045");
        assert_eq!(display_units(-1_500_000_000), "-1.50");
    }
}
