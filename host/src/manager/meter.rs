//! What the host accepts as a meter reading before it settles one: the pure rules, apart
//! from the destroy flow that applies them (docs/security.md, "Metering").
//!
//! An extension prices its own sandboxes, so its meter is untrusted input:
//!
//! - **billed time never runs past the maximum duration**: the usage window handed to the
//!   extension ends at `started + max_duration` however late the host destroys, and a
//!   reported duration beyond it is cut to it;
//! - **the charge is capped at the hold**: the hold is what the tenant agreed to pay for
//!   the sandbox (its estimate, or the lease renewals since); a meter above it is a bad
//!   meter, charged at the hold, its excess recorded on the meter (`over_hold`) and counted
//!   against the extension's health;
//! - **a meter that keeps failing settles by a fallback**: after [`METER_TRIES`] destroys
//!   whose meter could not be used (an error, another currency, a negative amount), the
//!   sandbox settles at its estimate prorated over the host-measured lifetime (never above
//!   the hold), marked on the meter (`fallback`), so credits are not held forever.

use rust_decimal::Decimal;

use crate::domain::{Cost, LineItem, Money, SandboxStatus};

/// Destroys whose meter could not be used before the fallback settles the sandbox.
pub const METER_TRIES: u32 = 3;

/// The end of the billed window for a destroy decided at `destroy_at_ms`: never past the
/// sandbox's maximum duration.
pub(super) fn billed_until(st: &SandboxStatus, destroy_at_ms: u64) -> u64 {
    match st.started_at_ms {
        Some(start) => destroy_at_ms.min(start.saturating_add(max_ms(st))),
        None => destroy_at_ms,
    }
}

/// The sandbox's maximum duration in milliseconds.
pub(super) fn max_ms(st: &SandboxStatus) -> u64 {
    st.request.max_duration_secs.saturating_mul(1000)
}

/// A meter checked against the hold: what to charge, and what the meter asked above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Charge {
    /// The amount to settle (at most the hold).
    pub charge: Money,
    /// What the meter asked beyond the hold, when it did.
    pub over_hold: Option<Money>,
}

/// Checks the meter `cost` against `held`. `Err` names why the meter cannot be used at all.
pub(super) fn check(cost: &Cost, held: &Money) -> Result<Charge, String> {
    let total = &cost.total;
    if total.currency != held.currency {
        return Err(format!(
            "the meter is in {}, the hold in {}",
            total.currency, held.currency
        ));
    }
    if total.amount.is_sign_negative() {
        return Err(format!("the meter is negative ({})", total.amount));
    }
    if total.amount > held.amount {
        return Ok(Charge {
            charge: held.clone(),
            over_hold: Some(Money {
                amount: total.amount - held.amount,
                currency: total.currency.clone(),
            }),
        });
    }
    Ok(Charge {
        charge: total.clone(),
        over_hold: None,
    })
}

/// The price the host settles at when the meter keeps failing: the estimate (the hold
/// when there is none in the hold's currency) prorated over `lifetime_ms` of `max_ms`,
/// never above the hold. One line item says so.
pub(super) fn fallback(
    estimate: Option<&Cost>,
    held: &Money,
    lifetime_ms: u64,
    max_ms: u64,
) -> Cost {
    let base = estimate
        .map(|c| &c.total)
        .filter(|t| t.currency == held.currency && !t.amount.is_sign_negative())
        .unwrap_or(held);
    let max = max_ms.max(1);
    let lived = Decimal::from(lifetime_ms.min(max));
    // Multiplied before dividing, so an exact share stays exact.
    let amount = (base.amount * lived / Decimal::from(max)).min(held.amount);
    let share = (lived / Decimal::from(max)).round_dp(12);
    Cost {
        total: Money {
            amount,
            currency: held.currency.clone(),
        },
        line_items: vec![LineItem {
            description: format!(
                "Fallback: the estimate prorated over {lifetime_ms} ms of {max} ms (the meter failed)"
            ),
            quantity: share,
            unit: "of the estimate".to_owned(),
            unit_price: base.amount,
            amount,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;

    fn usd(s: &str) -> Money {
        Money {
            amount: s.parse().unwrap(),
            currency: Currency::new("USD").unwrap(),
        }
    }

    fn cost(m: Money) -> Cost {
        Cost {
            total: m,
            line_items: Vec::new(),
        }
    }

    #[test]
    fn a_meter_within_the_hold_is_charged_as_is() {
        let c = check(&cost(usd("0.0004")), &usd("0.0006")).unwrap();
        assert_eq!(c.charge, usd("0.0004"));
        assert_eq!(c.over_hold, None);
    }

    #[test]
    fn a_meter_above_the_hold_is_charged_at_the_hold_and_the_excess_kept() {
        let c = check(&cost(usd("0.75")), &usd("0.0006")).unwrap();
        assert_eq!(c.charge, usd("0.0006"));
        assert_eq!(c.over_hold, Some(usd("0.7494")));
    }

    #[test]
    fn another_currency_or_a_negative_meter_is_unusable() {
        let eur = Money {
            amount: "0.1".parse().unwrap(),
            currency: Currency::new("EUR").unwrap(),
        };
        let err = check(&cost(eur), &usd("1")).unwrap_err();
        assert!(err.contains("EUR") && err.contains("USD"), "{err}");
        let err = check(&cost(usd("-1")), &usd("1")).unwrap_err();
        assert!(err.contains("negative"), "{err}");
    }

    #[test]
    fn the_fallback_prorates_the_estimate_and_never_passes_the_hold() {
        let est = cost(usd("3.6"));
        let f = fallback(Some(&est), &usd("3.6"), 1_000, 3_600_000);
        assert_eq!(f.total, usd("0.001"));
        assert_eq!(f.line_items[0].amount, f.total.amount);
        // Past the maximum duration: the whole estimate, capped at the hold.
        let f = fallback(Some(&est), &usd("1"), 9_000_000, 3_600_000);
        assert_eq!(f.total, usd("1"));
        // No estimate: the hold is the base.
        let f = fallback(None, &usd("2"), 1_800_000, 3_600_000);
        assert_eq!(f.total, usd("1"));
    }
}
