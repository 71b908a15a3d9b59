//! How a settlement splits a metered charge against its hold: pure arithmetic on ledger
//! units, apart from the SQL that records it (so every store computes it alike, and it is
//! tested on its own).
//!
//! The charge (the meter rounded half away from zero) is posted from the hold up to the
//! hold's amount; the rest of the hold is released. A charge above the hold is the
//! excess: covered from the tenant's available credits as far as they go, and the
//! remainder written off or taken as debt by the overdraft policy.

use rust_decimal::Decimal;

use super::OverdraftPolicy;
use crate::domain::money::{AmountError, Rounding, Units, from_units, to_units};
use crate::domain::{Cost, LineItem, Money};

/// A charge against a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Posted from the hold (at most the hold).
    pub posted: Units,
    /// Released back to the tenant's available credits.
    pub released: Units,
    /// Charged beyond the hold.
    pub excess: Units,
}

/// Splits `charge` (rounded ledger units) against a hold of `held` units.
pub fn split(held: Units, charge: Units) -> Split {
    let posted = charge.min(held).max(0);
    Split {
        posted,
        released: held - posted,
        excess: charge - posted,
    }
}

/// Where an excess goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overdraft {
    /// Taken from the tenant's available credits.
    pub covered: Units,
    /// Booked to the write-off account (policy `write-off`).
    pub written_off: Units,
    /// Taken as debt, below zero (policy `debt`).
    pub debt: Units,
}

/// Covers `excess` from `available` (the tenant's available credits once the hold is
/// resolved; never below zero here), the rest by `policy`.
pub fn cover_excess(excess: Units, available: Units, policy: OverdraftPolicy) -> Overdraft {
    if excess <= 0 {
        return Overdraft::default();
    }
    let covered = excess.min(available.max(0));
    let rest = excess - covered;
    match policy {
        OverdraftPolicy::WriteOff => Overdraft {
            covered,
            written_off: rest,
            debt: 0,
        },
        OverdraftPolicy::Debt => Overdraft {
            covered,
            written_off: 0,
            debt: rest,
        },
    }
}

/// What a settlement of `meter` (exact) against a hold of `held` will charge and release,
/// before any overdraft: the figures of the meter event, computed before the ledger
/// records them (the event is stored in the settlement's own transaction).
pub fn preview(held: Decimal, meter: Decimal) -> Result<(Decimal, Decimal), AmountError> {
    let charge = to_units(meter, Rounding::Charge)?.units;
    let held = to_units(held, Rounding::Hold)?.units;
    let s = split(held, charge);
    Ok((from_units(charge), from_units(s.released)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_within_the_hold_posts_it_and_releases_the_rest() {
        assert_eq!(
            split(100, 40),
            Split {
                posted: 40,
                released: 60,
                excess: 0
            }
        );
        assert_eq!(
            split(100, 100),
            Split {
                posted: 100,
                released: 0,
                excess: 0
            }
        );
        assert_eq!(
            split(100, 0),
            Split {
                posted: 0,
                released: 100,
                excess: 0
            }
        );
    }

    #[test]
    fn an_excess_is_covered_then_written_off_or_owed() {
        let s = split(100, 180);
        assert_eq!((s.posted, s.released, s.excess), (100, 0, 80));
        assert_eq!(
            cover_excess(80, 50, OverdraftPolicy::WriteOff),
            Overdraft {
                covered: 50,
                written_off: 30,
                debt: 0
            }
        );
        assert_eq!(
            cover_excess(80, 50, OverdraftPolicy::Debt),
            Overdraft {
                covered: 50,
                written_off: 0,
                debt: 30
            }
        );
        assert_eq!(
            cover_excess(80, 500, OverdraftPolicy::WriteOff),
            Overdraft {
                covered: 80,
                ..Overdraft::default()
            }
        );
        // A tenant already below zero (debt) covers nothing more.
        assert_eq!(cover_excess(80, -20, OverdraftPolicy::Debt).debt, 80);
        assert_eq!(
            cover_excess(0, 10, OverdraftPolicy::Debt),
            Overdraft::default()
        );
    }

    #[test]
    fn the_preview_rounds_the_meter_once_half_away_from_zero() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(
            preview(d("0.0111"), d("0.0000040145")).unwrap(),
            (d("0.000004015"), d("0.011095985"))
        );
        // Above the hold: nothing released.
        assert_eq!(
            preview(d("0.01"), d("0.02")).unwrap(),
            (d("0.02"), Decimal::ZERO)
        );
        assert!(preview(d("1"), d("-1")).is_err());
    }
}

/// The platform fee an operator charges for a sandbox that runs on the tenant's own
/// provider account (BYOK), instead of the provider's price: a percentage of the metered
/// provider price and/or a flat amount per sandbox-hour. Both default to 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ByokFee {
    /// Percent of the provider's price (`5` is 5%).
    pub percent: Decimal,
    /// Flat amount per sandbox-hour, in the extension's currency.
    pub per_sandbox_hour: Decimal,
}

