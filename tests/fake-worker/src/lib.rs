//! What the provider fakes share when they stand in for the provider's workers: a sandbox's
//! filesystem ([`SandboxFs`], a temporary folder whose paths are the sandbox's paths) and
//! the commands run in it ([`Process`], a real child process with its output buffered and
//! addressable by offset, the way Modal's command router and E2B's envd hand it out).
//!
//! Commands are plain child processes of the fake (no isolation: the fakes only ever run
//! commands the tests send them, on loopback). Their working folder and `HOME` are inside
//! the sandbox folder, so relative paths and `$HOME` mean the same thing to a command as to
//! the fake's file API; absolute paths inside a command's arguments are the machine's own.
//! Each command runs in its own process group, which a timeout or a kill ends as a whole.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::watch;

/// Why a sandbox path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Malformed: a `..` component, a NUL byte.
    Invalid(String),
    /// It leads outside the sandbox (a symlink that points out).
    Outside(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Invalid(p) => write!(f, "invalid path {p:?}"),
            PathError::Outside(p) => write!(f, "path {p:?} leads outside the sandbox"),
        }
    }
}

impl std::error::Error for PathError {}

/// A sandbox's filesystem: a temporary folder standing for the sandbox's `/`, removed when
/// the value is dropped.
pub struct SandboxFs {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: String,
}

impl SandboxFs {
    /// A fresh sandbox folder with `/tmp` and the home folder `home` (an absolute sandbox
    /// path such as `/home/user` or `/root`) in it.
    pub fn new(home: &str) -> io::Result<SandboxFs> {
        let dir = tempfile::Builder::new().prefix("fake-sandbox-").tempdir()?;
        let root = dir.path().canonicalize()?;
        let fs = SandboxFs {
            _dir: dir,
            root,
            home: normalize_absolute(home).unwrap_or_else(|| "/".to_owned()),
        };
        std::fs::create_dir_all(fs.root.join("tmp"))?;
        std::fs::create_dir_all(fs.host_path_unchecked(&fs.home))?;
        Ok(fs)
    }

    /// The folder on this machine that is the sandbox's `/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sandbox's home folder (absolute sandbox path).
    pub fn home(&self) -> &str {
        &self.home
    }

    /// The absolute sandbox path `path` names: absolute as is, `~` and `~/…` and relative
    /// paths from the home folder. `..` components and NUL bytes are refused.
    pub fn absolute(&self, path: &str) -> Result<String, PathError> {
        if path.contains('\0') {
            return Err(PathError::Invalid(path.replace('\0', "\\0")));
        }
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else if path == "~" {
            self.home.clone()
        } else if let Some(rest) = path.strip_prefix("~/") {
            format!("{}/{rest}", self.home)
        } else {
            format!("{}/{path}", self.home)
        };
        normalize_absolute(&joined).ok_or_else(|| PathError::Invalid(path.to_owned()))
    }

    /// The file on this machine for the sandbox path `path` (see [`SandboxFs::absolute`]).
    /// Refuses a path whose existing part resolves (through symlinks) outside the sandbox.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, PathError> {
        let absolute = self.absolute(path)?;
        let host = self.host_path_unchecked(&absolute);
        // The deepest part that exists must stay inside the root once symlinks resolve.
        let mut probe = host.as_path();
        loop {
            match probe.canonicalize() {
                Ok(real) => {
                    if real.starts_with(&self.root) {
                        return Ok(host);
                    }
                    return Err(PathError::Outside(path.to_owned()));
                }
                Err(_) => match probe.parent() {
                    Some(parent) => probe = parent,
                    None => return Err(PathError::Outside(path.to_owned())),
                },
            }
        }
    }

    /// The sandbox path of a file on this machine inside the sandbox folder.
    pub fn sandbox_path(&self, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(&self.root).ok()?;
        let mut out = String::new();
        for c in rel.components() {
            out.push('/');
            out.push_str(&c.as_os_str().to_string_lossy());
        }
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    fn host_path_unchecked(&self, absolute: &str) -> PathBuf {
        let mut p = self.root.clone();
        for part in absolute.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
        }
        p
    }
}

