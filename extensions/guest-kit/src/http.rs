//! A blocking HTTP client over `wasi:http/outgoing-handler`: [`send`] reads a whole answer
//! (body and trailers), [`open`] hands back the answer's head and lets the caller read the
//! body as it streams ([`Streaming`]), with deadlines and several streams at once
//! ([`wait_any`]). The host decides the protocol (HTTP/1.1, or HTTP/2 for gRPC), which hosts
//! are reachable, and bounds every exchange; a denied host shows up as
//! [`ErrorCode::HttpRequestDenied`].

use wasip2::clocks::monotonic_clock;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, FutureIncomingResponse, IncomingBody, IncomingResponse, OutgoingBody, OutgoingRequest,
    Scheme,
};
use wasip2::io::poll::{Pollable, poll};
use wasip2::io::streams::{InputStream, StreamError};

pub use wasip2::http::types::{ErrorCode, Method};

/// Where an API lives, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    https: bool,
    authority: String,
    /// Path prefix without a trailing slash (empty for the root).
    prefix: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/prefix]`; `what` names the setting in errors.
    pub fn parse(url: &str, what: &str) -> Result<BaseUrl, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "{what} {url:?} must start with http:// or https://"
            ));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'@' || b == b'?' || b == b'#')
        {
            return Err(format!("{what} {url:?} has no usable host"));
        }
        Ok(BaseUrl {
            https,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// `scheme://host[:port]` (for messages: no path, never a query).
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

/// What went wrong below the application protocol.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The host or the network refused or broke the exchange (denied, timeout, refused…).
    Transport(ErrorCode),
    /// Something in the exchange itself misbehaved.
    Protocol(String),
}

/// One request.
pub struct Request<'a> {
    pub method: Method,
    pub base: &'a BaseUrl,
    /// Path and query, after the base URL's prefix.
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a [u8])],
    /// A body, if any (a request without one sends none).
    pub body: Option<&'a [u8]>,
}

/// A header or trailer list.
pub type FieldList = Vec<(String, Vec<u8>)>;

/// The value of `name` (case-insensitive) in `fields`, as text.
pub fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: FieldList,
    pub body: Vec<u8>,
    pub trailers: FieldList,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }
}

fn protocol(msg: impl Into<String>) -> Failure {
    Failure::Protocol(msg.into())
}

fn stream_failure(what: &str, e: StreamError) -> Failure {
    match e {
        StreamError::LastOperationFailed(err) => match wasip2::http::types::http_error_code(&err) {
            Some(code) => Failure::Transport(code),
            None => Failure::Protocol(format!("{what} failed: {}", err.to_debug_string())),
        },
        StreamError::Closed => Failure::Protocol(format!("{what}: stream closed early")),
    }
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    let stream = body
        .write()
        .map_err(|()| protocol("request body stream taken twice"))?;
    // `blocking-write-and-flush` takes at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| stream_failure("writing the request body", e))?;
    }
    drop(stream);
    OutgoingBody::finish(body, None).map_err(Failure::Transport)
}

