//! Billing like E2B's: per second of the vCPUs and memory a sandbox was given (its
//! template's size), exactly (decimal arithmetic, no floats).

use crate::config::Config;
use crate::decimal::Dec;
use crate::exports::sandboxer::extension::backend::{
    BackendError, Cost, LineItem, Money, SandboxRequest,
};

/// E2B caps a sandbox's lifetime at 24 hours.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

fn internal(msg: impl Into<String>) -> BackendError {
    BackendError::Internal(msg.into())
}

/// vCPU-seconds for `vcpus` over `ms` milliseconds, exactly.
pub fn vcpu_seconds(vcpus: u32, ms: u64) -> Dec {
    Dec::new(u128::from(vcpus) * u128::from(ms), 3)
}

/// GiB-seconds for `mib` over `ms`: mib × ms / (1024 × 1000) = mib × ms × 5^10 / 10^13, exact.
pub fn gib_seconds(mib: u32, ms: u64) -> Dec {
    Dec::new(u128::from(mib) * u128::from(ms) * 9_765_625, 13)
}

fn line(
    description: &str,
    quantity: Dec,
    unit: &str,
    price: Dec,
) -> Result<(LineItem, Dec), BackendError> {
    let amount = quantity
        .checked_mul(price)
        .ok_or_else(|| internal(format!("{description}: amount overflows")))?;
    Ok((
        LineItem {
            description: description.into(),
            quantity: quantity.to_string(),
            unit: unit.into(),
            unit_price: price.to_string(),
            amount: amount.to_string(),
        },
        amount,
    ))
}

pub fn price(cfg: &Config, vcpu_s: Dec, gib_s: Dec) -> Result<Cost, BackendError> {
    let (cpu_line, cpu_amount) = line(
        "vCPU time",
        vcpu_s,
        "vcpu-second",
        cfg.price_vcpu_second().map_err(internal)?,
    )?;
    let (mem_line, mem_amount) = line(
        "Memory",
        gib_s,
        "gib-second",
        cfg.price_gib_second().map_err(internal)?,
    )?;
    let total = cpu_amount
        .checked_add(mem_amount)
        .ok_or_else(|| internal("total overflows"))?;
    Ok(Cost {
        total: Money {
            amount: total.to_string(),
            currency: cfg.currency().into(),
        },
        line_items: vec![cpu_line, mem_line],
    })
}

/// E2B sizes a sandbox by its template; refuse requests the configured template cannot meet
/// (another backend may) and give the size to bill on.
pub fn template_size(cfg: &Config, request: &SandboxRequest) -> Result<(u32, u32), BackendError> {
    let vcpus = cfg.template_vcpus().map_err(internal)?;
    let mib = cfg.template_memory_mib().map_err(internal)?;
    let r = &request.resources;
    if r.gpu.is_some() {
        return Err(BackendError::Unsupported(
            "E2B sandboxes have no GPU".into(),
        ));
    }
    if r.vcpus > vcpus || r.memory_mib > mib {
        return Err(BackendError::Unsupported(format!(
            "the template gives {vcpus} vCPUs and {mib} MiB; the request needs {} vCPUs and {} MiB",
            r.vcpus, r.memory_mib
        )));
    }
    if request.max_duration_secs == 0 || request.max_duration_secs > MAX_TIMEOUT_SECS {
        return Err(BackendError::InvalidRequest(format!(
            "max duration {}s is outside E2B's 1..={MAX_TIMEOUT_SECS}s",
            request.max_duration_secs
        )));
    }
    Ok((vcpus, mib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_priced_exactly_at_list_prices() {
        let cfg = Config::from_pairs(Vec::new());
        // 2 vCPU + 512 MiB for 90 s.
        let cost = price(&cfg, vcpu_seconds(2, 90_000), gib_seconds(512, 90_000)).unwrap();
        assert_eq!(cost.line_items[0].amount, "0.00252");
        assert_eq!(cost.line_items[1].quantity, "45");
        assert_eq!(cost.total.amount, "0.0027225");
    }
}
