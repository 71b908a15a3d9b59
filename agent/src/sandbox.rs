//! One running sandbox as the agent holds it: the bwrap child, the channel to its init,
//! its processes (output kept up to each one's limit, readable from a cursor while it
//! runs) and its pending file operations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::cgroup::SandboxCgroup;
use crate::error::AgentError;
use crate::proto::{self, Event, FileError, FileResult, Request, Stream};
use crate::wire::{Chunk, ExecRequest, ExecResponse, Exit, ExitStatus, Output};

/// Longest wait for init's first message.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a file operation.
const FILE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an ended process's output stays readable.
const KEEP_ENDED: Duration = Duration::from_secs(600);
/// The most processes one sandbox may have started and not yet forgotten.
const MAX_PROCESSES: usize = 256;

/// Output and end of one process.
#[derive(Default)]
struct ProcState {
    /// Kept output: stream, cursor position of its first byte, bytes.
    chunks: Vec<(Stream, u64, Vec<u8>)>,
    /// Bytes kept so far (the cursor's space).
    total: u64,
    kept: [u64; 2],
    truncated: [bool; 2],
    limit: u64,
    exit: Option<Exit>,
    timed_out: bool,
    killed: bool,
    oom_before: u64,
    stdin_open: bool,
}

/// A started process.
pub struct Proc {
    st: Mutex<ProcState>,
    changed: Notify,
    started: Instant,
}

fn index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGPIPE => "SIGPIPE".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGXCPU => "SIGXCPU".into(),
        n => format!("signal {n}"),
    }
}

impl Proc {
    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, stream: Stream, data: &[u8]) {
        let mut st = self.lock();
        let i = index(stream);
        let room = st.limit.saturating_sub(st.kept[i]);
        let take = (data.len() as u64).min(room) as usize;
        if take < data.len() {
            st.truncated[i] = true;
        }
        if take > 0 {
            let at = st.total;
            st.chunks.push((stream, at, data[..take].to_vec()));
            st.total += take as u64;
            st.kept[i] += take as u64;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    fn finish(&self, status: ExitStatus, code: Option<i32>, cpu_ms: Option<u64>, detail: String) {
        let mut st = self.lock();
        if st.exit.is_none() {
            st.exit = Some(Exit {
                status,
                exit_code: code,
                duration_ms: self.started.elapsed().as_millis() as u64,
                cpu_ms,
                detail,
            });
            st.stdin_open = false;
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// The end, once there is one.
    pub fn exit(&self) -> Option<Exit> {
        self.lock().exit.clone()
    }

    /// Waits for the end.
    pub async fn wait(&self) -> Exit {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.exit() {
                return e;
            }
            notified.await;
        }
    }

    /// Output after `cursor`, waiting up to `wait` for some; at most about `max` bytes.
    pub async fn read(
        &self,
        cursor: &str,
        wait: Duration,
        max: usize,
    ) -> Result<Output, AgentError> {
        let from: u64 = if cursor.is_empty() {
            0
        } else {
            cursor.parse().map_err(|_| {
                AgentError::Invalid(format!("cursor {cursor:?} is not one this agent issued"))
            })?
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if from > st.total {
                    return Err(AgentError::Invalid(format!(
                        "cursor {from} is past the output ({} bytes)",
                        st.total
                    )));
                }
                if from < st.total || st.exit.is_some() {
                    let mut chunks = Vec::new();
                    let mut at = from;
                    let mut budget = max.max(1);
                    for (stream, start, data) in &st.chunks {
                        let end = start + data.len() as u64;
                        if end <= at || budget == 0 {
                            continue;
                        }
                        let skip = (at - start) as usize;
                        let take = (data.len() - skip).min(budget);
                        chunks.push(Chunk {
                            stream: *stream,
                            data: data[skip..skip + take].to_vec(),
                        });
                        at += take as u64;
                        budget -= take;
                    }
                    let done = at == st.total;
                    return Ok(Output {
                        chunks,
                        cursor: at.to_string(),
                        exit: if done { st.exit.clone() } else { None },
                        truncated: st.truncated[0] || st.truncated[1],
                    });
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Output {
                    chunks: Vec::new(),
                    cursor: from.to_string(),
                    exit: None,
                    truncated: self.lock().truncated.iter().any(|t| *t),
                });
            }
        }
    }

    fn collect(&self) -> ExecResponse {
        let st = self.lock();
        let mut out = [Vec::new(), Vec::new()];
        for (stream, _, data) in &st.chunks {
            out[index(*stream)].extend_from_slice(data);
        }
        let [stdout, stderr] = out;
        ExecResponse {
            exit: st.exit.clone().unwrap_or(Exit {
                status: ExitStatus::Killed,
                exit_code: None,
                duration_ms: self.started.elapsed().as_millis() as u64,
                cpu_ms: None,
                detail: "no end was reported".into(),
            }),
            stdout,
            stdout_truncated: st.truncated[0],
            stderr,
            stderr_truncated: st.truncated[1],
        }
    }
}

#[derive(Default)]
struct Inner {
    procs: HashMap<u64, Arc<Proc>>,
    files: HashMap<u64, oneshot::Sender<(FileResult, Vec<u8>)>>,
    next: u64,
    /// Set once init's channel closed: why.
    ended: Option<String>,
}

/// Limits the API enforces on requests.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_output_bytes: u64,
    pub max_exec_timeout_ms: u64,
}

