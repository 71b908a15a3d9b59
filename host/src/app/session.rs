//! Using a running sandbox: run a command (to its end, or streamed as it runs), write,
//! read and list files. Only the owning tenant's sandbox (another's is "not found"), only
//! while it is `running`. Every limit here is documented in docs/api.md ("Exec and
//! files").
//!
//! Output is bytes; the answers show it as text when it is valid UTF-8 and as base64
//! otherwise (`stdout` or `stdout_b64`, never both), so JSON carries any output intact.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Serialize, Serializer};

use super::{App, AppError};
use crate::domain::{
    BackendError, ExecOutput, ExecRequest, Exit, ExitStatus, Fault, FileEntry, OutputStream, Scope,
    TenantId,
};
use crate::manager::ManagerError;

/// A command's timeout when the caller names none: one minute.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 60_000;
/// The longest timeout a command may ask for: one hour.
pub const MAX_EXEC_TIMEOUT_MS: u64 = 3_600_000;
/// The output kept per stream when the caller names no cap: 1 MiB.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 1 << 20;
/// The largest cap on output per stream: 16 MiB (the embedded agent's own cap).
pub const MAX_OUTPUT_LIMIT_BYTES: u64 = 16 << 20;
/// The largest file written or read in one request, unless the operator sets
/// `max_file_bytes`: 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
/// Files move in pieces of at most this size per extension call (4 MiB), so one file may
/// be larger than what one call to a backend carries.
pub const FILE_CHUNK_BYTES: u32 = 4 << 20;
/// The longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// How long one read of a streamed command's output waits for more. Also how late a
/// client's leaving is noticed on a silent command (the wait cannot be interrupted), so
/// short: a command whose client left must not run on to its end.
const STREAM_POLL: Duration = Duration::from_secs(1);
/// The most output one read of a streamed command returns.
const STREAM_READ_BYTES: u32 = 1 << 20;
/// A streamed command is killed by the host when its backend has not ended it this long
/// after its timeout.
const STREAM_GRACE: Duration = Duration::from_secs(30);

/// Bytes shown as UTF-8 text when they are, else as base64 (the `_b64` field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output(pub Vec<u8>);

impl Output {
    /// The text, when the bytes are valid UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

/// Writes `name` (text) or `name_b64` (base64) into a map being serialised.
fn put_output<M: serde::ser::SerializeMap>(
    map: &mut M,
    name: &str,
    out: &Output,
) -> Result<(), M::Error> {
    match out.text() {
        Some(t) => map.serialize_entry(name, t),
        None => map.serialize_entry(&format!("{name}_b64"), &B64.encode(&out.0)),
    }
}

/// How a command ended and what it printed. `POST /v1/sandboxes/{id}/exec`, `sandboxer
/// sandbox exec --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecAnswer {
    /// How it ended.
    pub exit: Exit,
    /// Standard output (at most the cap).
    pub stdout: Output,
    /// Whether standard output went over the cap and was cut.
    pub stdout_truncated: bool,
    /// Standard error (at most the cap).
    pub stderr: Output,
    /// Whether standard error went over the cap and was cut.
    pub stderr_truncated: bool,
}

impl From<ExecOutput> for ExecAnswer {
    fn from(o: ExecOutput) -> Self {
        Self {
            exit: o.exit,
            stdout: Output(o.stdout),
            stdout_truncated: o.stdout_truncated,
            stderr: Output(o.stderr),
            stderr_truncated: o.stderr_truncated,
        }
    }
}

fn put_exit<M: serde::ser::SerializeMap>(map: &mut M, exit: &Exit) -> Result<(), M::Error> {
    map.serialize_entry("status", &exit.status)?;
    map.serialize_entry("exit_code", &exit.exit_code)?;
    map.serialize_entry("duration_ms", &exit.duration_ms)?;
    map.serialize_entry("cpu_ms", &exit.cpu_ms)?;
    map.serialize_entry("detail", &exit.detail)
}

impl Serialize for ExecAnswer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        put_exit(&mut map, &self.exit)?;
        put_output(&mut map, "stdout", &self.stdout)?;
        map.serialize_entry("stdout_truncated", &self.stdout_truncated)?;
        put_output(&mut map, "stderr", &self.stderr)?;
        map.serialize_entry("stderr_truncated", &self.stderr_truncated)?;
        map.end()
    }
}

