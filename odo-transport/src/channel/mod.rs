//! The client side: a multiplexed request/response channel over one
//! connection.
//!
//! One writer task batches queued frames into single writes; one reader
//! task matches responses to calls by request id; one watcher task fails
//! calls whose deadline passed. A call spawns nothing and arms no timer of
//! its own: it encodes its frame, registers a slot (with its deadline),
//! queues the frame and waits.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use odo_core::Frame;
use odo_core::codec::{self, CodecError};
use odo_core::wire::{Message, Request, Response};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::endpoint::Endpoint;
use crate::framing::{
    CloseReason, EncodeError, FrameReader, FrameSink, holds_whole_frame, with_encoded,
};
use crate::handshake::HANDSHAKE_ID;

mod connect;

use connect::establish;
pub(crate) use connect::set_user_timeout;
pub use connect::{ClientConfig, ConnectError, ConnectStage};

/// Why a [`Channel::call`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The connection closed before the request was written: the server
    /// never saw it, so it is safe to retry (on another channel).
    #[error("request to {endpoint} not sent: {reason} (safe to retry)")]
    NotSent {
        /// The channel's endpoint.
        endpoint: Endpoint,
        /// Why the connection closed.
        reason: CloseReason,
    },
    /// The request was written, then the connection closed before its
    /// response arrived: the server may or may not have handled it.
    #[error("request to {endpoint} lost: {reason} after it was written (outcome unknown)")]
    Lost {
        /// The channel's endpoint.
        endpoint: Endpoint,
        /// Why the connection closed.
        reason: CloseReason,
    },
    /// No response within the call's deadline. The request had been handed
    /// to the connection, so a cancel frame followed it to tell the server
    /// to drop the call.
    #[error("request to {endpoint} exceeded its {deadline:?} deadline (written: {written})")]
    DeadlineExceeded {
        /// The channel's endpoint.
        endpoint: Endpoint,
        /// The deadline the call had.
        deadline: Duration,
        /// Whether the request may have reached the server (always true
        /// for a request handed to the connection, which is every request
        /// this error is returned for today); if false, it never will.
        written: bool,
    },
    /// The channel was already closed when the call was made; nothing was
    /// sent. Replace the channel.
    #[error("channel to {endpoint} is closed: {reason}")]
    Closed {
        /// The channel's endpoint.
        endpoint: Endpoint,
        /// Why it closed.
        reason: CloseReason,
    },
    /// The peer broke the protocol (a malformed or unexpected frame) after
    /// the request was written; the connection was dropped and the outcome
    /// is unknown.
    #[error("{endpoint} broke the protocol: {reason} (outcome unknown)")]
    Protocol {
        /// The channel's endpoint.
        endpoint: Endpoint,
        /// What the peer did.
        reason: String,
    },
    /// The request frame would exceed the frame bound; nothing was sent.
    #[error("request of {len} bytes exceeds the {max}-byte frame bound")]
    TooLarge {
        /// The encoded frame's size.
        len: usize,
        /// The configured bound.
        max: usize,
    },
    /// The request could not be encoded; nothing was sent.
    #[error("cannot encode request: {0}")]
    Encode(#[from] CodecError),
}

impl CallError {
    /// Whether the request certainly never reached the server, so sending it
    /// again (on a live channel) cannot run it twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::NotSent { .. } | CallError::Closed { .. } => true,
            CallError::DeadlineExceeded { written, .. } => !written,
            CallError::Lost { .. }
            | CallError::Protocol { .. }
            | CallError::TooLarge { .. }
            | CallError::Encode(_) => false,
        }
    }

    /// Whether the request may have been written to the server (its outcome
    /// is then unknown unless a response arrived).
    pub fn was_written(&self) -> bool {
        match self {
            CallError::Lost { .. } | CallError::Protocol { .. } => true,
            CallError::DeadlineExceeded { written, .. } => *written,
            CallError::NotSent { .. }
            | CallError::Closed { .. }
            | CallError::TooLarge { .. }
            | CallError::Encode(_) => false,
        }
    }
}

