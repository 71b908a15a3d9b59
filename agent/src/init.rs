//! The sandbox's init: this binary run by bubblewrap inside the sandbox (`sandboxer-agent
//! init`, bind-mounted read-only at [`crate::bwrap::INIT_PATH`]). It serves the agent's
//! requests on its stdin/stdout ([`crate::proto`]): it spawns commands and forwards their
//! output as it comes, writes their stdin, kills them with what they started, reaps them
//! with their CPU time, and moves files beneath the workspace ([`crate::fsops`]). It runs as
//! the sandbox's uid in the sandbox's namespaces, under its seccomp filter: a request can
//! reach nothing the sandbox itself cannot.
//!
//! bubblewrap's own reaper is PID 1 and adopts orphans; init waits only for its own
//! children (`wait4(-1)` sees nothing else). When the channel closes, init exits, PID 1
//! follows, and the kernel kills everything left in the pid namespace.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};

use crate::fsops::{WORKSPACE, Workspace};
use crate::proto::{self, Event, FileResult, Request, Stream};

/// How long output may still trickle in after a command exited (from what it left
/// running with the same pipes) before init stops reading and reports the exit.
const DRAIN: Duration = Duration::from_millis(50);

type Outbox = mpsc::Sender<(Event, Vec<u8>)>;

struct Proc {
    exit: Option<oneshot::Sender<(i32, u64)>>,
    stdin: Option<mpsc::UnboundedSender<(Vec<u8>, bool)>>,
}

#[derive(Default)]
struct Table {
    by_ns_pid: HashMap<i32, Proc>,
    ns_pid_of: HashMap<u64, i32>,
}

/// Runs init; returns the process exit code.
pub fn main() -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxer init: cannot start: {e}");
            return 1;
        }
    };
    match rt.block_on(serve()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sandboxer init: {e}");
            1
        }
    }
}