/// One event of a streamed command, in order: `started`, then `stdout`/`stderr` chunks
/// as they come, then `exit`. One NDJSON line each (`{"type": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// The command runs; the backend's id for it.
    Started {
        /// The backend's process id.
        process_id: String,
    },
    /// A piece of output.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Output,
    },
    /// How it ended; `truncated` when output over the cap was dropped.
    Exit {
        /// How it ended.
        exit: Exit,
        /// Whether output was dropped.
        truncated: bool,
    },
}

impl Serialize for ExecEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match self {
            ExecEvent::Started { process_id } => {
                map.serialize_entry("type", "started")?;
                map.serialize_entry("process_id", process_id)?;
            }
            ExecEvent::Output { stream, data } => {
                map.serialize_entry("type", stream)?;
                put_output(&mut map, "data", data)?;
            }
            ExecEvent::Exit { exit, truncated } => {
                map.serialize_entry("type", "exit")?;
                put_exit(&mut map, exit)?;
                map.serialize_entry("truncated", truncated)?;
            }
        }
        map.end()
    }
}

/// The OpenAPI schemas of [`ExecAnswer`] and [`ExecEvent`], whose JSON is written by hand
/// (text or base64 output): shapes that mirror their `Serialize` impls field for field.
mod schema {
    #![allow(dead_code)]

    use crate::domain::{ExitStatus, OutputStream};

    /// How a command ended and what it printed. Each stream is `stdout` (UTF-8 text) or
    /// `stdout_b64` (base64, when the bytes are not UTF-8), never both; so is `stderr`.
    #[derive(utoipa::ToSchema)]
    #[schema(as = ExecAnswer)]
    pub struct ExecAnswerShape {
        /// How it ended.
        pub status: ExitStatus,
        /// The exit code, when it exited on its own.
        pub exit_code: Option<i32>,
        /// How long it ran.
        pub duration_ms: u64,
        /// CPU time of its processes, when the backend measures it.
        pub cpu_ms: Option<u64>,
        /// Free-form detail (a signal name, why it failed).
        pub detail: String,
        /// Standard output, as text.
        #[schema(required = false)]
        pub stdout: Option<String>,
        /// Standard output, as base64.
        #[schema(required = false)]
        pub stdout_b64: Option<String>,
        /// Whether standard output went over the cap and was cut.
        pub stdout_truncated: bool,
        /// Standard error, as text.
        #[schema(required = false)]
        pub stderr: Option<String>,
        /// Standard error, as base64.
        #[schema(required = false)]
        pub stderr_b64: Option<String>,
        /// Whether standard error went over the cap and was cut.
        pub stderr_truncated: bool,
    }

    /// `{"type": "started"}`: the command runs.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct ExecStarted {
        /// `started`.
        #[schema(pattern = "^started$")]
        pub r#type: String,
        /// The backend's process id.
        pub process_id: String,
    }

    /// `{"type": "stdout"|"stderr"}`: a piece of output, `data` (text) or `data_b64`.
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct ExecOutputEvent {
        /// Which stream.
        pub r#type: OutputStream,
        /// The bytes, as text.
        #[schema(required = false)]
        pub data: Option<String>,
        /// The bytes, as base64.
        #[schema(required = false)]
        pub data_b64: Option<String>,
    }

    /// `{"type": "exit"}`: how it ended (the last line).
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct ExecExitEvent {
        /// `exit`.
        #[schema(pattern = "^exit$")]
        pub r#type: String,
        /// How it ended.
        pub status: ExitStatus,
        /// The exit code, when it exited on its own.
        pub exit_code: Option<i32>,
        /// How long it ran.
        pub duration_ms: u64,
        /// CPU time, when measured.
        pub cpu_ms: Option<u64>,
        /// Free-form detail.
        pub detail: String,
        /// Whether output over the cap was dropped.
        pub truncated: bool,
    }

    /// `{"type": "error"}`: the command could not go on after it started (the last line).
    #[derive(serde::Serialize, utoipa::ToSchema)]
    pub struct ExecErrorEvent {
        /// `error`.
        #[schema(pattern = "^error$")]
        pub r#type: String,
        /// The error code, as in an error answer.
        pub code: String,
        /// What went wrong.
        pub message: String,
    }

    /// One line of a streamed exec (`Accept: application/x-ndjson`): `started`, then
    /// `stdout`/`stderr` pieces as they come, then `exit` (or `error`).
    #[derive(serde::Serialize, utoipa::ToSchema)]
    #[serde(untagged)]
    #[schema(as = ExecEvent)]
    pub enum ExecEventShape {
        Started(ExecStarted),
        Output(ExecOutputEvent),
        Exit(ExecExitEvent),
        Error(ExecErrorEvent),
    }
}

