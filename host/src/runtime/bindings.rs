//! Generated bindings for the `sandbox-extension` world (the `backend` interface and the
//! optional `process` and `files` ones) and the conversions between them and the
//! validated host types of [`super::types`] and [`crate::domain::exec`].
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
use crate::domain::exec::{
    Command, ExecOutput, ExecRequest, Exit, ExitStatus, FileChunk, FileEntry, FileKind,
    MAX_CURSOR_BYTES, OutputChunk, OutputStream, ProcessOutput,
};
use crate::domain::text::{bounded, bounded_text, quoted};
use crate::domain::{Currency, Money, parse_decimal};

mod generated {
    wasmtime::component::bindgen!({
        world: "sandbox-extension",
        path: "../wit",
        // Requests and contexts are lowered straight from the host's values: the
        // generated parameter types borrow (`&str`, slices) instead of owning copies.
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

/// The generated types of the `backend` interface, as the guest sees them.
pub use generated::exports::sandboxer::extension::backend as wit;
/// The generated types of the optional `files` interface.
pub use generated::exports::sandboxer::extension::files as wit_files;
/// The generated types of the optional `process` interface.
pub use generated::exports::sandboxer::extension::process as wit_process;

/// The export every extension must provide.
pub const BACKEND_EXPORT: &str = "sandboxer:extension/backend@0.1.1";
/// The optional export that runs commands (since 0.1.1).
pub const PROCESS_EXPORT: &str = "sandboxer:extension/process@0.1.1";
/// The optional export that moves files (since 0.1.1).
pub const FILES_EXPORT: &str = "sandboxer:extension/files@0.1.1";

/// Which optional interfaces a component exports (found at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OptionalExports {
    pub process: bool,
    pub files: bool,
}

/// Where a component's exports are, resolved once at load; the world's generated
/// `SandboxExtensionPre` cannot be used because it requires every export.
pub struct ExportIndices {
    backend: wit::GuestIndices,
    process: Option<wit_process::GuestIndices>,
    files: Option<wit_files::GuestIndices>,
}

/// The exports of one instance.
pub struct Guests {
    pub backend: wit::Guest,
    pub process: Option<wit_process::Guest>,
    pub files: Option<wit_files::Guest>,
}

impl ExportIndices {
    /// Resolves the exports of `pre`: `backend` always, the others when `optional` says the
    /// component has them. The error names the export that does not fit.
    pub fn new<T>(
        pre: &wasmtime::component::InstancePre<T>,
        optional: OptionalExports,
    ) -> Result<Self, String> {
        let backend = wit::GuestIndices::new(pre)
            .map_err(|e| format!("export {BACKEND_EXPORT} does not match the contract: {e:#}"))?;
        let process = optional
            .process
            .then(|| wit_process::GuestIndices::new(pre))
            .transpose()
            .map_err(|e| format!("export {PROCESS_EXPORT} does not match the contract: {e:#}"))?;
        let files = optional
            .files
            .then(|| wit_files::GuestIndices::new(pre))
            .transpose()
            .map_err(|e| format!("export {FILES_EXPORT} does not match the contract: {e:#}"))?;
        Ok(Self {
            backend,
            process,
            files,
        })
    }

    /// The typed exports of a fresh instance (type-checks them).
    pub fn load(
        &self,
        mut store: impl wasmtime::AsContextMut,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Guests> {
        Ok(Guests {
            backend: self.backend.load(&mut store, instance)?,
            process: match &self.process {
                Some(p) => Some(p.load(&mut store, instance)?),
                None => None,
            },
            files: match &self.files {
                Some(f) => Some(f.load(&mut store, instance)?),
                None => None,
            },
        })
    }
}

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
/// Its message is cut to [`crate::domain::text::MAX_TEXT_BYTES`].
pub fn backend_error_from_wit(e: wit::BackendError) -> BackendError {
    let b = bounded_text;
    match e {
        wit::BackendError::InvalidRequest(m) => BackendError::InvalidRequest(b(m)),
        wit::BackendError::Unsupported(m) => BackendError::Unsupported(b(m)),
        wit::BackendError::CapacityExhausted(m) => BackendError::CapacityExhausted(b(m)),
        wit::BackendError::Unavailable(m) => BackendError::Unavailable(b(m)),
        wit::BackendError::NotFound(m) => BackendError::NotFound(b(m)),
        wit::BackendError::Unauthorized(m) => BackendError::Unauthorized(b(m)),
        wit::BackendError::Internal(m) => BackendError::Internal(b(m)),
    }
}

/// Most line items one cost may have.
pub const MAX_LINE_ITEMS: usize = 256;
/// Most measures one usage report may have.
pub const MAX_MEASURES: usize = 64;
/// Most regions `info` may list.
pub const MAX_REGIONS: usize = 64;
/// Longest extension id, region or measure name (they are keys, never cut: refused).
pub const MAX_NAME_BYTES: usize = 128;

/// `s` when it is a usable name of at most [`MAX_NAME_BYTES`]; else why not, naming `field`.
fn name(field: &str, s: String) -> Result<String, String> {
    if s.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{field}: {} is longer than {MAX_NAME_BYTES} bytes",
            quoted(&s)
        ));
    }
    Ok(s)
}

