//! The manager's view of extensions: the calls it sequences, and a registry of loaded
//! extensions by id and by version, which routing sees through [`ExtensionView`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;

use std::time::Duration;

use crate::domain::{
    BackendError, BackendStatus, Capacity, Cost, Created, ExecOutput, ExecRequest, ExtensionError,
    ExtensionInfo, Fault, FileChunk, FileEntry, Function, ProcessOutput, SandboxContext,
    SandboxRequest, Usage,
};
use crate::routing::ExtensionView;
use crate::routing::view::KeyView;
use crate::runtime::Extension;

/// One loaded extension, as the manager calls it. Implemented for the runtime's
/// extensions (`runtime::Extension`); a trait so the manager's sequencing does not depend
/// on how calls are executed.
pub trait Backend: Send + Sync {
    /// The extension id.
    fn id(&self) -> &str;
    /// Which code and terms created a sandbox: a digest of the component and its
    /// resolved spec (`Extension::version`).
    fn version(&self) -> &str;
    /// Its effective info.
    fn info(&self) -> &ExtensionInfo;
    /// `estimate-cost`.
    fn estimate_cost(&self, req: &SandboxRequest) -> Result<Cost, ExtensionError>;
    /// `create`.
    fn create(&self, req: &SandboxRequest) -> Result<Created, ExtensionError>;
    /// `status`.
    fn status(&self, ctx: &SandboxContext) -> Result<BackendStatus, ExtensionError>;
    /// `destroy`.
    fn destroy(&self, ctx: &SandboxContext) -> Result<Usage, ExtensionError>;
    /// `meter-actual`.
    fn meter_actual(&self, req: &SandboxRequest, usage: &Usage) -> Result<Cost, ExtensionError>;
    /// `capacity`.
    fn capacity(&self) -> Result<Capacity, ExtensionError>;
    /// The loaded component behind it, when it is one: what the registry's listing and
    /// hot reload read (file, sidecar settings, compiled-code source, trap record).
    fn component(&self) -> Option<&Extension> {
        None
    }

    // Running code and moving files (`process` and `files`, contract 0.1.1). By default
    // they go to the component behind the backend; without one they are `unsupported`.

    /// `process.exec`.
    fn exec(&self, ctx: &SandboxContext, req: &ExecRequest) -> Result<ExecOutput, ExtensionError> {
        on_component(self, Function::Exec, |e| e.exec(ctx, req))
    }
    /// `process.start`: the backend's process id.
    fn start(&self, ctx: &SandboxContext, req: &ExecRequest) -> Result<String, ExtensionError> {
        on_component(self, Function::Start, |e| e.start(ctx, req))
    }
    /// `process.read-output`.
    fn read_output(
        &self,
        ctx: &SandboxContext,
        process_id: &str,
        cursor: &str,
        wait: Duration,
        max_bytes: u32,
    ) -> Result<ProcessOutput, ExtensionError> {
        on_component(self, Function::ReadOutput, |e| {
            e.read_output(ctx, process_id, cursor, wait, max_bytes)
        })
    }
    /// `process.kill`.
    fn kill(&self, ctx: &SandboxContext, process_id: &str) -> Result<(), ExtensionError> {
        on_component(self, Function::Kill, |e| e.kill(ctx, process_id))
    }
    /// `files.write-file`.
    fn write_file(
        &self,
        ctx: &SandboxContext,
        path: &str,
        data: &[u8],
        append: bool,
    ) -> Result<(), ExtensionError> {
        on_component(self, Function::WriteFile, |e| {
            e.write_file(ctx, path, data, append)
        })
    }
    /// `files.read-file`.
    fn read_file(
        &self,
        ctx: &SandboxContext,
        path: &str,
        offset: u64,
        max_bytes: u32,
    ) -> Result<FileChunk, ExtensionError> {
        on_component(self, Function::ReadFile, |e| {
            e.read_file(ctx, path, offset, max_bytes)
        })
    }
    /// `files.list-files`.
    fn list_files(
        &self,
        ctx: &SandboxContext,
        path: &str,
    ) -> Result<Vec<FileEntry>, ExtensionError> {
        on_component(self, Function::ListFiles, |e| e.list_files(ctx, path))
    }
}

/// `call` on the component behind `backend`, or `unsupported` when there is none.
fn on_component<B: Backend + ?Sized, T>(
    backend: &B,
    function: Function,
    call: impl FnOnce(&Extension) -> Result<T, ExtensionError>,
) -> Result<T, ExtensionError> {
    match backend.component() {
        Some(e) => call(e),
        None => Err(unsupported(backend.id(), function)),
    }
}

fn unsupported(id: &str, function: Function) -> ExtensionError {
    ExtensionError {
        extension: id.to_owned(),
        function,
        fault: Fault::Backend(BackendError::Unsupported(format!(
            "extension {id:?} does not implement {}",
            function.interface()
        ))),
    }
}

#[derive(Default)]
struct Inner {
    current: BTreeMap<String, Arc<dyn Backend>>,
    // Every version ever loaded in this process, so a sandbox created on a version that
    // was since replaced is destroyed and metered by that version.
    by_version: HashMap<(String, String), Arc<dyn Backend>>,
}

/// The loaded extensions; cheap to share, safe to swap while serving (hot reload).
#[derive(Default)]
pub struct Extensions {
    inner: RwLock<Inner>,
}

