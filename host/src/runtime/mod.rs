//! The WebAssembly runtime: one wasmtime engine, extension discovery and loading, the
//! precompiled-artifact cache, per-call limits, and a typed API over the bindings.
//! Knows nothing of routing, payments or the manager.
//!
//! ```no_run
//! # use sandboxer_host::layers::runtime::{Runtime, RuntimeConfig};
//! let runtime = Runtime::new(RuntimeConfig::with_cache_dir(".sandboxer/cache"))?;
//! let report = runtime.load_dir("extensions".as_ref())?;
//! for ext in &report.loaded {
//!     println!("{} {}", ext.id(), ext.info().kind);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};

pub mod bindings;
pub mod cache;
pub mod conformance;
pub mod engine;
pub mod extension;
// Some accessors of resolved grants are not called by the host (they were the runtime's
// public API before the crate's face shrank); kept for the process and files grants
// being added to the runtime.
pub mod grant_policy;
#[allow(dead_code)]
pub mod grants;
pub mod h2;
pub mod limits;
pub mod link;
pub mod outbound;
pub mod sidecar;
pub mod waits;
/// The contract mirror types, which live in the domain (routing, payments, events and
/// the surfaces speak them too); the runtime's own code names them `types::…`.
pub use crate::domain::contract as types;

pub use extension::{ArtifactSource, Extension, Health, PoolPolicy, Quarantine, QuarantinePolicy};
pub use limits::CallLimits;
pub use sidecar::{ExtensionSpec, Overlay, Skipped};

use bindings::{BACKEND_EXPORT, BACKEND_FUNCTIONS, ExportIndices, OptionalExports};
use cache::{ArtifactCache, Lookup};
pub use cache::{Pruned, PrunedFile};
use engine::EpochTicker;
use extension::ExtensionOptions;
use limits::StoreData;
use types::ExtensionError;

/// Called before and after compiling a component that is not in the cache (compiling a
/// large component takes seconds; surfaces show progress).
pub type CompileHook = Arc<dyn Fn(&CompileEvent) + Send + Sync>;

/// A compile starting or finishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileEvent {
    /// About to compile `file` (`size_bytes` of wasm).
    Started { file: PathBuf, size_bytes: u64 },
    /// Done (successfully or not) after `elapsed`.
    Finished { file: PathBuf, elapsed: Duration },
}

/// How a runtime is set up.
#[derive(Clone, Default)]
pub struct RuntimeConfig {
    /// Folder of precompiled artifacts (`Settings::cache_dir()`); `None` disables the
    /// disk cache (every process compiles).
    pub cache_dir: Option<PathBuf>,
    /// Default limits; a sidecar's `memory_limit_mib` / `call_timeout_ms` override them.
    pub limits: CallLimits,
    /// Warm instances per extension.
    pub pool: PoolPolicy,
    /// When an extension that keeps trapping is refused calls.
    pub quarantine: QuarantinePolicy,
    /// Progress of compiles not served by the cache.
    pub on_compile: Option<CompileHook>,
    /// Where `{ openbao = … }` secrets are read (`None`: such an extension is skipped).
    pub openbao: Option<Arc<crate::secrets::OpenBao>>,
    /// What sidecars may grant themselves, and the grants the host config owns.
    pub grant_policy: grant_policy::GrantPolicy,
}

impl RuntimeConfig {
    /// Defaults with the precompiled-artifact cache in `dir`.
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: Some(dir.into()),
            ..Self::default()
        }
    }
}

impl fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("cache_dir", &self.cache_dir)
            .field("limits", &self.limits)
            .field("pool", &self.pool)
            .field("quarantine", &self.quarantine)
            .field("on_compile", &self.on_compile.as_ref().map(|_| "…"))
            .field("openbao", &self.openbao)
            .field("grant_policy", &self.grant_policy)
            .finish()
    }
}

