//! Length-delimited framing shared by both ends: the bounded frame reader,
//! frame encoding with its u32 prefix, and the batching writer loop.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use odo_core::Frame;
use odo_core::codec::{self, CodecError};
use tokio::sync::Notify;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::stream::{ReadHalf, WriteHalf};

/// The default bound on one frame (header, envelope and body): 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The size of the length prefix before every frame.
const PREFIX_LEN: usize = 4;

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

/// The sending side of a connection, shared by everyone who sends frames
/// on it and by one writer task.
///
/// [`FrameSink::send`] never waits: when nothing is queued it writes the
/// frame straight to the socket (no task switch on the fast path); when the
/// socket is full, it appends the frame to a buffer that the writer task
/// drains, in large writes, as the socket accepts more. Frames therefore go
/// out whole and in the order they were sent.
pub(crate) struct FrameSink {
    state: Mutex<SinkState>,
    wake: Notify,
}

struct SinkState {
    /// The socket; `None` once closed (dropping it shuts the write side).
    half: Option<Arc<WriteHalf>>,
    /// Bytes accepted but not yet taken by the socket.
    queued: BytesMut,
    /// Total bytes accepted by [`FrameSink::send`].
    accepted: u64,
    /// Total bytes the socket took.
    written: u64,
    /// Set once the sink closed; every later send fails with it.
    closed: Option<CloseReason>,
    /// The writer task closes the sink once `queued` is empty.
    finishing: bool,
    /// Frames are only queued, until [`FrameSink::uncork`].
    corked: bool,
}

/// What the writer task does next.
enum Step {
    Wait,
    WaitWritable(Arc<WriteHalf>),
    Done(Result<(), CloseReason>),
}

impl FrameSink {
    pub(crate) fn new(half: WriteHalf) -> FrameSink {
        FrameSink {
            state: Mutex::new(SinkState {
                half: Some(Arc::new(half)),
                queued: BytesMut::new(),
                accepted: 0,
                written: 0,
                closed: None,
                finishing: false,
                corked: false,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        // Every critical section leaves the state consistent, so a poisoned
        // lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one encoded frame: writes it now if nothing is queued ahead of
    /// it, otherwise queues it. Returns the stream offset just past the
    /// frame: the frame has reached the socket once [`FrameSink::written`]
    /// is at least that.
    pub(crate) fn send(&self, frame: &[u8]) -> Result<u64, CloseReason> {
        self.submit(frame, true)
    }

    /// Queues one encoded frame for the writer task, which writes everything
    /// queued meanwhile in one go: the busy path, trading a task switch for
    /// fewer system calls. Returns what [`FrameSink::send`] returns.
    pub(crate) fn enqueue(&self, frame: &[u8]) -> Result<u64, CloseReason> {
        self.submit(frame, false)
    }

    fn submit(&self, frame: &[u8], direct: bool) -> Result<u64, CloseReason> {
        let mut state = self.lock();
        let state = &mut *state;
        let half = match (&state.closed, &state.half) {
            (Some(reason), _) => return Err(reason.clone()),
            (None, None) => return Err(CloseReason::Local),
            (None, Some(half)) => half,
        };
        state.accepted += frame.len() as u64;
        let end = state.accepted;
        if !state.queued.is_empty() || state.corked {
            // The writer task (or the corker) writes what is queued; this
            // frame goes behind it.
            state.queued.extend_from_slice(frame);
            return Ok(end);
        }
        if !direct {
            state.queued.extend_from_slice(frame);
            self.wake.notify_one();
            return Ok(end);
        }
        match half.try_write(frame) {
            Ok(n) => {
                state.written += n as u64;
                if n == frame.len() {
                    return Ok(end);
                }
                state.queued.extend_from_slice(&frame[n..]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                state.queued.extend_from_slice(frame);
            }
            Err(e) => {
                let reason = CloseReason::from_io(&e);
                state.closed = Some(reason.clone());
                state.half = None;
                self.wake.notify_one();
                return Err(reason);
            }
        }
        self.wake.notify_one();
        Ok(end)
    }

    /// Queues frames sent from now on, until [`FrameSink::uncork`]: a
    /// server answering a burst of requests writes the answers together.
    pub(crate) fn cork(&self) {
        self.lock().corked = true;
    }

    /// Writes what was queued while corked, here and now as far as the
    /// socket takes it; the writer task writes the rest.
    pub(crate) fn uncork(&self) {
        let mut state = self.lock();
        if !state.corked {
            return;
        }
        state.corked = false;
        if state.queued.is_empty() {
            return;
        }
        if let Step::Done(_) = Self::write_queued(&mut state) {
            drop(state);
            self.wake.notify_one();
            return;
        }
        if !state.queued.is_empty() {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// How many bytes the socket has taken so far.
    pub(crate) fn written(&self) -> u64 {
        self.lock().written
    }

    /// Asks the writer task to write what is queued, then close.
    pub(crate) fn finish(&self) {
        self.lock().finishing = true;
        self.wake.notify_one();
    }

    /// Closes now: drops what is queued and shuts the write side down (once
    /// the writer task lets go of the socket too).
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        state.closed.get_or_insert(reason);
        state.half = None;
        state.queued = BytesMut::new();
        drop(state);
        self.wake.notify_one();
    }

    /// The writer task: writes queued bytes as the socket takes them, until
    /// the sink is finished (and drained) or closed. Returns `Ok` when it was
    /// finished or closed locally, and why otherwise.
    pub(crate) async fn run(&self) -> Result<(), CloseReason> {
        loop {
            let step = self.step();
            match step {
                Step::Done(result) => return result,
                Step::Wait => self.wake.notified().await,
                Step::WaitWritable(half) => {
                    // Also wake on close, so the socket is let go promptly.
                    tokio::select! {
                        biased;
                        _ = self.wake.notified() => {}
                        ready = half.writable() => {
                            if let Err(e) = ready {
                                let reason = CloseReason::from_io(&e);
                                self.close(reason.clone());
                                return Err(reason);
                            }
                        }
                    }
                }
            }
        }
    }

    fn step(&self) -> Step {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Step::Done(match reason {
                CloseReason::Local => Ok(()),
                other => Err(other.clone()),
            });
        }
        if state.corked {
            // The corker writes when it uncorks.
            return Step::Wait;
        }
        match Self::write_queued(&mut state) {
            Step::Wait => {}
            other => return other,
        }
        if state.finishing {
            state.closed = Some(CloseReason::Local);
            state.half = None;
            return Step::Done(Ok(()));
        }
        Step::Wait
    }

    /// Writes queued bytes while the socket takes them. `Wait` when all are
    /// written, `WaitWritable` when the socket is full, `Done` when writing
    /// failed (the sink is then closed).
    fn write_queued(state: &mut SinkState) -> Step {
        let Some(half) = &state.half else {
            return Step::Done(Ok(()));
        };
        while !state.queued.is_empty() {
            match half.try_write(&state.queued) {
                Ok(0) => {
                    let reason = CloseReason::from_io(&io::ErrorKind::WriteZero.into());
                    state.closed = Some(reason.clone());
                    state.half = None;
                    return Step::Done(Err(reason));
                }
                Ok(n) => {
                    state.queued.advance(n);
                    state.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::WaitWritable(half.clone());
                }
                Err(e) => {
                    let reason = CloseReason::from_io(&e);
                    state.closed = Some(reason.clone());
                    state.half = None;
                    return Step::Done(Err(reason));
                }
            }
        }
        state.queued.clear();
        Step::Wait
    }
}
