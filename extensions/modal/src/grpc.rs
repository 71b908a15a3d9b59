//! gRPC over `wasi:http`, framed by hand: a `POST` with `content-type: application/grpc`
//! and `te: trailers`, the request as one length-prefixed protobuf message, the answer as
//! length-prefixed messages and the status in the trailers (or in the head of a
//! trailers-only answer). The host speaks HTTP/2 underneath (ALPN `h2` over TLS,
//! prior-knowledge h2c for a loopback server).

use guest_kit::envelope::{Decoder, frame};
use guest_kit::http::{self, BaseUrl, ErrorCode, Failure, Method, Request, Streaming};
use prost::Message;

use crate::status::{self, Status};
use crate::wit::BackendError;

/// The largest message accepted from Modal.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// Modal answered a gRPC status other than OK.
    Status(Status),
    /// The host or the network refused or broke the exchange.
    Transport(Failure),
    /// An HTTP answer without a gRPC status.
    Http(u16),
    /// An answer that is not what the protocol promises.
    Garbled(String),
}

impl CallError {
    /// The gRPC code, when Modal answered one.
    pub fn code(&self) -> Option<u32> {
        match self {
            CallError::Status(s) => Some(s.code),
            _ => None,
        }
    }

    /// The same failure with each of `secrets` replaced in Modal's message (a server may
    /// quote what it was sent; the router's JWT is unknown to the host, which cannot
    /// redact it).
    pub fn redacted(self, secrets: &[&str]) -> CallError {
        match self {
            CallError::Status(mut st) => {
                for s in secrets.iter().filter(|s| !s.is_empty()) {
                    st.message = st.message.replace(s, "[redacted]");
                }
                CallError::Status(st)
            }
            other => other,
        }
    }

    /// The contract's error for this failure of `what` at `origin`.
    pub fn into_backend(self, what: &str, origin: &str) -> BackendError {
        match self {
            CallError::Status(st) => status::to_backend(what, &st),
            CallError::Http(code) => status::http_to_backend(what, code),
            CallError::Garbled(msg) => BackendError::Internal(format!("Modal {what}: {msg}")),
            CallError::Transport(Failure::Transport(ErrorCode::HttpRequestDenied)) => {
                BackendError::Unavailable(format!(
                    "Modal {what}: the host denied the request to {origin} (grant it in allowed_outbound_hosts)"
                ))
            }
            CallError::Transport(Failure::Transport(
                code @ (ErrorCode::ConnectionTimeout
                | ErrorCode::ConnectionReadTimeout
                | ErrorCode::ConnectionWriteTimeout
                | ErrorCode::DnsTimeout),
            )) => {
                BackendError::Unavailable(format!("Modal {what} at {origin} timed out ({code:?})"))
            }
            CallError::Transport(Failure::Transport(code)) => {
                BackendError::Unavailable(format!("Modal {what} at {origin} failed: {code:?}"))
            }
            CallError::Transport(Failure::Protocol(msg)) => {
                BackendError::Unavailable(format!("Modal {what} at {origin}: {msg}"))
            }
        }
    }
}

/// Where a call goes and the metadata it carries.
pub struct Target<'a> {
    pub base: &'a BaseUrl,
    /// Metadata besides the gRPC headers (credentials, client type).
    pub metadata: &'a [(&'a str, &'a [u8])],
}

fn headers<'a>(target: &'a Target<'a>, idempotency: &'a [u8]) -> Vec<(&'a str, &'a [u8])> {
    let mut h: Vec<(&str, &[u8])> = vec![
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
        ("user-agent", b"sandboxer-modal/0.1"),
        // As Modal's SDKs send on every call (the first attempt of this call).
        ("x-idempotency-key", idempotency),
        ("x-retry-attempt", b"0"),
    ];
    h.extend_from_slice(target.metadata);
    h
}

/// Checks the head of an answer: HTTP 200 with a gRPC content type, and no error status
/// in a trailers-only answer. `Ok(true)` when the head already carried `grpc-status: 0`
/// (a trailers-only OK: no messages follow).
fn check_head(status: u16, fields: &[(String, Vec<u8>)]) -> Result<bool, CallError> {
    match status::from_fields(fields) {
        Some(Ok(Some(st))) => return Err(CallError::Status(st)),
        Some(Err(msg)) => return Err(CallError::Garbled(msg)),
        Some(Ok(None)) if status == 200 => return Ok(true),
        _ => {}
    }
    if status != 200 {
        return Err(CallError::Http(status));
    }
    let grpc =
        http::field(fields, "content-type").is_some_and(|c| c.starts_with("application/grpc"));
    if !grpc {
        return Err(CallError::Garbled(
            "the answer is not gRPC (content-type is not application/grpc)".into(),
        ));
    }
    Ok(false)
}

/// Checks the trailers at the end of an answer.
fn check_trailers(trailers: &[(String, Vec<u8>)]) -> Result<(), CallError> {
    match status::from_fields(trailers) {
        Some(Ok(None)) => Ok(()),
        Some(Ok(Some(st))) => Err(CallError::Status(st)),
        Some(Err(msg)) => Err(CallError::Garbled(msg)),
        None => Err(CallError::Garbled(
            "the answer ended without a grpc-status (are trailers passed through?)".into(),
        )),
    }
}

fn decode<T: Message + Default>(payload: &[u8]) -> Result<T, CallError> {
    T::decode(payload).map_err(|e| CallError::Garbled(format!("unreadable message: {e}")))
}

