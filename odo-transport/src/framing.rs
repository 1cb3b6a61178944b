//! Length-delimited framing shared by both ends: the bounded frame reader,
//! frame encoding with its u32 prefix, and the batching writer loop.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use bytes::{BufMut, Bytes, BytesMut};
use odo_core::Frame;
use odo_core::codec::{self, CodecError};
use tokio::sync::Notify;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::handshake::MAX_HANDSHAKE_FRAME_LEN;
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
        Self::classify_read_error(err, || format!("the {max_frame_len}-byte bound"))
    }

    /// Like [`CloseReason::from_read_error`], for a frame read before the
    /// handshake completed (bounded by [`MAX_HANDSHAKE_FRAME_LEN`]).
    pub(crate) fn from_handshake_read_error(err: io::Error) -> CloseReason {
        Self::classify_read_error(err, || {
            format!("the {MAX_HANDSHAKE_FRAME_LEN}-byte handshake bound")
        })
    }

    fn classify_read_error(err: io::Error, bound: impl FnOnce() -> String) -> CloseReason {
        if err.kind() == io::ErrorKind::InvalidData {
            return CloseReason::Protocol {
                reason: format!("frame length over {} ({err})", bound()),
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

/// A bounded frame reader: yields each frame without its prefix, and fails
/// on a prefix over its bound.
pub(crate) type FrameReader = FramedRead<ReadHalf, LengthDelimitedCodec>;

/// The read buffer of an established connection.
const READ_CAPACITY: usize = 64 * 1024;

/// A frame reader for a connection whose handshake is not done: bounded to
/// [`MAX_HANDSHAKE_FRAME_LEN`], with a buffer of about that size.
///
/// The codec checks a length prefix against the bound as soon as it has the
/// four bytes, and only then reserves room for the frame: a prefix over the
/// bound fails the read without allocating anything.
pub(crate) fn handshake_reader(read: ReadHalf) -> FrameReader {
    let codec = LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(MAX_HANDSHAKE_FRAME_LEN)
        .new_codec();
    FramedRead::with_capacity(read, codec, PREFIX_LEN + MAX_HANDSHAKE_FRAME_LEN)
}

/// Once the handshake is done: frames up to `max_frame_len` from now on
/// (bytes already buffered after the handshake frame are kept), and a
/// buffer for traffic.
pub(crate) fn lift_bound(frames: &mut FrameReader, max_frame_len: usize) {
    frames.decoder_mut().set_max_frame_length(max_frame_len);
    // A new buffer, not the handshake's grown: `bytes` sizes the buffers
    // that replace a used-up one by the first capacity it was given, and
    // the handshake's is under 1 KiB, which it counts as none. Grown, the
    // reader would then read every later frame in two exact-size reads.
    let buffer = frames.read_buffer_mut();
    let mut traffic = BytesMut::with_capacity(READ_CAPACITY.max(buffer.len()));
    traffic.extend_from_slice(buffer);
    *buffer = traffic;
}

/// Whether `buffer` (a frame reader's buffer, which always starts at a
/// length prefix between frames) holds a whole frame: reading it then
/// needs no I/O.
pub(crate) fn holds_whole_frame(buffer: &[u8]) -> bool {
    match buffer.first_chunk::<PREFIX_LEN>() {
        Some(prefix) => buffer.len() - PREFIX_LEN >= u32::from_be_bytes(*prefix) as usize,
        None => false,
    }
}

/// Encodes `frame` with its u32 big-endian length prefix, ready to write.
pub(crate) fn encode_frame(frame: &Frame, max_frame_len: usize) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + codec::HEADER_LEN + 64 + frame.body.len());
    encode_prefixed(frame, max_frame_len, &mut buf)?;
    Ok(buf.freeze())
}

/// Encodes `frame` with its prefix into a per-thread scratch buffer and
/// hands the bytes to `send`: a frame that is written (or copied into a
/// queue) at once needs no allocation of its own.
pub(crate) fn with_encoded<R>(
    frame: &Frame,
    max_frame_len: usize,
    send: impl FnOnce(&[u8]) -> R,
) -> Result<R, EncodeError> {
    /// Scratch buffers grown past this are not kept.
    const KEEP: usize = 1024 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    SCRATCH.with(|scratch| {
        // `send` never encodes, so the buffer is free here; should that
        // change, fall back to a fresh buffer rather than panic.
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            return encode_frame(frame, max_frame_len).map(|bytes| send(&bytes));
        };
        buf.clear();
        let encoded = encode_prefixed(frame, max_frame_len, &mut buf).map(|()| send(&buf));
        if buf.capacity() > KEEP {
            *buf = BytesMut::new();
        }
        encoded
    })
}