/// `Err` naming `field` when `n` items are more than `max`.
fn at_most(field: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!(
            "{field}: {n} of them, more than the {max} the host accepts"
        ));
    }
    Ok(())
}

/// Validates `info`: the currency must be a currency code.
pub fn info_from_wit(i: wit::ExtensionInfo) -> Result<ExtensionInfo, String> {
    let currency = Currency::new(&i.currency).map_err(|e| format!("currency: {e}"))?;
    at_most("regions", i.regions.len(), MAX_REGIONS)?;
    let regions = i
        .regions
        .into_iter()
        .enumerate()
        .map(|(n, r)| name(&format!("regions[{n}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(ExtensionInfo {
        id: name("id", i.id)?,
        name: bounded(i.name, MAX_NAME_BYTES),
        version: bounded(i.version, MAX_NAME_BYTES),
        kind: match i.kind {
            wit::Kind::SelfHosted => Kind::SelfHosted,
            wit::Kind::Saas => Kind::Saas,
        },
        currency,
        regions,
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
            "total.currency: {} differs from info.currency {:?}",
            quoted(&c.total.currency),
            currency.as_str()
        ));
    }
    at_most("line_items", c.line_items.len(), MAX_LINE_ITEMS)?;
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
                "line_items[{n}] ({}): quantity {quantity} × unit_price {unit_price} = {product}, but amount is {amount}",
                quoted(&item.description)
            ));
        }
        sum = sum
            .checked_add(amount)
            .ok_or_else(|| "the line items' amounts overflow when added".to_owned())?;
        line_items.push(LineItem {
            description: bounded(item.description, MAX_NAME_BYTES * 4),
            quantity,
            unit: name(&format!("line_items[{n}].unit"), item.unit)?,
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
    at_most("measures", u.measures.len(), MAX_MEASURES)?;
    let mut measures = Vec::with_capacity(u.measures.len());
    for (n, m) in u.measures.into_iter().enumerate() {
        let quantity = decimal(&m.quantity, || {
            format!("measures[{n}] ({}).quantity", quoted(&m.name))
        })?;
        measures.push(Measure {
            name: name(&format!("measures[{n}].name"), m.name)?,
            quantity,
            unit: name(&format!("measures[{n}].unit"), m.unit)?,
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
        region: c.region.map(|r| name("region", r)).transpose()?,
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
        detail: bounded_text(s.detail),
    }
}

/// What `capacity` returned.
pub fn capacity_from_wit(c: wit::PoolCapacity) -> Capacity {
    Capacity {
        max_sandboxes: c.max_sandboxes,
    }
}

/// The borrowed lists of an exec request, which the WIT request borrows in turn.
pub struct ExecLists<'a> {
    argv: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
}

/// Borrows `r`'s lists for [`exec_request_to_wit`].
pub fn exec_lists(r: &ExecRequest) -> ExecLists<'_> {
    ExecLists {
        argv: match &r.command {
            Command::Argv(argv) => argv.iter().map(String::as_str).collect(),
            Command::Shell(_) => Vec::new(),
        },
        env: r
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    }
}

/// An exec request as the guest sees it, borrowed from `r`.
pub fn exec_request_to_wit<'a>(
    r: &'a ExecRequest,
    lists: &'a ExecLists<'a>,
) -> wit_process::ExecRequest<'a> {
    wit_process::ExecRequest {
        command: match &r.command {
            Command::Argv(_) => wit_process::Command::Argv(&lists.argv),
            Command::Shell(line) => wit_process::Command::Shell(line),
        },
        env: &lists.env,
        cwd: r.cwd.as_deref(),
        stdin: &r.stdin,
        keep_stdin_open: r.keep_stdin_open,
        timeout_ms: r.timeout_ms,
        output_limit_bytes: r.output_limit_bytes,
    }
}

