//! Sandbox use cases: create, get, list, destroy, and explain how a request would be
//! routed. A tenant's scope sees only its own sandboxes (another tenant's id is "not
//! found"); the operator's sees all.

use rust_decimal::Decimal;
use serde::Serialize;

use super::paging::{self, PageRequest};
use super::{App, AppError};
use crate::domain::{
    ByokMode, CandidateReport, Capability, Currency, RouteDecision, SandboxRequest, SandboxSpec,
    SandboxState, SandboxStatus, Scope, Strategy, TenantId,
};

/// One page of sandboxes, newest first, and the cursor of the next page (`None`: the
/// last). `GET /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SandboxPage {
    /// The sandboxes.
    pub sandboxes: Vec<SandboxStatus>,
    /// Pass as `after` for the next page.
    pub next: Option<String>,
}

/// The profile a request was routed by, as `route explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProfileSummary {
    /// Profile id.
    pub id: String,
    /// One line for humans.
    pub description: String,
    /// How candidates are ordered.
    pub strategy: Strategy,
    /// Whether a retryable failure moves on to the next candidate.
    pub fallback: bool,
    /// How many candidates one create may try.
    pub max_attempts: usize,
    /// Candidates above this price per hour are dropped.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub max_cost_per_hour: Option<Decimal>,
    /// The currency the profile pays in.
    pub currency: Currency,
    /// What a backend must be able to do to serve it (`exec`, `files`…).
    pub requires: Vec<Capability>,
}

/// How a request would be routed right now: the same decision a create would take, with
/// every candidate's estimate, health, capacity and fate. Nothing is created or held.
/// `POST /v1/route/explain`, `sandboxer route explain`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    /// Whether a create would find an extension.
    pub routable: bool,
    /// The profile routed by.
    pub profile: ProfileSummary,
    /// The request as built from the profile and the overrides.
    pub request: SandboxRequest,
    /// Whether tenants' own keys are preferred, required or never used (the request's
    /// `byok`, else the profile's); each candidate's `key` says whose key it would use.
    pub byok: ByokMode,
    /// The decision, when routable: whom a create tries, in order, and every candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<RouteDecision>,
    /// Why nothing can serve it, when not routable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every candidate and why it was dropped, when not routable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<CandidateReport>>,
    /// Profile candidates no loaded extension provides.
    pub warnings: Vec<String>,
}

impl Explanation {
    /// Every candidate, routable or not.
    pub fn all_candidates(&self) -> &[CandidateReport] {
        match (&self.decision, &self.candidates) {
            (Some(d), _) => &d.candidates,
            (None, Some(c)) => c,
            (None, None) => &[],
        }
    }
}

impl App {
    /// Creates a sandbox for `tenant` from `spec`: routes it, holds the estimate on the
    /// tenant's credits, calls the chosen extension (failing over on retryable errors).
    /// The answer is durable. With an `idempotency_key` (scoped to the tenant), a repeat
    /// returns the first sandbox and charges nothing twice, on either surface.
    pub fn create_sandbox(
        &self,
        tenant: &TenantId,
        spec: &SandboxSpec,
        idempotency_key: Option<&str>,
    ) -> Result<SandboxStatus, AppError> {
        let st = self
            .manager()?
            .create(tenant.as_str(), spec, idempotency_key)?;
        Ok(st)
    }

    /// One sandbox.
    pub fn sandbox(&self, scope: &Scope, id: &str) -> Result<SandboxStatus, AppError> {
        Ok(self.manager()?.status(tenant_of(scope), id)?)
    }

    /// One page of sandboxes, newest first, optionally in one state.
    pub fn list_sandboxes(
        &self,
        scope: &Scope,
        state: Option<SandboxState>,
        page: &PageRequest,
    ) -> Result<SandboxPage, AppError> {
        let after = match &page.after {
            None => None,
            Some(c) => Some(paging::sandbox_after(scope, c)?),
        };
        let list =
            self.manager()?
                .list_page(tenant_of(scope), state, after.as_ref(), page.limit)?;
        Ok(SandboxPage {
            sandboxes: list.items,
            next: list.next.map(|k| paging::sandbox_cursor(scope, &k)),
        })
    }

    /// Every sandbox (at most `limit`), newest first, read page by page; and whether more
    /// follow.
    pub fn all_sandboxes(
        &self,
        scope: &Scope,
        state: Option<SandboxState>,
        limit: Option<usize>,
    ) -> Result<(Vec<SandboxStatus>, bool), AppError> {
        let manager = self.manager()?;
        paging::collect(limit, |after, n| {
            let page = manager.list_page(tenant_of(scope), state, after, n)?;
            Ok((page.items, page.next))
        })
    }

    /// Destroys a sandbox, meters it and settles its credits (idempotent: a destroyed
    /// sandbox answers its settlement again and charges nothing).
    pub fn destroy_sandbox(&self, scope: &Scope, id: &str) -> Result<SandboxStatus, AppError> {
        Ok(self.manager()?.destroy(tenant_of(scope), id)?)
    }

    /// How `spec` would be routed for `tenant` right now.
    pub fn explain_route(
        &self,
        tenant: &TenantId,
        spec: &SandboxSpec,
    ) -> Result<Explanation, AppError> {
        let lifecycle = self.lifecycle()?;
        let manager = &lifecycle.manager;
        let profile = manager.profile_named(&spec.profile)?;
        let (request, decision) = manager.explain(tenant.as_str(), spec)?;
        let warnings = lifecycle
            .warnings
            .lock()
            .iter()
            .filter(|w| w.profile == profile.id)
            .map(|w| w.message.clone())
            .collect();
        let route = &profile.route;
        let summary = ProfileSummary {
            id: profile.id.clone(),
            description: profile.description.clone(),
            strategy: route.strategy,
            fallback: route.fallback,
            max_attempts: route.attempt_limit(),
            max_cost_per_hour: route.max_cost_per_hour,
            currency: route.currency.clone(),
            requires: profile.requires.clone(),
        };
        Ok(match decision {
            Ok(d) => Explanation {
                routable: true,
                profile: summary,
                byok: request.byok,
                request,
                decision: Some(d),
                reason: None,
                candidates: None,
                warnings,
            },
            Err(e) => Explanation {
                routable: false,
                profile: summary,
                byok: request.byok,
                request,
                decision: None,
                reason: Some(e.to_string()),
                candidates: Some(e.candidates().to_vec()),
                warnings,
            },
        })
    }
}

fn tenant_of(scope: &Scope) -> Option<&str> {
    scope.tenant().map(TenantId::as_str)
}
