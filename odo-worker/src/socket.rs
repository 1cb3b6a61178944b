//! WebSockets as an object sees them: handles on the sockets it accepted,
//! their tags and attachments, and what its turns send.
//!
//! A client's socket ends at a front door, never here. The worker keeps,
//! per shard, the object's record of its sockets (the [`SocketBook`]),
//! which outlives the object's eviction (hibernation); the front door keeps
//! the same record and hands it again to a new worker after a crash or a
//! move. What a turn does to its sockets (accepts, sends, closes,
//! attachments) is collected in the turn's outbox and leaves only when the
//! turn succeeded and its writes are durable (the output gate).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use odo_core::ObjectId;
use odo_core::socket::{
    ShardSockets, ShardSocketsPage, SocketOp, SocketOutput, SocketRecord, UPGRADE_DOOR_HEADER,
    UPGRADE_SOCKET_HEADER,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The most tags one socket may carry (as Cloudflare).
pub const MAX_TAGS: usize = 10;
/// The longest tag, in bytes (as Cloudflare).
pub const MAX_TAG_BYTES: usize = 256;
/// The largest serialized attachment, in bytes (16 KiB, as Cloudflare).
pub const MAX_ATTACHMENT_BYTES: usize = 16 * 1024;
/// The most sockets one object may have accepted at once (as Cloudflare).
pub const MAX_SOCKETS_PER_OBJECT: usize = 32_768;
/// The longest auto-response request or response, in characters.
pub const MAX_AUTO_RESPONSE_CHARS: usize = 2048;
/// The longest close reason, in bytes (a close frame's payload is at most
/// 125 bytes, two of them the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Why a WebSocket operation was refused. None of these resets the object:
/// the turn that hit one is rolled back and the caller answered with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebSocketError {
    /// `accept_websocket` outside the handling of an upgrade request.
    #[error("the request being handled is not a WebSocket upgrade")]
    NotAnUpgrade,
    /// `accept_websocket` twice for one request.
    #[error("this request's WebSocket is already accepted")]
    AlreadyAccepted,
    /// More than [`MAX_TAGS`] tags.
    #[error("{count} tags given, at most {MAX_TAGS} are allowed")]
    TooManyTags {
        /// How many were given.
        count: usize,
    },
    /// A tag longer than [`MAX_TAG_BYTES`], or empty.
    #[error("a tag of {len} bytes: tags are 1 to {MAX_TAG_BYTES} bytes")]
    BadTag {
        /// Its length.
        len: usize,
    },
    /// The object already has as many sockets as it may accept
    /// (`RuntimeConfig::websocket_max_sockets_per_object`, by default
    /// [`MAX_SOCKETS_PER_OBJECT`]).
    #[error("the object already has {max} WebSockets, the most it may accept")]
    TooManySockets {
        /// The limit.
        max: usize,
    },
    /// An attachment over [`MAX_ATTACHMENT_BYTES`] once serialized.
    #[error("an attachment of {len} bytes exceeds the {MAX_ATTACHMENT_BYTES}-byte limit")]
    AttachmentTooLarge {
        /// Its serialized length.
        len: usize,
    },
    /// An attachment that does not serialize or deserialize as asked.
    #[error("attachment encoding: {0}")]
    Encoding(String),
    /// A message over the runtime's limit.
    #[error("a message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A close code that may not be sent (RFC 6455: 1000 to 1003, 1007 to
    /// 1014, 3000 to 4999).
    #[error("close code {0} may not be sent: use 1000-1003, 1007-1014 or 3000-4999")]
    BadCloseCode(u16),
    /// A close reason over [`MAX_CLOSE_REASON_BYTES`].
    #[error("a close reason of {len} bytes exceeds {MAX_CLOSE_REASON_BYTES}")]
    CloseReasonTooLong {
        /// Its length.
        len: usize,
    },
    /// An auto-response text over [`MAX_AUTO_RESPONSE_CHARS`] characters.
    #[error("an auto-response text of {len} characters exceeds {MAX_AUTO_RESPONSE_CHARS}")]
    AutoResponseTooLong {
        /// Its length in characters.
        len: usize,
    },
}