/// The runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[source] std::io::Error),
    #[error("cannot read the extensions folder {}: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prune the compile cache {}: {source}", dir.display())]
    Cache {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a component could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LoadFailure {
    /// The sidecar or file name is unusable.
    #[error("{reason}")]
    Spec { reason: String },
    /// A secret could not be read now (OpenBao unreachable, sealed, or the secret not
    /// written yet): loading again later may succeed. Names the secret, never its value.
    #[error("{reason} (retried)")]
    SecretUnavailable { reason: String },
    /// The file could not be read.
    #[error("cannot read: {reason}")]
    Read { reason: String },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component: build it as a component of world \
         sandboxer:extension/backend-extension (e.g. `cargo build --target wasm32-wasip2`)"
    )]
    CoreModule,
    /// A WebAssembly binary of a version/layer this host does not know.
    #[error("unknown WebAssembly binary version {version}")]
    UnknownBinary { version: String },
    /// Wasmtime refused to compile it.
    #[error("does not compile: {reason}")]
    Compile { reason: String },
    /// A component of another world: the export or an import does not match.
    #[error("not a sandboxer backend extension: {reason}")]
    WrongWorld { reason: String },
    /// The component loaded but `info` failed.
    #[error("info failed at load: {fault}")]
    Info { fault: types::Fault },
}

/// A component that could not be loaded: which file, as which id, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}: {failure}", file.display())]
pub struct LoadError {
    /// The file at fault (the sidecar for a sidecar error, else the `.wasm`).
    pub file: PathBuf,
    /// The extension id it was to be loaded as, when known.
    pub id: Option<String>,
    /// Why.
    pub failure: LoadFailure,
}

/// The outcome of loading a folder.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Extensions ready to be called, sorted by their defining file.
    pub loaded: Vec<Arc<Extension>>,
    /// Files not loaded, with the reason.
    pub skipped: Vec<Skipped>,
}

/// Counters of compiled-code sources over the runtime's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CacheStats {
    /// Components compiled from `.wasm` (including recompiles of bad artifacts).
    pub compiled: u64,
    /// Components loaded from a precompiled artifact.
    pub disk_hits: u64,
    /// Loads served by a component already in memory (same wasm under another id).
    pub memory_hits: u64,
    /// Unusable artifacts that were replaced by a fresh compile.
    pub recovered: u64,
}

#[derive(Default)]
struct Counters {
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
    recovered: AtomicU64,
}

