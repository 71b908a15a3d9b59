//! Running commands in an E2B sandbox through envd's `process.Process` service.
//!
//! `exec` is one `Start` stream (`ref/e2b-envd/process.proto`): the start event (the pid),
//! stdin sent with `SendInput` and closed with `CloseStdin`, data events, the end event;
//! envd kills the command at `Connect-Timeout-Ms` and sends keep-alives on a quiet stream.
//!
//! `start` cannot keep that stream: the extension keeps no state between calls, envd does
//! not keep output for anyone (a process's output goes only to the streams subscribed at
//! that moment; `Connect` does not replay), and its end is kept only 30 s. So a started
//! command runs under a small `/bin/sh` wrapper ([`WRAPPER`]) that writes its standard
//! output and error to files in `~/.sandboxer/exec/<tag>/`, applies the timeout, and
//! records the end (`exit-<code>`, `timedout`); `read-output` reads those files from the
//! cursor's two byte offsets with ranged `GET /files` and lists the folder
//! (`filesystem.Filesystem/ListDir`) to see how far they are and whether the end is in.
//! Nothing is lost between calls, whatever their spacing. `kill` marks the folder
//! (`killed`) and kills every process carrying the command's id in its environment
//! ([`guest_kit::kill`]); envd's own `SendSignal` reaches one pid only.

use std::collections::BTreeMap;

use guest_kit::cursor::{StreamCursor, keep_within};
use guest_kit::kill::{EXEC_ID_ENV, KILL_SCRIPT};
use serde_json::{Value, json};

use crate::connect::{self, End, Event};
use crate::envd::{CallError, Envd};
use crate::exports::sandboxer::extension::backend::{BackendError, SandboxContext};
use crate::exports::sandboxer::extension::process::{
    Command, ExecOutput, ExecRequest, Exit, ExitStatus, OutputChunk, OutputStream, ProcessOutput,
};
use crate::handle::{ProcessId, output_dir};

/// The wrapper of a started command. Arguments: the output folder (relative to `$HOME`),
/// the timeout in whole seconds (0: none), the kill script, then the command. Stdin passes
/// through to the command (through descriptor 3: an asynchronous command's stdin would
/// otherwise be `/dev/null`).
pub const WRAPPER: &str = r#"d="$HOME/$1"; t="$2"; k="$3"; shift 3
mkdir -p "$d" || exit 125
exec 3<&0 0</dev/null
"$@" <&3 3<&- >"$d/out" 2>"$d/err" &
c=$!
exec 3<&-
w=
if [ "$t" -gt 0 ]; then
  ( sleep "$t"
    if kill -0 "$c" 2>/dev/null; then
      : >"$d/timedout"
      env -u SANDBOXER_EXEC_ID /bin/sh -c "$k" sandboxer-kill "$SANDBOXER_EXEC_ID" "$$"
    fi ) &
  w=$!
fi
wait "$c"; s=$?
[ -n "$w" ] && kill "$w" 2>/dev/null
: >"$d/exit-$s"
"#;

/// Marks a started command's folder as killed, then kills it: arguments the folder, the
/// kill script, the id.
pub const KILLER: &str = r#"mkdir -p "$HOME/$1" 2>/dev/null; : >"$HOME/$1/killed"
exec /bin/sh -c "$2" sandboxer-kill "$3""#;

/// Program and arguments of a command.
pub fn command(c: &Command) -> Result<(String, Vec<String>), BackendError> {
    match c {
        Command::Argv(args) if args.is_empty() || args[0].is_empty() => Err(
            BackendError::InvalidRequest("the command is empty (argv needs a program)".into()),
        ),
        Command::Argv(args) => Ok((args[0].clone(), args[1..].to_vec())),
        Command::Shell(line) => Ok(("/bin/sh".into(), vec!["-c".into(), line.clone()])),
    }
}

