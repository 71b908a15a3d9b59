//! `sandboxer-agent`: the command line (see `--help` and docs/agent.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use sandboxer_agent::config::{Config, Overrides};
use sandboxer_agent::{api, check, init, manager};

/// Runs code sandboxes on this machine for sandboxer-host's `local` extension: each one a
/// bubblewrap process tree (user, pid, net, mount, ipc, uts namespaces; read-only system
/// folders; a private size-limited workspace; an unprivileged uid; a seccomp filter; no
/// network) in its own cgroup (cpu, memory, pids limits), whose CPU time and peak memory
/// are measured for billing. Needs bubblewrap and cgroups (v1 or v2); run as root for a uid
/// per sandbox. `sandboxer-agent check` says what is missing.
#[derive(Parser)]
#[command(name = "sandboxer-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (docs/agent.md) until SIGTERM or Ctrl-C, which stop the running
    /// sandboxes and record their usage.
    Serve {
        #[command(flatten)]
        opts: Opts,
        /// Log format: `text` or `json` (one object per line).
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Also write the bound address (e.g. 127.0.0.1:41234) to this file once listening;
        /// useful with `--listen 127.0.0.1:0`.
        #[arg(long, value_name = "FILE")]
        addr_file: Option<PathBuf>,
    },
    /// Check whether this machine can run sandboxes: bubblewrap, user namespaces, cgroups,
    /// and a trial sandbox. Exits 1 and says how to fix what is missing.
    Check {
        #[command(flatten)]
        opts: Opts,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The sandbox's init (run by the agent inside each sandbox; not for people).
    #[command(hide = true)]
    Init,
    /// The trial sandbox's command of `check` (not for people).
    #[command(hide = true)]
    Probe,
}

/// The configuration: a file and flags that override it.
#[derive(Args)]
struct Opts {
    /// A TOML configuration file (keys in docs/agent.md).
    #[arg(long, value_name = "FILE", env = "SANDBOXER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7744]; port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where records of sandboxes are kept [default: /var/lib/sandboxer-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// File holding the bearer token (owner-only, e.g. chmod 600); else the
    /// SANDBOXER_AGENT_TOKEN environment variable.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// How many sandboxes may run at once [default: 4 per core, at most one per 256 MiB].
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// The cgroup (relative to each hierarchy's root) the sandboxes' cgroups go under
    /// [default: sandboxer-agent]. Give each agent on one machine its own.
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// First of the `slots` host uids the sandboxes run as (when the agent is root)
    /// [default: 900000]; the range must belong to nobody.
    #[arg(long, value_name = "UID")]
    uid_base: Option<u32>,
    /// Most processes and threads one sandbox may have at once [default: 512].
    #[arg(long, value_name = "N")]
    pids_max: Option<u32>,
}

impl Opts {
    fn load(&self) -> anyhow::Result<Config> {
        let flags = Overrides {
            listen: self.listen.clone(),
            state_dir: self.state_dir.clone(),
            token_file: self.token_file.clone(),
            slots: self.slots,
            cgroup_parent: self.cgroup_parent.clone(),
            uid_base: self.uid_base,
            pids_max: self.pids_max,
        };
        Ok(Config::load(self.config.as_deref(), &flags)?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Init => ExitCode::from(init::main() as u8),
        Command::Probe => ExitCode::from(check::probe() as u8),
        Command::Check { opts, json } => match opts.load() {
            Ok(cfg) => {
                let report = check::run(&cfg);
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_else(|e| e.to_string())
                    );
                } else {
                    print!("{}", check::render(&report));
                }
                if report.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sandboxer-agent: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Serve {
            opts,
            log_format,
            addr_file,
        } => match serve(opts, &log_format, addr_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sandboxer-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(opts: Opts, log_format: &str, addr_file: Option<PathBuf>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match log_format {
        "json" => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        "text" => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        other => anyhow::bail!("--log-format: expected text or json, got {other:?}"),
    }
    let cfg = opts.load()?;
    let token = cfg.token()?;
    let machine = manager::Machine::probe(&cfg)
        .map_err(|e| anyhow::anyhow!("{e} (run `sandboxer-agent check` for a full report)"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listen = cfg.listen;
        let (agent, notes) = manager::Agent::open(cfg, machine).await?;
        for n in notes {
            tracing::warn!("recovered: {n}");
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!("listening on {addr}, beyond loopback: plain HTTP, keep it on a private network");
        }
        if let Some(f) = &addr_file {
            std::fs::write(f, addr.to_string())
                .with_context(|| format!("writing {}", f.display()))?;
        }
        println!("sandboxer-agent: listening on http://{addr}");
        tracing::info!(%addr, slots = agent.config().slots, cgroup = agent.machine().cgroups.layout().version(), "serving");
        let app = api::router(agent.clone(), token);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("shutting down: stopping the running sandboxes");
        agent.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
