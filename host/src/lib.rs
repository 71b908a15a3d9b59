//! sandboxer-host: routes code-sandbox requests between WebAssembly backend extensions
//! and bills for them.
//!
//! Data flows one way: surfaces (`cli`, `api`) → `manager` → `routing` / `payments` /
//! `runtime` → extensions.

pub mod api;
pub mod cli;
pub mod config;
pub mod events;
pub mod host;
pub mod manager;
pub mod money;
pub mod payments;
pub mod routing;
pub mod runtime;
pub mod service;
pub mod sqlite_cached;
pub mod sqlite_gate;
pub mod telemetry;