/// Appends `frame` with its prefix to the empty buffer `buf`.
fn encode_prefixed(
    frame: &Frame,
    max_frame_len: usize,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    buf.reserve(PREFIX_LEN + codec::HEADER_LEN + 256 + frame.body.len());
    buf.put_u32(0);
    codec::encode_into(frame, buf)?;
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
    Ok(())
}

/// What [`FrameSink::send_with`] did with a frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// The stream offset just past the frame.
    pub(crate) end: u64,
    /// The frame was deferred into an empty queue: the sender must call
    /// [`FrameSink::flush`].
    pub(crate) flush: bool,
}

/// The sending side of a connection, shared by everyone who sends frames
/// on it and by one writer task.
///
/// Senders append their frame to a queue (a short critical section, a
/// copy) and then try to become the one writing: whoever gets the socket
/// writes everything queued, its own frame and those appended meanwhile, in
/// one system call, on its own thread — no task switch. A sender that finds
/// the socket taken leaves its frame to the current writer, which looks at
/// the queue again before letting go. When the socket is full, the writer
/// task waits for room and takes over. Frames go out whole and in the order
/// they were queued.
pub(crate) struct FrameSink {
    queue: Mutex<Queue>,
    /// Held only while writing without waiting (never across an await).
    /// Lock order: `socket` before `queue`.
    socket: Mutex<Socket>,
    wake: Notify,
    /// Notified when the writer task has written (or the sink closed):
    /// for one waiter on [`FrameSink::room`].
    written: Notify,
}

struct Queue {
    /// Bytes accepted but not yet written.
    bytes: BytesMut,
    /// Total bytes accepted.
    accepted: u64,
    /// Set once the sink closed; every later send fails with it.
    closed: Option<CloseReason>,
    /// Senders only queue, until [`FrameSink::uncork`].
    corked: bool,
    /// The socket is full: the writer task writes once it has room.
    blocked: bool,
    /// The writer task closes the sink once everything is written.
    finishing: bool,
}

struct Socket {
    /// `None` once closed (dropping it shuts the write side down).
    half: Option<Arc<WriteHalf>>,
    /// Total bytes the socket took.
    written: u64,
    /// The buffer being written, swapped with the queue's.
    chunk: BytesMut,
}

impl FrameSink {
    pub(crate) fn new(half: WriteHalf) -> FrameSink {
        FrameSink {
            queue: Mutex::new(Queue {
                bytes: BytesMut::new(),
                accepted: 0,
                closed: None,
                corked: false,
                blocked: false,
                finishing: false,
            }),
            socket: Mutex::new(Socket {
                half: Some(Arc::new(half)),
                written: 0,
                chunk: BytesMut::new(),
            }),
            wake: Notify::new(),
            written: Notify::new(),
        }
    }

    /// Bytes queued and not yet written: what the peer has not taken.
    pub(crate) fn unsent(&self) -> usize {
        self.queue().bytes.len()
    }

