//! The runtime finds the optional `process` and `files` exports of contract 0.1.1 at load:
//! the real `local` component (which exports both) reports `exec`, `exec-stream` and
//! `files`; the `saas-stub` (backend only) reports none of them, and every process or
//! files call on it answers a typed `unsupported` naming the extension, without a call.

mod support;

use sandboxer_host::domain::{
    BackendError, Capability, Command, ExecRequest, Fault, Function, Resources, SandboxContext,
    SandboxRequest,
};
use sandboxer_host::layers::runtime::{Runtime, RuntimeConfig};

fn runtime(dir: &tempfile::TempDir) -> Runtime {
    Runtime::new(RuntimeConfig::with_cache_dir(dir.path().join("cache"))).unwrap()
}

fn context() -> SandboxContext {
    SandboxContext {
        request: SandboxRequest {
            sandbox_id: "sb-1".into(),
            tenant: "acme".into(),
            profile: "p".into(),
            template: "base".into(),
            resources: Resources {
                vcpus: 1,
                memory_mib: 256,
                disk_mib: 0,
                gpu: None,
            },
            max_duration_secs: 60,
            region: None,
            env: vec![],
            metadata: vec![],
            byok: Default::default(),
        },
        handle: "h".into(),
        created_at_ms: 0,
        now_ms: 0,
    }
}

#[test]
fn local_reports_exec_and_files_and_the_stub_answers_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(&dir);
    let local = rt
        .load_file(&support::built("extensions/local.wasm"))
        .unwrap();
    let caps = &local.info().capabilities;
    for c in [Capability::Exec, Capability::ExecStream, Capability::Files] {
        assert!(caps.contains(&c), "local lacks {c:?}: {caps:?}");
    }

    let stub = rt
        .load_file(&support::built("extensions/saas-stub.wasm"))
        .unwrap();
    let caps = &stub.info().capabilities;
    assert!(
        !caps.iter().any(|c| matches!(
            c,
            Capability::Exec | Capability::ExecStream | Capability::Files
        )),
        "{caps:?}"
    );
    let calls_before = stub.health().calls;
    let req = ExecRequest {
        command: Command::Argv(vec!["true".into()]),
        env: vec![],
        cwd: None,
        stdin: vec![],
        keep_stdin_open: false,
        timeout_ms: 1000,
        output_limit_bytes: 1024,
    };
    let err = stub.exec(&context(), &req).unwrap_err();
    assert_eq!(err.function, Function::Exec);
    assert_eq!(err.extension, "saas-stub");
    match &err.fault {
        Fault::Backend(BackendError::Unsupported(m)) => {
            assert!(m.contains("\"saas-stub\" does not implement exec"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let err = stub.list_files(&context(), ".").unwrap_err();
    assert!(
        matches!(&err.fault, Fault::Backend(BackendError::Unsupported(m)) if m.contains("does not implement files")),
        "{err}"
    );
    // Refused before any call: health is untouched.
    assert_eq!(stub.health().calls, calls_before);
}
