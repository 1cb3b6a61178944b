//! Length-delimited framing shared by both ends: the bounded frame reader,
//! frame encoding with its u32 prefix, and the batching writer loop.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use odo_core::Frame;
use odo_core::codec::{self, CodecError};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::stream::{ReadHalf, WriteHalf};

/// The default bound on one frame (header, envelope and body): 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The size of the length prefix before every frame.
const PREFIX_LEN: usize = 4;

/// How many queued frames the writer gathers into one write at most.
const MAX_BATCH_FRAMES: usize = 256;

/// How many bytes the writer gathers into one write at most (a single
/// larger frame is still written whole).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Why a connection closed. Calls that fail because their connection closed
/// carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// Reading or writing the socket failed.
    #[error("I/O error: {message}")]
    Io {
        /// The error's kind.
        kind: io::ErrorKind,
        /// The error's description.
        message: String,
    },
    /// The peer sent something that breaks the protocol (garbage, a frame
    /// over the bound, an unexpected message); the connection was dropped.
    #[error("the peer broke the protocol: {reason}")]
    Protocol {
        /// What the peer did.
        reason: String,
    },
    /// This side closed the connection ([`crate::Channel::close`], or every
    /// handle was dropped).
    #[error("the connection was closed locally")]
    Local,
}

impl CloseReason {
    /// Classifies an error from the frame reader: a frame over the bound or
    /// a truncated frame is the peer's fault, anything else is I/O.
    pub(crate) fn from_read_error(err: io::Error, max_frame_len: usize) -> CloseReason {
        if err.kind() == io::ErrorKind::InvalidData {
            return CloseReason::Protocol {
                reason: format!("frame length over the {max_frame_len}-byte bound ({err})"),
            };
        }
        if err.kind() == io::ErrorKind::Other && err.to_string().contains("bytes remaining") {
            return CloseReason::Protocol {
                reason: "truncated frame: the stream ended inside a frame".into(),
            };
        }
        CloseReason::from_io(&err)
    }

    pub(crate) fn from_io(err: &io::Error) -> CloseReason {
        CloseReason::Io {
            kind: err.kind(),
            message: err.to_string(),
        }
    }
}

/// Why a frame could not be encoded for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EncodeError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("frame of {len} bytes exceeds the {max}-byte bound")]
    TooLarge { len: usize, max: usize },
}

/// A bounded frame reader over `read`: yields each frame without its
/// prefix, and fails on a prefix over `max_frame_len`.
pub(crate) fn frame_reader(
    read: ReadHalf,
    max_frame_len: usize,
) -> FramedRead<ReadHalf, LengthDelimitedCodec> {
    let codec = LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(max_frame_len)
        .new_codec();
    FramedRead::with_capacity(read, codec, 64 * 1024)
}

/// Encodes `frame` with its u32 big-endian length prefix, ready to write.
pub(crate) fn encode_frame(frame: &Frame, max_frame_len: usize) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + codec::HEADER_LEN + 64 + frame.body.len());
    buf.put_u32(0);
    codec::encode_into(frame, &mut buf)?;
    let len = buf.len() - PREFIX_LEN;
    let prefix = match u32::try_from(len) {
        Ok(prefix) if len <= max_frame_len => prefix,
        _ => {
            return Err(EncodeError::TooLarge {
                len,
                max: max_frame_len,
            });
        }
    };
    buf[..PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf.freeze())
}

/// One encoded frame queued for the writer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The frame with its prefix.
    pub(crate) bytes: Bytes,
    /// For a client request: its id, so the writer can check the call is
    /// still wanted and record that it was written.
    pub(crate) request_id: Option<u64>,
}

/// Writes queued frames until the queue closes (then shuts the write side
/// down) or `stop` fires. Frames queued together go out in one write.
///
/// Before each write, `admit` sees the batch: it may drop frames nobody
/// waits for any more, and returns false to stop without writing.
pub(crate) async fn write_loop(
    mut write: WriteHalf,
    rx: &mut mpsc::UnboundedReceiver<Outgoing>,
    stop: &CancellationToken,
    mut admit: impl FnMut(&mut Vec<Outgoing>) -> bool,
) -> io::Result<()> {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH_FRAMES);
    let mut buf = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = rx.recv() => next,
        };
        let Some(first) = first else {
            // Every sender is gone: finish cleanly so the peer sees EOF.
            let _ = write.shutdown().await;
            return Ok(());
        };
        let mut size = first.bytes.len();
        batch.push(first);
        while batch.len() < MAX_BATCH_FRAMES && size < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    size += next.bytes.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        if !admit(&mut batch) {
            return Ok(());
        }
        let written = async {
            match batch.as_slice() {
                [] => Ok(()),
                [one] => write.write_all(&one.bytes).await,
                many => {
                    buf.clear();
                    for frame in many {
                        buf.extend_from_slice(&frame.bytes);
                    }
                    write.write_all(&buf).await
                }
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            result = written => result?,
        }
        batch.clear();
    }
}
