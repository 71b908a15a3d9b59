//! HTTP/2 for granted extensions' gRPC calls, beside wasmtime-wasi-http's default sender
//! (HTTP/1.1 only, one connection per request).
//!
//! A request is sent over HTTP/2 when it is a gRPC call: its `content-type` is
//! `application/grpc` or `application/grpc+…` (gRPC requires HTTP/2, and every gRPC client
//! sets that header, so no sidecar setting is needed). Over `https://` the host offers ALPN
//! `h2, http/1.1` and fails the call clearly if the server does not pick `h2`; over a plain
//! `http://` server it speaks prior-knowledge h2c (what a loopback gRPC server such as the
//! fake Modal expects). Every other request keeps the default HTTP/1.1 sender.
//!
//! Connections are pooled per scheme and authority and multiplexed: one connection carries
//! every concurrent call of all the extension's instances, and a closed one is replaced on
//! the next call. Response trailers (where gRPC puts `grpc-status`) pass through as body
//! frames. The grant checks, timeout and body cap stay in [`super::grants::OutboundHooks`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Whether `request` should go over HTTP/2 (it is a gRPC call).
pub fn wants_h2<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

/// Pooled HTTP/2 connections of one extension, keyed by `scheme://host:port`.
#[derive(Clone)]
pub struct H2Pool {
    connections: Arc<tokio::sync::Mutex<HashMap<String, SendRequest<WasiBody>>>>,
    tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for H2Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Pool").finish_non_exhaustive()
    }
}

impl Default for H2Pool {
    fn default() -> Self {
        Self::with_roots(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        })
    }
}

impl H2Pool {
    /// A pool trusting `roots` for TLS (the public web roots by [`Default`]).
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| {
            // ring supports the default versions; this arm only satisfies the types.
            rustls::ClientConfig::builder()
        })
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self {
            connections: Arc::default(),
            tls: Arc::new(tls),
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    async fn open_connections(&self) -> usize {
        let mut map = self.connections.lock().await;
        map.retain(|_, c| !c.is_closed());
        map.len()
    }

    /// Sends `request` over a pooled HTTP/2 connection to its authority, connecting (within
    /// `connect_timeout`) when there is none. The response body streams data and trailers.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        connect_timeout: Duration,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::HttpRequestUriInvalid),
        };
        let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let key = format!("{}://{host}:{port}", if tls { "https" } else { "http" });
        let mut sender = self
            .connection(&key, host, port, tls, connect_timeout)
            .await?;
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_closed() || e.is_canceled() {
                HttpError::ConnectionTerminated
            } else {
                HttpError::from(e)
            }
        })?;
        Ok(response.map(|body| body.map_err(HttpError::from).boxed_unsync()))
    }

    async fn connection(
        &self,
        key: &str,
        host: &str,
        port: u16,
        tls: bool,
        connect_timeout: Duration,
    ) -> Result<SendRequest<WasiBody>, HttpError> {
        // Held across a connect so concurrent first calls share one connection.
        let mut map = self.connections.lock().await;
        if let Some(existing) = map.get(key)
            && !existing.is_closed()
        {
            return Ok(existing.clone());
        }
        let connecting = self.connect(host, port, tls);
        let sender = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
        map.insert(key.to_owned(), sender.clone());
        Ok(sender)
    }

    async fn connect(
        &self,
        host: &str,
        port: u16,
        tls: bool,
    ) -> Result<SendRequest<WasiBody>, HttpError> {
        // `[::1]` in a URI is `::1` to the resolver and to rustls.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        // Checked once per connection: its calls then reuse the checked address.
        let addr = super::outbound::checked_addr(host, port)
            .await
            .map_err(|e| {
                tracing::warn!(host = %bare, port, error = %e, "outbound connection refused");
                HttpError::HttpRequestDenied
            })?;
        let tcp = TcpStream::connect(addr).await.map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        // gRPC pings keep long streams (exec output) alive through idle middleboxes.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        if tls {
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(HttpError::Tls)?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(HttpError::InternalError(Some(format!(
                    "{host}:{port} did not negotiate HTTP/2 (ALPN h2), which gRPC needs"
                ))));
            }
            let (sender, conn) = builder.handshake(TokioIo::new(stream)).await?;
            tokio::spawn(drive(conn, host.to_owned()));
            Ok(sender)
        } else {
            let (sender, conn) = builder.handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(drive(conn, host.to_owned()));
            Ok(sender)
        }
    }
}

/// Runs a connection's I/O until it closes; the pool notices through `is_closed`.
async fn drive(conn: impl Future<Output = Result<(), hyper::Error>>, host: String) {
    if let Err(e) = conn.await {
        tracing::debug!(host = %host, error = %e, "outbound HTTP/2 connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An h2c server on loopback answering gRPC-shaped responses with trailers; counts
    /// the connections it accepted.
    async fn h2c_server() -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("x-path", path.parse().unwrap());
                            let body = Frames(
                                [
                                    http_body::Frame::data(body),
                                    http_body::Frame::trailers(trailers),
                                ]
                                .into(),
                            );
                            Ok::<_, hyper::Error>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .unwrap(),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        (port, accepted)
    }

    /// A response body of fixed frames (data, then trailers).
    struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn grpc(port: u16, path: &str, body: &'static [u8]) -> http::Request<WasiBody> {
        http::Request::builder()
            .method("POST")
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(
                Full::new(Bytes::from_static(body))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    #[test]
    fn grpc_content_types_pick_http2() {
        let with = |ct: &str| {
            let req = http::Request::builder()
                .header("content-type", ct)
                .body(Empty::<Bytes>::new())
                .unwrap();
            wants_h2(&req)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC; charset=utf-8"));
        assert!(!with("application/json"));
        assert!(!with("application/grpc-web"));
        let plain = http::Request::new(Empty::<Bytes>::new());
        assert!(!wants_h2(&plain));
    }

    #[tokio::test]
    async fn h2c_calls_share_one_connection_and_keep_trailers() {
        let (port, accepted) = h2c_server().await;
        let pool = H2Pool::default();
        let calls = (0..8).map(|i| {
            let pool = pool.clone();
            async move {
                let path = format!("/svc/Call{i}");
                let response = pool
                    .send(grpc(port, &path, b"hello"), Duration::from_secs(5))
                    .await
                    .unwrap();
                assert_eq!(response.version(), http::Version::HTTP_2);
                let collected = response.into_body().collect().await.unwrap();
                let trailers = collected.trailers().cloned().unwrap();
                assert_eq!(trailers["grpc-status"], "0");
                assert_eq!(trailers["x-path"], path.as_str());
                assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
            }
        });
        let mut set = tokio::task::JoinSet::new();
        for call in calls {
            set.spawn(call);
        }
        while let Some(done) = set.join_next().await {
            done.unwrap();
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one multiplexed connection"
        );
        assert_eq!(pool.open_connections().await, 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_and_not_pooled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pool = H2Pool::default();
        let err = pool
            .send(grpc(port, "/x", b""), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Connect(_)), "{err:?}");
        assert_eq!(pool.open_connections().await, 0);
    }

    #[tokio::test]
    async fn tls_without_h2_or_trust_fails_clearly() {
        // A plain TCP listener that closes at once: the TLS handshake fails, nothing pooled.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                drop(tcp);
            }
        });
        let pool = H2Pool::default();
        let mut request = grpc(port, "/x", b"");
        *request.uri_mut() = format!("https://127.0.0.1:{port}/x").parse().unwrap();
        let err = pool
            .send(request, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Tls(_)), "{err:?}");
        assert_eq!(pool.open_connections().await, 0);
    }
}
