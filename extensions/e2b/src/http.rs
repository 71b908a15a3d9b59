//! A minimal blocking HTTP/JSON client over `wasi:http/outgoing-handler`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// Where the API lives, split the way `wasi:http` wants it.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    scheme: Scheme,
    authority: String,
    /// Path prefix without a trailing slash (empty for the root).
    prefix: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(format!(
                "base_url {url:?} must start with http:// or https://"
            ));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(format!("base_url {url:?} has no host"));
        }
        Ok(BaseUrl {
            scheme,
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

/// What went wrong below HTTP.
#[derive(Debug)]
pub enum Failure {
    /// The host or the network refused or broke the exchange (denied, timeout, refused…).
    Transport(ErrorCode),
    /// Something in the exchange itself misbehaved.
    Protocol(String),
}

/// A complete response.
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// Sends one request with `X-API-Key` and an optional JSON body; reads the whole answer.
pub fn send(
    base: &BaseUrl,
    method: Method,
    path: &str,
    api_key: &str,
    json_body: Option<&[u8]>,
) -> Result<Response, Failure> {
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        ("x-api-key".into(), api_key.as_bytes().to_vec()),
        ("accept".into(), b"application/json".to_vec()),
        ("user-agent".into(), b"sandboxer-e2b/0.1".to_vec()),
    ];
    if let Some(b) = json_body {
        headers.push(("content-type".into(), b"application/json".to_vec()));
        headers.push(("content-length".into(), b.len().to_string().into_bytes()));
    }
    let fields =
        Fields::from_list(&headers).map_err(|e| Failure::Protocol(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let full_path = format!("{}{}", base.prefix, path);
    request
        .set_method(&method)
        .map_err(|()| Failure::Protocol("method refused".into()))?;
    request
        .set_scheme(Some(&base.scheme))
        .map_err(|()| Failure::Protocol("scheme refused".into()))?;
    request
        .set_authority(Some(&base.authority))
        .map_err(|()| Failure::Protocol("authority refused".into()))?;
    request
        .set_path_with_query(Some(&full_path))
        .map_err(|()| Failure::Protocol("path refused".into()))?;
    // Only a request with a payload gets a body: one taken but left empty would go out
    // chunked, and a server that answers before reading it may reset the connection.
    let body = match json_body {
        Some(bytes) => Some((
            request
                .body()
                .map_err(|()| Failure::Protocol("request body taken twice".into()))?,
            bytes,
        )),
        None => None,
    };

    let future = outgoing_handler::handle(request, None).map_err(Failure::Transport)?;

    // A request the host refuses (or a connection that breaks) closes the body early; the
    // response future then says why, so a write failure is reported only if it does not.
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
    let incoming = response
        .consume()
        .map_err(|()| Failure::Protocol("response body taken twice".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Failure::Protocol("response stream taken twice".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_failure("reading the response body", e)),
        }
    }
    drop(stream);
    drop(incoming);
    Ok(Response { status, body: out })
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), Failure> {
    let stream = body
        .write()
        .map_err(|()| Failure::Protocol("request body stream taken twice".into()))?;
    // `blocking-write-and-flush` takes at most 4096 bytes per call.
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| stream_failure("writing the request body", e))?;
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
