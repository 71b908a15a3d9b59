//! The floor that benchmarks measure sandboxes against: one bare `bwrap <the agent's
//! flags> true`, started the way the agent starts a sandbox (seccomp filters, the uid
//! drop, optionally a fresh cgroup), with no API, store or init in between. Used by the
//! agent's bench and the host's exec bench, so both compare with the same floor.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::cgroup::{Cgroups, Limits};
use crate::config::{DEFAULT_SYSTEM_DIRS, Template};
use crate::{bwrap, seccomp, spawn};

/// Runs `true` in a bare sandbox as `uid`; `agent_exe` is the agent binary (bwrap's init).
/// In a new cgroup (created, joined, emptied, removed) when `cgroups` is given.
pub fn bare_true(agent_exe: &Path, uid: u32, cgroups: Option<&Cgroups>) -> Result<(), String> {
    let cg = match cgroups {
        Some(c) => Some(
            c.create(
                "bench-bare",
                Limits {
                    vcpus: 1,
                    memory_bytes: 256 << 20,
                    pids: 128,
                },
            )
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let mut inherit: Vec<OwnedFd> = seccomp::programs()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|p| spawn::program_fd(p).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let fds: Vec<i32> = inherit.iter().map(|f| f.as_raw_fd()).collect();
    let exe = OwnedFd::from(std::fs::File::open(agent_exe).map_err(|e| e.to_string())?);
    let template = Template::Base(DEFAULT_SYSTEM_DIRS.iter().map(Into::into).collect());
    let args = bwrap::args(&bwrap::Spec {
        template: &template,
        workspace_bytes: 512 << 20,
        tmp_bytes: 64 << 20,
        init_fd: exe.as_raw_fd(),
        seccomp_fds: &fds,
    });
    inherit.push(exe);
    let status = spawn::command(spawn::Launch {
        bwrap: "bwrap".into(),
        args,
        command: vec!["true".into()],
        join: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
        ids: Some((uid, uid)),
        inherit,
    })
    .map_err(|e| e.to_string())?
    .status()
    .map_err(|e| e.to_string())?;
    if let Some(cg) = cg {
        cg.kill_all().map_err(|e| e.to_string())?;
        cg.remove().map_err(|e| e.to_string())?;
    }
    if status.success() {
        Ok(())
    } else {
        Err(format!("bare bwrap … true exited {status}"))
    }
}
