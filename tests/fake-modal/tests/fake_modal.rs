//! The fake Modal API driven by a native tonic client, as Modal's SDKs drive Modal: the
//! control plane with token metadata, the command router with its JWT, over h2c and TLS.

use std::time::{Duration, Instant};

use fake_modal::native::{self, bearer, with_token};
use fake_modal::{FakeModal, Fault, ModalClientClient, Route, TaskCommandRouterClient};
use modal_proto as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request};

const ID: &str = "ak-test";
const SECRET: &str = "as-test-secret";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn authed<T>(msg: T) -> Request<T> {
    with_token(msg, ID, SECRET)
}

async fn channel(url: &str) -> Channel {
    native::connect(url).await.unwrap()
}

/// App, image, sandbox: what `create` does. Returns (app id, sandbox id).
async fn create_sandbox(
    c: &mut ModalClientClient<Channel>,
    name: Option<&str>,
) -> (String, String) {
    let (app, image_id) = native::app_and_image(c, ID, SECRET, "python:3.13-slim")
        .await
        .unwrap();
    let sandbox = c
        .sandbox_create(authed(pb::SandboxCreateRequest {
            app_id: app.clone(),
            definition: Some(pb::Sandbox {
                image_id,
                resources: Some(pb::Resources {
                    milli_cpu: 1000,
                    memory_mb: 2048,
                    milli_cpu_max: 1000,
                    memory_mb_max: 2048,
                    ephemeral_disk_mb: 0,
                }),
                timeout_secs: 600,
                workdir: Some("/root".into()),
                name: name.map(str::to_owned),
                environment_variables: Some(pb::StringMap {
                    contents: [("GREETING".to_owned(), "hi".to_owned())].into(),
                }),
                ..Default::default()
            }),
            tags: vec![pb::SandboxTag {
                tag_name: "sandboxer_tenant".into(),
                tag_value: "acme".into(),
            }],
        }))
        .await
        .unwrap()
        .into_inner()
        .sandbox_id;
    (app, sandbox)
}

