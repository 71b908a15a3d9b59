//! Files in a Modal sandbox, the way Modal's SDKs move them (`go/sandbox_fs.go`): by
//! running `modal-sandbox-fs-tools` (which Modal mounts into every sandbox) through the
//! command router with one JSON command: `WriteFile` (content on stdin), `ReadFile`
//! (content on stdout, read from the requested offset by `TaskExecStdioRead`'s own offset),
//! `Stat`, `ListFiles`, `MakeDirectory`; a failure exits 1 with `{"error_kind", "message"}`
//! on stderr. The tool has no append, so an append runs `cat >>` with the chunk on stdin,
//! from the file's folder.

use serde::Deserialize;

use crate::client::Router;
use crate::exec::{self, Collect, StartError};
use crate::handle::{Handle, absolute, split_parent};
use crate::wfiles::{EntryKind, FileChunk, FileEntry};
use crate::wit::BackendError;
use guest_kit::cursor::StreamCursor;
use modal_proto as pb;

/// Where Modal mounts the filesystem tool in every sandbox.
pub const FS_TOOLS: &str = "/__modal/.bin/modal-sandbox-fs-tools";

/// The longest one file operation may take inside the sandbox.
const TOOL_TIMEOUT_MS: u64 = 60_000;

/// The most bytes of a listing or a stat answer accepted.
const ANSWER_LIMIT: u64 = 8 * 1024 * 1024;

/// A `FileInfo` of the tool's answers (the fields used).
#[derive(Debug, Deserialize)]
pub struct FileInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub modified_time: Option<f64>,
}

#[derive(Deserialize)]
struct ToolFailure {
    error_kind: String,
    message: String,
}

/// The contract's error for the tool's failure answer (stderr) on `path`.
pub fn tool_error(path: &str, code: i32, stderr: &[u8]) -> BackendError {
    let Ok(f) = serde_json::from_slice::<ToolFailure>(stderr) else {
        let text = String::from_utf8_lossy(stderr);
        return BackendError::Internal(format!(
            "Modal's file tool failed on {path:?} with exit code {code}: {}",
            text.trim()
        ));
    };
    let text = format!("{path}: {} ({})", f.message, f.error_kind);
    match f.error_kind.as_str() {
        "NotFound" => BackendError::NotFound(text),
        "IsDirectory" | "NotDirectory" | "IsFile" | "PermissionDenied" | "InvalidPath"
        | "PathAlreadyExists" | "AlreadyExists" | "FileTooLarge" | "NotSupported" => {
            BackendError::InvalidRequest(text)
        }
        _ => BackendError::Internal(format!("Modal's file tool: {text}")),
    }
}

