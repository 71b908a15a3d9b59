//! The default sink: an append-only JSON Lines file, one CloudEvent per line.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{EventError, EventRecord, EventSink};

/// Appends events to a file and fsyncs before acknowledging. Keeps the ids already in the
/// file so an event handed again (after a crash, or by another process sharing the state
/// folder: the service and the CLI both deliver the same outbox) is not written twice:
/// each delivery takes an exclusive lock on the file and first reads what other processes
/// appended since.
pub struct JsonlSink {
    path: PathBuf,
    seen: Mutex<Option<Seen>>,
}

/// The ids in the file up to `len` bytes.
struct Seen {
    ids: HashSet<String>,
    len: u64,
}

impl JsonlSink {
    /// A sink writing to `path` (created on first delivery, with its folder).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: Mutex::new(None),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> EventError {
        EventError::Sink {
            sink: self.name(),
            reason: reason.to_string(),
        }
    }

    /// Adds the ids of the lines from byte `from` to the end of `file` to `ids`.
    fn read_ids(
        &self,
        file: &File,
        from: u64,
        ids: &mut HashSet<String>,
    ) -> Result<(), EventError> {
        let mut reader = BufReader::new(file);
        reader
            .seek(SeekFrom::Start(from))
            .map_err(|e| self.err(e))?;
        for line in reader.lines() {
            let line = line.map_err(|e| self.err(e))?;
            // A torn last line (crash mid-write) has no parsable id: it is rewritten whole.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(id) = v.get("id").and_then(|i| i.as_str())
            {
                ids.insert(id.to_owned());
            }
        }
        Ok(())
    }
}

impl EventSink for JsonlSink {
    fn name(&self) -> String {
        format!("jsonl:{}", self.path.display())
    }

    fn deliver(&self, events: &[EventRecord]) -> Result<(), EventError> {
        let mut guard = self.seen.lock();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let mut opts = OpenOptions::new();
        opts.create(true).read(true).append(true);
        // Meter events name tenants and amounts: the host's alone (docs/security.md).
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&self.path).map_err(|e| self.err(e))?;
        // Held until `file` is closed: other processes' deliveries wait, so reading the
        // ids and appending are one step.
        file.lock().map_err(|e| self.err(e))?;
        let len = file.metadata().map_err(|e| self.err(e))?.len();
        let seen = match guard.take() {
            Some(mut seen) if seen.len <= len => {
                if seen.len < len {
                    self.read_ids(&file, seen.len, &mut seen.ids)?;
                }
                seen.len = len;
                seen
            }
            // First delivery, or the file was replaced by a shorter one: read it all.
            _ => {
                let mut ids = HashSet::new();
                self.read_ids(&file, 0, &mut ids)?;
                Seen { ids, len }
            }
        };
        let seen = guard.insert(seen);
        let fresh: Vec<&EventRecord> = events
            .iter()
            .filter(|e| !seen.ids.contains(&e.id))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        // Start on a fresh line if a previous crash left a torn one behind.
        if file.metadata().map(|m| m.len()).unwrap_or(0) > 0 && !ends_with_newline(&self.path) {
            buf.push('\n');
        }
        for e in &fresh {
            buf.push_str(&e.payload);
            buf.push('\n');
        }
        file.write_all(buf.as_bytes()).map_err(|e| self.err(e))?;
        file.sync_data().map_err(|e| self.err(e))?;
        for e in fresh {
            seen.ids.insert(e.id.clone());
        }
        seen.len = file.metadata().map_err(|e| self.err(e))?.len();
        Ok(())
    }
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = File::open(path) else {
        return true;
    };
    if f.seek(SeekFrom::End(-1)).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    f.read_exact(&mut b).map(|_| b[0] == b'\n').unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> EventRecord {
        EventRecord {
            id: id.into(),
            payload: format!("{{\"id\":\"{id}\",\"specversion\":\"1.0\"}}"),
        }
    }

    #[test]
    fn redelivery_does_not_duplicate_even_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let sink = JsonlSink::new(&path);
        sink.deliver(&[rec("a"), rec("b")]).unwrap();
        sink.deliver(&[rec("b"), rec("c")]).unwrap();
        // A new process (new sink) re-delivering after a crash.
        JsonlSink::new(&path)
            .deliver(&[rec("a"), rec("c"), rec("d")])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<_> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
    }

    #[test]
    fn two_sinks_on_one_file_see_each_others_events() {
        // As the service and the CLI: each delivers what the other may already have.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (a, b) = (JsonlSink::new(&path), JsonlSink::new(&path));
        a.deliver(&[rec("x")]).unwrap();
        b.deliver(&[rec("x"), rec("y")]).unwrap();
        a.deliver(&[rec("y"), rec("z")]).unwrap();
        b.deliver(&[rec("z")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<_> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].clone())
            .collect();
        assert_eq!(ids, ["x", "y", "z"]);
    }

    #[test]
    fn a_torn_last_line_is_left_alone_and_the_event_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\"b\",\"spec").unwrap();
        JsonlSink::new(&path).deliver(&[rec("b")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].contains("\"b\""));
    }
}