/// The runtime: cheap to clone, shareable between threads.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreData>,
    cache: Option<ArtifactCache>,
    /// Components compiled in this process, by wasm sha256: one compile per component.
    components: Mutex<HashMap<String, Component>>,
    /// One guard per component being looked up or compiled, so two ids on one new
    /// component compile it once while other components load meanwhile (a 35 s compile
    /// of a large guest must not hold up cached ones).
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    config: RuntimeConfig,
    counters: Counters,
    ticker: Arc<EpochTicker>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Creates the engine, the linker and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = engine::new_engine().map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker =
            link::build_linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let ticker = Arc::new(EpochTicker::start(&engine).map_err(RuntimeError::Ticker)?);
        let cache = config
            .cache_dir
            .as_ref()
            .map(|dir| ArtifactCache::new(dir, &engine));
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache,
                components: Mutex::new(HashMap::new()),
                compiling: Mutex::new(HashMap::new()),
                config,
                counters: Counters::default(),
                ticker,
            }),
        })
    }

    /// The engine (for tools that inspect components).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Where compiled code came from so far.
    pub fn cache_stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            compiled: c.compiled.load(Ordering::Relaxed),
            disk_hits: c.disk_hits.load(Ordering::Relaxed),
            memory_hits: c.memory_hits.load(Ordering::Relaxed),
            recovered: c.recovered.load(Ordering::Relaxed),
        }
    }

    /// Loads every extension in `dir` (see [`sidecar`] for the rules). A file that cannot
    /// be loaded is skipped with its reason and logged; the others load regardless.
    pub fn load_dir(&self, dir: &Path) -> Result<LoadReport, RuntimeError> {
        Ok(self.load_dir_deferring(dir, &[], |_| false)?.0)
    }

    /// [`Runtime::load_dir`], except that the extensions `defer` picks are not loaded
    /// but returned, for the caller to load later (e.g. large ones not compiled yet, on a
    /// background thread). `overlays` are applied to the folder first
    /// ([`sidecar::Discovery::apply`]).
    pub fn load_dir_deferring(
        &self,
        dir: &Path,
        overlays: &[Overlay],
        defer: impl Fn(&ExtensionSpec) -> bool,
    ) -> Result<(LoadReport, Vec<ExtensionSpec>), RuntimeError> {
        let mut found = sidecar::discover(dir).map_err(|source| RuntimeError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        found.apply(overlays);
        let mut report = LoadReport {
            loaded: Vec::new(),
            skipped: found.skipped,
        };
        for skipped in &report.skipped {
            tracing::warn!(file = %skipped.file.display(), reason = %skipped.reason, "extension skipped");
        }
        let mut deferred = Vec::new();
        for spec in found.specs {
            if defer(&spec) {
                deferred.push(spec);
                continue;
            }
            match self.load_spec(spec) {
                Ok(ext) => report.loaded.push(ext),
                Err(err) => {
                    tracing::warn!(file = %err.file.display(), reason = %err.failure, "extension skipped");
                    report.skipped.push(Skipped {
                        retry: matches!(err.failure, LoadFailure::SecretUnavailable { .. }),
                        file: err.file,
                        id: err.id,
                        reason: err.failure.to_string(),
                    });
                }
            }
        }
        report.skipped.sort_by(|a, b| a.file.cmp(&b.file));
        Ok((report, deferred))
    }

    /// Removes from the compile cache what no component of `dir` can use any more
    /// (older versions of replaced components, other engine versions, interrupted
    /// writes); see [`cache::ArtifactCache::prune`]. Kept: the artifact of every `.wasm`
    /// in `dir` and of every component a sidecar there names. Without a cache, nothing.
    pub fn prune_cache(&self, dir: &Path, dry_run: bool) -> Result<cache::Pruned, RuntimeError> {
        let Some(cache) = &self.inner.cache else {
            return Ok(cache::Pruned::default());
        };
        let read_err = |source| RuntimeError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut components: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        let found = sidecar::discover(dir).map_err(read_err)?;
        components.extend(found.specs.into_iter().map(|s| s.component));
        // An unreadable component keeps nothing: its artifact is useless until it is
        // readable again, and then it compiles anew.
        let keep: std::collections::HashSet<String> = components
            .iter()
            .filter_map(|c| cache::file_digest(c).ok().map(|(sha, _, _)| sha))
            .collect();
        cache
            .prune(&keep, dry_run)
            .map_err(|source| RuntimeError::Cache {
                dir: cache.dir().to_path_buf(),
                source,
            })
    }

    /// Loads one component with no sidecar, its id taken from the file name.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Extension>, LoadError> {
        let spec = ExtensionSpec::from_file(path).map_err(|e| LoadError {
            file: e.file,
            id: None,
            failure: LoadFailure::Spec { reason: e.reason },
        })?;
        self.load_spec(spec)
    }

    /// Loads one extension as `spec` describes it.
    pub fn load_spec(&self, mut spec: ExtensionSpec) -> Result<Arc<Extension>, LoadError> {
        let file = spec.component.clone();
        let fail = |failure| LoadError {
            file: file.clone(),
            id: Some(spec.id.clone()),
            failure,
        };
        let grants_dir = spec
            .sidecar
            .as_deref()
            .or(Some(file.as_path()))
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        // A sidecar is the package's word: its grants are bounded by the operator's
        // policy and its secret files stay in its folder. Grants the host config owns (or
        // an overlay's) may name their own files.
        let (grant_spec, files) = self
            .inner
            .config
            .grant_policy
            .grants_for(&spec, grants_dir)
            .map_err(|reason| LoadError {
                file: spec.defining_file().to_path_buf(),
                id: Some(spec.id.clone()),
                failure: LoadFailure::Spec { reason },
            })?;
        let grants = grants::Grants::resolve(
            &spec.id,
            &grant_spec,
            files,
            &spec.config,
            self.inner.config.openbao.as_ref(),
        )
        .map_err(|e| LoadError {
            file: spec.defining_file().to_path_buf(),
            id: Some(spec.id.clone()),
            failure: if e.is_transient() {
                LoadFailure::SecretUnavailable {
                    reason: e.to_string(),
                }
            } else {
                LoadFailure::Spec {
                    reason: e.to_string(),
                }
            },
        })?;
        // The extension keeps the grants it runs with (billing reads the BYOK fees, and
        // the version key covers them), not necessarily what its sidecar wrote.
        spec.grants = grant_spec;
        let (sha, head, len) = cache::file_digest(&file).map_err(|e| {
            fail(LoadFailure::Read {
                reason: e.to_string(),
            })
        })?;
        check_binary(&head, len).map_err(fail)?;
        let (component, source) = self.component_for(&file, &sha).map_err(fail)?;
        let optional = check_world(&self.inner.engine, &component)
            .map_err(|reason| fail(LoadFailure::WrongWorld { reason }))?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            fail(LoadFailure::WrongWorld {
                reason: format!("imports something the host does not grant: {e:#}"),
            })
        })?;
        let indices = ExportIndices::new(&instance_pre, optional)
            .map_err(|reason| fail(LoadFailure::WrongWorld { reason }))?;
        let defaults = self.inner.config.limits;
        let options = ExtensionOptions {
            limits: CallLimits {
                memory_limit_mib: spec.memory_limit_mib.unwrap_or(defaults.memory_limit_mib),
                call_timeout: spec
                    .call_timeout_ms
                    .map_or(defaults.call_timeout, Duration::from_millis),
            },
            pool: self.inner.config.pool,
            quarantine: self.inner.config.quarantine,
            grants: Arc::new(grants),
        };
        let id = spec.id.clone();
        let ext = Extension::load(
            spec,
            sha,
            source,
            options,
            self.inner.engine.clone(),
            instance_pre,
            (indices, optional),
            Arc::clone(&self.inner.ticker),
        )
        .map_err(|e: ExtensionError| LoadError {
            file: file.clone(),
            id: Some(id),
            failure: LoadFailure::Info { fault: e.fault },
        })?;
        tracing::info!(
            extension = %ext.id(),
            file = %file.display(),
            kind = %ext.info().kind,
            version = %ext.info().version,
            source = ?ext.artifact_source(),
            "extension loaded"
        );
        Ok(Arc::new(ext))
    }

    /// The compiled component for the file with digest `sha`: from memory, the disk
    /// cache, or a compile (the only case that reads the whole file).
    fn component_for(
        &self,
        file: &Path,
        sha: &str,
    ) -> Result<(Component, ArtifactSource), LoadFailure> {
        if let Some(shared) = self.compiled_in_memory(sha) {
            return Ok(shared);
        }
        let inner = &self.inner;
        // Held across the lookup and compile of this component only: two ids on one new
        // component compile it once; other components are not held up.
        let guard = Arc::clone(inner.compiling.lock().entry(sha.to_owned()).or_default());
        let _compiling = guard.lock();
        let outcome = self.component_uncached(file, sha);
        inner.compiling.lock().remove(sha);
        outcome
    }

    /// The component with digest `sha` when this process already compiled it (a hit).
    fn compiled_in_memory(&self, sha: &str) -> Option<(Component, ArtifactSource)> {
        let component = self.inner.components.lock().get(sha).cloned()?;
        self.inner
            .counters
            .memory_hits
            .fetch_add(1, Ordering::Relaxed);
        Some((component, ArtifactSource::Shared))
    }

    /// [`Runtime::component_for`] past the first memory lookup, under the component's guard.
    fn component_uncached(
        &self,
        file: &Path,
        sha: &str,
    ) -> Result<(Component, ArtifactSource), LoadFailure> {
        // Another thread may have finished it while this one waited for the guard.
        if let Some(shared) = self.compiled_in_memory(sha) {
            return Ok(shared);
        }
        let inner = &self.inner;
        let mut source = ArtifactSource::Compiled;
        if let Some(cache) = &inner.cache {
            match cache.lookup(&inner.engine, sha) {
                Lookup::Hit(component) => {
                    inner.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                    inner
                        .components
                        .lock()
                        .insert(sha.to_owned(), component.clone());
                    return Ok((component, ArtifactSource::Cache));
                }
                Lookup::Miss => {}
                Lookup::Corrupt(reason) => {
                    tracing::warn!(file = %file.display(), %reason, "cached artifact unusable; recompiling");
                    inner.counters.recovered.fetch_add(1, Ordering::Relaxed);
                    source = ArtifactSource::Recompiled { reason };
                }
            }
        }
        let bytes = std::fs::read(file).map_err(|e| LoadFailure::Read {
            reason: e.to_string(),
        })?;
        if cache::sha256_hex(&bytes) != sha {
            return Err(LoadFailure::Read {
                reason: "the file changed while it was being loaded; load it again".into(),
            });
        }
        let component = self.compile(file, &bytes, sha)?;
        drop(bytes);
        inner
            .components
            .lock()
            .insert(sha.to_owned(), component.clone());
        Ok((component, source))
    }

    /// Whether `spec`'s component can be loaded without compiling: it is compiled in this
    /// process already or an artifact for it is in the cache. Reads and hashes the file;
    /// an unreadable file counts as compiled (loading it fails fast with the reason).
    pub fn is_compiled(&self, spec: &ExtensionSpec) -> bool {
        let Ok((sha, _, _)) = cache::file_digest(&spec.component) else {
            return true;
        };
        if self.inner.components.lock().contains_key(&sha) {
            return true;
        }
        self.inner
            .cache
            .as_ref()
            .is_some_and(|c| c.artifact_path(&sha).is_file())
    }

    fn compile(&self, file: &Path, bytes: &[u8], sha: &str) -> Result<Component, LoadFailure> {
        let inner = &self.inner;
        let size_bytes = bytes.len() as u64;
        tracing::info!(file = %file.display(), size_mb = size_bytes as f64 / 1e6, "compiling extension");
        if let Some(hook) = &inner.config.on_compile {
            hook(&CompileEvent::Started {
                file: file.to_path_buf(),
                size_bytes,
            });
        }
        let started = Instant::now();
        let artifact = inner.engine.precompile_component(bytes);
        if let Some(hook) = &inner.config.on_compile {
            hook(&CompileEvent::Finished {
                file: file.to_path_buf(),
                elapsed: started.elapsed(),
            });
        }
        let artifact = artifact.map_err(|e| LoadFailure::Compile {
            reason: format!("{e:#}"),
        })?;
        inner.counters.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %file.display(), elapsed_ms = started.elapsed().as_millis() as u64, "compiled extension");
        let stored = inner
            .cache
            .as_ref()
            .map(|cache| cache.store(sha, &artifact));
        let component = match stored {
            // SAFETY: the file was just written by this process from
            // `Engine::precompile_component` output of this engine.
            Some(Ok(path)) => unsafe { Component::deserialize_file(&inner.engine, &path) },
            other => {
                if let Some(Err(err)) = other {
                    tracing::warn!(%err, "precompiled artifact not cached; the next start compiles again");
                }
                // SAFETY: `artifact` is this engine's own `precompile_component` output.
                unsafe { Component::deserialize(&inner.engine, &artifact) }
            }
        };
        component.map_err(|e| LoadFailure::Compile {
            reason: format!("{e:#}"),
        })
    }
}

