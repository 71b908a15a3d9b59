//! sandboxer-host: routes code-sandbox requests between WebAssembly backend extensions
//! and bills for them on prepaid credits.
//!
//! Data flows one way: surfaces ([`cli`], the HTTP API of [`server`]) → [`app`] → manager
//! → routing / payments / runtime → extensions, with [`domain`] the vocabulary all of
//! them speak and storage under payments and the manager. The public face is small: the
//! application and its typed answers, the vocabulary, the settings, and the two
//! surfaces' entry points. Everything else is the crate's own.

pub mod app;
pub mod cli;
pub mod domain;
pub mod server;
mod settings;

mod events;
mod http;
mod manager;
mod payments;
mod routing;
mod runtime;
mod secrets;
mod storage;
mod telemetry;

pub use settings::{DEFAULT_EXTENSIONS_DIR, DEFAULT_PROFILES_DIR, DEFAULT_STATE_DIR, Settings};

/// The layers under the app, for the crate's own integration tests and benchmarks only
/// (cargo builds those as separate crates, so they can reach only what is public). Each
/// re-export is used by a test or bench that pins one layer against real components or
/// measures it against its floor (a native call, a bare database commit). Surfaces and
/// anything else go through [`app`]. Not an API: it changes with the layers.
#[doc(hidden)]
pub mod layers {
    /// The WebAssembly runtime.
    pub mod runtime {
        pub use crate::runtime::bindings;
        pub use crate::runtime::conformance;
        pub use crate::runtime::{
            ArtifactSource, CacheStats, Extension, ExtensionSpec, LoadFailure, PoolPolicy,
            QuarantinePolicy, Runtime, RuntimeConfig,
        };
    }

    /// The credits ledger.
    pub mod payments {
        pub use crate::payments::{
            CreditsStore, Entry, EntryKind, Hold, HoldState, LedgerError, OutboxEvent,
            OverdraftPolicy, Settlement,
        };
        pub use crate::storage::postgres::ledger::{DEFAULT_POOL_SIZE, PgCreditsStore};
        pub use crate::storage::postgres::redact;
        pub use crate::storage::sqlite::ledger::SqliteCreditsStore;
    }

    /// Routing.
    pub mod routing {
        pub use crate::routing::health::{HealthConfig, ManualClock};
        pub use crate::routing::loaded::LoadedExtensions;
        pub use crate::routing::profile::{
            Candidates, load_profile_file, load_profiles, parse_profile,
        };
        pub use crate::routing::{ExtensionView, HealthTracker, Profile, resolve_extension};
    }

    /// The manager's race-window hooks.
    pub mod manager {
        pub use crate::manager::store::{
            Inserted, LeaseRow, Page, Row, SandboxKey, SandboxStore, StoreError,
        };
        pub use crate::manager::{HookPoint, TestHook};
        pub use crate::storage::postgres::sandboxes::PgSandboxStore;
        pub use crate::storage::sqlite::sandboxes::SqliteSandboxStore;
    }
}
