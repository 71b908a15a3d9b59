//! Relays the JSONL event log to another sink (the HTTP hub), at least once.
//!
//! The outbox delivers every meter event to the JSONL file first (fsynced, deduplicated
//! by id). A relay then reads the file from a saved byte offset and hands complete lines
//! to its sink, advancing the offset only after the sink accepted them. So a slow or dead
//! hub never holds up a settlement, a destroy or the outbox, and nothing is lost across
//! crashes: a lost offset update only re-sends events, which receivers deduplicate by id.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{EventError, EventRecord, EventSink};

/// Reads `log` from the offset stored in `cursor` and delivers to `sink`.
pub struct LogRelay {
    log: PathBuf,
    cursor: PathBuf,
    sink: Box<dyn EventSink>,
    pending: u64,
}

impl LogRelay {
    /// A relay of `log` into `sink`, remembering its position in `cursor`.
    pub fn new(
        log: impl Into<PathBuf>,
        cursor: impl Into<PathBuf>,
        sink: Box<dyn EventSink>,
    ) -> Self {
        Self {
            log: log.into(),
            cursor: cursor.into(),
            sink,
            pending: 0,
        }
    }

    /// The sink's name.
    pub fn name(&self) -> String {
        self.sink.name()
    }

    /// Complete events in the log not yet accepted by the sink (as of the last pump).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    fn err(&self, reason: impl std::fmt::Display) -> EventError {
        EventError::Sink {
            sink: self.sink.name(),
            reason: reason.to_string(),
        }
    }

    fn load_offset(&self) -> u64 {
        std::fs::read_to_string(&self.cursor)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn save_offset(&self, offset: u64) -> Result<(), EventError> {
        let tmp = self.cursor.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n"))
            .map_err(|e| self.err(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &self.cursor)
            .map_err(|e| self.err(format!("{}: {e}", self.cursor.display())))
    }

    /// Delivers up to `max` events past the offset. Returns how many were delivered; on
    /// a sink error nothing advances and the error is returned.
    pub fn pump(&mut self, max: usize) -> Result<usize, EventError> {
        let mut file = match File::open(&self.log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.pending = 0;
                return Ok(0);
            }
            Err(e) => return Err(self.err(format!("{}: {e}", self.log.display()))),
        };
        let len = file.metadata().map_err(|e| self.err(e))?.len();
        let mut offset = self.load_offset();
        if offset > len {
            // The log was replaced or truncated: start over (receivers deduplicate).
            offset = 0;
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| self.err(e))?;
        let (batch, end, remaining) =
            read_lines(BufReader::new(file), offset, max).map_err(|e| self.err(e))?;
        self.pending = batch.len() as u64 + remaining;
        if !batch.is_empty() {
            self.sink.deliver(&batch)?;
        }
        if end != offset {
            self.save_offset(end)?;
        }
        self.pending = remaining;
        Ok(batch.len())
    }
}

/// Reads complete lines from `offset`: up to `max` events, the offset after the last line
/// taken, and how many complete event lines remain after those. Lines that are not an
/// event (a torn write left by a crash) are passed over.
fn read_lines(
    mut r: impl BufRead,
    offset: u64,
    max: usize,
) -> std::io::Result<(Vec<EventRecord>, u64, u64)> {
    let mut batch = Vec::new();
    let mut end = offset;
    let mut remaining = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            // End of file, or a line still being written.
            break;
        }
        let Some(id) = event_id(line.trim_end()) else {
            if batch.len() < max {
                end += n as u64;
            }
            continue;
        };
        if batch.len() < max {
            batch.push(EventRecord {
                id,
                payload: line.trim_end().to_owned(),
            });
            end += n as u64;
        } else {
            remaining += 1;
        }
    }
    Ok((batch, end, remaining))
}

fn event_id(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

/// The cursor file of the relay to `name` in `state_dir` (one per sink URL).
pub fn cursor_path(state_dir: &Path, name: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let h = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    state_dir.join(format!("relay-{h}.offset"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    struct Capture {
        got: Arc<Mutex<Vec<String>>>,
        fail: Arc<Mutex<bool>>,
    }
    impl EventSink for Capture {
        fn name(&self) -> String {
            "capture".into()
        }
        fn deliver(&self, events: &[EventRecord]) -> Result<(), EventError> {
            if *self.fail.lock() {
                return Err(EventError::Sink {
                    sink: "capture".into(),
                    reason: "down".into(),
                });
            }
            self.got.lock().extend(events.iter().map(|e| e.id.clone()));
            Ok(())
        }
    }

    #[test]
    fn relays_each_line_once_and_survives_failures_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let got = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(Mutex::new(false));
        let mk = || {
            LogRelay::new(
                &log,
                dir.path().join("c.offset"),
                Box::new(Capture {
                    got: got.clone(),
                    fail: fail.clone(),
                }),
            )
        };
        let mut r = mk();
        assert_eq!(r.pump(10).unwrap(), 0);
        std::fs::write(&log, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"").unwrap();
        assert_eq!(r.pump(1).unwrap(), 1);
        assert_eq!(r.pending(), 1);
        *fail.lock() = true;
        assert!(r.pump(10).is_err());
        *fail.lock() = false;
        // A new process picks up where the last one left off.
        let mut r = mk();
        assert_eq!(r.pump(10).unwrap(), 1);
        // The torn "c" is completed by a later write starting on a fresh line.
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(r.pump(10).unwrap(), 2);
        assert_eq!(*got.lock(), ["a", "b", "c", "d"]);
        assert_eq!(r.pump(10).unwrap(), 0);
    }
}