/// Tells a component from a core module or something that is not wasm at all.
fn check_binary(head: &[u8; 8], len: u64) -> Result<(), LoadFailure> {
    if len < 8 || &head[..4] != b"\0asm" {
        return Err(LoadFailure::NotWasm);
    }
    match &head[4..8] {
        [0x01, 0x00, 0x00, 0x00] => Err(LoadFailure::CoreModule),
        // Component binary: version 0x0d, layer 1.
        [_, _, 0x01, 0x00] => Ok(()),
        other => Err(LoadFailure::UnknownBinary {
            version: hex::encode(other),
        }),
    }
}

/// Whether `name` is an export of the backend interface this host can call: any 0.1.x
/// version (semver-compatible with [`BACKEND_EXPORT`]; wasmtime resolves it the same way).
fn is_backend_export(name: &str) -> bool {
    is_export_of("backend", name)
}

/// Whether `name` is a 0.1.x export of the contract's `interface`.
fn is_export_of(interface: &str, name: &str) -> bool {
    name.strip_prefix("sandboxer:extension/")
        .and_then(|rest| rest.strip_prefix(interface))
        .and_then(|rest| rest.strip_prefix("@0.1."))
        .is_some_and(|patch| !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit()))
}

/// Which optional interfaces a component with these export names provides (`process`
/// and `files` arrived in 0.1.1, so a 0.1.0 component never has them).
fn optional_exports<'a>(names: impl Iterator<Item = &'a str> + Clone) -> OptionalExports {
    OptionalExports {
        process: names.clone().any(|n| is_export_of("process", n)),
        files: names.clone().any(|n| is_export_of("files", n)),
    }
}