/// A message a socket received or an object sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSocketMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl WebSocketMessage {
    fn len(&self) -> usize {
        match self {
            WebSocketMessage::Text(text) => text.len(),
            WebSocketMessage::Binary(bytes) => bytes.len(),
        }
    }
}

impl From<&str> for WebSocketMessage {
    fn from(text: &str) -> Self {
        WebSocketMessage::Text(text.to_owned())
    }
}

impl From<String> for WebSocketMessage {
    fn from(text: String) -> Self {
        WebSocketMessage::Text(text)
    }
}

impl From<Bytes> for WebSocketMessage {
    fn from(bytes: Bytes) -> Self {
        WebSocketMessage::Binary(bytes)
    }
}

impl From<Vec<u8>> for WebSocketMessage {
    fn from(bytes: Vec<u8>) -> Self {
        WebSocketMessage::Binary(Bytes::from(bytes))
    }
}

/// A socket: the front door holding it and its number there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SocketKey {
    pub(crate) door: Arc<str>,
    pub(crate) id: u64,
}

/// What the worker keeps of one accepted socket.
#[derive(Debug, Clone)]
struct Entry {
    /// Accept order, for listings.
    seq: u64,
    tags: Arc<[String]>,
    attachment: Option<Bytes>,
    auto_response_ms: Option<u64>,
}

/// One object's sockets.
#[derive(Debug, Default)]
struct ObjectSockets {
    entries: HashMap<SocketKey, Entry>,
    order: BTreeMap<u64, SocketKey>,
    next_seq: u64,
    auto_response: Option<(String, String)>,
    /// The leading parts of a message that came in several frames.
    partial: Option<(SocketKey, BytesMut)>,
    /// Hand-overs coming in parts (one per front door): the records so
    /// far, taken at the last part.
    handing: Vec<Handing>,
}

/// A hand-over from one front door, while its parts come.
#[derive(Debug)]
struct Handing {
    door: Arc<str>,
    records: Vec<SocketRecord>,
    /// The accept order when its first part came: sockets accepted since
    /// (through `fetch`, while the parts came) are not in the door's
    /// records yet, and stay.
    from_seq: u64,
}

/// Why a part of a hand-over was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncRefused {
    /// A later part whose first never came here (the object moved between
    /// them): the door starts again.
    NoFirstPart,
    /// More records than an object may have sockets.
    TooMany,
}

impl ObjectSockets {
    fn insert(&mut self, key: SocketKey, tags: Arc<[String]>, attachment: Option<Bytes>) {
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.seq);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.entries.insert(
            key,
            Entry {
                seq,
                tags,
                attachment,
                auto_response_ms: None,
            },
        );
    }

    fn remove(&mut self, key: &SocketKey) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.auto_response.is_none()
            && self.partial.is_none()
            && self.handing.is_empty()
    }
}

