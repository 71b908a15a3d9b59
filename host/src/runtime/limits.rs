//! Per-instance store data and the limits on every call: a memory cap enforced by a
//! `ResourceLimiter`, an epoch deadline, and the mapping of whatever went wrong into a
//! [`Fault`] an operator can act on.
//!
//! WASI p2 is linked with nothing granted: no preopened folders, no environment, no
//! arguments, no network; stdin is closed, stdout is discarded, and stderr goes to a
//! bounded in-memory pipe so a panic message can be reported with the trap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::engine::ticks_for;
use super::grants::{Grants, OutboundHooks, SecretSet};
use super::types::Fault;

/// Default memory cap per instance.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// Default time budget per call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of a guest's stderr is kept (per instance); the rest is dropped.
pub const STDERR_CAPACITY: usize = 64 * 1024;
/// What an `exec` call may take beyond the command's own timeout (the extension's HTTP
/// round trips, collecting output): its budget is the timeout plus this.
pub const EXEC_CALL_MARGIN: Duration = Duration::from_secs(10);
/// The longest `read-output` waits for output; a longer `wait-ms` is cut to this.
pub const MAX_READ_OUTPUT_WAIT: Duration = Duration::from_secs(30);
/// The least budget of a `files` call (and of `start`, `write-stdin`, `kill`): they move
/// data to a remote machine, which the default 1 s budget of lifecycle calls is not
/// meant for.
pub const TRANSFER_CALL_BUDGET: Duration = Duration::from_secs(60);
/// How much stderr goes into a trap message.
const STDERR_IN_MESSAGE: usize = 2 * 1024;

/// The limits one extension's calls run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Largest linear memory an instance may grow to, in MiB.
    pub memory_limit_mib: u64,
    /// Time budget of one call (also of instantiation).
    pub call_timeout: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            memory_limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

impl CallLimits {
    fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

/// Table elements one store may hold across all its tables. Elements are pointers: a
/// million is 8 MiB, plenty for any guest (the Python guest uses about 30 000).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Core instances, linear memories and tables one store may create. A component is a
/// handful of core modules; every shipped guest, Python and JavaScript included, loads
/// well within these (host/tests/polyglot_extensions.rs).
pub const MAX_CORE_INSTANCES: usize = 100;
/// See [`MAX_CORE_INSTANCES`].
pub const MAX_MEMORIES: usize = 16;
/// See [`MAX_CORE_INSTANCES`].
pub const MAX_TABLES: usize = 100;

/// Refuses growth past the caps and remembers that it did, so the trap that usually
/// follows (an allocator aborting) is reported as out-of-memory.
///
/// The memory cap is for the whole store, summed over every linear memory its core
/// instances declare (a component declaring many memories gets no more than one would);
/// the table cap likewise sums elements over all tables.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    memory_bytes: usize,
    table_elements: usize,
    refused: bool,
}

impl MemoryLimiter {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            memory_bytes: 0,
            table_elements: 0,
            refused: false,
        }
    }
}

/// `total` with one item grown from `current` to `desired`, if it stays within `cap`.
fn grown(total: usize, current: usize, desired: usize, cap: usize) -> Option<usize> {
    total
        .checked_sub(current.min(total))?
        .checked_add(desired)
        .filter(|t| *t <= cap)
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let Some(total) = grown(self.memory_bytes, current, desired, self.max_bytes) else {
            self.refused = true;
            return Ok(false);
        };
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let Some(total) = grown(self.table_elements, current, desired, MAX_TABLE_ELEMENTS) else {
            return Ok(false);
        };
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// What one instance's `Store` holds: its WASI context (nothing granted), the
/// `wasi:config/store` values from its sidecar, its limiter and its captured stderr.
///
/// Grants added later (outbound HTTP for some extensions) get a field here and a step
/// in [`super::link::build_linker`].
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    config: WasiConfigVariables,
    limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    limits: CallLimits,
    /// The budget of the call in progress (reported when it runs out).
    budget: Duration,
    /// When the call in progress runs out of budget: bounds the guest's waits in host
    /// calls (see [`super::waits`]), which epoch interruption cannot reach.
    deadline: Instant,
    http: WasiHttpCtx,
    outbound: OutboundHooks,
}

impl WasiHttpView for StoreData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreData {
    /// The `wasi:config/store` values of this instance.
    pub fn config(&self) -> &WasiConfigVariables {
        &self.config
    }

    /// The instance's resources with the current call's deadline, for the bounded waits.
    pub(super) fn waits(&mut self) -> super::waits::BoundedWaits<'_> {
        super::waits::BoundedWaits {
            table: &mut self.table,
            deadline: self.deadline,
        }
    }
}