/// How a command ended, as the guest said.
pub fn exit_from_wit(e: wit_process::Exit) -> Result<Exit, String> {
    let status = match e.status {
        wit_process::ExitStatus::Exited => ExitStatus::Exited,
        wit_process::ExitStatus::TimedOut => ExitStatus::TimedOut,
        wit_process::ExitStatus::Killed => ExitStatus::Killed,
        wit_process::ExitStatus::Failed => ExitStatus::Failed,
    };
    if status == ExitStatus::Exited && e.exit_code.is_none() {
        return Err("exit.exit-code: none, but the status is exited".into());
    }
    Ok(Exit {
        status,
        exit_code: e.exit_code,
        duration_ms: e.duration_ms,
        cpu_ms: e.cpu_ms,
        detail: e.detail,
    })
}

/// Validates what `exec` returned: the output within the limit asked for.
pub fn exec_output_from_wit(o: wit_process::ExecOutput, limit: u64) -> Result<ExecOutput, String> {
    for (name, data) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if data.len() as u64 > limit {
            return Err(format!(
                "{name}: {} bytes, more than the output-limit-bytes {limit} asked for",
                data.len()
            ));
        }
    }
    Ok(ExecOutput {
        exit: exit_from_wit(o.exit)?,
        stdout: o.stdout,
        stdout_truncated: o.stdout_truncated,
        stderr: o.stderr,
        stderr_truncated: o.stderr_truncated,
    })
}

/// Validates a process id `start` returned: non-empty and bounded.
pub fn process_id_from_wit(id: String) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_CURSOR_BYTES {
        return Err(format!(
            "process id: {} bytes (must be 1 to {MAX_CURSOR_BYTES})",
            id.len()
        ));
    }
    Ok(id)
}

/// Validates what `read-output` returned: a bounded cursor.
pub fn process_output_from_wit(o: wit_process::ProcessOutput) -> Result<ProcessOutput, String> {
    if o.cursor.len() > MAX_CURSOR_BYTES {
        return Err(format!(
            "cursor: {} bytes, more than {MAX_CURSOR_BYTES}",
            o.cursor.len()
        ));
    }
    Ok(ProcessOutput {
        chunks: o
            .chunks
            .into_iter()
            .map(|c| OutputChunk {
                stream: match c.stream {
                    wit_process::OutputStream::Stdout => OutputStream::Stdout,
                    wit_process::OutputStream::Stderr => OutputStream::Stderr,
                },
                data: c.data,
            })
            .collect(),
        cursor: o.cursor,
        exit: o.exit.map(exit_from_wit).transpose()?,
        truncated: o.truncated,
    })
}

/// Validates a piece of a file: at most the bytes asked for.
pub fn file_chunk_from_wit(c: wit_files::FileChunk, max_bytes: u32) -> Result<FileChunk, String> {
    if c.data.len() as u64 > u64::from(max_bytes) {
        return Err(format!(
            "data: {} bytes, more than the max-bytes {max_bytes} asked for",
            c.data.len()
        ));
    }
    Ok(FileChunk {
        data: c.data,
        size: c.size,
    })
}

/// Validates a folder listing: names without `/`, never empty, `.` or `..`.
pub fn entries_from_wit(entries: Vec<wit_files::FileEntry>) -> Result<Vec<FileEntry>, String> {
    entries
        .into_iter()
        .enumerate()
        .map(|(n, e)| {
            if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
                return Err(format!(
                    "entries[{n}].name: {:?} is not a file name",
                    e.name
                ));
            }
            Ok(FileEntry {
                name: e.name,
                kind: match e.kind {
                    wit_files::EntryKind::File => FileKind::File,
                    wit_files::EntryKind::Directory => FileKind::Directory,
                    wit_files::EntryKind::Symlink => FileKind::Symlink,
                    wit_files::EntryKind::Other => FileKind::Other,
                },
                size: e.size,
                modified_ms: e.modified_ms,
            })
        })
        .collect()
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