impl utoipa::PartialSchema for ExecAnswer {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <schema::ExecAnswerShape as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for ExecAnswer {
    fn name() -> std::borrow::Cow<'static, str> {
        <schema::ExecAnswerShape as utoipa::ToSchema>::name()
    }
    fn schemas(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <schema::ExecAnswerShape as utoipa::ToSchema>::schemas(out);
    }
}

impl utoipa::PartialSchema for ExecEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <schema::ExecEventShape as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for ExecEvent {
    fn name() -> std::borrow::Cow<'static, str> {
        <schema::ExecEventShape as utoipa::ToSchema>::name()
    }
    fn schemas(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <schema::ExecEventShape as utoipa::ToSchema>::schemas(out);
    }
}

/// Where a streamed command's events go: the HTTP response, the terminal.
pub trait ExecSink {
    /// Delivers one event; `false` when the receiver is gone (the command is then killed).
    fn send(&mut self, event: ExecEvent) -> bool;
    /// Whether the receiver is gone, asked while the command is silent.
    fn is_closed(&self) -> bool {
        false
    }
}

/// A file written: `PUT /v1/sandboxes/{id}/files/{path}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FileWritten {
    /// The path as given.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// A folder's entries: `GET /v1/sandboxes/{id}/files/{path}?list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FileList {
    /// The folder as given (`""`: the workspace).
    pub path: String,
    /// Its entries, sorted by name.
    pub entries: Vec<FileEntry>,
}

fn tenant_of(scope: &Scope) -> Option<&str> {
    scope.tenant().map(TenantId::as_str)
}

/// `value`, or `default` when it is 0 (unset); refused, naming `field`, above `max`.
fn within(field: &str, value: u64, default: u64, max: u64, unit: &str) -> Result<u64, AppError> {
    match value {
        0 => Ok(default),
        v if v > max => Err(AppError::invalid(
            field,
            format!("{field} {v} is over the limit of {max}{unit}"),
        )),
        v => Ok(v),
    }
}

/// Fills the defaults of `req` and refuses what is out of range, naming the field.
fn checked(mut req: ExecRequest) -> Result<ExecRequest, AppError> {
    req.timeout_ms = within(
        "timeout_ms",
        req.timeout_ms,
        DEFAULT_EXEC_TIMEOUT_MS,
        MAX_EXEC_TIMEOUT_MS,
        " ms (one hour)",
    )?;
    req.output_limit_bytes = within(
        "output_limit_bytes",
        req.output_limit_bytes,
        DEFAULT_OUTPUT_LIMIT_BYTES,
        MAX_OUTPUT_LIMIT_BYTES,
        "",
    )?;
    match &req.command {
        crate::domain::Command::Argv(a) if a.is_empty() || a[0].is_empty() => {
            return Err(AppError::invalid(
                "argv",
                "argv must name a program, e.g. [\"python3\", \"-c\", \"print(6*7)\"]",
            ));
        }
        crate::domain::Command::Shell(s) if s.trim().is_empty() => {
            return Err(AppError::invalid("shell", "shell must be a command line"));
        }
        _ => {}
    }
    if let Some(cwd) = &req.cwd {
        // Same rule as file paths: a `..` segment could only mean leaving the workspace.
        let bad = if cwd.is_empty() {
            Some("is empty: leave it out to run in the workspace, or name a folder")
        } else if cwd.len() > MAX_PATH_BYTES {
            Some("is too long")
        } else if cwd.contains('\0') {
            Some("contains a NUL byte")
        } else if cwd.split('/').any(|seg| seg == "..") {
            Some("has a `..` segment; the working folder stays inside the sandbox's workspace")
        } else {
            None
        };
        if let Some(why) = bad {
            return Err(AppError::invalid(
                "cwd",
                format!("the working folder (cwd) {why}"),
            ));
        }
    }
    for (k, _) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(AppError::invalid(
                "env",
                format!("environment variable name {k:?} is not valid"),
            ));
        }
    }
    Ok(req)
}

