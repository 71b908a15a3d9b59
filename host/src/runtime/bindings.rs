//! Generated bindings for the `backend-extension` world and the conversions between
//! them and the validated host types of [`super::types`].
//!
//! Everything an extension returns passes through here: every decimal string is parsed
//! with [`crate::domain::parse_decimal`], every currency must equal `info.currency`, every
//! line item must satisfy `quantity × unit_price = amount` and the amounts must add up to
//! the total, exactly. A breach is reported as a message naming the field and the value,
//! which the caller turns into `Fault::BadAnswer`.

use rust_decimal::Decimal;

use super::types::{
    BackendError, BackendState, BackendStatus, Capability, Capacity, Cost, Created, ExtensionInfo,
    Kind, LineItem, Measure, Resources, SandboxContext, SandboxRequest, Usage,
};
use crate::domain::{Currency, Money, parse_decimal};

mod generated {
    wasmtime::component::bindgen!({
        world: "backend-extension",
        path: "../wit",
        // Requests and contexts are lowered straight from the host's values: the
        // generated parameter types borrow (`&str`, slices) instead of owning copies.
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

/// The generated world: `BackendExtension::instantiate`, `BackendExtensionPre::new`.
pub use generated::{BackendExtension, BackendExtensionPre};

/// The generated types of the `backend` interface, as the guest sees them.
pub use generated::exports::sandboxer::extension::backend as wit;

/// The export every extension must provide.
pub const BACKEND_EXPORT: &str = "sandboxer:extension/backend@0.1.1";

/// The functions of [`BACKEND_EXPORT`], by WIT name.
pub const BACKEND_FUNCTIONS: [&str; 7] = [
    "info",
    "estimate-cost",
    "create",
    "status",
    "destroy",
    "meter-actual",
    "capacity",
];

/// The largest handle the host agrees to persist.
pub const MAX_HANDLE_BYTES: usize = 64 * 1024;

/// The `(key, value)` lists of a request as borrowed pairs, which the WIT request
/// borrows in turn (no list: no allocation).
pub struct RequestLists<'a> {
    env: Vec<(&'a str, &'a str)>,
    metadata: Vec<(&'a str, &'a str)>,
}

/// Borrows `r`'s lists for [`request_to_wit`].
pub fn request_lists(r: &SandboxRequest) -> RequestLists<'_> {
    fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
    RequestLists {
        env: pairs(&r.env),
        metadata: pairs(&r.metadata),
    }
}

/// A request as the guest sees it, borrowed from `r` (nothing is copied until wasmtime
/// writes it into the guest's memory).
pub fn request_to_wit<'a>(
    r: &'a SandboxRequest,
    lists: &'a RequestLists<'a>,
) -> wit::SandboxRequest<'a> {
    wit::SandboxRequest {
        sandbox_id: &r.sandbox_id,
        tenant: &r.tenant,
        profile: &r.profile,
        template: &r.template,
        resources: resources_to_wit(&r.resources),
        max_duration_secs: r.max_duration_secs,
        region: r.region.as_deref(),
        env: &lists.env,
        metadata: &lists.metadata,
    }
}

fn resources_to_wit(r: &Resources) -> wit::Resources<'_> {
    wit::Resources {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_mib: r.disk_mib,
        gpu: r.gpu.as_deref(),
    }
}

/// A sandbox context as the guest sees it, borrowed from `c` like [`request_to_wit`].
pub fn context_to_wit<'a>(
    c: &'a SandboxContext,
    lists: &'a RequestLists<'a>,
) -> wit::SandboxContext<'a> {
    wit::SandboxContext {
        request: request_to_wit(&c.request, lists),
        handle: &c.handle,
        created_at_ms: c.created_at_ms,
        now_ms: c.now_ms,
    }
}

