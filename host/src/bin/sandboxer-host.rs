//! `sandboxer-host`: serves the sandboxer HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use sandboxer_host::cli::DirArgs;
use sandboxer_host::server::{self, LogFormat, RunOptions};

/// The sandboxer host: routes code-sandbox requests between WebAssembly backend
/// extensions and bills them on prepaid credits, over an HTTP API.
#[derive(Debug, Parser)]
#[command(name = "sandboxer-host", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    dirs: DirArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API until SIGINT/SIGTERM.
    ///
    /// With no --config, serves the extensions and profiles folders on 127.0.0.1:7733
    /// with a tenant "local" and an admin, whose tokens are generated into
    /// <state-dir>/tokens/ (owner-only) and whose paths are printed at start.
    /// See docs/api.md for the endpoints.
    #[command(
        after_help = "Examples:\n  sandboxer-host run\n  sandboxer-host run --config /etc/sandboxer/sandboxer.toml --log-format json\n  SANDBOXER_LISTEN=0.0.0.0:7733 sandboxer-host run --config sandboxer.toml"
    )]
    Run {
        /// Configuration file (tenants and tokens, admin token, leases, event sinks…).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7733, or the config's `listen`].
        #[arg(long, env = "SANDBOXER_LISTEN", value_name = "ADDR", value_parser = parse_listen)]
        listen: Option<SocketAddr>,
        /// Log line format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SANDBOXER_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (JSON) to standard output.
    ///
    /// The same document `sandboxer-host run` serves at GET /v1/openapi.json, generated
    /// from the handlers' own types. docs/openapi.json is this output, checked in; a test
    /// fails when the two differ. Reads no configuration and starts nothing.
    #[command(
        after_help = "Examples:\n  sandboxer-host openapi > docs/openapi.json\n  cargo run -q --bin sandboxer-host -- openapi > docs/openapi.json   (regenerate the checked-in copy)\n  curl -s http://127.0.0.1:7733/v1/openapi.json   (the served copy)"
    )]
    Openapi,
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    server::parse_listen(s)
}

fn explicit(m: &ArgMatches, id: &str) -> bool {
    let given = |m: &ArgMatches| {
        matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    given(m) || m.subcommand().is_some_and(|(_, sub)| given(sub))
}

/// Caps glibc's malloc arenas. By default it keeps up to 8 per core, one per busy thread,
/// each holding on to what its thread freed; the service runs a request per blocking
/// thread, so under concurrent load that is tens of MiB of resident memory doing nothing.
/// Two arenas cost no measurable throughput (docs/api.md, Performance). An operator's
/// `MALLOC_ARENA_MAX` still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in main, before any other thread exists; mallopt
        // only changes the allocator's tuning.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// `sandboxer-host openapi`: the document on standard output.
fn print_openapi() -> ExitCode {
    use std::io::Write as _;
    let doc = server::openapi_json();
    let mut out = std::io::stdout().lock();
    match out.write_all(doc.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxer-host: cannot write the document: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let (config, listen, log_format) = match cli.command {
        Command::Openapi => return print_openapi(),
        Command::Run {
            config,
            listen,
            log_format,
        } => (config, listen, log_format),
    };
    server::init_logging(log_format);
    let opts = RunOptions {
        config,
        listen,
        dirs: cli.dirs.settings(),
        database: cli.dirs.database.clone(),
        dirs_explicit: [
            explicit(&matches, "extensions_dir"),
            explicit(&matches, "profiles_dir"),
            explicit(&matches, "state_dir"),
        ],
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxer-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxer-host: {e}");
            ExitCode::FAILURE
        }
    }
}
