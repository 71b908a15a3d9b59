//! `sandboxer-host run`: the process around the HTTP surface. It reads the config file
//! (`config.rs`) and the tokens (`tokens.rs`), binds the listener, opens the [`App`], and
//! schedules the app's background jobs on timers (event delivery, the reaper and the
//! lease keeper, gauge upkeep) and hot reload on folder changes (`watch.rs`). At SIGTERM
//! or SIGINT it finishes the requests in flight (within a grace period, `serve.rs`), stops
//! the timers and drains the events.
//! What each job does is app code; this module only decides when.

mod config;
mod embedded;
pub use embedded::attach as attach_local_agent;
mod serve;
mod tokens;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch as signal_watch;

use crate::app::{App, AppOptions, DEFER_COMPILE_ABOVE_BYTES, EventHub, LeasePolicy};
use crate::http::{self, AppState};
use crate::secrets::openbao::{self, OpenBao, OpenBaoAuth, OpenBaoSettings};
use crate::settings::Settings;
use crate::telemetry::metrics;
use config::{ConfigError, DEFAULT_LISTEN, ServiceConfig};
use tokens::TokenError;

pub use crate::telemetry::logging::LogFormat;
pub use config::parse_listen;

/// The HTTP API's OpenAPI 3.1 document as pretty JSON (what `GET /v1/openapi.json`
/// answers and `sandboxer-host openapi` prints; docs/openapi.json holds it).
pub fn openapi_json() -> String {
    http::openapi::document_json()
}

/// Logs to stderr as `format`, `info` and above unless `RUST_LOG` says otherwise.
pub fn init_logging(format: LogFormat) {
    crate::telemetry::logging::init_server(format);
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Tokens could not be read or generated.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// `[local] enabled = true` and the embedded agent cannot run.
    #[error(transparent)]
    Embed(#[from] embedded::EmbedError),
    /// The application (extensions, profiles, ledger, manager, event hubs) could not be
    /// opened.
    #[error("{0}")]
    Open(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// What `sandboxer-host run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--listen` / `SANDBOXER_LISTEN` (wins over the config file).
    pub listen: Option<SocketAddr>,
    /// The folders from flags/environment/defaults.
    pub dirs: Settings,
    /// Which of the three folders were given explicitly (flag or environment): those win
    /// over the config file, the defaults do not.
    pub dirs_explicit: [bool; 3],
    /// `--database` / `SANDBOXER_DATABASE_URL` (wins over the config's `[database] url`).
    pub database: Option<String>,
}

/// Whether `url` names a PostgreSQL database the host can use (`postgres://` or
/// `postgresql://`); the reason when not, without the URL's password.
pub fn check_database_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Not ours to parse: name only its scheme, never what may be a password.
        let got = match url.split_once("://") {
            Some((scheme, _)) => format!("a {scheme}:// URL"),
            None => "something that is not a URL".to_owned(),
        };
        return Err(format!(
            "expected a PostgreSQL URL (postgres://user:password@host:port/name), got {got}"
        ));
    }
    let shown = crate::storage::postgres::redact(url);
    <::postgres::Config as std::str::FromStr>::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("not a usable PostgreSQL URL {shown}: {e}"))
}

/// The database the host runs on: `--database`/`SANDBOXER_DATABASE_URL`, else the
/// config's `[database] url`, else `None` (the SQLite file in the state folder).
pub fn effective_database(opts: &RunOptions, cfg: &ServiceConfig) -> Option<String> {
    opts.database.clone().or_else(|| cfg.database_url.clone())
}

/// The effective settings: explicit flags, then the config file, then the defaults.
pub fn effective_settings(opts: &RunOptions, cfg: &ServiceConfig) -> Settings {
    let pick = |explicit: bool, flag: &PathBuf, file: &Option<PathBuf>| {
        if explicit {
            flag.clone()
        } else {
            file.clone().unwrap_or_else(|| flag.clone())
        }
    };
    Settings {
        extensions_dir: pick(
            opts.dirs_explicit[0],
            &opts.dirs.extensions_dir,
            &cfg.extensions_dir,
        ),
        profiles_dir: pick(
            opts.dirs_explicit[1],
            &opts.dirs.profiles_dir,
            &cfg.profiles_dir,
        ),
        state_dir: pick(opts.dirs_explicit[2], &opts.dirs.state_dir, &cfg.state_dir),
    }
}

