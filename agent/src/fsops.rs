//! File operations confined to the workspace, run by init inside the sandbox (as the
//! sandbox's uid, in its mount namespace: only what is mounted there exists at all).
//!
//! Every path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)` from a handle on the workspace, so `..`, absolute symlinks and
//! symlinks that lead out are refused by the kernel, with no window between a check and
//! the use. Paths are relative to the workspace, or absolute under [`WORKSPACE`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::proto::{DirEntry, FileError};

/// Where the workspace is inside a sandbox (its working folder and `HOME`).
pub const WORKSPACE: &str = "/workspace";

/// A refused or failed file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: FileError,
    pub message: String,
}

impl FsError {
    fn invalid(message: impl Into<String>) -> FsError {
        FsError {
            kind: FileError::Invalid,
            message: message.into(),
        }
    }
}

/// Checks `path` and returns it relative to the workspace (`""` for the workspace itself).
/// Refuses NUL bytes, `..` and empty components, `.` components, and absolute paths
/// outside [`WORKSPACE`].
pub fn relative(path: &str) -> Result<String, FsError> {
    if path.contains('\0') {
        return Err(FsError::invalid(format!(
            "path {path:?} contains a NUL byte"
        )));
    }
    let rel = if let Some(abs) = path.strip_prefix('/') {
        match abs.strip_prefix(&WORKSPACE[1..]) {
            Some("") => "",
            Some(rest) if rest.starts_with('/') => &rest[1..],
            _ => {
                return Err(FsError::invalid(format!(
                    "path {path:?} is outside the workspace ({WORKSPACE})"
                )));
            }
        }
    } else {
        path
    };
    let rel = rel.strip_suffix('/').unwrap_or(rel);
    if rel.is_empty() {
        return Ok(String::new());
    }
    for part in rel.split('/') {
        match part {
            "" => {
                return Err(FsError::invalid(format!(
                    "path {path:?} has an empty component"
                )));
            }
            "." | ".." => {
                return Err(FsError::invalid(format!(
                    "path {path:?} has a {part:?} component (paths are confined to the workspace)"
                )));
            }
            _ => {}
        }
    }
    Ok(rel.to_owned())
}

fn error_for(path: &str, e: io::Error) -> FsError {
    let (kind, what) = match e.raw_os_error() {
        Some(libc::ENOENT) => (FileError::NotFound, "no such file or folder".to_owned()),
        Some(libc::EXDEV) | Some(libc::ELOOP) => (
            FileError::Invalid,
            "it leads outside the workspace (through a symlink or a mount)".to_owned(),
        ),
        Some(libc::EISDIR) => (FileError::Invalid, "it is a folder".to_owned()),
        Some(libc::ENOTDIR) => (
            FileError::Invalid,
            "a part of it is not a folder".to_owned(),
        ),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => (
            FileError::NoSpace,
            "the workspace is full (its size is the sandbox's disk_mib)".to_owned(),
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            (FileError::Invalid, "permission denied".to_owned())
        }
        _ => (FileError::Other, e.to_string()),
    };
    FsError {
        kind,
        message: format!("{path:?}: {what}"),
    }
}

/// A handle on the workspace folder; every operation resolves beneath it.
pub struct Workspace {
    root: OwnedFd,
}

fn cstr(s: &str) -> Result<CString, FsError> {
    CString::new(s).map_err(|_| FsError::invalid(format!("path {s:?} contains a NUL byte")))
}