/// The `unit` of the line of a BYOK charge that records the provider's price.
pub const BYOK_PROVIDER_PRICE_UNIT: &str = "provider-price";

/// The provider's price recorded in a BYOK charge, if `cost` is one.
pub fn byok_provider_price(cost: &Cost) -> Option<Decimal> {
    cost.line_items
        .iter()
        .find(|l| l.unit == BYOK_PROVIDER_PRICE_UNIT)
        .map(|l| l.quantity)
}

/// What a BYOK sandbox is billed for a provider `price` over `hours`: the fee lines, plus
/// a zero-amount line that records the provider's price for the tenant's own records.
/// Applies alike to the estimate (held) and the meter (charged).
pub fn byok_charge(price: &Cost, fee: ByokFee, hours: Decimal) -> Cost {
    let currency = price.total.currency.clone();
    let provider = price.total.amount;
    let mut lines = vec![LineItem {
        description: format!(
            "BYOK: provider price {provider} {currency}, paid on the tenant's own account"
        ),
        quantity: provider,
        unit: BYOK_PROVIDER_PRICE_UNIT.into(),
        unit_price: Decimal::ZERO,
        amount: Decimal::ZERO,
    }];
    if !fee.percent.is_zero() {
        let rate = fee.percent / Decimal::ONE_HUNDRED;
        lines.push(LineItem {
            description: format!(
                "platform fee: {}% of the provider price",
                fee.percent.normalize()
            ),
            quantity: provider,
            unit: currency.to_string(),
            unit_price: rate,
            amount: provider * rate,
        });
    }
    if !fee.per_sandbox_hour.is_zero() {
        lines.push(LineItem {
            description: "platform fee per sandbox-hour".into(),
            quantity: hours,
            unit: "sandbox-hour".into(),
            unit_price: fee.per_sandbox_hour,
            amount: hours * fee.per_sandbox_hour,
        });
    }
    Cost {
        total: Money {
            amount: lines.iter().map(|l| l.amount).sum(),
            currency,
        },
        line_items: lines,
    }
}

#[cfg(test)]
mod byok_tests {
    use std::str::FromStr;

    use super::*;
    use crate::domain::Currency;

    fn cost(amount: &str) -> Cost {
        Cost {
            total: Money {
                amount: Decimal::from_str(amount).unwrap(),
                currency: Currency::new("USD").unwrap(),
            },
            line_items: vec![],
        }
    }

    #[test]
    fn a_byok_charge_is_the_fee_and_records_the_provider_price() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let fee = ByokFee {
            percent: d("10"),
            per_sandbox_hour: d("0.36"),
        };
        let c = byok_charge(&cost("0.5"), fee, d("0.5"));
        assert_eq!(c.total.amount, d("0.23"));
        assert_eq!(c.line_items.len(), 3);
        assert_eq!(c.line_items[0].quantity, d("0.5"));
        assert_eq!(c.line_items[0].amount, Decimal::ZERO);
        assert_eq!(byok_provider_price(&c), Some(d("0.5")));
        assert_eq!(byok_provider_price(&cost("0.5")), None);
        for l in &c.line_items {
            assert_eq!(l.quantity * l.unit_price, l.amount, "{l:?}");
        }
        let free = byok_charge(&cost("0.5"), ByokFee::default(), d("1"));
        assert_eq!(free.total.amount, Decimal::ZERO);
        assert_eq!(free.line_items.len(), 1);
    }
}