/// The app a service runs: events delivered by the delivery timer (many settlements
/// share one sink write, and no request waits on a sink), large uncached components
/// compiled in the background while the others serve, leases and the circuit breaker as
/// configured, and the configured event hubs with their tokens resolved.
/// How the host logs in to OpenBao: `role_id` with the secret id read from its env var or
/// file now, else the token from its source.
fn openbao_auth(
    b: &config::OpenBaoConfig,
    file: &std::path::Path,
) -> Result<OpenBaoAuth, ServiceError> {
    let Some(role_id) = &b.role_id else {
        return Ok(OpenBaoAuth::Token(tokens::read_token(
            &b.auth, file, "openbao",
        )?));
    };
    let fail = |key: &str, message: String| ConfigError::new(file, key, message);
    let secret_id = match (&b.secret_id_env, &b.secret_id_file) {
        (Some(var), _) => std::env::var(var).map_err(|_| {
            fail(
                "openbao.secret_id_env",
                format!("expected the environment variable {var} to hold the AppRole's secret id; it is unset or not UTF-8"),
            )
        })?,
        (None, Some(p)) => std::fs::read_to_string(p).map_err(|e| {
            fail(
                "openbao.secret_id_file",
                format!("expected a readable file holding the AppRole's secret id at {}: {e}", p.display()),
            )
        })?,
        (None, None) => {
            return Err(fail(
                "openbao.role_id",
                "expected one of secret_id_env, secret_id_file".into(),
            )
            .into());
        }
    };
    let secret_id = secret_id.trim().to_owned();
    if secret_id.is_empty() {
        return Err(fail(
            "openbao.secret_id",
            "the AppRole's secret id is empty".into(),
        )
        .into());
    }
    Ok(OpenBaoAuth::AppRole {
        role_id: role_id.trim().to_owned(),
        secret_id,
    })
}

fn app_options(
    cfg: &ServiceConfig,
    embedding: &embedded::Embedding,
) -> Result<AppOptions, ServiceError> {
    let mut event_hubs = Vec::new();
    let file = cfg.file.clone().unwrap_or_default();
    for h in &cfg.events.http {
        let has_auth =
            h.auth.token.is_some() || h.auth.token_env.is_some() || h.auth.token_file.is_some();
        let bearer = if has_auth {
            Some(tokens::read_token(
                &h.auth,
                &file,
                &format!("events.http({})", h.url),
            )?)
        } else {
            None
        };
        event_hubs.push(EventHub {
            url: h.url.clone(),
            batch_size: h.batch_size,
            timeout: Duration::from_millis(h.timeout_ms),
            bearer,
            min_backoff: cfg.events.deliver_interval,
            max_backoff: cfg.events.max_backoff,
        });
    }
    let openbao = match &cfg.openbao {
        None => None,
        Some(b) => Some(Arc::new(OpenBao::new(OpenBaoSettings {
            address: b.address.clone(),
            auth: openbao_auth(b, &file)?,
            mount: b.mount.clone(),
            ca_file: b.ca_file.clone(),
            timeout: b
                .timeout_ms
                .map_or(openbao::DEFAULT_TIMEOUT, Duration::from_millis),
            refresh: b
                .refresh_secs
                .map_or(openbao::DEFAULT_REFRESH, Duration::from_secs),
            retry: b
                .retry_secs
                .map_or(openbao::DEFAULT_RETRY, Duration::from_secs),
            tenant_prefix: b
                .tenant_prefix
                .clone()
                .unwrap_or_else(|| openbao::DEFAULT_TENANT_PREFIX.into()),
        }))),
    };
    Ok(AppOptions {
        openbao,
        event_source: cfg.events.source.clone(),
        deliver_after_settle: false,
        leases: Some(LeasePolicy {
            chunk: cfg.leases.chunk,
            renew_before: cfg.leases.renew_before,
            grace: cfg.leases.grace,
        }),
        health: cfg.health,
        defer_compile_above_bytes: Some(DEFER_COMPILE_ABOVE_BYTES),
        event_hubs,
        overlays: embedding.overlay().into_iter().collect(),
        grant_policy: cfg.grants.clone(),
        max_file_bytes: cfg.max_file_bytes,
        database_url: cfg.database_url.clone(),
        ..AppOptions::default()
    })
}

