//! One socket's connection once upgraded, and its protocol state:
//! tungstenite's protocol layer (a [`WebSocketContext`], over buffers of
//! our own) reads what the client sends, answers pings and closes, and the
//! frames the door queued (each framed once for every socket it goes to)
//! are written as they are, several in one write. How the connection ended
//! is what its object is told. `served.rs` decides when it runs.
//!
//! An idle socket holds no buffer here beyond tungstenite's small read
//! buffer: what it sends is taken from its queue and let go of once
//! written, and what it reads goes through a scratch buffer on the stack
//! of whichever task polls it. tungstenite keeps the allocation of the
//! largest frame it read; after a message larger than 1 KiB its state is
//! renewed (it was handed no byte past that message's last frame, so it
//! holds nothing else of the client's).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use odo_core::socket::{SocketEventKind, close_code};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::Message;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::{CloseFrame, Role, WebSocketContext};

use super::adapter::{Adapter, Budget, Scratch, would_block};
use super::arriving::Arriving;
use super::{Door, HeldArriving, Kill, OVER_DOOR, Out, Outbound};

/// How long a socket the door closes at shutdown has to take its close
/// frame, how long a socket whose client closed it (or went away) has to
/// take what is left to send (tungstenite's answer to its close), and how
/// long a client has to answer its object's close frame once it was
/// written. Otherwise (a limit, a client that stopped reading, a close
/// frame of its object not written yet) it has the idle timeout: a
/// client that reads again within it finds the close frame after what it
/// had not read yet.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The bytes one read takes from the connection, into a buffer on the
/// stack of the task that polls the socket: an idle socket keeps none.
const READ_SCRATCH: usize = 4096;

/// tungstenite's own read buffer (kept per socket, allocated up front) and
/// the most it takes from the scratch buffer at once: a copy in memory,
/// no system call.
const READ_BUFFER: usize = 64;

/// A message larger than this renews tungstenite's state once it came
/// whole, to let go of the buffer it grew for it.
const RENEW_AFTER_BYTES: usize = 1024;

/// The most messages read from one socket before its task lets others
/// run.
const READ_BUDGET: usize = 64;

/// The most frames handed to the connection in one write.
const WRITE_SLICES: usize = 64;

/// What a socket's connection runs over: an upgraded HTTP connection, or
/// one end of an in-process pipe (a Rust `Client`'s socket).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// tungstenite's protocol state for a socket whose messages may be
/// `max_message_bytes` long.
fn protocol_state(max_message_bytes: usize) -> WebSocketContext {
    // tungstenite allocates its read buffer up front, so each idle socket
    // keeps it: 64 bytes rather than 4 KiB (tungstenite's default) or 512
    // (a chat message in one read); it reads from the scratch buffer, so a
    // small one costs copies, not system calls (`cargo xtask bench
    // websocket`, idle). It writes only pongs and close frames, into
    // `Conn::sending`.
    let protocol = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    WebSocketContext::new(Role::Server, Some(protocol))
}

impl<S: Io> Conn<S> {
    /// The protocol state of a socket of `door` just upgraded over `io`.
    pub(super) fn new(io: S, door: &Door) -> Self {
        Conn {
            io,
            ctx: protocol_state(door.config().max_message_bytes),
            sending: VecDeque::new(),
            offset: 0,
            leftover: Bytes::new(),
            pinged: false,
            closed_by_client: None,
            own_unsent: 0,
            arriving: Arriving::default(),
            unfinished: HeldArriving::new(&door.inner.held_bytes),
            progress_ms: 0,
            closing: None,
        }
    }
}

