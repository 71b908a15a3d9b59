//! Running commands in a Modal sandbox through its task's command router, as Modal's SDKs
//! do (`go/sandbox.go`, `go/task_command_router_client.go`): `TaskExecStart` with an exec id
//! the extension chooses, stdin by `TaskExecStdinWrite` at a byte offset, output by
//! `TaskExecStdioRead` from a byte offset (one stream per file descriptor), the end by
//! `TaskExecPoll`. Because the router addresses output by offset, a started command needs
//! no state in the extension: the cursor is the two offsets.
//!
//! A stream is held open at most `stream_slice_ms` while a command is quiet, then reopened
//! at its offset, so no single HTTP exchange outlives the host's outbound timeout. The
//! router has no kill: `kill` runs [`guest_kit::kill::kill_argv`] in the sandbox, which
//! kills every process carrying the command's id in its environment.

use std::collections::BTreeMap;

use guest_kit::cursor::{StreamCursor, keep_within};
use guest_kit::kill::{EXEC_ID_ENV, kill_argv};
use modal_proto::{self as pb, router_path as rp};

use crate::client::Router;
use crate::grpc::ServerStream;
use crate::handle::{Handle, ProcessId, absolute};
use crate::wit::{BackendError, SandboxContext};
use crate::wproc::{Command, ExecRequest, Exit, ExitStatus, OutputChunk, OutputStream};

/// The most bytes of one stdin write.
const STDIN_CHUNK: usize = 1024 * 1024;

/// The argv of a command.
pub fn argv(command: &Command) -> Result<Vec<String>, BackendError> {
    match command {
        Command::Argv(args) if args.is_empty() || args[0].is_empty() => Err(
            BackendError::InvalidRequest("the command is empty (argv needs a program)".into()),
        ),
        Command::Argv(args) => Ok(args.clone()),
        Command::Shell(line) => Ok(vec!["/bin/sh".into(), "-c".into(), line.clone()]),
    }
}

/// A command's environment: the sandbox's (from the request), the command's on top, and
/// the id that [`kill_argv`] finds its processes by.
pub fn environment(
    sandbox_env: &[(String, String)],
    exec_env: &[(String, String)],
    exec_id: &str,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = sandbox_env.iter().cloned().collect();
    env.extend(exec_env.iter().cloned());
    env.insert(EXEC_ID_ENV.into(), exec_id.into());
    env
}

/// Whole seconds of a timeout, rounded up (the router takes seconds); 0 is none.
pub fn timeout_secs(ms: u64) -> Option<u32> {
    (ms > 0).then(|| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX))
}

/// How a command ended, from what the router reports. The router does not say whether a
/// signal was its timeout: a signal at or after the timeout counts as the timeout.
pub fn exit_from(status: pb::ExitStatus, elapsed_ms: u64, timeout_ms: u64) -> Exit {
    match status {
        pb::ExitStatus::Code(code) => Exit {
            status: ExitStatus::Exited,
            exit_code: Some(code),
            duration_ms: elapsed_ms,
            cpu_ms: None,
            detail: String::new(),
        },
        pb::ExitStatus::Signal(sig) => {
            let timed_out = timeout_ms > 0 && elapsed_ms >= timeout_ms;
            Exit {
                status: if timed_out {
                    ExitStatus::TimedOut
                } else {
                    ExitStatus::Killed
                },
                exit_code: None,
                duration_ms: elapsed_ms,
                cpu_ms: None,
                detail: if timed_out {
                    format!("killed by signal {sig} after the {timeout_ms} ms timeout")
                } else {
                    format!("killed by signal {sig}")
                },
            }
        }
    }
}

/// An exit for a command that never ran.
pub fn failed(detail: String) -> Exit {
    Exit {
        status: ExitStatus::Failed,
        exit_code: None,
        duration_ms: 0,
        cpu_ms: None,
        detail,
    }
}

/// Why a start did not start anything.
pub enum StartError {
    /// Modal refused the command itself (no such program, a bad working folder…).
    Refused(String),
    /// Anything else.
    Backend(BackendError),
}

/// One command to start.
pub struct Launch<'a> {
    /// The exec id (chosen here; a repeated start with it is the same command).
    pub exec_id: &'a str,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Absolute working folder.
    pub workdir: String,
    /// 0: none.
    pub timeout_ms: u64,
    /// Written to stdin right after the start.
    pub stdin: &'a [u8],
    /// Leave stdin open after `stdin`.
    pub keep_open: bool,
}