/// Refuses paths that cannot name a file inside a sandbox's workspace: empty, too long,
/// with NUL, or with a `..` segment. The backend confines the rest (absolute paths,
/// symlinks leading out).
pub fn check_path(path: &str, allow_empty: bool) -> Result<(), AppError> {
    if path.is_empty() && !allow_empty {
        return Err(AppError::invalid(
            "path",
            "the path is empty: name a file, e.g. data/in.txt",
        ));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(AppError::invalid(
            "path",
            format!("the path is over {MAX_PATH_BYTES} bytes"),
        ));
    }
    if path.contains('\0') {
        return Err(AppError::invalid("path", "the path contains a NUL byte"));
    }
    if path.split('/').any(|seg| seg == "..") {
        return Err(AppError::invalid(
            "path",
            format!(
                "the path {path:?} has a `..` segment; paths stay inside the sandbox's workspace"
            ),
        ));
    }
    Ok(())
}

/// Whether a manager error says the backend has no `start` (so exec runs unstreamed).
fn is_unsupported(e: &ManagerError) -> bool {
    matches!(
        e,
        ManagerError::Session { error, .. }
            if matches!(error.fault, Fault::Backend(BackendError::Unsupported(_)))
    )
}

impl App {
    /// The largest file written or read in one request.
    pub fn max_file_bytes(&self) -> u64 {
        self.options().max_file_bytes
    }

    /// Runs a command in sandbox `id` to its end (at most its timeout).
    pub fn exec(
        &self,
        scope: &Scope,
        id: &str,
        request: ExecRequest,
    ) -> Result<ExecAnswer, AppError> {
        let request = checked(request)?;
        let out = self.manager()?.exec(tenant_of(scope), id, &request)?;
        Ok(out.into())
    }

