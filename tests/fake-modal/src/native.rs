//! What a native client of the fake needs, shared by the fake's tests and the benchmark
//! floor: requests carrying the metadata Modal's SDKs send, connections, the app and image
//! every create starts from.

use modal_proto as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::{ModalClientClient, TaskCommandRouterClient};

fn insert<T>(r: &mut Request<T>, key: &'static str, value: &str) {
    // A value that is not valid metadata is left out (the fake then refuses the call).
    if let Ok(v) = value.parse() {
        r.metadata_mut().insert(key, v);
    }
}

/// `msg` with the control plane's token metadata (`x-modal-token-id`, `-secret`) and the
/// Go SDK's client type.
pub fn with_token<T>(msg: T, id: &str, secret: &str) -> Request<T> {
    let mut r = Request::new(msg);
    insert(&mut r, "x-modal-token-id", id);
    insert(&mut r, "x-modal-token-secret", secret);
    insert(&mut r, "x-modal-client-type", "9");
    r
}

/// `msg` with a command router's `authorization: Bearer <jwt>`.
pub fn bearer<T>(msg: T, jwt: &str) -> Request<T> {
    let mut r = Request::new(msg);
    insert(&mut r, "authorization", &format!("Bearer {jwt}"));
    r
}

/// A plain-text (h2c) connection to `url`, without Nagle's delay.
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await
}

/// `AppGetOrCreate` of the app `sandboxer` and `ImageGetOrCreate` of `FROM image`: the
/// (app id, image id) a create needs.
pub async fn app_and_image(
    c: &mut ModalClientClient<Channel>,
    id: &str,
    secret: &str,
    image: &str,
) -> Result<(String, String), Status> {
    let app = c
        .app_get_or_create(with_token(
            pb::AppGetOrCreateRequest {
                app_name: "sandboxer".into(),
                environment_name: String::new(),
                object_creation_type: pb::ObjectCreationType::CreateIfMissing as i32,
            },
            id,
            secret,
        ))
        .await?
        .into_inner()
        .app_id;
    let image = c
        .image_get_or_create(with_token(
            pb::ImageGetOrCreateRequest {
                image: Some(pb::Image {
                    dockerfile_commands: vec![format!("FROM {image}")],
                }),
                app_id: app.clone(),
                builder_version: String::new(),
            },
            id,
            secret,
        ))
        .await?
        .into_inner();
    Ok((app, image.image_id))
}

/// `TaskExecStartRequest` for `args` in `task` as exec `exec`, stdout and stderr piped,
/// with a command router's JWT.
pub fn exec_start(
    task: &str,
    exec: &str,
    args: &[&str],
    jwt: &str,
) -> Request<pb::TaskExecStartRequest> {
    bearer(
        pb::TaskExecStartRequest {
            task_id: task.into(),
            exec_id: exec.into(),
            command_args: args.iter().map(|s| (*s).to_owned()).collect(),
            stdout_config: pb::TaskExecStdoutConfig::Pipe as i32,
            stderr_config: pb::TaskExecStderrConfig::Pipe as i32,
            timeout_secs: None,
            workdir: None,
            env: [("EXTRA".to_owned(), "x".to_owned())].into(),
        },
        jwt,
    )
}

/// Everything exec `exec` wrote to `fd` from `offset` until the stream ends.
pub async fn read_all(
    r: &mut TaskCommandRouterClient<Channel>,
    jwt: &str,
    task: &str,
    exec: &str,
    offset: u64,
    fd: pb::TaskExecStdioFileDescriptor,
) -> Result<Vec<u8>, Status> {
    let mut stream = r
        .task_exec_stdio_read(bearer(
            pb::TaskExecStdioReadRequest {
                task_id: task.into(),
                exec_id: exec.into(),
                offset,
                file_descriptor: fd as i32,
            },
            jwt,
        ))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(msg) = stream.message().await? {
        out.extend_from_slice(&msg.data);
    }
    Ok(out)
}

/// What a finished command printed and how it ended: (stdout, stderr, exit).
pub type RunOutput = (Vec<u8>, Vec<u8>, Option<pb::ExitStatus>);

/// Runs `args` in `task` to its end as an SDK does through the command router:
/// `TaskExecStart`, `TaskExecStdinWrite` of `stdin` (closing it), `TaskExecStdioRead` of
/// stdout and stderr, `TaskExecWait`.
pub async fn run_to_end(
    r: &mut TaskCommandRouterClient<Channel>,
    jwt: &str,
    task: &str,
    exec: &str,
    args: &[&str],
    stdin: &[u8],
) -> Result<RunOutput, Status> {
    r.task_exec_start(exec_start(task, exec, args, jwt)).await?;
    r.task_exec_stdin_write(bearer(
        pb::TaskExecStdinWriteRequest {
            task_id: task.into(),
            exec_id: exec.into(),
            offset: 0,
            data: stdin.to_vec(),
            eof: true,
        },
        jwt,
    ))
    .await?;
    let out = read_all(
        r,
        jwt,
        task,
        exec,
        0,
        pb::TaskExecStdioFileDescriptor::Stdout,
    )
    .await?;
    let err = read_all(
        r,
        jwt,
        task,
        exec,
        0,
        pb::TaskExecStdioFileDescriptor::Stderr,
    )
    .await?;
    let wait = r
        .task_exec_wait(bearer(
            pb::TaskExecWaitRequest {
                task_id: task.into(),
                exec_id: exec.into(),
            },
            jwt,
        ))
        .await?
        .into_inner();
    Ok((out, err, wait.exit_status))
}

/// A `SandboxCreateRequest` of 1 core and 1 GiB (limits equal), 600 s, named and tagged
/// `sandboxer_id = name`: what the extension sends for a 2-vCPU, 1-GiB request.
pub fn sandbox_create_request(app: &str, image: &str, name: &str) -> pb::SandboxCreateRequest {
    pb::SandboxCreateRequest {
        app_id: app.to_owned(),
        definition: Some(pb::Sandbox {
            image_id: image.to_owned(),
            resources: Some(pb::Resources {
                memory_mb: 1024,
                milli_cpu: 1000,
                memory_mb_max: 1024,
                milli_cpu_max: 1000,
                ephemeral_disk_mb: 0,
            }),
            timeout_secs: 600,
            workdir: Some("/root".into()),
            name: Some(name.to_owned()),
            ..Default::default()
        }),
        tags: vec![pb::SandboxTag {
            tag_name: "sandboxer_id".into(),
            tag_value: name.to_owned(),
        }],
    }
}

/// The task of `sandbox_id` and its command router's (URL, JWT), as an SDK asks for them
/// before its first command.
pub async fn router_access(
    c: &mut ModalClientClient<Channel>,
    id: &str,
    secret: &str,
    sandbox_id: &str,
) -> Result<(String, String, String), Status> {
    let task = c
        .sandbox_get_task_id(with_token(
            pb::SandboxGetTaskIdRequest {
                sandbox_id: sandbox_id.into(),
                timeout: Some(10.0),
                wait_until_ready: false,
            },
            id,
            secret,
        ))
        .await?
        .into_inner()
        .task_id
        .ok_or_else(|| Status::not_found("no task for the sandbox"))?;
    let access = c
        .task_get_command_router_access(with_token(
            pb::TaskGetCommandRouterAccessRequest {
                task_id: task.clone(),
            },
            id,
            secret,
        ))
        .await?
        .into_inner();
    Ok((task, access.url, access.jwt))
}