/// The entries of a `ListFiles` answer, sorted by name.
pub fn entries(answer: &[u8]) -> Result<Vec<FileEntry>, BackendError> {
    let infos: Vec<FileInfo> = serde_json::from_slice(answer).map_err(|e| {
        BackendError::Internal(format!(
            "Modal's file tool answered an unreadable listing: {e}"
        ))
    })?;
    let mut out: Vec<FileEntry> = infos
        .into_iter()
        .filter(|i| !i.name.is_empty() && !i.name.contains('/'))
        .map(|i| FileEntry {
            kind: kind(&i.kind),
            size: if i.kind == "directory" { 0 } else { i.size },
            modified_ms: i
                .modified_time
                .filter(|t| t.is_finite() && *t >= 0.0)
                .map(|t| (t * 1000.0) as u64),
            name: i.name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn kind(k: &str) -> EntryKind {
    match k {
        "file" => EntryKind::File,
        "directory" => EntryKind::Directory,
        "symlink" => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

fn command(name: &str, path: &str) -> String {
    serde_json::json!({ name: { "path": path } }).to_string()
}

/// Runs one command in the sandbox to its end: stdout from `stdout_from` (at most
/// `stdout_max` bytes of it), stderr (bounded), exit code.
fn run(
    router: &mut Router<'_>,
    handle: &Handle,
    args: Vec<String>,
    workdir: String,
    stdin: &[u8],
    stdout_from: u64,
    stdout_max: u64,
) -> Result<(Vec<u8>, Vec<u8>, i32), BackendError> {
    let exec_id = guest_kit::clock::random_id("sbx-fs-");
    let launch = exec::Launch {
        exec_id: &exec_id,
        args,
        env: Default::default(),
        workdir,
        timeout_ms: TOOL_TIMEOUT_MS,
        stdin,
        keep_open: false,
    };
    match exec::start(router, launch) {
        Ok(()) => {}
        Err(StartError::Refused(msg)) => {
            return Err(BackendError::Internal(format!(
                "Modal refused to run the file command in sandbox {}: {msg}",
                handle.id
            )));
        }
        Err(StartError::Backend(e)) => return Err(e),
    }
    let how = Collect {
        from: StreamCursor {
            stdout: stdout_from,
            stderr: 0,
        },
        limits: [stdout_from.saturating_add(stdout_max), 64 * 1024],
        stop_stdout_at_limit: true,
        slice_ms: 5_000,
        deadline_ns: guest_kit::clock::monotonic_ns() + TOOL_TIMEOUT_MS * 1_000_000,
    };
    let done = exec::finish(router, &exec_id, &how)?;
    let code = match done.status {
        Some(pb::ExitStatus::Code(c)) => c,
        Some(pb::ExitStatus::Signal(s)) => {
            return Err(BackendError::Unavailable(format!(
                "the file command was killed by signal {s} in the sandbox"
            )));
        }
        None => {
            return Err(BackendError::Unavailable(
                "the file command did not finish in time".into(),
            ));
        }
    };
    Ok((done.stdout, done.stderr, code))
}

fn tool(
    router: &mut Router<'_>,
    handle: &Handle,
    json: String,
    path: &str,
    stdin: &[u8],
    stdout_from: u64,
    stdout_max: u64,
) -> Result<Vec<u8>, BackendError> {
    let (out, err, code) = run(
        router,
        handle,
        vec![FS_TOOLS.to_owned(), json],
        handle.wd.clone(),
        stdin,
        stdout_from,
        stdout_max,
    )?;
    if code != 0 {
        return Err(tool_error(path, code, &err));
    }
    Ok(out)
}

/// `write-file`.
pub fn write_file(
    router: &mut Router<'_>,
    handle: &Handle,
    path: &str,
    data: &[u8],
    append: bool,
) -> Result<(), BackendError> {
    let abs = absolute(&handle.wd, path)?;
    if !append {
        tool(router, handle, command("WriteFile", &abs), &abs, data, 0, 0)?;
        return Ok(());
    }
    let (parent, name) = split_parent(&abs)
        .ok_or_else(|| BackendError::InvalidRequest(format!("{path:?} names no file")))?;
    let mkdir =
        serde_json::json!({ "MakeDirectory": { "path": parent, "parents": true } }).to_string();
    tool(router, handle, mkdir, parent, &[], 0, 0)?;
    let args = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "cat >> \"$1\"".to_owned(),
        "sandboxer-append".to_owned(),
        name.to_owned(),
    ];
    let (_, err, code) = run(router, handle, args, parent.to_owned(), data, 0, 0)?;
    if code != 0 {
        return Err(BackendError::InvalidRequest(format!(
            "appending to {abs}: {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    Ok(())
}

/// `read-file`.
pub fn read_file(
    router: &mut Router<'_>,
    handle: &Handle,
    path: &str,
    offset: u64,
    max_bytes: u32,
) -> Result<FileChunk, BackendError> {
    let abs = absolute(&handle.wd, path)?;
    let stat = tool(
        router,
        handle,
        command("Stat", &abs),
        &abs,
        &[],
        0,
        ANSWER_LIMIT,
    )?;
    let info: FileInfo = serde_json::from_slice(&stat).map_err(|e| {
        BackendError::Internal(format!(
            "Modal's file tool answered an unreadable stat: {e}"
        ))
    })?;
    if info.kind == "directory" {
        return Err(BackendError::InvalidRequest(format!("{abs} is a folder")));
    }
    if offset >= info.size || max_bytes == 0 {
        return Ok(FileChunk {
            data: Vec::new(),
            size: info.size,
        });
    }
    let data = tool(
        router,
        handle,
        command("ReadFile", &abs),
        &abs,
        &[],
        offset,
        u64::from(max_bytes),
    )?;
    Ok(FileChunk {
        data,
        size: info.size,
    })
}

/// `list-files`.
pub fn list_files(
    router: &mut Router<'_>,
    handle: &Handle,
    path: &str,
) -> Result<Vec<FileEntry>, BackendError> {
    let abs = absolute(&handle.wd, path)?;
    let answer = tool(
        router,
        handle,
        command("ListFiles", &abs),
        &abs,
        &[],
        0,
        ANSWER_LIMIT,
    )?;
    entries(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_become_sorted_entries() {
        let answer = br#"[
            {"name":"z.txt","path":"/root/z.txt","type":"file","size":3,"modified_time":1700000000.5},
            {"name":"a","path":"/root/a","type":"directory","size":4096,"modified_time":null},
            {"name":"l","path":"/root/l","type":"symlink","size":1}
        ]"#;
        let e = entries(answer).unwrap();
        assert_eq!(
            e.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["a", "l", "z.txt"]
        );
        assert_eq!(e[0].kind, EntryKind::Directory);
        assert_eq!(e[0].size, 0);
        assert_eq!(e[2].modified_ms, Some(1_700_000_000_500));
        assert_eq!(e[1].kind, EntryKind::Symlink);
        assert!(entries(b"{").is_err());
    }

    #[test]
    fn tool_failures_map_onto_the_contract() {
        let nf = br#"{"error_kind":"NotFound","message":"No such file or directory","detail":""}"#;
        assert!(matches!(
            tool_error("/root/x", 1, nf),
            BackendError::NotFound(_)
        ));
        let dir = br#"{"error_kind":"IsDirectory","message":"Is a directory","detail":""}"#;
        assert!(matches!(
            tool_error("/root", 1, dir),
            BackendError::InvalidRequest(_)
        ));
        assert!(matches!(
            tool_error("/x", 2, b"segfault"),
            BackendError::Internal(_)
        ));
        assert_eq!(
            command("ReadFile", "/a \"b\""),
            r#"{"ReadFile":{"path":"/a \"b\""}}"#
        );
    }
}
