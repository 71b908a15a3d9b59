//! `saas-stub`: a sandbox backend extension that simulates a metered SaaS provider with no
//! external API, or (configured with `kind = "self-hosted"` and a `capacity`) a
//! self-hosted pool. Prices come from its `wasi:config/store` configuration; every amount
//! is exact. It keeps no state between calls: the handle and the host's context carry
//! everything.
//!
//! Built for `wasm32-wasip2` by `scripts/build-extensions.sh`; the native build exposes
//! the same logic ([`backend`], [`config`]) for tests and benchmarks.

pub mod backend;
pub mod config;
pub mod exact;
pub mod small_alloc;

#[cfg(target_arch = "wasm32")]
mod wasm;
