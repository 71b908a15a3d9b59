//! The Connect protocol as envd speaks it, with the JSON codec (protojson: lowerCamelCase
//! names, `bytes` as base64, 64-bit integers as strings or numbers, enums by name):
//!
//! - unary: `POST /<service>/<Method>`, `content-type: application/json`, the message as the
//!   body; an error is a non-200 status with `{"code": "not_found", "message": …}`;
//! - server streaming: `content-type: application/connect+json`, the request as one
//!   enveloped message; the answer is enveloped messages and an end-of-stream envelope
//!   (flag 2) carrying `{"error": {…}}` when the call failed.
//!
//! This module is the pure part: framing, events of `process.Process/Start`, errors.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::exports::sandboxer::extension::backend::BackendError;

/// Base64 as protojson writes `bytes` (standard alphabet, padded; unpadded accepted).
pub fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes protojson `bytes` (standard or URL-safe alphabet, padded or not).
pub fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = s.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .map_err(|e| format!("unreadable base64: {e}"))
}

/// A Connect error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConnectError {
    /// `not_found`, `invalid_argument`, … (may be absent in a bare HTTP error).
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The contract's error for a Connect error of `what`.
pub fn to_backend(what: &str, e: &ConnectError) -> BackendError {
    let text = if e.message.is_empty() {
        format!("E2B envd {what}: {}", e.code)
    } else {
        format!("E2B envd {what}: {}: {}", e.code, e.message)
    };
    match e.code.as_str() {
        "unauthenticated" | "permission_denied" => BackendError::Unauthorized(text),
        "resource_exhausted" => BackendError::CapacityExhausted(text),
        "not_found" => BackendError::NotFound(text),
        "invalid_argument" | "failed_precondition" | "out_of_range" | "already_exists" => {
            BackendError::InvalidRequest(text)
        }
        "unavailable" | "deadline_exceeded" | "canceled" | "aborted" | "unknown" | "internal"
        | "data_loss" => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

/// The Connect code an HTTP status stands for (Connect's own table), for answers whose body
/// carries none: envd's REST errors (`{"message", "code": 404}`), proxies.
pub fn code_for_status(status: u16) -> &'static str {
    match status {
        400 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "already_exists",
        416 => "out_of_range",
        429 => "resource_exhausted",
        499 => "canceled",
        502..=504 => "unavailable",
        507 => "resource_exhausted",
        _ => "unknown",
    }
}

/// The error of a non-success HTTP answer: its Connect error when the body is one, else its
/// status's code with the body's `message`.
pub fn http_error(status: u16, body: &[u8]) -> ConnectError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| code_for_status(status).to_owned());
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    ConnectError { code, message }
}

/// The end of a stream: `Ok(())` or the error its end-of-stream message carries.
pub fn end_of_stream(payload: &[u8]) -> Result<(), ConnectError> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| ConnectError {
        code: "internal".into(),
        message: format!("unreadable end of stream: {e}"),
    })?;
    match v.get("error") {
        None | Some(Value::Null) => Ok(()),
        Some(err) => Err(serde_json::from_value(err.clone()).unwrap_or(ConnectError {
            code: "unknown".into(),
            message: err.to_string(),
        })),
    }
}

/// An event of `process.Process/Start` (`StartResponse.event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The process started with this pid.
    Start { pid: u32 },
    /// Output.
    Stdout(Vec<u8>),
    /// Output.
    Stderr(Vec<u8>),
    /// The end.
    End(End),
    /// Nothing happened (the stream is alive).
    Keepalive,
}

/// `ProcessEvent.EndEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct End {
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// Parses one streamed `StartResponse`/`ConnectResponse` message.
pub fn event(payload: &[u8]) -> Result<Event, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("unreadable process event: {e}"))?;
    let ev = v
        .get("event")
        .ok_or_else(|| "a process message without an event".to_owned())?;
    if let Some(start) = ev.get("start") {
        let pid = start.get("pid").and_then(Value::as_u64).unwrap_or(0);
        return Ok(Event::Start {
            pid: u32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?,
        });
    }
    if let Some(data) = ev.get("data") {
        if let Some(s) = data.get("stdout").and_then(Value::as_str) {
            return Ok(Event::Stdout(b64_decode(s)?));
        }
        if let Some(s) = data.get("stderr").and_then(Value::as_str) {
            return Ok(Event::Stderr(b64_decode(s)?));
        }
        if let Some(s) = data.get("pty").and_then(Value::as_str) {
            return Ok(Event::Stdout(b64_decode(s)?));
        }
        return Ok(Event::Keepalive);
    }
    if let Some(end) = ev.get("end") {
        return serde_json::from_value(end.clone())
            .map(Event::End)
            .map_err(|e| format!("unreadable end event: {e}"));
    }
    Ok(Event::Keepalive)
}