/// The sockets of every object of one shard, as the worker knows them.
/// It outlives the objects' activations (hibernation); it goes with the
/// shard, and the front doors hand it to the shard's next holder.
#[derive(Debug, Default)]
pub(crate) struct SocketBook {
    objects: Mutex<HashMap<ObjectId, ObjectSockets>>,
    doors: Mutex<Vec<Arc<str>>>,
    /// Hand-overs coming in parts, over every object: while there is
    /// none, [`SocketBook::end_handing`] takes no lock.
    handing: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SocketBook {
    /// One shared string per front door.
    pub(crate) fn door(&self, endpoint: &str) -> Arc<str> {
        let mut doors = lock(&self.doors);
        if let Some(door) = doors.iter().find(|d| &***d == endpoint) {
            return door.clone();
        }
        let door: Arc<str> = Arc::from(endpoint);
        doors.push(door.clone());
        door
    }

    fn with<R>(&self, object: &ObjectId, f: impl FnOnce(&mut ObjectSockets) -> R) -> R {
        let mut objects = lock(&self.objects);
        let sockets = objects.entry(*object).or_default();
        let result = f(sockets);
        if sockets.is_empty() {
            objects.remove(object);
        }
        result
    }

    /// Notes when the front door last answered `key`'s auto-response.
    pub(crate) fn set_auto_response_ms(&self, object: &ObjectId, key: &SocketKey, at: u64) {
        self.with(object, |s| {
            if let Some(entry) = s.entries.get_mut(key) {
                entry.auto_response_ms = Some(at);
            }
        });
    }

    /// Whether the worker knows socket `key` of `object` (it was accepted
    /// here, or a front door handed it over).
    pub(crate) fn knows(&self, object: &ObjectId, key: &SocketKey) -> bool {
        lock(&self.objects)
            .get(object)
            .is_some_and(|s| s.entries.contains_key(key))
    }

    /// The sockets front door `door` holds, of every object of the shard.
    pub(crate) fn at_door(&self, door: &str) -> Vec<(ObjectId, u64)> {
        let mut out: Vec<(ObjectId, u64)> = lock(&self.objects)
            .iter()
            .flat_map(|(id, s)| {
                s.entries
                    .keys()
                    .filter(|k| &*k.door == door)
                    .map(move |k| (*id, k.id))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// An event of `door` for `object` that is not part of a hand-over:
    /// a hand-over from that door still coming in parts was given up (the
    /// door sends its parts before the event they precede), so its parts
    /// are let go.
    pub(crate) fn end_handing(&self, object: &ObjectId, door: &Arc<str>) {
        use std::sync::atomic::Ordering;
        if self.handing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut objects = lock(&self.objects);
        if let Some(s) = objects.get_mut(object)
            && !s.handing.is_empty()
        {
            let before = s.handing.len();
            s.handing.retain(|h| h.door != *door);
            self.handing
                .fetch_sub(before - s.handing.len(), Ordering::Relaxed);
            if s.is_empty() {
                objects.remove(object);
            }
        }
    }

    /// Forgets a socket (it closed).
    pub(crate) fn remove(&self, object: &ObjectId, key: &SocketKey) {
        self.with(object, |s| s.remove(key));
    }

    /// Replaces what is known of the sockets `door` holds for `object`,
    /// with `records` and those of the earlier parts of the same hand-over
    /// (`continued`); with `more`, only keeps them until the last part.
    /// Sockets accepted here since the first part came stay. Fails for a
    /// later part whose first never came, and past `max_records`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sync(
        &self,
        object: &ObjectId,
        door: &Arc<str>,
        mut records: Vec<SocketRecord>,
        auto_response: Option<(String, String)>,
        more: bool,
        continued: bool,
        max_records: usize,
    ) -> Result<(), SyncRefused> {
        self.with(object, |s| {
            let earlier = s
                .handing
                .iter()
                .position(|h| h.door == *door)
                .map(|at| s.handing.swap_remove(at));
            if earlier.is_some() {
                self.handing
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let from_seq = match (continued, earlier) {
                (false, _) => s.next_seq,
                (true, None) => return Err(SyncRefused::NoFirstPart),
                (true, Some(mut earlier)) => {
                    earlier.records.append(&mut records);
                    records = earlier.records;
                    earlier.from_seq
                }
            };
            if records.len() > max_records {
                return Err(SyncRefused::TooMany);
            }
            if more {
                self.handing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.handing.push(Handing {
                    door: door.clone(),
                    records,
                    from_seq,
                });
                return Ok(());
            }
            let stale: Vec<SocketKey> = s
                .entries
                .iter()
                .filter(|(k, e)| k.door == *door && e.seq < from_seq)
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                s.remove(&key);
            }
            for record in records {
                let key = SocketKey {
                    door: door.clone(),
                    id: record.socket,
                };
                s.insert(
                    key.clone(),
                    record.tags.into(),
                    record.attachment.map(Bytes::from),
                );
                if let Some(entry) = s.entries.get_mut(&key) {
                    entry.auto_response_ms = record.auto_response_ms;
                }
            }
            if auto_response.is_some() {
                s.auto_response = auto_response;
            }
            Ok(())
        })
    }

    /// Adds a leading part of a message; `false` when the message would
    /// exceed `max` bytes (the parts are dropped).
    pub(crate) fn add_part(
        &self,
        object: &ObjectId,
        key: &SocketKey,
        first: bool,
        part: &[u8],
        max: usize,
    ) -> bool {
        self.with(object, |s| {
            let buffer = match &mut s.partial {
                Some((k, buffer)) if k == key && !first => buffer,
                _ => &mut s.partial.insert((key.clone(), BytesMut::new())).1,
            };
            if buffer.len() + part.len() > max {
                s.partial = None;
                return false;
            }
            buffer.extend_from_slice(part);
            true
        })
    }

    /// The whole message whose last part is `last`.
    pub(crate) fn complete(&self, object: &ObjectId, key: &SocketKey, last: Bytes) -> Bytes {
        self.with(object, |s| match s.partial.take() {
            Some((k, mut buffer)) if k == *key => {
                buffer.extend_from_slice(&last);
                buffer.freeze()
            }
            other => {
                s.partial = other;
                last
            }
        })
    }
}

/// What one turn did to its object's sockets, in order.
#[derive(Debug, Default)]
struct Outbox {
    ops: Vec<PendingOp>,
}

#[derive(Debug)]
enum PendingOp {
    Accept {
        key: SocketKey,
        tags: Arc<[String]>,
    },
    Send {
        key: SocketKey,
        message: WebSocketMessage,
    },
    Close {
        key: SocketKey,
        code: u16,
        reason: String,
    },
    Attach {
        key: SocketKey,
        value: Option<Bytes>,
    },
    AutoResponse(Option<(String, String)>),
}

/// One object's view of its sockets, shared by its context and the
/// handles it holds.
pub(crate) struct SocketView {
    object: ObjectId,
    book: Arc<SocketBook>,
    max_message_bytes: usize,
    max_sockets: usize,
    outbox: Mutex<Outbox>,
}

impl fmt::Debug for SocketView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketView")
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

/// The outputs of one turn for one front door: the ops and their payloads.
#[derive(Debug)]
pub(crate) struct DoorOutput {
    pub(crate) door: Arc<str>,
    pub(crate) output: SocketOutput,
    pub(crate) body: Bytes,
}

impl SocketView {
    pub(crate) fn new(
        object: ObjectId,
        book: Arc<SocketBook>,
        max_message_bytes: usize,
        max_sockets: usize,
    ) -> Self {
        Self {
            object,
            book,
            max_message_bytes,
            max_sockets,
            outbox: Mutex::default(),
        }
    }

    pub(crate) fn book(&self) -> &Arc<SocketBook> {
        &self.book
    }

    fn push(&self, op: PendingOp) {
        lock(&self.outbox).ops.push(op);
    }

    /// Forgets what the current turn did (it failed).
    pub(crate) fn discard_turn(&self) {
        lock(&self.outbox).ops.clear();
    }

    /// Accepts socket `key` with `tags` in the current turn.
    pub(crate) fn accept(&self, key: SocketKey, tags: Vec<String>) -> Result<(), WebSocketError> {
        if tags.len() > MAX_TAGS {
            return Err(WebSocketError::TooManyTags { count: tags.len() });
        }
        if let Some(tag) = tags
            .iter()
            .find(|t| t.is_empty() || t.len() > MAX_TAG_BYTES)
        {
            return Err(WebSocketError::BadTag { len: tag.len() });
        }
        let known = lock(&self.book.objects)
            .get(&self.object)
            .map_or(0, |s| s.entries.len());
        let pending = lock(&self.outbox)
            .ops
            .iter()
            .filter(|op| matches!(op, PendingOp::Accept { .. }))
            .count();
        if known + pending >= self.max_sockets {
            return Err(WebSocketError::TooManySockets {
                max: self.max_sockets,
            });
        }
        self.push(PendingOp::Accept {
            key,
            tags: tags.into(),
        });
        Ok(())
    }

    /// The object's sockets, in accept order (those accepted in the current
    /// turn last), with `tag` if given.
    pub(crate) fn list(self: &Arc<Self>, tag: Option<&str>) -> Vec<WebSocket> {
        let has = |tags: &[String]| tag.is_none_or(|t| tags.iter().any(|x| x == t));
        let mut out = Vec::new();
        if let Some(s) = lock(&self.book.objects).get(&self.object) {
            for key in s.order.values() {
                if let Some(entry) = s.entries.get(key)
                    && has(&entry.tags)
                {
                    out.push(WebSocket {
                        key: key.clone(),
                        view: self.clone(),
                    });
                }
            }
        }
        for op in &lock(&self.outbox).ops {
            if let PendingOp::Accept { key, tags } = op
                && has(tags)
            {
                out.push(WebSocket {
                    key: key.clone(),
                    view: self.clone(),
                });
            }
        }
        out
    }

    /// A handle on socket `key`.
    pub(crate) fn handle(self: &Arc<Self>, key: SocketKey) -> WebSocket {
        WebSocket {
            key,
            view: self.clone(),
        }
    }

    fn tags(&self, key: &SocketKey) -> Vec<String> {
        for op in lock(&self.outbox).ops.iter() {
            if let PendingOp::Accept { key: k, tags } = op
                && k == key
            {
                return tags.to_vec();
            }
        }
        lock(&self.book.objects)
            .get(&self.object)
            .and_then(|s| s.entries.get(key))
            .map(|e| e.tags.to_vec())
            .unwrap_or_default()
    }

    fn attachment(&self, key: &SocketKey) -> Option<Bytes> {
        let pending = lock(&self.outbox).ops.iter().rev().find_map(|op| match op {
            PendingOp::Attach { key: k, value } if k == key => Some(value.clone()),
            _ => None,
        });
        if let Some(value) = pending {
            return value;
        }
        lock(&self.book.objects)
            .get(&self.object)
            .and_then(|s| s.entries.get(key))
            .and_then(|e| e.attachment.clone())
    }

    pub(crate) fn auto_response_ms(&self, key: &SocketKey) -> Option<u64> {
        lock(&self.book.objects)
            .get(&self.object)
            .and_then(|s| s.entries.get(key))
            .and_then(|e| e.auto_response_ms)
    }

    pub(crate) fn set_auto_response(
        &self,
        pair: Option<(String, String)>,
    ) -> Result<(), WebSocketError> {
        if let Some((request, response)) = &pair {
            for text in [request, response] {
                let len = text.chars().count();
                if len > MAX_AUTO_RESPONSE_CHARS {
                    return Err(WebSocketError::AutoResponseTooLong { len });
                }
            }
        }
        self.push(PendingOp::AutoResponse(pair));
        Ok(())
    }

    pub(crate) fn auto_response(&self) -> Option<(String, String)> {
        let pending = lock(&self.outbox).ops.iter().rev().find_map(|op| match op {
            PendingOp::AutoResponse(pair) => Some(pair.clone()),
            _ => None,
        });
        pending.unwrap_or_else(|| {
            lock(&self.book.objects)
                .get(&self.object)
                .and_then(|s| s.auto_response.clone())
        })
    }

    /// Ends a successful turn: applies its ops to the book and returns
    /// them per front door, in order, for the output gate.
    pub(crate) fn finish_turn(&self) -> Vec<DoorOutput> {
        let ops = std::mem::take(&mut lock(&self.outbox).ops);
        if ops.is_empty() {
            return Vec::new();
        }
        let mut outputs: Vec<(Arc<str>, Vec<SocketOp>, BytesMut)> = Vec::new();
        fn slot<'a>(
            outputs: &'a mut Vec<(Arc<str>, Vec<SocketOp>, BytesMut)>,
            door: &Arc<str>,
        ) -> &'a mut (Arc<str>, Vec<SocketOp>, BytesMut) {
            let at = match outputs.iter().position(|(d, _, _)| d == door) {
                Some(at) => at,
                None => {
                    outputs.push((door.clone(), Vec::new(), BytesMut::new()));
                    outputs.len() - 1
                }
            };
            &mut outputs[at]
        }
        let mut objects = lock(&self.book.objects);
        let sockets = objects.entry(self.object).or_default();
        for op in ops {
            match op {
                PendingOp::Accept { key, tags } => {
                    // A door that never held this object's sockets learns
                    // its auto-response with its first one.
                    let door_new = !sockets.entries.keys().any(|k| k.door == key.door);
                    if door_new && let Some(pair) = &sockets.auto_response {
                        slot(&mut outputs, &key.door)
                            .1
                            .push(SocketOp::AutoResponse {
                                object: self.object,
                                pair: Some(pair.clone()),
                            });
                    }
                    sockets.insert(key, tags, None);
                }
                PendingOp::Send { key, message } => {
                    let (binary, payload): (bool, &[u8]) = match &message {
                        WebSocketMessage::Text(text) => (false, text.as_bytes()),
                        WebSocketMessage::Binary(bytes) => (true, bytes),
                    };
                    let (_, ops, body) = slot(&mut outputs, &key.door);
                    // Consecutive sends of one message to many sockets
                    // travel (and are framed at the door) once.
                    let start = body.len()
                        - match ops.last() {
                            Some(SocketOp::Send { len, .. }) => *len as usize,
                            _ => 0,
                        };
                    if let Some(SocketOp::Send {
                        sockets: to,
                        binary: b,
                        more: false,
                        ..
                    }) = ops.last_mut()
                        && *b == binary
                        && &body[start..] == payload
                    {
                        to.push(key.id);
                        continue;
                    }
                    body.extend_from_slice(payload);
                    ops.push(SocketOp::Send {
                        sockets: vec![key.id],
                        binary,
                        len: payload.len() as u32,
                        more: false,
                        continued: false,
                        message: 0,
                    });
                }
                PendingOp::Close { key, code, reason } => {
                    slot(&mut outputs, &key.door).1.push(SocketOp::Close {
                        socket: key.id,
                        code,
                        reason,
                    });
                }
                PendingOp::Attach { key, value } => {
                    if let Some(entry) = sockets.entries.get_mut(&key) {
                        entry.attachment = value.clone();
                    }
                    let (_, ops, body) = slot(&mut outputs, &key.door);
                    let len = value.as_ref().map(|v| v.len() as u32);
                    if let Some(v) = &value {
                        body.extend_from_slice(v);
                    }
                    ops.push(SocketOp::Attach {
                        socket: key.id,
                        len,
                    });
                }
                PendingOp::AutoResponse(pair) => {
                    sockets.auto_response = pair.clone();
                    let mut doors: Vec<Arc<str>> =
                        sockets.entries.keys().map(|k| k.door.clone()).collect();
                    doors.sort();
                    doors.dedup();
                    for door in doors {
                        slot(&mut outputs, &door).1.push(SocketOp::AutoResponse {
                            object: self.object,
                            pair: pair.clone(),
                        });
                    }
                }
            }
        }
        if sockets.is_empty() {
            objects.remove(&self.object);
        }
        outputs
            .into_iter()
            .map(|(door, ops, body)| DoorOutput {
                door,
                output: SocketOutput { ops },
                body: body.freeze(),
            })
            .collect()
    }
}

/// A handle on one of the object's WebSockets. Sends, closes and
/// attachments made through it belong to the turn being handled: they
/// leave (in the order they were made) only once the turn succeeded and
/// its writes, and every earlier write of the object, are durable.
#[derive(Clone)]
pub struct WebSocket {
    pub(crate) key: SocketKey,
    view: Arc<SocketView>,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("door", &self.key.door)
            .field("id", &self.key.id)
            .finish()
    }
}