/// Sends the request and waits for the answer's head.
fn head(req: &Request<'_>) -> Result<IncomingResponse, Failure> {
    let mut list: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect();
    if let Some(b) = req.body {
        list.push(("content-length".into(), b.len().to_string().into_bytes()));
    }
    let fields =
        Fields::from_list(&list).map_err(|e| protocol(format!("bad request header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let path = format!("{}{}", req.base.prefix, req.path);
    let scheme = if req.base.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request
        .set_method(&req.method)
        .map_err(|()| protocol("method refused"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| protocol("scheme refused"))?;
    request
        .set_authority(Some(&req.base.authority))
        .map_err(|()| protocol("authority refused"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| protocol("path refused"))?;
    // Only a request with a payload gets a body: one taken but left empty would go out
    // chunked over HTTP/1.1, and a server that answers first may reset the connection.
    let body = match req.body {
        Some(bytes) => Some((
            request
                .body()
                .map_err(|()| protocol("request body taken twice"))?,
            bytes,
        )),
        None => None,
    };
    let future: FutureIncomingResponse =
        outgoing_handler::handle(request, None).map_err(Failure::Transport)?;
    // A refused request (or a broken connection) closes the body early; the response
    // future then says why, so a write failure counts only when it does not.
    let sent = match body {
        Some((body, bytes)) => write_body(body, bytes),
        None => Ok(()),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(Failure::Transport(code)),
        Some(Err(())) => return Err(protocol("response taken twice")),
        None => return Err(protocol("response not ready after waiting")),
    };
    sent?;
    Ok(response)
}

/// Sends `req` and reads the whole answer, refusing a body over `max_body` bytes.
pub fn send(req: &Request<'_>, max_body: usize) -> Result<Response, Failure> {
    let mut s = open(req)?;
    let mut body = Vec::new();
    while let Some(chunk) = s.read_blocking(64 * 1024)? {
        body.extend_from_slice(&chunk);
        if body.len() > max_body {
            return Err(protocol(format!("the answer is over {max_body} bytes")));
        }
    }
    Ok(Response {
        status: s.status,
        headers: std::mem::take(&mut s.headers),
        body,
        trailers: std::mem::take(&mut s.trailers),
    })
}

/// Sends `req` and returns once the answer's head has arrived; the body is read from the
/// returned [`Streaming`].
pub fn open(req: &Request<'_>) -> Result<Streaming, Failure> {
    let response = head(req)?;
    let status = response.status();
    let headers = response.headers().entries();
    let body = response
        .consume()
        .map_err(|()| protocol("response body taken twice"))?;
    let stream = body
        .stream()
        .map_err(|()| protocol("response stream taken twice"))?;
    Ok(Streaming {
        status,
        headers,
        trailers: Vec::new(),
        stream: Some(stream),
        body: Some(body),
        _response: response,
    })
}

/// An answer whose body is read as it arrives. Dropping it before the end abandons the
/// exchange (the host resets the stream or the connection).
pub struct Streaming {
    /// HTTP status.
    pub status: u16,
    /// The head's fields.
    pub headers: FieldList,
    /// The trailers, once the body has ended.
    pub trailers: FieldList,
    // Drop order: the stream before its body, the body before its response.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _response: IncomingResponse,
}

impl Streaming {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// Whether the body has ended (the trailers are then in [`Streaming::trailers`]).
    pub fn ended(&self) -> bool {
        self.stream.is_none()
    }

    /// A pollable that is ready when bytes (or the end) can be read; `None` once ended.
    pub fn subscribe(&self) -> Option<Pollable> {
        self.stream.as_ref().map(|s| s.subscribe())
    }

    /// Up to `max` bytes available now, without waiting: `Some(bytes)` (possibly empty), or
    /// `None` once the body has ended.
    pub fn read_now(&mut self, max: u64) -> Result<Option<Vec<u8>>, Failure> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(None);
        };
        match stream.read(max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => {
                self.finish()?;
                Ok(None)
            }
            Err(e) => Err(stream_failure("reading the response body", e)),
        }
    }

    /// The next bytes, waiting for them; `None` once the body has ended.
    pub fn read_blocking(&mut self, max: u64) -> Result<Option<Vec<u8>>, Failure> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(None);
        };
        match stream.blocking_read(max) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StreamError::Closed) => {
                self.finish()?;
                Ok(None)
            }
            Err(e) => Err(stream_failure("reading the response body", e)),
        }
    }

    /// Ends the body and collects the trailers.
    fn finish(&mut self) -> Result<(), Failure> {
        drop(self.stream.take());
        let Some(body) = self.body.take() else {
            return Ok(());
        };
        let future = IncomingBody::finish(body);
        future.subscribe().block();
        match future.get() {
            Some(Ok(Ok(Some(trailers)))) => {
                self.trailers = trailers.entries();
                Ok(())
            }
            Some(Ok(Ok(None))) => Ok(()),
            Some(Ok(Err(code))) => Err(Failure::Transport(code)),
            Some(Err(())) => Err(protocol("trailers taken twice")),
            None => Err(protocol("trailers not ready after waiting")),
        }
    }
}

/// Blocks until one of `streams` can be read or the monotonic clock reaches `deadline_ns`.
/// Returns whether a stream is ready (`false`: the deadline passed).
pub fn wait_any(streams: &[&Streaming], deadline_ns: u64) -> bool {
    let mut pollables: Vec<Pollable> = streams.iter().filter_map(|s| s.subscribe()).collect();
    if pollables.is_empty() {
        return true;
    }
    let timer = monotonic_clock::subscribe_instant(deadline_ns);
    let timer_index = pollables.len() as u32;
    pollables.push(timer);
    let refs: Vec<&Pollable> = pollables.iter().collect();
    let ready = poll(&refs);
    ready.iter().any(|&i| i != timer_index)
}
