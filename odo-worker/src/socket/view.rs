//! One object's view of its sockets ([`SocketView`]): what its turns do
//! to them, collected per turn and handed out, per front door, once the
//! turn succeeded (the output gate sends them when it is durable); and the
//! [`WebSocket`] handles it gives out.

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use odo_core::ObjectId;
use odo_core::socket::{SocketOp, SocketOutput};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    MAX_ATTACHMENT_BYTES, MAX_AUTO_RESPONSE_CHARS, MAX_CLOSE_REASON_BYTES, MAX_TAG_BYTES, MAX_TAGS,
    SocketBook, SocketKey, WebSocketError, WebSocketMessage, lock,
};

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