/// Usage as the guest sees it (decimals written out in full, never with an exponent).
pub fn usage_to_wit(u: &Usage) -> wit::Usage {
    wit::Usage {
        duration_ms: u.duration_ms,
        measures: u
            .measures
            .iter()
            .map(|m| wit::Measure {
                name: m.name.clone(),
                quantity: m.quantity.to_string(),
                unit: m.unit.clone(),
            })
            .collect(),
    }
}

/// The guest's error variant, as a host error.
pub fn backend_error_from_wit(e: wit::BackendError) -> BackendError {
    match e {
        wit::BackendError::InvalidRequest(m) => BackendError::InvalidRequest(m),
        wit::BackendError::Unsupported(m) => BackendError::Unsupported(m),
        wit::BackendError::CapacityExhausted(m) => BackendError::CapacityExhausted(m),
        wit::BackendError::Unavailable(m) => BackendError::Unavailable(m),
        wit::BackendError::NotFound(m) => BackendError::NotFound(m),
        wit::BackendError::Unauthorized(m) => BackendError::Unauthorized(m),
        wit::BackendError::Internal(m) => BackendError::Internal(m),
    }
}

/// Validates `info`: the currency must be a currency code.
pub fn info_from_wit(i: wit::ExtensionInfo) -> Result<ExtensionInfo, String> {
    let currency = Currency::new(&i.currency).map_err(|e| format!("currency: {e}"))?;
    Ok(ExtensionInfo {
        id: i.id,
        name: i.name,
        version: i.version,
        kind: match i.kind {
            wit::Kind::SelfHosted => Kind::SelfHosted,
            wit::Kind::Saas => Kind::Saas,
        },
        currency,
        regions: i.regions,
        startup_latency_ms: i.startup_latency_ms,
        capabilities: i
            .capabilities
            .into_iter()
            .map(|c| match c {
                wit::Capability::Capacity => Capability::Capacity,
                wit::Capability::Status => Capability::Status,
            })
            .collect(),
    })
}

/// Validates a cost: decimals, currency, each line's product, and the total.
pub fn cost_from_wit(c: wit::Cost, currency: &Currency) -> Result<Cost, String> {
    if c.total.currency != currency.as_str() {
        return Err(format!(
            "total.currency: {:?} differs from info.currency {:?}",
            c.total.currency,
            currency.as_str()
        ));
    }
    let total = decimal(&c.total.amount, || "total.amount".to_owned())?;
    let mut sum = Decimal::ZERO;
    let mut line_items = Vec::with_capacity(c.line_items.len());
    for (n, item) in c.line_items.into_iter().enumerate() {
        let quantity = decimal(&item.quantity, || format!("line_items[{n}].quantity"))?;
        let unit_price = decimal(&item.unit_price, || format!("line_items[{n}].unit_price"))?;
        let amount = decimal(&item.amount, || format!("line_items[{n}].amount"))?;
        let product = quantity.checked_mul(unit_price).ok_or_else(|| {
            format!("line_items[{n}]: quantity {quantity} × unit_price {unit_price} overflows")
        })?;
        if product != amount {
            return Err(format!(
                "line_items[{n}] ({:?}): quantity {quantity} × unit_price {unit_price} = {product}, but amount is {amount}",
                item.description
            ));
        }
        sum = sum
            .checked_add(amount)
            .ok_or_else(|| "the line items' amounts overflow when added".to_owned())?;
        line_items.push(LineItem {
            description: item.description,
            quantity,
            unit: item.unit,
            unit_price,
            amount,
        });
    }
    if sum != total {
        return Err(format!(
            "total.amount {total} is not the sum of the line items' amounts ({sum})"
        ));
    }
    Ok(Cost {
        total: Money {
            amount: total,
            currency: currency.clone(),
        },
        line_items,
    })
}

/// Validates usage: every measure's quantity is a decimal.
pub fn usage_from_wit(u: wit::Usage) -> Result<Usage, String> {
    let mut measures = Vec::with_capacity(u.measures.len());
    for (n, m) in u.measures.into_iter().enumerate() {
        let quantity = decimal(&m.quantity, || {
            format!("measures[{n}] ({:?}).quantity", m.name)
        })?;
        measures.push(Measure {
            name: m.name,
            quantity,
            unit: m.unit,
        });
    }
    Ok(Usage {
        duration_ms: u.duration_ms,
        measures,
    })
}

