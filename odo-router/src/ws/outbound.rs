//! A socket's queue of what to send, bounded, and the frames in it:
//! a message is framed once ([`Out::data`]) and the same bytes are queued
//! for every socket it goes to.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::{Kill, lock};

/// What a socket is to send.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// A whole frame, header included, shared by every socket it goes to;
    /// `len` is its payload, what counts against the send buffer.
    Frame { bytes: Bytes, len: usize },
    /// The object closes the socket: nothing is sent after it.
    Close(CloseFrame),
}

impl Out {
    /// A message as one final frame from the server (unmasked, so the same
    /// bytes serve every socket).
    pub(crate) fn data(binary: bool, payload: &[u8]) -> Out {
        let opcode = OpCode::Data(if binary { Data::Binary } else { Data::Text });
        Out::frame(opcode, payload)
    }

    /// The ping the door sends a silent socket.
    pub(crate) fn ping() -> Out {
        Out::frame(OpCode::Control(Control::Ping), b"odo")
    }

    fn frame(opcode: OpCode, payload: &[u8]) -> Out {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        let len = payload.len();
        let mut bytes = Vec::with_capacity(header.len(len as u64) + len);
        // Formatting into a Vec cannot fail.
        let _ = header.format(len as u64, &mut bytes);
        bytes.extend_from_slice(payload);
        Out::Frame {
            bytes: Bytes::from(bytes),
            len,
        }
    }

    /// The bytes it counts against the send buffer.
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Frame { len, .. } => *len,
            Out::Close(_) => 0,
        }
    }
}

/// A socket's queue of frames to send, bounded, and what the door's idle
/// sweep needs to know of it.
pub(crate) struct Outbound {
    queue: Mutex<OutQueue>,
    /// Wakes the socket's connection (something queued, killed, or silent
    /// too long).
    waker: AtomicWaker,
    /// When the client was last heard from (or last pinged), on the
    /// door's clock ([`super::Door::clock_ms`]).
    heard_ms: AtomicU64,
    /// The sweep found the socket silent for the idle timeout; the
    /// connection pings it, or closes it if it was pinged already.
    idle_check: AtomicBool,
}

#[derive(Default)]
struct OutQueue {
    items: VecDeque<Out>,
    /// The bytes of `items` and of the frames the connection took but has
    /// not handed to the client yet: what the socket holds here.
    bytes: usize,
    /// A close frame is queued: nothing more is sent.
    closed: bool,
    /// The door closes the socket (a limit, a restart, shutdown).
    killed: Option<Kill>,
}

impl Outbound {
    /// A socket's queue, its client heard from at `now_ms`.
    pub(crate) fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            heard_ms: AtomicU64::new(now_ms),
            idle_check: AtomicBool::new(false),
        })
    }

    /// The client was heard from (or pinged) at `now_ms`.
    pub(crate) fn heard(&self, now_ms: u64) {
        self.heard_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The door's idle sweep: when the client has been silent for
    /// `idle_ms` at `now_ms`, asks the connection to check on it (once,
    /// until it has checked). `true`: the connection must be woken
    /// ([`Outbound::wake`]) for that.
    pub(crate) fn mark_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        let silent = now_ms.saturating_sub(self.heard_ms.load(Ordering::Relaxed));
        silent >= idle_ms && !self.idle_check.swap(true, Ordering::AcqRel)
    }

    /// Wakes the socket's connection.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Whether the sweep asked for a check since the last call.
    pub(crate) fn take_idle_check(&self) -> bool {
        self.idle_check.swap(false, Ordering::AcqRel)
    }

    /// Drops the connection's waker (the connection ended): a waker may
    /// own the connection, which owns this queue.
    pub(crate) fn forget_waker(&self) {
        drop(self.waker.take());
    }

    /// Queues `out`; `false` when the queue would pass `cap` bytes (one
    /// frame always fits an empty queue): the client is not reading.
    pub(crate) fn push(&self, out: Out, cap: usize) -> bool {
        let mut queue = lock(&self.queue);
        if queue.closed || queue.killed.is_some() {
            return true;
        }
        let len = out.len();
        if !queue.items.is_empty() && queue.bytes + len > cap {
            return false;
        }
        if matches!(out, Out::Close(_)) {
            queue.closed = true;
        }
        queue.bytes += len;
        let wake = queue.items.is_empty();
        queue.items.push_back(out);
        drop(queue);
        if wake {
            self.waker.wake();
        }
        true
    }

    /// Closes the socket from the door's side: what is queued is dropped.
    pub(crate) fn kill(&self, kill: Kill) {
        let mut queue = lock(&self.queue);
        if queue.killed.is_none() {
            queue.killed = Some(kill);
            queue.items.clear();
            queue.bytes = 0;
        }
        drop(queue);
        self.waker.wake();
    }

    pub(crate) fn kill_reason(&self) -> Option<Kill> {
        lock(&self.queue).killed
    }

    /// Registers the connection to be woken by [`Outbound::push`] and
    /// [`Outbound::kill`]; call before [`Outbound::take`].
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// Takes what is queued, or says the socket was killed. The frames
    /// taken still count against the send buffer until the connection
    /// reports each one written ([`Outbound::written`]), so a socket holds
    /// at most its buffer here, whether queued or taken.
    /// The queue's allocation goes with what is taken: an idle socket
    /// keeps none.
    pub(crate) fn take(&self) -> Result<VecDeque<Out>, Kill> {
        let mut queue = lock(&self.queue);
        if let Some(kill) = queue.killed {
            return Err(kill);
        }
        Ok(std::mem::take(&mut queue.items))
    }

    /// The connection handed a frame of `len` payload bytes to the client:
    /// it no longer counts against the send buffer.
    pub(crate) fn written(&self, len: usize) {
        let mut queue = lock(&self.queue);
        queue.bytes = queue.bytes.saturating_sub(len);
    }
}

#[cfg(test)]
mod tests {
    use super::Out;

    /// The frames the door builds are what tungstenite reads back.
    #[test]
    fn a_frame_built_once_reads_back() {
        for (binary, len) in [(false, 0), (false, 125), (true, 126), (true, 70_000)] {
            let payload = vec![b'a'; len];
            let Out::Frame {
                bytes,
                len: counted,
            } = Out::data(binary, &payload)
            else {
                panic!("a data frame");
            };
            assert_eq!(counted, len);
            let mut cursor = std::io::Cursor::new(&bytes[..]);
            let (header, parsed) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
                .expect("a header")
                .expect("a whole header");
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(parsed as usize, len);
            assert_eq!(&bytes[cursor.position() as usize..], &payload[..]);
        }
    }
}