/// A `StartRequest` as protojson.
pub fn start_message(
    cmd: &str,
    args: &[String],
    envs: &BTreeMap<String, String>,
    cwd: Option<&str>,
    stdin: bool,
    tag: Option<&str>,
) -> Value {
    let mut process = json!({ "cmd": cmd, "args": args, "envs": envs });
    if let Some(cwd) = cwd.filter(|c| !c.is_empty()) {
        process["cwd"] = Value::String(cwd.to_owned());
    }
    let mut msg = json!({ "process": process, "stdin": stdin });
    if let Some(tag) = tag {
        msg["tag"] = Value::String(tag.to_owned());
    }
    msg
}

/// How a command ended, from envd's end event.
pub fn exit_from_end(end: &End, elapsed_ms: u64, timeout_ms: u64) -> Exit {
    let detail = match &end.error {
        Some(e) if !e.is_empty() => format!("{}: {e}", end.status),
        _ => end.status.clone(),
    };
    if end.exited {
        return Exit {
            status: ExitStatus::Exited,
            exit_code: Some(end.exit_code),
            duration_ms: elapsed_ms,
            cpu_ms: None,
            detail: if end.exit_code == 0 {
                String::new()
            } else {
                detail
            },
        };
    }
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
        detail,
    }
}

fn failed(detail: String) -> ExecOutput {
    ExecOutput {
        exit: Exit {
            status: ExitStatus::Failed,
            exit_code: None,
            duration_ms: 0,
            cpu_ms: None,
            detail,
        },
        stdout: Vec::new(),
        stdout_truncated: false,
        stderr: Vec::new(),
        stderr_truncated: false,
    }
}

/// Sends `data` to stdin of envd's process `pid`, closing it after when `close`.
pub fn send_stdin(envd: &Envd, pid: u32, data: &[u8], close: bool) -> Result<(), BackendError> {
    // envd takes input in messages; a few MiB each keeps them well under its limits.
    for piece in data.chunks(2 * 1024 * 1024) {
        envd.unary(
            "process.Process/SendInput",
            &json!({ "process": { "pid": pid }, "input": { "stdin": connect::b64_encode(piece) } }),
        )?;
    }
    if close {
        envd.unary(
            "process.Process/CloseStdin",
            &json!({ "process": { "pid": pid } }),
        )?;
    }
    Ok(())
}

/// `exec`: one `Start` stream to the end.
pub fn exec(envd: &Envd, request: &ExecRequest) -> Result<ExecOutput, BackendError> {
    let (cmd, args) = command(&request.command)?;
    let envs: BTreeMap<String, String> = request.env.iter().cloned().collect();
    let msg = start_message(
        &cmd,
        &args,
        &envs,
        request.cwd.as_deref(),
        !request.stdin.is_empty(),
        None,
    );
    let t0 = guest_kit::clock::monotonic_ns();
    let timeout = (request.timeout_ms > 0).then_some(request.timeout_ms);
    let mut stream = envd.start(&msg, timeout)?;
    // envd ends the command at its timeout; a little grace for that.
    let budget_ms = timeout.map_or(86_400_000, |t| t + 10_000);
    let deadline = t0.saturating_add(budget_ms.saturating_mul(1_000_000));
    let limit = request.output_limit_bytes;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_seen, mut err_seen) = (0u64, 0u64);
    let mut started = false;
    loop {
        let events = match stream.next_until(deadline) {
            Ok(Some(events)) => events,
            Ok(None) => {
                return Err(BackendError::Unavailable(
                    "E2B envd Start: no end of the command after its timeout".into(),
                ));
            }
            // A command that could not start (no such program or folder) fails the stream
            // before its start event.
            Err(BackendError::InvalidRequest(m)) if !started => return Ok(failed(m)),
            Err(e) => return Err(e),
        };
        if events.is_empty() {
            return Err(BackendError::Unavailable(
                "E2B envd Start: the stream ended before the command did".into(),
            ));
        }
        for ev in events {
            match ev {
                Event::Start { pid } => {
                    started = true;
                    if !request.stdin.is_empty() {
                        send_stdin(envd, pid, &request.stdin, true)?;
                    }
                }
                Event::Stdout(data) => {
                    let (kept, _) = keep_within(out_seen, &data, limit);
                    stdout.extend_from_slice(kept);
                    out_seen += data.len() as u64;
                }
                Event::Stderr(data) => {
                    let (kept, _) = keep_within(err_seen, &data, limit);
                    stderr.extend_from_slice(kept);
                    err_seen += data.len() as u64;
                }
                Event::End(end) => {
                    let elapsed = (guest_kit::clock::monotonic_ns() - t0) / 1_000_000;
                    return Ok(ExecOutput {
                        exit: exit_from_end(&end, elapsed, request.timeout_ms),
                        stdout,
                        stdout_truncated: out_seen > limit,
                        stderr,
                        stderr_truncated: err_seen > limit,
                    });
                }
                Event::Keepalive => {}
            }
        }
    }
}

