//! One accepted connection: its upgrade (TLS) and handshake, held to the
//! unauthenticated cap and to shutdown; then its requests, each a task,
//! and their answers, within the bounds past the handshake (a frame that
//! stalls, answers a peer does not read).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Message, Response, WireError};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::admission::{LogLimiter, NotAdmitted, Pending};
use crate::framing::{
    CloseReason, EncodeError, FrameReader, FrameSink, encode_frame, handshake_reader,
    holds_whole_frame, lift_bound, with_encoded,
};
use crate::handshake::{MAX_HANDSHAKE_FRAME_LEN, judge_first_frame, refused_frame, welcome_frame};
use crate::stream::{Stream, WriteHalf};

use super::{Handler, ServerConfig};

/// The server's rate-limited logs of connections it drops.
pub(super) struct DropLogs {
    /// Connections dropped before their handshake completed.
    pub(super) strangers: LogLimiter,
    /// Peers turned away at the authenticated cap.
    pub(super) full: LogLimiter,
}

/// One accepted connection.
pub(super) struct Connection<H> {
    pub(super) config: Arc<ServerConfig>,
    pub(super) handler: Arc<H>,
    /// Fires at shutdown: take no new requests, finish those in flight.
    pub(super) draining: CancellationToken,
    pub(super) peer: String,
    pub(super) logs: Arc<DropLogs>,
}

impl<H: Handler> Connection<H> {
    /// Upgrades a TCP connection (TLS) if the server is set to, within the
    /// handshake timeout, then runs it.
    pub(super) async fn upgrade_and_run(self, stream: Stream, pending: Pending) {
        let stream = match (self.config.upgrade.clone(), stream) {
            (Some(upgrade), Stream::Tcp(tcp)) => {
                // Held to the unauthenticated cap and to shutdown from the
                // first byte: a stranger stalled in its TLS handshake once
                // ignored both until its timeout (5,000 of them took the
                // server to 4,131 descriptors).
                let upgrade =
                    tokio::time::timeout(self.config.handshake_timeout, upgrade.accept(tcp));
                let Some(upgraded) = self
                    .unless_dropped(pending.evicted(), "upgrade", upgrade)
                    .await
                else {
                    return;
                };
                match upgraded {
                    Ok(Ok(io)) => match crate::upgrade::bridge(io) {
                        Ok(stream) => stream,
                        Err(e) => {
                            return self
                                .stranger_dropped("cannot bridge the upgraded connection", e);
                        }
                    },
                    Ok(Err(e)) => {
                        return self.stranger_dropped("the connection's upgrade (TLS) failed", e);
                    }
                    Err(_) => {
                        return self.stranger_dropped(
                            "the connection's upgrade (TLS) timed out",
                            format_args!("after {:?}", self.config.handshake_timeout),
                        );
                    }
                }
            }
            (_, stream) => stream,
        };
        self.run(stream, pending).await;
    }