/// Checks the component exports the backend interface with all its functions, naming
/// what is missing (type mismatches are reported by the bindings afterwards).
fn check_world(engine: &Engine, component: &Component) -> Result<OptionalExports, String> {
    let ty = component.component_type();
    let exports: Vec<(String, ComponentItem)> = ty
        .exports(engine)
        .map(|(n, e)| (n.to_owned(), e.ty))
        .collect();
    let Some((_, item)) = exports.iter().find(|(name, _)| is_backend_export(name)) else {
        let names: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
        let other_version = names
            .iter()
            .find(|n| n.starts_with("sandboxer:extension/backend@"));
        return Err(match other_version {
            Some(found) => format!("exports {found}, but this host implements {BACKEND_EXPORT}"),
            None if names.is_empty() => {
                format!("exports nothing; a backend exports {BACKEND_EXPORT}")
            }
            None => format!(
                "does not export {BACKEND_EXPORT} (it exports: {})",
                names.join(", ")
            ),
        });
    };
    let ComponentItem::ComponentInstance(instance) = item else {
        return Err(format!(
            "export {BACKEND_EXPORT} is not an interface instance"
        ));
    };
    let functions: Vec<String> = instance
        .exports(engine)
        .map(|(n, _)| n.to_owned())
        .collect();
    let missing: Vec<&str> = BACKEND_FUNCTIONS
        .iter()
        .copied()
        .filter(|f| !functions.iter().any(|g| g == f))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "export {BACKEND_EXPORT} lacks function(s): {}",
            missing.join(", ")
        ));
    }
    Ok(optional_exports(exports.iter().map(|(n, _)| n.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check_binary` on a file with these contents, read the way loading reads it.
    fn check(contents: &[u8]) -> Result<(), LoadFailure> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.wasm");
        std::fs::write(&file, contents).unwrap();
        let (sha, head, len) = cache::file_digest(&file).unwrap();
        assert_eq!(sha, cache::sha256_hex(contents));
        check_binary(&head, len)
    }

    #[test]
    fn optional_exports_are_found_by_semver_compatible_name() {
        let found = |names: &[&str]| optional_exports(names.iter().copied());
        assert_eq!(
            found(&["sandboxer:extension/backend@0.1.0"]),
            OptionalExports::default()
        );
        let both = OptionalExports {
            process: true,
            files: true,
        };
        assert_eq!(
            found(&[
                "sandboxer:extension/backend@0.1.1",
                "sandboxer:extension/process@0.1.1",
                "sandboxer:extension/files@0.1.7",
            ]),
            both
        );
        // Another minor, another package, a longer name or no patch is not it.
        assert_eq!(
            found(&[
                "sandboxer:extension/process@0.2.0",
                "other:extension/files@0.1.1",
                "sandboxer:extension/processes@0.1.1",
                "sandboxer:extension/files@0.1.",
            ]),
            OptionalExports::default()
        );
        assert!(is_backend_export("sandboxer:extension/backend@0.1.12"));
        assert!(!is_backend_export("sandboxer:extension/backend@0.1.1-rc"));
    }

    #[test]
    fn binaries_are_told_apart() {
        assert_eq!(check(b"hello world"), Err(LoadFailure::NotWasm));
        assert_eq!(check(b"\0asm"), Err(LoadFailure::NotWasm));
        assert_eq!(
            check(b"\0asm\0\0\0\0"[..6].as_ref()),
            Err(LoadFailure::NotWasm)
        );
        assert_eq!(check(b"\0asm\x01\0\0\0"), Err(LoadFailure::CoreModule));
        assert_eq!(check(b"\0asm\x0d\0\x01\0"), Ok(()));
        assert!(matches!(
            check(b"\0asm\x02\0\x07\0"),
            Err(LoadFailure::UnknownBinary { .. })
        ));
    }

    #[test]
    fn a_large_file_is_hashed_in_chunks_to_the_same_digest() {
        let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.wasm");
        std::fs::write(&file, &contents).unwrap();
        let (sha, head, len) = cache::file_digest(&file).unwrap();
        assert_eq!(sha, cache::sha256_hex(&contents));
        assert_eq!(&head[..], &contents[..8]);
        assert_eq!(len, 300_000);
    }
}