/// Whole seconds of a timeout, rounded up.
pub fn timeout_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

/// `start`: the command under [`WRAPPER`], tagged; returns its process id.
pub fn start(
    envd: &Envd,
    ctx: &SandboxContext,
    request: &ExecRequest,
) -> Result<String, BackendError> {
    let (cmd, args) = command(&request.command)?;
    let tag = guest_kit::clock::random_id("sbx-");
    let dir = output_dir(&tag);
    let mut wrapped = vec![
        "-c".to_owned(),
        WRAPPER.to_owned(),
        "sandboxer-exec".to_owned(),
        dir,
        timeout_secs(request.timeout_ms).to_string(),
        KILL_SCRIPT.to_owned(),
        cmd,
    ];
    wrapped.extend(args);
    let mut envs: BTreeMap<String, String> = request.env.iter().cloned().collect();
    envs.insert(EXEC_ID_ENV.into(), tag.clone());
    let msg = start_message(
        "/bin/sh",
        &wrapped,
        &envs,
        request.cwd.as_deref(),
        true,
        Some(&tag),
    );
    let mut stream = envd.start(&msg, None)?;
    let deadline = guest_kit::clock::monotonic_ns() + 30_000_000_000;
    let pid = loop {
        match stream.next_until(deadline) {
            Ok(Some(events)) if events.is_empty() => {
                return Err(BackendError::Unavailable(
                    "E2B envd Start: the stream ended before the start event".into(),
                ));
            }
            Ok(Some(events)) => {
                if let Some(pid) = events.iter().find_map(|e| match e {
                    Event::Start { pid } => Some(*pid),
                    _ => None,
                }) {
                    break pid;
                }
            }
            Ok(None) => {
                return Err(BackendError::Unavailable(
                    "E2B envd Start: no start event within 30 s".into(),
                ));
            }
            Err(BackendError::InvalidRequest(m)) => {
                return Err(BackendError::InvalidRequest(format!(
                    "the command did not start: {m}"
                )));
            }
            Err(e) => return Err(e),
        }
    };
    send_stdin(envd, pid, &request.stdin, !request.keep_stdin_open)?;
    // Dropping the stream leaves the command running: envd does not tie a process to the
    // request that started it.
    drop(stream);
    Ok(ProcessId {
        pid,
        tag,
        started_ms: ctx.now_ms,
        timeout_ms: request.timeout_ms,
        limit: request.output_limit_bytes,
    }
    .to_string())
}

/// What the output folder of a started command shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folder {
    pub out: u64,
    pub err: u64,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub killed: bool,
}

/// Reads a `ListDir` answer of an output folder.
pub fn folder(listing: &Value) -> Folder {
    let mut f = Folder::default();
    let entries = listing
        .get("entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for e in entries {
        let name = e.get("name").and_then(Value::as_str).unwrap_or_default();
        let size = e.get("size").and_then(connect::json_u64).unwrap_or(0);
        match name {
            "out" => f.out = size,
            "err" => f.err = size,
            "timedout" => f.timed_out = true,
            "killed" => f.killed = true,
            n => {
                if let Some(code) = n.strip_prefix("exit-").and_then(|c| c.parse().ok()) {
                    f.exit_code = Some(code);
                }
            }
        }
    }
    f
}

