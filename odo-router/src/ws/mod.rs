//! WebSockets at the front door: a client's socket ends here, never at a
//! worker, so it outlives its object's eviction and its worker.
//!
//! The [`Door`] terminates each socket (tungstenite's protocol), keeps
//! what the object gave it (tags, attachment, the auto-response pair),
//! relays the socket's messages, closes and errors to the object as events
//! through the [`ObjectService`] (one at a time per object, in arrival
//! order: `pump.rs`), and applies the outputs the object's turns hand back
//! ([`Door::apply`]). Every buffer is bounded: a socket's send queue (a
//! client that stops reading is closed with 1008), an object's queue of
//! undelivered events (overflow closes the socket with 1013), and all
//! the messages the door holds, those still arriving included.
//!
//! - `upgrade.rs`: an upgrade request, forwarded to the object, which
//!   accepts it (a `101` with its tags) or answers otherwise.
//! - `conn.rs`: one socket's connection, read and written; `adapter.rs`:
//!   tungstenite's view of it; `arriving.rs`: the client's frames,
//!   followed beside tungstenite to count a message still arriving.
//! - `served.rs`: when a connection runs: only when something wakes it
//!   (its stream, its queue, the door's idle sweep), so an idle socket has
//!   no task and no timer.
//! - `outputs.rs`: what workers send the door: the outputs of objects'
//!   turns, applied in arrival order, and requests for its records.
//! - `parts.rs`: an object's message larger than one push, put together
//!   from its parts; one cut off closes its sockets (1012).
//! - `pump.rs`: delivering an object's events, and what a failure means
//!   for the socket whose event it was.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use odo_core::socket::{SocketEventKind, SocketRecord, close_code};
use odo_core::{ObjectAddress, ObjectId};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::service::ObjectService;

mod adapter;
mod arriving;
mod conn;
mod outbound;
mod outputs;
mod parts;
mod pump;
mod served;
mod upgrade;

use outbound::{Out, Outbound};

pub(crate) use upgrade::{Upgrade, is_upgrade};

/// A WebSocket a Rust program opened to an object with
/// [`ClientStub::websocket`](crate::ClientStub::websocket): tungstenite's
/// stream over an in-process pipe to the [`Door`], which holds the socket
/// like any client's.
pub type ClientWebSocket = tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>;

/// Limits and timings of the front door's WebSockets. `Default` gives the
/// documented defaults.
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// The largest message a client may send, in bytes; larger closes the
    /// socket with 1009. Default 32 MiB (as Cloudflare).
    pub max_message_bytes: usize,
    /// The most WebSockets open at once (their own cap: the HTTP
    /// connection cap does not count upgraded sockets). An upgrade over it
    /// is answered 503. Default 100,000.
    pub max_sockets: usize,
    /// The bytes held for one socket at most, queued or taken by its
    /// writer but not yet handed to the connection (besides one message
    /// of any size): a client that stops reading is closed with 1008 once
    /// they would grow past it, so it costs the door at most this much.
    /// Default 1 MiB.
    pub send_buffer_bytes: usize,
    /// The events of one object waiting for delivery at most (while its
    /// worker is being replaced, say); a message beyond closes its socket
    /// with 1013. Default 1,024.
    pub object_buffer_events: usize,
    /// The bytes of one object's messages waiting for delivery at most
    /// (one message always fits an empty queue); a message beyond closes
    /// its socket with 1013. Without it, the count alone let one object's
    /// queue hold 1,024 messages of 32 MiB. Default 64 MiB.
    pub object_buffer_bytes: usize,
    /// The bytes of the messages the door holds for all its objects
    /// together at most: queued, on their way to their object (held
    /// until it answers, since a message may be sent again), or still
    /// arriving (what was read of a message its client has not finished).
    /// A message beyond closes its socket with 1013, whichever object it
    /// is for (one complete message always fits a door that holds none).
    /// Messages still arriving may hold half of it together at most, so
    /// clients slow to finish theirs cannot take it all from complete
    /// ones (keep it at least twice `max_message_bytes`). Without it,
    /// many busy objects (a worker being replaced) could each hold their
    /// own `object_buffer_bytes`, and clients could each leave a message
    /// unfinished. Default 1 GiB.
    pub door_buffer_bytes: usize,
    /// A socket that sends nothing for this long is pinged; one that stays
    /// silent for as long again is taken for a half-open connection and
    /// closed (its object gets a close event, 1006). One sweep per door
    /// checks every socket each quarter of this, so each step comes up to
    /// a quarter later. A socket the door
    /// closes (1008, 1009, ...) keeps its connection this long at most,
    /// for its close frame to follow what the client has not read yet.
    /// A message an object sends in parts whose rest has not come for
    /// this long was cut off: its sockets are closed with 1012. A message
    /// a client left unfinished, no part of it coming for this long,
    /// closes its socket with 1008.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// How long delivering one event may take. Default 30 s.
    pub event_deadline: Duration,
    /// How long shutdown waits for sockets to close (1001) and their close
    /// events to be delivered. Default 5 s.
    pub shutdown_grace: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 * 1024 * 1024,
            max_sockets: 100_000,
            send_buffer_bytes: 1024 * 1024,
            object_buffer_events: 1024,
            object_buffer_bytes: 64 * 1024 * 1024,
            door_buffer_bytes: 1024 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            event_deadline: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The front door's WebSockets. Cheap to clone.