/// Builds the `POST` of one call (the request framed, the gRPC headers) and hands it to `f`.
fn exchange<Req: Message, T>(
    target: &Target<'_>,
    path: &str,
    request: &Req,
    f: impl FnOnce(&Request<'_>) -> T,
) -> T {
    let idempotency = guest_kit::clock::random_id("").into_bytes();
    let body = frame(0, &request.encode_to_vec());
    let h = headers(target, &idempotency);
    f(&Request {
        method: Method::Post,
        base: target.base,
        path,
        headers: &h,
        body: Some(&body),
    })
}

/// One unary call.
pub fn unary<Req: Message, Resp: Message + Default>(
    target: &Target<'_>,
    path: &str,
    request: &Req,
) -> Result<Resp, CallError> {
    let answer = exchange(target, path, request, |req| {
        http::send(req, MAX_MESSAGE + 5)
    })
    .map_err(CallError::Transport)?;
    if check_head(answer.status, &answer.headers)? {
        return Ok(Resp::default());
    }
    check_trailers(&answer.trailers)?;
    let mut d = Decoder::new(MAX_MESSAGE);
    d.push(&answer.body);
    let message = d
        .next_frame()
        .map_err(|e| CallError::Garbled(e.to_string()))?
        .ok_or_else(|| CallError::Garbled("the answer has no message".into()))?;
    decode(&message.payload)
}

/// A server-streaming call whose messages are read as they arrive.
pub struct ServerStream {
    http: Streaming,
    decoder: Decoder,
    /// Set when the head was a trailers-only OK.
    empty: bool,
}

/// Opens a server-streaming call.
pub fn server_stream<Req: Message>(
    target: &Target<'_>,
    path: &str,
    request: &Req,
) -> Result<ServerStream, CallError> {
    let s = exchange(target, path, request, http::open).map_err(CallError::Transport)?;
    let empty = check_head(s.status, &s.headers)?;
    Ok(ServerStream {
        http: s,
        decoder: Decoder::new(MAX_MESSAGE),
        empty,
    })
}

impl ServerStream {
    /// Whether the stream has ended with OK.
    pub fn ended(&self) -> bool {
        self.empty || self.http.ended()
    }

    /// The HTTP exchange (for [`http::wait_any`]).
    pub fn http(&self) -> &Streaming {
        &self.http
    }

    /// The messages that have arrived, without waiting, until about `budget` bytes of
    /// messages are in (the rest stays unread, so a large backlog is not pulled through
    /// the host at once); `Ok(true)` once the stream has ended with OK.
    pub fn take_ready<Resp: Message + Default>(
        &mut self,
        out: &mut Vec<Resp>,
        budget: usize,
    ) -> Result<bool, CallError> {
        if self.empty {
            return Ok(true);
        }
        let mut taken = 0usize;
        loop {
            while let Some(f) = self
                .decoder
                .next_frame()
                .map_err(|e| CallError::Garbled(e.to_string()))?
            {
                taken += f.payload.len();
                out.push(decode(&f.payload)?);
            }
            if taken >= budget {
                return Ok(false);
            }
            match self
                .http
                .read_now(64 * 1024)
                .map_err(CallError::Transport)?
            {
                Some(bytes) if bytes.is_empty() => break,
                Some(bytes) => self.decoder.push(&bytes),
                None => break,
            }
        }
        if self.http.ended() {
            check_trailers(&self.http.trailers)?;
            if self.decoder.pending() > 0 {
                return Err(CallError::Garbled(
                    "the stream ended inside a message".into(),
                ));
            }
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::fields;

    #[test]
    fn heads_and_trailers_decide_the_outcome() {
        let grpc = fields(&[("content-type", "application/grpc")]);
        assert!(matches!(check_head(200, &grpc), Ok(false)));
        let trailers_only_ok =
            fields(&[("content-type", "application/grpc"), ("grpc-status", "0")]);
        assert!(matches!(check_head(200, &trailers_only_ok), Ok(true)));
        let refused = fields(&[("grpc-status", "16"), ("grpc-message", "bad token")]);
        match check_head(200, &refused) {
            Err(CallError::Status(st)) => {
                assert_eq!((st.code, st.message.as_str()), (16, "bad token"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_head(503, &fields(&[])),
            Err(CallError::Http(503))
        ));
        assert!(matches!(
            check_head(200, &fields(&[("content-type", "text/html")])),
            Err(CallError::Garbled(_))
        ));
        assert!(check_trailers(&fields(&[("grpc-status", "0")])).is_ok());
        assert!(matches!(
            check_trailers(&fields(&[])),
            Err(CallError::Garbled(_))
        ));
        assert!(matches!(
            check_trailers(&fields(&[("grpc-status", "14")])),
            Err(CallError::Status(Status { code: 14, .. }))
        ));
    }

    #[test]
    fn errors_name_the_call_and_the_host_never_a_secret() {
        let base = BaseUrl::parse("https://api.modal.com", "server_url").unwrap();
        let denied = CallError::Transport(Failure::Transport(ErrorCode::HttpRequestDenied))
            .into_backend("SandboxCreate", &base.origin());
        match denied {
            BackendError::Unavailable(m) => {
                assert!(
                    m.contains("SandboxCreate") && m.contains("https://api.modal.com"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        let e = CallError::Status(Status {
            code: 8,
            message: "slow down".into(),
        })
        .into_backend("SandboxCreate", "x");
        assert!(matches!(e, BackendError::CapacityExhausted(_)));
    }
}
