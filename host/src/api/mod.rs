//! The HTTP API served by `sandboxer-host run` (JSON over HTTP/1.1, axum).
//!
//! This module owns the HTTP concerns only: routes, bearer-token auth, body limits,
//! request validation and the error shape. Every operation is one call on a [`Backend`]
//! (implemented over the application value `Host` in [`host_backend`]), run on the
//! blocking pool because extension calls and ledger writes are synchronous.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Value, json};

pub mod error;
pub mod extract;
pub mod host_backend;
pub mod metrics;
pub mod paging;

pub use error::ApiError;
use extract::{ApiJson, Auth, idempotency_key};
pub use paging::{ListQuery, PageRequest};

use crate::service::tokens::TokenSet;

/// `POST /v1/sandboxes` and `POST /v1/route/explain` bodies: a profile and overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Profile id, e.g. `burst-sandbox`.
    pub profile: String,
    /// vCPUs instead of the profile's.
    pub vcpus: Option<u32>,
    /// Memory in MiB instead of the profile's.
    pub memory_mib: Option<u32>,
    /// Maximum lifetime in seconds (at most the profile's).
    pub max_duration_secs: Option<u64>,
    /// Region wanted.
    pub region: Option<String>,
    /// Environment variables handed to the sandbox.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `POST /v1/tenants/{tenant}/credits` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCredits {
    /// Exact decimal string, e.g. `"25.00"`; numbers are refused (no floats for money).
    pub amount: String,
    /// ISO currency code; default `USD`.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Recorded with the grant.
    #[serde(default)]
    pub note: String,
}

fn default_currency() -> String {
    "USD".to_owned()
}