/// Starts a command in the router's task and writes its stdin.
pub fn start(router: &mut Router<'_>, launch: Launch<'_>) -> Result<(), StartError> {
    let task_id = router.task_id().to_owned();
    let request = pb::TaskExecStartRequest {
        task_id: task_id.clone(),
        exec_id: launch.exec_id.to_owned(),
        command_args: launch.args,
        stdout_config: pb::TaskExecStdoutConfig::Pipe as i32,
        stderr_config: pb::TaskExecStderrConfig::Pipe as i32,
        timeout_secs: timeout_secs(launch.timeout_ms),
        workdir: Some(launch.workdir),
        env: launch.env,
    };
    match router.call_raw::<_, pb::TaskExecStartResponse>(rp::TASK_EXEC_START, &request) {
        Ok(_) => {}
        Err(e) => {
            return Err(match router.redacted(e) {
                // INVALID_ARGUMENT, FAILED_PRECONDITION: the command itself was refused.
                crate::grpc::CallError::Status(st) if matches!(st.code, 3 | 9) => {
                    StartError::Refused(st.message)
                }
                e => StartError::Backend(router.error("TaskExecStart", e)),
            });
        }
    }
    write_stdin(router, launch.exec_id, 0, launch.stdin, !launch.keep_open)
        .map_err(StartError::Backend)
}

