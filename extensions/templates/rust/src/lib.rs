//! A minimal sandboxer extension in Rust: a metered backend priced per vCPU-second.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p template-rust`.
//! Check: `sandboxer extensions check target/wasm32-wasip2/release/template_rust.wasm`.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "backend-extension",
    // The host provides wasi:config; generate its import bindings here.
    generate_all,
});

use exports::sandboxer::extension::backend::{
    BackendError, Cost, Created, ExtensionInfo, Guest, Kind, LineItem, Money, PoolCapacity,
    SandboxContext, SandboxRequest, SandboxState, SandboxStatus, Usage,
};
use rust_decimal::Decimal;

const CURRENCY: &str = "USD";

struct Template;

/// The price per vCPU-second the operator configured (sidecar `[config]`), or the default.
fn unit_price() -> Result<Decimal, BackendError> {
    let raw = wasi::config::store::get("price_per_vcpu_second")
        .ok()
        .flatten()
        .unwrap_or_else(|| "0.00001".to_string());
    raw.parse().map_err(|_| {
        BackendError::Internal(format!(
            "config price_per_vcpu_second: not a decimal: {raw}"
        ))
    })
}

fn check(r: &SandboxRequest) -> Result<(), BackendError> {
    if r.resources.vcpus < 1 || r.resources.memory_mib < 1 || r.max_duration_secs < 1 {
        return Err(BackendError::InvalidRequest(
            "vcpus, memory-mib and max-duration-secs must be at least 1".into(),
        ));
    }
    if r.resources.gpu.is_some() {
        return Err(BackendError::Unsupported("no GPUs here".into()));
    }
    Ok(())
}

/// Money leaves as a plain decimal string: `normalize` drops trailing zeros, `Display`
/// never writes an exponent.
fn fmt(d: Decimal) -> String {
    d.normalize().to_string()
}

fn cost(r: &SandboxRequest, duration_ms: u64) -> Result<Cost, BackendError> {
    let price = unit_price()?;
    let qty = Decimal::from(r.resources.vcpus)
        * Decimal::new(i64::try_from(duration_ms).unwrap_or(i64::MAX), 3);
    let amount = qty
        .checked_mul(price)
        .ok_or_else(|| BackendError::InvalidRequest("price out of range".into()))?;
    let item = LineItem {
        description: "vCPU time".into(),
        quantity: fmt(qty),
        unit: "vcpu-second".into(),
        unit_price: fmt(price),
        amount: fmt(amount),
    };
    Ok(Cost {
        total: Money {
            amount: fmt(amount),
            currency: CURRENCY.into(),
        },
        line_items: vec![item],
    })
}

impl Guest for Template {
    fn info() -> ExtensionInfo {
        ExtensionInfo {
            id: "my-extension".into(),
            name: "My extension (Rust)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: Kind::Saas,
            currency: CURRENCY.into(),
            regions: vec![],
            startup_latency_ms: 1000,
            capabilities: vec![],
        }
    }

    fn estimate_cost(request: SandboxRequest) -> Result<Cost, BackendError> {
        check(&request)?;
        cost(&request, request.max_duration_secs.saturating_mul(1000))
    }

    fn create(request: SandboxRequest) -> Result<Created, BackendError> {
        check(&request)?;
        // The handle is all the state there is: put in it what later calls need.
        Ok(Created {
            handle: request.sandbox_id,
            region: None,
        })
    }

    fn status(_sandbox: SandboxContext) -> Result<SandboxStatus, BackendError> {
        Ok(SandboxStatus {
            state: SandboxState::Running,
            detail: "running".into(),
        })
    }

    fn destroy(sandbox: SandboxContext) -> Result<Usage, BackendError> {
        Ok(Usage {
            duration_ms: sandbox.now_ms.saturating_sub(sandbox.created_at_ms),
            measures: vec![],
        })
    }

    fn meter_actual(request: SandboxRequest, usage: Usage) -> Result<Cost, BackendError> {
        check(&request)?;
        cost(&request, usage.duration_ms)
    }

    fn capacity() -> Result<PoolCapacity, BackendError> {
        Ok(PoolCapacity {
            max_sandboxes: None,
        })
    }
}

export!(Template);