type CallResult = Result<(Response, Bytes), CallError>;

/// A call waiting for its response.
struct Slot {
    tx: oneshot::Sender<CallResult>,
    /// The stream offset just past the request's frame: the request was
    /// written once the socket took that many bytes.
    end: u64,
    /// When the call fails with [`CallError::DeadlineExceeded`] (`None`: a
    /// deadline too far away to represent, so never).
    expires: Option<Instant>,
    /// The deadline the caller gave, for the error.
    deadline: Duration,
}

/// The longest deadline a call can have; [`Channel::call`] treats a longer
/// one as no deadline. (About a century: far enough to mean "never", near
/// enough that the runtime's timer arithmetic cannot overflow.)
pub const MAX_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Request ids are sequential, so a multiplicative hash spreads them well
/// and costs far less than the default SipHash.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

struct Pending {
    calls: IdMap<Slot>,
    /// Every waiting call's expiry, earliest first. One ordered set kept
    /// under the lock the call map needs anyway costs far less than a
    /// runtime timer armed and disarmed per call.
    expiries: BTreeSet<(Instant, u64)>,
    /// When the watcher task wakes next (`None`: only when notified).
    watching: Option<Instant>,
    /// Set once, when the connection closes; no slot is added after.
    closed: Option<CloseReason>,
}

impl Pending {
    /// Removes a call's slot (and its expiry); whoever removes it answers
    /// the call.
    fn take(&mut self, id: u64) -> Option<Slot> {
        let slot = self.calls.remove(&id)?;
        if let Some(at) = slot.expires {
            self.expiries.remove(&(at, id));
        }
        Some(slot)
    }
}

/// State shared by the channel handles and its three tasks (writer,
/// reader, deadline watcher).
struct Shared {
    endpoint: Endpoint,
    server_peer: String,
    max_frame_len: usize,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    /// Fires when the connection is gone; stops the tasks.
    closed: CancellationToken,
    sink: FrameSink,
    /// Wakes the watcher task when a call expires before it would wake.
    expiry_moved: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // No critical section can panic half-way (they are map and set
        // operations on plain data: a slot and its expiry go in and out
        // together), so a poisoned lock is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection once: fails every waiting call with what
    /// happened to its request, and stops the tasks.
    fn close(&self, reason: CloseReason) {
        // First stop the writing: from here on nothing more reaches the
        // socket, so a request whose frame the socket had not wholly taken
        // was never seen by the server.
        self.sink.close(reason.clone());
        let written = self.sink.written();
        let calls = {
            let mut pending = self.lock();
            if pending.closed.is_some() {
                return;
            }
            pending.closed = Some(reason.clone());
            pending.expiries.clear();
            std::mem::take(&mut pending.calls)
        };
        self.closed.cancel();
        if !calls.is_empty() {
            debug!(endpoint = %self.endpoint, %reason, calls = calls.len(), "channel closed with calls in flight");
        }
        for (_, slot) in calls {
            let error = match (&reason, slot.end <= written) {
                (_, false) => CallError::NotSent {
                    endpoint: self.endpoint.clone(),
                    reason: reason.clone(),
                },
                (CloseReason::Protocol { reason }, true) => CallError::Protocol {
                    endpoint: self.endpoint.clone(),
                    reason: reason.clone(),
                },
                (_, true) => CallError::Lost {
                    endpoint: self.endpoint.clone(),
                    reason: reason.clone(),
                },
            };
            let _ = slot.tx.send(Err(error));
        }
    }

    /// Forgets a call whose caller gave up. Returns whether it was still
    /// waiting.
    fn forget(&self, id: u64) -> bool {
        self.lock().take(id).is_some()
    }

