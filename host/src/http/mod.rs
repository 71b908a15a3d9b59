//! The HTTP API served by `sandboxer-host run` (JSON over HTTP/1.1, axum): a surface.
//!
//! It owns the HTTP concerns only: routes, bearer-token auth ([`auth`]), body limits and
//! JSON bodies that name the bad field ([`extract`]), list queries ([`query`]), and the
//! error shape with the one mapping from the app's errors to statuses ([`error`]). Every
//! handler parses, calls one use case on [`App`] on the blocking pool (extension calls
//! and ledger writes are synchronous), and answers the typed result serialised by
//! [`crate::app::to_json`], the same bytes `sandboxer … --json` prints.

pub mod auth;
mod dashboard;
pub mod error;
pub mod extract;
mod keys;
pub mod openapi;
pub mod query;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use auth::{Auth, TokenSet};
pub use error::ApiError;
use extract::{ApiJson, ApiPath, idempotency_key};
use query::ListQuery;

use crate::app::{
    App, Balances, Explanation, ExtensionList, GrantRequest, Granted, Overview, SandboxPage,
    Statement,
};
use crate::domain::money::parse_amount;
use crate::domain::{Currency, Money, SandboxSpec, SandboxState, SandboxStatus, TenantId};
use crate::telemetry::metrics;
use error::ErrorBody;
use openapi::HealthAnswer;

/// `POST /v1/tenants/{tenant}/credits` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    /// Exact decimal string, e.g. `"25.00"`; numbers are refused (no floats for money).
    #[schema(example = "25.00")]
    pub amount: String,
    /// ISO currency code; default `USD`.
    #[serde(default = "default_currency")]
    #[schema(example = "USD")]
    pub currency: String,
    /// Recorded with the grant.
    #[serde(default)]
    pub note: String,
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState {
    /// The application.
    pub app: App,
    /// Known tokens.
    pub tokens: Arc<TokenSet>,
    /// The Prometheus handle (`None`: `/metrics` answers 503).
    pub metrics: Option<PrometheusHandle>,
    /// When set, `/metrics` wants one of these tokens (or the admin's): `[metrics]`.
    pub metrics_tokens: Option<Arc<TokenSet>>,
    /// Set when shutdown begins: `/healthz` answers 503 so load balancers drain.
    pub draining: Arc<AtomicBool>,
    /// Bounds the requests that write (grants) running at once. SQLite has one writer;
    /// queueing here, in arrival order, beats many threads sleeping in its busy handler.
    pub writers: Arc<tokio::sync::Semaphore>,
}

/// The router with every endpoint, the body limit and request metrics.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(destroy_sandbox),
        )
        .route(
            "/v1/sandboxes/{id}/exec",
            post(session::exec).layer(DefaultBodyLimit::max(session::MAX_EXEC_BODY_BYTES)),
        )
        .route("/v1/sandboxes/{id}/files", get(session::get_root))
        .route("/v1/sandboxes/{id}/files/", get(session::get_root))
        .route(
            "/v1/sandboxes/{id}/files/{*path}",
            get(session::get_file)
                .put(session::put_file)
                .layer(DefaultBodyLimit::max(
                    usize::try_from(state.app.max_file_bytes()).unwrap_or(usize::MAX),
                )),
        )
        .route("/v1/route/explain", post(explain_route))
        .route("/v1/credits", get(credits))
        .route("/v1/credits/entries", get(credit_entries))
        .route("/v1/tenants/{tenant}/credits", post(add_credits))
        .route("/v1/extensions", get(extensions))
        .route("/v1/admin/overview", get(overview))
        .route("/v1/keys", get(keys::list_keys))
        .route(
            "/v1/keys/{extension}",
            axum::routing::put(keys::set_key).delete(keys::remove_key),
        )
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// A typed answer with its status, serialised by the app's one serialisation.
struct Answer<T>(StatusCode, T);

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        match crate::app::to_json(&self.1) {
            Ok(body) => {
                (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }
            Err(e) => ApiError::from(e).into_response(),
        }
    }
}

