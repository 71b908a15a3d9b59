//! A sandbox's envd, the daemon E2B runs in every sandbox, reached as E2B's SDK reaches it:
//! at `https://49983-{sandboxID}.{domain}` (the `envd_url` template), with the headers the
//! SDK sends (`E2b-Sandbox-Id`, `E2b-Sandbox-Port`, the `X-Access-Token` of a secured
//! sandbox, `Authorization: Basic <user>:` for envd before 0.4.0 or a configured user):
//! Connect RPCs (`process.Process`, `filesystem.Filesystem`) and the `/files` API.

use std::collections::BTreeMap;

use base64::Engine as _;
use guest_kit::envelope::{Decoder, FLAG_END_STREAM, frame};
use guest_kit::http::{self, BaseUrl, Method, Request, Response, Streaming};
use serde_json::Value;

use crate::api::transport_error;
use crate::config::Config;
use crate::connect::{self, ConnectError, Event};
use crate::exports::sandboxer::extension::backend::BackendError;
use crate::handle::{Access, Handle, checked_id, valid_domain};

/// The largest answer or message accepted from envd.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The `envd_url` with `{port}`, `{sandbox_id}` and `{domain}` filled in.
pub fn envd_url(template: &str, port: u16, sandbox_id: &str, domain: &str) -> String {
    template
        .replace("{port}", &port.to_string())
        .replace("{sandbox_id}", sandbox_id)
        .replace("{domain}", domain)
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
pub fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A one-file `multipart/form-data` body as envd's `POST /files` takes it.
pub fn multipart(boundary: &str, filename: &str, data: &[u8]) -> Vec<u8> {
    let safe: String = filename
        .chars()
        .map(|c| {
            if c == '"' || c == '\r' || c == '\n' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let mut body = Vec::with_capacity(data.len() + 256);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{safe}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// `bytes a-b/size` or `bytes */size` of a `Content-Range`: the whole size.
pub fn content_range_size(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}

/// What a ranged download found.
pub struct Download {
    /// The bytes of the range asked for (fewer at the end of the file).
    pub data: Vec<u8>,
    /// The file's whole size.
    pub size: u64,
}

/// Why a unary call failed.
pub enum CallError {
    /// envd answered a Connect error.
    Connect(ConnectError),
    /// Anything else (already the contract's error).
    Other(BackendError),
}

/// What the instance learned of each sandbox's envd (a sandbox's access never changes),
/// keyed by API, key and sandbox: one `GET /sandboxes/{id}` per sandbox and instance.
static ACCESS: std::sync::Mutex<BTreeMap<String, Access>> = std::sync::Mutex::new(BTreeMap::new());

fn access_key(cfg: &Config, id: &str) -> String {
    format!(
        "{}|{}|{id}",
        cfg.base_url_str(),
        cfg.api_key().unwrap_or("")
    )
}

/// Remembers what `POST /sandboxes` answered about a new sandbox's envd.
pub fn remember(cfg: &Config, id: &str, access: Access) {
    let mut map = ACCESS.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= 256 {
        map.clear();
    }
    map.insert(access_key(cfg, id), access);
}

/// Forgets what was remembered of sandbox `key` (envd refused its token).
fn forget(key: &str) {
    ACCESS.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
}

/// How to reach the envd of sandbox `id`: remembered, or read from E2B.
pub fn access(cfg: &Config, id: &str) -> Result<Access, BackendError> {
    let key = access_key(cfg, id);
    if let Some(a) = ACCESS.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(a.clone());
    }
    let r = crate::api::call(
        cfg,
        http::Method::Get,
        "GET /sandboxes/{id}",
        &format!("/sandboxes/{id}"),
        None,
        &[200],
    )
    .map_err(|e| match e {
        BackendError::NotFound(_) => {
            BackendError::NotFound("the sandbox is gone at E2B (killed or expired)".into())
        }
        other => other,
    })?;
    let a: Access = serde_json::from_slice(&r.body).map_err(|e| {
        BackendError::Internal(format!("E2B GET /sandboxes/{{id}}: unexpected answer: {e}"))
    })?;
    remember(cfg, id, a.clone());
    Ok(a)
}

/// A Connect error with `secret` replaced in its message (envd may quote the token it was
/// sent; the host does not know this token, so it cannot redact it).
fn scrub(secret: Option<&str>, mut e: ConnectError) -> ConnectError {
    if let Some(s) = secret.filter(|s| !s.is_empty()) {
        e.message = e.message.replace(s, "[redacted]");
    }
    e
}

/// One sandbox's envd.
pub struct Envd {
    base: BaseUrl,
    access_key: String,
    sandbox_id: String,
    port: String,
    token: Option<String>,
    user: Option<String>,
    authorization: Option<String>,
    keepalive: String,
}

impl Envd {
    /// The envd of the sandbox `handle` names.
    pub fn new(cfg: &Config, handle: &Handle) -> Result<Envd, BackendError> {
        let id = checked_id(&handle.id)?;
        let access = access(cfg, id)?;
        let domain = access
            .domain
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| cfg.domain());
        if !valid_domain(domain) {
            return Err(BackendError::Internal(format!(
                "config domain: {domain:?} is not a domain name"
            )));
        }
        let port = cfg.envd_port().map_err(BackendError::Internal)?;
        let url = envd_url(cfg.envd_url(), port, id, domain);
        let base = BaseUrl::parse(&url, "envd_url").map_err(BackendError::Internal)?;
        // envd before 0.4.0 has no default user: E2B's SDK names `user` then.
        let user = cfg
            .envd_user()
            .map(str::to_owned)
            .or_else(|| access.envd_older_than((0, 4, 0)).then(|| "user".to_owned()));
        let authorization = user.as_ref().map(|u| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:"))
            )
        });
        Ok(Envd {
            base,
            access_key: access_key(cfg, id),
            sandbox_id: id.to_owned(),
            port: port.to_string(),
            token: access.token.filter(|t| !t.is_empty()),
            user,
            authorization,
            keepalive: cfg
                .envd_keepalive_secs()
                .map_err(BackendError::Internal)?
                .to_string(),
        })
    }

    fn headers<'a>(&'a self, extra: &[(&'a str, &'a [u8])]) -> Vec<(&'a str, &'a [u8])> {
        let mut h: Vec<(&str, &[u8])> = vec![
            ("user-agent", b"sandboxer-e2b/0.1"),
            ("e2b-sandbox-id", self.sandbox_id.as_bytes()),
            ("e2b-sandbox-port", self.port.as_bytes()),
        ];
        if let Some(t) = &self.token {
            h.push(("x-access-token", t.as_bytes()));
        }
        if let Some(a) = &self.authorization {
            h.push(("authorization", a.as_bytes()));
        }
        h.extend_from_slice(extra);
        h
    }

    /// The `/files` query for `path` (and the user, when one applies).
    fn files_query(&self, path: &str) -> String {
        match &self.user {
            Some(u) => format!(
                "/files?path={}&username={}",
                query_value(path),
                query_value(u)
            ),
            None => format!("/files?path={}", query_value(path)),
        }
    }

    fn send(
        &self,
        what: &str,
        method: Method,
        path: &str,
        extra: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> Result<Response, BackendError> {
        let headers = self.headers(extra);
        let request = Request {
            method,
            base: &self.base,
            path,
            headers: &headers,
            body,
        };
        http::send(&request, MAX_ANSWER)
            .map_err(|f| transport_error(&format!("envd {what}"), "envd_url", f))
    }

    /// The contract's error for envd's Connect error `e` of `what`, the token scrubbed. A
    /// refused token is forgotten: the next call asks E2B for the sandbox's token again.
    fn error(&self, what: &str, e: ConnectError) -> BackendError {
        if e.code == "unauthenticated" {
            forget(&self.access_key);
        }
        connect::to_backend(what, &scrub(self.token.as_deref(), e))
    }

    /// One unary Connect call (`service` like `filesystem.Filesystem/ListDir`).
    pub fn unary(&self, service: &str, message: &Value) -> Result<Value, BackendError> {
        let method = service.rsplit('/').next().unwrap_or(service);
        self.unary_raw(service, message).map_err(|e| match e {
            CallError::Connect(c) => self.error(method, c),
            CallError::Other(b) => b,
        })
    }

    /// One unary Connect call; a Connect error is kept apart from other failures.
    pub fn unary_raw(&self, service: &str, message: &Value) -> Result<Value, CallError> {
        let method = service.rsplit('/').next().unwrap_or(service);
        let body = serde_json::to_vec(message)
            .map_err(|e| CallError::Other(BackendError::Internal(e.to_string())))?;
        let r = self
            .send(
                method,
                Method::Post,
                &format!("/{service}"),
                &[
                    ("content-type", b"application/json"),
                    ("connect-protocol-version", b"1"),
                ],
                Some(&body),
            )
            .map_err(CallError::Other)?;
        if r.status != 200 {
            return Err(CallError::Connect(connect::http_error(r.status, &r.body)));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            CallError::Other(BackendError::Internal(format!(
                "E2B envd {method}: unreadable answer: {e}"
            )))
        })
    }

    /// Opens `process.Process/Start` (server-streaming); `timeout_ms` (when set) is the
    /// command's timeout, which envd applies (`Connect-Timeout-Ms`).
    pub fn start(
        &self,
        message: &Value,
        timeout_ms: Option<u64>,
    ) -> Result<EventStream, BackendError> {
        let body = frame(
            0,
            &serde_json::to_vec(message).map_err(|e| BackendError::Internal(e.to_string()))?,
        );
        let timeout = timeout_ms.map(|t| t.to_string()).unwrap_or_default();
        let mut extra: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/connect+json"),
            ("connect-protocol-version", b"1"),
            ("keepalive-ping-interval", self.keepalive.as_bytes()),
        ];
        if timeout_ms.is_some() {
            extra.push(("connect-timeout-ms", timeout.as_bytes()));
        }
        let headers = self.headers(&extra);
        let request = Request {
            method: Method::Post,
            base: &self.base,
            path: "/process.Process/Start",
            headers: &headers,
            body: Some(&body),
        };
        let mut s =
            http::open(&request).map_err(|f| transport_error("envd Start", "envd_url", f))?;
        if s.status != 200 {
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = s.read_blocking(64 * 1024) {
                body.extend_from_slice(&chunk);
                if body.len() > 64 * 1024 {
                    break;
                }
            }
            return Err(self.error("Start", connect::http_error(s.status, &body)));
        }
        Ok(EventStream {
            http: s,
            decoder: Decoder::new(MAX_ANSWER),
            ended: false,
            token: self.token.clone(),
        })
    }

    /// `GET /files` of `path` (relative to the user's home, or absolute), the bytes
    /// `[offset, offset + len)` (`Range`, which envd serves as `http.ServeContent` does).
    pub fn download(&self, path: &str, offset: u64, len: u64) -> Result<Download, BackendError> {
        let range = format!("bytes={}-{}", offset, offset + len.max(1) - 1);
        let r = self.send(
            "GET /files",
            Method::Get,
            &self.files_query(path),
            &[
                ("range", range.as_bytes()),
                ("accept-encoding", b"identity"),
            ],
            None,
        )?;
        match r.status {
            206 => {
                let size = r
                    .header("content-range")
                    .and_then(content_range_size)
                    .ok_or_else(|| {
                        BackendError::Internal(
                            "envd answered 206 without a usable Content-Range".into(),
                        )
                    })?;
                let mut data = r.body;
                data.truncate(usize::try_from(len).unwrap_or(usize::MAX));
                Ok(Download { data, size })
            }
            // A server that ignores the range sends the whole file.
            200 => {
                let size = r.body.len() as u64;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(r.body.len());
                let end = start
                    .saturating_add(usize::try_from(len).unwrap_or(usize::MAX))
                    .min(r.body.len());
                Ok(Download {
                    data: r.body[start..end].to_vec(),
                    size,
                })
            }
            416 => Ok(Download {
                data: Vec::new(),
                size: r
                    .header("content-range")
                    .and_then(content_range_size)
                    .unwrap_or(0),
            }),
            status => Err(self.error("GET /files", connect::http_error(status, &r.body))),
        }
    }

    /// `POST /files`: writes `data` to `path`, creating its folders, replacing a file there.
    pub fn upload(&self, path: &str, data: &[u8]) -> Result<(), BackendError> {
        let boundary = guest_kit::clock::random_id("sandboxer-");
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let name = path.rsplit('/').next().unwrap_or("file");
        let body = multipart(&boundary, name, data);
        let r = self.send(
            "POST /files",
            Method::Post,
            &self.files_query(path),
            &[("content-type", content_type.as_bytes())],
            Some(&body),
        )?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(connect::to_backend(
                "POST /files",
                &connect::http_error(r.status, &r.body),
            ))
        }
    }

    /// `POST /files/compose`: `sources` concatenated into `destination` (sources deleted).
    /// `Ok(false)` when a source does not exist.
    pub fn compose(&self, sources: &[&str], destination: &str) -> Result<bool, BackendError> {
        let mut body = serde_json::json!({ "source_paths": sources, "destination": destination });
        if let Some(u) = &self.user {
            body["username"] = Value::String(u.clone());
        }
        let body = serde_json::to_vec(&body).map_err(|e| BackendError::Internal(e.to_string()))?;
        let r = self.send(
            "POST /files/compose",
            Method::Post,
            "/files/compose",
            &[("content-type", b"application/json")],
            Some(&body),
        )?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(self.error("POST /files/compose", connect::http_error(status, &r.body))),
        }
    }
}