    /// Runs a command in sandbox `id`, sending its output to `sink` as it comes and its
    /// exit at the end. A backend without streaming runs it to its end and sends the
    /// output in one piece per stream. An error before `started` is returned (nothing
    /// ran); after it, the command is killed when the sink goes away.
    pub fn exec_streamed(
        &self,
        scope: &Scope,
        id: &str,
        request: ExecRequest,
        sink: &mut dyn ExecSink,
    ) -> Result<(), AppError> {
        let request = checked(request)?;
        let manager = self.manager()?;
        let tenant = tenant_of(scope);
        let pid = match manager.start(tenant, id, &request) {
            Ok(pid) => pid,
            Err(e) if is_unsupported(&e) => {
                let out = manager.exec(tenant, id, &request)?;
                send_whole(out, sink);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let kill = |why: &str| {
            if let Err(e) = manager.kill(tenant, id, &pid) {
                tracing::debug!(sandbox = id, error = %e, "kill after {why} failed");
            }
        };
        if !sink.send(ExecEvent::Started {
            process_id: pid.clone(),
        }) {
            kill("the client left");
            return Ok(());
        }
        let deadline =
            Instant::now() + Duration::from_millis(request.timeout_ms).saturating_add(STREAM_GRACE);
        let mut cursor = String::new();
        loop {
            let out =
                manager.read_output(tenant, id, &pid, &cursor, STREAM_POLL, STREAM_READ_BYTES)?;
            for chunk in out.chunks {
                if !sink.send(ExecEvent::Output {
                    stream: chunk.stream,
                    data: Output(chunk.data),
                }) {
                    kill("the client left");
                    return Ok(());
                }
            }
            if let Some(exit) = out.exit {
                sink.send(ExecEvent::Exit {
                    exit,
                    truncated: out.truncated,
                });
                return Ok(());
            }
            cursor = out.cursor;
            if sink.is_closed() {
                kill("the client left");
                return Ok(());
            }
            if Instant::now() > deadline {
                kill("its deadline");
                sink.send(ExecEvent::Exit {
                    exit: Exit {
                        status: ExitStatus::TimedOut,
                        exit_code: None,
                        duration_ms: u64::try_from(
                            Duration::from_millis(request.timeout_ms)
                                .saturating_add(STREAM_GRACE)
                                .as_millis(),
                        )
                        .unwrap_or(u64::MAX),
                        cpu_ms: None,
                        detail: "the backend did not end it at its timeout; the host killed it"
                            .to_owned(),
                    },
                    truncated: false,
                });
                return Ok(());
            }
        }
    }

    /// Writes `data` to the file at `path` in sandbox `id` (parents created; replaced if
    /// it exists), in pieces of [`FILE_CHUNK_BYTES`].
    pub fn write_file(
        &self,
        scope: &Scope,
        id: &str,
        path: &str,
        data: &[u8],
    ) -> Result<FileWritten, AppError> {
        check_path(path, false)?;
        let size = u64::try_from(data.len()).unwrap_or(u64::MAX);
        if size > self.max_file_bytes() {
            return Err(AppError::invalid(
                "body",
                format!(
                    "a file of {size} bytes is over the host's max_file_bytes ({})",
                    self.max_file_bytes()
                ),
            ));
        }
        let manager = self.manager()?;
        let tenant = tenant_of(scope);
        let chunk = usize::try_from(FILE_CHUNK_BYTES).unwrap_or(usize::MAX);
        if data.is_empty() {
            manager.write_file(tenant, id, path, &[], false)?;
        }
        for (i, piece) in data.chunks(chunk).enumerate() {
            manager.write_file(tenant, id, path, piece, i > 0)?;
        }
        Ok(FileWritten {
            path: path.to_owned(),
            size,
        })
    }

    /// The whole file at `path` in sandbox `id` (at most the host's `max_file_bytes`).
    pub fn read_file(&self, scope: &Scope, id: &str, path: &str) -> Result<Vec<u8>, AppError> {
        check_path(path, false)?;
        let manager = self.manager()?;
        let tenant = tenant_of(scope);
        let max = self.max_file_bytes();
        let mut data = Vec::new();
        loop {
            let offset = u64::try_from(data.len()).unwrap_or(u64::MAX);
            let piece = manager.read_file(tenant, id, path, offset, FILE_CHUNK_BYTES)?;
            if piece.size > max {
                return Err(AppError::invalid(
                    "path",
                    format!(
                        "{path} is {} bytes, over the host's max_file_bytes ({max}); read it in parts with exec (split, head)",
                        piece.size
                    ),
                ));
            }
            let got = piece.data.len();
            data.extend_from_slice(&piece.data);
            if got == 0 || u64::try_from(data.len()).unwrap_or(u64::MAX) >= piece.size {
                return Ok(data);
            }
        }
    }

    /// The entries of the folder at `path` in sandbox `id` (`""`: the workspace).
    pub fn list_files(&self, scope: &Scope, id: &str, path: &str) -> Result<FileList, AppError> {
        check_path(path, true)?;
        let entries = self.manager()?.list_files(tenant_of(scope), id, path)?;
        Ok(FileList {
            path: path.to_owned(),
            entries,
        })
    }
}

/// A whole command's output as a stream: its output, then its exit.
fn send_whole(out: ExecOutput, sink: &mut dyn ExecSink) {
    let truncated = out.stdout_truncated || out.stderr_truncated;
    let started = sink.send(ExecEvent::Started {
        process_id: String::new(),
    });
    if !started {
        return;
    }
    for (stream, data) in [
        (OutputStream::Stdout, out.stdout),
        (OutputStream::Stderr, out.stderr),
    ] {
        if !data.is_empty()
            && !sink.send(ExecEvent::Output {
                stream,
                data: Output(data),
            })
        {
            return;
        }
    }
    sink.send(ExecEvent::Exit {
        exit: out.exit,
        truncated,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Command;

    fn req(command: Command) -> ExecRequest {
        ExecRequest {
            command,
            env: Vec::new(),
            cwd: None,
            stdin: Vec::new(),
            keep_stdin_open: false,
            timeout_ms: 0,
            output_limit_bytes: 0,
        }
    }

    #[test]
    fn defaults_are_filled_and_limits_refused() {
        let r = checked(req(Command::Shell("true".into()))).unwrap();
        assert_eq!(r.timeout_ms, DEFAULT_EXEC_TIMEOUT_MS);
        assert_eq!(r.output_limit_bytes, DEFAULT_OUTPUT_LIMIT_BYTES);
        let mut long = req(Command::Shell("true".into()));
        long.timeout_ms = MAX_EXEC_TIMEOUT_MS + 1;
        let e = checked(long).unwrap_err();
        assert!(matches!(e, AppError::Invalid { field: Some(ref f), .. } if f == "timeout_ms"));
        let e = checked(req(Command::Argv(vec![]))).unwrap_err();
        assert!(matches!(e, AppError::Invalid { field: Some(ref f), .. } if f == "argv"));
        let mut env = req(Command::Shell("true".into()));
        env.env = vec![("A=B".into(), "x".into())];
        assert!(checked(env).is_err());
        for bad in ["../..", "work/../../etc", "", "a\0b"] {
            let mut r = req(Command::Shell("pwd".into()));
            r.cwd = Some(bad.into());
            let e = checked(r).unwrap_err();
            assert!(
                matches!(e, AppError::Invalid { field: Some(ref f), .. } if f == "cwd"),
                "{bad:?}: {e:?}"
            );
        }
        for good in ["sub/dir", "/tmp", "a..b"] {
            let mut r = req(Command::Shell("pwd".into()));
            r.cwd = Some(good.into());
            assert!(checked(r).is_ok(), "{good}");
        }
    }

    #[test]
    fn paths_with_dot_dot_are_refused() {
        for bad in ["../../etc/passwd", "a/../../b", "..", "x/.."] {
            assert!(check_path(bad, false).is_err(), "{bad}");
        }
        assert!(check_path("", false).is_err());
        assert!(check_path("", true).is_ok());
        assert!(check_path("a/b..c/./d.txt", false).is_ok());
        assert!(check_path("a\0b", false).is_err());
    }

    #[test]
    fn output_is_text_when_utf8_and_base64_otherwise() {
        let exit = Exit {
            status: ExitStatus::Exited,
            exit_code: Some(0),
            duration_ms: 3,
            cpu_ms: Some(1),
            detail: String::new(),
        };
        let a = ExecAnswer {
            exit: exit.clone(),
            stdout: Output(b"42\n".to_vec()),
            stdout_truncated: false,
            stderr: Output(vec![0xff, 0x00, 0x80]),
            stderr_truncated: true,
        };
        let v: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(v["stdout"], "42\n");
        assert!(v.get("stdout_b64").is_none());
        assert_eq!(v["stderr_b64"], B64.encode([0xff, 0x00, 0x80]));
        assert!(v.get("stderr").is_none());
        assert_eq!(v["status"], "exited");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["stderr_truncated"], true);
        let e = ExecEvent::Output {
            stream: OutputStream::Stderr,
            data: Output(b"oops".to_vec()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"stderr","data":"oops"}"#
        );
        let x = serde_json::to_value(ExecEvent::Exit {
            exit,
            truncated: false,
        })
        .unwrap();
        assert_eq!(x["type"], "exit");
        assert_eq!(x["cpu_ms"], 1);
    }

    struct Collect(Vec<ExecEvent>);
    impl ExecSink for Collect {
        fn send(&mut self, e: ExecEvent) -> bool {
            self.0.push(e);
            true
        }
    }

    #[test]
    fn a_whole_output_streams_as_started_chunks_exit() {
        let mut sink = Collect(Vec::new());
        send_whole(
            ExecOutput {
                exit: Exit {
                    status: ExitStatus::Exited,
                    exit_code: Some(3),
                    duration_ms: 1,
                    cpu_ms: None,
                    detail: String::new(),
                },
                stdout: b"out".to_vec(),
                stdout_truncated: false,
                stderr: Vec::new(),
                stderr_truncated: true,
            },
            &mut sink,
        );
        assert_eq!(sink.0.len(), 3);
        assert!(matches!(sink.0[0], ExecEvent::Started { .. }));
        assert!(matches!(
            sink.0[1],
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                ..
            }
        ));
        assert!(matches!(
            sink.0[2],
            ExecEvent::Exit {
                truncated: true,
                ..
            }
        ));
    }
}
