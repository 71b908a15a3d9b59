//! [`ExtensionView`] over the runtime's loaded extensions, plus the manager's in-use
//! counts: the thin glue between routing and the runtime.

use std::collections::HashMap;
use std::sync::Arc;

use super::view::{ExtensionView, KeyView};
use crate::domain::{
    BackendError, Capacity, Cost, ExtensionError, ExtensionInfo, Fault, Function, KeyUse,
    SandboxRequest,
};
use crate::runtime::Extension;

/// Whose key `ext` would use for `req`, as routing sees it.
pub fn key_view(ext: &Extension, req: &SandboxRequest) -> KeyView {
    let takes_keys = !ext.byok_fields().is_empty();
    match ext.key_use(req) {
        Ok(key) => KeyView {
            key,
            takes_keys,
            error: None,
        },
        Err(e) => KeyView {
            key: KeyUse::Operator,
            takes_keys,
            error: Some(e.to_string()),
        },
    }
}

/// The loaded extensions as routing sees them.
#[derive(Clone, Default)]
pub struct LoadedExtensions {
    extensions: Vec<Arc<Extension>>,
    /// Index into `extensions` by id (the first extension of an id wins).
    by_id: HashMap<String, usize>,
    in_use: HashMap<String, u32>,
}

impl std::fmt::Debug for LoadedExtensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedExtensions")
            .field("ids", &self.extension_ids())
            .field("in_use", &self.in_use)
            .finish()
    }
}

impl LoadedExtensions {
    /// A view over these extensions, none in use.
    pub fn new(extensions: Vec<Arc<Extension>>) -> Self {
        let mut by_id = HashMap::with_capacity(extensions.len());
        for (i, ext) in extensions.iter().enumerate() {
            by_id.entry(ext.id().to_owned()).or_insert(i);
        }
        Self {
            extensions,
            by_id,
            in_use: HashMap::new(),
        }
    }

    /// Sets how many sandboxes the host runs on `id` (the manager's count).
    pub fn set_in_use(&mut self, id: &str, count: u32) {
        self.in_use.insert(id.to_owned(), count);
    }

    /// The extension with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Extension>> {
        self.by_id.get(id).map(|&i| &self.extensions[i])
    }

    fn not_loaded(id: &str, function: Function) -> ExtensionError {
        ExtensionError {
            extension: id.to_owned(),
            function,
            fault: Fault::Backend(BackendError::NotFound(format!(
                "no extension {id:?} is loaded"
            ))),
        }
    }
}

impl ExtensionView for LoadedExtensions {
    fn extension_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.by_id.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn info(&self, id: &str) -> Option<&ExtensionInfo> {
        self.get(id).map(|e| e.info())
    }

    fn estimate_cost(&self, id: &str, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        match self.get(id) {
            Some(e) => e.estimate_cost(req),
            None => Err(Self::not_loaded(id, Function::EstimateCost)),
        }
    }

    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError> {
        match self.get(id) {
            Some(e) => e.capacity(),
            None => Err(Self::not_loaded(id, Function::Capacity)),
        }
    }

    fn in_use(&self, id: &str) -> u32 {
        self.in_use.get(id).copied().unwrap_or(0)
    }

    fn keys(&self, id: &str, req: &SandboxRequest) -> KeyView {
        self.get(id)
            .map_or_else(KeyView::none, |e| key_view(e, req))
    }
}