/// The events of a started process as they stream in.
pub struct EventStream {
    http: Streaming,
    decoder: Decoder,
    ended: bool,
    token: Option<String>,
}

impl EventStream {
    /// The HTTP exchange (for [`http::wait_any`]).
    pub fn http(&self) -> &Streaming {
        &self.http
    }

    /// The events that have arrived, without waiting; `Ok(true)` once the stream has ended.
    pub fn take_ready(&mut self, out: &mut Vec<Event>) -> Result<bool, BackendError> {
        if self.ended {
            return Ok(true);
        }
        let garbled = |m: String| BackendError::Internal(format!("E2B envd Start: {m}"));
        loop {
            match self.http.read_now(64 * 1024) {
                Ok(Some(bytes)) if bytes.is_empty() => break,
                Ok(Some(bytes)) => self.decoder.push(&bytes),
                Ok(None) => break,
                Err(f) => return Err(transport_error("envd Start", "envd_url", f)),
            }
        }
        while let Some(f) = self
            .decoder
            .next_frame()
            .map_err(|e| garbled(e.to_string()))?
        {
            if f.flags & FLAG_END_STREAM != 0 {
                self.ended = true;
                return match connect::end_of_stream(&f.payload) {
                    Ok(()) => Ok(true),
                    Err(e) => Err(connect::to_backend(
                        "Start",
                        &scrub(self.token.as_deref(), e),
                    )),
                };
            }
            out.push(connect::event(&f.payload).map_err(garbled)?);
        }
        if self.http.ended() {
            self.ended = true;
            return Err(garbled(
                "the stream ended without its end-of-stream message".into(),
            ));
        }
        Ok(false)
    }

