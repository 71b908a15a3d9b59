//! The fake's stand-in for `modal-sandbox-fs-tools`, the tool Modal mounts into every
//! sandbox at [`FS_TOOLS_PATH`] and that Modal's SDKs run through the command router for
//! `Sandbox.filesystem` (see `go/sandbox_fs.go`, `go/sandbox_fs_utils.go` of
//! modal-labs/modal-client): one JSON command as its argument (`{"ReadFile": {"path": …}}`),
//! file content on stdout (`ReadFile`) or stdin (`WriteFile`), JSON answers on stdout
//! (`ListFiles`, `Stat`), and on failure exit code 1 with `{"error_kind", "message",
//! "detail"}` on stderr. Paths are absolute sandbox paths.

use std::io::ErrorKind;
use std::path::Path;
use std::time::UNIX_EPOCH;

use fake_worker::{PathError, SandboxFs};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where Modal mounts the tool in a sandbox.
pub const FS_TOOLS_PATH: &str = "/__modal/.bin/modal-sandbox-fs-tools";

#[derive(Deserialize)]
struct PathArg {
    path: String,
}

#[derive(Deserialize)]
struct MkdirArg {
    path: String,
    #[serde(default)]
    parents: bool,
}

#[derive(Deserialize)]
enum Command {
    ReadFile(PathArg),
    WriteFile(PathArg),
    ListFiles(PathArg),
    Stat(PathArg),
    MakeDirectory(MkdirArg),
}

type Answer = (Vec<u8>, Vec<u8>, i32);

fn fail(kind: &str, message: &str, path: &str) -> Answer {
    let body = json!({ "error_kind": kind, "message": message, "detail": path });
    (Vec::new(), body.to_string().into_bytes(), 1)
}

fn io_fail(e: &std::io::Error, path: &str) -> Answer {
    match e.kind() {
        ErrorKind::NotFound => fail("NotFound", "No such file or directory", path),
        ErrorKind::PermissionDenied => fail("PermissionDenied", "Permission denied", path),
        ErrorKind::IsADirectory => fail("IsDirectory", "Is a directory", path),
        ErrorKind::NotADirectory => fail("NotDirectory", "Not a directory", path),
        ErrorKind::AlreadyExists => fail("PathAlreadyExists", "File exists", path),
        _ => fail("Other", &e.to_string(), path),
    }
}

fn path_fail(e: &PathError, path: &str) -> Answer {
    match e {
        PathError::Invalid(_) => fail("InvalidPath", "Invalid path", path),
        PathError::Outside(_) => fail("PermissionDenied", "Permission denied", path),
    }
}

fn permissions(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// A `FileInfo` object as the Go SDK decodes it.
fn file_info(fs: &SandboxFs, host: &Path) -> std::io::Result<Value> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(host)?;
    let kind = if meta.file_type().is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "directory"
    } else {
        "file"
    };
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let target = if meta.file_type().is_symlink() {
        std::fs::read_link(host)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(json!({
        "name": host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "path": fs.sandbox_path(host).unwrap_or_default(),
        "type": kind,
        "size": if meta.is_dir() { 0 } else { meta.len() },
        "mode": meta.mode(),
        "permissions": permissions(meta.mode()),
        "owner": meta.uid().to_string(),
        "group": meta.gid().to_string(),
        "modified_time": modified,
        "symlink_target": target,
    }))
}

/// Runs one fs-tools command (`arg` is its JSON argument) with `stdin` as its input.
pub fn run(fs: &SandboxFs, arg: &str, stdin: Vec<u8>) -> Answer {
    let command: Command = match serde_json::from_str(arg) {
        Ok(c) => c,
        Err(e) => return fail("InvalidCommand", &format!("unreadable command: {e}"), arg),
    };
    let path = match &command {
        Command::ReadFile(p) | Command::WriteFile(p) | Command::ListFiles(p) | Command::Stat(p) => {
            p.path.clone()
        }
        Command::MakeDirectory(m) => m.path.clone(),
    };
    if !path.starts_with('/') {
        return fail("InvalidPath", "Path must be absolute", &path);
    }
    let host = match fs.resolve(&path) {
        Ok(h) => h,
        Err(e) => return path_fail(&e, &path),
    };
    match command {
        Command::ReadFile(_) => {
            if host.is_dir() {
                return fail("IsDirectory", "Is a directory", &path);
            }
            match std::fs::read(&host) {
                Ok(data) => (data, Vec::new(), 0),
                Err(e) => io_fail(&e, &path),
            }
        }
        Command::WriteFile(_) => {
            if host.is_dir() {
                return fail("IsDirectory", "Is a directory", &path);
            }
            if let Some(parent) = host.parent()
                && let Err(e) = std::fs::create_dir_all(parent)
            {
                return io_fail(&e, &path);
            }
            match std::fs::write(&host, stdin) {
                Ok(()) => (Vec::new(), Vec::new(), 0),
                Err(e) => io_fail(&e, &path),
            }
        }
        Command::ListFiles(_) => {
            if host.is_file() {
                return fail("NotDirectory", "Not a directory", &path);
            }
            let entries = match std::fs::read_dir(&host) {
                Ok(rd) => rd,
                Err(e) => return io_fail(&e, &path),
            };
            let mut infos: Vec<(String, Value)> = Vec::new();
            for entry in entries.flatten() {
                if let Ok(info) = file_info(fs, &entry.path()) {
                    infos.push((entry.file_name().to_string_lossy().into_owned(), info));
                }
            }
            infos.sort_by(|a, b| a.0.cmp(&b.0));
            let list: Vec<Value> = infos.into_iter().map(|(_, v)| v).collect();
            (Value::Array(list).to_string().into_bytes(), Vec::new(), 0)
        }
        Command::Stat(_) => match file_info(fs, &host) {
            Ok(info) => (info.to_string().into_bytes(), Vec::new(), 0),
            Err(e) => io_fail(&e, &path),
        },
        Command::MakeDirectory(m) => {
            let made = if m.parents {
                std::fs::create_dir_all(&host)
            } else {
                std::fs::create_dir(&host)
            };
            match made {
                Ok(()) => (Vec::new(), Vec::new(), 0),
                Err(e) => io_fail(&e, &path),
            }
        }
    }
}