/// Task id and a router client with its JWT.
async fn router(
    fake: &FakeModal,
    c: &mut ModalClientClient<Channel>,
    sandbox_id: &str,
) -> (String, String, TaskCommandRouterClient<Channel>) {
    let task = c
        .sandbox_get_task_id(authed(pb::SandboxGetTaskIdRequest {
            sandbox_id: sandbox_id.into(),
            timeout: Some(10.0),
            wait_until_ready: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .task_id
        .unwrap();
    let access = c
        .task_get_command_router_access(authed(pb::TaskGetCommandRouterAccessRequest {
            task_id: task.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(access.url, fake.url());
    assert_eq!(
        access.jwt.split('.').count(),
        3,
        "a JWT: header.payload.signature"
    );
    let r = TaskCommandRouterClient::new(channel(&access.url).await);
    (task, access.jwt, r)
}

fn start(task: &str, exec: &str, args: &[&str], jwt: &str) -> Request<pb::TaskExecStartRequest> {
    native::exec_start(task, exec, args, jwt)
}

async fn read_all(
    r: &mut TaskCommandRouterClient<Channel>,
    jwt: &str,
    task: &str,
    exec: &str,
    offset: u64,
    fd: pb::TaskExecStdioFileDescriptor,
) -> Vec<u8> {
    native::read_all(r, jwt, task, exec, offset, fd)
        .await
        .unwrap()
}

async fn run_to_end(
    r: &mut TaskCommandRouterClient<Channel>,
    jwt: &str,
    task: &str,
    exec: &str,
    args: &[&str],
    stdin: &[u8],
) -> native::RunOutput {
    native::run_to_end(r, jwt, task, exec, args, stdin)
        .await
        .unwrap()
}

const FS_TOOLS: &str = fake_modal::fs_tools::FS_TOOLS_PATH;

#[test]
fn a_sandbox_lives_runs_commands_moves_files_and_reports_usage() {
    let fake = FakeModal::start(ID, SECRET).unwrap();
    rt().block_on(async {
        let mut c = ModalClientClient::new(channel(&fake.url()).await);
        let (app, sb) = create_sandbox(&mut c, Some("sb-one")).await;
        let rec = fake.sandbox(&sb).unwrap();
        assert_eq!(rec.app_id, app);
        assert_eq!(
            (rec.milli_cpu, rec.memory_mb, rec.timeout_secs),
            (1000, 2048, 600)
        );
        assert_eq!(
            rec.tags.get("sandboxer_tenant").map(String::as_str),
            Some("acme")
        );
        assert!(
            sb.starts_with("sb-") && sb.len() == 25,
            "a V1 sandbox id: {sb}"
        );
        c.image_from_id(authed(pb::ImageFromIdRequest {
            image_id: rec.image_id.clone(),
        }))
        .await
        .expect("the registry image was built");

        let (task, jwt, mut r) = router(&fake, &mut c, &sb).await;
        let (out, err, exit) = run_to_end(
            &mut r,
            &jwt,
            &task,
            "ex-1",
            &[
                "/bin/sh",
                "-c",
                "cat; echo \"$GREETING $EXTRA\" >&2; pwd; exit 4",
            ],
            b"from stdin\n",
        )
        .await;
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("from stdin\n"), "{out}");
        assert!(
            out.trim_end().ends_with("/root"),
            "runs in the workdir: {out}"
        );
        assert_eq!(err, b"hi x\n");
        assert_eq!(exit, Some(pb::ExitStatus::Code(4)));
        // Reading again from an offset gives the rest, as the router promises.
        let tail = read_all(
            &mut r,
            &jwt,
            &task,
            "ex-1",
            5,
            pb::TaskExecStdioFileDescriptor::Stdout,
        )
        .await;
        assert!(tail.starts_with(b"stdin\n"));
        // The same exec id again is the same exec, not a second run.
        r.task_exec_start(start(&task, "ex-1", &["/bin/false"], &jwt))
            .await
            .unwrap();
        let poll = r
            .task_exec_poll(bearer(
                pb::TaskExecPollRequest {
                    task_id: task.clone(),
                    exec_id: "ex-1".into(),
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(poll.exit_status, Some(pb::ExitStatus::Code(4)));

        // Stdin is offset-addressed; its status says where the next write starts.
        r.task_exec_start(start(&task, "ex-in", &["cat"], &jwt))
            .await
            .unwrap();
        let status = |r: &mut TaskCommandRouterClient<Channel>| {
            let req = bearer(
                pb::TaskExecStdinStatusRequest {
                    task_id: task.clone(),
                    exec_id: "ex-in".into(),
                },
                &jwt,
            );
            let mut r = r.clone();
            async move { r.task_exec_stdin_status(req).await.unwrap().into_inner() }
        };
        let write = |offset: u64, data: &[u8], eof: bool| {
            bearer(
                pb::TaskExecStdinWriteRequest {
                    task_id: task.clone(),
                    exec_id: "ex-in".into(),
                    offset,
                    data: data.to_vec(),
                    eof,
                },
                &jwt,
            )
        };
        r.task_exec_stdin_write(write(0, b"abc", false))
            .await
            .unwrap();
        let st = status(&mut r).await;
        assert_eq!((st.num_bytes_written, st.closed), (3, false));
        r.task_exec_stdin_write(write(2, b"cd", true))
            .await
            .unwrap();
        let st = status(&mut r).await;
        assert_eq!((st.num_bytes_written, st.closed), (4, true));
        let echoed = read_all(
            &mut r,
            &jwt,
            &task,
            "ex-in",
            0,
            pb::TaskExecStdioFileDescriptor::Stdout,
        )
        .await;
        assert_eq!(echoed, b"abcd");

        // Files through modal-sandbox-fs-tools.
        let write = r#"{"WriteFile":{"path":"/root/dir/a.txt"}}"#;
        let (_, _, exit) =
            run_to_end(&mut r, &jwt, &task, "fs-1", &[FS_TOOLS, write], b"payload").await;
        assert_eq!(exit, Some(pb::ExitStatus::Code(0)));
        let read = r#"{"ReadFile":{"path":"/root/dir/a.txt"}}"#;
        let (content, _, _) = run_to_end(&mut r, &jwt, &task, "fs-2", &[FS_TOOLS, read], b"").await;
        assert_eq!(content, b"payload");
        let (listing, _, _) = run_to_end(
            &mut r,
            &jwt,
            &task,
            "fs-3",
            &[FS_TOOLS, r#"{"ListFiles":{"path":"/root/dir"}}"#],
            b"",
        )
        .await;
        let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
        assert_eq!(listing[0]["name"], "a.txt");
        assert_eq!(listing[0]["type"], "file");
        assert_eq!(listing[0]["size"], 7);
        let missing = r#"{"ReadFile":{"path":"/root/nope"}}"#;
        let (_, err, exit) =
            run_to_end(&mut r, &jwt, &task, "fs-4", &[FS_TOOLS, missing], b"").await;
        assert_eq!(exit, Some(pb::ExitStatus::Code(1)));
        let err: serde_json::Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(err["error_kind"], "NotFound");
        // A command sees the file the tool wrote, relative to its working folder.
        let (out, _, _) = run_to_end(&mut r, &jwt, &task, "ex-2", &["cat", "dir/a.txt"], b"").await;
        assert_eq!(out, b"payload");

        // The name is unique among the app's running sandboxes and finds the sandbox.
        let again = c
            .sandbox_create(authed(pb::SandboxCreateRequest {
                app_id: app.clone(),
                definition: Some(pb::Sandbox {
                    image_id: rec.image_id.clone(),
                    name: Some("sb-one".into()),
                    ..Default::default()
                }),
                tags: vec![],
            }))
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::AlreadyExists);
        let found = c
            .sandbox_get_from_name(authed(pb::SandboxGetFromNameRequest {
                sandbox_name: "sb-one".into(),
                environment_name: String::new(),
                app_name: "sandboxer".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.sandbox_id, sb);

        // Running, then terminated.
        let wait = c
            .sandbox_wait(authed(pb::SandboxWaitRequest {
                sandbox_id: sb.clone(),
                timeout: 0.0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(wait.result.is_none());
        let lived = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.sandbox_terminate(authed(pb::SandboxTerminateRequest {
            sandbox_id: sb.clone(),
        }))
        .await
        .unwrap();
        let wait = c
            .sandbox_wait(authed(pb::SandboxWaitRequest {
                sandbox_id: sb.clone(),
                timeout: 5.0,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            wait.result.unwrap().status,
            pb::GenericStatus::Terminated as i32
        );
        let usage = c
            .sandbox_get_resource_usage(authed(pb::SandboxGetResourceUsageRequest {
                sandbox_id: sb.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        // 1 core over a lifetime of at least 50 ms; 2 GiB over the same.
        assert!(usage.cpu_core_nanosecs >= 50_000_000, "{usage:?}");
        assert_eq!(usage.mem_gib_nanosecs, usage.cpu_core_nanosecs * 2);
        assert!(u128::from(usage.cpu_core_nanosecs) <= lived.elapsed().as_nanos() + 2_000_000_000);
        // Usage is final once terminated.
        let later = c
            .sandbox_get_resource_usage(authed(pb::SandboxGetResourceUsageRequest {
                sandbox_id: sb.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(later, usage);
        fake.set_usage(&sb, 7, 9);
        let set = c
            .sandbox_get_resource_usage(authed(pb::SandboxGetResourceUsageRequest {
                sandbox_id: sb.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((set.cpu_core_nanosecs, set.mem_gib_nanosecs), (7, 9));
        // A terminated sandbox runs nothing more.
        let err = r
            .task_exec_start(start(&task, "ex-3", &["true"], &jwt))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
    });
}

#[test]
fn credentials_are_checked_recorded_and_never_cross_tasks() {
    let fake = FakeModal::start(ID, SECRET).unwrap();
    rt().block_on(async {
        let mut c = ModalClientClient::new(channel(&fake.url()).await);
        let req = || pb::AppGetOrCreateRequest {
            app_name: "x".into(),
            environment_name: String::new(),
            object_creation_type: 1,
        };
        let bad = c
            .app_get_or_create(with_token(req(), ID, "as-wrong"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::Unauthenticated);
        assert!(!bad.message().contains("as-wrong"));
        fake.echo_token_in_errors(true);
        let bad = c
            .app_get_or_create(with_token(req(), ID, "as-wrong"))
            .await
            .unwrap_err();
        assert!(
            bad.message().contains("as-wrong"),
            "the echo knob quotes the secret"
        );
        let none = c.app_get_or_create(Request::new(req())).await.unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        c.app_get_or_create(authed(req())).await.unwrap();
        let calls = fake.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0].token_secret.as_deref(), Some("as-wrong"));
        assert_eq!(calls[0].code, Code::Unauthenticated);
        assert_eq!(calls[2].token_id, None);
        assert_eq!(calls[3].token_secret.as_deref(), Some(SECRET));
        assert_eq!(calls[3].client_type.as_deref(), Some("9"));
        assert_eq!(calls[3].code, Code::Ok);

        let (_, one) = create_sandbox(&mut c, None).await;
        let (_, two) = create_sandbox(&mut c, None).await;
        let (task_one, jwt_one, mut r) = router(&fake, &mut c, &one).await;
        let (task_two, _, _) = router(&fake, &mut c, &two).await;
        let no_jwt = r
            .task_exec_start(Request::new(pb::TaskExecStartRequest {
                task_id: task_one.clone(),
                exec_id: "e".into(),
                command_args: vec!["true".into()],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(no_jwt.code(), Code::Unauthenticated);
        // One task's token does not open another task.
        let cross = r
            .task_exec_start(start(&task_two, "e", &["true"], &jwt_one))
            .await
            .unwrap_err();
        assert_eq!(cross.code(), Code::PermissionDenied);
        fake.set_jwt_ttl(Duration::ZERO);
        let (task, stale, mut r) = router(&fake, &mut c, &one).await;
        let expired = r
            .task_exec_start(start(&task, "e", &["true"], &stale))
            .await
            .unwrap_err();
        assert_eq!(expired.code(), Code::Unauthenticated);
    });
}

#[test]
fn faults_delays_timeouts_and_vanished_sandboxes() {
    let fake = FakeModal::start(ID, SECRET).unwrap();
    rt().block_on(async {
        let mut c = ModalClientClient::new(channel(&fake.url()).await);
        let (app, sb) = create_sandbox(&mut c, None).await;
        fake.inject(Route::SandboxCreate, Fault::unavailable(), 1);
        fake.inject(Route::SandboxCreate, Fault::rate_limited(), 1);
        let image_id = fake.sandbox(&sb).unwrap().image_id;
        let create = || {
            authed(pb::SandboxCreateRequest {
                app_id: app.clone(),
                definition: Some(pb::Sandbox {
                    image_id: image_id.clone(),
                    ..Default::default()
                }),
                tags: vec![],
            })
        };
        assert_eq!(
            c.sandbox_create(create()).await.unwrap_err().code(),
            Code::Unavailable
        );
        assert_eq!(
            c.sandbox_create(create()).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
        let third = c
            .sandbox_create(create())
            .await
            .unwrap()
            .into_inner()
            .sandbox_id;
        assert_eq!(
            fake.sandbox(&third).unwrap().timeout_secs,
            300,
            "Modal's default lifetime"
        );

        fake.set_delay(Duration::from_millis(150));
        let t = Instant::now();
        c.sandbox_wait(authed(pb::SandboxWaitRequest {
            sandbox_id: sb.clone(),
            timeout: 0.0,
        }))
        .await
        .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(150));
        fake.set_delay(Duration::ZERO);

        // A command past its timeout is killed by a signal.
        let (task, jwt, mut r) = router(&fake, &mut c, &sb).await;
        let mut req = start(&task, "slow", &["sleep", "30"], &jwt);
        req.get_mut().timeout_secs = Some(1);
        r.task_exec_start(req).await.unwrap();
        let t = Instant::now();
        let wait = r
            .task_exec_wait(bearer(
                pb::TaskExecWaitRequest {
                    task_id: task.clone(),
                    exec_id: "slow".into(),
                },
                &jwt,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(wait.exit_status, Some(pb::ExitStatus::Signal(9)));
        assert!(t.elapsed() < Duration::from_secs(5));
        // A missing program never starts.
        let missing = r
            .task_exec_start(start(&task, "m", &["no-such-program-here"], &jwt))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::InvalidArgument);

        assert!(fake.vanish(&sb));
        let gone = c
            .sandbox_terminate(authed(pb::SandboxTerminateRequest {
                sandbox_id: sb.clone(),
            }))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        let gone = c
            .sandbox_get_resource_usage(authed(pb::SandboxGetResourceUsageRequest {
                sandbox_id: sb.clone(),
            }))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);

        fake.fail_image_builds("ghcr.io/none/such:1");
        let failed = c
            .image_get_or_create(authed(pb::ImageGetOrCreateRequest {
                image: Some(pb::Image {
                    dockerfile_commands: vec!["FROM ghcr.io/none/such:1".into()],
                }),
                app_id: app.clone(),
                builder_version: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            failed.result.unwrap().status,
            pb::GenericStatus::Failure as i32
        );
        let unknown = c
            .image_from_id(authed(pb::ImageFromIdRequest {
                image_id: failed.image_id,
            }))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
    });
}

#[test]
fn tls_with_the_generated_ca_and_only_with_it() {
    let fake = FakeModal::start_tls(ID, SECRET).unwrap();
    assert!(fake.url().starts_with("https://127.0.0.1:"));
    let ca = fake.ca_pem().unwrap().to_owned();
    rt().block_on(async {
        // The server name is the URL's host, 127.0.0.1: the certificate names the address
        // (a host reaching the fake, and the router URL it hands out, check exactly that).
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        let ch = Endpoint::from_shared(fake.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = ModalClientClient::new(ch);
        let (_, sb) = create_sandbox(&mut c, None).await;
        assert!(fake.sandbox(&sb).is_some());
        // Without the CA the handshake fails: the certificate is not publicly trusted.
        let untrusted = Endpoint::from_shared(fake.url())
            .unwrap()
            .tls_config(ClientTlsConfig::new().domain_name("localhost"))
            .unwrap()
            .connect()
            .await;
        match untrusted {
            Err(_) => {}
            Ok(ch) => {
                let mut c = ModalClientClient::new(ch);
                let r = c
                    .app_get_or_create(authed(pb::AppGetOrCreateRequest {
                        app_name: "y".into(),
                        ..Default::default()
                    }))
                    .await;
                assert!(r.is_err(), "an untrusted certificate must not be accepted");
            }
        }
    });
}
