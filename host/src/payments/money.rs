//! Ledger amounts: integers at a fixed scale of 10^-9 of a currency unit ("nano-units").
//!
//! Prices and metering stay in exact `Decimal`; they are turned into ledger units exactly
//! once, by one written rule, and the exact decimal is kept beside the rounded integer:
//!
//! - a **hold** rounds *up* (away from zero): the hold must cover the cost;
//! - a **charge** rounds *half away from zero* (`0.5` nano-units → 1).
//!
//! `rust_decimal`'s default rounding is banker's rounding; it is never used here: every
//! conversion names its strategy.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::money::{DecimalError, parse_decimal};

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

/// An amount in ledger units with its currency, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitsIn {
    /// Ledger units.
    pub units: Units,
    /// Currency code.
    pub currency: crate::money::Currency,
}

impl fmt::Display for UnitsIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", display_units(self.units), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

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
