//! `local`: the sandboxer extension for a self-hosted pool of machines, each running
//! `sandboxer-agent` (docs/agent.md). It implements the whole `sandbox-extension` world:
//! the lifecycle against the agents' HTTP API over `wasi:http` (capacity is the sum of their
//! slots; a sandbox goes to the agent with the most free slots; the handle records which
//! agent and the agent's id), `process` (exec, streamed exec) and `files`.
//!
//! Billing: `meter-actual` prices the CPU time the agent measured in the sandbox's cgroup
//! and the memory allocated over its lifetime at configured rates, exactly
//! (`rust_decimal`); `estimate-cost` prices the maximum (every vCPU busy for the whole
//! maximum duration), so the meter never exceeds the hold.
//!
//! The pure logic ([`config`], [`pricing`], [`placement`], [`handle`]) is plain Rust,
//! unit-tested natively (`cargo test -p local`); `wasm` holds the bindings and `http` the
//! `wasi:http` client.

pub mod config;
pub mod handle;
pub mod placement;
pub mod pricing;

#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod wasm;
