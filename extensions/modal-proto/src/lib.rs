//! The subset of Modal's gRPC API that the `modal` extension speaks and `tests/fake-modal`
//! serves, as prost message structs written by hand: only the messages, fields and RPCs the
//! extension uses, with the field numbers and names of Modal's own protos
//! (`modal_proto/api.proto`, package `modal.client`, and
//! `modal_proto/task_command_router.proto`, package `modal.task_command_router`, in
//! modal-labs/modal-client). Unknown fields are skipped by prost, so a newer server's answers
//! decode; a field not listed here is simply not sent.
//!
//! No `protoc`, no build script: the crate builds for `wasm32-wasip2` (the guest) and
//! natively (the fake, its tests and the benchmark floor) from the same definitions.

use std::collections::BTreeMap;

/// gRPC paths of the control-plane service `modal.client.ModalClient`.
pub mod client_path {
    /// `AppGetOrCreate`.
    pub const APP_GET_OR_CREATE: &str = "/modal.client.ModalClient/AppGetOrCreate";
    /// `ImageGetOrCreate`.
    pub const IMAGE_GET_OR_CREATE: &str = "/modal.client.ModalClient/ImageGetOrCreate";
    /// `ImageFromId`.
    pub const IMAGE_FROM_ID: &str = "/modal.client.ModalClient/ImageFromId";
    /// `SandboxCreate`.
    pub const SANDBOX_CREATE: &str = "/modal.client.ModalClient/SandboxCreate";
    /// `SandboxGetFromName`.
    pub const SANDBOX_GET_FROM_NAME: &str = "/modal.client.ModalClient/SandboxGetFromName";
    /// `SandboxWait`.
    pub const SANDBOX_WAIT: &str = "/modal.client.ModalClient/SandboxWait";
    /// `SandboxTerminate`.
    pub const SANDBOX_TERMINATE: &str = "/modal.client.ModalClient/SandboxTerminate";
    /// `SandboxGetTaskId`.
    pub const SANDBOX_GET_TASK_ID: &str = "/modal.client.ModalClient/SandboxGetTaskId";
    /// `SandboxGetResourceUsage`.
    pub const SANDBOX_GET_RESOURCE_USAGE: &str =
        "/modal.client.ModalClient/SandboxGetResourceUsage";
    /// `TaskGetCommandRouterAccess`.
    pub const TASK_GET_COMMAND_ROUTER_ACCESS: &str =
        "/modal.client.ModalClient/TaskGetCommandRouterAccess";
}

/// gRPC paths of the per-worker service `modal.task_command_router.TaskCommandRouter`.
pub mod router_path {
    /// `TaskExecStart`.
    pub const TASK_EXEC_START: &str = "/modal.task_command_router.TaskCommandRouter/TaskExecStart";
    /// `TaskExecStdinWrite`.
    pub const TASK_EXEC_STDIN_WRITE: &str =
        "/modal.task_command_router.TaskCommandRouter/TaskExecStdinWrite";
    /// `TaskExecStdinStatus`.
    pub const TASK_EXEC_STDIN_STATUS: &str =
        "/modal.task_command_router.TaskCommandRouter/TaskExecStdinStatus";
    /// `TaskExecStdioRead` (server-streaming).
    pub const TASK_EXEC_STDIO_READ: &str =
        "/modal.task_command_router.TaskCommandRouter/TaskExecStdioRead";
    /// `TaskExecPoll`.
    pub const TASK_EXEC_POLL: &str = "/modal.task_command_router.TaskCommandRouter/TaskExecPoll";
    /// `TaskExecWait`.
    pub const TASK_EXEC_WAIT: &str = "/modal.task_command_router.TaskCommandRouter/TaskExecWait";
}

/// `modal.client.ObjectCreationType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ObjectCreationType {
    /// Look up only.
    Unspecified = 0,
    /// Create the object when it does not exist.
    CreateIfMissing = 1,
}

/// `modal.client.GenericResult.GenericStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum GenericStatus {
    /// Not set (still running).
    Unspecified = 0,
    /// Finished successfully.
    Success = 1,
    /// Failed.
    Failure = 2,
    /// Killed by an external signal (terminated).
    Terminated = 3,
    /// Ran past its timeout.
    Timeout = 4,
    /// Failed to initialise.
    InitFailure = 5,
    /// Modal's own failure.
    InternalFailure = 6,
    /// Terminated by the idle timeout.
    IdleTimeout = 7,
    /// Evicted under memory pressure.
    MemoryManagerEviction = 8,
}