/// Loads the configuration and the tokens, opens the application, then serves until
/// SIGINT/SIGTERM.
pub async fn run(opts: RunOptions) -> Result<(), ServiceError> {
    let cfg = match &opts.config {
        Some(path) => ServiceConfig::load(path)?,
        None => ServiceConfig::default(),
    };
    let settings = effective_settings(&opts, &cfg);
    let mut cfg = cfg;
    cfg.database_url = effective_database(&opts, &cfg);
    if let Some(url) = &opts.database {
        check_database_url(url)
            .map_err(|m| ServiceError::Open(format!("--database / SANDBOXER_DATABASE_URL: {m}")))?;
    }
    if let Some(url) = &cfg.database_url {
        tracing::info!(database = %crate::storage::postgres::redact(url), "ledger and sandbox statuses on PostgreSQL");
    }
    let listen = match opts.listen.or(cfg.listen) {
        Some(a) => a,
        None => config::parse_listen(DEFAULT_LISTEN).map_err(ServiceError::Open)?,
    };
    crate::storage::private::private_dir(&settings.state_dir).map_err(|e| {
        ServiceError::Open(format!(
            "cannot create the state folder {} (0700): {e}",
            settings.state_dir.display()
        ))
    })?;

    let tokens = if opts.config.is_some() {
        let t = tokens::from_config(&cfg)?;
        if t.tenants().is_empty() {
            tracing::warn!("the config names no tenants: every /v1 request will be refused");
        }
        t
    } else {
        let (t, files) = tokens::local(&settings.state_dir)?;
        // Like Jupyter: say where the credentials are, never what they are.
        eprintln!(
            "sandboxer-host: no --config given; tenant \"{}\" token is in {}",
            tokens::LOCAL_TENANT,
            files.tenant_file.display()
        );
        eprintln!(
            "sandboxer-host: admin token (adds credits) is in {}",
            files.admin_file.display()
        );
        t
    };

    // Bind first: a taken port fails fast, before extensions are compiled.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(ServiceError::Serve)?;

    // The embedded agent before the app: the app loads `local` wired to it (or skipped).
    let (local, s2) = (cfg.local.clone(), settings.clone());
    let embedding = tokio::task::spawn_blocking(move || embedded::prepare(&local, &s2))
        .await
        .map_err(|e| ServiceError::Open(e.to_string()))??;
    let app = App::open(&settings, app_options(&cfg, &embedding)?);
    // Off the async runtime: opening loads and compiles extensions, and the HTTP hubs'
    // blocking clients must be built (and dropped) outside async contexts.
    let a2 = app.clone();
    let started = tokio::task::spawn_blocking(move || a2.start())
        .await
        .map_err(|e| ServiceError::Open(e.to_string()))?
        .map_err(|e| ServiceError::Open(e.to_string()))?;
    if !started.reconciled.is_empty() {
        tracing::info!(report = ?started.reconciled, "reconciled what the previous run left unfinished");
    }
    for s in &started.skipped {
        tracing::warn!(file = %s, "extension not loaded");
    }
    let metrics_tokens = tokens::metrics_from_config(&cfg)?.map(Arc::new);
    let handle = metrics::install();
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        app: app.clone(),
        tokens: Arc::new(tokens),
        metrics: handle.clone(),
        metrics_tokens,
        draining: draining.clone(),
        writers: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_writes)),
    };
    let router = http::router(state, cfg.max_body_bytes);

    // One stable line that scripts and tests can wait for.
    eprintln!("sandboxer-host: listening on http://{bound}");
    tracing::info!(listen = %bound, extensions = %settings.extensions_dir.display(), profiles = %settings.profiles_dir.display(), state = %settings.state_dir.display(), "serving");

    let (stop_tx, stop_rx) = signal_watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(every(
        cfg.events.deliver_interval,
        stop_rx.clone(),
        app.clone(),
        |app| {
            if let Err(e) = app.deliver_once() {
                tracing::warn!(error = %e, "event delivery failed; will retry");
            }
        },
    ));
    tasks.spawn(every(
        cfg.reaper_interval,
        stop_rx.clone(),
        app.clone(),
        |app| {
            // The lease keeper first: a sandbox whose unpaid lease ran out is ended by it
            // (reason lease_unpaid), one past its maximum duration by the reaper.
            if let Err(e) = app.keep_leases_once() {
                tracing::warn!(error = %e, "lease keeper pass failed");
            }
            if let Err(e) = app.reap_once() {
                tracing::warn!(error = %e, "reaper pass failed");
            }
        },
    ));
    if let Some(h) = handle {
        tasks.spawn(upkeep_loop(h, stop_rx.clone()));
    }
    if let Some(retry) = app.openbao().map(|b| b.settings().retry) {
        tasks.spawn(every(retry, stop_rx.clone(), app.clone(), |app| {
            if let Err(e) = app.retry_extensions() {
                tracing::warn!(error = %e, "retry of extensions waiting for secrets failed");
            }
        }));
    }
    let _watcher = if cfg.reload {
        match watch::watch(app.clone(), &settings, cfg.reload_debounce, stop_rx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "hot reload disabled: cannot watch the folders");
                None
            }
        }
    } else {
        None
    };

    let d2 = draining.clone();
    let grace = cfg.serve.shutdown_grace;
    serve::serve(listener, router, cfg.serve, async move {
        shutdown_signal().await;
        d2.store(true, Ordering::Relaxed);
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: finishing in-flight requests"
        );
    })
    .await;

    // In-flight requests are done; stop the background work, then drain the events.
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let embedded::Embedding::Running(agent, _) = embedding {
        // Its SIGTERM stops the sandboxes and records their usage, for their destroys.
        let _ = tokio::task::spawn_blocking(move || agent.stop()).await;
    }
    let a2 = app.clone();
    let flushed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || a2.drain_events()),
    )
    .await;
    match flushed {
        Ok(Ok(Ok(n))) => tracing::info!(delivered = n, "events delivered; bye"),
        _ => tracing::warn!(
            "events not fully delivered before exit; they are delivered on the next start"
        ),
    }
    Ok(())
}

/// Runs `job` on the blocking pool every `interval` until `stop` flips (never two runs of
/// one job at once: the next waits for the previous).
async fn every(
    interval: Duration,
    mut stop: signal_watch::Receiver<bool>,
    app: App,
    job: fn(&App),
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || job(&a)).await {
            tracing::error!(error = %e, "background task failed");
        }
    }
}

/// Histograms in the Prometheus recorder need periodic upkeep.
async fn upkeep_loop(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: signal_watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
            _ = stop.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
