//! The `sandboxer` command line: a surface. Each command group parses its arguments
//! into domain types (clap value parsers, so bad input is refused before anything
//! opens), calls one use case on the [`App`], and renders the typed answer as a table or,
//! with `--json`, as the app's JSON (the same bytes as the HTTP API's answer).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use crate::app::{App, AppOptions, CompileEvent, CompileHook};
use crate::settings::{DEFAULT_EXTENSIONS_DIR, DEFAULT_PROFILES_DIR, DEFAULT_STATE_DIR, Settings};

mod credits;
mod extensions;
mod keys;
mod output;
mod route;
mod sandbox;
mod session;
mod spec;

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
    /// PostgreSQL database for the ledger and sandbox statuses
    /// (`postgres://user:password@host:port/name`), in place of the SQLite file in the
    /// state folder; several hosts may share one (docs/database.md).
    #[arg(
        long = "database",
        global = true,
        env = "SANDBOXER_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
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
    /// Print JSON instead of tables (one line: the same JSON the HTTP API answers).
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
    /// Store, list and remove tenants' own provider keys (BYOK) in OpenBao.
    Keys(keys::Keys),
}

/// Runs a parsed command line; errors are printed by the binary.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Keys(keys) = cli.command {
        return keys::run(keys, &cli.dirs.settings(), options(), cli.json);
    }
    let settings = cli.dirs.settings();
    let mut opts = options();
    if let Some(url) = &cli.dirs.database {
        // Checked here, not by clap: its error would repeat the value, password and all.
        crate::server::check_database_url(url)
            .map_err(|m| anyhow::anyhow!("--database / SANDBOXER_DATABASE_URL: {m}"))?;
    }
    opts.database_url = cli.dirs.database.clone();
    // Local sandboxes run on the agent a `sandboxer-host run` on this state folder started.
    opts.overlays
        .extend(crate::server::attach_local_agent(&settings));
    if let Command::Route(route::RouteCommand::Explain(args)) = &cli.command {
        opts.openbao = args.openbao.client()?;
    }
    let app = App::open(&settings, opts);
    match cli.command {
        Command::Extensions(cmd) => extensions::run(cmd, &app, cli.json),
        Command::Credits(cmd) => credits::run(cmd, &app, cli.json),
        Command::Sandbox(cmd) => sandbox::run(cmd, &app, cli.json),
        Command::Route(cmd) => route::run(cmd, &app, cli.json),
        Command::Keys(_) => unreachable!("handled above"),
    }
}

/// The CLI's app: the defaults (every event delivered at once, everything compiled
/// before answering), with a spinner on stderr while a component compiles.
fn options() -> AppOptions {
    AppOptions {
        on_compile: std::io::stderr().is_terminal().then(spinner_hook),
        ..AppOptions::default()
    }
}

fn spinner_hook() -> CompileHook {
    let current: Arc<Mutex<Option<ProgressBar>>> = Arc::new(Mutex::new(None));
    Arc::new(move |event: &CompileEvent| match event {
        CompileEvent::Started { file, size_bytes } => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                bar.set_style(style);
            }
            let name = file.file_name().map_or_else(
                || file.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            bar.set_message(format!(
                "compiling {name} ({:.1} MB)…",
                *size_bytes as f64 / 1e6
            ));
            bar.enable_steady_tick(Duration::from_millis(100));
            *current.lock() = Some(bar);
        }
        CompileEvent::Finished { .. } => {
            if let Some(bar) = current.lock().take() {
                bar.finish_and_clear();
            }
        }
    })
}

/// Logs to stderr: warnings and errors unless `RUST_LOG` says otherwise (answers go to
/// stdout).
pub fn init_logging() {
    crate::telemetry::logging::init_cli();
}
