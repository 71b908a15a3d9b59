//! Starting bubblewrap for a sandbox, with the steps that must happen between `fork` and
//! `exec` (in this order, as raw system calls in the child):
//!
//! 1. join the sandbox's cgroup (write `0` to each `cgroup.procs`), so bwrap and everything
//!    under it is counted and limited from its first instruction;
//! 2. drop to the sandbox's unprivileged uid and gid with no supplementary groups (bwrap
//!    started by root keeps host-root powers inside its user namespace);
//! 3. `PR_SET_PDEATHSIG = SIGKILL`, set after the uid change (which would clear it), and a
//!    check that the agent did not die meanwhile: bwrap (and with `--die-with-parent` the
//!    whole sandbox) dies with the agent;
//! 4. let bwrap inherit the seccomp program descriptors.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, and tokio's blocking
//! threads come and go: every spawn happens on one dedicated thread that lives as long as
//! the agent ([`Spawner`]). The child is a `tokio::process::Child` (tokio reaps it; the
//! agent never calls `waitpid(-1)`).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What to start.
pub struct Launch {
    pub bwrap: PathBuf,
    pub args: Vec<OsString>,
    /// The command after bwrap's `--`.
    pub command: Vec<OsString>,
    /// `cgroup.procs` files to join.
    pub join: Vec<PathBuf>,
    /// The host uid and gid to run as (`None`: stay as the agent's own).
    pub ids: Option<(u32, u32)>,
    /// Descriptors bwrap must inherit (the seccomp programs).
    pub inherit: Vec<OwnedFd>,
}

/// A seccomp program in a pipe, ready for `--add-seccomp-fd`.
pub fn program_fd(program: &[u8]) -> io::Result<OwnedFd> {
    let (reader, mut writer) = io::pipe()?;
    // Programs are a few hundred bytes; the pipe buffer (64 KiB) takes them whole.
    io::Write::write_all(&mut writer, program)?;
    drop(writer);
    Ok(OwnedFd::from(reader))
}

fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The `std` command for `launch`, stdio piped (stdin/stdout: init's control channel;
/// stderr: bwrap's and init's messages).
pub fn command(launch: Launch) -> io::Result<std::process::Command> {
    let joins: Vec<File> = launch
        .join
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .collect::<io::Result<_>>()?;
    let parent = std::process::id() as libc::pid_t;
    let ids = launch.ids;
    let inherit = launch.inherit;
    let mut cmd = std::process::Command::new(&launch.bwrap);
    cmd.args(&launch.args)
        .args(&launch.command)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure makes only async-signal-safe raw system calls and allocates
    // nothing; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(move || {
            for f in &joins {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = ids {
                check(libc::syscall(
                    libc::SYS_setgroups,
                    0,
                    std::ptr::null::<libc::gid_t>(),
                ))?;
                check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
                check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) as libc::c_long)?;
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            for fd in &inherit {
                check(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) as libc::c_long)?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

struct Job {
    cmd: std::process::Command,
    reply: tokio::sync::oneshot::Sender<io::Result<tokio::process::Child>>,
}

/// The one thread every sandbox is forked from (see the module docs).
#[derive(Clone)]
pub struct Spawner {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread; children are registered with `runtime` for reaping.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandbox-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                for job in rx {
                    let r = tokio::process::Command::from(job.cmd).spawn();
                    let _ = job.reply.send(r);
                }
            })?;
        Ok(Spawner { tx })
    }

    /// Spawns `cmd` from the spawner thread.
    pub async fn spawn(&self, cmd: std::process::Command) -> io::Result<tokio::process::Child> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { cmd, reply })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

/// Whether this process may switch uids (it runs as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The path of `program` on `PATH`, when it is not a path already.
pub fn which(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}