/// One socket's connection and protocol state.
pub(super) struct Conn<S> {
    io: S,
    ctx: WebSocketContext,
    /// Frames to write, in order: the door's (shared with every socket
    /// they go to) and tungstenite's (pongs, close frames). The first may
    /// be partly written (`offset` bytes of it).
    sending: VecDeque<Out>,
    offset: usize,
    /// Bytes read from the connection that tungstenite has not taken yet
    /// when the task stopped reading to let others run (rarely any).
    leftover: Bytes,
    /// The socket was pinged for its silence and has not answered yet.
    pinged: bool,
    /// The client's close frame, once it came (boxed: an idle socket
    /// keeps 8 bytes for it, not 32).
    closed_by_client: Option<Box<(u16, String)>>,
    /// Bytes of tungstenite's own frames (pongs) waiting in `sending`: a
    /// client that pings and never reads grows them, so they are bounded
    /// like the door's frames.
    own_unsent: usize,
    /// The frames the client sent, followed beside tungstenite: the
    /// payload read of a message it has not finished (what tungstenite
    /// holds of it).
    arriving: Arriving,
    /// That payload, counted against the door's bound on the messages it
    /// holds: a client may begin a message and never finish it.
    unfinished: HeldArriving,
    /// When the client last sent any of a message's payload, on the
    /// door's clock: a message left as it is for the idle timeout (its
    /// client answering pings all the while) closes the socket.
    progress_ms: u64,
    /// The object closed the socket: what its client sends is no longer
    /// relayed.
    closing: Option<Closing>,
}

/// Where the object's close of a socket stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Its close frame waits behind what the client has not read yet,
    /// since this time on the door's clock: it has the idle timeout to
    /// read it (as a client that stops reading has).
    Queued(u64),
    /// Its close frame went out at this time: the client has
    /// [`CLOSE_GRACE`] to answer it.
    Sent(u64),
}

impl<S: Io> Conn<S> {
    /// Runs tungstenite's `f` over the connection; what it wrote joins
    /// the frames to send.
    fn protocol<R>(
        &mut self,
        cx: Option<&mut Context<'_>>,
        scratch: &mut [MaybeUninit<u8>],
        limit: usize,
        f: impl FnOnce(&mut WebSocketContext, &mut Adapter<'_, '_, S>) -> R,
    ) -> (R, Run) {
        let mut adapter = Adapter {
            io: &mut self.io,
            cx,
            leftover: &mut self.leftover,
            scratch: Scratch {
                buf: ReadBuf::uninit(scratch),
                start: 0,
            },
            written: Vec::new(),
            budget: Budget {
                arriving: &mut self.arriving,
                unfinished: &mut self.unfinished,
                progress: false,
                limit,
                over: false,
            },
        };
        let result = f(&mut self.ctx, &mut adapter);
        let Adapter {
            leftover,
            scratch,
            written,
            mut budget,
            ..
        } = adapter;
        budget.settle();
        let run = Run {
            over: budget.over,
            refused: budget.arriving.refused(),
            progress: budget.progress,
        };
        // Read but not taken (the task stopped reading to let others run):
        // kept for the next run. The scratch buffer is filled only once
        // what was left over is taken.
        if !scratch.unread().is_empty() {
            *leftover = Bytes::copy_from_slice(scratch.unread());
        }
        if !written.is_empty() {
            self.own_unsent += written.len();
            self.sending.push_back(Out::Frame {
                bytes: Bytes::from(written),
                len: 0,
            });
        }
        (result, run)
    }