impl Extensions {
    /// Adds or replaces one extension; earlier versions stay reachable by version for
    /// the sandboxes created on them.
    pub fn upsert(&self, backend: Arc<dyn Backend>) {
        let mut inner = self.inner.write();
        inner.by_version.insert(
            (backend.id().to_owned(), backend.version().to_owned()),
            backend.clone(),
        );
        inner.current.insert(backend.id().to_owned(), backend);
    }

    /// Stops routing to `id` (its versions stay reachable for existing sandboxes).
    pub fn remove(&self, id: &str) {
        self.inner.write().current.remove(id);
    }

    /// The current version of `id`.
    pub fn get(&self, id: &str) -> Option<Arc<dyn Backend>> {
        self.inner.read().current.get(id).cloned()
    }

    /// The extension that should serve an existing sandbox: the exact version that
    /// created it if this process has it, else the current version of the same id.
    pub fn for_sandbox(&self, id: &str, version: Option<&str>) -> Option<Arc<dyn Backend>> {
        let inner = self.inner.read();
        if let Some(v) = version
            && let Some(b) = inner.by_version.get(&(id.to_owned(), v.to_owned()))
        {
            return Some(b.clone());
        }
        inner.current.get(id).cloned()
    }

    /// Forgets the versions that are neither current nor in `live` (the `(id, version)`
    /// of every sandbox not yet destroyed), so a host whose extensions are edited often
    /// does not keep every old component and its instances forever. Returns how many.
    pub fn retain_versions(&self, live: &HashSet<(String, String)>) -> usize {
        let mut inner = self.inner.write();
        let current: HashSet<(String, String)> = inner
            .current
            .values()
            .map(|b| (b.id().to_owned(), b.version().to_owned()))
            .collect();
        let before = inner.by_version.len();
        inner
            .by_version
            .retain(|key, _| current.contains(key) || live.contains(key));
        before - inner.by_version.len()
    }

    /// How many versions are kept (current ones and those live sandboxes use).
    pub fn version_count(&self) -> usize {
        self.inner.read().by_version.len()
    }

    /// Ids currently routed to.
    pub fn ids(&self) -> Vec<String> {
        self.inner.read().current.keys().cloned().collect()
    }

    /// A snapshot for one routing decision, with the sandboxes in use per extension.
    pub fn view(&self, in_use: HashMap<String, u32>) -> RouteView {
        RouteView {
            current: self.inner.read().current.clone(),
            in_use,
        }
    }
}

/// What routing sees of the loaded extensions for one decision: a snapshot of the
/// registry plus the manager's in-use counts (durable, so every process agrees).
pub struct RouteView {
    current: BTreeMap<String, Arc<dyn Backend>>,
    in_use: HashMap<String, u32>,
}

impl ExtensionView for RouteView {
    fn extension_ids(&self) -> Vec<String> {
        self.current.keys().cloned().collect()
    }

    fn info(&self, id: &str) -> Option<&ExtensionInfo> {
        self.current.get(id).map(|b| b.info())
    }

    fn estimate_cost(&self, id: &str, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        match self.current.get(id) {
            Some(b) => b.estimate_cost(req),
            None => Err(not_loaded(id, Function::EstimateCost)),
        }
    }

    fn capacity(&self, id: &str) -> Result<Capacity, ExtensionError> {
        match self.current.get(id) {
            Some(b) => b.capacity(),
            None => Err(not_loaded(id, Function::Capacity)),
        }
    }

    fn in_use(&self, id: &str) -> u32 {
        self.in_use.get(id).copied().unwrap_or(0)
    }

    fn keys(&self, id: &str, req: &SandboxRequest) -> KeyView {
        match self.current.get(id).and_then(|b| b.component()) {
            Some(ext) => crate::routing::loaded::key_view(ext, req),
            None => KeyView::none(),
        }
    }
}

fn not_loaded(id: &str, function: Function) -> ExtensionError {
    ExtensionError {
        extension: id.to_owned(),
        function,
        fault: Fault::Backend(BackendError::Unavailable("not loaded".into())),
    }
}

/// The runtime's extensions, called directly.
impl Backend for Extension {
    fn id(&self) -> &str {
        Extension::id(self)
    }
    fn version(&self) -> &str {
        Extension::version(self)
    }
    fn info(&self) -> &ExtensionInfo {
        Extension::info(self)
    }
    fn estimate_cost(&self, req: &SandboxRequest) -> Result<Cost, ExtensionError> {
        Extension::estimate_cost(self, req)
    }
    fn create(&self, req: &SandboxRequest) -> Result<Created, ExtensionError> {
        Extension::create(self, req)
    }
    fn status(&self, ctx: &SandboxContext) -> Result<BackendStatus, ExtensionError> {
        Extension::status(self, ctx)
    }
    fn destroy(&self, ctx: &SandboxContext) -> Result<Usage, ExtensionError> {
        Extension::destroy(self, ctx)
    }
    fn meter_actual(&self, req: &SandboxRequest, usage: &Usage) -> Result<Cost, ExtensionError> {
        Extension::meter_actual(self, req, usage)
    }
    fn capacity(&self) -> Result<Capacity, ExtensionError> {
        Extension::capacity(self)
    }
    fn component(&self) -> Option<&Extension> {
        Some(self)
    }
}
