//! gRPC statuses as Modal answers them (`grpc-status`/`grpc-message` in the trailers, or in
//! the head of a trailers-only answer) and their mapping onto the contract's error
//! variant, so the router fails over only on what is retryable.

use crate::wit::BackendError;

/// A gRPC status that is not OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The numeric code (`grpc-status`).
    pub code: u32,
    /// The message (`grpc-message`, percent-decoded).
    pub message: String,
}

/// `OK`.
pub const OK: u32 = 0;
/// `NOT_FOUND`.
pub const NOT_FOUND: u32 = 5;
/// `ALREADY_EXISTS`.
pub const ALREADY_EXISTS: u32 = 6;
/// `UNAUTHENTICATED`.
pub const UNAUTHENTICATED: u32 = 16;

/// The canonical name of a gRPC code.
pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN_CODE",
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The status in a list of fields, if it has `grpc-status`. `Ok(None)` is OK; a malformed
/// code is an error.
pub fn from_fields(fields: &[(String, Vec<u8>)]) -> Option<Result<Option<Status>, String>> {
    let code = guest_kit::http::field(fields, "grpc-status")?;
    let Ok(code) = code.trim().parse::<u32>() else {
        return Some(Err(format!("unreadable grpc-status {code:?}")));
    };
    if code == OK {
        return Some(Ok(None));
    }
    let message = guest_kit::http::field(fields, "grpc-message")
        .map(percent_decode)
        .unwrap_or_default();
    Some(Ok(Some(Status { code, message })))
}

/// The contract's error for a gRPC status Modal answered to `what` (e.g. "SandboxCreate").
pub fn to_backend(what: &str, st: &Status) -> BackendError {
    let text = if st.message.is_empty() {
        format!("Modal {what}: {}", code_name(st.code))
    } else {
        format!("Modal {what}: {}: {}", code_name(st.code), st.message)
    };
    match st.code {
        // Bad credentials are final: another try with the same token fails the same way.
        7 | 16 => BackendError::Unauthorized(text),
        8 => BackendError::CapacityExhausted(text),
        5 => BackendError::NotFound(text),
        3 | 6 | 9 | 11 => BackendError::InvalidRequest(text),
        // Modal's SDKs retry these as transient.
        1 | 2 | 4 | 10 | 13 | 14 | 15 => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

/// The contract's error for an HTTP answer that carries no gRPC status (a proxy or load
/// balancer in front of Modal, or a URL that serves something else).
pub fn http_to_backend(what: &str, status: u16) -> BackendError {
    let text = format!("Modal {what}: HTTP {status} without a gRPC status");
    match status {
        401 | 403 => BackendError::Unauthorized(text),
        429 => BackendError::CapacityExhausted(text),
        408 | 500..=599 => BackendError::Unavailable(text),
        _ => BackendError::Internal(text),
    }
}

/// Header or trailer fields from name/value pairs (for tests).
#[cfg(test)]
pub(crate) fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_come_from_trailers_with_their_message_decoded() {
        assert!(from_fields(&fields(&[("content-type", "application/grpc")])).is_none());
        assert_eq!(
            from_fields(&fields(&[("grpc-status", "0")])),
            Some(Ok(None))
        );
        let st = from_fields(&fields(&[
            ("Grpc-Status", "8"),
            ("grpc-message", "Rate%20limit%20exceeded%3A%20retry"),
        ]))
        .unwrap()
        .unwrap()
        .unwrap();
        assert_eq!(st.code, 8);
        assert_eq!(st.message, "Rate limit exceeded: retry");
        assert!(
            from_fields(&fields(&[("grpc-status", "x")]))
                .unwrap()
                .is_err()
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn codes_map_onto_retryable_and_final_variants() {
        let e = |code| {
            to_backend(
                "SandboxCreate",
                &Status {
                    code,
                    message: "m".into(),
                },
            )
        };
        assert!(matches!(e(14), BackendError::Unavailable(_)));
        assert!(matches!(e(8), BackendError::CapacityExhausted(_)));
        assert!(matches!(e(16), BackendError::Unauthorized(_)));
        assert!(matches!(e(7), BackendError::Unauthorized(_)));
        assert!(matches!(e(5), BackendError::NotFound(_)));
        assert!(matches!(e(3), BackendError::InvalidRequest(_)));
        assert!(matches!(e(13), BackendError::Unavailable(_)));
        assert!(matches!(e(12), BackendError::Internal(_)));
        match e(14) {
            BackendError::Unavailable(m) => assert_eq!(m, "Modal SandboxCreate: UNAVAILABLE: m"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            http_to_backend("x", 503),
            BackendError::Unavailable(_)
        ));
        assert!(matches!(
            http_to_backend("x", 429),
            BackendError::CapacityExhausted(_)
        ));
        assert!(matches!(
            http_to_backend("x", 401),
            BackendError::Unauthorized(_)
        ));
        assert!(matches!(
            http_to_backend("x", 404),
            BackendError::Internal(_)
        ));
    }
}
