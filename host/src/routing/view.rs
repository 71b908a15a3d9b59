//! What routing needs to know about loaded extensions, as a small trait so the router
//! does not depend on how the runtime stores them.

use crate::domain::{Capacity, Cost, ExtensionError, ExtensionInfo, SandboxRequest};

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
}