fn cloexec_dup(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we were started with.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

async fn serve() -> anyhow::Result<()> {
    // Not dumpable: no sandboxed process (same uid) can open our descriptors via /proc.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let ctl_in = cloexec_dup(0)?;
    let ctl_out = cloexec_dup(1)?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto our own standard descriptors.
    unsafe {
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0);
        libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
    }
    let mut reader = pipe::Receiver::from_owned_fd(ctl_in)?;
    let mut writer = pipe::Sender::from_owned_fd(ctl_out)?;
    let (tx, mut rx) = mpsc::channel::<(Event, Vec<u8>)>(256);
    let writer_task = tokio::spawn(async move {
        while let Some((ev, payload)) = rx.recv().await {
            if proto::write_frame(&mut writer, &ev, &payload)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    let workspace = Workspace::open(WORKSPACE)?;
    let table = Arc::new(Mutex::new(Table::default()));
    tx.send((
        Event::Ready {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        Vec::new(),
    ))
    .await?;
    loop {
        tokio::select! {
            frame = proto::read_frame::<_, Request>(&mut reader) => {
                let (req, payload) = match frame {
                    Ok(f) => f,
                    // The agent closed the channel (destroy) or is gone.
                    Err(_) => break,
                };
                handle(req, payload, &tx, &table, &workspace).await;
            }
            _ = sigchld.recv() => reap(&table),
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_millis(200), writer_task).await;
    Ok(())
}

async fn handle(
    req: Request,
    payload: Vec<u8>,
    tx: &Outbox,
    table: &Arc<Mutex<Table>>,
    ws: &Workspace,
) {
    match req {
        Request::Spawn {
            pid,
            argv,
            env,
            cwd,
            keep_stdin_open,
        } => {
            if let Err(error) = spawn(pid, argv, env, cwd, keep_stdin_open, payload, tx, table) {
                let _ = tx
                    .send((Event::SpawnFailed { pid, error }, Vec::new()))
                    .await;
            }
        }
        Request::Stdin { pid, close } => {
            let t = lock(table);
            let sender = t
                .ns_pid_of
                .get(&pid)
                .and_then(|n| t.by_ns_pid.get(n))
                .and_then(|p| p.stdin.clone());
            drop(t);
            if let Some(s) = sender {
                let _ = s.send((payload, close));
            }
        }
        Request::Kill { pid } => {
            let ns_pid = lock(table).ns_pid_of.get(&pid).copied();
            if let Some(n) = ns_pid {
                kill_tree(n);
            }
        }
        Request::WriteFile { req, path, append } => {
            let result = match ws.write(&path, &payload, append) {
                Ok(()) => FileResult::Written,
                Err(e) => FileResult::Failed {
                    kind: e.kind,
                    message: e.message,
                },
            };
            let _ = tx.send((Event::FileDone { req, result }, Vec::new())).await;
        }
        Request::ReadFile {
            req,
            path,
            offset,
            max,
        } => {
            let (result, data) = match ws.read(&path, offset, max) {
                Ok((data, size)) => (FileResult::Read { size }, data),
                Err(e) => (
                    FileResult::Failed {
                        kind: e.kind,
                        message: e.message,
                    },
                    Vec::new(),
                ),
            };
            let _ = tx.send((Event::FileDone { req, result }, data)).await;
        }
        Request::ListDir { req, path } => {
            let result = match ws.list(&path) {
                Ok(entries) => FileResult::Listed { entries },
                Err(e) => FileResult::Failed {
                    kind: e.kind,
                    message: e.message,
                },
            };
            let _ = tx.send((Event::FileDone { req, result }, Vec::new())).await;
        }
    }
}

fn lock(t: &Arc<Mutex<Table>>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

fn working_folder(cwd: &str) -> String {
    if cwd.is_empty() {
        WORKSPACE.to_owned()
    } else if cwd.starts_with('/') {
        cwd.to_owned()
    } else {
        format!("{WORKSPACE}/{cwd}")
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    pid: u64,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    keep_stdin_open: bool,
    stdin: Vec<u8>,
    tx: &Outbox,
    table: &Arc<Mutex<Table>>,
) -> Result<(), String> {
    let Some(program) = argv.first() else {
        return Err("the command is empty".into());
    };
    let dir = working_folder(&cwd);
    if !std::path::Path::new(&dir).is_dir() {
        return Err(format!("the working folder {dir} does not exist"));
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a kill reaches what it started in the same group.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("no such program: {program}"),
        std::io::ErrorKind::PermissionDenied => format!("{program}: permission denied"),
        _ => format!("{program}: {e}"),
    })?;
    let ns_pid = child.id() as i32;
    let (exit_tx, exit_rx) = oneshot::channel();
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    {
        let mut t = lock(table);
        t.by_ns_pid.insert(
            ns_pid,
            Proc {
                exit: Some(exit_tx),
                stdin: Some(stdin_tx.clone()),
            },
        );
        t.ns_pid_of.insert(pid, ns_pid);
    }
    let fds = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    // The std child is never waited on: the SIGCHLD loop reaps it with its rusage.
    drop(child);
    let (Some(cin), Some(cout), Some(cerr)) = fds else {
        kill_tree(ns_pid);
        return Err("the command's pipes were not created".into());
    };
    let cin = pipe::Sender::from_owned_fd(OwnedFd::from(cin)).map_err(|e| e.to_string());
    let cout = pipe::Receiver::from_owned_fd(OwnedFd::from(cout)).map_err(|e| e.to_string());
    let cerr = pipe::Receiver::from_owned_fd(OwnedFd::from(cerr)).map_err(|e| e.to_string());
    let (cin, cout, cerr) = match (cin, cout, cerr) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            kill_tree(ns_pid);
            return Err(format!("the command's pipes: {e}"));
        }
    };
    let _ = stdin_tx.send((stdin, !keep_stdin_open));
    drop(stdin_tx);
    tokio::spawn(feed_stdin(cin, stdin_rx));
    let (exited_tx, exited_rx) = watch::channel(false);
    let out = tokio::spawn(forward(
        pid,
        Stream::Stdout,
        cout,
        tx.clone(),
        exited_rx.clone(),
    ));
    let err = tokio::spawn(forward(pid, Stream::Stderr, cerr, tx.clone(), exited_rx));
    let tx = tx.clone();
    let table = table.clone();
    tokio::spawn(async move {
        let (status, cpu_us) = exit_rx.await.unwrap_or((libc::SIGKILL, 0));
        let _ = exited_tx.send(true);
        let _ = out.await;
        let _ = err.await;
        {
            let mut t = lock(&table);
            t.by_ns_pid.remove(&ns_pid);
            t.ns_pid_of.remove(&pid);
        }
        let (code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            (None, None)
        };
        let _ = tx
            .send((
                Event::Exited {
                    pid,
                    code,
                    signal,
                    cpu_us,
                },
                Vec::new(),
            ))
            .await;
    });
    Ok(())
}

async fn feed_stdin(mut pipe: pipe::Sender, mut rx: mpsc::UnboundedReceiver<(Vec<u8>, bool)>) {
    while let Some((data, close)) = rx.recv().await {
        // A command that closed its stdin (EPIPE) just does not get the rest.
        if !data.is_empty() && pipe.write_all(&data).await.is_err() {
            return;
        }
        if close {
            return;
        }
    }
}

/// Forwards one output pipe. After the command exited, reading goes on only while output
/// keeps coming within [`DRAIN`] (a daemon it left behind may hold the pipe forever).
async fn forward(
    pid: u64,
    stream: Stream,
    mut pipe: pipe::Receiver,
    tx: Outbox,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = if *exited.borrow() {
            match tokio::time::timeout(DRAIN, pipe.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                r = pipe.read(&mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send((Event::Output { pid, stream }, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Reaps every child that ended, handing each its wait status and CPU time.
fn reap(table: &Arc<Mutex<Table>>) {
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-buffer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: plain wait4 on our own children.
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
        if pid <= 0 {
            return;
        }
        let cpu_us = (ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64) * 1_000_000
            + ru.ru_utime.tv_usec as u64
            + ru.ru_stime.tv_usec as u64;
        let mut t = lock(table);
        if let Some(p) = t.by_ns_pid.get_mut(&pid)
            && let Some(exit) = p.exit.take()
        {
            let _ = exit.send((status, cpu_us));
            p.stdin = None;
        }
    }
}

/// `(pid, parent pid, process group)` of every process this pid namespace shows.
fn processes() -> Vec<(i32, i32, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(pgrp)) = (
            f.get(1).and_then(|v| v.parse().ok()),
            f.get(2).and_then(|v| v.parse().ok()),
        ) {
            out.push((pid, ppid, pgrp));
        }
    }
    out
}

/// Kills `root`, its process group, and every descendant still linked to it. (A daemon
/// that left both by `setsid` and a double fork is out of reach here; it dies with the
/// sandbox, whose cgroup is killed whole.)
fn kill_tree(root: i32) {
    for _ in 0..3 {
        let procs = processes();
        let mut victims = vec![root];
        let mut i = 0;
        while i < victims.len() {
            let parent = victims[i];
            for &(pid, ppid, _) in &procs {
                if ppid == parent && !victims.contains(&pid) {
                    victims.push(pid);
                }
            }
            i += 1;
        }
        for &(pid, _, pgrp) in &procs {
            if pgrp == root && !victims.contains(&pid) {
                victims.push(pid);
            }
        }
        // SAFETY: kill(2) on pids of this namespace; stale ones give ESRCH.
        unsafe {
            libc::kill(-root, libc::SIGKILL);
            for pid in &victims {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        if victims.len() == 1 {
            return;
        }
    }
}