/// Validates what `create` returned: a non-empty handle of bounded size.
pub fn created_from_wit(c: wit::Created) -> Result<Created, String> {
    if c.handle.is_empty() {
        return Err("handle: empty (the host needs it to call status and destroy)".into());
    }
    if c.handle.len() > MAX_HANDLE_BYTES {
        return Err(format!(
            "handle: {} bytes, more than the {MAX_HANDLE_BYTES} the host persists",
            c.handle.len()
        ));
    }
    Ok(Created {
        handle: c.handle,
        region: c.region,
    })
}

/// What `status` returned.
pub fn status_from_wit(s: wit::SandboxStatus) -> BackendStatus {
    BackendStatus {
        state: match s.state {
            wit::SandboxState::Starting => BackendState::Starting,
            wit::SandboxState::Running => BackendState::Running,
            wit::SandboxState::Stopped => BackendState::Stopped,
        },
        detail: s.detail,
    }
}

/// What `capacity` returned.
pub fn capacity_from_wit(c: wit::PoolCapacity) -> Capacity {
    Capacity {
        max_sandboxes: c.max_sandboxes,
    }
}

/// Parses one decimal; the field name is only built for the error (this runs on every call).
fn decimal(value: &str, field: impl FnOnce() -> String) -> Result<Decimal, String> {
    parse_decimal(value).map_err(|e| format!("{}: {e}", field()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::new("USD").unwrap()
    }

    fn item(q: &str, p: &str, a: &str) -> wit::LineItem {
        wit::LineItem {
            description: "vCPU time".into(),
            quantity: q.into(),
            unit: "vcpu-second".into(),
            unit_price: p.into(),
            amount: a.into(),
        }
    }

    fn cost(total: &str, currency: &str, items: Vec<wit::LineItem>) -> wit::Cost {
        wit::Cost {
            total: wit::Money {
                amount: total.into(),
                currency: currency.into(),
            },
            line_items: items,
        }
    }

    #[test]
    fn a_consistent_cost_is_accepted() {
        let c = cost_from_wit(
            cost(
                "0.1508",
                "USD",
                vec![
                    item("7200", "0.000014", "0.1008"),
                    item("1", "0.05", "0.05"),
                ],
            ),
            &usd(),
        )
        .unwrap();
        assert_eq!(c.total.amount, Decimal::new(1508, 4));
        assert_eq!(c.line_items.len(), 2);
    }

    #[test]
    fn breaches_name_the_field_and_value() {
        let cases = [
            (cost("abc", "USD", vec![]), "total.amount: \"abc\""),
            (cost("-1", "USD", vec![]), "total.amount: \"-1\""),
            (cost(&"9".repeat(40), "USD", vec![]), "more than 28"),
            (
                cost("0.00001", "USD", vec![item("1", "1e-5", "0.00001")]),
                "line_items[0].unit_price: \"1e-5\"",
            ),
            (
                cost("1", "EUR", vec![item("1", "1", "1")]),
                "total.currency: \"EUR\"",
            ),
            (cost("1", "USD", vec![item("2", "1", "1")]), "line_items[0]"),
            (cost("3", "USD", vec![item("1", "1", "1")]), "not the sum"),
        ];
        for (c, expected) in cases {
            let err = cost_from_wit(c, &usd()).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn usage_quantities_round_trip_as_plain_decimals() {
        let u = Usage {
            duration_ms: 1,
            measures: vec![Measure {
                name: "vcpu-seconds".into(),
                quantity: Decimal::new(1, 5),
                unit: "vcpu-second".into(),
            }],
        };
        let w = usage_to_wit(&u);
        assert_eq!(w.measures[0].quantity, "0.00001");
        assert_eq!(usage_from_wit(w).unwrap(), u);
    }
}
