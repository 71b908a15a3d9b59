//! The on-disk cache of precompiled components.
//!
//! An artifact is named by the sha256 of the `.wasm` bytes and a hash of the engine's
//! compilation settings (`Engine::precompile_compatibility_hash`), so a changed
//! component or a different wasmtime/configuration never picks up a stale artifact.
//! Artifacts are written to a temporary file and renamed into place, so a reader never
//! sees half an artifact. Deserializing precompiled code is `unsafe` (it is trusted
//! machine code): only this cache's own folder, inside the host's state directory, is
//! ever deserialized, never anything from the extensions folder.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Why an artifact could not be written (loading never fails: a bad artifact is a miss).
#[derive(Debug, thiserror::Error)]
#[error("cannot write precompiled artifact {path}: {source}")]
pub struct CacheWriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// What looking up an artifact found.
pub enum Lookup {
    /// A valid artifact, deserialized.
    Hit(Component),
    /// No artifact for this key.
    Miss,
    /// An artifact that could not be deserialized (truncated, corrupted, foreign); it
    /// has been removed and the caller should recompile.
    Corrupt(String),
}

/// Precompiled artifacts in one folder, for one engine.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ArtifactCache {
    /// A cache in `dir` (created on first write) for artifacts of `engine`.
    pub fn new(dir: impl Into<PathBuf>, engine: &Engine) -> Self {
        Self {
            dir: dir.into(),
            engine_hash: engine_hash(engine),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the artifact of a component with this content hash lives.
    pub fn artifact_path(&self, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", &self.engine_hash[..16]))
    }

    /// Loads the artifact for `wasm_sha256` if there is a usable one.
    pub fn lookup(&self, engine: &Engine, wasm_sha256: &str) -> Lookup {
        let path = self.artifact_path(wasm_sha256);
        if !path.is_file() {
            return Lookup::Miss;
        }
        // SAFETY: `path` is inside the host's own cache folder and was written by
        // `store` below from `Engine::precompile_component` output for this engine
        // configuration (its name carries the engine hash); wasmtime additionally
        // checks the artifact's header and compatibility before using it.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Lookup::Hit(component),
            Err(err) => {
                let reason = format!("{err:#}");
                // Remove it so the recompiled artifact can take its place; if removal
                // fails the atomic rename in `store` still replaces it.
                let _ = std::fs::remove_file(&path);
                Lookup::Corrupt(reason)
            }
        }
    }

    /// Writes `artifact` for `wasm_sha256` atomically (temporary file, then rename).
    pub fn store(&self, wasm_sha256: &str, artifact: &[u8]) -> Result<PathBuf, CacheWriteError> {
        let path = self.artifact_path(wasm_sha256);
        let err = |source| CacheWriteError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(".cwasm")
            .tempfile_in(&self.dir)
            .map_err(err)?;
        tmp.write_all(artifact).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(path)
    }
}

/// What [`ArtifactCache::prune`] removed (or, dry, would remove).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    /// Files removed, with their size in bytes and why.
    pub removed: Vec<PrunedFile>,
    /// Artifacts kept (they belong to a component in the extensions folder).
    pub kept: usize,
}

/// One file [`ArtifactCache::prune`] removed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrunedFile {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Why it went.
    pub reason: &'static str,
}

impl ArtifactCache {
    /// Removes what no current component can use: artifacts of components whose sha256
    /// is not in `keep`, artifacts of another engine version or configuration, and
    /// temporary files older than an hour (a write interrupted by a crash). Files that
    /// are not the cache's own are left alone. With `dry_run`, only reports.
    pub fn prune(
        &self,
        keep: &std::collections::HashSet<String>,
        dry_run: bool,
    ) -> std::io::Result<Pruned> {
        let mut out = Pruned::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let engine = &self.engine_hash[..16];
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".cwasm") else {
                continue;
            };
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let reason = if stem.starts_with(".tmp-") {
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                old.then_some("unfinished write (older than an hour)")
            } else {
                match stem.split_once('-') {
                    Some((sha, eng))
                        if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        if eng != engine {
                            Some("compiled by another engine version or configuration")
                        } else if !keep.contains(sha) {
                            Some("no component in the extensions folder has this content")
                        } else {
                            out.kept += 1;
                            None
                        }
                    }
                    _ => None,
                }
            };
            if let Some(reason) = reason {
                if !dry_run {
                    std::fs::remove_file(entry.path())?;
                }
                out.removed.push(PrunedFile {
                    path: entry.path(),
                    bytes: meta.len(),
                    reason,
                });
            }
        }
        out.removed.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

/// The sha256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A file's sha256 (lowercase hex) and its first 8 bytes (zero-padded when shorter),
/// read in small chunks: a large component is hashed without holding it in memory, and
/// read whole only when it has to be compiled.
pub fn file_digest(path: &Path) -> std::io::Result<(String, [u8; 8], u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut head = [0u8; 8];
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Ok(start) = usize::try_from(len)
            && start < head.len()
        {
            let take = (head.len() - start).min(n);
            head[start..start + take].copy_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), head, len))
}

/// A stable hex digest of the engine's compilation settings and version.
fn engine_hash(engine: &Engine) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

/// Feeds `Hash` output into sha256 (std's `DefaultHasher` is not stable across builds).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
