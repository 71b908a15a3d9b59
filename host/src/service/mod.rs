//! `sandboxer-host run`: configuration, tokens, the HTTP server, and the background work
//! that keeps a host correct while it serves (event delivery, reaper and leases, hot
//! reload), with a graceful shutdown that finishes in-flight requests, delivers the
//! outbox and stops the background tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub mod config;
pub mod logging;
pub mod reload;
pub mod tokens;

use crate::api::{self, AppState, Backend};
use crate::config::Settings;
use crate::events::{HttpSink, HttpSinkOptions, LogRelay};
use config::{ConfigError, DEFAULT_LISTEN, ServiceConfig};
use tokens::{TokenError, TokenSet};

/// What the background tasks need from the application, besides answering requests.
/// Every method may block; the service calls them on the blocking pool.
pub trait Maintenance: Send + Sync + 'static {
    /// Delivers undelivered outbox events to the JSONL event log (and marks them
    /// delivered). Returns how many were delivered.
    fn deliver_events(&self) -> Result<usize, String>;
    /// One pass of the reaper and the lease keeper: destroys and settles sandboxes past
    /// their maximum duration or past the grace period of an unpaid lease, and renews
    /// leases about to run out.
    fn tick(&self);
    /// Re-reads the extensions folder: adds, replaces and removes extensions; a file that
    /// fails to load leaves the previous good version serving.
    fn reload_extensions(&self);
    /// Re-reads the profiles folder, keeping the previous version of a broken file.
    fn reload_profiles(&self);
}

/// The application as the service drives it.
pub trait App: Backend + Maintenance {}
impl<T: Backend + Maintenance> App for T {}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Tokens could not be read or generated.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// The application (extensions, profiles, ledger, manager) could not be opened.
    #[error("cannot open the host: {0}")]
    Open(String),
    /// An event sink could not be set up.
    #[error("event sink: {0}")]
    Events(String),
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

/// Loads the configuration and the tokens, opens the application with `open`, then
/// serves until SIGINT/SIGTERM.
pub async fn run<F>(opts: RunOptions, open: F) -> Result<(), ServiceError>
where
    F: FnOnce(&Settings, &ServiceConfig) -> Result<Arc<dyn App>, ServiceError> + Send + 'static,
{
    let cfg = match &opts.config {
        Some(path) => ServiceConfig::load(path)?,
        None => ServiceConfig::default(),
    };
    let settings = effective_settings(&opts, &cfg);
    let listen = match opts.listen.or(cfg.listen) {
        Some(a) => a,
        None => config::parse_listen(DEFAULT_LISTEN).map_err(ServiceError::Open)?,
    };
    std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
        ServiceError::Open(format!(
            "cannot create the state folder {}: {e}",
            settings.state_dir.display()
        ))
    })?;

    let tokens = if opts.config.is_some() {
        let t = TokenSet::from_config(&cfg)?;
        if t.tenants().is_empty() {
            tracing::warn!("the config names no tenants: every /v1 request will be refused");
        }
        t
    } else {
        let (t, files) = TokenSet::local(&settings.state_dir)?;
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

    let s2 = settings.clone();
    let c2 = cfg.clone();
    // Off the async runtime: opening loads and compiles extensions, and the HTTP sinks'
    // blocking clients must be built (and dropped) outside async contexts.
    let (app, relays) = tokio::task::spawn_blocking(move || -> Result<_, ServiceError> {
        let relays = build_relays(&s2, &c2)?;
        Ok((open(&s2, &c2)?, relays))
    })
    .await
    .map_err(|e| ServiceError::Open(e.to_string()))??;
    let handle = api::metrics::install();
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        backend: app.clone() as Arc<dyn Backend>,
        tokens: Arc::new(tokens),
        metrics: handle.clone(),
        draining: draining.clone(),
        writers: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_writes)),
    };
    let router = api::router(state, cfg.max_body_bytes);

    // One stable line that scripts and tests can wait for.
    eprintln!("sandboxer-host: listening on http://{bound}");
    tracing::info!(listen = %bound, extensions = %settings.extensions_dir.display(), profiles = %settings.profiles_dir.display(), state = %settings.state_dir.display(), "serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let delivery = tokio::spawn(delivery_loop(
        app.clone(),
        relays,
        cfg.clone(),
        stop_rx.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tick_loop(app.clone(), cfg.reaper_interval, stop_rx.clone()));
    if let Some(h) = handle {
        tasks.spawn(upkeep_loop(h, stop_rx.clone()));
    }
    let _watcher = if cfg.reload {
        match reload::watch(app.clone(), &settings, cfg.reload_debounce, stop_rx.clone()) {
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
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            d2.store(true, Ordering::Relaxed);
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await
        .map_err(ServiceError::Serve)?;

    // In-flight requests are done; stop the background work, then flush the outbox.
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let mut relays = delivery.await.unwrap_or_default();
    let app2 = app.clone();
    let flushed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || drain_outbox(app2.as_ref(), &mut relays)),
    )
    .await;
    match flushed {
        Ok(Ok(n)) => tracing::info!(delivered = n, "outbox delivered; bye"),
        _ => tracing::warn!(
            "outbox not fully delivered before exit; it is delivered on the next start"
        ),
    }
    Ok(())
}