    /// Tells the server to drop a call it may be handling.
    fn send_cancel(&self, id: u64) {
        self.send_cancels(std::iter::once(id));
    }

    /// Tells the server to drop these calls, in as few writes as the socket
    /// allows.
    fn send_cancels(&self, ids: impl IntoIterator<Item = u64>) {
        let mut flush = false;
        for id in ids {
            let frame = Frame {
                request_id: id,
                message: Message::Cancel,
                body: Bytes::new(),
            };
            // Deferred: queued now, written together below. A failed send
            // means the connection is gone, and the calls with it.
            let sent = with_encoded(&frame, self.max_frame_len, |bytes| {
                self.sink.send_with(bytes, |_| Ok::<_, CloseReason>(true))
            });
            if let Ok(Ok(sent)) = sent {
                flush |= sent.flush;
            }
        }
        if flush {
            self.sink.flush();
        }
    }
}

/// What the handles share. Dropping the last handle lets the writer flush
/// what is queued (such as cancel frames) and then closes the connection.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.sink.finish();
    }
}

/// A multiplexed client connection: many calls in flight at once, each
/// matched to its response by request id.
///
/// Cloning is cheap (an `Arc`); every clone uses the same connection, which
/// closes when the last clone is dropped or [`Channel::close`] is called.
/// A channel never reconnects: when [`Channel::closed`] resolves, replace
/// it.
#[derive(Clone)]
pub struct Channel {
    handle: Arc<Handle>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("endpoint", &self.handle.shared.endpoint)
            .field("server", &self.handle.shared.server_peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Channel {
    /// Connects to `endpoint` and runs the handshake. Resolves once the
    /// server has welcomed this client.
    pub async fn connect(
        endpoint: &Endpoint,
        config: ClientConfig,
    ) -> Result<Channel, ConnectError> {
        let (frames, write, server_peer) = establish(endpoint, &config).await?;

        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            server_peer,
            max_frame_len: config.max_frame_len,
            next_id: AtomicU64::new(HANDSHAKE_ID + 1),
            pending: Mutex::new(Pending {
                calls: IdMap::default(),
                expiries: BTreeSet::new(),
                watching: None,
                closed: None,
            }),
            closed: CancellationToken::new(),
            sink: FrameSink::new(write),
            expiry_moved: Notify::new(),
        });
        let writer_shared = shared.clone();
        tokio::spawn(async move {
            let shared = writer_shared;
            let reason = match shared.sink.run().await {
                Ok(()) => CloseReason::Local,
                Err(reason) => {
                    debug!(endpoint = %shared.endpoint, %reason, "channel write failed");
                    reason
                }
            };
            shared.close(reason);
        });
        tokio::spawn(read_loop(shared.clone(), frames));
        tokio::spawn(watch_deadlines(ClosesOnDrop(shared.clone())));
        Ok(Channel {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Sends `request` with `body` and waits for the response, at most
    /// `deadline` ([`CallError::DeadlineExceeded`] after that). A deadline
    /// of more than [`MAX_DEADLINE`] (such as `Duration::MAX`) means none.
    ///
    /// Dropping the returned future cancels the call: its slot is freed and,
    /// if the request was already written, a cancel frame tells the server
    /// to drop its handler.
    pub async fn call(&self, request: Request, body: Bytes, deadline: Duration) -> CallResult {
        let shared = &*self.handle.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame {
            request_id: id,
            message: Message::Request(request),
            body,
        };
        let (tx, rx) = oneshot::channel();
        let expires = if deadline <= MAX_DEADLINE {
            Instant::now().checked_add(deadline)
        } else {
            None
        };
        let mut wake_watcher = false;
        // The slot is registered while the frame is queued, before any of it
        // can reach the server (so before a response can come back), and in
        // order with `close` (which stops the sink first).
        let sent = with_encoded(&frame, shared.max_frame_len, |bytes| {
            shared.sink.send_with(bytes, |end| {
                let mut pending = shared.lock();
                if let Some(reason) = &pending.closed {
                    return Err(reason.clone());
                }
                // Alone, write now. With other calls in flight, their
                // callers are likely ready to send too (woken by the same
                // burst of responses): defer, so one write carries them all.
                let defer = !pending.calls.is_empty();
                pending.calls.insert(
                    id,
                    Slot {
                        tx,
                        end,
                        expires,
                        deadline,
                    },
                );
                if let Some(at) = expires {
                    pending.expiries.insert((at, id));
                    // Calls mostly expire in the order they are made, so
                    // the watcher rarely needs waking early.
                    wake_watcher = pending.watching.is_none_or(|watching| at < watching);
                }
                Ok(defer)
            })
        })
        .map_err(|e| match e {
            EncodeError::Codec(e) => CallError::Encode(e),
            EncodeError::TooLarge { len, max } => CallError::TooLarge { len, max },
        })?;
        drop(frame);
        if wake_watcher {
            shared.expiry_moved.notify_one();
        }
        let sent = sent.map_err(|reason| CallError::Closed {
            endpoint: shared.endpoint.clone(),
            reason: reason.unwrap_or(CloseReason::Local),
        })?;
        let mut guard = CallGuard {
            handle: &self.handle,
            id,
            armed: true,
        };
        if sent.flush {
            // Let the other ready callers queue their frames, then write
            // them all at once. (Dropped meanwhile, the guard's cancel frame
            // flushes the queue instead.)
            tokio::task::yield_now().await;
            shared.sink.flush();
        }
        // The reader answers the call, or the watcher fails it once its
        // deadline passed, or `close` fails it with the connection.
        let answer = rx.await;
        guard.armed = false;
        answer.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> CallError {
        let shared = &self.handle.shared;
        CallError::Closed {
            endpoint: shared.endpoint.clone(),
            reason: shared.lock().closed.clone().unwrap_or(CloseReason::Local),
        }
    }

    /// Whether the connection is gone. A closed channel never reopens.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.closed.is_cancelled()
    }

    /// Resolves when the connection is gone, for pools that replace dead
    /// channels.
    pub async fn closed(&self) {
        self.handle.shared.closed.cancelled().await
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.handle.shared.lock().closed.clone()
    }

    /// Closes the connection now, for every clone. Calls in flight fail
    /// with [`CallError::Lost`] (or [`CallError::NotSent`] if not yet
    /// written).
    pub fn close(&self) {
        self.handle.shared.close(CloseReason::Local);
    }

    /// The endpoint this channel is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.handle.shared.endpoint
    }

    /// The server's name from its handshake answer.
    pub fn server_peer(&self) -> &str {
        &self.handle.shared.server_peer
    }

    /// How many calls are waiting for a response.
    pub fn calls_in_flight(&self) -> usize {
        self.handle.shared.lock().calls.len()
    }
}

/// Cancels a call whose future is dropped before it finished.
struct CallGuard<'a> {
    handle: &'a Handle,
    id: u64,
    armed: bool,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.handle.shared.forget(self.id) {
            self.handle.shared.send_cancel(self.id);
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut frames: FrameReader) {
    // Pinned once: a fresh `cancelled()` future per frame would register
    // with the token again each time.
    let closed = shared.closed.clone();
    let mut closed = std::pin::pin!(closed.cancelled());
    // Responses already read, matched to their calls under one lock.
    let mut answers: Vec<(u64, Response, Bytes)> = Vec::new();
    let reason = 'read: loop {
        let mut next = tokio::select! {
            biased;
            _ = &mut closed => return,
            next = frames.next() => Some(next),
        };
        // Take every whole frame already buffered without waiting.
        let mut failure = None;
        while let Some(item) = next {
            let bytes = match item {
                None => {
                    failure = Some(CloseReason::PeerClosed);
                    break;
                }
                Some(Err(e)) => {
                    failure = Some(CloseReason::from_read_error(e, shared.max_frame_len));
                    break;
                }
                Some(Ok(bytes)) => bytes.freeze(),
            };
            match codec::decode(bytes) {
                Ok(Frame {
                    request_id,
                    message: Message::Response(response),
                    body,
                }) => answers.push((request_id, response, body)),
                Ok(frame) => {
                    failure = Some(CloseReason::Protocol {
                        reason: format!(
                            "unexpected {:?} frame from the server",
                            frame.message.kind()
                        ),
                    });
                    break;
                }
                Err(e) => {
                    failure = Some(CloseReason::Protocol {
                        reason: format!("malformed frame: {e}"),
                    });
                    break;
                }
            }
            next = if holds_whole_frame(frames.read_buffer()) {
                frames.next().now_or_never()
            } else {
                None
            };
        }
        deliver(&shared, &mut answers);
        if let Some(reason) = failure {
            break 'read reason;
        }
    };
    match &reason {
        // A server that ends (a worker replaced, stopped or killed; its
        // supervisor says so) closes or resets its connections: no news
        // here, and it came at every worker replacement and every stop.
        CloseReason::PeerClosed
        | CloseReason::Io {
            kind: std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe,
            ..
        } => debug!(endpoint = %shared.endpoint, reason = %reason, "the server ended the channel"),
        other => warn!(endpoint = %shared.endpoint, reason = %other, "dropping channel"),
    }
    shared.close(reason);
}

/// Hands responses to their callers, taking the lock once.
fn deliver(shared: &Shared, answers: &mut Vec<(u64, Response, Bytes)>) {
    if answers.is_empty() {
        return;
    }
    let mut slots = Vec::with_capacity(answers.len());
    {
        let mut pending = shared.lock();
        for (id, response, body) in answers.drain(..) {
            // No slot: the caller gave up (deadline or drop) already.
            if let Some(slot) = pending.take(id) {
                slots.push((slot, response, body));
            }
        }
    }
    for (slot, response, body) in slots {
        let _ = slot.tx.send(Ok((response, body)));
    }
}

/// The watcher task: fails each call whose deadline passed (and tells the
/// server to drop it), sleeping until the earliest deadline in between.
///
/// Deadlines are this task's alone, so it owns a [`ClosesOnDrop`]: should it
/// end any other way than by the channel closing (a panic, or the runtime
/// that spawned it shutting down, even before it first ran), the channel
/// closes and waiting calls fail instead of hanging.
async fn watch_deadlines(guard: ClosesOnDrop) {
    let shared = &guard.0;
    let closed = shared.closed.clone();
    let mut closed = std::pin::pin!(closed.cancelled());
    loop {
        let mut expired = Vec::new();
        let next = {
            let mut pending = shared.lock();
            if pending.closed.is_some() {
                return;
            }
            let now = Instant::now();
            while let Some(&(at, id)) = pending.expiries.first() {
                if at > now {
                    break;
                }
                pending.expiries.pop_first();
                if let Some(slot) = pending.calls.remove(&id) {
                    expired.push((id, slot));
                }
            }
            let next = pending.expiries.first().map(|&(at, _)| at);
            pending.watching = next;
            next
        };
        // Callers first, then the server: each of these requests was handed
        // to the connection, so it is on its way or arrived, and a cancel
        // frame tells the server to drop it.
        let mut cancels = Vec::with_capacity(expired.len());
        for (id, slot) in expired {
            let _ = slot.tx.send(Err(CallError::DeadlineExceeded {
                endpoint: shared.endpoint.clone(),
                deadline: slot.deadline,
                written: true,
            }));
            cancels.push(id);
        }
        shared.send_cancels(cancels);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut closed => return,
            _ = shared.expiry_moved.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Closes the channel when dropped (a no-op if it is closed already).
struct ClosesOnDrop(Arc<Shared>);

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        self.0.close(CloseReason::Local);
    }
}