/// `modal.client.GenericResult` (the fields the extension reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GenericResult {
    #[prost(enumeration = "GenericStatus", tag = "1")]
    pub status: i32,
    #[prost(string, tag = "2")]
    pub exception: String,
    #[prost(int32, tag = "3")]
    pub exitcode: i32,
}

/// `modal.client.AppGetOrCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppGetOrCreateRequest {
    #[prost(string, tag = "1")]
    pub app_name: String,
    #[prost(string, tag = "2")]
    pub environment_name: String,
    #[prost(enumeration = "ObjectCreationType", tag = "3")]
    pub object_creation_type: i32,
}

/// `modal.client.AppGetOrCreateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppGetOrCreateResponse {
    #[prost(string, tag = "1")]
    pub app_id: String,
}

/// `modal.client.Image` (a registry image: `FROM <tag>` and nothing else).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(string, repeated, tag = "6")]
    pub dockerfile_commands: Vec<String>,
}

/// `modal.client.ImageGetOrCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageGetOrCreateRequest {
    #[prost(message, optional, tag = "2")]
    pub image: Option<Image>,
    #[prost(string, tag = "4")]
    pub app_id: String,
    #[prost(string, tag = "9")]
    pub builder_version: String,
}

/// `modal.client.ImageGetOrCreateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageGetOrCreateResponse {
    #[prost(string, tag = "1")]
    pub image_id: String,
    /// Set once the build has finished (successfully or not).
    #[prost(message, optional, tag = "2")]
    pub result: Option<GenericResult>,
}

/// `modal.client.ImageFromIdRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFromIdRequest {
    #[prost(string, tag = "1")]
    pub image_id: String,
}

/// `modal.client.ImageFromIdResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFromIdResponse {
    #[prost(string, tag = "1")]
    pub image_id: String,
}

/// `modal.client.Resources`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Resources {
    /// MiB requested.
    #[prost(uint32, tag = "2")]
    pub memory_mb: u32,
    /// Milli physical CPU cores requested.
    #[prost(uint32, tag = "3")]
    pub milli_cpu: u32,
    /// Hard memory limit in MiB (0: none).
    #[prost(uint32, tag = "5")]
    pub memory_mb_max: u32,
    /// Ephemeral disk in MiB (0: Modal's default).
    #[prost(uint32, tag = "6")]
    pub ephemeral_disk_mb: u32,
    /// Hard CPU limit in milli cores (0: none).
    #[prost(uint32, tag = "7")]
    pub milli_cpu_max: u32,
}

/// `modal.client.SchedulerPlacement`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SchedulerPlacement {
    #[prost(string, repeated, tag = "4")]
    pub regions: Vec<String>,
}

/// `modal.client.StringMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringMap {
    #[prost(btree_map = "string, string", tag = "1")]
    pub contents: BTreeMap<String, String>,
}

/// `modal.client.Sandbox` (the definition of a sandbox; the fields the extension sets).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sandbox {
    #[prost(string, repeated, tag = "1")]
    pub entrypoint_args: Vec<String>,
    #[prost(string, tag = "3")]
    pub image_id: String,
    #[prost(message, optional, tag = "5")]
    pub resources: Option<Resources>,
    /// The sandbox's maximum lifetime.
    #[prost(uint32, tag = "7")]
    pub timeout_secs: u32,
    #[prost(string, optional, tag = "8")]
    pub workdir: Option<String>,
    #[prost(message, optional, tag = "17")]
    pub scheduler_placement: Option<SchedulerPlacement>,
    /// Unique among the app's running sandboxes.
    #[prost(string, optional, tag = "30")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "40")]
    pub environment_variables: Option<StringMap>,
}

/// `modal.client.SandboxTag`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxTag {
    #[prost(string, tag = "1")]
    pub tag_name: String,
    #[prost(string, tag = "2")]
    pub tag_value: String,
}

/// `modal.client.SandboxCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxCreateRequest {
    #[prost(string, tag = "1")]
    pub app_id: String,
    #[prost(message, optional, tag = "2")]
    pub definition: Option<Sandbox>,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<SandboxTag>,
}

/// `modal.client.SandboxCreateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxCreateResponse {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
}