/// Runs a use case on the blocking pool and answers its result with `status`.
async fn call<T, F>(state: &AppState, status: StatusCode, f: F) -> Result<Answer<T>, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&App) -> Result<T, crate::app::AppError> + Send + 'static,
{
    let app = state.app.clone();
    let out = tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?;
    Ok(Answer(status, out?))
}

/// Liveness: `ok` and the version, or 503 `draining` once shutdown began.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "Serving.", body = HealthAnswer),
        (status = 503, description = "Draining: shutdown began.", body = HealthAnswer)
    )
)]
async fn healthz(State(s): State<AppState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")})).into_response()
    }
}

/// Prometheus metrics (text). Wants the `[metrics]` token or the admin's when `[metrics]`
/// sets tokens; open otherwise.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    security((), ("metrics" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The Prometheus text format.", body = String, content_type = "text/plain"),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 503, description = "No metrics recorder in this process (`metrics_unavailable`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn metrics_text(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(allowed) = &s.metrics_tokens {
        let token = match auth::bearer(&headers) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let admin = s.tokens.authenticate(token) == Some(auth::Principal::Admin);
        if !admin && allowed.authenticate(token).is_none() {
            return ApiError::unauthorized("invalid token: /metrics wants the [metrics] token")
                .into_response();
        }
    }
    let Some(handle) = s.metrics.clone() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "no metrics recorder in this process",
        )
        .into_response();
    };
    let app = s.app.clone();
    let text = tokio::task::spawn_blocking(move || {
        app.refresh_gauges();
        handle.render()
    })
    .await;
    match text {
        Ok(t) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], t).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

fn check_profile_field(spec: &SandboxSpec) -> Result<(), ApiError> {
    if spec.profile.trim().is_empty() {
        return Err(ApiError::bad_request(
            Some("profile"),
            "profile must name a profile, e.g. \"burst-sandbox\"",
        ));
    }
    Ok(())
}

