//! The default sink: an append-only JSON Lines file, one CloudEvent per line.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{EventError, EventRecord, EventSink};

/// Appends events to a file and fsyncs before acknowledging. Keeps the ids already in the
/// file (read once at open) so an event handed again after a crash is not written twice.
pub struct JsonlSink {
    path: PathBuf,
    seen: Mutex<Option<HashSet<String>>>,
}

impl JsonlSink {
    /// A sink writing to `path` (created on first delivery, with its folder).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seen: Mutex::new(None),
        }
    }

    /// The file this sink writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl std::fmt::Display) -> EventError {
        EventError::Sink {
            sink: self.name(),
            reason: reason.to_string(),
        }
    }

    fn load_ids(&self) -> Result<HashSet<String>, EventError> {
        let mut ids = HashSet::new();
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(self.err(e)),
        };
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| self.err(e))?;
            // A torn last line (crash mid-write) has no parsable id: it is rewritten whole.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(id) = v.get("id").and_then(|i| i.as_str())
            {
                ids.insert(id.to_owned());
            }
        }
        Ok(ids)
    }
}

impl EventSink for JsonlSink {
    fn name(&self) -> String {
        format!("jsonl:{}", self.path.display())
    }

    fn deliver(&self, events: &[EventRecord]) -> Result<(), EventError> {
        let mut guard = self.seen.lock();
        if guard.is_none() {
            *guard = Some(self.load_ids()?);
        }
        let Some(seen) = guard.as_mut() else {
            return Err(self.err("event id index missing"));
        };
        let fresh: Vec<&EventRecord> = events.iter().filter(|e| !seen.contains(&e.id)).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.err(e))?;
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
            seen.insert(e.id.clone());
        }
        Ok(())
    }
}

fn ends_with_newline(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
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