/// The end a folder records (or, with `gone`, that the process is gone without one).
pub fn folder_exit(f: &Folder, gone: bool, elapsed_ms: u64) -> Option<Exit> {
    let exit = |status, exit_code, detail: &str| Exit {
        status,
        exit_code,
        duration_ms: elapsed_ms,
        cpu_ms: None,
        detail: detail.to_owned(),
    };
    match f.exit_code {
        Some(_) if f.timed_out => Some(exit(ExitStatus::TimedOut, None, "killed at its timeout")),
        Some(code) if f.killed && code > 128 => Some(exit(ExitStatus::Killed, None, "killed")),
        Some(code) => Some(exit(ExitStatus::Exited, Some(code), "")),
        None if !gone => None,
        None if f.timed_out => Some(exit(ExitStatus::TimedOut, None, "killed at its timeout")),
        None if f.killed => Some(exit(ExitStatus::Killed, None, "killed")),
        None => Some(exit(
            ExitStatus::Killed,
            None,
            "the process ended without recording its end (killed from inside the sandbox?)",
        )),
    }
}

fn list_folder(envd: &Envd, dir: &str) -> Result<Folder, BackendError> {
    match envd.unary_raw(
        "filesystem.Filesystem/ListDir",
        &json!({ "path": dir, "depth": 1 }),
    ) {
        Ok(v) => Ok(folder(&v)),
        // The wrapper has not made it yet.
        Err(CallError::Connect(c)) if c.code == "not_found" => Ok(Folder::default()),
        Err(CallError::Connect(c)) => Err(connect::to_backend("ListDir", &c)),
        Err(CallError::Other(e)) => Err(e),
    }
}

fn running(envd: &Envd, tag: &str) -> Result<bool, BackendError> {
    let list = envd.unary("process.Process/List", &json!({}))?;
    Ok(list
        .get("processes")
        .and_then(Value::as_array)
        .is_some_and(|ps| {
            ps.iter()
                .any(|p| p.get("tag").and_then(Value::as_str) == Some(tag))
        }))
}

/// `read-output`.
pub fn read_output(
    envd: &Envd,
    pid: &ProcessId,
    cursor: &str,
    wait_ms: u32,
    max_bytes: u32,
) -> Result<ProcessOutput, BackendError> {
    let mut cursor = StreamCursor::parse(cursor).map_err(BackendError::InvalidRequest)?;
    let dir = pid.dir();
    let deadline = guest_kit::clock::monotonic_ns() + u64::from(wait_ms) * 1_000_000;
    let mut budget = u64::from(max_bytes.max(1));
    let mut chunks = Vec::new();
    let mut checked_alive = false;
    loop {
        let f = list_folder(envd, &dir)?;
        for (stream, name, size) in [
            (OutputStream::Stdout, "out", f.out),
            (OutputStream::Stderr, "err", f.err),
        ] {
            let offset = match stream {
                OutputStream::Stdout => &mut cursor.stdout,
                OutputStream::Stderr => &mut cursor.stderr,
            };
            let keep_end = size.min(pid.limit);
            if *offset < keep_end && budget > 0 {
                let n = (keep_end - *offset).min(budget);
                let got = envd.download(&format!("{dir}/{name}"), *offset, n)?;
                let (kept, _) = keep_within(*offset, &got.data, pid.limit);
                if !kept.is_empty() {
                    budget -= kept.len() as u64;
                    chunks.push(OutputChunk {
                        stream,
                        data: kept.to_vec(),
                    });
                }
                *offset += got.data.len() as u64;
            }
            // Past the limit the rest is dropped: skip to what exists.
            if *offset >= pid.limit && size > *offset {
                *offset = size;
            }
        }
        let complete = cursor.stdout >= f.out && cursor.stderr >= f.err;
        let elapsed = guest_kit::clock::now_ms().saturating_sub(pid.started_ms);
        let mut exit = if complete {
            folder_exit(&f, false, elapsed)
        } else {
            None
        };
        if exit.is_none() && complete && chunks.is_empty() && !checked_alive {
            // Nothing new and no recorded end: is it still running at all?
            checked_alive = true;
            if !running(envd, &pid.tag)? {
                let again = list_folder(envd, &dir)?;
                if again == f {
                    exit = folder_exit(&f, true, elapsed);
                } else {
                    continue;
                }
            }
        }
        if !chunks.is_empty() || exit.is_some() || guest_kit::clock::monotonic_ns() >= deadline {
            return Ok(ProcessOutput {
                chunks,
                cursor: cursor.to_string(),
                truncated: cursor.stdout > pid.limit || cursor.stderr > pid.limit,
                exit,
            });
        }
        let left_ms = deadline.saturating_sub(guest_kit::clock::monotonic_ns()) / 1_000_000;
        guest_kit::clock::sleep_ms(left_ms.clamp(1, 100));
    }
}