    /// Serves the socket until it ends: the event its object gets.
    /// Whatever wakes it (the client, the door's queue, the door's idle
    /// sweep, the object's close awaiting its answer) is registered with
    /// `cx`'s waker.
    pub(super) fn poll_serve(
        &mut self,
        cx: &mut Context<'_>,
        door: &Door,
        id: u64,
        out: &Arc<Outbound>,
    ) -> Poll<SocketEventKind> {
        // What the door queued (registered first: a push after the take
        // wakes the task).
        out.register(cx.waker());
        if self.ctx.can_write() {
            match out.take() {
                Err(kill) => return Poll::Ready(killed(kill)),
                Ok(taken) => {
                    if self.queue(taken) {
                        // Its close frame is written once what is before
                        // it is: the client has the idle timeout to read
                        // that far.
                        let now = door.clock_ms();
                        self.closing = Some(Closing::Queued(now));
                        wake_after(out, door.config().idle_timeout);
                    }
                }
            }
        } else if let Some(kill) = out.kill_reason() {
            return Poll::Ready(killed(kill));
        }
        // What the client sent.
        let mut read = RunRead {
            closed: self.closed_by_client.take(),
            relay: self.closing.is_none(),
            messages: 0,
        };
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SCRATCH];
        let limit = door.config().door_buffer_bytes;
        let max_message_bytes = door.config().max_message_bytes;
        let (failed, run) = self.protocol(Some(&mut *cx), &mut scratch, limit, |ctx, adapter| {
            while read.messages < READ_BUDGET {
                match ctx.read(adapter) {
                    Ok(message) => {
                        read.messages += 1;
                        // A message that came whole no longer counts
                        // as arriving (before it counts as waiting).
                        adapter.budget.settle();
                        if message.len() > RENEW_AFTER_BYTES
                            && matches!(message, Message::Text(_) | Message::Binary(_))
                        {
                            // tungstenite keeps the allocation of the
                            // largest frame it read, for the socket's
                            // life. Between frames of an open socket it
                            // holds nothing else of the client's here (it
                            // was handed no byte past this frame), so it
                            // starts afresh; otherwise (a socket closing)
                            // the door counts what it keeps.
                            debug_assert!(adapter.budget.arriving.between_frames());
                            if ctx.can_read() && ctx.can_write() {
                                *ctx = protocol_state(max_message_bytes);
                            } else {
                                adapter.budget.unfinished.keep(message.len());
                            }
                        }
                        read.received(door, id, message);
                    }
                    Err(e) if would_block(&e) => return None,
                    Err(e) => return Some(e),
                }
            }
            None
        });
        self.closed_by_client = read.closed;
        let now = door.clock_ms();
        if run.refused {
            // A control frame longer than 125 bytes (or in parts):
            // tungstenite would buffer it whole before refusing it.
            out.kill(Kill {
                code: 1002,
                reason: "protocol error",
            });
            return Poll::Ready(SocketEventKind::Error {
                message: "protocol error: a control frame longer than 125 bytes or in parts".into(),
            });
        }
        if run.over {
            // Its unfinished message would pass the door's bound.
            let kill = Kill {
                code: close_code::TRY_AGAIN_LATER,
                reason: OVER_DOOR,
            };
            // The door kills it, and drops its queued messages.
            door.refuse(id, OVER_DOOR);
            return Poll::Ready(killed(kill));
        }
        if self.own_unsent > door.config().send_buffer_bytes {
            // Pongs the client does not read (it pings and never reads).
            let kill = Kill {
                code: close_code::POLICY_VIOLATION,
                reason: "the client does not read its messages",
            };
            out.kill(kill);
            return Poll::Ready(killed(kill));
        }
        // A message's bytes are heard too: a client sending a large
        // message in one frame cannot answer a ping before its end.
        if read.messages > 0 || run.progress {
            self.pinged = false;
            out.heard(now);
        }
        if let Some(e) = failed {
            return Poll::Ready(self.read_failed(e, out));
        }
        let idle_ms = door.config().idle_timeout.as_millis() as u64;
        if run.progress {
            self.progress_ms = now;
        } else if self.arriving.unfinished() > 0 && now.saturating_sub(self.progress_ms) >= idle_ms
        {
            // Begun and left as it is for the idle timeout, its client
            // answering pings (or sending pongs) all the while.
            let kill = Kill {
                code: close_code::POLICY_VIOLATION,
                reason: "a message was left unfinished",
            };
            out.kill(kill);
            return Poll::Ready(killed(kill));
        }
        if read.messages == READ_BUDGET {
            // More to read: later, after the other sockets' turns.
            cx.waker().wake_by_ref();
        }
        // What is queued for the client.
        if let Poll::Ready(Err(_)) = self.poll_write(cx, out) {
            return Poll::Ready(self.ended());
        }
        // The object closed the socket: its close frame is awaited by the
        // client (read within the idle timeout), then the client's answer
        // (within the close grace).
        match self.closing {
            Some(Closing::Queued(_)) if self.sending.is_empty() => {
                self.closing = Some(Closing::Sent(now));
                wake_after(out, CLOSE_GRACE);
            }
            Some(Closing::Queued(since)) if now.saturating_sub(since) >= idle_ms => {
                return Poll::Ready(SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: "the client did not read the close frame".into(),
                    was_clean: false,
                });
            }
            Some(Closing::Sent(since))
                if now.saturating_sub(since) >= CLOSE_GRACE.as_millis() as u64 =>
            {
                return Poll::Ready(SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: "the client did not answer the close frame".into(),
                    was_clean: false,
                });
            }
            _ => {}
        }
        // Silent for the idle timeout (the door's sweep says so): a ping,
        // then, silent as long again, the end.
        if out.take_idle_check() {
            if self.pinged {
                return Poll::Ready(SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: "the client stopped answering (half-open connection)".into(),
                    was_clean: false,
                });
            }
            self.pinged = true;
            out.heard(now);
            // Queued, it wakes the socket to be written.
            out.push(Out::ping(), usize::MAX);
        }
        Poll::Pending
    }

    /// Adds what was taken from the door's queue to what is being sent;
    /// the object's close frame goes through tungstenite (it then expects
    /// the client's answer). `true` when that close frame was among them.
    fn queue(&mut self, taken: VecDeque<Out>) -> bool {
        if taken.is_empty() {
            return false;
        }
        if self.sending.is_empty() && !taken.iter().any(|o| matches!(o, Out::Close(_))) {
            self.sending = taken;
            return false;
        }
        let mut closed = false;
        for item in taken {
            match item {
                Out::Frame { .. } => self.sending.push_back(item),
                Out::Close(frame) => {
                    closed = true;
                    let _ = self.protocol(None, &mut [], usize::MAX, |ctx, adapter| {
                        ctx.close(adapter, Some(frame))
                    });
                }
            }
        }
        closed
    }
}

