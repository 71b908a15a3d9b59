//! Bearer tokens: which tenant (or the admin) a request speaks for, and the extractor
//! that answers 401/403 in the API's error shape.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time against every
//! known digest, so neither the comparison's timing nor a log line can reveal one. Where
//! they come from (the config, files, the environment, generated) is `server`'s concern.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::domain::{Scope, TenantId};

/// Who a request speaks for.
#[derive(Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant: sees and touches only its own sandboxes and credits.
    Tenant(TenantId),
    /// The operator: may add credits to any tenant.
    Admin,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Tenant(t) => write!(f, "tenant:{t}"),
            Principal::Admin => f.write_str("admin"),
        }
    }
}

/// The known tokens, as digests.
#[derive(Clone, Default)]
pub struct TokenSet {
    entries: Vec<([u8; 32], Principal)>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print digests either: they identify tokens.
        let who: Vec<_> = self.entries.iter().map(|(_, p)| p).collect();
        f.debug_struct("TokenSet")
            .field("principals", &who)
            .finish()
    }
}

impl TokenSet {
    /// An empty set (every request is refused with 401).
    pub fn new() -> Self {
        Self::default()
    }

    /// Who already holds `token`, if anyone.
    pub fn holder(&self, token: &str) -> Option<&Principal> {
        let d = digest(token);
        self.entries.iter().find(|(e, _)| *e == d).map(|(_, p)| p)
    }

    /// Adds a token for `who`.
    pub fn insert(&mut self, token: &str, who: Principal) {
        self.entries.push((digest(token), who));
    }

    /// Tenants that have a token.
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut t: Vec<TenantId> = self
            .entries
            .iter()
            .filter_map(|(_, p)| match p {
                Principal::Tenant(t) => Some(t.clone()),
                Principal::Admin => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// The principal a presented token belongs to. Looks at every entry whatever the
    /// outcome, and compares digests without early exit.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let d = digest(presented);
        let mut found = None;
        for (known, who) in &self.entries {
            let diff = known
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(who.clone());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of `Authorization: Bearer <token>`, or 401 saying what to send.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing bearer token: send the header Authorization: Bearer <token>",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("malformed Authorization header: expected Bearer <token>")
        })
}

/// The caller, from `Authorization: Bearer <token>`. The token is never logged.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// The tenant, or 403 for the admin token on a tenant's endpoint.
    pub fn tenant(&self) -> Result<TenantId, ApiError> {
        match &self.0 {
            Principal::Tenant(t) => Ok(t.clone()),
            Principal::Admin => Err(ApiError::forbidden(
                "this endpoint acts for a tenant: use a tenant's token, not the admin token",
            )),
        }
    }

    /// Ok for the admin, 403 for a tenant.
    pub fn admin(&self) -> Result<(), ApiError> {
        match &self.0 {
            Principal::Admin => Ok(()),
            Principal::Tenant(_) => Err(ApiError::forbidden("this endpoint needs the admin token")),
        }
    }

    /// The scope a read runs in: a tenant's own, or the operator's for the admin.
    pub fn scope(&self) -> Scope {
        match &self.0 {
            Principal::Tenant(t) => Scope::Tenant(t.clone()),
            Principal::Admin => Scope::Operator,
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        match state.tokens.authenticate(token) {
            Some(p) => Ok(Auth(p)),
            None => Err(ApiError::unauthorized("invalid token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_only_known_tokens() {
        let a = TenantId::parse("a").unwrap();
        let mut s = TokenSet::new();
        s.insert("tenant-a-token-0000", Principal::Tenant(a.clone()));
        s.insert("admin-token-000000", Principal::Admin);
        assert_eq!(
            s.authenticate("tenant-a-token-0000"),
            Some(Principal::Tenant(a))
        );
        assert_eq!(s.authenticate("admin-token-000000"), Some(Principal::Admin));
        assert_eq!(s.authenticate("tenant-a-token-000"), None);
        assert_eq!(s.authenticate(""), None);
        assert!(!format!("{s:?}").contains("token-0000"));
    }
}