/// `kill`: unless the command has ended, mark its folder and kill everything carrying its id.
pub fn kill(envd: &Envd, pid: &ProcessId) -> Result<(), BackendError> {
    let f = list_folder(envd, &pid.dir())?;
    if f.exit_code.is_some() {
        return Ok(());
    }
    let args = vec![
        "-c".to_owned(),
        KILLER.to_owned(),
        "sandboxer-kill".to_owned(),
        pid.dir(),
        KILL_SCRIPT.to_owned(),
        pid.tag.clone(),
    ];
    let msg = start_message("/bin/sh", &args, &BTreeMap::new(), None, false, None);
    let mut stream = envd.start(&msg, Some(30_000))?;
    let deadline = guest_kit::clock::monotonic_ns() + 40_000_000_000;
    loop {
        match stream.next_until(deadline)? {
            None => {
                return Err(BackendError::Unavailable(
                    "E2B envd: the kill did not finish within 30 s".into(),
                ));
            }
            Some(events) if events.is_empty() => return Ok(()),
            Some(events) => {
                if events.iter().any(|e| matches!(e, Event::End(_))) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_messages_are_protojson() {
        let envs: BTreeMap<String, String> = [("A".to_owned(), "1".to_owned())].into();
        let m = start_message(
            "ls",
            &["-l".into()],
            &envs,
            Some("dir"),
            true,
            Some("sbx-1"),
        );
        assert_eq!(
            m,
            json!({"process": {"cmd": "ls", "args": ["-l"], "envs": {"A": "1"}, "cwd": "dir"}, "stdin": true, "tag": "sbx-1"})
        );
        let m = start_message("ls", &[], &BTreeMap::new(), None, false, None);
        assert!(m["process"].get("cwd").is_none());
        assert_eq!(
            command(&Command::Shell("echo hi".into())).unwrap(),
            ("/bin/sh".into(), vec!["-c".into(), "echo hi".into()])
        );
        assert!(command(&Command::Argv(vec![])).is_err());
        assert_eq!(timeout_secs(1), 1);
        assert_eq!(timeout_secs(2001), 3);
    }

    #[test]
    fn ends_tell_exits_kills_and_timeouts_apart() {
        let exited = End {
            exit_code: 3,
            exited: true,
            status: "exit status 3".into(),
            error: None,
        };
        let e = exit_from_end(&exited, 10, 1000);
        assert_eq!((e.status, e.exit_code), (ExitStatus::Exited, Some(3)));
        let killed = End {
            exit_code: -1,
            exited: false,
            status: "signal: killed".into(),
            error: None,
        };
        assert_eq!(
            exit_from_end(&killed, 1500, 1000).status,
            ExitStatus::TimedOut
        );
        assert_eq!(exit_from_end(&killed, 500, 1000).status, ExitStatus::Killed);
    }

    #[test]
    fn output_folders_record_the_end() {
        let listing = json!({"entries": [
            {"name": "out", "type": "FILE_TYPE_FILE", "size": "12"},
            {"name": "err", "type": "FILE_TYPE_FILE", "size": 3},
            {"name": "exit-0", "type": "FILE_TYPE_FILE"}
        ]});
        let f = folder(&listing);
        assert_eq!((f.out, f.err, f.exit_code), (12, 3, Some(0)));
        assert_eq!(folder_exit(&f, false, 5).unwrap().exit_code, Some(0));
        let mut t = f.clone();
        t.exit_code = Some(137);
        t.timed_out = true;
        assert_eq!(
            folder_exit(&t, false, 5).unwrap().status,
            ExitStatus::TimedOut
        );
        let mut k = f.clone();
        k.exit_code = Some(137);
        k.killed = true;
        assert_eq!(
            folder_exit(&k, false, 5).unwrap().status,
            ExitStatus::Killed
        );
        // Killed after it had exited on its own: the recorded exit stands.
        let mut late = f.clone();
        late.killed = true;
        assert_eq!(
            folder_exit(&late, false, 5).unwrap().status,
            ExitStatus::Exited
        );
        let running = Folder::default();
        assert!(folder_exit(&running, false, 5).is_none());
        assert_eq!(
            folder_exit(&running, true, 5).unwrap().status,
            ExitStatus::Killed
        );
        assert_eq!(folder(&json!({})), Folder::default());
    }

    /// The wrapper and the killer really run: output to files, stdin through, the exit
    /// recorded, the timeout and the kill reach the command's children.
    #[test]
    fn the_wrapper_records_output_exit_timeout_and_kill() {
        use std::io::Write;
        use std::process::{Command as Proc, Stdio};
        let home = tempfile_dir();
        let run = |tag: &str, timeout: &str, cmd: &[&str], stdin: &[u8]| {
            let mut args = vec!["-c", WRAPPER, "sandboxer-exec"];
            let dir = output_dir(tag);
            args.push(&dir);
            args.push(timeout);
            args.push(KILL_SCRIPT);
            args.extend_from_slice(cmd);
            let mut child = Proc::new("/bin/sh")
                .args(&args)
                .env("HOME", &home)
                .env(EXEC_ID_ENV, tag)
                .stdin(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            child
        };
        let read = |tag: &str, name: &str| {
            std::fs::read(format!("{home}/{}/{name}", output_dir(tag))).ok()
        };
        let mut c = run(
            "sbx-wrap-exit-1",
            "0",
            &["/bin/sh", "-c", "cat; echo e >&2; exit 3"],
            b"in\n",
        );
        c.wait().unwrap();
        assert_eq!(read("sbx-wrap-exit-1", "out").unwrap(), b"in\n");
        assert_eq!(read("sbx-wrap-exit-1", "err").unwrap(), b"e\n");
        assert!(read("sbx-wrap-exit-1", "exit-3").is_some());

        let t = std::time::Instant::now();
        let mut c = run(
            "sbx-wrap-time-1",
            "1",
            &["/bin/sh", "-c", "sleep 30 & sleep 30"],
            b"",
        );
        c.wait().unwrap();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the timeout ended it"
        );
        assert!(read("sbx-wrap-time-1", "timedout").is_some());
        assert!(read("sbx-wrap-time-1", "exit-137").is_some());

        let mut c = run(
            "sbx-wrap-kill-1",
            "0",
            &["/bin/sh", "-c", "sleep 30 & sleep 30"],
            b"",
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        let dir = output_dir("sbx-wrap-kill-1");
        let status = Proc::new("/bin/sh")
            .args([
                "-c",
                KILLER,
                "sandboxer-kill",
                &dir,
                KILL_SCRIPT,
                "sbx-wrap-kill-1",
            ])
            .env("HOME", &home)
            .status()
            .unwrap();
        assert!(status.success());
        c.wait().unwrap();
        assert!(read("sbx-wrap-kill-1", "killed").is_some());
        let _ = std::fs::remove_dir_all(&home);
    }

    fn tempfile_dir() -> String {
        let dir = std::env::temp_dir().join(format!("e2b-wrapper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.to_string_lossy().into_owned()
    }
}
