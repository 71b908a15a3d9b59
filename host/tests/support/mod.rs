//! Helpers shared by the end-to-end tests: where the built components are, runtimes with
//! a private cache, extension specs, and running the real `sandboxer` binary.
//!
//! The components are built by `scripts/build-extensions.sh` (`make extensions`, run by
//! `make test` and CI) before `cargo test`; a missing one fails with that instruction.

#![allow(dead_code)]

pub mod logs;
pub mod openbao;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sandboxer_host::domain::SandboxRequest;
use sandboxer_host::layers::runtime::{
    Extension, ExtensionSpec, Runtime, RuntimeConfig, conformance,
};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A build output (relative to the root), or a failure that says how to produce it.
pub fn built(relative: &str) -> PathBuf {
    let path = root().join(relative);
    assert!(
        path.is_file(),
        "{relative} is missing: run `scripts/build-extensions.sh` (or `make extensions`) before `cargo test`"
    );
    path
}

/// `extensions/saas-stub.wasm`.
pub fn saas_stub() -> PathBuf {
    built("extensions/saas-stub.wasm")
}

/// `tests/guests/NAME.wasm`.
pub fn guest(name: &str) -> PathBuf {
    built(&format!("tests/guests/{name}.wasm"))
}

/// A runtime with its precompiled cache in `cache`.
pub fn runtime(cache: &Path) -> Runtime {
    runtime_with(cache, |_| {})
}

/// A runtime with its precompiled cache in `cache` and `adjust` applied to the defaults.
pub fn runtime_with(cache: &Path, adjust: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let mut config = RuntimeConfig::with_cache_dir(cache);
    adjust(&mut config);
    Runtime::new(config).unwrap()
}

/// `wasm` loaded as `id` with the given `wasi:config` values.
pub fn spec(wasm: &Path, id: &str, config: &[(&str, &str)]) -> ExtensionSpec {
    let mut spec = ExtensionSpec::from_file(wasm).unwrap();
    spec.id = id.to_owned();
    spec.config = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<BTreeMap<_, _>>();
    spec
}

/// The misbehave guest in `mode`, loaded as `misbehave-MODE`.
pub fn misbehave(rt: &Runtime, mode: &str, extra: &[(&str, &str)]) -> Arc<Extension> {
    let mut config = vec![("mode", mode)];
    config.extend_from_slice(extra);
    rt.load_spec(spec(
        &guest("misbehave"),
        &format!("misbehave-{mode}"),
        &config,
    ))
    .unwrap()
}

/// The request `extensions check` uses: 2 vCPUs, 2 GiB, one hour.
pub fn request() -> SandboxRequest {
    conformance::sample_request()
}

/// Runs the real `sandboxer` binary with a private state folder and extensions folder.
pub fn sandboxer(state: &Path, extensions: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxer"))
        .arg("--state-dir")
        .arg(state)
        .arg("--extensions-dir")
        .arg(extensions)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// stdout and stderr of a finished command, for assertions and failure messages.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies `files` into a fresh folder (an extensions folder for one test).
pub fn folder_with(files: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, name) in files {
        std::fs::copy(from, dir.path().join(name)).unwrap();
    }
    dir
}
