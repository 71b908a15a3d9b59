//! The component's bindings: WIT types in, plain [`crate::backend`] calls, WIT types out.

wit_bindgen::generate!({
    path: "../../wit",
    world: "backend-extension",
    generate_all,
});

use std::sync::OnceLock;

use exports::sandboxer::extension::backend as wit;

use crate::backend::{self, Error, State};
use crate::config::{Config, Kind};

struct SaasStub;

/// Small blocks from per-size free lists instead of dlmalloc (see [`crate::small_alloc`]).
#[cfg(not(target_feature = "atomics"))]
#[global_allocator]
static ALLOCATOR: crate::small_alloc::SizeClasses = crate::small_alloc::SizeClasses::new();

/// The configuration, read and parsed once per instance: the host grants it when it
/// instantiates the component and it cannot change during the instance's life, so this
/// is a cache of an input, not sandbox state (reading it costs several µs per call).
/// A failure to read it is not cached; a bad value is (it cannot change either).
fn config() -> Result<&'static Config, wit::BackendError> {
    static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
    if let Some(parsed) = CONFIG.get() {
        return parsed
            .as_ref()
            .map_err(|e| wit::BackendError::Internal(e.clone()));
    }
    let pairs = wasi::config::store::get_all().map_err(|e| {
        let why = match e {
            wasi::config::store::Error::Upstream(m) | wasi::config::store::Error::Io(m) => m,
        };
        wit::BackendError::Internal(format!("reading the configuration: {why}"))
    })?;
    let parsed = CONFIG.get_or_init(|| Config::from_pairs(&pairs).map_err(|e| e.0));
    parsed
        .as_ref()
        .map_err(|e| wit::BackendError::Internal(e.clone()))
}

fn request(r: &wit::SandboxRequest) -> backend::Request<'_> {
    backend::Request {
        sandbox_id: &r.sandbox_id,
        template: &r.template,
        vcpus: r.resources.vcpus,
        memory_mib: r.resources.memory_mib,
        max_duration_secs: r.max_duration_secs,
        region: r.region.as_deref(),
    }
}

fn error(e: Error) -> wit::BackendError {
    match e {
        Error::InvalidRequest(m) => wit::BackendError::InvalidRequest(m),
        Error::Unsupported(m) => wit::BackendError::Unsupported(m),
        Error::NotFound(m) => wit::BackendError::NotFound(m),
        Error::Internal(m) => wit::BackendError::Internal(m),
    }
}

fn cost(c: backend::Cost) -> wit::Cost {
    wit::Cost {
        total: wit::Money {
            amount: c.total,
            currency: c.currency,
        },
        line_items: c
            .line_items
            .into_iter()
            .map(|l| wit::LineItem {
                description: l.description,
                quantity: l.quantity,
                unit: l.unit,
                unit_price: l.unit_price,
                amount: l.amount,
            })
            .collect(),
    }
}

impl wit::Guest for SaasStub {
    fn info() -> wit::ExtensionInfo {
        let config = config();
        let i = match &config {
            Ok(c) => backend::info(Ok(c)),
            Err(wit::BackendError::Internal(m)) => backend::info(Err(m)),
            Err(_) => backend::info(Err("unreadable configuration")),
        };
        wit::ExtensionInfo {
            id: i.id,
            name: i.name,
            version: i.version,
            kind: match i.kind {
                Kind::Saas => wit::Kind::Saas,
                Kind::SelfHosted => wit::Kind::SelfHosted,
            },
            currency: i.currency,
            regions: i.regions,
            startup_latency_ms: i.startup_latency_ms,
            capabilities: if i.has_capacity {
                vec![wit::Capability::Capacity]
            } else {
                Vec::new()
            },
        }
    }

    fn estimate_cost(r: wit::SandboxRequest) -> Result<wit::Cost, wit::BackendError> {
        backend::estimate_cost(config()?, &request(&r))
            .map(cost)
            .map_err(error)
    }

    fn create(r: wit::SandboxRequest) -> Result<wit::Created, wit::BackendError> {
        let c = backend::create(config()?, &request(&r)).map_err(error)?;
        Ok(wit::Created {
            handle: c.handle,
            region: c.region,
        })
    }

    fn status(s: wit::SandboxContext) -> Result<wit::SandboxStatus, wit::BackendError> {
        config()?;
        let (state, detail) =
            backend::status(&request(&s.request), &s.handle, s.created_at_ms, s.now_ms)
                .map_err(error)?;
        let state = match state {
            State::Running => wit::SandboxState::Running,
            State::Stopped => wit::SandboxState::Stopped,
        };
        Ok(wit::SandboxStatus { state, detail })
    }

    fn destroy(s: wit::SandboxContext) -> Result<wit::Usage, wit::BackendError> {
        config()?;
        let u = backend::destroy(&request(&s.request), s.created_at_ms, s.now_ms).map_err(error)?;
        Ok(wit::Usage {
            duration_ms: u.duration_ms,
            measures: u
                .measures
                .into_iter()
                .map(|m| wit::Measure {
                    name: m.name,
                    quantity: m.quantity,
                    unit: m.unit,
                })
                .collect(),
        })
    }

    fn meter_actual(
        _r: wit::SandboxRequest,
        u: wit::Usage,
    ) -> Result<wit::Cost, wit::BackendError> {
        let usage = backend::Usage {
            duration_ms: u.duration_ms,
            measures: u
                .measures
                .into_iter()
                .map(|m| backend::Measure {
                    name: m.name,
                    quantity: m.quantity,
                    unit: m.unit,
                })
                .collect(),
        };
        backend::meter_actual(config()?, &usage)
            .map(cost)
            .map_err(error)
    }

    fn capacity() -> Result<wit::PoolCapacity, wit::BackendError> {
        Ok(wit::PoolCapacity {
            max_sandboxes: backend::capacity(config()?),
        })
    }
}

export!(SaasStub);
