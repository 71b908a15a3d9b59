//! `/v1/keys`: a tenant's own provider keys (BYOK). Parse, call the app, render; the
//! answers carry fingerprints, never a key.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::auth::Auth;
use super::error::ApiError;
use super::extract::ApiJson;
use super::{AppState, call};

/// `GET /v1/keys`: every extension that takes the tenant's own key, set or not.
pub(super) async fn list_keys(
    State(s): State<AppState>,
    auth: Auth,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| app.list_keys(&tenant)).await
}

/// `PUT /v1/keys/{extension}` with the key's fields, e.g. `{"api_key": "…"}`.
pub(super) async fn set_key(
    State(s): State<AppState>,
    auth: Auth,
    Path(extension): Path<String>,
    ApiJson(fields): ApiJson<BTreeMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| {
        app.set_key(&tenant, &extension, &fields)
    })
    .await
}

/// `DELETE /v1/keys/{extension}`: back to the operator's key.
pub(super) async fn remove_key(
    State(s): State<AppState>,
    auth: Auth,
    Path(extension): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| {
        app.remove_key(&tenant, &extension)
    })
    .await
}
