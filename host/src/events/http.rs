//! An HTTP event hub sink: POSTs batches of CloudEvents in the JSON batch format
//! (`application/cloudevents-batch+json`, an array of events).
//!
//! Delivery is at-least-once: a batch is retried with exponential back-off inside one
//! `deliver` call (a bounded number of attempts), and handed again in a later round if
//! every attempt failed. Receivers deduplicate by event `id`. The service feeds it from
//! the JSONL log through a [`super::LogRelay`] in the background, never on a
//! settlement's path, so a dead endpoint delays events but never blocks or loses one.

use std::time::Duration;

use super::{EventError, EventRecord, EventSink};

/// The media type of a CloudEvents JSON batch.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Settings of one HTTP sink.
#[derive(Clone)]
pub struct HttpSinkOptions {
    /// Where to POST.
    pub url: String,
    /// Events per request.
    pub batch_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts per batch within one `deliver` call (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub first_backoff: Duration,
    /// Bearer token sent to the receiver, if any (never logged).
    pub bearer: Option<String>,
}

impl std::fmt::Debug for HttpSinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSinkOptions")
            .field("url", &self.url)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HttpSinkOptions {
    /// Defaults: batches of 100, 2 s timeout, 3 attempts starting at 100 ms.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            batch_size: 100,
            timeout: Duration::from_secs(2),
            attempts: 3,
            first_backoff: Duration::from_millis(100),
            bearer: None,
        }
    }
}

/// POSTs events to an HTTP endpoint. Uses a blocking client: call it off the async
/// runtime (the delivery loop runs on the blocking pool).
pub struct HttpSink {
    opts: HttpSinkOptions,
    client: reqwest::blocking::Client,
}

impl HttpSink {
    /// A sink for `opts.url`.
    pub fn new(opts: HttpSinkOptions) -> Result<Self, EventError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout)
            .build()
            .map_err(|e| EventError::Sink {
                sink: format!("http:{}", opts.url),
                reason: e.to_string(),
            })?;
        Ok(Self { opts, client })
    }

    fn post(&self, batch: &[EventRecord]) -> Result<(), String> {
        let mut body =
            String::with_capacity(batch.iter().map(|e| e.payload.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.payload);
        }
        body.push(']');
        let mut req = self
            .client
            .post(&self.opts.url)
            .header(reqwest::header::CONTENT_TYPE, BATCH_CONTENT_TYPE)
            .body(body);
        if let Some(t) = &self.opts.bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }
}

/// `url` without user info, query and fragment (`<unparsable url>` when it is not one).
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            // Neither fails on an http(s) URL, which is all a sink accepts.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "<unparsable url>".to_owned(),
    }
}

impl EventSink for HttpSink {
    /// `http:<url>` without the URL's credentials, query or fragment: the name is a
    /// metric label and a log field, and a sink URL may carry a token in either.
    fn name(&self) -> String {
        format!("http:{}", redacted(&self.opts.url))
    }

    fn deliver(&self, events: &[EventRecord]) -> Result<(), EventError> {
        for batch in events.chunks(self.opts.batch_size.max(1)) {
            let mut wait = self.opts.first_backoff;
            let mut attempt = 1;
            loop {
                match self.post(batch) {
                    Ok(()) => break,
                    Err(reason) if attempt >= self.opts.attempts.max(1) => {
                        return Err(EventError::Sink {
                            sink: self.name(),
                            reason: format!("{reason} (after {attempt} attempts)"),
                        });
                    }
                    Err(reason) => {
                        tracing::debug!(sink = %self.name(), attempt, %reason, "event batch not accepted; retrying");
                        std::thread::sleep(wait);
                        wait = wait.saturating_mul(2);
                        attempt += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_sink_name_carries_no_credentials() {
        let sink = HttpSink::new(HttpSinkOptions::new(
            "https://user:s3cret@hub.example:8443/ingest?token=abc#frag",
        ))
        .unwrap();
        assert_eq!(sink.name(), "http:https://hub.example:8443/ingest");
        assert_eq!(redacted("not a url"), "<unparsable url>");
    }

    /// A tiny HTTP/1.1 receiver that fails its first `fail_first` requests with 503.
    fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", l.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b2 = bodies.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for stream in l.incoming() {
                let mut s = stream.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let k = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(pos) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= pos + 4 + len {
                            break text[pos + 4..pos + 4 + len].to_owned();
                        }
                    }
                };
                n += 1;
                let status = if n <= fail_first {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                if n > fail_first {
                    b2.lock().unwrap().push(body);
                }
                let _ = s.write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        (url, bodies)
    }

    fn rec(id: &str) -> EventRecord {
        EventRecord {
            id: id.into(),
            payload: format!("{{\"id\":\"{id}\",\"specversion\":\"1.0\"}}"),
        }
    }

    #[test]
    fn retries_then_posts_batches() {
        let (url, bodies) = receiver(2);
        let mut o = HttpSinkOptions::new(url);
        o.batch_size = 2;
        o.first_backoff = Duration::from_millis(5);
        let sink = HttpSink::new(o).unwrap();
        sink.deliver(&[rec("a"), rec("b"), rec("c")]).unwrap();
        let got = bodies.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        let first: Vec<serde_json::Value> = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(first[0]["id"], "a");
    }

    #[test]
    fn gives_up_after_its_attempts() {
        let (url, _) = receiver(100);
        let mut o = HttpSinkOptions::new(url);
        o.attempts = 2;
        o.first_backoff = Duration::from_millis(1);
        let e = HttpSink::new(o)
            .unwrap()
            .deliver(&[rec("a")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("503") && e.contains("2 attempts"), "{e}");
    }
}
