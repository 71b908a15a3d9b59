//! `sandboxer-agent check`: whether this machine can run sandboxes, and if not exactly what
//! is missing and how to fix it. The last check starts a real sandbox (the same bwrap flags,
//! seccomp filter, uid drop and cgroup as a created one) running `init probe`.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bwrap;
use crate::cgroup::{Cgroups, Limits};
use crate::config::Config;
use crate::spawn::{self, Launch};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do when it failed.
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check for `cfg`.
pub fn run(cfg: &Config) -> Report {
    let mut checks = Vec::new();
    let bwrap_path = spawn::which(&cfg.bwrap);
    match bwrap_path.as_ref().map(|p| (p, bwrap::version(p))) {
        Some((p, Ok(v))) => checks.push(pass("bubblewrap", format!("{v} at {}", p.display()))),
        Some((_, Err(e))) => checks.push(fail("bubblewrap", e, "reinstall bubblewrap")),
        None => checks.push(fail(
            "bubblewrap",
            format!("{} is not installed", cfg.bwrap.display()),
            "apt-get install bubblewrap (Debian, Ubuntu), dnf install bubblewrap (Fedora), or \
             set `bwrap` in the agent's config",
        )),
    }
    if spawn::is_root() {
        checks.push(pass(
            "privileges",
            format!(
                "root: sandboxes run as uids {}..{}",
                cfg.uid_base,
                cfg.uid_base + cfg.slots - 1
            ),
        ));
    } else {
        checks.push(pass(
            "privileges",
            "not root: sandboxes run as the agent's own uid (run as root for a uid per sandbox)",
        ));
    }
    let userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    match userns {
        Some(0) => checks.push(fail(
            "user namespaces",
            "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000 (and keep it in /etc/sysctl.d)",
        )),
        Some(n) => checks.push(pass("user namespaces", format!("allowed (max {n})"))),
        None => checks.push(fail(
            "user namespaces",
            "the kernel has no user namespaces",
            "use a kernel built with CONFIG_USER_NS",
        )),
    }
    let cgroups = match crate::cgroup::detect() {
        Ok(layout) => {
            let cg = Cgroups::new(layout, &cfg.cgroup_parent);
            match cg.prepare() {
                Ok(()) => {
                    checks.push(pass(
                        "cgroups",
                        format!(
                            "{} ({}), sandboxes under {:?}",
                            cg.layout().version(),
                            match cg.layout() {
                                crate::cgroup::Layout::V1(_) =>
                                    "cpu, cpuacct, memory, pids, freezer",
                                crate::cgroup::Layout::V2(_) => "cpu, memory, pids",
                            },
                            cfg.cgroup_parent
                        ),
                    ));
                    Some(cg)
                }
                Err(e) => {
                    checks.push(fail(
                        "cgroups",
                        e.to_string(),
                        "run the agent as root, or give it a delegated cgroup subtree (systemd \
                         Delegate=yes) and set `cgroup_parent` to it",
                    ));
                    None
                }
            }
        }
        Err(e) => {
            checks.push(fail(
                "cgroups",
                e.to_string(),
                "mount cgroup2 at /sys/fs/cgroup with the cpu, memory and pids controllers",
            ));
            None
        }
    };
    if let (Some(bw), Some(cg)) = (bwrap_path, cgroups) {
        checks.push(match trial(cfg, &bw, &cg) {
            Ok(ms) => pass("sandbox", format!("a trial sandbox ran init in {ms} ms")),
            Err(e) => fail(
                "sandbox",
                e,
                "see the message above; docs/agent.md lists what the sandbox needs",
            ),
        });
    }
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Starts one sandbox with `init probe` as its command; returns how long it took.
fn trial(cfg: &Config, bwrap_path: &std::path::Path, cgroups: &Cgroups) -> Result<u128, String> {
    let name = format!("check-{}", std::process::id());
    let cg = cgroups
        .create(
            &name,
            Limits {
                vcpus: 1,
                memory_bytes: 256 << 20,
                pids: cfg.pids_max,
            },
        )
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let programs = crate::seccomp::programs().map_err(|e| e.to_string())?;
        let mut inherit: Vec<OwnedFd> = programs
            .iter()
            .map(|p| spawn::program_fd(p))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let fds: Vec<i32> = inherit.iter().map(|f| f.as_raw_fd()).collect();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let init = OwnedFd::from(std::fs::File::open(&exe).map_err(|e| e.to_string())?);
        let args = bwrap::args(&bwrap::Spec {
            template: &cfg.templates["base"],
            workspace_bytes: 16 << 20,
            tmp_bytes: 16 << 20,
            init_fd: init.as_raw_fd(),
            seccomp_fds: &fds,
        });
        inherit.push(init);
        let mut cmd = spawn::command(Launch {
            bwrap: bwrap_path.to_owned(),
            args,
            command: vec![bwrap::INIT_PATH.into(), "probe".into()],
            join: cg.procs_files(),
            ids: spawn::is_root().then_some((cfg.uid_base, cfg.uid_base)),
            inherit,
        })
        .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start bwrap: {e}"))?;
        let deadline = started + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the trial sandbox did not finish within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        if status.success() && out.trim() == "ok" {
            Ok(started.elapsed().as_millis())
        } else {
            Err(format!(
                "the trial sandbox failed ({status}): {}",
                if err.trim().is_empty() {
                    out.trim()
                } else {
                    err.trim()
                }
            ))
        }
    })();
    let _ = cg.kill_all();
    let _ = cg.remove();
    result
}

/// `init probe`, inside the trial sandbox: checks what it can see of its own confinement.
pub fn probe() -> i32 {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let workspace = std::path::Path::new(crate::fsops::WORKSPACE).is_dir();
    if uid == bwrap::INNER_UID && workspace {
        println!("ok");
        0
    } else {
        eprintln!("probe: uid {uid}, workspace present: {workspace}");
        1
    }
}

/// The report as lines for a terminal.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    for c in &report.checks {
        s.push_str(&format!(
            "{:<4}  {:<16} {}\n",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        ));
        if let Some(f) = &c.fix {
            s.push_str(&format!("      {:<16} fix: {f}\n", ""));
        }
    }
    s.push_str(if report.ok {
        "verdict: this machine can run sandboxes\n"
    } else {
        "verdict: this machine cannot run sandboxes until the failures above are fixed\n"
    });
    s
}