impl PartialEq for WebSocket {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for WebSocket {}

impl WebSocket {
    /// A name for the socket, unique among the sockets of its front door
    /// (for logs and maps).
    pub fn id(&self) -> String {
        format!("{}#{}", self.key.door, self.key.id)
    }

    /// Sends a message (text from `&str`/`String`, binary from
    /// `Bytes`/`Vec<u8>`).
    pub fn send(&self, message: impl Into<WebSocketMessage>) -> Result<(), WebSocketError> {
        let message = message.into();
        let max = self.view.max_message_bytes;
        if message.len() > max {
            return Err(WebSocketError::MessageTooLarge {
                len: message.len(),
                max,
            });
        }
        self.view.push(PendingOp::Send {
            key: self.key.clone(),
            message,
        });
        Ok(())
    }

    /// Closes the socket with `code` (1000 to 1003, 1007 to 1014, or 3000
    /// to 4999) and `reason` (at most 123 bytes). The object gets its close
    /// event when the client answers (or the front door gives up waiting).
    pub fn close(&self, code: u16, reason: &str) -> Result<(), WebSocketError> {
        let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if !sendable {
            return Err(WebSocketError::BadCloseCode(code));
        }
        if reason.len() > MAX_CLOSE_REASON_BYTES {
            return Err(WebSocketError::CloseReasonTooLong { len: reason.len() });
        }
        self.view.push(PendingOp::Close {
            key: self.key.clone(),
            code,
            reason: reason.to_owned(),
        });
        Ok(())
    }

