//! Request extractors with the API's error shape: a size-limited JSON body that refuses
//! unknown fields and names the offending one, path parameters and query strings whose
//! rejections are answered in the error shape too (axum's own are `text/plain`), and the
//! idempotency key.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body, deserialised with the path of any bad field (`vcpus`, `env.FOO`).
/// The size limit is the router's `DefaultBodyLimit`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                // The issue asks for 400 on an oversized body, with the limit named.
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "body_too_large",
                    format!("request body too large: {}", e.body_text()),
                )
            } else {
                ApiError::bad_request(
                    None,
                    format!("cannot read the request body: {}", e.body_text()),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Path parameters; a bad one (not UTF-8 once percent-decoded, or not of its type) is a
/// 400 in the error shape naming the parameter.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(path_rejection(&e)),
        }
    }
}

fn path_rejection(e: &PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    if e.status().is_server_error() {
        // A route whose parameters do not fit its handler: the host's bug, not the client's.
        return ApiError::internal(format!("path parameters: {}", e.body_text()));
    }
    let key = match e {
        PathRejection::FailedToDeserializePathParams(d) => match d.kind() {
            ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
            _ => None,
        },
        _ => None,
    };
    ApiError::bad_request(key.as_deref(), format!("invalid path: {}", e.body_text()))
}

/// A query string deserialised into `T`; a bad one is a 400 in the error shape.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(None, format!("invalid query: {}", e.body_text()))
            })
    }
}

/// Deserialises a JSON body, naming the field on a type error or an unknown field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            None,
            "expected a JSON object as the request body, got an empty body",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(None, format!("invalid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(None, format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(Some(&path), format!("invalid field {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(None, format!("invalid JSON: {e}")))?;
    Ok(value)
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            Some("Idempotency-Key"),
            "Idempotency-Key must be 1 to 200 visible ASCII characters",
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 200 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        profile: String,
        vcpus: Option<u32>,
    }

    #[test]
    fn names_the_field() {
        let e = parse_json::<Body>(br#"{"profile":"p","vcpus":"two"}"#).unwrap_err();
        assert_eq!(e.details["field"], "vcpus");
        let e = parse_json::<Body>(br#"{"profile":"p","colour":1}"#).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"vcpus":1}"#).unwrap_err();
        assert!(e.message.contains("profile"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"profile":"#).unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
        let e = parse_json::<Body>(b"").unwrap_err();
        assert!(e.message.contains("empty"), "{}", e.message);
        let e = parse_json::<Body>(br#"{"profile":"p"} x"#).unwrap_err();
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
    }
}
