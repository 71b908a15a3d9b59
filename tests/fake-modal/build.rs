//! Generates the tonic server and client of the two Modal services from the hand-written
//! message structs in `modal-proto` (tonic-build's manual builder: no .proto, no protoc).

use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str, streaming: bool) -> Method {
    let m = Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("modal_proto::{input}"))
        .output_type(format!("modal_proto::{output}"))
        .codec_path("tonic_prost::ProstCodec");
    if streaming {
        m.server_streaming().build()
    } else {
        m.build()
    }
}

fn main() {
    let client = Service::builder()
        .name("ModalClient")
        .package("modal.client")
        .method(method(
            "app_get_or_create",
            "AppGetOrCreate",
            "AppGetOrCreateRequest",
            "AppGetOrCreateResponse",
            false,
        ))
        .method(method(
            "image_get_or_create",
            "ImageGetOrCreate",
            "ImageGetOrCreateRequest",
            "ImageGetOrCreateResponse",
            false,
        ))
        .method(method(
            "image_from_id",
            "ImageFromId",
            "ImageFromIdRequest",
            "ImageFromIdResponse",
            false,
        ))
        .method(method(
            "sandbox_create",
            "SandboxCreate",
            "SandboxCreateRequest",
            "SandboxCreateResponse",
            false,
        ))
        .method(method(
            "sandbox_get_from_name",
            "SandboxGetFromName",
            "SandboxGetFromNameRequest",
            "SandboxGetFromNameResponse",
            false,
        ))
        .method(method(
            "sandbox_wait",
            "SandboxWait",
            "SandboxWaitRequest",
            "SandboxWaitResponse",
            false,
        ))
        .method(method(
            "sandbox_terminate",
            "SandboxTerminate",
            "SandboxTerminateRequest",
            "SandboxTerminateResponse",
            false,
        ))
        .method(method(
            "sandbox_get_task_id",
            "SandboxGetTaskId",
            "SandboxGetTaskIdRequest",
            "SandboxGetTaskIdResponse",
            false,
        ))
        .method(method(
            "sandbox_get_resource_usage",
            "SandboxGetResourceUsage",
            "SandboxGetResourceUsageRequest",
            "SandboxGetResourceUsageResponse",
            false,
        ))
        .method(method(
            "task_get_command_router_access",
            "TaskGetCommandRouterAccess",
            "TaskGetCommandRouterAccessRequest",
            "TaskGetCommandRouterAccessResponse",
            false,
        ))
        .build();
    let router = Service::builder()
        .name("TaskCommandRouter")
        .package("modal.task_command_router")
        .method(method(
            "task_exec_start",
            "TaskExecStart",
            "TaskExecStartRequest",
            "TaskExecStartResponse",
            false,
        ))
        .method(method(
            "task_exec_stdin_write",
            "TaskExecStdinWrite",
            "TaskExecStdinWriteRequest",
            "TaskExecStdinWriteResponse",
            false,
        ))
        .method(method(
            "task_exec_stdin_status",
            "TaskExecStdinStatus",
            "TaskExecStdinStatusRequest",
            "TaskExecStdinStatusResponse",
            false,
        ))
        .method(method(
            "task_exec_stdio_read",
            "TaskExecStdioRead",
            "TaskExecStdioReadRequest",
            "TaskExecStdioReadResponse",
            true,
        ))
        .method(method(
            "task_exec_poll",
            "TaskExecPoll",
            "TaskExecPollRequest",
            "TaskExecPollResponse",
            false,
        ))
        .method(method(
            "task_exec_wait",
            "TaskExecWait",
            "TaskExecWaitRequest",
            "TaskExecWaitResponse",
            false,
        ))
        .build();
    Builder::new().compile(&[client, router]);
}