/// A protojson `int64`/`uint64`: a string or a number.
pub fn json_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time (`2024-01-02T03:04:05.678Z`,
/// offsets accepted), as protojson writes a `Timestamp`.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b'T' || b[10] == b't') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let oh: i64 = o.get(1..3)?.parse().ok()?;
            let om: i64 = o.get(4..6)?.parse().ok()?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_events_parse_as_envd_sends_them() {
        assert_eq!(
            event(br#"{"event":{"start":{"pid":42}}}"#),
            Ok(Event::Start { pid: 42 })
        );
        assert_eq!(
            event(br#"{"event":{"data":{"stdout":"aGVsbG8K"}}}"#),
            Ok(Event::Stdout(b"hello\n".to_vec()))
        );
        assert_eq!(
            event(br#"{"event":{"data":{"stderr":"eA=="}}}"#),
            Ok(Event::Stderr(b"x".to_vec()))
        );
        assert_eq!(
            event(br#"{"event":{"keepalive":{}}}"#),
            Ok(Event::Keepalive)
        );
        // protojson leaves defaults out: exit code 0 and exited false are absent.
        assert_eq!(
            event(br#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#),
            Ok(Event::End(End {
                exit_code: 0,
                exited: true,
                status: "exit status 0".into(),
                error: None
            }))
        );
        assert_eq!(
            event(br#"{"event":{"end":{"exitCode":-1,"status":"signal: killed"}}}"#),
            Ok(Event::End(End {
                exit_code: -1,
                exited: false,
                status: "signal: killed".into(),
                error: None
            }))
        );
        assert!(event(b"{}").is_err());
        assert!(event(br#"{"event":{"data":{"stdout":"!!"}}}"#).is_err());
    }

    #[test]
    fn errors_come_from_bodies_and_statuses() {
        assert_eq!(end_of_stream(b"{}"), Ok(()));
        assert_eq!(
            end_of_stream(
                br#"{"error":{"code":"invalid_argument","message":"cwd '/x' does not exist"}}"#
            ),
            Err(ConnectError {
                code: "invalid_argument".into(),
                message: "cwd '/x' does not exist".into()
            })
        );
        let e = http_error(
            404,
            br#"{"code":"not_found","message":"process with pid 9 not found"}"#,
        );
        assert_eq!(e.code, "not_found");
        // envd's REST errors carry a numeric code: the status decides.
        let e = http_error(401, br#"{"message":"unauthorized access","code":401}"#);
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("unauthenticated", "unauthorized access")
        );
        let e = http_error(502, b"<html>bad gateway</html>");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("unavailable", "HTTP 502")
        );
        assert!(matches!(
            to_backend("Start", &http_error(401, b"")),
            BackendError::Unauthorized(_)
        ));
        assert!(matches!(
            to_backend("Start", &http_error(503, b"")),
            BackendError::Unavailable(_)
        ));
        assert!(matches!(
            to_backend("Start", &http_error(404, b"")),
            BackendError::NotFound(_)
        ));
        assert!(matches!(
            to_backend("Start", &http_error(400, b"")),
            BackendError::InvalidRequest(_)
        ));
    }

    #[test]
    fn timestamps_and_numbers() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2024-02-29T12:00:00.5Z"),
            Some(1_709_208_000_500)
        );
        assert_eq!(
            rfc3339_ms("2024-02-29T13:00:00.500123+01:00"),
            Some(1_709_208_000_500)
        );
        assert_eq!(rfc3339_ms("2024-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_ms("yesterday"), None);
        assert_eq!(json_u64(&serde_json::json!("123")), Some(123));
        assert_eq!(json_u64(&serde_json::json!(7)), Some(7));
        assert_eq!(
            b64_decode(&b64_encode(b"\x00\xffbytes")).unwrap(),
            b"\x00\xffbytes"
        );
    }
}