    /// Resolves once at most `bound` bytes are unsent (or the sink
    /// closed). One waiter at a time.
    pub(crate) async fn room(&self, bound: usize) {
        loop {
            let notified = self.written.notified();
            {
                let queue = self.queue();
                if queue.bytes.len() <= bound || queue.closed.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every critical section leaves the state consistent, so a poisoned
        // lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn socket(&self) -> MutexGuard<'_, Socket> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one encoded frame. Returns the stream offset just past it: the
    /// frame has reached the socket once [`FrameSink::written`] is at least
    /// that.
    pub(crate) fn send(&self, frame: &[u8]) -> Result<u64, CloseReason> {
        self.send_with(frame, |_| Ok(false))
            .map(|sent| sent.end)
            .map_err(|e| e.unwrap_or(CloseReason::Local))
    }

    /// Like [`FrameSink::send`], running `accept` with the frame's end
    /// offset once the frame is sure to be queued but before any of it can
    /// be written; an error from `accept` drops the frame and is returned.
    /// A closed sink fails with `Err(Some(reason))` without calling
    /// `accept`.
    ///
    /// `accept` also says whether to *defer* the write: a deferred frame that
    /// finds the queue empty is only queued, and the sender must call
    /// [`FrameSink::flush`] soon (after letting other ready senders queue
    /// theirs), which [`Sent::flush`] then says; one that finds frames
    /// queued joins them, and whoever queued the first writes them all.
    pub(crate) fn send_with<E>(
        &self,
        frame: &[u8],
        accept: impl FnOnce(u64) -> Result<bool, E>,
    ) -> Result<Sent, Option<E>>
    where
        E: From<CloseReason>,
    {
        let end;
        {
            let mut queue = self.queue();
            if let Some(reason) = &queue.closed {
                return Err(Some(E::from(reason.clone())));
            }
            end = queue.accepted + frame.len() as u64;
            let defer = accept(end).map_err(Some)?;
            queue.accepted = end;
            let writable = !queue.corked && !queue.blocked;
            if defer {
                // Every non-empty queue has someone bound to write it: the
                // sender that found it empty (here: us), a sender holding
                // the socket, the corker, or the writer task.
                let flush = writable && queue.bytes.is_empty();
                queue.bytes.extend_from_slice(frame);
                return Ok(Sent { end, flush });
            }
            if writable
                && queue.bytes.is_empty()
                && let Some(mut socket) = self.try_socket()
            {
                // The fast path: nothing is queued ahead of this frame and
                // the socket is ours, so write it straight from the caller's
                // buffer. (`try_lock` never waits, so taking `socket` while
                // holding `queue` cannot deadlock.)
                drop(queue);
                self.write_frame(&mut socket, frame);
                self.flush_holding(socket);
                return Ok(Sent { end, flush: false });
            }
            queue.bytes.extend_from_slice(frame);
            if !writable {
                return Ok(Sent { end, flush: false });
            }
        }
        self.flush();
        Ok(Sent { end, flush: false })
    }

    fn try_socket(&self) -> Option<MutexGuard<'_, Socket>> {
        match self.socket.try_lock() {
            Ok(socket) => Some(socket),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Writes what is queued, unless someone else is writing (they will
    /// write it) or the socket is full (the writer task will).
    pub(crate) fn flush(&self) {
        if let Some(socket) = self.try_socket() {
            self.flush_holding(socket);
        }
    }

    /// Writes what is queued, then lets go of the socket, and writes again
    /// if frames were queued meanwhile by senders who found it taken.
    fn flush_holding<'a>(&'a self, mut socket: MutexGuard<'a, Socket>) {
        loop {
            self.write_queued(&mut socket);
            drop(socket);
            {
                let queue = self.queue();
                if queue.bytes.is_empty() || queue.blocked || queue.corked {
                    return;
                }
            }
            match self.try_socket() {
                Some(next) => socket = next,
                None => return,
            }
        }
    }

    /// Writes one frame with nothing queued ahead of it; what the socket
    /// does not take now is queued for the writer task.
    fn write_frame(&self, socket: &mut Socket, frame: &[u8]) {
        let Some(half) = &socket.half else { return };
        let mut done = 0;
        while done < frame.len() {
            match half.try_write(&frame[done..]) {
                Ok(0) => {
                    self.fail(socket, io::ErrorKind::WriteZero.into());
                    return;
                }
                Ok(n) => {
                    done += n;
                    socket.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.requeue_front(&frame[done..]);
                    return;
                }
                Err(e) => {
                    self.fail(socket, e);
                    return;
                }
            }
        }
    }

    /// Puts unwritten bytes back in front of the queue and hands over to
    /// the writer task, which waits for room.
    fn requeue_front(&self, rest: &[u8]) {
        let mut queue = self.queue();
        let mut bytes = BytesMut::with_capacity(rest.len() + queue.bytes.len());
        bytes.extend_from_slice(rest);
        bytes.extend_from_slice(&queue.bytes);
        queue.bytes = bytes;
        queue.blocked = true;
        drop(queue);
        self.wake.notify_one();
    }

    /// Closes the sink after a write failed.
    fn fail(&self, socket: &mut Socket, error: io::Error) {
        socket.half = None;
        let mut queue = self.queue();
        queue.closed.get_or_insert(CloseReason::from_io(&error));
        queue.bytes = BytesMut::new();
        drop(queue);
        self.wake.notify_one();
        self.written.notify_one();
    }

    /// Writes queued bytes while the socket takes them.
    fn write_queued(&self, socket: &mut Socket) {
        let socket = &mut *socket;
        loop {
            {
                let mut queue = self.queue();
                if queue.bytes.is_empty() || queue.blocked || queue.corked {
                    return;
                }
                socket.chunk.clear();
                std::mem::swap(&mut socket.chunk, &mut queue.bytes);
            }
            let Some(half) = &socket.half else { return };
            let mut done = 0;
            let failure = loop {
                if done == socket.chunk.len() {
                    break None;
                }
                match half.try_write(&socket.chunk[done..]) {
                    Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => {
                        done += n;
                        socket.written += n as u64;
                    }
                    Err(e) => break Some(e),
                }
            };
            match failure {
                None => {}
                Some(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let chunk = std::mem::take(&mut socket.chunk);
                    self.requeue_front(&chunk[done..]);
                    socket.chunk = chunk;
                    return;
                }
                Some(e) => {
                    self.fail(socket, e);
                    return;
                }
            }
        }
    }

    /// How many bytes the socket has taken so far.
    pub(crate) fn written(&self) -> u64 {
        self.socket().written
    }

    /// Queues frames sent from now on, until [`FrameSink::uncork`]: a
    /// server answering a burst of requests writes the answers together.
    pub(crate) fn cork(&self) {
        self.queue().corked = true;
    }

    /// Writes what was queued while corked.
    pub(crate) fn uncork(&self) {
        {
            let mut queue = self.queue();
            if !queue.corked {
                return;
            }
            queue.corked = false;
        }
        self.flush();
        // A flush that found the socket taken leaves the bytes to its holder.
    }

    /// Asks the writer task to write what is queued, then close.
    pub(crate) fn finish(&self) {
        let mut queue = self.queue();
        queue.finishing = true;
        queue.corked = false;
        drop(queue);
        self.wake.notify_one();
    }

    /// Closes now: drops what is queued and shuts the write side down (once
    /// the writer task lets go of the socket too). After this returns,
    /// nothing more is written and [`FrameSink::written`] is final.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut socket = self.socket();
        let mut queue = self.queue();
        queue.closed.get_or_insert(reason);
        queue.bytes = BytesMut::new();
        queue.blocked = false;
        socket.half = None;
        drop(queue);
        drop(socket);
        self.wake.notify_one();
        self.written.notify_one();
    }

    /// The writer task: waits for room whenever the socket is full, until
    /// the sink is finished (and drained) or closed. Returns `Ok` when it was
    /// finished or closed locally, and why otherwise.
    pub(crate) async fn run(&self) -> Result<(), CloseReason> {
        loop {
            let (blocked, idle, corked, finishing) = {
                let queue = self.queue();
                if let Some(reason) = &queue.closed {
                    return match reason {
                        CloseReason::Local => Ok(()),
                        other => Err(other.clone()),
                    };
                }
                (
                    queue.blocked,
                    queue.bytes.is_empty(),
                    queue.corked,
                    queue.finishing,
                )
            };
            if blocked {
                let half = self.socket().half.clone();
                let Some(half) = half else { continue };
                tokio::select! {
                    biased;
                    // Woken by close (or finish): look again.
                    _ = self.wake.notified() => continue,
                    ready = half.writable() => {
                        if let Err(e) = ready {
                            let reason = CloseReason::from_io(&e);
                            self.close(reason.clone());
                            return Err(reason);
                        }
                    }
                }
                self.queue().blocked = false;
                // Blocks only behind a sender's non-waiting write.
                let mut socket = self.socket();
                self.write_queued(&mut socket);
                drop(socket);
                self.written.notify_one();
                continue;
            }
            if !idle && !corked {
                // A sender is writing (or just gave up the socket to us):
                // write what is left once it is done.
                let mut socket = self.socket();
                self.write_queued(&mut socket);
                continue;
            }
            if idle && finishing {
                self.close(CloseReason::Local);
                return Ok(());
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::stream::Stream;

    /// A frame reader on one end of a socket pair, and the other end.
    fn pair() -> (FrameReader, tokio::net::UnixStream) {
        let (ours, theirs) = tokio::net::UnixStream::pair().expect("socket pair");
        let (read, _write) = Stream::Unix(ours).into_split();
        (handshake_reader(read), theirs)
    }

    fn prefixed(len: usize, fill: u8) -> Vec<u8> {
        let mut bytes = u32::try_from(len).expect("small").to_be_bytes().to_vec();
        bytes.resize(PREFIX_LEN + len, fill);
        bytes
    }

    #[tokio::test]
    async fn before_the_handshake_a_prefix_just_over_the_bound_fails_without_room_made() {
        for prefix in [
            MAX_HANDSHAKE_FRAME_LEN + 1,
            DEFAULT_MAX_FRAME_LEN,
            u32::MAX as usize,
        ] {
            let (mut frames, mut peer) = pair();
            let capacity = frames.read_buffer().capacity();
            // The prefix alone: no byte of the frame follows.
            let prefix = u32::try_from(prefix).expect("a u32");
            peer.write_all(&prefix.to_be_bytes()).await.expect("write");
            let error = frames
                .next()
                .await
                .expect("an item")
                .expect_err("over the bound");
            let reason = CloseReason::from_handshake_read_error(error);
            assert!(
                reason
                    .to_string()
                    .contains("over the 669-byte handshake bound"),
                "{reason}"
            );
            assert!(
                frames.read_buffer().capacity() <= capacity,
                "no room was made for the announced frame"
            );
            assert!(capacity < 1024, "a handshake-sized buffer: {capacity}");
        }
    }

    #[tokio::test]
    async fn before_the_handshake_a_frame_at_the_bound_is_read() {
        let (mut frames, mut peer) = pair();
        peer.write_all(&prefixed(MAX_HANDSHAKE_FRAME_LEN, 7))
            .await
            .expect("write");
        let frame = frames.next().await.expect("an item").expect("a frame");
        assert_eq!(frame.len(), MAX_HANDSHAKE_FRAME_LEN);
    }

    /// After the handshake, small frames are read many at a time, also
    /// once the first buffer is used up while its frames are still held
    /// (as a channel holds response bodies until their callers take them).
    /// The handshake buffer is under 1 KiB, and `bytes` remembers a
    /// buffer's first capacity to size the ones after it: had the traffic
    /// buffer grown from it, every later frame would have cost two reads
    /// (its prefix, then exactly its bytes) and two allocations.
    #[tokio::test]
    async fn after_the_handshake_small_frames_share_big_reads() {
        let (mut frames, mut peer) = pair();
        peer.write_all(&prefixed(10, 1)).await.expect("write");
        assert_eq!(frames.next().await.expect("item").expect("frame").len(), 10);
        lift_bound(&mut frames, DEFAULT_MAX_FRAME_LEN);
        // Three buffers' worth of 27-byte frames, all held.
        let count = 3 * READ_CAPACITY / (PREFIX_LEN + 27);
        let mut bytes = Vec::new();
        for i in 0..count {
            bytes.extend(prefixed(27, i as u8));
        }
        let writer = tokio::spawn(async move {
            let _ = peer.write_all(&bytes).await;
            peer
        });
        let mut held = Vec::with_capacity(count);
        let mut smallest_room = usize::MAX;
        for i in 0..count {
            let frame = frames.next().await.expect("item").expect("frame");
            assert_eq!(frame.len(), 27);
            assert!(frame.iter().all(|&b| b == i as u8));
            held.push(frame.freeze());
            let buffer = frames.read_buffer();
            if buffer.is_empty() {
                // Between reads: what the next read may fill.
                smallest_room = smallest_room.min(buffer.capacity());
            }
        }
        assert!(
            smallest_room >= 4096,
            "a read buffer of {smallest_room} bytes: small frames are read one by one"
        );
        drop(frames);
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn after_the_handshake_the_configured_bound_applies() {
        let (mut frames, mut peer) = pair();
        let max = 1024 * 1024;
        // The handshake frame and a big one behind it, in one write: the
        // big one is already buffered when the bound is lifted.
        let mut bytes = prefixed(10, 1);
        bytes.extend(prefixed(max, 2));
        bytes.extend(prefixed(max + 1, 3));
        let writer = tokio::spawn(async move {
            let _ = peer.write_all(&bytes).await;
            peer
        });
        assert_eq!(frames.next().await.expect("item").expect("frame").len(), 10);
        lift_bound(&mut frames, max);
        let big = frames
            .next()
            .await
            .expect("item")
            .expect("a frame at the bound");
        assert_eq!(big.len(), max);
        assert!(big.iter().all(|&b| b == 2));
        let error = frames
            .next()
            .await
            .expect("an item")
            .expect_err("over the configured bound");
        let reason = CloseReason::from_read_error(error, max);
        assert!(
            reason.to_string().contains("over the 1048576-byte bound"),
            "{reason}"
        );
        drop(frames);
        drop(writer.await.expect("writer"));
    }
}