/// `modal.client.SandboxGetFromNameRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetFromNameRequest {
    #[prost(string, tag = "1")]
    pub sandbox_name: String,
    #[prost(string, tag = "2")]
    pub environment_name: String,
    #[prost(string, tag = "3")]
    pub app_name: String,
}

/// `modal.client.SandboxGetFromNameResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetFromNameResponse {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
}

/// `modal.client.SandboxWaitRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxWaitRequest {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
    /// Seconds to wait for the end (0: answer at once).
    #[prost(float, tag = "2")]
    pub timeout: f32,
}

/// `modal.client.SandboxWaitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxWaitResponse {
    /// Set once the sandbox has ended.
    #[prost(message, optional, tag = "1")]
    pub result: Option<GenericResult>,
}

/// `modal.client.SandboxTerminateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxTerminateRequest {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
}

/// `modal.client.SandboxTerminateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxTerminateResponse {
    /// The result when the sandbox had already ended.
    #[prost(message, optional, tag = "1")]
    pub existing_result: Option<GenericResult>,
}

/// `modal.client.SandboxGetTaskIdRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetTaskIdRequest {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
    /// Seconds to wait for a task to be scheduled.
    #[prost(float, optional, tag = "2")]
    pub timeout: Option<f32>,
    #[prost(bool, tag = "3")]
    pub wait_until_ready: bool,
}

/// `modal.client.SandboxGetTaskIdResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetTaskIdResponse {
    /// None when the sandbox ended before a task was scheduled (or none is scheduled yet).
    #[prost(string, optional, tag = "1")]
    pub task_id: Option<String>,
    /// Set when the task has already exited.
    #[prost(message, optional, tag = "2")]
    pub task_result: Option<GenericResult>,
}

/// `modal.client.SandboxGetResourceUsageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetResourceUsageRequest {
    #[prost(string, tag = "1")]
    pub sandbox_id: String,
}

/// `modal.client.SandboxGetResourceUsageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxGetResourceUsageResponse {
    /// CPU used, in physical-core nanoseconds.
    #[prost(uint64, tag = "1")]
    pub cpu_core_nanosecs: u64,
    /// Memory used, in GiB-nanoseconds.
    #[prost(uint64, tag = "2")]
    pub mem_gib_nanosecs: u64,
    #[prost(uint64, tag = "3")]
    pub gpu_nanosecs: u64,
    #[prost(string, optional, tag = "4")]
    pub gpu_type: Option<String>,
}

/// `modal.client.TaskGetCommandRouterAccessRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskGetCommandRouterAccessRequest {
    #[prost(string, tag = "1")]
    pub task_id: String,
}

/// `modal.client.TaskGetCommandRouterAccessResponse`: where the task's command router
/// listens and the JWT it accepts (`authorization: Bearer <jwt>`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskGetCommandRouterAccessResponse {
    #[prost(string, tag = "1")]
    pub jwt: String,
    #[prost(string, tag = "2")]
    pub url: String,
}

/// `modal.task_command_router.TaskExecStdoutConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TaskExecStdoutConfig {
    /// Discarded.
    Devnull = 0,
    /// Kept for `TaskExecStdioRead`.
    Pipe = 1,
}

/// `modal.task_command_router.TaskExecStderrConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TaskExecStderrConfig {
    /// Discarded.
    Devnull = 0,
    /// Kept for `TaskExecStdioRead`.
    Pipe = 1,
    /// Merged into standard output.
    Stdout = 2,
}

/// `modal.task_command_router.TaskExecStdioFileDescriptor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TaskExecStdioFileDescriptor {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

/// `modal.task_command_router.TaskExecStartRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStartRequest {
    #[prost(string, tag = "1")]
    pub task_id: String,
    /// Chosen by the client; a repeated start with the same id is the same exec.
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(string, repeated, tag = "3")]
    pub command_args: Vec<String>,
    #[prost(enumeration = "TaskExecStdoutConfig", tag = "4")]
    pub stdout_config: i32,
    #[prost(enumeration = "TaskExecStderrConfig", tag = "5")]
    pub stderr_config: i32,
    /// The command is killed after this many seconds.
    #[prost(uint32, optional, tag = "6")]
    pub timeout_secs: Option<u32>,
    #[prost(string, optional, tag = "7")]
    pub workdir: Option<String>,
    #[prost(btree_map = "string, string", tag = "12")]
    pub env: BTreeMap<String, String>,
}

