//! A real PostgreSQL server for the tests, started by the test process itself: `initdb`
//! into a temp folder, then `postgres` on a free loopback port with its socket in that
//! folder. One server per test process (started on first use), one fresh database per
//! test ([`fresh_database`]).
//!
//! As root (CI), `initdb` refuses to run: the folder is given to the `postgres` user,
//! `initdb` runs through `runuser -u postgres --`, and the server is started as that
//! user directly (`Command::uid`), so it can carry a parent-death signal: it dies with
//! the test process even when that is killed. At a normal exit an `atexit` hook stops it
//! and removes the folder.
//!
//! The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the newest version);
//! `.ci/run` installs the `postgresql` package where they are missing.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The superuser the tests connect as, and its password (password auth, so a wrong
/// password is refused as in production).
pub const USER: &str = "sandboxer";
pub const PASSWORD: &str = "pg-test-s3cret";

/// The running server.
pub struct Server {
    /// The temp folder (data directory, socket, log).
    pub dir: PathBuf,
    /// The loopback port.
    pub port: u16,
    pid: u32,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static STARTED: OnceLock<(PathBuf, u32)> = OnceLock::new();

impl Server {
    /// The URL of database `name` as the test superuser.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A connection to database `name` as the superuser.
    pub fn client(&self, name: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(name), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to test database {name}: {e}\n{}", self.log()))
    }
}

/// The server of this test process, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

/// A new, empty database on the test server; its URL.
pub fn fresh_database() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let server = server();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut admin = server.client("postgres");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    server.url(&name)
}

/// The newest Debian PostgreSQL `bin` folder with an `initdb`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: install Debian's \
             `postgresql` package (`.ci/run` does)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root, the tests need the `postgres` user (Debian's postgresql package makes it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

fn chown_all(path: &Path, uid: u32, gid: u32) {
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {}", path.display());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

extern "C" fn stop_at_exit() {
    if let Some((dir, pid)) = STARTED.get() {
        // SIGQUIT: immediate shutdown (the data is thrown away anyway).
        // SAFETY: kill has no memory preconditions; the pid is our own child.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
            let mut status = 0;
            // SAFETY: reaps our own child if it has exited; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(*pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if r == *pid as libc::pid_t {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn start() -> Server {
    let bin = bin_dir();
    let dir = tempfile::Builder::new()
        .prefix("sandboxer-pg-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write pwfile");
    let root = is_root();
    let owner = root.then(postgres_user);
    if let Some((uid, gid)) = owner {
        chown_all(&dir, uid, gid);
    }

    let mut initdb = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("initdb"));
        c
    } else {
        Command::new(bin.join("initdb"))
    };
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth=scram-sha-256",
            "--no-locale",
            "-E",
            "UTF8",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .arg("--no-sync")
        .stdin(Stdio::null());
    let out = initdb.output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let port = free_port();
    let log = std::fs::File::create(dir.join("server.log")).expect("server log");
    if let Some((uid, gid)) = owner {
        chown_all(&dir.join("server.log"), uid, gid);
    }
    let mut server = Command::new(bin.join("postgres"));
    server
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=400",
            "-c",
            "shared_buffers=32MB",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if let Some((uid, gid)) = owner {
        server.uid(uid).gid(gid);
    }
    // SAFETY: prctl only sets this process's parent-death signal (after the uid change,
    // which would clear it); nothing is allocated.
    unsafe {
        server.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The parent-death signal follows the thread that spawned the child: spawn from a
    // thread that lives as long as the process (it waits for the server forever).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-server".into())
        .spawn(move || match server.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })
        .expect("spawn the server thread");
    let pid = rx
        .recv()
        .expect("server thread")
        .unwrap_or_else(|e| panic!("start postgres: {e}"));
    let _ = STARTED.set((dir.clone(), pid));
    // SAFETY: registers a plain extern "C" function.
    unsafe {
        libc::atexit(stop_at_exit);
    }

    let server = Server { dir, port, pid };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && postgres::Client::connect(&server.url("postgres"), postgres::NoTls).is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not start within 60 s:\n{}",
            server.log()
        );
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "postgres exited:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}
