//! Command-line surfaces of the `sandboxer` binary. Each subcommand lives in its own
//! module and renders a table by default or JSON with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_EXTENSIONS_DIR, DEFAULT_PROFILES_DIR, DEFAULT_STATE_DIR, Settings};

pub mod credits;
pub mod extensions;
pub mod output;
pub mod route;
pub mod sandbox;

/// Folders shared by every command.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// Folder of extension components (`*.wasm`) and their sidecars (`*.toml`).
    #[arg(long, global = true, env = "SANDBOXER_EXTENSIONS_DIR", default_value = DEFAULT_EXTENSIONS_DIR)]
    pub extensions_dir: PathBuf,
    /// Folder of profiles (`*.toml`).
    #[arg(long, global = true, env = "SANDBOXER_PROFILES_DIR", default_value = DEFAULT_PROFILES_DIR)]
    pub profiles_dir: PathBuf,
    /// State folder: ledger database, compiled-extension cache, events.
    #[arg(long, global = true, env = "SANDBOXER_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl DirArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> Settings {
        Settings {
            extensions_dir: self.extensions_dir.clone(),
            profiles_dir: self.profiles_dir.clone(),
            state_dir: self.state_dir.clone(),
        }
    }
}

/// Manage sandboxes, credits, routes and extensions of a sandboxer host from the shell.
///
/// Every command works on local state (the folders below); tables by default, `--json`
/// for scripts.
#[derive(Debug, Parser)]
#[command(name = "sandboxer", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List and check backend extensions.
    #[command(subcommand)]
    Extensions(extensions::ExtensionsCommand),
    /// Show, add and verify tenants' prepaid credits.
    #[command(subcommand)]
    Credits(credits::CreditsCommand),
    /// Create, inspect, list and destroy sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Explain how a profile is routed: every candidate, its estimate, health and fate.
    #[command(subcommand)]
    Route(route::RouteCommand),
}

/// Runs a parsed command line; errors are printed by the binary.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.dirs.settings();
    match cli.command {
        Command::Extensions(cmd) => extensions::run(cmd, &settings, cli.json),
        Command::Credits(cmd) => credits::run(cmd, &settings, cli.json),
        Command::Sandbox(cmd) => sandbox::run(cmd, &settings, cli.json),
        Command::Route(cmd) => route::run(cmd, &settings, cli.json),
    }
}