    /// Waits (up to the monotonic `deadline_ns`) for the next event; `None` at the deadline.
    pub fn next_until(&mut self, deadline_ns: u64) -> Result<Option<Vec<Event>>, BackendError> {
        loop {
            let mut events = Vec::new();
            let ended = self.take_ready(&mut events)?;
            if !events.is_empty() || ended {
                return Ok(Some(events));
            }
            if !http::wait_any(&[&self.http], deadline_ns) {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_scrubbed_from_messages() {
        let quoted = connect::http_error(401, br#"{"message":"invalid access token ea_secret"}"#);
        assert_eq!(
            scrub(Some("ea_secret"), quoted.clone()).message,
            "invalid access token [redacted]"
        );
        assert_eq!(scrub(None, quoted.clone()), quoted);
    }

    #[test]
    fn urls_queries_bodies_and_ranges() {
        assert_eq!(
            envd_url(
                "https://{port}-{sandbox_id}.{domain}",
                49983,
                "abc",
                "e2b.app"
            ),
            "https://49983-abc.e2b.app"
        );
        assert_eq!(
            envd_url("http://127.0.0.1:9000", 49983, "abc", "e2b.app"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(query_value("dir/a b&c=d?.txt"), "dir/a%20b%26c%3Dd%3F.txt");
        let body = multipart("B", "a\"b.txt", b"data");
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(
            "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a_b.txt\"\r\n"
        ));
        assert!(text.ends_with("\r\n\r\ndata\r\n--B--\r\n"));
        assert_eq!(content_range_size("bytes 0-9/120"), Some(120));
        assert_eq!(content_range_size("bytes */0"), Some(0));
        assert_eq!(content_range_size("items 0-9/120"), None);
    }
}
