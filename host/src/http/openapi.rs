//! The OpenAPI 3.1 document of the HTTP API, derived from the handlers' own types
//! (`utoipa`): served at `GET /v1/openapi.json` (no token), printed by `sandboxer-host
//! openapi`, and checked in as `docs/openapi.json` (a test fails when they differ).
//!
//! Regenerate the checked-in copy after changing a handler or a body type:
//! `cargo run -q --bin sandboxer-host -- openapi > docs/openapi.json`.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use once_cell::sync::Lazy;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorObject};
use super::{AddCredits, session};
use crate::app::{ExecAnswer, ExecEvent};

/// `GET /healthz`'s body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct HealthAnswer {
    /// `ok`, or `draining` once shutdown began.
    #[schema(example = "ok")]
    pub status: String,
    /// The host's version (while serving).
    #[schema(required = false, example = "0.1.0")]
    pub version: Option<String>,
}

/// The document's root: every endpoint of `http::router`, its bodies and auth schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "sandboxer-host",
        description = "The HTTP API of sandboxer-host: code sandboxes routed between backends \
            and billed from prepaid credits. Every answer is JSON unless said otherwise; every \
            error is `{\"error\": {\"code\", \"message\", …details}}` (docs/api.md). Tenants \
            authenticate with their bearer token, the operator with the admin token.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        super::healthz,
        super::metrics_text,
        serve,
        super::create_sandbox,
        super::list_sandboxes,
        super::get_sandbox,
        super::destroy_sandbox,
        session::exec,
        session::get_root,
        session::get_file,
        session::put_file,
        super::explain_route,
        super::credits,
        super::credit_entries,
        super::add_credits,
        super::extensions,
        super::overview,
        super::keys::list_keys,
        super::keys::set_key,
        super::keys::remove_key,
    ),
    components(schemas(ErrorBody, ErrorObject, AddCredits, ExecAnswer, ExecEvent)),
    modifiers(&BearerTokens),
    tags(
        (name = "sandboxes", description = "Create, list, read and destroy sandboxes; explain routing."),
        (name = "exec and files", description = "Run commands in a running sandbox, move its files."),
        (name = "credits", description = "A tenant's balances and statement."),
        (name = "keys", description = "A tenant's own provider keys (BYOK), by fingerprint."),
        (name = "extensions", description = "The loaded extensions and their health."),
        (name = "admin", description = "The operator's endpoints (admin token)."),
        (name = "meta", description = "Health, metrics and this document."),
    )
)]
pub struct ApiDoc;

/// The bearer schemes: a tenant's token, the admin token, the `[metrics]` token.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "tenant",
                "A tenant's token (`[tenants.NAME] token` in sandboxer.toml, or a file or \
                 environment variable it names): acts for that tenant only.",
            ),
            (
                "admin",
                "The operator's token (`admin_token`): adds credits, sees every tenant and \
                 every extension's details.",
            ),
            (
                "metrics",
                "A `[metrics]` token: reads /metrics only (the admin token also does).",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// The document as pretty JSON with a final newline: what `GET /v1/openapi.json` answers,
/// `sandboxer-host openapi` prints and `docs/openapi.json` holds.
pub fn document_json() -> String {
    static JSON: Lazy<String> = Lazy::new(|| {
        let mut s = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises");
        s.push('\n');
        s
    });
    JSON.clone()
}

/// The document (OpenAPI 3.1, JSON). No token needed.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    security(()),
    responses(
        (status = 200, description = "This document.", content_type = "application/json")
    )
)]
pub(super) async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::document_json;

    const REGENERATE: &str = "cargo run -q --bin sandboxer-host -- openapi > docs/openapi.json";

    fn document() -> Value {
        serde_json::from_str(&document_json()).expect("the document is JSON")
    }

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == document_json(),
            "docs/openapi.json differs from the document the host serves at \
             GET /v1/openapi.json (a handler or a body type changed): regenerate it with\n  \
             {REGENERATE}\nand commit it"
        );
    }

    /// Every `.route(PATH, …)` of `router` (its source: axum cannot list a router's
    /// routes), with the methods its handlers answer, is in the document: a new handler
    /// without `#[utoipa::path]` (or not listed in `ApiDoc`) fails here.
    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = document();
        let paths = doc["paths"].as_object().expect("paths");
        let mut missing = Vec::new();
        let routes = routes_in(include_str!("mod.rs"));
        assert!(routes.len() >= 17, "found only {routes:?}");
        for (path, methods) in &routes {
            // `{*path}` is axum's wildcard, `{path}` in OpenAPI; `…/files/` is `…/files`.
            let key = path.replace("{*", "{");
            let key = key.strip_suffix('/').unwrap_or(&key);
            assert!(!methods.is_empty(), "no method found for {path}");
            for m in methods {
                if paths.get(key).and_then(|p| p.get(m.as_str())).is_none() {
                    missing.push(format!("{} {key}", m.to_uppercase()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}; add #[utoipa::path] to \
             their handlers, list them in ApiDoc (host/src/http/openapi.rs), then\n  {REGENERATE}"
        );
        // And nothing documented that the router does not serve.
        let served: BTreeSet<String> = routes
            .iter()
            .map(|(p, _)| p.replace("{*", "{").trim_end_matches('/').to_owned())
            .collect();
        for p in paths.keys() {
            assert!(served.contains(p), "{p} is documented but not routed");
        }
    }

    /// `(path, methods)` of each `.route("…", …)` call in `src`.
    fn routes_in(src: &str) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(at) = rest.find(".route(") {
            let after = rest[at + ".route(".len()..].trim_start();
            let Some(after) = after.strip_prefix('"') else {
                panic!(
                    "a .route( whose path is not a literal: {}",
                    &after[..40.min(after.len())]
                );
            };
            let end = after.find('"').expect("a closing quote");
            let path = after[..end].to_owned();
            // The call's text: up to the parenthesis that closes `.route(`.
            let mut depth = 1usize;
            let mut len = 0;
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            len = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &after[end..len];
            let methods = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .filter(|m| {
                    call.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0 || {
                            let b = call.as_bytes()[i - 1];
                            !(b.is_ascii_alphanumeric() || b == b'_')
                        }
                    })
                })
                .map(str::to_owned)
                .collect();
            out.push((path, methods));
            rest = &after[len..];
        }
        out
    }

    #[test]
    fn every_operation_names_its_auth_and_its_errors() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        for s in ["tenant", "admin", "metrics"] {
            assert_eq!(schemes[s]["scheme"], "bearer", "{s}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["security"].is_array(),
                    "{method} {path} says nothing about auth"
                );
                let responses = op["responses"].as_object().unwrap();
                let open = op["security"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_object().is_some_and(|o| o.is_empty()));
                if !open {
                    assert!(
                        responses.contains_key("401"),
                        "{method} {path} lacks its 401"
                    );
                }
                for (status, r) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &r["content"]["application/json"]["schema"]["$ref"];
                        let ok = schema == "#/components/schemas/ErrorBody"
                            || (path == "/healthz" && status == "503");
                        assert!(ok, "{method} {path} {status} is not the error shape");
                    }
                }
            }
        }
    }
}