/// `openat2` beneath `dir`; returns the new descriptor.
fn open_beneath(dir: RawFd, rel: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let path = CString::new(if rel.is_empty() { "." } else { rel })
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its neutral value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    if flags & libc::O_CREAT != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    // SAFETY: `path` and `how` outlive the call; the kernel copies both.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn stat_at(dir: RawFd, name: &str) -> io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed stat is a valid out-buffer; `c` outlives the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as in `stat_at`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

impl Workspace {
    /// Opens the workspace at `path` (init opens [`WORKSPACE`]; tests a temporary folder).
    pub fn open(path: &str) -> io::Result<Workspace> {
        let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `c` outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just returned by the kernel.
        Ok(Workspace {
            root: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Writes `data` to `path`, creating its parent folders; appends when `append`.
    pub fn write(&self, path: &str, data: &[u8], append: bool) -> Result<(), FsError> {
        let rel = relative(path)?;
        if rel.is_empty() {
            return Err(FsError::invalid(format!("{path:?}: it is a folder")));
        }
        let parts: Vec<&str> = rel.split('/').collect();
        let mut prefix = String::new();
        for part in &parts[..parts.len() - 1] {
            let parent = if prefix.is_empty() {
                None
            } else {
                Some(
                    open_beneath(
                        self.root.as_raw_fd(),
                        &prefix,
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )
                    .map_err(|e| error_for(path, e))?,
                )
            };
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match open_beneath(
                self.root.as_raw_fd(),
                &prefix,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            ) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(error_for(path, e)),
            }
            let dir = parent
                .as_ref()
                .map(|f| f.as_raw_fd())
                .unwrap_or(self.root.as_raw_fd());
            let name = cstr(part)?;
            // SAFETY: `name` outlives the call; `dir` is an open descriptor we hold.
            if unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(error_for(path, e));
                }
            }
        }
        let flags = libc::O_WRONLY
            | libc::O_CREAT
            | if append {
                libc::O_APPEND
            } else {
                libc::O_TRUNC
            };
        let fd = open_beneath(self.root.as_raw_fd(), &rel, flags, 0o644)
            .map_err(|e| error_for(path, e))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, data).map_err(|e| error_for(path, e))?;
        Ok(())
    }

    /// Reads at most `max` bytes of `path` from `offset`; returns them and the file's size.
    pub fn read(&self, path: &str, offset: u64, max: u32) -> Result<(Vec<u8>, u64), FsError> {
        let rel = relative(path)?;
        let fd = open_beneath(self.root.as_raw_fd(), &rel, libc::O_RDONLY, 0)
            .map_err(|e| error_for(path, e))?;
        let st = fstat(fd.as_raw_fd()).map_err(|e| error_for(path, e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(FsError::invalid(format!("{path:?}: it is a folder")));
        }
        let size = st.st_size as u64;
        let want = (max as u64).min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        let file = std::fs::File::from(fd);
        while got < want {
            let n =
                std::os::unix::fs::FileExt::read_at(&file, &mut buf[got..], offset + got as u64)
                    .map_err(|e| error_for(path, e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok((buf, size))
    }

    /// The entries of the folder at `path`, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        let rel = relative(path)?;
        let fd = open_beneath(
            self.root.as_raw_fd(),
            &rel,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| error_for(path, e))?;
        // Reading through our own descriptor: it names the folder that was resolved.
        let names = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| error_for(path, e))?;
        let mut out = Vec::new();
        for entry in names {
            let entry = entry.map_err(|e| error_for(path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(st) = stat_at(fd.as_raw_fd(), &name) else {
                continue;
            };
            let kind = match st.st_mode & libc::S_IFMT {
                libc::S_IFREG => "file",
                libc::S_IFDIR => "directory",
                libc::S_IFLNK => "symlink",
                _ => "other",
            };
            let modified_ms = u64::try_from(st.st_mtime)
                .ok()
                .map(|s| s * 1000 + (st.st_mtime_nsec as u64) / 1_000_000);
            out.push(DirEntry {
                size: if kind == "directory" {
                    0
                } else {
                    st.st_size as u64
                },
                name,
                kind: kind.to_owned(),
                modified_ms,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(relative("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(relative("/workspace/a").unwrap(), "a");
        assert_eq!(relative("/workspace").unwrap(), "");
        assert_eq!(relative("/workspace/").unwrap(), "");
        assert_eq!(relative("dir/").unwrap(), "dir");
        for bad in [
            "../../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "/workspacex/a",
            "a//b",
            "./a",
            "a\0b",
        ] {
            let e = relative(bad).unwrap_err();
            assert_eq!(e.kind, FileError::Invalid, "{bad}");
            assert!(e.message.contains(&format!("{bad:?}")), "{}", e.message);
        }
    }

    #[test]
    fn operations_stay_beneath_the_workspace() {
        let outer = tempfile::tempdir().unwrap();
        let ws_path = outer.path().join("ws");
        std::fs::create_dir(&ws_path).unwrap();
        std::fs::write(outer.path().join("secret"), b"host").unwrap();
        let ws = Workspace::open(ws_path.to_str().unwrap()).unwrap();

        ws.write("a/b/c.bin", &[0, 159, 146, 150], false).unwrap();
        ws.write("a/b/c.bin", b"!", true).unwrap();
        let (data, size) = ws.read("a/b/c.bin", 0, 1024).unwrap();
        assert_eq!(data, [0, 159, 146, 150, b'!']);
        assert_eq!(size, 5);
        let (part, _) = ws.read("/workspace/a/b/c.bin", 1, 2).unwrap();
        assert_eq!(part, [159, 146]);
        let names: Vec<String> = ws.list("a").unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(ws.list("").unwrap()[0].kind, "directory");

        // Symlinks leading out are refused, for reading and for writing through them.
        std::os::unix::fs::symlink("../secret", ws_path.join("up")).unwrap();
        std::os::unix::fs::symlink(outer.path(), ws_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("a/b", ws_path.join("inside")).unwrap();
        assert_eq!(ws.read("up", 0, 10).unwrap_err().kind, FileError::Invalid);
        assert_eq!(
            ws.write("up", b"x", false).unwrap_err().kind,
            FileError::Invalid
        );
        assert_eq!(
            ws.write("abs/new", b"x", false).unwrap_err().kind,
            FileError::Invalid
        );
        assert_eq!(ws.list("abs").unwrap_err().kind, FileError::Invalid);
        assert_eq!(std::fs::read(outer.path().join("secret")).unwrap(), b"host");
        assert!(!outer.path().join("new").exists());
        // A relative symlink that stays inside is followed.
        assert_eq!(ws.read("inside/c.bin", 0, 1).unwrap().0, [0]);

        assert_eq!(
            ws.read("missing", 0, 1).unwrap_err().kind,
            FileError::NotFound
        );
        assert_eq!(ws.read("a", 0, 1).unwrap_err().kind, FileError::Invalid);
        assert_eq!(
            ws.write("", b"x", false).unwrap_err().kind,
            FileError::Invalid
        );
    }
}
