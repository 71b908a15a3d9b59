//! Where the host finds its extensions and profiles and keeps its state.
//!
//! Defaults are relative to the working directory so that, from the repository root,
//! both binaries find the shipped `extensions/` and `profiles/` with no flags; the state
//! (ledger, compiled-extension cache, events) goes to `./.sandboxer`.

use std::path::PathBuf;

/// Default extensions folder, relative to the working directory.
pub const DEFAULT_EXTENSIONS_DIR: &str = "extensions";
/// Default profiles folder, relative to the working directory.
pub const DEFAULT_PROFILES_DIR: &str = "profiles";
/// Default state folder, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = ".sandboxer";

/// The three folders every surface works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where `*.wasm` extensions and their sidecar `*.toml` files live.
    pub extensions_dir: PathBuf,
    /// Where `*.toml` profiles live.
    pub profiles_dir: PathBuf,
    /// Ledger database, compiled-extension cache, event files.
    pub state_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            extensions_dir: PathBuf::from(DEFAULT_EXTENSIONS_DIR),
            profiles_dir: PathBuf::from(DEFAULT_PROFILES_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

impl Settings {
    /// The precompiled-artifact cache (host-written only; never the extensions folder).
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir.join("cache")
    }

    /// The SQLite ledger file.
    pub fn ledger_path(&self) -> PathBuf {
        self.state_dir.join("ledger.sqlite3")
    }

    /// The default JSONL event sink.
    pub fn events_path(&self) -> PathBuf {
        self.state_dir.join("events.jsonl")
    }
}
