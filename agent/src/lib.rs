//! `sandboxer-agent`: runs code sandboxes on the machine it runs on, for the `local`
//! extension of sandboxer-host (one agent per pool machine).
//!
//! A sandbox is one bubblewrap process tree (new user, pid, net, mount, ipc and uts
//! namespaces; read-only system folders; a size-limited private workspace; an unprivileged
//! uid; a seccomp filter) inside its own cgroup (cpu, memory and pids limits). Its PID 1 is
//! this binary in `init` mode ([`init`]), which spawns commands and moves files on the
//! agent's requests over a private pipe ([`proto`]), inside the sandbox's own mount
//! namespace and as the sandbox's uid. CPU time and peak memory are read from the cgroup
//! once it is empty: they are the billing truth.
//!
//! Layout, one concern per module: [`config`] (TOML and flags), [`api`] (the HTTP surface),
//! [`manager`] (the sandboxes of this machine: create, stop, recover), [`sandbox`] (one
//! running sandbox and its processes), [`bwrap`] (the bubblewrap command line),
//! [`seccomp`], [`cgroup`], [`spawn`] (privilege drop and cgroup join before bwrap),
//! [`store`] (the state folder), [`fsops`] (workspace-confined file operations, used by
//! init), [`check`] (what is missing on this machine).

pub mod api;
pub mod bwrap;
pub mod cgroup;
pub mod check;
pub mod config;
pub mod error;
pub mod floor;
pub mod fsops;
pub mod init;
pub mod manager;
pub mod proto;
pub mod sandbox;
pub mod seccomp;
pub mod spawn;
pub mod store;

/// The API's JSON bodies (the `sandboxer-agent-wire` crate, shared with the extension).
pub use sandboxer_agent_wire as wire;

/// Milliseconds since the Unix epoch (the agent's wall clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