/// One relay from the JSONL event log to each configured HTTP hub.
fn build_relays(settings: &Settings, cfg: &ServiceConfig) -> Result<Vec<LogRelay>, ServiceError> {
    let mut relays = Vec::new();
    for h in &cfg.events.http {
        let has_auth =
            h.auth.token.is_some() || h.auth.token_env.is_some() || h.auth.token_file.is_some();
        let file = cfg.file.clone().unwrap_or_default();
        let bearer = if has_auth {
            Some(tokens::read_token(
                &h.auth,
                &file,
                &format!("events.http({})", h.url),
            )?)
        } else {
            None
        };
        let mut o = HttpSinkOptions::new(h.url.clone());
        o.batch_size = h.batch_size;
        o.timeout = Duration::from_millis(h.timeout_ms);
        o.bearer = bearer;
        let sink = HttpSink::new(o).map_err(|e| ServiceError::Events(e.to_string()))?;
        let cursor = crate::events::cursor_path(&settings.state_dir, &h.url);
        relays.push(LogRelay::new(
            settings.events_path(),
            cursor,
            Box::new(sink),
        ));
    }
    Ok(relays)
}

/// Delivers everything pending (at shutdown): the outbox to the log, the log to the hubs.
fn drain_outbox(app: &dyn App, relays: &mut [LogRelay]) -> usize {
    let mut total = match app.deliver_events() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "final event delivery failed");
            0
        }
    };
    for r in relays {
        loop {
            match r.pump(500) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(sink = %r.name(), error = %e, "final relay to the event hub failed; it resumes on the next start");
                    break;
                }
            }
        }
    }
    total
}

/// Every `deliver_interval`: drains the outbox into the JSONL log (normally already done
/// by each destroy), then relays the log to each HTTP hub. A failing hub is retried with
/// exponential back-off up to `max_backoff`, on its own: it never delays the outbox or
/// another hub. Runs on the blocking pool, never on a request's path.
async fn delivery_loop(
    app: Arc<dyn App>,
    relays: Vec<LogRelay>,
    cfg: ServiceConfig,
    mut stop: watch::Receiver<bool>,
) -> Vec<LogRelay> {
    let base = cfg.events.deliver_interval;
    let mut relays: Vec<(LogRelay, Duration, Instant)> = relays
        .into_iter()
        .map(|r| (r, base, Instant::now()))
        .collect();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(base) => {}
            _ = stop.changed() => return relays.into_iter().map(|(r, _, _)| r).collect(),
        }
        let a = app.clone();
        let max_backoff = cfg.events.max_backoff;
        let moved = std::mem::take(&mut relays);
        let r = tokio::task::spawn_blocking(move || {
            let mut relays = moved;
            match a.deliver_events() {
                Ok(n) if n > 0 => tracing::debug!(events = n, "outbox delivered to the event log"),
                Ok(_) => {}
                Err(e) => {
                    api::metrics::event_delivery("jsonl", "failed");
                    tracing::warn!(error = %e, "outbox delivery failed; will retry");
                }
            }
            for (relay, wait, next) in relays.iter_mut() {
                if Instant::now() < *next {
                    continue;
                }
                loop {
                    match relay.pump(500) {
                        Ok(0) => {
                            *wait = base;
                            break;
                        }
                        Ok(n) => {
                            api::metrics::event_delivery("http", "delivered");
                            tracing::debug!(sink = %relay.name(), events = n, "events relayed");
                        }
                        Err(e) => {
                            api::metrics::event_delivery("http", "failed");
                            *wait = (*wait * 2).min(max_backoff).max(base);
                            *next = Instant::now() + *wait;
                            tracing::warn!(sink = %relay.name(), error = %e, retry_in_ms = wait.as_millis() as u64, "event hub delivery failed; will retry");
                            break;
                        }
                    }
                }
                api::metrics::sink_pending(&relay.name(), relay.pending());
            }
            relays
        })
        .await;
        match r {
            Ok(back) => relays = back,
            Err(e) => {
                tracing::error!(error = %e, "event delivery task failed");
                return Vec::new();
            }
        }
    }
}

/// Runs the reaper and the lease keeper every `interval`.
async fn tick_loop(app: Arc<dyn App>, interval: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let a = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || a.tick()).await {
            tracing::error!(error = %e, "reaper task failed");
        }
    }
}

/// Histograms in the Prometheus recorder need periodic upkeep.
async fn upkeep_loop(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
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