/// What the API needs from the application. Every method is synchronous and may block
/// (extension calls, ledger writes); the router runs them on the blocking pool. Answers
/// are the JSON bodies; errors are already mapped to the API's statuses and codes.
pub trait Backend: Send + Sync + 'static {
    /// Creates a sandbox for `tenant` (idempotent per key and tenant).
    fn create_sandbox(
        &self,
        tenant: &str,
        req: &CreateSandbox,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ApiError>;
    /// One page of the tenant's sandboxes, newest first, optionally in one state:
    /// `{"sandboxes": […], "next": cursor | null}`.
    fn list_sandboxes(
        &self,
        tenant: &str,
        state: Option<&str>,
        page: &PageRequest,
    ) -> Result<Value, ApiError>;
    /// One sandbox of the tenant (404 for another tenant's).
    fn get_sandbox(&self, tenant: &str, id: &str) -> Result<Value, ApiError>;
    /// Destroys and settles one sandbox of the tenant (idempotent).
    fn destroy_sandbox(&self, tenant: &str, id: &str) -> Result<Value, ApiError>;
    /// The route decision for a request, with every candidate; nothing created or held.
    fn explain_route(&self, tenant: &str, req: &CreateSandbox) -> Result<Value, ApiError>;
    /// The tenant's balances.
    fn credits(&self, tenant: &str) -> Result<Value, ApiError>;
    /// One page of the tenant's statement lines, oldest first:
    /// `{"tenant", "entries": […], "next": cursor | null}`.
    fn credit_entries(&self, tenant: &str, page: &PageRequest) -> Result<Value, ApiError>;
    /// Grants credits to a tenant (admin).
    fn add_credits(
        &self,
        tenant: &str,
        req: &AddCredits,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ApiError>;
    /// Loaded extensions.
    fn extensions(&self) -> Result<Value, ApiError>;
    /// Refreshes gauges that mirror stored state, just before a scrape.
    fn refresh_metrics(&self);
}

/// Shared state of the router.
#[derive(Clone)]
pub struct AppState {
    /// The application.
    pub backend: Arc<dyn Backend>,
    /// Known tokens.
    pub tokens: Arc<TokenSet>,
    /// The Prometheus handle (`None`: `/metrics` answers 503).
    pub metrics: Option<PrometheusHandle>,
    /// Set when shutdown begins: `/healthz` answers 503 so load balancers drain.
    pub draining: Arc<AtomicBool>,
    /// Bounds the requests that write (create, destroy, grant) running at once. SQLite
    /// has one writer; queueing here, in arrival order, beats many threads sleeping in
    /// SQLite's busy handler.
    pub writers: Arc<tokio::sync::Semaphore>,
}

/// The router with every endpoint, the body limit and request metrics.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/v1/sandboxes", post(create_sandbox).get(list_sandboxes))
        .route(
            "/v1/sandboxes/{id}",
            get(get_sandbox).delete(destroy_sandbox),
        )
        .route("/v1/route/explain", post(explain_route))
        .route("/v1/credits", get(credits))
        .route("/v1/credits/entries", get(credit_entries))
        .route("/v1/tenants/{tenant}/credits", post(add_credits))
        .route("/v1/extensions", get(extensions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// Runs a backend call on the blocking pool.
async fn blocking<F>(state: &AppState, f: F) -> Result<Value, ApiError>
where
    F: FnOnce(&dyn Backend) -> Result<Value, ApiError> + Send + 'static,
{
    let backend = state.backend.clone();
    tokio::task::spawn_blocking(move || f(backend.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

/// Like [`blocking`] for a call that writes, within the writers' limit.
async fn writing<F>(state: &AppState, f: F) -> Result<Value, ApiError>
where
    F: FnOnce(&dyn Backend) -> Result<Value, ApiError> + Send + 'static,
{
    let _permit = state
        .writers
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(format!("writer limit closed: {e}")))?;
    blocking(state, f).await
}

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

async fn metrics_text(State(s): State<AppState>) -> Response {
    let Some(handle) = s.metrics.clone() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "no metrics recorder in this process",
        )
        .into_response();
    };
    let backend = s.backend.clone();
    let text = tokio::task::spawn_blocking(move || {
        backend.refresh_metrics();
        handle.render()
    })
    .await;
    match text {
        Ok(t) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            t,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

async fn create_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = auth.tenant()?.to_owned();
    let key = idempotency_key(&headers)?;
    check_profile_field(&body)?;
    let v = blocking(&s, move |b| {
        b.create_sandbox(&tenant, &body, key.as_deref())
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// A list's query string: decoded pairs, then checked against the names it accepts.
type RawPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn list_query(q: RawPairs, filters: &[&str]) -> Result<ListQuery, ApiError> {
    let Query(pairs) =
        q.map_err(|e| ApiError::bad_request(None, format!("invalid query: {}", e.body_text())))?;
    ListQuery::parse(pairs, filters)
}

async fn list_sandboxes(
    State(s): State<AppState>,
    auth: Auth,
    q: RawPairs,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    let q = list_query(q, &["state"])?;
    blocking(&s, move |b| {
        b.list_sandboxes(&tenant, q.filter("state"), &q.page)
    })
    .await
    .map(Json)
}

async fn get_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    blocking(&s, move |b| b.get_sandbox(&tenant, &id))
        .await
        .map(Json)
}

async fn destroy_sandbox(
    State(s): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    blocking(&s, move |b| b.destroy_sandbox(&tenant, &id))
        .await
        .map(Json)
}

async fn explain_route(
    State(s): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<CreateSandbox>,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    check_profile_field(&body)?;
    blocking(&s, move |b| b.explain_route(&tenant, &body))
        .await
        .map(Json)
}

async fn credits(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    blocking(&s, move |b| b.credits(&tenant)).await.map(Json)
}

async fn credit_entries(
    State(s): State<AppState>,
    auth: Auth,
    q: RawPairs,
) -> Result<Json<Value>, ApiError> {
    let tenant = auth.tenant()?.to_owned();
    let q = list_query(q, &[])?;
    blocking(&s, move |b| b.credit_entries(&tenant, &q.page))
        .await
        .map(Json)
}

async fn add_credits(
    State(s): State<AppState>,
    auth: Auth,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddCredits>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    auth.admin()?;
    let key = idempotency_key(&headers)?;
    if !crate::service::tokens::is_tenant_id(&tenant) {
        return Err(ApiError::bad_request(
            Some("tenant"),
            format!(
                "invalid tenant id {tenant:?}: use lowercase letters, digits, '-' and '_' (at most 64, starting with a letter or digit)"
            ),
        ));
    }
    let v = writing(&s, move |b| b.add_credits(&tenant, &body, key.as_deref())).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn extensions(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>, ApiError> {
    let _ = auth;
    blocking(&s, |b| b.extensions()).await.map(Json)
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

fn check_profile_field(body: &CreateSandbox) -> Result<(), ApiError> {
    if body.profile.trim().is_empty() {
        return Err(ApiError::bad_request(
            Some("profile"),
            "profile must name a profile, e.g. \"burst-sandbox\"",
        ));
    }
    Ok(())
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