/// Creates a sandbox from a profile: routes it, holds its estimate on the tenant's credits
/// and calls the chosen extension (failing over on retryable errors).
#[utoipa::path(
    post,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    security(("tenant" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request apply once (1 to 200 visible ASCII characters, scoped to the tenant).")),
    request_body = SandboxSpec,
    responses(
        (status = 201, description = "Created (or the first answer again for a repeated `Idempotency-Key`).", body = SandboxStatus),
        (status = 400, description = "A body that is not JSON, an unknown or mistyped field (named in `field`), an unknown profile (`field`: `profile`), an override out of the profile's range, a bad `Idempotency-Key`, or a body over the limit (`bad_request`, `body_too_large`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 402, description = "The tenant's available credits do not cover the estimate (`insufficient_credits`, with `need` and `available`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The `Idempotency-Key` was used for another request, or the profile needs the tenant's own key (`idempotency_conflict`, `own_key_required`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
async fn create_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<SandboxSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    let key = idempotency_key(&headers)?;
    check_profile_field(&spec)?;
    call(&s, StatusCode::CREATED, move |app| {
        app.create_sandbox(&tenant, &spec, key.as_deref())
    })
    .await
}

/// A list's query string: decoded pairs, then checked against the names it accepts.
type RawPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn list_query(q: RawPairs, filters: &[&str]) -> Result<ListQuery, ApiError> {
    let Query(pairs) =
        q.map_err(|e| ApiError::bad_request(None, format!("invalid query: {}", e.body_text())))?;
    ListQuery::parse(pairs, filters)
}

/// The tenant's sandboxes, newest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/sandboxes",
    tag = "sandboxes",
    security(("tenant" = [])),
    params(
        ("state" = Option<SandboxState>, Query, description = "Only sandboxes in this state."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Rows per page (default 100)."),
        ("after" = Option<String>, Query, description = "The `next` of the previous page, unchanged.")
    ),
    responses(
        (status = 200, description = "One page; `next` is the cursor of the next (`null`: the last).", body = SandboxPage),
        (status = 400, description = "An unknown, repeated or invalid query parameter, named in `field` (`bad_request`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn list_sandboxes(
    State(s): State<AppState>,
    auth: Auth,
    q: RawPairs,
) -> Result<impl IntoResponse, ApiError> {
    let scope = auth.tenant().map(crate::domain::Scope::Tenant)?;
    let q = list_query(q, &["state"])?;
    let state = match q.filter("state") {
        None => None,
        Some(v) => Some(
            v.parse::<SandboxState>()
                .map_err(|e| ApiError::bad_request(Some("state"), e.to_string()))?,
        ),
    };
    call(&s, StatusCode::OK, move |app| {
        app.list_sandboxes(&scope, state, &q.page)
    })
    .await
}

/// One sandbox.
#[utoipa::path(
    get,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    security(("tenant" = [])),
    params(("id" = String, Path, description = "The sandbox id (`sb-…`).")),
    responses(
        (status = 200, description = "The sandbox as recorded.", body = SandboxStatus),
        (status = 400, description = "A path parameter that is not UTF-8 once percent-decoded (`bad_request`, `field`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox for this tenant (`not_found`; another tenant's is not revealed).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn get_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = auth.tenant().map(crate::domain::Scope::Tenant)?;
    call(&s, StatusCode::OK, move |app| app.sandbox(&scope, &id)).await
}

/// Destroys a sandbox, meters it and settles its credits. Idempotent: a destroyed
/// sandbox answers its settlement again and charges nothing.
#[utoipa::path(
    delete,
    path = "/v1/sandboxes/{id}",
    tag = "sandboxes",
    security(("tenant" = [])),
    params(("id" = String, Path, description = "The sandbox id (`sb-…`).")),
    responses(
        (status = 200, description = "Destroyed and settled (`meter` set), or failed.", body = SandboxStatus),
        (status = 400, description = "A path parameter that is not UTF-8 once percent-decoded (`bad_request`, `field`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 404, description = "No such sandbox for this tenant (`not_found`; another tenant's is not revealed).", body = ErrorBody),
        (status = 409, description = "Not in a state it can be destroyed from, or another operation on it is under way (`wrong_state`, `busy`, `conflict`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
async fn destroy_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let scope = auth.tenant().map(crate::domain::Scope::Tenant)?;
    call(&s, StatusCode::OK, move |app| {
        app.destroy_sandbox(&scope, &id)
    })
    .await
}

/// How a create with this body would be routed right now: every candidate's estimate,
/// health, capacity and fate. Nothing is created or held.
#[utoipa::path(
    post,
    path = "/v1/route/explain",
    tag = "sandboxes",
    security(("tenant" = [])),
    request_body = SandboxSpec,
    responses(
        (status = 200, description = "The explanation (`routable: false` with the reason when nothing can serve it).", body = Explanation),
        (status = 400, description = "A body that is not JSON, an unknown or mistyped field (named in `field`), an unknown profile (`field`: `profile`), an override out of the profile's range, a bad `Idempotency-Key`, or a body over the limit (`bad_request`, `body_too_large`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody),
        (status = 502, description = "The extension failed or its meter was unusable (`extension_failed`, `bad_meter`).", body = ErrorBody),
        (status = 503, description = "No backend can serve it now, the extension is gone or its backend is unavailable (`no_backend_available`, `create_failed`, `extension_missing`, `backend_unavailable`, `secret_store_unavailable`).", body = ErrorBody)
    )
)]
async fn explain_route(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(spec): ApiJson<SandboxSpec>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    check_profile_field(&spec)?;
    call(&s, StatusCode::OK, move |app| {
        app.explain_route(&tenant, &spec)
    })
    .await
}

/// The tenant's balances, one per currency (none before credits were added).
#[utoipa::path(
    get,
    path = "/v1/credits",
    tag = "credits",
    security(("tenant" = [])),
    responses(
        (status = 200, description = "Posted, held and available per currency.", body = Balances),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn credits(State(s): State<AppState>, auth: Auth) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    call(&s, StatusCode::OK, move |app| app.balances(&tenant)).await
}

/// The tenant's statement, oldest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/credits/entries",
    tag = "credits",
    security(("tenant" = [])),
    params(("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Rows per page (default 100)."),
        ("after" = Option<String>, Query, description = "The `next` of the previous page, unchanged.")),
    responses(
        (status = 200, description = "One page of grants, holds, charges, voids, overdrafts and debts.", body = Statement),
        (status = 400, description = "An unknown, repeated or invalid query parameter, named in `field` (`bad_request`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "The admin token on a tenant's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn credit_entries(
    State(s): State<AppState>,
    auth: Auth,
    q: RawPairs,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = auth.tenant()?;
    let q = list_query(q, &[])?;
    call(&s, StatusCode::OK, move |app| {
        app.statement(&tenant, &q.page)
    })
    .await
}

/// Adds credits to a tenant (the operator).
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/credits",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("tenant" = String, Path, description = "The tenant id: lowercase letters, digits, `-` and `_`, at most 64.", example = "acme"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried request apply once (1 to 200 visible ASCII characters, scoped to the tenant).")
    ),
    request_body = AddCredits,
    responses(
        (status = 201, description = "The grant and the tenant's balance after it.", body = Granted),
        (status = 400, description = "A body that is not JSON, an unknown or mistyped field (named in `field`), a value out of range, or a body over the limit (`bad_request`, `body_too_large`).", body = ErrorBody),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "A tenant's token on the operator's endpoint (`forbidden`).", body = ErrorBody),
        (status = 409, description = "The `Idempotency-Key` was used for another grant (`idempotency_conflict`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn add_credits(
    State(s): State<AppState>,
    auth: Auth,
    ApiPath(tenant): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddCredits>,
) -> Result<impl IntoResponse, ApiError> {
    auth.admin()?;
    let key = idempotency_key(&headers)?;
    let tenant = TenantId::parse(&tenant)
        .map_err(|e| ApiError::bad_request(Some("tenant"), e.to_string()))?;
    let amount = parse_amount(&body.amount)
        .map_err(|e| ApiError::bad_request(Some("amount"), format!("invalid amount: {e}")))?;
    let currency = Currency::new(&body.currency)
        .map_err(|e| ApiError::bad_request(Some("currency"), e.to_string()))?;
    let request = GrantRequest {
        amount: Money {
            amount: amount.exact,
            currency,
        },
        note: body.note,
        idempotency_key: key,
    };
    let _permit = s
        .writers
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(format!("writer limit closed: {e}")))?;
    call(&s, StatusCode::CREATED, move |app| {
        app.grant_credits(&tenant, &request)
    })
    .await
}

/// The live extensions: what routing may use now, with their circuits; the operator
/// also sees files, compiled-code sources, trap records and the files that did not load.
#[utoipa::path(
    get,
    path = "/v1/extensions",
    tag = "extensions",
    security(("tenant" = []), ("admin" = [])),
    responses(
        (status = 200, description = "The extensions.", body = ExtensionList),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn extensions(State(s): State<AppState>, auth: Auth) -> Result<impl IntoResponse, ApiError> {
    let scope = auth.scope();
    call(&s, StatusCode::OK, move |app| app.extensions(&scope)).await
}

/// Every tenant's balances and the capacity in use per extension (the operator).
#[utoipa::path(
    get,
    path = "/v1/admin/overview",
    tag = "admin",
    security(("admin" = [])),
    responses(
        (status = 200, description = "Balances and capacity in use.", body = Overview),
        (status = 401, description = "No bearer token, a malformed header, or an unknown token (`unauthorized`).", body = ErrorBody),
        (status = 403, description = "A tenant's token on the operator's endpoint (`forbidden`).", body = ErrorBody),
        (status = 500, description = "Internal error (`internal`); the host's log says more.", body = ErrorBody)
    )
)]
async fn overview(State(s): State<AppState>, auth: Auth) -> Result<impl IntoResponse, ApiError> {
    auth.admin()?;
    call(&s, StatusCode::OK, App::overview).await
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see docs/api.md",
    )
}

/// Request metrics and one log line per request (method, route, status, latency; never
/// headers, so tokens stay out of logs).
async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    let took = start.elapsed();
    let status = resp.status().as_u16();
    metrics::http_request(method.as_str(), &route, status, took);
    tracing::debug!(%method, %route, status, took_ms = took.as_secs_f64() * 1e3, "request");
    resp
}

#[cfg(test)]
mod tests;
