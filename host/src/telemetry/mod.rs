//! Logs and metrics: cross-cutting, like `tracing` itself. The layers record what happens
//! through [`metrics`]; the binaries choose how logs are written ([`logging`]). Imports
//! nothing else of the crate, so any layer may use it.

pub mod logging;
pub mod metrics;
