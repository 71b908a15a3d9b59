//! What routing needs to know about loaded extensions, as a small trait so the router
//! does not depend on how the runtime stores them.

use crate::domain::{Capacity, Cost, ExtensionError, ExtensionInfo, KeyUse, SandboxRequest};

/// Whose provider key a candidate's calls would carry for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// The tenant's, the operator's, or none at all.
    pub key: KeyUse,
    /// Whether the extension takes tenants' own keys (`byok` in its sidecar, with OpenBao).
    pub takes_keys: bool,
    /// Why the tenant's key could not be looked up (OpenBao unreachable, never a value).
    pub error: Option<String>,
}

impl KeyView {
    /// An extension with no secrets, taking no tenants' keys.
    pub fn none() -> Self {
        Self {
            key: KeyUse::None,
            takes_keys: false,
            error: None,
        }
    }
}

/// What routing needs to know about loaded extensions.
pub trait ExtensionView {
    /// Ids of the loaded extensions, in a stable order.
    fn extension_ids(&self) -> Vec<String>;
    /// The effective info of `id`; `None` when it is not loaded.
    fn info(&self, id: &str) -> Option<&ExtensionInfo>;
    /// `estimate-cost` on `id`.
    fn estimate_cost(&self, id: &str, req: &SandboxRequest) -> Result<Cost, ExtensionError>;
    /// `capacity` on `id` (called only for extensions declaring the capacity capability).
    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError>;
    /// Sandboxes the host currently runs on `id`.
    fn in_use(&self, id: &str) -> u32;
    /// Whose key `id` would use for `req` (its tenant and `byok`); by default none (an
    /// extension without secrets).
    fn keys(&self, id: &str, req: &SandboxRequest) -> KeyView {
        let _ = (id, req);
        KeyView::none()
    }
}