/// Writes `data` at `offset` of the exec's stdin, in pieces; closes it after when `eof`.
pub fn write_stdin(
    router: &mut Router<'_>,
    exec_id: &str,
    offset: u64,
    data: &[u8],
    eof: bool,
) -> Result<(), BackendError> {
    let task_id = router.task_id().to_owned();
    let mut at = offset;
    let mut pieces: Vec<&[u8]> = data.chunks(STDIN_CHUNK).collect();
    if pieces.is_empty() {
        if !eof {
            return Ok(());
        }
        pieces.push(&[]);
    }
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        let _: pb::TaskExecStdinWriteResponse = router.call(
            "TaskExecStdinWrite",
            rp::TASK_EXEC_STDIN_WRITE,
            &pb::TaskExecStdinWriteRequest {
                task_id: task_id.clone(),
                exec_id: exec_id.to_owned(),
                offset: at,
                data: piece.to_vec(),
                eof: eof && i == last,
            },
        )?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// What one round of reading produced.
#[derive(Default)]
pub struct Read {
    /// Output in the order it arrived, within the limit.
    pub chunks: Vec<OutputChunk>,
    /// Bytes in `chunks`.
    pub bytes: usize,
    /// Whether each stream (stdout, stderr) has ended.
    pub ended: [bool; 2],
}

/// How a round of reading stops.
pub struct Until {
    /// Monotonic deadline (ns).
    pub deadline_ns: u64,
    /// Stop once about this many bytes have been handed out.
    pub max_bytes: usize,
    /// Stop as soon as some output arrived (after taking what is there).
    pub first_output: bool,
}

/// Reads both output streams of `exec_id` from `cursor` (advancing it), keeping each
/// stream's bytes below its limit (`limits[0]` for stdout, `limits[1]` for stderr, as
/// offsets into the stream).
pub fn read_round(
    router: &mut Router<'_>,
    exec_id: &str,
    cursor: &mut StreamCursor,
    limits: [u64; 2],
    until: &Until,
    ended: [bool; 2],
) -> Result<Read, BackendError> {
    let task_id = router.task_id().to_owned();
    let mut read = Read {
        ended,
        ..Read::default()
    };
    let fds = [
        pb::TaskExecStdioFileDescriptor::Stdout,
        pb::TaskExecStdioFileDescriptor::Stderr,
    ];
    let mut streams: [Option<ServerStream>; 2] = [None, None];
    for (i, fd) in fds.iter().enumerate() {
        if read.ended[i] {
            continue;
        }
        let offset = if i == 0 { cursor.stdout } else { cursor.stderr };
        streams[i] = Some(router.stream(
            "TaskExecStdioRead",
            rp::TASK_EXEC_STDIO_READ,
            &pb::TaskExecStdioReadRequest {
                task_id: task_id.clone(),
                exec_id: exec_id.to_owned(),
                offset,
                file_descriptor: *fd as i32,
            },
        )?);
    }
    loop {
        for i in 0..2 {
            let Some(stream) = streams[i].as_mut() else {
                continue;
            };
            let mut messages: Vec<pb::TaskExecStdioReadResponse> = Vec::new();
            let budget = until.max_bytes.saturating_sub(read.bytes).max(1);
            let done = stream
                .take_ready(&mut messages, budget)
                .map_err(|e| router.error("TaskExecStdioRead", e))?;
            for m in messages {
                let offset = if i == 0 {
                    &mut cursor.stdout
                } else {
                    &mut cursor.stderr
                };
                let (kept, _dropped) = keep_within(*offset, &m.data, limits[i]);
                if !kept.is_empty() {
                    read.bytes += kept.len();
                    read.chunks.push(OutputChunk {
                        stream: if i == 0 {
                            OutputStream::Stdout
                        } else {
                            OutputStream::Stderr
                        },
                        data: kept.to_vec(),
                    });
                }
                *offset += m.data.len() as u64;
            }
            if done {
                read.ended[i] = true;
                streams[i] = None;
            }
        }
        if read.ended == [true, true]
            || read.bytes >= until.max_bytes
            || (until.first_output && read.bytes > 0)
        {
            return Ok(read);
        }
        let open: Vec<&guest_kit::http::Streaming> =
            streams.iter().flatten().map(|s| s.http()).collect();
        if !guest_kit::http::wait_any(&open, until.deadline_ns) {
            return Ok(read);
        }
    }
}

/// The exec's end, if it has ended (`TaskExecPoll`).
pub fn poll(
    router: &mut Router<'_>,
    exec_id: &str,
) -> Result<Option<pb::ExitStatus>, BackendError> {
    let task_id = router.task_id().to_owned();
    let r: pb::TaskExecPollResponse = router.call(
        "TaskExecPoll",
        rp::TASK_EXEC_POLL,
        &pb::TaskExecPollRequest {
            task_id,
            exec_id: exec_id.to_owned(),
        },
    )?;
    Ok(r.exit_status)
}

/// Polls for the end until the monotonic `deadline_ns`, backing off from 20 ms to 250 ms.
pub fn wait_exit(
    router: &mut Router<'_>,
    exec_id: &str,
    deadline_ns: u64,
) -> Result<Option<pb::ExitStatus>, BackendError> {
    let mut pause = 20;
    loop {
        if let Some(s) = poll(router, exec_id)? {
            return Ok(Some(s));
        }
        if guest_kit::clock::monotonic_ns() >= deadline_ns {
            return Ok(None);
        }
        guest_kit::clock::sleep_ms(pause);
        pause = (pause * 2).min(250);
    }
}

/// A finished command's output.
pub struct Finished {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// `None` when the deadline came first.
    pub status: Option<pb::ExitStatus>,
}

/// How [`finish`] reads.
pub struct Collect {
    /// Where reading starts.
    pub from: StreamCursor,
    /// Offsets past which output is dropped (stdout, stderr).
    pub limits: [u64; 2],
    /// Stop reading stdout at its limit (a reader of a file's range) rather than read on to
    /// learn whether there was more.
    pub stop_stdout_at_limit: bool,
    /// The longest one round of streaming lasts.
    pub slice_ms: u64,
    /// Monotonic deadline of the whole collection (ns).
    pub deadline_ns: u64,
}

/// Reads a started command's output to the end and its exit.
pub fn finish(
    router: &mut Router<'_>,
    exec_id: &str,
    how: &Collect,
) -> Result<Finished, BackendError> {
    let mut cursor = how.from;
    let mut ended = [false, false];
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut status = None;
    let mut last_round = false;
    loop {
        let now = guest_kit::clock::monotonic_ns();
        let deadline_ns = if last_round {
            // The command has ended but a child may hold its output open: one short round.
            now + 200_000_000
        } else {
            how.deadline_ns.min(now + how.slice_ms * 1_000_000)
        };
        let until = Until {
            deadline_ns,
            max_bytes: usize::MAX,
            first_output: false,
        };
        let r = read_round(router, exec_id, &mut cursor, how.limits, &until, ended)?;
        for c in r.chunks {
            match c.stream {
                OutputStream::Stdout => stdout.extend_from_slice(&c.data),
                OutputStream::Stderr => stderr.extend_from_slice(&c.data),
            }
        }
        ended = r.ended;
        if how.stop_stdout_at_limit && cursor.stdout >= how.limits[0] {
            ended[0] = true;
        }
        if ended == [true, true]
            || last_round
            || guest_kit::clock::monotonic_ns() >= how.deadline_ns
        {
            break;
        }
        if let Some(s) = poll(router, exec_id)? {
            status = Some(s);
            last_round = true;
        }
    }
    let status = match status {
        Some(s) => Some(s),
        None => wait_exit(router, exec_id, how.deadline_ns)?,
    };
    Ok(Finished {
        stdout_truncated: cursor.stdout > how.limits[0],
        stderr_truncated: cursor.stderr > how.limits[1],
        stdout,
        stderr,
        status,
    })
}

/// Kills exec `exec_id` and everything it started; a command that has ended is left be.
pub fn kill(
    router: &mut Router<'_>,
    handle: &Handle,
    exec_id: &str,
    deadline_ns: u64,
) -> Result<(), BackendError> {
    if poll(router, exec_id)?.is_some() {
        return Ok(());
    }
    let killer = guest_kit::clock::random_id("sbx-kill-");
    let launch = Launch {
        exec_id: &killer,
        args: kill_argv(exec_id),
        env: BTreeMap::new(),
        workdir: handle.wd.clone(),
        timeout_ms: 30_000,
        stdin: &[],
        keep_open: false,
    };
    match start(router, launch) {
        Ok(()) => {}
        Err(StartError::Refused(msg)) => {
            return Err(BackendError::Internal(format!(
                "Modal refused the kill command: {msg}"
            )));
        }
        Err(StartError::Backend(e)) => return Err(e),
    }
    wait_exit(router, &killer, deadline_ns)?;
    Ok(())
}

/// The working folder of a command: the request's (absolute, or relative to the sandbox's
/// workdir) or the workdir.
pub fn workdir(handle: &Handle, cwd: Option<&str>) -> Result<String, BackendError> {
    absolute(&handle.wd, cwd.unwrap_or(""))
}

/// The launch of a `start`/`exec` request as exec `exec_id`.
pub fn prepare<'a>(
    ctx: &SandboxContext,
    handle: &Handle,
    request: &'a ExecRequest,
    exec_id: &'a str,
    keep_open: bool,
) -> Result<Launch<'a>, BackendError> {
    Ok(Launch {
        exec_id,
        args: argv(&request.command)?,
        env: environment(&ctx.request.env, &request.env, exec_id),
        workdir: workdir(handle, request.cwd.as_deref())?,
        timeout_ms: request.timeout_ms,
        stdin: &request.stdin,
        keep_open,
    })
}

