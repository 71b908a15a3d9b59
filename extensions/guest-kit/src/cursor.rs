//! The cursor of a started command's output: how many bytes of standard output and of
//! standard error have been handed out, as `o<stdout>.e<stderr>` (`""` is the start). Both
//! providers address output by byte offset (Modal's `TaskExecStdioRead.offset`, a byte range
//! of E2B's output files), so the cursor is all a later `read-output` needs: nothing is lost
//! between calls and nothing is handed out twice.

use std::fmt;

/// Byte offsets into the two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamCursor {
    /// Bytes of standard output handed out (or skipped past the output limit).
    pub stdout: u64,
    /// Bytes of standard error handed out (or skipped past the output limit).
    pub stderr: u64,
}

impl StreamCursor {
    /// Parses a cursor this module wrote; `""` is the start.
    pub fn parse(s: &str) -> Result<StreamCursor, String> {
        if s.is_empty() {
            return Ok(StreamCursor::default());
        }
        let bad = || format!("unreadable output cursor {s:?} (expected o<bytes>.e<bytes>)");
        let (o, e) = s.split_once('.').ok_or_else(bad)?;
        let number = |part: &str, prefix: char| -> Result<u64, String> {
            let digits = part.strip_prefix(prefix).ok_or_else(bad)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            digits.parse().map_err(|_| bad())
        };
        Ok(StreamCursor {
            stdout: number(o, 'o')?,
            stderr: number(e, 'e')?,
        })
    }
}

impl fmt::Display for StreamCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "o{}.e{}", self.stdout, self.stderr)
    }
}

/// What to do with `data` read at byte `offset` of a stream whose first `limit` bytes are
/// kept: the part to hand out and whether any was dropped.
pub fn keep_within(offset: u64, data: &[u8], limit: u64) -> (&[u8], bool) {
    let room = limit.saturating_sub(offset);
    let keep = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
    (&data[..keep], keep < data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        assert_eq!(StreamCursor::parse("").unwrap(), StreamCursor::default());
        let c = StreamCursor {
            stdout: 12,
            stderr: u64::MAX,
        };
        assert_eq!(StreamCursor::parse(&c.to_string()).unwrap(), c);
        assert!(c.to_string().len() < 1024);
        for bad in [
            "o1",
            "o.e1",
            "e1.o2",
            "o1.e-2",
            "o1.e2.x",
            "o99999999999999999999.e0",
            "x",
        ] {
            assert!(StreamCursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_past_the_limit_is_dropped() {
        assert_eq!(keep_within(0, b"abcdef", 4), (&b"abcd"[..], true));
        assert_eq!(keep_within(2, b"abcdef", 4), (&b"ab"[..], true));
        assert_eq!(keep_within(4, b"abc", 4), (&b""[..], true));
        assert_eq!(keep_within(0, b"abc", 4), (&b"abc"[..], false));
        assert_eq!(keep_within(9, b"", 4), (&b""[..], false));
    }
}
