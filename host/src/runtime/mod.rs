//! The WebAssembly runtime: one wasmtime engine, extension discovery and loading, the
//! precompiled-artifact cache, per-call limits, and a typed API over the bindings.
//! Knows nothing of routing, payments or the manager.

pub mod types;