/// `modal.task_command_router.TaskExecStartResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStartResponse {}

/// `modal.task_command_router.TaskExecStdinWriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStdinWriteRequest {
    #[prost(string, tag = "1")]
    pub task_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    /// Where `data` starts in the stdin stream (a resent piece is not written twice).
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
    /// Close stdin after `data`.
    #[prost(bool, tag = "5")]
    pub eof: bool,
}

/// `modal.task_command_router.TaskExecStdinWriteResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStdinWriteResponse {}

/// `modal.task_command_router.TaskExecStdinStatusRequest` (the shape of `TaskExecPollRequest`).
pub type TaskExecStdinStatusRequest = TaskExecPollRequest;

/// `modal.task_command_router.TaskExecStdinStatusResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStdinStatusResponse {
    /// Bytes of stdin accepted so far (where the next write starts).
    #[prost(uint64, tag = "1")]
    pub num_bytes_written: u64,
    /// Whether stdin has been closed.
    #[prost(bool, tag = "2")]
    pub closed: bool,
}

/// `modal.task_command_router.TaskExecStdioReadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStdioReadRequest {
    #[prost(string, tag = "1")]
    pub task_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    /// The byte offset in the stream to read from.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
    #[prost(enumeration = "TaskExecStdioFileDescriptor", tag = "4")]
    pub file_descriptor: i32,
}

/// `modal.task_command_router.TaskExecStdioReadResponse`: the next bytes of the stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecStdioReadResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// `modal.task_command_router.TaskExecPollRequest` (also the shape of `TaskExecWaitRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecPollRequest {
    #[prost(string, tag = "1")]
    pub task_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

/// `modal.task_command_router.TaskExecWaitRequest`.
pub type TaskExecWaitRequest = TaskExecPollRequest;

/// How an exec ended (`oneof exit_status` of `TaskExecPollResponse`/`TaskExecWaitResponse`).
#[derive(Clone, Copy, PartialEq, Eq, prost::Oneof)]
pub enum ExitStatus {
    /// The exit code.
    #[prost(int32, tag = "1")]
    Code(i32),
    /// The signal that terminated it.
    #[prost(int32, tag = "2")]
    Signal(i32),
}

/// `modal.task_command_router.TaskExecPollResponse`: unset while the exec runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TaskExecPollResponse {
    #[prost(oneof = "ExitStatus", tags = "1, 2")]
    pub exit_status: Option<ExitStatus>,
}

/// `modal.task_command_router.TaskExecWaitResponse`.
pub type TaskExecWaitResponse = TaskExecPollResponse;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_the_spec_on_the_wire() {
        // TaskExecPollResponse { signal = 2 (int32) = 9 }: tag (2 << 3 | 0) = 0x10, value 9.
        let poll = TaskExecPollResponse {
            exit_status: Some(ExitStatus::Signal(9)),
        };
        assert_eq!(poll.encode_to_vec(), vec![0x10, 9]);
        // SandboxGetResourceUsageResponse { cpu_core_nanosecs = 1: 300, mem_gib_nanosecs = 2: 1 }.
        let usage = SandboxGetResourceUsageResponse {
            cpu_core_nanosecs: 300,
            mem_gib_nanosecs: 1,
            ..Default::default()
        };
        assert_eq!(usage.encode_to_vec(), vec![0x08, 0xac, 0x02, 0x10, 0x01]);
        // Sandbox.name is field 30 (tag bytes 0xf2 0x01), environment_variables field 40.
        let sb = Sandbox {
            name: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(sb.encode_to_vec(), vec![0xf2, 0x01, 0x01, b'a']);
        let decoded = Sandbox::decode(&[0xf2, 0x01, 0x01, b'a'][..]).unwrap();
        assert_eq!(decoded.name.as_deref(), Some("a"));
    }

    #[test]
    fn unknown_fields_of_a_newer_server_are_skipped() {
        // SandboxCreateResponse { sandbox_id = "sb-1", metadata (field 2) = {app_id "x"} }.
        let mut bytes = vec![0x0a, 4, b's', b'b', b'-', b'1'];
        bytes.extend_from_slice(&[0x12, 3, 0x12, 1, b'x']);
        let r = SandboxCreateResponse::decode(&bytes[..]).unwrap();
        assert_eq!(r.sandbox_id, "sb-1");
    }
}