    async fn run(self, stream: Stream, pending: Pending) {
        let (read, write) = stream.into_split();
        // Until the handshake is done, a frame is at most a handshake's size
        // and the buffer about as big.
        let mut frames = handshake_reader(read);
        let evicted = pending.evicted();
        let handshake = self.handshake(&mut frames, &write, pending);
        let Some(established) = self.unless_dropped(evicted, "handshake", handshake).await else {
            return;
        };
        let Some((client, _permit)) = established else {
            return;
        };
        lift_bound(&mut frames, self.config.max_frame_len);
        debug!(peer = %self.peer, client = %client, "connection established");

        let sink = Arc::new(FrameSink::new(write));
        // However this task ends (even aborted), the socket is let go.
        let _close = CloseOnDrop(sink.clone());
        let write_failed = CancellationToken::new();
        let writer = {
            let sink = sink.clone();
            let write_failed = write_failed.clone();
            let peer = self.peer.clone();
            tokio::spawn(async move {
                if let Err(reason) = sink.run().await {
                    debug!(%peer, %reason, "write failed");
                    write_failed.cancel();
                }
            })
        };

        let mut requests = JoinSet::new();
        let mut in_flight: HashMap<u64, AbortHandle> = HashMap::new();
        let mut draining = false;
        // A frame begun must go on arriving: checked once per stall
        // timeout, by frames read and bytes buffered since the last check
        // (a peer that stopped 4 KiB short of a 16 MiB frame held those
        // 16 MiB for good).
        let mut stall_check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.frame_stall_timeout,
            self.config.frame_stall_timeout,
        );
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut frames_read, mut checked) = (0_u64, None);
        // Pinned once: a fresh `cancelled()` future per frame would register
        // with the token again each time.
        let mut shutdown = std::pin::pin!(self.draining.cancelled());
        let mut write_failed = std::pin::pin!(write_failed.cancelled());
        // `None`: drained after a shutdown; `Some`: the connection is gone.
        let closed = loop {
            if draining && requests.is_empty() {
                break None;
            }
            let backlogged = sink.unsent() > self.config.max_unsent_bytes;
            // Requests past the bound wait in the socket until one ends.
            let full = requests.len() >= self.config.max_requests_in_flight;
            let held = backlogged || full;
            if held {
                // Answers held back while a burst of requests was read
                // would never go out: only reading the next frame uncorks
                // (a review found every call of such a burst lost).
                sink.uncork();
            }
            tokio::select! {
                biased;
                Some(done) = requests.join_next(), if !requests.is_empty() => {
                    // Aborted (cancelled) tasks were removed when cancelled.
                    if let Ok(id) = done {
                        in_flight.remove(&id);
                    }
                }
                _ = &mut shutdown, if !draining => {
                    debug!(peer = %self.peer, in_flight = requests.len(), "draining connection");
                    draining = true;
                }
                _ = &mut write_failed => break Some(CloseReason::Io {
                    kind: io::ErrorKind::BrokenPipe,
                    message: "writing to the peer failed".into(),
                }),
                _ = stall_check.tick() => {
                    // Not while this side holds the reading back (an honest
                    // peer slow to read its answers, or with many requests
                    // running, is not a stalled one): the next check
                    // starts over.
                    let now = (!held).then(|| (frames_read, frames.read_buffer().len()));
                    if let Some((_, buffered)) = now
                        && buffered > 0
                        && now == checked
                    {
                        break Some(CloseReason::Protocol {
                            reason: format!(
                                "a frame stalled: {buffered} bytes of it and nothing more for {:?}",
                                self.config.frame_stall_timeout
                            ),
                        });
                    }
                    checked = now;
                }
                // Answers the peer has not read past the bound: its next
                // requests wait in the socket until it reads (they were
                // taken, and their answers queued, without end).
                () = sink.room(self.config.max_unsent_bytes), if backlogged => {}
                next = frames.next(), if !held => {
                    frames_read += 1;
                    let bytes = match next {
                        None => break Some(CloseReason::PeerClosed),
                        Some(Err(e)) => break Some(CloseReason::from_read_error(e, self.config.max_frame_len)),
                        Some(Ok(bytes)) => bytes.freeze(),
                    };
                    // While more whole requests wait in the read buffer, hold
                    // the answers back and write them together.
                    sink.cork();
                    let requests = if draining { None } else { Some(&mut requests) };
                    let handled = self.on_frame(bytes, requests, &mut in_flight, &sink);
                    if !holds_whole_frame(frames.read_buffer()) {
                        sink.uncork();
                    }
                    if let Err(reason) = handled {
                        break Some(reason);
                    }
                }
            }
        };
        match closed {
            None => {
                // Every response is sent or queued: let the writer flush
                // them, then close the connection.
                sink.finish();
                let _ = writer.await;
                debug!(peer = %self.peer, "connection drained");
            }
            Some(reason) => {
                match &reason {
                    CloseReason::PeerClosed => {
                        debug!(peer = %self.peer, "connection closed by the peer")
                    }
                    reason => warn!(peer = %self.peer, %reason, "dropping connection"),
                }
                if !requests.is_empty() {
                    debug!(peer = %self.peer, requests = requests.len(), "aborting the requests of a closed connection");
                }
                sink.close(reason);
                requests.shutdown().await;
            }
        }
    }

    /// Runs the server side of the handshake; returns the client's name and
    /// its authenticated place, or `None` when the connection was dropped
    /// (already logged).
    async fn handshake(
        &self,
        frames: &mut FrameReader,
        write: &WriteHalf,
        pending: Pending,
    ) -> Option<(String, OwnedSemaphorePermit)> {
        let deadline = self.config.handshake_timeout;
        let first = match tokio::time::timeout(deadline, frames.next()).await {
            Err(_) => {
                self.stranger_dropped("no handshake in time", format_args!("{deadline:?}"));
                return None;
            }
            Ok(None) => {
                debug!(peer = %self.peer, "dropping connection: closed before its handshake");
                return None;
            }
            Ok(Some(Err(e))) => {
                let reason = CloseReason::from_handshake_read_error(e);
                self.stranger_dropped("bad handshake frame", reason);
                return None;
            }
            Ok(Some(Ok(bytes))) => bytes.freeze(),
        };
        let hello = match judge_first_frame(first, &self.config.token) {
            Ok(hello) => hello,
            Err((refused, detail)) => {
                // Tell the client why, if it reads; then close.
                let _ =
                    tokio::time::timeout(deadline, answer(write, &refused_frame(refused))).await;
                self.stranger_dropped("handshake refused", detail);
                return None;
            }
        };
        let permit = match pending.authenticate() {
            Ok(permit) => permit,
            Err(NotAdmitted::Evicted) => {
                self.stranger_dropped(
                    "too many unauthenticated connections, closing the oldest",
                    format_args!("the limit is {}", self.config.max_unauthenticated),
                );
                return None;
            }
            Err(NotAdmitted::Full) => {
                let limit = self.config.max_connections;
                match self.logs.full.allow() {
                    Some(unlogged) => warn!(
                        peer = %self.peer, client = %hello.peer, limit, unlogged,
                        "dropping connection: connection limit reached"
                    ),
                    None => debug!(
                        peer = %self.peer, client = %hello.peer, limit,
                        "dropping connection: connection limit reached"
                    ),
                }
                return None;
            }
        };
        let welcome = welcome_frame(&self.config.peer_name);
        match tokio::time::timeout(deadline, answer(write, &welcome)).await {
            Ok(Ok(())) => Some((hello.peer, permit)),
            Ok(Err(e)) => {
                debug!(peer = %self.peer, error = %e, "dropping connection: cannot answer its handshake");
                None
            }
            Err(_) => {
                self.stranger_dropped(
                    "it does not read its handshake answer",
                    format_args!("{deadline:?}"),
                );
                None
            }
        }
    }

    /// Runs `work`, a `step` of a connection not yet authenticated, unless
    /// the server shuts down or `evicted` fires first (the unauthenticated
    /// cap is full and this connection is the oldest): `None` then, logged.
    async fn unless_dropped<T>(
        &self,
        evicted: CancellationToken,
        step: &str,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.draining.cancelled() => {
                debug!(peer = %self.peer, "dropping connection: shutting down during its {step}");
                None
            }
            _ = evicted.cancelled() => {
                self.stranger_dropped(
                    "too many unauthenticated connections, closing the oldest",
                    format_args!("the limit is {}", self.config.max_unauthenticated),
                );
                None
            }
            done = work => Some(done),
        }
    }

    /// Logs that a connection is dropped before its handshake completed: a
    /// warning at most once per [`DROP_LOG_INTERVAL`] for the whole server
    /// (saying how many went unlogged since the last one), a debug line
    /// otherwise.
    fn stranger_dropped(&self, what: &str, reason: impl fmt::Display) {
        match self.logs.strangers.allow() {
            Some(unlogged) => warn!(
                peer = %self.peer, %reason, unlogged,
                "dropping connection: {what}"
            ),
            None => debug!(peer = %self.peer, %reason, "dropping connection: {what}"),
        }
    }

    /// Acts on one frame from an established client. While draining
    /// (`requests` is `None`) new requests are not started: their callers
    /// learn the outcome is unknown when the connection closes. An error
    /// closes the connection.
    ///
    /// A request's handler is first polled right here: one that answers
    /// without waiting costs no task. One that waits continues in its own
    /// task, which a cancel frame aborts.
    fn on_frame(
        &self,
        bytes: Bytes,
        requests: Option<&mut JoinSet<u64>>,
        in_flight: &mut HashMap<u64, AbortHandle>,
        sink: &Arc<FrameSink>,
    ) -> Result<(), CloseReason> {
        let frame = codec::decode(bytes).map_err(|e| CloseReason::Protocol {
            reason: format!("malformed frame: {e}"),
        })?;
        match frame.message {
            Message::Request(request) => {
                let id = frame.request_id;
                let Some(requests) = requests else {
                    debug!(peer = %self.peer, request_id = id, "not starting a request: shutting down");
                    return Ok(());
                };
                if in_flight.contains_key(&id) {
                    return Err(CloseReason::Protocol {
                        reason: format!("request id {id} is already in flight"),
                    });
                }
                let handler = self.handler.clone();
                let sink = sink.clone();
                let max_frame_len = self.config.max_frame_len;
                let body = frame.body;
                let mut handling = Box::pin(async move {
                    let answer = AssertUnwindSafe(handler.handle(request, body))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            error_response(WireError::Internal {
                                message: "the request handler panicked".into(),
                            })
                        });
                    send_response(&sink, id, answer, max_frame_len);
                    id
                });
                // The spawned task polls again with its own waker, so the
                // no-op waker of this first poll loses no wake-up.
                if handling.as_mut().now_or_never().is_none() {
                    let task = requests.spawn(handling);
                    in_flight.insert(id, task);
                }
                Ok(())
            }
            Message::Cancel => {
                // Unknown ids are calls that finished already.
                if let Some(task) = in_flight.remove(&frame.request_id) {
                    task.abort();
                }
                Ok(())
            }
            other => Err(CloseReason::Protocol {
                reason: format!("unexpected {:?} frame from the client", other.kind()),
            }),
        }
    }
}