/// A fresh process id for a command started now.
pub fn process_id(
    task_id: &str,
    exec_id: &str,
    ctx: &SandboxContext,
    request: &ExecRequest,
) -> ProcessId {
    ProcessId {
        task_id: task_id.to_owned(),
        exec_id: exec_id.to_owned(),
        started_ms: ctx.now_ms,
        timeout_ms: request.timeout_ms,
        limit: request.output_limit_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_environments_and_timeouts() {
        assert_eq!(
            argv(&Command::Shell("echo hi".into())).unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(
            argv(&Command::Argv(vec!["ls".into(), "-l".into()])).unwrap(),
            ["ls", "-l"]
        );
        assert!(argv(&Command::Argv(vec![])).is_err());
        assert!(argv(&Command::Argv(vec![String::new()])).is_err());
        let env = environment(
            &[("A".into(), "1".into()), ("B".into(), "1".into())],
            &[
                ("B".into(), "2".into()),
                (EXEC_ID_ENV.into(), "forged".into()),
            ],
            "sbx-0123456789",
        );
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "2", "the command's env wins over the sandbox's");
        assert_eq!(
            env[EXEC_ID_ENV], "sbx-0123456789",
            "the kill id cannot be overridden"
        );
        assert_eq!(timeout_secs(0), None);
        assert_eq!(timeout_secs(1), Some(1));
        assert_eq!(timeout_secs(1000), Some(1));
        assert_eq!(timeout_secs(1001), Some(2));
    }

    #[test]
    fn exits_tell_a_timeout_from_a_kill() {
        let e = exit_from(pb::ExitStatus::Code(3), 10, 1000);
        assert_eq!((e.status, e.exit_code), (ExitStatus::Exited, Some(3)));
        let e = exit_from(pb::ExitStatus::Signal(9), 1_200, 1_000);
        assert_eq!(e.status, ExitStatus::TimedOut);
        assert!(e.detail.contains("timeout"));
        let e = exit_from(pb::ExitStatus::Signal(9), 500, 1_000);
        assert_eq!((e.status, e.exit_code), (ExitStatus::Killed, None));
        let e = exit_from(pb::ExitStatus::Signal(15), 500, 0);
        assert_eq!(e.status, ExitStatus::Killed);
        assert_eq!(failed("no such program".into()).status, ExitStatus::Failed);
    }
}