/// Wakes the socket of `out` after `delay` (a timer of a socket its
/// object closed, for the steps of its close alone).
fn wake_after(out: &Arc<Outbound>, delay: Duration) {
    let out = Arc::downgrade(out);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Some(out) = out.upgrade() {
            out.wake();
        }
    });
}

/// The event of a socket the door closed.
fn killed(kill: Kill) -> SocketEventKind {
    SocketEventKind::Close {
        code: kill.code,
        reason: kill.reason.to_owned(),
        was_clean: false,
    }
}

/// What stopped or moved the reading of one run.
struct Run {
    /// The unfinished message would pass the door's bound.
    over: bool,
    /// A control frame tungstenite would refuse began.
    refused: bool,
    /// Some payload of a message was read.
    progress: bool,
}

/// What one run read from the client.
struct RunRead {
    /// The client's close frame, once it came (boxed: an idle socket
    /// keeps 8 bytes for it, not 32).
    closed: Option<Box<(u16, String)>>,
    /// Messages go to the object (not once it closed the socket).
    relay: bool,
    /// Messages and control frames read.
    messages: usize,
}

impl RunRead {
    /// Hands a message the client sent to the door; notes its close
    /// frame.
    fn received(&mut self, door: &Door, id: u64, message: Message) {
        match message {
            Message::Text(text) if self.relay => {
                if !door.auto_respond(id, text.as_str()) {
                    door.relay(
                        id,
                        SocketEventKind::Message { binary: false },
                        Bytes::from(text),
                    );
                }
            }
            Message::Binary(bytes) if self.relay => {
                door.relay(id, SocketEventKind::Message { binary: true }, bytes);
            }
            Message::Close(frame) => {
                self.closed = Some(Box::new(match frame {
                    Some(CloseFrame { code, reason }) => {
                        (u16::from(code), reason.as_str().to_owned())
                    }
                    None => (1005, String::new()),
                }));
            }
            Message::Text(_)
            | Message::Binary(_)
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Frame(_) => {}
        }
    }
}

