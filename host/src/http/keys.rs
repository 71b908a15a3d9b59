//! `/v1/keys`: a tenant's own provider keys (BYOK). Parse, call the app, render; the
//! answers carry fingerprints, never a key.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::auth::Auth;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath};
use super::{AppState, call};
use crate::app::{KeyList, KeyRow};

/// Every extension that takes the tenant's own provider key, and whether it set one.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    security(("tenant" = [])),
    responses(
        (status = 200, description = "One row per extension that takes a tenant's own key; fingerprints, never keys.", body = KeyList),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 503, description = "The host keeps no tenants' keys (no `[openbao]`), or OpenBao is unavailable (`secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn list_keys(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| app.list_keys(&tenant)).await
}

/// Stores the tenant's own key for an extension (in OpenBao), replacing an earlier one.
#[utoipa::path(
    put,
    path = "/v1/keys/{extension}",
    tag = "keys",
    security(("tenant" = [])),
    params(("extension" = String, Path, description = "The extension id.", example = "e2b")),
    request_body(content = BTreeMap<String, String>, description = "The key's fields, as the extension's sidecar names them.", example = json!({"api_key": "e2b_0123456789abcdef"})),
    responses(
        (status = 200, description = "Stored; its fingerprint.", body = KeyRow),
        (status = 400, description = "No such extension is loaded, it takes no tenant's own key, or the body is not exactly its key fields, each a non-empty string (`bad_request`, `field`); a body that is not JSON or over the limit (`bad_request`, `body_too_large`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 503, description = "The host keeps no tenants' keys (no `[openbao]`), or OpenBao is unavailable (`secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn set_key(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(extension): ApiPath<String>,
    ApiJson(fields): ApiJson<BTreeMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| {
        app.set_key(&tenant, &extension, &fields)
    })
    .await
}

/// Removes the tenant's own key for an extension: back to the operator's key.
#[utoipa::path(
    delete,
    path = "/v1/keys/{extension}",
    tag = "keys",
    security(("tenant" = [])),
    params(("extension" = String, Path, description = "The extension id.", example = "e2b")),
    responses(
        (status = 200, description = "Removed (the operator's key serves again).", body = KeyRow),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 400, description = "No such extension is loaded, or it takes no tenant's own key (`bad_request`, `field`: `extension`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 503, description = "The host keeps no tenants' keys (no `[openbao]`), or OpenBao is unavailable (`secret_store_unavailable`).", body = ErrorBody)
    )
)]
pub(super) async fn remove_key(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(extension): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| {
        app.remove_key(&tenant, &extension)
    })
    .await
}
