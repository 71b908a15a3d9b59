//! Who pays and who asks: the tenant id, checked once where it enters (a CLI argument, a
//! config key, a URL, a token's owner), and the scope a use case runs in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A tenant id: `[a-z0-9][a-z0-9_-]*`, at most 64 characters. Only [`TenantId::parse`]
/// makes one, so a value of this type is always valid.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "acme")]
pub struct TenantId(String);

/// A string that is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid tenant id {0:?}: use lowercase letters, digits, '-' and '_' (at most 64, starting with a letter or digit)"
)]
pub struct InvalidTenant(pub String);

impl TenantId {
    /// Checks and wraps `s`.
    pub fn parse(s: &str) -> Result<Self, InvalidTenant> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidTenant(s.to_owned()))
        }
    }

    /// Whether `s` is a valid tenant id (the one rule, used by every layer).
    pub fn is_valid(s: &str) -> bool {
        let mut chars = s.chars();
        s.len() <= 64
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    }

    /// The id, e.g. `acme`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantId {
    type Err = InvalidTenant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenant;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// On whose behalf a use case runs. A tenant sees and touches only its own sandboxes and
/// credits (another tenant's sandbox is "not found"); the operator (the `sandboxer` CLI on
/// the state folder, the admin token) sees every tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One tenant.
    Tenant(TenantId),
    /// The operator.
    Operator,
}

impl Scope {
    /// The tenant, when the scope is one.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Scope::Tenant(t) => Some(t),
            Scope::Operator => None,
        }
    }

    /// Whether the operator's view (files, containment records, skipped files) is shown.
    pub fn is_operator(&self) -> bool {
        matches!(self, Scope::Operator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids() {
        for ok in ["acme", "a", "0-x_y", &"a".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-a", "_a", "a b", "a.b", &"a".repeat(65), "é"] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
        let e = TenantId::parse("Acme").unwrap_err().to_string();
        assert!(e.starts_with("invalid tenant id \"Acme\""), "{e}");
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"acme\"");
        assert!(serde_json::from_str::<TenantId>("\"Not A Tenant\"").is_err());
    }
}