#[derive(Clone)]
pub struct Door {
    inner: Arc<Inner>,
}

impl fmt::Debug for Door {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Door")
            .field("endpoint", &self.inner.endpoint)
            .field("open_sockets", &self.open_sockets())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: WebSocketConfig,
    /// Where workers send this door's outputs.
    endpoint: String,
    service: Arc<dyn ObjectService>,
    state: Mutex<State>,
    next_socket: AtomicU64,
    /// Sockets counted against the cap: being upgraded or open.
    open: AtomicUsize,
    /// Set at shutdown: no new upgrades.
    closing: AtomicBool,
    /// Woken when a socket goes or a pump ends (shutdown waits on it).
    changed: Notify,
    /// Batches of messages sent to objects, and the messages in them.
    batches: AtomicU64,
    batched_messages: AtomicU64,
    /// The door's clock ([`Door::clock_ms`]) starts here.
    epoch: std::time::Instant,
    /// The idle sweep's task was started.
    sweeping: AtomicBool,
    /// The bytes of the messages held for objects, and of those still
    /// arriving ([`Held`]).
    held_bytes: Arc<HeldBytes>,
}

#[derive(Default)]
struct State {
    sockets: HashMap<u64, Socket>,
    objects: HashMap<ObjectId, Obj>,
    /// Messages being sent in parts.
    parts: parts::Parts,
}

/// One socket as the door keeps it.
struct Socket {
    object: ObjectId,
    /// The object accepted it (its `101` came back).
    accepted: bool,
    tags: Box<[String]>,
    /// A copy, not a slice of the output it came in (which may be large).
    attachment: Option<Box<[u8]>>,
    auto_response_ms: Option<u64>,
    out: Arc<Outbound>,
}

/// One object with sockets here.
struct Obj {
    address: ObjectAddress,
    /// Its sockets here (a hand-over reads them without going through
    /// every socket of the door).
    sockets: BTreeSet<u64>,
    auto_response: Option<(String, String)>,
    queue: VecDeque<Pending>,
    /// Bytes of the payloads in `queue`.
    queued_bytes: usize,
    pumping: bool,
}

/// An event waiting for delivery.
struct Pending {
    socket: u64,
    kind: SocketEventKind,
    payload: Bytes,
    /// For the last event of a socket the door no longer keeps: its
    /// record, in case the object's worker must be handed it first.
    record: Option<SocketRecord>,
    /// The payload's place under the door's bound, given back when the
    /// event is dropped: delivered, failed, or dropped from its queue.
    _held: Held,
}

/// The door's counts of the message bytes it holds.
#[derive(Debug, Default)]
struct HeldBytes {
    /// Every message byte held, against
    /// [`WebSocketConfig::door_buffer_bytes`].
    held: AtomicUsize,
    /// Those of messages still arriving (among `held`), which may take
    /// half the bound at most, so that clients slow to finish their
    /// messages can never take all of it from complete ones.
    arriving: AtomicUsize,
}

/// Bytes counted against [`WebSocketConfig::door_buffer_bytes`] while this
/// lives.
struct Held {
    bytes: usize,
    counts: Arc<HeldBytes>,
}

