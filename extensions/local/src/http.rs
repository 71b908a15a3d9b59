//! A small blocking HTTP client over `wasi:http/outgoing-handler` for the agent's API:
//! bearer token, a JSON or raw body, the whole answer with its headers, and per-call
//! timeouts (an exec answers only when its command ends).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

/// What went wrong below HTTP.
#[derive(Debug)]
pub enum Failure {
    /// The host or the network refused or broke the exchange.
    Transport(ErrorCode),
    /// Something in the exchange itself misbehaved.
    Protocol(String),
}

/// A whole answer.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `x-file-size`, when the agent sent it.
    pub file_size: Option<u64>,
}

/// One request to `base` (`http(s)://host:port[/prefix]`) + `path` (with its query).
pub struct Call<'a> {
    pub base: &'a str,
    pub method: Method,
    pub path: &'a str,
    pub token: Option<&'a str>,
    /// `(content type, bytes)`.
    pub body: Option<(&'a str, &'a [u8])>,
    /// How long the answer may take to start (connects get 5 s).
    pub timeout_ms: u64,
}

fn split(base: &str) -> Result<(Scheme, &str, &str), Failure> {
    let (scheme, rest) = if let Some(r) = base.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(Failure::Protocol(format!("{base:?} is not an http(s) URL")));
    };
    Ok(match rest.find('/') {
        Some(i) => (scheme, &rest[..i], rest[i..].trim_end_matches('/')),
        None => (scheme, rest, ""),
    })
}

/// Sends the call and reads the whole answer.
pub fn send(call: &Call<'_>) -> Result<Response, Failure> {
    let (scheme, authority, prefix) = split(call.base)?;
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("accept".into(), b"application/json".to_vec()),
        ("user-agent".into(), b"sandboxer-local/0.1".to_vec()),
    ];
    if let Some(t) = call.token {
        headers.push(("authorization".into(), format!("Bearer {t}").into_bytes()));
    }
    if let Some((ct, b)) = call.body {
        headers.push(("content-type".into(), ct.as_bytes().to_vec()));
        headers.push(("content-length".into(), b.len().to_string().into_bytes()));
    }
    let fields =
        Fields::from_list(&headers).map_err(|e| Failure::Protocol(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let full_path = format!("{prefix}{}", call.path);
    request
        .set_method(&call.method)
        .map_err(|()| Failure::Protocol("method refused".into()))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| Failure::Protocol("scheme refused".into()))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| Failure::Protocol("authority refused".into()))?;
    request
        .set_path_with_query(Some(&full_path))
        .map_err(|()| Failure::Protocol("path refused".into()))?;
    // Only a request with a payload gets a body (an empty taken body goes out chunked).
    let body = match call.body {
        Some((_, bytes)) => Some((
            request
                .body()
                .map_err(|()| Failure::Protocol("request body taken twice".into()))?,
            bytes,
        )),
        None => None,
    };
    let options = RequestOptions::new();
    // A host that does not support a timeout keeps its own; the call budget still bounds it.
    let _ = options.set_connect_timeout(Some(5_000_000_000));
    let _ = options.set_first_byte_timeout(Some(call.timeout_ms.saturating_mul(1_000_000)));
    let future = outgoing_handler::handle(request, Some(options)).map_err(Failure::Transport)?;
    let sent = match body {
        Some((body, bytes)) => write_body(body, bytes),
        None => Ok(()),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(Failure::Transport(code)),
        Some(Err(())) => return Err(Failure::Protocol("response taken twice".into())),
        None => return Err(Failure::Protocol("response not ready after waiting".into())),
    };
    sent?;
    let status = response.status();
    let file_size = response
        .headers()
        .get("x-file-size")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok());
    let incoming = response
        .consume()
        .map_err(|()| Failure::Protocol("response body taken twice".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Failure::Protocol("response stream taken twice".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(256 * 1024) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_failure("reading the answer", e)),
        }
    }
    drop(stream);
    drop(incoming);
    Ok(Response {
        status,
        body: out,
        file_size,
    })
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    let stream = body
        .write()
        .map_err(|()| Failure::Protocol("request body stream taken twice".into()))?;
    // `blocking-write-and-flush` takes at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| stream_failure("writing the request", e))?;
    }
    drop(stream);
    OutgoingBody::finish(body, None).map_err(Failure::Transport)
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