/// `/a/./b//c` → `/a/b/c`; `None` for a `..` component.
fn normalize_absolute(path: &str) -> Option<String> {
    let mut out = String::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => {
                out.push('/');
                out.push_str(&s.to_string_lossy());
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program and arguments; the program is looked up on `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Environment on top of `PATH` and `HOME` (later entries win).
    pub env: Vec<(String, String)>,
    /// Working folder as a sandbox path; `None` is the home folder.
    pub cwd: Option<String>,
    /// Kill the process group after this long.
    pub timeout: Option<Duration>,
}

/// Why a command could not start.
#[derive(Debug)]
pub enum SpawnError {
    /// No program given.
    Empty,
    /// The working folder is not a folder of the sandbox.
    BadCwd(String),
    /// The program is missing or cannot be run.
    Program(String, io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::Empty => write!(f, "no command given"),
            SpawnError::BadCwd(cwd) => write!(f, "cwd '{cwd}' does not exist"),
            SpawnError::Program(p, e) => write!(f, "cannot run {p:?}: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fd {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code when it exited.
    pub code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Killed by [`Process::kill`].
    pub killed: bool,
    /// Wall time from start to end.
    pub duration: Duration,
}

#[derive(Default)]
struct Output {
    data: Vec<u8>,
    eof: bool,
}

#[derive(Default)]
struct State {
    stdout: Output,
    stderr: Output,
    exit: Option<ExitInfo>,
    killed: bool,
    timed_out: bool,
    /// Bytes written to stdin so far (for offset-addressed writes).
    stdin_written: u64,
    stdin_closed: bool,
    /// A built-in command's stdin, collected until it is closed.
    builtin_stdin: Vec<u8>,
}

/// A builtin's work: stdin in, (stdout, stderr, exit code) out.
pub type Builtin = Box<dyn FnOnce(Vec<u8>) -> (Vec<u8>, Vec<u8>, i32) + Send>;

struct Inner {
    pid: u32,
    started: Instant,
    state: Mutex<State>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    builtin: Mutex<Option<Builtin>>,
    changed: watch::Sender<u64>,
}

/// A started command: real (a child process) or built in (a function standing for a tool
/// the provider ships in every sandbox). Cheap to clone; every clone is the same command.
#[derive(Clone)]
pub struct Process {
    inner: Arc<Inner>,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.inner.pid)
            .finish()
    }
}

impl Process {
    /// Starts `spec` in `fs`: working folder and `HOME` inside the sandbox folder, `PATH`
    /// from this machine, the spec's environment on top, stdin a pipe, its own process
    /// group. Must be called inside a tokio runtime.
    pub fn spawn(fs: &SandboxFs, spec: &ExecSpec) -> Result<Process, SpawnError> {
        let program = spec.argv.first().ok_or(SpawnError::Empty)?;
        let cwd_path = spec.cwd.as_deref().unwrap_or("~");
        let cwd = fs
            .resolve(cwd_path)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| SpawnError::BadCwd(cwd_path.to_owned()))?;
        let home = fs.host_path_unchecked(fs.home());
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        env.insert("HOME".into(), home.to_string_lossy().into_owned());
        for (k, v) in &spec.env {
            env.insert(k.clone(), v.clone());
        }
        let mut command = tokio::process::Command::new(program);
        command
            .args(&spec.argv[1..])
            .current_dir(&cwd)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| SpawnError::Program(program.clone(), e))?;
        let pid = child.id().unwrap_or(0);
        let process = Process::new(pid, child.stdin.take(), None);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(process.clone().pump(out, Fd::Stdout));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(process.clone().pump(err, Fd::Stderr));
        }
        let timeout = spec.timeout;
        let me = process.clone();
        tokio::spawn(async move {
            let status = match timeout {
                Some(t) => match tokio::time::timeout(t, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        me.inner.state.lock().timed_out = true;
                        me.signal_group(libc::SIGKILL);
                        child.wait().await
                    }
                },
                None => child.wait().await,
            };
            let (code, signal) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    (s.code(), s.signal())
                }
                Err(_) => (None, Some(libc::SIGKILL)),
            };
            me.finish(code, signal);
        });
        Ok(process)
    }

    /// A built-in command: `work` runs once stdin is closed, its output becomes the
    /// command's output and its code the exit code.
    pub fn builtin(work: Builtin) -> Process {
        Process::new(0, None, Some(work))
    }

    fn new(pid: u32, stdin: Option<ChildStdin>, builtin: Option<Builtin>) -> Process {
        let (changed, _) = watch::channel(0);
        Process {
            inner: Arc::new(Inner {
                pid,
                started: Instant::now(),
                state: Mutex::new(State::default()),
                stdin: tokio::sync::Mutex::new(stdin),
                builtin: Mutex::new(builtin),
                changed,
            }),
        }
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    async fn pump(self, mut stream: impl AsyncRead + Unpin, fd: Fd) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            {
                let mut state = self.inner.state.lock();
                let out = match fd {
                    Fd::Stdout => &mut state.stdout,
                    Fd::Stderr => &mut state.stderr,
                };
                if n == 0 {
                    out.eof = true;
                } else {
                    out.data.extend_from_slice(&buf[..n]);
                }
            }
            self.bump();
            if n == 0 {
                return;
            }
        }
    }

    fn finish(&self, code: Option<i32>, signal: Option<i32>) {
        {
            let mut state = self.inner.state.lock();
            let info = ExitInfo {
                code,
                signal,
                timed_out: state.timed_out,
                killed: state.killed,
                duration: self.inner.started.elapsed(),
            };
            state.exit = Some(info);
        }
        self.bump();
    }

    /// The process id (0 for a built-in command).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// When it started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// Writes `data` to stdin at `offset` (bytes before the stream's current end are not
    /// written again, as the router's offset-addressed writes promise), closing it after
    /// when `eof`. Writing to a closed stdin is an error.
    pub async fn write_stdin(&self, offset: u64, data: &[u8], eof: bool) -> io::Result<()> {
        let skip = {
            let state = self.inner.state.lock();
            if state.stdin_closed {
                return if data.is_empty() && eof {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed"))
                };
            }
            if offset > state.stdin_written {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "offset {offset} is past the {} bytes written",
                        state.stdin_written
                    ),
                ));
            }
            usize::try_from(state.stdin_written - offset)
                .unwrap_or(usize::MAX)
                .min(data.len())
        };
        let fresh = &data[skip..];
        let builtin = self.inner.builtin.lock().is_some();
        if builtin {
            let work = {
                let mut state = self.inner.state.lock();
                state.builtin_stdin.extend_from_slice(fresh);
                state.stdin_written += fresh.len() as u64;
                if eof {
                    state.stdin_closed = true;
                    self.inner.builtin.lock().take()
                } else {
                    None
                }
            };
            if let Some(work) = work {
                let input = std::mem::take(&mut self.inner.state.lock().builtin_stdin);
                let (out, err, code) = work(input);
                {
                    let mut state = self.inner.state.lock();
                    state.stdout = Output {
                        data: out,
                        eof: true,
                    };
                    state.stderr = Output {
                        data: err,
                        eof: true,
                    };
                }
                self.finish(Some(code), None);
            }
            return Ok(());
        }
        let mut stdin = self.inner.stdin.lock().await;
        if let Some(pipe) = stdin.as_mut() {
            // A process that has exited (or closed its stdin) makes the write fail: the
            // bytes count as written, as they do for a real pipe whose reader went away.
            let _ = pipe.write_all(fresh).await;
            let _ = pipe.flush().await;
        }
        let mut state = self.inner.state.lock();
        state.stdin_written += fresh.len() as u64;
        if eof {
            state.stdin_closed = true;
            drop(state);
            *stdin = None;
        }
        Ok(())
    }

    /// Whether stdin is closed, and how many bytes went into it.
    pub fn stdin_status(&self) -> (u64, bool) {
        let state = self.inner.state.lock();
        (state.stdin_written, state.stdin_closed)
    }

    /// The output of `fd` from `offset` on as it is now, and whether the stream has ended.
    pub fn read(&self, fd: Fd, offset: u64) -> (Vec<u8>, bool) {
        let state = self.inner.state.lock();
        let out = match fd {
            Fd::Stdout => &state.stdout,
            Fd::Stderr => &state.stderr,
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(out.data.len());
        (out.data[start..].to_vec(), out.eof)
    }

    /// Waits until `fd` has bytes past `offset` or has ended; returns them as [`Process::read`].
    pub async fn read_more(&self, fd: Fd, offset: u64) -> (Vec<u8>, bool) {
        let mut rx = self.inner.changed.subscribe();
        loop {
            let (data, eof) = self.read(fd, offset);
            if !data.is_empty() || eof {
                return (data, eof);
            }
            if rx.changed().await.is_err() {
                return self.read(fd, offset);
            }
        }
    }

    /// How it ended, if it has.
    pub fn exit(&self) -> Option<ExitInfo> {
        self.inner.state.lock().exit
    }

    /// Waits for the end.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.inner.changed.subscribe();
        loop {
            if let Some(exit) = self.exit() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `inner`, which `self` keeps alive: unreachable, but
                // answer something sane rather than loop.
                return ExitInfo {
                    code: None,
                    signal: Some(libc::SIGKILL),
                    timed_out: false,
                    killed: true,
                    duration: self.inner.started.elapsed(),
                };
            }
        }
    }

    /// Sends `signal` to the command's whole process group (marks it killed for
    /// `SIGKILL`/`SIGTERM`). A command that has ended is left alone.
    pub fn kill(&self, signal: i32) {
        if self.exit().is_some() || self.inner.pid == 0 {
            return;
        }
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            self.inner.state.lock().killed = true;
        }
        self.signal_group(signal);
    }

    fn signal_group(&self, signal: i32) {
        let Ok(pgid) = libc::pid_t::try_from(self.inner.pid) else {
            return;
        };
        if pgid > 0 {
            // SAFETY: killpg has no memory effects; a group that is gone yields ESRCH.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn paths_map_into_the_sandbox_folder_and_never_out() {
        let fs = SandboxFs::new("/home/user").unwrap();
        assert_eq!(fs.absolute("a/b.txt").unwrap(), "/home/user/a/b.txt");
        assert_eq!(fs.absolute("~/x").unwrap(), "/home/user/x");
        assert_eq!(fs.absolute("/tmp//./y").unwrap(), "/tmp/y");
        assert!(matches!(
            fs.absolute("../../etc/passwd"),
            Err(PathError::Invalid(_))
        ));
        let host = fs.resolve("/tmp/y").unwrap();
        assert!(host.starts_with(fs.root()));
        assert_eq!(fs.sandbox_path(&host).unwrap(), "/tmp/y");
        std::os::unix::fs::symlink("/etc", fs.root().join("tmp/out")).unwrap();
        assert!(matches!(
            fs.resolve("/tmp/out/passwd"),
            Err(PathError::Outside(_))
        ));
    }

    #[test]
    fn runs_a_command_in_the_sandbox_with_stdin_and_offsets() {
        rt().block_on(async {
            let fs = SandboxFs::new("/root").unwrap();
            let spec = ExecSpec {
                argv: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat; echo \"$HOME\" >&2; pwd > where; exit 3".into(),
                ],
                ..Default::default()
            };
            let p = Process::spawn(&fs, &spec).unwrap();
            p.write_stdin(0, b"hello ", false).await.unwrap();
            // Offset 3 resends "lo " of which only the unseen tail goes in.
            p.write_stdin(3, b"lo world", true).await.unwrap();
            let exit = p.wait().await;
            assert_eq!(exit.code, Some(3));
            let (out, _) = p.read_more(Fd::Stdout, 0).await;
            assert_eq!(out, b"hello world");
            let (tail, _) = p.read(Fd::Stdout, 6);
            assert_eq!(tail, b"world");
            let (err, _) = p.read(Fd::Stderr, 0);
            assert!(String::from_utf8_lossy(&err).trim_end().ends_with("/root"));
            let wherefile = std::fs::read_to_string(fs.resolve("/root/where").unwrap()).unwrap();
            assert!(
                wherefile
                    .trim_end()
                    .starts_with(&*fs.root().to_string_lossy())
            );
        });
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        rt().block_on(async {
            let fs = SandboxFs::new("/root").unwrap();
            let spec = ExecSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), "sleep 30 & sleep 30".into()],
                timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            };
            let p = Process::spawn(&fs, &spec).unwrap();
            let exit = p.wait().await;
            assert!(exit.timed_out);
            assert_eq!(exit.signal, Some(libc::SIGKILL));
            // The background sleep held stdout open: its end proves the group died.
            let (_, eof) = tokio::time::timeout(Duration::from_secs(5), p.read_more(Fd::Stdout, 0))
                .await
                .unwrap();
            assert!(eof);
        });
    }

    #[test]
    fn missing_programs_and_folders_do_not_start() {
        rt().block_on(async {
            let fs = SandboxFs::new("/root").unwrap();
            let spec = ExecSpec {
                argv: vec!["definitely-not-a-program-here".into()],
                ..Default::default()
            };
            assert!(matches!(
                Process::spawn(&fs, &spec),
                Err(SpawnError::Program(..))
            ));
            let spec = ExecSpec {
                argv: vec!["true".into()],
                cwd: Some("/nowhere".into()),
                ..Default::default()
            };
            assert!(matches!(
                Process::spawn(&fs, &spec),
                Err(SpawnError::BadCwd(_))
            ));
        });
    }

    #[test]
    fn builtins_run_on_their_stdin() {
        rt().block_on(async {
            let p = Process::builtin(Box::new(|input: Vec<u8>| {
                (input.to_ascii_uppercase(), Vec::new(), 0)
            }));
            p.write_stdin(0, b"abc", true).await.unwrap();
            assert_eq!(p.wait().await.code, Some(0));
            assert_eq!(p.read(Fd::Stdout, 1).0, b"BC");
        });
    }
}
