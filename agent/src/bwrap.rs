//! The bubblewrap command line of a sandbox. One function builds it, for the agent and for
//! the benchmark's bare `bwrap … true`, so both run with exactly the same flags.

use std::ffi::OsString;
use std::path::Path;

use crate::config::Template;
use crate::fsops::WORKSPACE;

/// Where init's binary (this program) is mounted, read-only, inside every sandbox.
pub const INIT_PATH: &str = "/run/sandboxer/init";
/// The uid and gid sandboxed processes have inside their user namespace.
pub const INNER_UID: u32 = 1000;
/// The sandbox's hostname.
pub const HOSTNAME: &str = "sandbox";
/// The `PATH` of sandboxed processes.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What one sandbox gets.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    pub template: &'a Template,
    /// The workspace's size (a tmpfs at [`WORKSPACE`]).
    pub workspace_bytes: u64,
    /// `/tmp`'s size (another tmpfs).
    pub tmp_bytes: u64,
    /// A descriptor (opened by the agent, inherited by bwrap) of the file bind-mounted at
    /// [`INIT_PATH`]: the agent's own executable. A descriptor rather than a path, so the
    /// unprivileged uid bwrap runs as needs no access to the folders it lies in.
    pub init_fd: i32,
    /// Descriptors holding the seccomp programs, inherited by bwrap.
    pub seccomp_fds: &'a [i32],
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// The arguments after `bwrap`, up to and including `--`; the command follows.
pub fn args(spec: &Spec<'_>) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::with_capacity(64);
    let uid = INNER_UID.to_string();
    push(
        &mut a,
        &[
            "--unshare-user",
            "--uid",
            &uid,
            "--gid",
            &uid,
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            HOSTNAME,
            // No user namespaces inside (nested ones are a kernel attack surface).
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv",
            "PATH",
            PATH,
        ],
    );
    match spec.template {
        Template::Base(dirs) => {
            for d in dirs {
                match std::fs::symlink_metadata(d) {
                    Ok(m) if m.file_type().is_symlink() => {
                        if let Ok(target) = std::fs::read_link(d) {
                            a.push("--symlink".into());
                            a.push(target.into());
                            a.push(d.into());
                        }
                    }
                    Ok(m) if m.is_dir() => {
                        a.push("--ro-bind".into());
                        a.push(d.into());
                        a.push(d.into());
                    }
                    _ => {}
                }
            }
        }
        Template::Rootfs(root) => {
            a.push("--ro-bind".into());
            a.push(root.into());
            a.push("/".into());
        }
    }
    let workspace_size = spec.workspace_bytes.to_string();
    let tmp_size = spec.tmp_bytes.to_string();
    push(
        &mut a,
        &[
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            &workspace_size,
            "--perms",
            "0755",
            "--tmpfs",
            WORKSPACE,
            "--size",
            &tmp_size,
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--size",
            "1048576",
            "--tmpfs",
            "/run",
        ],
    );
    a.push("--ro-bind-fd".into());
    a.push(spec.init_fd.to_string().into());
    a.push(INIT_PATH.into());
    if matches!(spec.template, Template::Base(_)) {
        // The root of a base sandbox is bwrap's own tmpfs: nothing may be added to it.
        push(&mut a, &["--remount-ro", "/"]);
    }
    push(&mut a, &["--chdir", WORKSPACE]);
    for fd in spec.seccomp_fds {
        a.push("--add-seccomp-fd".into());
        a.push(fd.to_string().into());
    }
    a.push("--".into());
    a
}

/// `bwrap --version`'s answer, or why it could not be run.
pub fn version(bwrap: &Path) -> Result<String, String> {
    let out = std::process::Command::new(bwrap)
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); install bubblewrap: apt-get install bubblewrap (Debian, \
                 Ubuntu) or dnf install bubblewrap (Fedora), or set `bwrap` in the config",
                bwrap.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed: {}",
            bwrap.display(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("bubblewrap ")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_isolates_everything() {
        let t = Template::Base(vec!["/usr".into(), "/nonexistent".into()]);
        let spec = Spec {
            template: &t,
            workspace_bytes: 1 << 20,
            tmp_bytes: 1 << 20,
            init_fd: 4,
            seccomp_fds: &[5, 6],
        };
        let a: Vec<String> = args(&spec)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--die-with-parent",
            "--disable-userns",
            "--clearenv",
        ] {
            assert!(a.contains(&flag.to_owned()), "{flag} missing in {a:?}");
        }
        let joined = a.join(" ");
        assert!(joined.contains("--ro-bind /usr /usr"), "{joined}");
        assert!(!joined.contains("nonexistent"), "{joined}");
        assert!(joined.contains("--cap-drop ALL"), "{joined}");
        assert!(
            joined.contains("--add-seccomp-fd 5 --add-seccomp-fd 6 --"),
            "{joined}"
        );
        assert!(joined.contains("--size 1048576 --perms 0755 --tmpfs /workspace"));
        assert!(
            joined.contains("--ro-bind-fd 4 /run/sandboxer/init"),
            "{joined}"
        );
        assert_eq!(a.last().unwrap(), "--");
    }
}
