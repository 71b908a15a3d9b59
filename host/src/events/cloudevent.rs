//! Building the `sandboxer.sandbox.metered` CloudEvent.

use chrono::{DateTime, Utc};
use cloudevents::{EventBuilder, EventBuilderV10};
use serde::{Deserialize, Serialize};

use super::{EventError, EventRecord};
use crate::domain::{LineItem, Measure};

/// The CloudEvents `type` of a settlement.
pub const METER_EVENT_TYPE: &str = "sandboxer.sandbox.metered";

/// The `data` of a meter event: what was metered and what was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterEventData {
    pub sandbox_id: String,
    pub tenant: String,
    pub profile: String,
    pub extension_id: String,
    /// Hash of the extension's wasm that created (and metered) the sandbox.
    pub extension_version: String,
    /// Host-measured lifetime.
    pub duration_ms: u64,
    pub usage: Vec<Measure>,
    pub line_items: Vec<LineItem>,
    pub currency: String,
    /// The meter reading, exact as the extension returned it.
    pub amount_exact: String,
    /// What was debited after rounding (may be less than `amount_exact` when the overdraft
    /// policy wrote part of it off).
    pub amount_charged: String,
    /// What was held for the sandbox and released back.
    pub amount_held: String,
    pub amount_released: String,
    /// The ledger's settlement transfer id.
    pub settlement_id: String,
    /// The sandbox ran on the tenant's own provider key: the charge is the platform fee.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub byok: bool,
    /// With `byok`: the provider's price of the sandbox (paid on the tenant's account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_price: Option<String>,
}

/// Builds the CloudEvents JSON of one settlement. `id` is the settlement id, so a
/// re-delivered event carries the same id and consumers can deduplicate.
pub fn meter_event(
    source: &str,
    data: &MeterEventData,
    time: DateTime<Utc>,
) -> Result<EventRecord, EventError> {
    let id = data.settlement_id.clone();
    let build_err = |reason: String| EventError::Build {
        id: id.clone(),
        reason,
    };
    let json = serde_json::to_value(data).map_err(|e| build_err(e.to_string()))?;
    let event = EventBuilderV10::new()
        .id(id.clone())
        .ty(METER_EVENT_TYPE)
        .source(source)
        .subject(data.tenant.clone())
        .time(time)
        .data("application/json", json)
        .build()
        .map_err(|e| build_err(e.to_string()))?;
    let payload = serde_json::to_string(&event).map_err(|e| build_err(e.to_string()))?;
    Ok(EventRecord { id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_cloudevents_1_0_record() {
        let data = MeterEventData {
            byok: false,
            provider_price: None,
            sandbox_id: "sb-1".into(),
            tenant: "acme".into(),
            profile: "burst-sandbox".into(),
            extension_id: "saas-stub".into(),
            extension_version: "abc".into(),
            duration_ms: 1000,
            usage: vec![],
            line_items: vec![],
            currency: "USD".into(),
            amount_exact: "0.5".into(),
            amount_charged: "0.5".into(),
            amount_held: "1".into(),
            amount_released: "0.5".into(),
            settlement_id: "settle-sb-1".into(),
        };
        let rec = meter_event("urn:sandboxer:host:test", &data, Utc::now()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&rec.payload).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], METER_EVENT_TYPE);
        assert_eq!(v["id"], "settle-sb-1");
        assert_eq!(v["subject"], "acme");
        assert_eq!(v["data"]["amount_exact"], "0.5");
        assert!(!rec.payload.contains('\n'));
    }
}
