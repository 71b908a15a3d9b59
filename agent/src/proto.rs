//! The private channel between the agent and a sandbox's init: bubblewrap's stdin and
//! stdout, which only init holds (its children get pipes of their own, and init is not
//! dumpable, so no sandboxed process can open the channel through `/proc`).
//!
//! A frame is `[u32 header length][u32 payload length][header JSON][payload bytes]`, both
//! lengths little-endian: the header is a small typed message, the payload raw bytes
//! (stdin, output, file content) that need no encoding.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest header accepted (they are small JSON objects).
pub const MAX_HEADER: usize = 1 << 20;
/// The largest payload accepted in one frame.
pub const MAX_PAYLOAD: usize = 64 << 20;

pub use crate::wire::{DirEntry, Stream};

/// The agent's requests to init.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Start a command; the payload is written to its stdin, which is then closed unless
    /// `keep_stdin_open`.
    Spawn {
        pid: u64,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: String,
        keep_stdin_open: bool,
    },
    /// Write the payload to a started command's stdin; close it afterwards if `close`.
    Stdin { pid: u64, close: bool },
    /// Kill a started command and what it started.
    Kill { pid: u64 },
    /// Write the payload to a file of the workspace.
    WriteFile {
        req: u64,
        path: String,
        append: bool,
    },
    /// Read part of a file of the workspace.
    ReadFile {
        req: u64,
        path: String,
        offset: u64,
        max: u32,
    },
    /// List a folder of the workspace.
    ListDir { req: u64, path: String },
}

/// Init's messages to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "kebab-case")]
pub enum Event {
    /// Init is up and serving.
    Ready { version: String },
    /// The command could not be started.
    SpawnFailed { pid: u64, error: String },
    /// Output of a command (the payload).
    Output { pid: u64, stream: Stream },
    /// A command ended; its output has all been sent before this.
    Exited {
        pid: u64,
        code: Option<i32>,
        signal: Option<i32>,
        cpu_us: u64,
    },
    /// A file operation finished (a read's data is the payload).
    FileDone { req: u64, result: FileResult },
}

/// What a file operation gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FileResult {
    Written,
    Read { size: u64 },
    Listed { entries: Vec<DirEntry> },
    Failed { kind: FileError, message: String },
}

/// Why a file operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileError {
    /// No such file or folder.
    NotFound,
    /// Outside the workspace, a folder where a file was expected, a malformed path.
    Invalid,
    /// The workspace is full.
    NoSpace,
    /// Anything else.
    Other,
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("channel closed")]
    Closed,
    #[error("channel i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} + {1} bytes is over the limit")]
    TooLarge(usize, usize),
    #[error("malformed frame header: {0}")]
    Header(#[from] serde_json::Error),
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    header: &T,
    payload: &[u8],
) -> Result<(), FrameError> {
    let head = serde_json::to_vec(header)?;
    let mut buf = Vec::with_capacity(8 + head.len() + payload.len());
    buf.extend_from_slice(&(head.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; [`FrameError::Closed`] at a clean end of the channel.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<(T, Vec<u8>), FrameError> {
    let mut lens = [0u8; 8];
    match r.read_exact(&mut lens).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let head_len = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]) as usize;
    let body_len = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) as usize;
    if head_len > MAX_HEADER || body_len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(head_len, body_len));
    }
    let mut head = vec![0u8; head_len];
    r.read_exact(&mut head).await?;
    let mut payload = vec![0u8; body_len];
    r.read_exact(&mut payload).await?;
    Ok((serde_json::from_slice(&head)?, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_binary_payloads() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let payload: Vec<u8> = (0..=255u8).collect();
        let req = Request::Stdin {
            pid: 7,
            close: true,
        };
        write_frame(&mut a, &req, &payload).await.unwrap();
        drop(a);
        let (got, data): (Request, Vec<u8>) = read_frame(&mut b).await.unwrap();
        assert!(matches!(
            got,
            Request::Stdin {
                pid: 7,
                close: true
            }
        ));
        assert_eq!(data, payload);
        let end = read_frame::<_, Request>(&mut b).await;
        assert!(matches!(end, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut lens = Vec::new();
        lens.extend_from_slice(&(MAX_HEADER as u32 + 1).to_le_bytes());
        lens.extend_from_slice(&0u32.to_le_bytes());
        tokio::io::AsyncWriteExt::write_all(&mut a, &lens)
            .await
            .unwrap();
        let r = read_frame::<_, Event>(&mut b).await;
        assert!(matches!(r, Err(FrameError::TooLarge(_, 0))), "{r:?}");
    }
}
