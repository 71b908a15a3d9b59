//! Length-prefixed messages as gRPC (`application/grpc`) and Connect streaming
//! (`application/connect+json`) put them on the wire: one flags byte, a big-endian `u32`
//! length, then the payload. Flag bit 0 is "compressed" (never sent or accepted here);
//! Connect sets bit 1 on its end-of-stream message.

use std::fmt;

/// Flag bit: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit (Connect): the end-of-stream message.
pub const FLAG_END_STREAM: u8 = 0x02;

/// One framed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The flags byte.
    pub flags: u8,
    /// The message bytes.
    pub payload: Vec<u8>,
}

/// A frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Larger than the most this reader takes.
    TooLarge { len: usize, max: usize },
    /// Compressed, which was never negotiated.
    Compressed,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::TooLarge { len, max } => {
                write!(f, "a message of {len} bytes is over the {max}-byte limit")
            }
            EnvelopeError::Compressed => write!(f, "a compressed message was not asked for"),
        }
    }
}

/// `payload` framed with `flags`.
pub fn frame(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a byte stream into frames as bytes arrive.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Decoder {
    /// A decoder that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, EnvelopeError> {
        let rest = &self.buf[self.start..];
        if rest.len() < 5 {
            return Ok(None);
        }
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len > self.max {
            return Err(EnvelopeError::TooLarge { len, max: self.max });
        }
        if flags & FLAG_COMPRESSED != 0 {
            return Err(EnvelopeError::Compressed);
        }
        if rest.len() < 5 + len {
            return Ok(None);
        }
        let payload = rest[5..5 + len].to_vec();
        self.start += 5 + len;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(Frame { flags, payload }))
    }

    /// Bytes received that do not yet make a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whatever_the_chunking() {
        let mut wire = frame(0, b"hello");
        wire.extend(frame(FLAG_END_STREAM, b"{}"));
        wire.extend(frame(0, b""));
        for chunk in 1..wire.len() {
            let mut d = Decoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(got[0].payload, b"hello");
            assert_eq!(got[1].flags, FLAG_END_STREAM);
            assert!(got[2].payload.is_empty());
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn oversized_and_compressed_frames_are_refused() {
        let mut d = Decoder::new(4);
        d.push(&frame(0, b"hello"));
        assert_eq!(
            d.next_frame(),
            Err(EnvelopeError::TooLarge { len: 5, max: 4 })
        );
        let mut d = Decoder::new(100);
        d.push(&frame(FLAG_COMPRESSED, b"x"));
        assert_eq!(d.next_frame(), Err(EnvelopeError::Compressed));
        let mut d = Decoder::new(100);
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.pending(), 3);
    }
}
