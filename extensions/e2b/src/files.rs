//! Files in an E2B sandbox through envd (`ref/e2b-envd/envd.yaml`, `filesystem.proto`):
//! `POST /files` writes a file (creating its folders), ranged `GET /files` reads from an
//! offset, `filesystem.Filesystem/ListDir` lists a folder. envd has no append: a chunk is
//! uploaded beside the file, `POST /files/compose` concatenates the two into a third (and
//! deletes them), and `filesystem.Filesystem/Move` puts the result in the file's place.
//! Relative paths are relative to the sandbox user's home, as envd resolves them.

use serde_json::{Value, json};

use crate::connect;
use crate::envd::Envd;
use crate::exports::sandboxer::extension::backend::BackendError;
use crate::exports::sandboxer::extension::files::{EntryKind, FileChunk, FileEntry};

fn move_file(envd: &Envd, from: &str, to: &str) -> Result<(), BackendError> {
    envd.unary(
        "filesystem.Filesystem/Move",
        &json!({ "source": from, "destination": to }),
    )?;
    Ok(())
}

/// `write-file`.
pub fn write_file(envd: &Envd, path: &str, data: &[u8], append: bool) -> Result<(), BackendError> {
    if !append {
        return envd.upload(path, data);
    }
    let part = format!("{path}.sandboxer-part-{}", guest_kit::clock::random_id(""));
    envd.upload(&part, data)?;
    let joined = format!("{path}.sandboxer-join-{}", guest_kit::clock::random_id(""));
    if envd.compose(&[path, &part], &joined)? {
        move_file(envd, &joined, path)
    } else {
        // No file to append to yet: the chunk is the file.
        move_file(envd, &part, path)
    }
}

/// `read-file`.
pub fn read_file(
    envd: &Envd,
    path: &str,
    offset: u64,
    max_bytes: u32,
) -> Result<FileChunk, BackendError> {
    // A zero-length read still learns the size (from a one-byte range).
    let got = envd.download(path, offset, u64::from(max_bytes).max(1))?;
    let mut data = got.data;
    data.truncate(max_bytes as usize);
    Ok(FileChunk {
        data,
        size: got.size,
    })
}

/// The entries of a `ListDir` answer, sorted by name.
pub fn entries(answer: &Value) -> Vec<FileEntry> {
    let list = answer
        .get("entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out: Vec<FileEntry> = list
        .iter()
        .filter_map(|e| {
            let name = e.get("name").and_then(Value::as_str)?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            let kind = match e.get("type").and_then(Value::as_str).unwrap_or_default() {
                "FILE_TYPE_FILE" => EntryKind::File,
                "FILE_TYPE_DIRECTORY" => EntryKind::Directory,
                "FILE_TYPE_SYMLINK" => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
            Some(FileEntry {
                name: name.to_owned(),
                size: if kind == EntryKind::Directory {
                    0
                } else {
                    e.get("size").and_then(connect::json_u64).unwrap_or(0)
                },
                modified_ms: e
                    .get("modifiedTime")
                    .and_then(Value::as_str)
                    .and_then(connect::rfc3339_ms),
                kind,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `list-files`.
pub fn list_files(envd: &Envd, path: &str) -> Result<Vec<FileEntry>, BackendError> {
    let path = if path.is_empty() { "~" } else { path };
    let answer = envd.unary(
        "filesystem.Filesystem/ListDir",
        &json!({ "path": path, "depth": 1 }),
    )?;
    Ok(entries(&answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_become_sorted_entries() {
        let answer = json!({"entries": [
            {"name": "b.txt", "type": "FILE_TYPE_FILE", "path": "/home/user/b.txt", "size": "5",
             "modifiedTime": "2024-02-29T12:00:00.5Z"},
            {"name": "a", "type": "FILE_TYPE_DIRECTORY", "size": "4096"},
            {"name": "l", "type": "FILE_TYPE_SYMLINK", "size": 9},
            {"name": "../x", "type": "FILE_TYPE_FILE"}
        ]});
        let e = entries(&answer);
        assert_eq!(
            e.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["a", "b.txt", "l"]
        );
        assert_eq!((e[0].kind, e[0].size), (EntryKind::Directory, 0));
        assert_eq!((e[1].size, e[1].modified_ms), (5, Some(1_709_208_000_500)));
        assert_eq!(e[2].kind, EntryKind::Symlink);
        assert!(entries(&json!({})).is_empty());
    }
}