/// Writes a handshake answer.
async fn answer(write: &WriteHalf, frame: &Frame) -> io::Result<()> {
    let bytes = encode_frame(frame, MAX_HANDSHAKE_FRAME_LEN)
        .map_err(|e| io::Error::other(e.to_string()))?;
    write.write_all(&bytes).await
}

/// Closes a connection's sink when its task ends, however it ends.
struct CloseOnDrop(Arc<FrameSink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(CloseReason::Local);
    }
}

fn error_response(error: WireError) -> (Response, Bytes) {
    (Response::Error(error), Bytes::new())
}

/// Sends a response; one that cannot be encoded becomes an error response
/// the caller can read. A failed send means the connection is closing,
/// which the read loop notices.
fn send_response(
    sink: &FrameSink,
    request_id: u64,
    (response, body): (Response, Bytes),
    max_frame_len: usize,
) {
    let frame = Frame {
        request_id,
        message: Message::Response(response),
        body,
    };
    let Err(e) = with_encoded(&frame, max_frame_len, |bytes| sink.send(bytes)) else {
        return;
    };
    let message = match e {
        EncodeError::TooLarge { len, max } => {
            format!("the response of {len} bytes exceeds the {max}-byte frame bound")
        }
        EncodeError::Codec(e) => format!("cannot encode the response: {e}"),
    };
    warn!(request_id, %message, "answering with an error instead");
    let frame = Frame {
        request_id,
        message: Message::Response(Response::Error(WireError::Internal { message })),
        body: Bytes::new(),
    };
    // A short error message fits any bound that holds a frame header plus a
    // little; if even that fails, the caller's deadline ends the call.
    let _ = with_encoded(&frame, max_frame_len, |bytes| sink.send(bytes));
}