    /// Keeps `value` with the socket (serialized, at most 16 KiB): it
    /// survives the object's hibernation and its worker's crash, and
    /// [`WebSocket::deserialize_attachment`] reads it back.
    pub fn serialize_attachment<T: Serialize>(&self, value: &T) -> Result<(), WebSocketError> {
        let bytes =
            postcard::to_allocvec(value).map_err(|e| WebSocketError::Encoding(e.to_string()))?;
        if bytes.len() > MAX_ATTACHMENT_BYTES {
            return Err(WebSocketError::AttachmentTooLarge { len: bytes.len() });
        }
        self.view.push(PendingOp::Attach {
            key: self.key.clone(),
            value: Some(Bytes::from(bytes)),
        });
        Ok(())
    }

    /// Removes the socket's attachment.
    pub fn clear_attachment(&self) {
        self.view.push(PendingOp::Attach {
            key: self.key.clone(),
            value: None,
        });
    }

    /// The socket's attachment, if one was set.
    pub fn deserialize_attachment<T: DeserializeOwned>(&self) -> Result<Option<T>, WebSocketError> {
        match self.view.attachment(&self.key) {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| WebSocketError::Encoding(e.to_string())),
        }
    }

    /// The socket's tags, as given at accept.
    pub fn tags(&self) -> Vec<String> {
        self.view.tags(&self.key)
    }
}