impl Held {
    fn new(counts: &Arc<HeldBytes>, bytes: usize) -> Self {
        counts.held.fetch_add(bytes, Ordering::Relaxed);
        Self {
            bytes,
            counts: counts.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counts.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The bytes of a message still arriving, counted against
/// [`WebSocketConfig::door_buffer_bytes`] (and among those arriving)
/// while this lives; never less than what tungstenite was found to keep
/// of a message that came whole ([`HeldArriving::keep`]).
struct HeldArriving {
    bytes: usize,
    kept: usize,
    counts: Arc<HeldBytes>,
}

impl HeldArriving {
    fn new(counts: &Arc<HeldBytes>) -> Self {
        Self {
            bytes: 0,
            kept: 0,
            counts: counts.clone(),
        }
    }

    /// The bytes it counts.
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts `bytes` of the message still arriving from now on (or what
    /// tungstenite keeps, if more).
    fn set(&mut self, bytes: usize) {
        self.count(bytes.max(self.kept));
    }

    /// Counts, until the socket ends, `bytes` that tungstenite keeps of a
    /// message that came whole (the buffer it read it into, when its
    /// state could not be renewed).
    fn keep(&mut self, bytes: usize) {
        self.kept = self.kept.max(bytes);
        self.count(self.bytes.max(self.kept));
    }

    fn count(&mut self, bytes: usize) {
        let counts = &*self.counts;
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            counts.held.fetch_add(more, Ordering::Relaxed);
            counts.arriving.fetch_add(more, Ordering::Relaxed);
        } else if bytes < self.bytes {
            let fewer = self.bytes - bytes;
            counts.held.fetch_sub(fewer, Ordering::Relaxed);
            counts.arriving.fetch_sub(fewer, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }

    /// The door's bytes held over all (this one's with them), and those
    /// of messages still arriving.
    fn totals(&self) -> (usize, usize) {
        (
            self.counts.held.load(Ordering::Relaxed),
            self.counts.arriving.load(Ordering::Relaxed),
        )
    }
}

impl Drop for HeldArriving {
    fn drop(&mut self) {
        self.count(0);
    }
}

impl Socket {
    fn record(&self, id: u64) -> SocketRecord {
        SocketRecord {
            socket: id,
            tags: self.tags.to_vec(),
            attachment: self.attachment.as_ref().map(|a| a.to_vec()),
            auto_response_ms: self.auto_response_ms,
        }
    }
}

impl Obj {
    /// Queues `pending` last.
    fn push(&mut self, pending: Pending) {
        self.queued_bytes += pending.payload.len();
        self.queue.push_back(pending);
    }

    /// The next event waiting, out of the queue.
    fn pop(&mut self) -> Option<Pending> {
        let pending = self.queue.pop_front()?;
        self.queued_bytes -= pending.payload.len();
        Some(pending)
    }

    fn idle(&self) -> bool {
        self.sockets.is_empty() && self.queue.is_empty() && !self.pumping
    }

    /// Drops the messages of `socket` waiting in the queue (the door
    /// closed it: none of them may reach the object); its other events
    /// (its close) stay.
    fn drop_messages_of(&mut self, socket: u64) {
        self.queue
            .retain(|p| p.socket != socket || !matches!(p.kind, SocketEventKind::Message { .. }));
        self.queued_bytes = self.queue.iter().map(|p| p.payload.len()).sum();
    }
}

/// Why a socket was closed by the door: the code its client and its
/// object are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kill {
    code: u16,
    reason: &'static str,
}

/// The bytes of socket records one frame carries at most (by
/// [`SocketRecord::estimated_bytes`]), well under the transport's frame
/// bound: a hand-over to a worker (`Sync`) and a page of a shard's records
/// are cut by it.
pub const SOCKET_RECORDS_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Why a socket is closed (1013) when the door holds all it may.
const OVER_DOOR: &str = "too many messages waiting at the server";

/// Closes `socket` with 1013 for `reason`; its messages waiting go with
/// it: left in its object's queue, they would keep the queue full for the
/// object's other sockets.
fn refuse(state: &mut State, socket: u64, reason: &'static str) {
    let Some(s) = state.sockets.get(&socket) else {
        return;
    };
    // A kill only wakes the socket; it never takes the door's lock.
    s.out.kill(Kill {
        code: close_code::TRY_AGAIN_LATER,
        reason,
    });
    if let Some(obj) = state.objects.get_mut(&s.object) {
        obj.drop_messages_of(socket);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Door {
    /// A front door for WebSockets whose outputs workers send to
    /// `endpoint` (this door's transport endpoint, served with
    /// [`Door::handle_request`]; any unique name in a process that hosts
    /// its objects itself), delivering events through `service`.
    pub fn new(
        config: WebSocketConfig,
        endpoint: impl Into<String>,
        service: Arc<dyn ObjectService>,
    ) -> Self {
        if config.door_buffer_bytes / 2 < config.max_message_bytes {
            warn!(
                door_buffer_bytes = config.door_buffer_bytes,
                max_message_bytes = config.max_message_bytes,
                "messages still arriving may hold half the door buffer: a client message \
                 larger than that is refused (1013) though under the message limit"
            );
        }
        Self {
            inner: Arc::new(Inner {
                config,
                endpoint: endpoint.into(),
                service,
                state: Mutex::default(),
                next_socket: AtomicU64::new(1),
                open: AtomicUsize::new(0),
                closing: AtomicBool::new(false),
                changed: Notify::new(),
                batches: AtomicU64::new(0),
                batched_messages: AtomicU64::new(0),
                epoch: std::time::Instant::now(),
                sweeping: AtomicBool::new(false),
                held_bytes: Arc::default(),
            }),
        }
    }

    /// Numbers this door's sockets from `first` on (before any upgrade).
    /// A cluster host's door is named by the host's endpoint, which a
    /// restarted host takes again: numbering from the start time keeps a
    /// new socket from taking a number that the old incarnation gave out,
    /// which a room's owner may still hold.
    pub fn number_sockets_from(&self, first: u64) {
        self.inner.next_socket.store(first.max(1), Ordering::SeqCst);
    }

    /// The endpoint workers send this door's outputs to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Sockets open (or being upgraded) right now.
    pub fn open_sockets(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Events waiting at this door for delivery to their objects, over
    /// every object (those being delivered not counted).
    pub fn queued_events(&self) -> usize {
        self.state().objects.values().map(|o| o.queue.len()).sum()
    }

    /// The bytes of the messages the door holds for objects, queued, on
    /// their way or still arriving ([`WebSocketConfig::door_buffer_bytes`]
    /// bounds them).
    pub fn held_message_bytes(&self) -> usize {
        self.inner.held_bytes.held.load(Ordering::Relaxed)
    }

    /// Appends the door's metrics in the Prometheus text format: sockets
    /// open, events waiting, the bytes of messages held, and the messages
    /// that reached their objects in batches.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let counters = [
            (
                "odo_websocket_open",
                "gauge",
                "WebSockets open (or being upgraded) at this front door.",
                self.open_sockets() as u64,
            ),
            (
                "odo_websocket_queued_events",
                "gauge",
                "WebSocket events waiting at this front door for delivery.",
                self.queued_events() as u64,
            ),
            (
                "odo_websocket_held_bytes",
                "gauge",
                "Bytes of WebSocket messages this front door holds for objects (queued, on their way or still arriving).",
                self.held_message_bytes() as u64,
            ),
            (
                "odo_websocket_batches_total",
                "counter",
                "Calls that carried several queued messages of one object at once.",
                self.inner.batches.load(Ordering::Relaxed),
            ),
            (
                "odo_websocket_batched_messages_total",
                "counter",
                "Messages that reached their object in a batch.",
                self.inner.batched_messages.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in counters {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
    }

    fn config(&self) -> &WebSocketConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Queues an event of socket `socket` for its object. A message that
    /// finds the object's queue full (or the door's bound reached) closes
    /// the socket with 1013 instead, and its messages still waiting are
    /// dropped.
    ///
    /// A message of a socket the door has closed (1012, 1013, ...) is
    /// dropped: its connection may still be reading what the client sent
    /// before it saw the close, and none of that may reach the object
    /// after the messages queued before it were dropped. The check and
    /// every such close happen under the door's lock.
    fn relay(&self, socket: u64, kind: SocketEventKind, payload: Bytes) {
        let mut state = self.state();
        let is_message = matches!(kind, SocketEventKind::Message { .. });
        let Some(object) = state
            .sockets
            .get(&socket)
            .filter(|s| !is_message || s.out.kill_reason().is_none())
            .map(|s| s.object)
        else {
            return;
        };
        let max = self.config().object_buffer_events;
        let Some(obj) = state.objects.get_mut(&object) else {
            return;
        };
        let max_bytes = self.config().object_buffer_bytes;
        let over_bytes =
            !obj.queue.is_empty() && obj.queued_bytes.saturating_add(payload.len()) > max_bytes;
        // Changed only under the door's lock but for decrements, which
        // only make room.
        let held = self.inner.held_bytes.held.load(Ordering::Relaxed);
        let over_door =
            held > 0 && held.saturating_add(payload.len()) > self.config().door_buffer_bytes;
        if is_message && (obj.queue.len() >= max || over_bytes || over_door) {
            refuse(
                &mut state,
                socket,
                if over_door {
                    OVER_DOOR
                } else {
                    "too many messages waiting for the object"
                },
            );
            return;
        }
        let held = Held::new(&self.inner.held_bytes, payload.len());
        obj.push(Pending {
            socket,
            kind,
            payload,
            record: None,
            _held: held,
        });
        let start = !obj.pumping;
        obj.pumping = true;
        drop(state);
        if start {
            tokio::spawn(pump::pump(self.clone(), object));
        }
    }

    /// Closes `socket` with 1013 for `reason` (a bound on what the door
    /// holds) and drops its messages waiting for its object.
    fn refuse(&self, socket: u64, reason: &'static str) {
        refuse(&mut self.state(), socket, reason);
    }

    /// Answers a text message with the object's auto-response if it is
    /// exactly the request text; `true` when answered.
    fn auto_respond(&self, socket: u64, text: &str) -> bool {
        let mut state = self.state();
        let Some(object) = state.sockets.get(&socket).map(|s| s.object) else {
            return false;
        };
        let response = match state
            .objects
            .get(&object)
            .and_then(|o| o.auto_response.as_ref())
        {
            Some((request, response)) if request == text => response.clone(),
            _ => return false,
        };
        let cap = self.config().send_buffer_bytes;
        let Some(s) = state.sockets.get_mut(&socket) else {
            return false;
        };
        s.auto_response_ms = Some(now_ms());
        if !s.out.push(Out::data(false, response.as_bytes()), cap) {
            let out = s.out.clone();
            drop(state);
            out.kill(Kill {
                code: close_code::POLICY_VIOLATION,
                reason: "the client does not read its messages",
            });
        }
        true
    }

    /// A socket ended: the door forgets it and its object gets `last`.
    fn socket_gone(&self, socket: u64, last: SocketEventKind) {
        if self.let_go(socket, last) {
            self.connection_gone();
        }
    }

    /// A socket's connection is gone: it no longer counts against the cap.
    fn connection_gone(&self) {
        self.inner.open.fetch_sub(1, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }

    /// The door forgets `socket` and its object gets `last`; the socket
    /// counts against the cap until [`Door::connection_gone`]. `false`
    /// when the door did not know it (any more).
    fn let_go(&self, socket: u64, last: SocketEventKind) -> bool {
        let mut state = self.state();
        let Some(gone) = state.sockets.remove(&socket) else {
            return false;
        };
        let State { sockets, parts, .. } = &mut *state;
        parts.socket_gone(socket, |s| sockets.contains_key(&s));
        let mut start = false;
        if let Some(obj) = state.objects.get_mut(&gone.object) {
            obj.sockets.remove(&socket);
            obj.push(Pending {
                socket,
                kind: last,
                payload: Bytes::new(),
                record: gone.accepted.then(|| gone.record(socket)),
                _held: Held::new(&self.inner.held_bytes, 0),
            });
            start = !obj.pumping;
            obj.pumping = true;
        }
        drop(state);
        self.inner.changed.notify_waiters();
        if start {
            tokio::spawn(pump::pump(self.clone(), gone.object));
        }
        debug!(socket, "WebSocket closed");
        true
    }

    /// Whether the door is shutting down.
    fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }

    /// Closes every socket with 1001 and waits (at most the grace period)
    /// until they are closed and their objects have their close events.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        let outs: Vec<Arc<Outbound>> = self
            .state()
            .sockets
            .values()
            .map(|s| s.out.clone())
            .collect();
        for out in outs {
            out.kill(Kill {
                code: close_code::GOING_AWAY,
                reason: "the server is shutting down",
            });
        }
        let grace = self.config().shutdown_grace;
        let _ = tokio::time::timeout(grace, async {
            loop {
                let changed = self.inner.changed.notified();
                let busy = {
                    let state = self.state();
                    !state.sockets.is_empty() || state.objects.values().any(|o| o.pumping)
                };
                if !busy && self.open_sockets() == 0 {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}
