//! Host-side mirrors of the `process` and `files` interfaces of the extension contract
//! (`wit/extension.wit`, since 0.1.1): what a command is, how it ended, its output, and
//! the entries of a folder. Raw bytes stay bytes here; surfaces decide how to show them.

use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    /// A program and its arguments, run without a shell.
    Argv(Vec<String>),
    /// A line run by `/bin/sh -c`.
    Shell(String),
}

/// One command to run in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub command: Command,
    /// Environment variables on top of the sandbox's own.
    pub env: Vec<(String, String)>,
    /// Working folder (relative to the workspace, or absolute inside the sandbox).
    pub cwd: Option<String>,
    /// Bytes written to standard input before it is closed.
    pub stdin: Vec<u8>,
    /// `start` only: leave standard input open for `write-stdin`.
    pub keep_stdin_open: bool,
    /// The backend kills the command after this many milliseconds.
    pub timeout_ms: u64,
    /// The most bytes kept of standard output, and separately of standard error.
    pub output_limit_bytes: u64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ExitStatus {
    /// It exited on its own; `exit_code` is set.
    Exited,
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It was killed (by `kill`, a signal, the memory limit, the sandbox's end).
    Killed,
    /// It never ran (no such program, a bad working folder…).
    Failed,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExitStatus::Exited => "exited",
            ExitStatus::TimedOut => "timed-out",
            ExitStatus::Killed => "killed",
            ExitStatus::Failed => "failed",
        })
    }
}

/// The end of a command, as the backend measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Exit {
    pub status: ExitStatus,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    /// CPU time of the command's processes, when the backend measures it.
    pub cpu_ms: Option<u64>,
    /// Free-form detail for the tenant (a signal name, why it failed).
    pub detail: String,
}

/// A command's end and output (`exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr: Vec<u8>,
    pub stderr_truncated: bool,
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a started process's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// What one `read-output` returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOutput {
    /// Output after the cursor passed in, oldest first.
    pub chunks: Vec<OutputChunk>,
    /// Where the next read continues (opaque, at most [`MAX_CURSOR_BYTES`]).
    pub cursor: String,
    /// Set once the process has ended and `chunks` holds the last of its output.
    pub exit: Option<Exit>,
    /// Whether output was dropped.
    pub truncated: bool,
}

/// The longest process id or cursor the host accepts from an extension.
pub const MAX_CURSOR_BYTES: usize = 1024;

/// What a folder entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    /// The name inside the folder (no `/`).
    pub name: String,
    pub kind: FileKind,
    /// Size in bytes (0 for folders).
    pub size: u64,
    /// Last modification, Unix milliseconds, when known.
    pub modified_ms: Option<u64>,
}

/// A piece of a file, from some offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    pub data: Vec<u8>,
    /// The file's whole size in bytes.
    pub size: u64,
}