/// A running sandbox.
pub struct Live {
    pub id: String,
    cgroup: SandboxCgroup,
    memory_mib: u32,
    base_env: Vec<(String, String)>,
    tx: mpsc::UnboundedSender<(Request, Vec<u8>)>,
    inner: Arc<Mutex<Inner>>,
    kill: Mutex<Option<oneshot::Sender<()>>>,
    /// `true` once bwrap has exited and been reaped.
    exited: watch::Receiver<bool>,
    stderr_tail: Arc<Mutex<String>>,
    limits: RequestLimits,
}

fn lock_inner(i: &Arc<Mutex<Inner>>) -> std::sync::MutexGuard<'_, Inner> {
    i.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    /// Takes over a freshly spawned bwrap child and waits for init to be ready.
    pub async fn start(
        id: String,
        mut child: Child,
        cgroup: SandboxCgroup,
        memory_mib: u32,
        base_env: Vec<(String, String)>,
        limits: RequestLimits,
    ) -> Result<Arc<Live>, (AgentError, Arc<Live>)> {
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::unbounded_channel();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let (exited_tx, exited) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                _ = kill_rx => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            let _ = exited_tx.send(true);
        });
        let live = Arc::new(Live {
            id: id.clone(),
            cgroup,
            memory_mib,
            base_env,
            tx,
            inner: Arc::new(Mutex::new(Inner::default())),
            kill: Mutex::new(Some(kill_tx)),
            exited,
            stderr_tail: Arc::new(Mutex::new(String::new())),
            limits,
        });
        if let Some(e) = stderr {
            tokio::spawn(log_stderr(id.clone(), e, live.stderr_tail.clone()));
        }
        let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
            return Err((
                AgentError::Internal("bwrap's pipes were not created".into()),
                live,
            ));
        };
        tokio::spawn(write_requests(stdin, rx));
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(read_events(
            stdout,
            live.inner.clone(),
            live.cgroup.clone(),
            ready_tx,
        ));
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(live),
            Ok(Err(_)) => {
                // Give bwrap's message a moment to arrive.
                let mut ex = live.exited.clone();
                let _ = tokio::time::timeout(Duration::from_secs(1), ex.wait_for(|e| *e)).await;
                let why = live.stderr_tail();
                Err((
                    AgentError::Internal(format!(
                        "the sandbox did not start: {}",
                        if why.is_empty() {
                            "init closed its channel"
                        } else {
                            why.trim()
                        }
                    )),
                    live,
                ))
            }
            Err(_) => Err((
                AgentError::Internal(format!(
                    "the sandbox's init did not answer within {} s",
                    READY_TIMEOUT.as_secs()
                )),
                live,
            )),
        }
    }

    /// What bwrap and init last wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The sandbox's cgroup.
    pub fn cgroup(&self) -> &SandboxCgroup {
        &self.cgroup
    }

    /// Resolves once bwrap has exited (the sandbox is over).
    pub fn exited(&self) -> watch::Receiver<bool> {
        self.exited.clone()
    }

    /// Why init's channel closed, once it has.
    pub fn ended(&self) -> Option<String> {
        lock_inner(&self.inner).ended.clone()
    }

    /// Kills bwrap (and with it the pid namespace) and waits until it is reaped.
    pub async fn kill_and_wait(&self) {
        if let Some(k) = self.kill.lock().ok().and_then(|mut k| k.take()) {
            let _ = k.send(());
        }
        let mut ex = self.exited.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), ex.wait_for(|e| *e)).await;
    }

    fn send(&self, req: Request, payload: Vec<u8>) -> Result<(), AgentError> {
        if let Some(why) = self.ended() {
            return Err(AgentError::Conflict(format!(
                "the sandbox has ended: {why}"
            )));
        }
        self.tx
            .send((req, payload))
            .map_err(|_| AgentError::Conflict("the sandbox has ended".into()))
    }

    /// Starts a command; returns its process number.
    pub fn start_process(
        self: &Arc<Self>,
        req: &ExecRequest,
    ) -> Result<(u64, Arc<Proc>), AgentError> {
        let argv = match (&req.argv, &req.shell) {
            (Some(a), None) if !a.is_empty() => a.clone(),
            (Some(_), None) => return Err(AgentError::Invalid("argv is empty".into())),
            (None, Some(line)) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            (None, None) => {
                return Err(AgentError::Invalid("give a command: argv or shell".into()));
            }
            (Some(_), Some(_)) => {
                return Err(AgentError::Invalid("give argv or shell, not both".into()));
            }
        };
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(AgentError::Invalid(
                "an argument contains a NUL byte".into(),
            ));
        }
        if req.timeout_ms == 0 || req.timeout_ms > self.limits.max_exec_timeout_ms {
            return Err(AgentError::Invalid(format!(
                "timeout_ms {} is outside 1..={} (the agent's max_exec_timeout_secs)",
                req.timeout_ms, self.limits.max_exec_timeout_ms
            )));
        }
        if req.output_limit_bytes > self.limits.max_output_bytes {
            return Err(AgentError::Invalid(format!(
                "output_limit_bytes {} is above the agent's max_output_bytes {}",
                req.output_limit_bytes, self.limits.max_output_bytes
            )));
        }
        let mut env = self.base_env.clone();
        for (k, v) in &req.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(AgentError::Invalid(format!(
                    "environment variable {k:?}: names must be non-empty without '=' or NUL"
                )));
            }
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let cwd = req.cwd.clone().unwrap_or_default();
        if cwd.contains('\0') {
            return Err(AgentError::Invalid("cwd contains a NUL byte".into()));
        }
        let proc = Arc::new(Proc {
            st: Mutex::new(ProcState {
                limit: req.output_limit_bytes,
                oom_before: self.cgroup.oom_kills(),
                stdin_open: req.keep_stdin_open,
                ..ProcState::default()
            }),
            changed: Notify::new(),
            started: Instant::now(),
        });
        let pid = {
            let mut inner = lock_inner(&self.inner);
            if inner.procs.len() >= MAX_PROCESSES {
                return Err(AgentError::Conflict(format!(
                    "the sandbox has {MAX_PROCESSES} processes whose output is kept; read or kill some first"
                )));
            }
            inner.next += 1;
            let pid = inner.next;
            inner.procs.insert(pid, proc.clone());
            pid
        };
        if let Err(e) = self.send(
            Request::Spawn {
                pid,
                argv,
                env,
                cwd,
                keep_stdin_open: req.keep_stdin_open,
            },
            req.stdin.clone(),
        ) {
            lock_inner(&self.inner).procs.remove(&pid);
            return Err(e);
        }
        // The deadline: kill the command and whatever it started with it.
        let timeout = Duration::from_millis(req.timeout_ms);
        let me = Arc::downgrade(self);
        let p = proc.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(timeout, p.wait()).await.is_err() {
                p.lock().timed_out = true;
                if let Some(live) = me.upgrade() {
                    let _ = live.send(Request::Kill { pid }, Vec::new());
                }
            }
            p.wait().await;
            tokio::time::sleep(KEEP_ENDED).await;
            if let Some(live) = me.upgrade() {
                lock_inner(&live.inner).procs.remove(&pid);
            }
        });
        Ok((pid, proc))
    }

    /// Runs a command to its end.
    pub async fn exec(self: &Arc<Self>, req: &ExecRequest) -> Result<ExecResponse, AgentError> {
        let (pid, proc) = self.start_process(req)?;
        proc.wait().await;
        lock_inner(&self.inner).procs.remove(&pid);
        Ok(proc.collect())
    }

    /// A started process.
    pub fn process(&self, pid: &str) -> Result<(u64, Arc<Proc>), AgentError> {
        let n: u64 = pid
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| AgentError::NotFound(format!("no process {pid:?} in {}", self.id)))?;
        lock_inner(&self.inner)
            .procs
            .get(&n)
            .cloned()
            .map(|p| (n, p))
            .ok_or_else(|| AgentError::NotFound(format!("no process {pid:?} in {}", self.id)))
    }

    /// Writes to a started process's stdin.
    pub fn write_stdin(&self, pid: &str, data: Vec<u8>, close: bool) -> Result<(), AgentError> {
        let (n, proc) = self.process(pid)?;
        {
            let mut st = proc.lock();
            if st.exit.is_some() {
                return Err(AgentError::Conflict(format!("process {pid} has ended")));
            }
            if !st.stdin_open {
                return Err(AgentError::Conflict(format!(
                    "process {pid}'s stdin is closed (start it with keep_stdin_open to write later)"
                )));
            }
            if close {
                st.stdin_open = false;
            }
        }
        self.send(Request::Stdin { pid: n, close }, data)
    }

    /// Kills a started process (an ended one is not an error).
    pub fn kill(&self, pid: &str) -> Result<(), AgentError> {
        let (n, proc) = self.process(pid)?;
        {
            let mut st = proc.lock();
            if st.exit.is_some() {
                return Ok(());
            }
            st.killed = true;
        }
        self.send(Request::Kill { pid: n }, Vec::new())
    }

    /// One file operation through init.
    async fn file(
        &self,
        req: Request,
        payload: Vec<u8>,
    ) -> Result<(FileResult, Vec<u8>), AgentError> {
        let (tx, rx) = oneshot::channel();
        let n = {
            let mut inner = lock_inner(&self.inner);
            inner.next += 1;
            let n = inner.next;
            inner.files.insert(n, tx);
            n
        };
        let req = match req {
            Request::WriteFile { path, append, .. } => Request::WriteFile {
                req: n,
                path,
                append,
            },
            Request::ReadFile {
                path, offset, max, ..
            } => Request::ReadFile {
                req: n,
                path,
                offset,
                max,
            },
            Request::ListDir { path, .. } => Request::ListDir { req: n, path },
            other => other,
        };
        if let Err(e) = self.send(req, payload) {
            lock_inner(&self.inner).files.remove(&n);
            return Err(e);
        }
        match tokio::time::timeout(FILE_TIMEOUT, rx).await {
            Ok(Ok((FileResult::Failed { kind, message }, _))) => Err(match kind {
                FileError::NotFound => AgentError::NotFound(message),
                FileError::Invalid => AgentError::Invalid(message),
                FileError::NoSpace => AgentError::NoSpace(message),
                FileError::Other => AgentError::Internal(message),
            }),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(AgentError::Conflict("the sandbox ended".into())),
            Err(_) => {
                lock_inner(&self.inner).files.remove(&n);
                Err(AgentError::Internal(format!(
                    "the file operation took longer than {} s",
                    FILE_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Writes a file of the workspace.
    pub async fn write_file(
        &self,
        path: &str,
        data: Vec<u8>,
        append: bool,
    ) -> Result<(), AgentError> {
        crate::fsops::relative(path).map_err(|e| AgentError::Invalid(e.message))?;
        self.file(
            Request::WriteFile {
                req: 0,
                path: path.to_owned(),
                append,
            },
            data,
        )
        .await
        .map(|_| ())
    }

    /// Reads part of a file of the workspace: the bytes and the file's size.
    pub async fn read_file(
        &self,
        path: &str,
        offset: u64,
        max: u32,
    ) -> Result<(Vec<u8>, u64), AgentError> {
        crate::fsops::relative(path).map_err(|e| AgentError::Invalid(e.message))?;
        match self
            .file(
                Request::ReadFile {
                    req: 0,
                    path: path.to_owned(),
                    offset,
                    max,
                },
                Vec::new(),
            )
            .await?
        {
            (FileResult::Read { size }, data) => Ok((data, size)),
            _ => Err(AgentError::Internal(
                "init answered a read with something else".into(),
            )),
        }
    }

    /// Lists a folder of the workspace.
    pub async fn list(&self, path: &str) -> Result<Vec<proto::DirEntry>, AgentError> {
        crate::fsops::relative(path).map_err(|e| AgentError::Invalid(e.message))?;
        match self
            .file(
                Request::ListDir {
                    req: 0,
                    path: path.to_owned(),
                },
                Vec::new(),
            )
            .await?
        {
            (FileResult::Listed { entries }, _) => Ok(entries),
            _ => Err(AgentError::Internal(
                "init answered a listing with something else".into(),
            )),
        }
    }

    /// The memory limit, for messages.
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib
    }
}

async fn write_requests(
    mut stdin: ChildStdin,
    mut rx: mpsc::UnboundedReceiver<(Request, Vec<u8>)>,
) {
    while let Some((req, payload)) = rx.recv().await {
        if proto::write_frame(&mut stdin, &req, &payload)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn log_stderr(id: String, mut stderr: ChildStderr, tail: Arc<Mutex<String>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                tracing::warn!(sandbox = %id, "sandbox stderr: {}", text.trim_end());
                if let Ok(mut t) = tail.lock() {
                    t.push_str(&text);
                    if t.len() > 4096 {
                        let cut = t.len() - 4096;
                        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            }
        }
    }
}

async fn read_events(
    mut stdout: ChildStdout,
    inner: Arc<Mutex<Inner>>,
    cgroup: SandboxCgroup,
    ready: oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let why = loop {
        let (ev, payload) = match proto::read_frame::<_, Event>(&mut stdout).await {
            Ok(f) => f,
            Err(proto::FrameError::Closed) => break "init exited".to_owned(),
            Err(e) => break format!("init's channel broke: {e}"),
        };
        match ev {
            Event::Ready { .. } => {
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            Event::Output { pid, stream } => {
                let p = lock_inner(&inner).procs.get(&pid).cloned();
                if let Some(p) = p {
                    p.append(stream, &payload);
                }
            }
            Event::SpawnFailed { pid, error } => {
                let p = lock_inner(&inner).procs.get(&pid).cloned();
                if let Some(p) = p {
                    p.finish(ExitStatus::Failed, None, None, error);
                }
            }
            Event::Exited {
                pid,
                code,
                signal,
                cpu_us,
            } => {
                let p = lock_inner(&inner).procs.get(&pid).cloned();
                if let Some(p) = p {
                    let (timed_out, killed, oom_before) = {
                        let st = p.lock();
                        (st.timed_out, st.killed, st.oom_before)
                    };
                    let cpu = Some(cpu_us / 1000);
                    match (code, signal) {
                        _ if timed_out => p.finish(
                            ExitStatus::TimedOut,
                            None,
                            cpu,
                            "ran past its timeout and was killed".into(),
                        ),
                        (Some(c), _) => p.finish(ExitStatus::Exited, Some(c), cpu, String::new()),
                        (None, Some(s)) => {
                            let detail = if killed {
                                "killed by request".to_owned()
                            } else if s == libc::SIGKILL && cgroup.oom_kills() > oom_before {
                                "killed by the kernel: out of memory (the sandbox's memory limit)"
                                    .to_owned()
                            } else {
                                format!("killed by {}", signal_name(s))
                            };
                            p.finish(ExitStatus::Killed, None, cpu, detail)
                        }
                        (None, None) => p.finish(
                            ExitStatus::Killed,
                            None,
                            cpu,
                            "ended without a status".into(),
                        ),
                    }
                }
            }
            Event::FileDone { req, result } => {
                let tx = lock_inner(&inner).files.remove(&req);
                if let Some(tx) = tx {
                    let _ = tx.send((result, payload));
                }
            }
        }
    };
    let (procs, files) = {
        let mut i = lock_inner(&inner);
        i.ended = Some(why.clone());
        (
            i.procs.values().cloned().collect::<Vec<_>>(),
            std::mem::take(&mut i.files),
        )
    };
    drop(files);
    let oom = cgroup.oom_kills();
    for p in procs {
        let detail = if oom > p.lock().oom_before {
            "the sandbox ended: out of memory (the sandbox's memory limit)".to_owned()
        } else {
            format!("the sandbox ended ({why})")
        };
        p.finish(ExitStatus::Killed, None, None, detail);
    }
}