impl<S: Io> Conn<S> {
    /// The event a read error ends the socket with; a limit or bad input
    /// also has the door close it.
    fn read_failed(&mut self, error: WsError, out: &Outbound) -> SocketEventKind {
        match error {
            // The connection ended, after a close handshake or without one
            // (a tab closed, a reset: a close the object hears as 1006).
            WsError::ConnectionClosed
            | WsError::AlreadyClosed
            | WsError::Io(_)
            | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => self.ended(),
            WsError::Capacity(e) => {
                out.kill(Kill {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: "message too big",
                });
                SocketEventKind::Close {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: e.to_string(),
                    was_clean: false,
                }
            }
            WsError::Protocol(e) => {
                out.kill(Kill {
                    code: 1002,
                    reason: "protocol error",
                });
                SocketEventKind::Error {
                    message: format!("protocol error: {e}"),
                }
            }
            WsError::Utf8(e) => {
                out.kill(Kill {
                    code: 1007,
                    reason: "text that is not UTF-8",
                });
                SocketEventKind::Error {
                    message: format!("invalid text: {e}"),
                }
            }
            e => SocketEventKind::Error {
                message: e.to_string(),
            },
        }
    }

    /// The connection ended: a clean close if the client sent its close
    /// frame, otherwise 1006.
    fn ended(&mut self) -> SocketEventKind {
        match self.closed_by_client.take().map(|closed| *closed) {
            Some((code, reason)) => SocketEventKind::Close {
                code,
                reason,
                was_clean: true,
            },
            None => SocketEventKind::Close {
                code: close_code::ABNORMAL,
                reason: "the connection ended without a close frame".into(),
                was_clean: false,
            },
        }
    }

    /// Writes what is queued, several frames per write; ready when all is
    /// written (and flushed) or the connection failed.
    pub(super) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        out: &Outbound,
    ) -> Poll<io::Result<()>> {
        if self.sending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.sending.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slot, item) in slices.iter_mut().zip(&self.sending) {
                if let Out::Frame { bytes, .. } = item {
                    let skip = if count == 0 { self.offset } else { 0 };
                    *slot = IoSlice::new(&bytes[skip..]);
                    count += 1;
                }
            }
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written, out);
        }
        // Nothing stays allocated for an idle socket.
        self.sending = VecDeque::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// `written` more bytes of the frames being sent reached the
    /// connection.
    fn advance(&mut self, mut written: usize, out: &Outbound) {
        while let Some(Out::Frame { bytes, len }) = self.sending.front() {
            let left = bytes.len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            out.written(*len);
            if *len == 0 {
                self.own_unsent = self.own_unsent.saturating_sub(bytes.len());
            }
            self.offset = 0;
            self.sending.pop_front();
        }
    }

    /// What is left to send once the socket ended: when the door closed
    /// it (`kill`), only the frame being written, then its close frame;
    /// else what is queued (tungstenite's answer to the client's close).
    pub(super) fn finish(&mut self, kill: Option<Kill>) {
        if let Some(kill) = kill {
            self.sending.truncate(usize::from(self.offset > 0));
            if self.ctx.can_write() {
                let frame = CloseFrame {
                    code: kill.code.into(),
                    reason: kill.reason.into(),
                };
                let _ = self.protocol(None, &mut [], usize::MAX, |ctx, adapter| {
                    ctx.close(adapter, Some(frame))
                });
            }
        }
        // Nothing more is read: tungstenite's buffers (an unfinished
        // message among them) go now, not when the close frame is out.
        self.ctx = protocol_state(READ_BUFFER);
        self.arriving = Arriving::default();
        self.unfinished.set(0);
        self.leftover = Bytes::new();
    }
}
