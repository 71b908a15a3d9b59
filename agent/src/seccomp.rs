//! The sandbox's syscall filter, compiled with `seccompiler` to classic BPF and handed to
//! bubblewrap (`--add-seccomp-fd`), which installs it on the sandbox's PID 1 just before it
//! runs init; every command inherits it.
//!
//! It denies what a sandboxed program has no business doing and what has been the way out
//! of containers: tracing other processes, mounting, new namespaces, loading kernel code
//! (modules, BPF, kexec), perf events, the kernel keyring, io_uring, handle-based opens,
//! `userfaultfd`, clock and swap changes, reboot, and faking terminal input. Everything
//! else is allowed: the namespaces, the dropped capabilities and the unprivileged uid do the
//! rest. Denied calls fail with `EPERM`; `clone3` fails with `ENOSYS` so that the C library
//! falls back to `clone`, whose namespace flags the filter can see.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A filter that could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter: {0}")]
pub struct SeccompError(String);

fn err(e: impl std::fmt::Display) -> SeccompError {
    SeccompError(e.to_string())
}

/// Syscalls denied outright.
fn denied() -> Vec<(&'static str, i64)> {
    let mut v = vec![
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("quotactl", libc::SYS_quotactl),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("sethostname", libc::SYS_sethostname),
        ("setdomainname", libc::SYS_setdomainname),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("uselib", libc::SYS_uselib),
        ("nfsservctl", libc::SYS_nfsservctl),
    ]);
    v
}

/// The names of the denied syscalls, for the docs and `check`.
pub fn denied_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = denied().into_iter().map(|(n, _)| n).collect();
    v.extend([
        "clone (with namespace flags)",
        "clone3 (ENOSYS)",
        "ioctl TIOCSTI/TIOCLINUX",
    ]);
    v
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(err)
}

fn masked_set(arg: u8, flag: u64) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(vec![
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(err)?,
    ])
    .map_err(err)
}

fn equals(arg: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(vec![
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .map_err(err)?,
    ])
    .map_err(err)
}

/// The filters as raw BPF programs (`struct sock_filter` arrays, native byte order), in
/// the form bubblewrap reads from `--add-seccomp-fd`: the `EPERM` filter, then the
/// `ENOSYS` one.
pub fn programs() -> Result<Vec<Vec<u8>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied() {
        rules.insert(nr, Vec::new());
    }
    // clone(2) with a namespace flag (the flags are the first argument on every arch).
    let ns_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    rules.insert(
        libc::SYS_clone,
        ns_flags
            .iter()
            .map(|f| masked_set(0, *f as u64))
            .collect::<Result<_, _>>()?,
    );
    // The request constants' type differs between targets.
    #[allow(clippy::unnecessary_cast)]
    rules.insert(
        libc::SYS_ioctl,
        vec![
            equals(1, libc::TIOCSTI as u64)?,
            equals(1, libc::TIOCLINUX as u64)?,
        ],
    );
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )
    .map_err(err)?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(err)?;
    [eperm, enosys]
        .into_iter()
        .map(|f| {
            let prog: BpfProgram = f.try_into().map_err(err)?;
            Ok(to_bytes(&prog))
        })
        .collect()
}

fn to_bytes(prog: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for ins in prog {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_to_whole_instructions() {
        let progs = programs().unwrap();
        assert_eq!(progs.len(), 2);
        for p in &progs {
            assert!(!p.is_empty() && p.len() % 8 == 0);
            // A classic BPF program has at most 4096 instructions.
            assert!(p.len() / 8 <= 4096);
        }
        assert!(denied_names().contains(&"ptrace"));
    }
}