/// A fresh store for one instance of an extension with `config` and `limits`.
///
/// The `grants` decide its outbound HTTP; `secrets` (one version of the grants' secrets)
/// are added to `wasi:config/store`.
pub fn new_store(
    engine: &Engine,
    config: &BTreeMap<String, String>,
    limits: CallLimits,
    grants: &Arc<Grants>,
    secrets: &SecretSet,
) -> Store<StoreData> {
    let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
    let wasi = WasiCtx::builder()
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build();
    let data = StoreData {
        wasi,
        table: ResourceTable::new(),
        config: config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(secrets.pairs())
            .collect(),
        limiter: MemoryLimiter::new(limits.memory_limit_bytes()),
        stderr,
        limits,
        budget: limits.call_timeout,
        deadline: Instant::now() + limits.call_timeout,
        http: WasiHttpCtx::new(),
        outbound: OutboundHooks::new(Arc::clone(grants)),
    };
    let mut store = Store::new(engine, data);
    store.limiter(|data| &mut data.limiter);
    store
}

/// Where a call starts: remembered so a failure reports only this call's stderr.
#[derive(Debug, Clone, Copy)]
pub struct CallMark {
    stderr_len: usize,
}

/// Arms the store for one call: a fresh deadline (the extension's call timeout) and a
/// cleared out-of-memory flag.
pub fn begin_call(store: &mut Store<StoreData>) -> CallMark {
    let budget = store.data().limits.call_timeout;
    begin_call_within(store, budget)
}

/// Like [`begin_call`], with a budget of its own (a command's timeout plus a margin).
pub fn begin_call_within(store: &mut Store<StoreData>, budget: Duration) -> CallMark {
    store.set_epoch_deadline(ticks_for(budget));
    let data = store.data_mut();
    data.budget = budget;
    data.deadline = Instant::now() + budget;
    data.limiter.refused = false;
    CallMark {
        stderr_len: data.stderr.contents().len(),
    }
}

/// Turns a failed call (a trap, an interrupt, a refused allocation) into a [`Fault`].
pub fn fault_from_error(err: &wasmtime::Error, store: &Store<StoreData>, mark: CallMark) -> Fault {
    let data = store.data();
    if data.limiter.refused {
        return Fault::OutOfMemory {
            limit_mib: data.limits.memory_limit_mib,
        };
    }
    let trap = err.downcast_ref::<Trap>();
    if trap == Some(&Trap::Interrupt)
        || err
            .downcast_ref::<super::waits::BudgetSpentWaiting>()
            .is_some()
    {
        return Fault::Timeout {
            budget_ms: u64::try_from(data.budget.as_millis()).unwrap_or(u64::MAX),
        };
    }
    let what = match trap {
        Some(trap) => trap.to_string(),
        // Not a wasm trap (a host-side error surfaced by the call): its first line is the
        // useful part, the rest is a backtrace.
        None => format!("{err:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    let stderr = stderr_since(data, mark);
    let message = if stderr.is_empty() {
        what
    } else {
        format!("{what}; guest stderr: {stderr}")
    };
    Fault::Trap { message }
}

/// This call's stderr on one line, without Rust's backtrace hint, at most a few KiB.
fn stderr_since(data: &StoreData, mark: CallMark) -> String {
    let all = data.stderr.contents();
    let new = all.get(mark.stderr_len..).unwrap_or_default();
    let text = String::from_utf8_lossy(new);
    let mut joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE=1`"))
        .collect::<Vec<_>>()
        .join(" ");
    if joined.len() > STDERR_IN_MESSAGE {
        let mut cut = STDERR_IN_MESSAGE;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push('…');
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn the_memory_cap_is_for_the_whole_store_not_each_memory() {
        let mut l = MemoryLimiter::new(64 * MIB);
        // Two memories of 40 MiB: each alone is under the cap, together they are not.
        assert!(l.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(!l.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(l.refused);
        // Growing the first within what is left is fine; past it is not.
        assert!(l.memory_growing(40 * MIB, 64 * MIB, None).unwrap());
        assert!(!l.memory_growing(0, 1, None).unwrap());
        // A memory's own maximum still applies (and is not reported as the host's cap).
        let mut l = MemoryLimiter::new(64 * MIB);
        assert!(!l.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert!(!l.refused);
    }

    #[test]
    fn table_elements_are_capped_over_all_tables() {
        let mut l = MemoryLimiter::new(64 * MIB);
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(!l.table_growing(0, 1, None).unwrap());
    }
}
