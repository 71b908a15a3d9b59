//! The accept loop of `sandboxer-host run`: hyper's HTTP/1.1 server over the axum router,
//! with the limits a public listener needs (docs/security.md, "Connections"):
//!
//! - a **header-read timeout**: a client that does not send a whole request head in time
//!   (a half-sent request, a silent connection) is disconnected, so slow clients cannot
//!   pile up;
//! - a **connection cap**: past it, new connections wait in the kernel's backlog until one
//!   closes, instead of each taking memory and a task;
//! - a **bounded graceful shutdown**: on SIGTERM the listener closes, in-flight requests get
//!   `shutdown_grace` to finish, then the remaining connections are dropped.
//!
//! Accepted sockets set `TCP_NODELAY`: streamed exec output (NDJSON lines) goes out as it is
//! written instead of waiting for the peer's delayed ACK.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The listener's limits (`sandboxer.toml`: `header_timeout_ms`, `max_connections`,
/// `shutdown_grace_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Longest wait for a request's head (request line and headers).
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains as
/// [`ServeLimits::shutdown_grace`] allows. Returns whether every connection finished in
/// time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, never spin or exit.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(router.clone()),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                connections = open,
                grace_ms = limits.shutdown_grace.as_millis() as u64,
                "connections still open after the shutdown grace period: closing them"
            );
            false
        }
    }
}
