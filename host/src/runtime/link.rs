//! What an extension may import: the one place the linker is assembled.
//!
//! Today: WASI p2 (with nothing granted by the contexts built in [`super::limits`]) and
//! `wasi:config/store` answering from the extension's sidecar `[config]` table. A new
//! grant (e.g. outbound `wasi:http` to listed hosts) is one more step here plus a field
//! in [`StoreData`].

use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_config::WasiConfig;

use super::limits::StoreData;

/// The linker every extension of an engine is instantiated with.
pub fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreData>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // `wasi:io/poll` again, bounded by the call's budget (a guest blocked in a sleep or
    // an HTTP wait would otherwise run past it: epoch interruption only reaches guest code).
    linker.allow_shadowing(true);
    super::waits::add_to_linker(&mut linker)?;
    linker.allow_shadowing(false);
    wasmtime_wasi_config::add_to_linker(&mut linker, |data: &mut StoreData| {
        WasiConfig::from(data.config())
    })?;
    // Outbound HTTP for every extension; each request passes the extension's grants
    // (nothing is reachable without `allowed_outbound_hosts`): see super::grants.
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
    Ok(linker)
}