/// Where a worker's objects' socket outputs go: the front doors holding
/// the sockets. A worker process reaches them over the transport; a
/// program hosting objects in its own process hands them to its front
/// door directly.
pub trait WebSocketDoors: Send + Sync + 'static {
    /// Hands `output` (its payloads in `body`) to front door `door`. Must
    /// queue it before returning, so that outputs submitted one after the
    /// other reach the door in that order. The future resolves to whether
    /// the door applied it.
    fn submit(
        &self,
        door: &str,
        output: SocketOutput,
        body: Bytes,
    ) -> futures_util::future::BoxFuture<'static, bool>;

    /// One page of what front door `door` holds of the sockets of the
    /// objects of `asked`'s shard, for this process to take the shard over
    /// knowing every door's sockets (cluster mode): ask again with the
    /// page's `next` until it has none, and join the pages with
    /// [`append_page`](odo_core::socket::append_page). By default, nothing:
    /// a door's sockets are then handed over with its next event.
    fn shard_sockets_page(
        &self,
        door: &str,
        asked: ShardSockets,
    ) -> futures_util::future::BoxFuture<'static, Result<ShardSocketsPage, String>> {
        let _ = (door, asked);
        Box::pin(async { Ok(ShardSocketsPage::default()) })
    }
}

/// Whether `request` asks for a WebSocket (`Upgrade: websocket`): the
/// requests [`Context::accept_websocket`](crate::Context::accept_websocket)
/// can accept. A route that needs one and gets none answers 426.
pub fn is_websocket_upgrade(request: &crate::types::Request) -> bool {
    request
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Takes the front door's upgrade headers off `request`: the socket it
/// would accept, if the request is an upgrade a front door holds. Such a
/// request keeps (or gets) `Upgrade: websocket`.
pub(crate) fn take_upgrade(
    request: &mut crate::types::Request,
    book: &SocketBook,
) -> Option<SocketKey> {
    let headers = request.headers_mut();
    let door = headers.remove(UPGRADE_DOOR_HEADER);
    let socket = headers.remove(UPGRADE_SOCKET_HEADER);
    let door = door?.to_str().ok()?.to_owned();
    let id = socket?.to_str().ok()?.parse::<u64>().ok()?;
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    Some(SocketKey {
        door: book.door(&door),
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(socket: u64) -> SocketRecord {
        SocketRecord {
            socket,
            tags: vec![format!("t{socket}")],
            attachment: Some(vec![socket as u8]),
            auto_response_ms: None,
        }
    }

    fn known(book: &SocketBook, object: &ObjectId, door: &Arc<str>) -> Vec<u64> {
        let mut ids: Vec<u64> = book
            .at_door(door)
            .into_iter()
            .filter(|(o, _)| o == object)
            .map(|(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A hand-over in parts replaces the door's records only at its last
    /// part, with every part's records, keeping sockets accepted here
    /// since it began; another door's hand-over between them does not mix
    /// in; a later part without a first is refused, and so are more
    /// records than an object may have sockets.
    #[test]
    fn a_hand_over_in_parts_is_taken_whole_at_its_last_part() {
        let book = SocketBook::default();
        let object = odo_core::Namespace::new("ROOM").id_from_name("r");
        let (a, b) = (book.door("a"), book.door("b"));
        book.sync(&object, &a, vec![record(1)], None, false, false, 100)
            .unwrap();
        book.sync(
            &object,
            &a,
            vec![record(2), record(3)],
            None,
            true,
            false,
            100,
        )
        .unwrap();
        book.sync(&object, &b, vec![record(9)], None, false, false, 100)
            .unwrap();
        book.sync(&object, &a, vec![record(4)], None, true, true, 100)
            .unwrap();
        assert_eq!(
            known(&book, &object, &a),
            vec![1],
            "nothing taken before the last part"
        );
        // Accepted here while the parts came: not in the door's records,
        // and kept.
        book.with(&object, |s| {
            let key = SocketKey {
                door: a.clone(),
                id: 7,
            };
            s.insert(key, Arc::from(Vec::<String>::new()), None);
        });
        let pair = Some(("ping".to_owned(), "pong".to_owned()));
        book.sync(&object, &a, vec![record(5)], pair, false, true, 100)
            .unwrap();
        assert_eq!(known(&book, &object, &a), vec![2, 3, 4, 5, 7]);
        assert_eq!(known(&book, &object, &b), vec![9]);
        assert_eq!(
            book.sync(&object, &a, vec![record(6)], None, false, true, 100),
            Err(SyncRefused::NoFirstPart)
        );
        // A hand-over the door gave up (its next event came): its parts go.
        book.sync(&object, &a, vec![record(8)], None, true, false, 100)
            .unwrap();
        book.end_handing(&object, &a);
        assert_eq!(
            book.sync(&object, &a, vec![record(9)], None, false, true, 100),
            Err(SyncRefused::NoFirstPart)
        );
        let many: Vec<SocketRecord> = (10..20).map(record).collect();
        assert_eq!(
            book.sync(&object, &a, many, None, false, false, 9),
            Err(SyncRefused::TooMany)
        );
        assert_eq!(known(&book, &object, &a), vec![2, 3, 4, 5, 7]);
    }

    #[test]
    fn the_default_cap_is_cloudflares() {
        assert_eq!(
            crate::RuntimeConfig::default().websocket_max_sockets_per_object,
            super::MAX_SOCKETS_PER_OBJECT
        );
    }
}
