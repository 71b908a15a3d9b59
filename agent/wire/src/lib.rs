//! The JSON bodies of `sandboxer-agent`'s HTTP API (docs/agent.md), shared by the agent
//! and the `local` extension (it builds for wasm32 too). Bytes travel as standard base64 in
//! fields named `*_b64`; file content travels raw.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `serde(with = "b64")`: `Vec<u8>` as a standard, padded base64 string.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not standard base64: {e}")))
    }
}

fn base() -> String {
    "base".to_owned()
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The caller's id for the sandbox: 1-64 of `A-Z a-z 0-9 - _`. Creating the same id
    /// again with the same request returns the same sandbox.
    pub id: String,
    #[serde(default = "base")]
    pub template: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The workspace's size; 0 = the agent's `default_disk_mib`.
    #[serde(default)]
    pub disk_mib: u32,
    pub max_duration_secs: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Starting,
    Running,
    /// Ended on its own (expired, died, or the agent restarted): its usage is recorded.
    Stopped,
    /// Destroyed by a caller: its usage is recorded.
    Destroyed,
}

/// Where a usage figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// Read from the sandbox's cgroup once it was empty.
    Cgroup,
    /// The last periodic reading (the cgroup was gone, e.g. after a reboot).
    Checkpoint,
}

/// What a sandbox used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of all its processes, in microseconds.
    pub cpu_us: u64,
    /// The most memory it held at once (`null` when the kernel does not report it).
    pub peak_memory_bytes: Option<u64>,
    /// From creation to its end, by the agent's clock.
    pub wall_ms: u64,
    /// Processes killed for the memory limit.
    pub oom_kills: u64,
    pub source: UsageSource,
}

/// `GET /v1/sandboxes/{id}` and the answer of create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    pub id: String,
    pub state: State,
    pub detail: String,
    pub template: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub max_duration_secs: u64,
    /// The host uid its processes run as (`ps -u UID` on the machine).
    pub uid: u32,
    pub created_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub usage: Option<Usage>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
}

/// `DELETE /v1/sandboxes/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    pub id: String,
    pub usage: Usage,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub slots: u32,
    pub used: u32,
    pub free: u32,
    pub cgroup: String,
    pub bwrap: String,
    pub templates: Vec<String>,
    pub host_cores: u32,
    pub host_memory_mib: u64,
}

/// A command: `argv` (no shell) or `shell` (run by `/bin/sh -c`), exactly one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    #[serde(default)]
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub shell: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Relative to the workspace, or absolute inside the sandbox; default the workspace.
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default, with = "b64", rename = "stdin_b64")]
    pub stdin: Vec<u8>,
    /// Streamed processes only: leave stdin open for `…/stdin`.
    #[serde(default)]
    pub keep_stdin_open: bool,
    pub timeout_ms: u64,
    /// The most bytes kept of stdout, and separately of stderr.
    pub output_limit_bytes: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    Exited,
    TimedOut,
    Killed,
    Failed,
}

/// The end of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub status: ExitStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub cpu_ms: Option<u64>,
    pub detail: String,
}

/// `POST …/exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResponse {
    pub exit: Exit,
    #[serde(with = "b64", rename = "stdout_b64")]
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    #[serde(with = "b64", rename = "stderr_b64")]
    pub stderr: Vec<u8>,
    pub stderr_truncated: bool,
}

/// `POST …/processes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub process_id: String,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One folder entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: String,
    /// `file`, `directory`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub modified_ms: Option<u64>,
}

/// A piece of output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    pub stream: Stream,
    #[serde(with = "b64", rename = "data_b64")]
    pub data: Vec<u8>,
}

/// `GET …/processes/{pid}/output`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    pub chunks: Vec<Chunk>,
    pub cursor: String,
    pub exit: Option<Exit>,
    pub truncated: bool,
}

/// `POST …/processes/{pid}/stdin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinRequest {
    #[serde(default, with = "b64", rename = "data_b64")]
    pub data: Vec<u8>,
    #[serde(default)]
    pub close: bool,
}

/// `GET …/dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub entries: Vec<DirEntry>,
}

/// Every error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The code tells a client what to do; the message tells a person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request`, `unauthorized`, `not_found`, `conflict`, `capacity_exhausted`,
    /// `too_large`, `unsupported`, `internal`.
    pub code: String,
    pub message: String,
}
