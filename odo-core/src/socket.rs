//! The messages of client WebSockets: events a front door relays to the
//! object that accepted the socket, and the outputs (sends, closes,
//! attachments) the object's turns hand back to that front door.
//!
//! A client's WebSocket ends at a front door (the router's process), never
//! at a worker, so it outlives the object's eviction and its worker. Each
//! socket is named by the front door that holds it (its endpoint, where
//! outputs go) and a number unique in that front door.
//!
//! Payloads travel as the frame's raw body. A message larger than one wire
//! frame travels in several: [`SocketEventKind::Part`] events (and
//! [`SocketOp::Send`] with `more`) carry its leading parts in order.

use serde::{Deserialize, Serialize};

use crate::id::ObjectId;
use crate::wire::{CallMeta, Target};

/// The request header a front door adds to an upgrade request it
/// forwards: the endpoint of the front door that holds the socket. The
/// runtime takes it off before the object sees the request, and a front
/// door takes it off every request a client sends.
pub const UPGRADE_DOOR_HEADER: &str = "odo-websocket-door";
/// With [`UPGRADE_DOOR_HEADER`]: the socket's number in that front door.
pub const UPGRADE_SOCKET_HEADER: &str = "odo-websocket-socket";
/// The header of an object's `101` answer that carries the accepted
/// socket's tags (a JSON array of strings) to the front door, which takes
/// it off.
pub const ACCEPT_TAGS_HEADER: &str = "odo-websocket-tags";

/// The WebSocket close codes odo itself uses (RFC 6455, section 7.4, and
/// the IANA registry).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A data type the endpoint cannot accept (the room's answer to a
    /// binary message).
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// No close frame was received: the connection dropped (never sent on
    /// the wire, only reported to the object).
    pub const ABNORMAL: u16 = 1006;
    /// The peer broke a rule: here, it stopped reading and its send buffer
    /// filled up.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server met a condition it cannot handle: here, the object's
    /// new worker could not be handed the records of its sockets
    /// (reconnect).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server restarted while handling this socket's message: its
    /// outcome is unknown (reconnect and check).
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later: the object's buffer of undelivered events
    /// overflowed while it was being re-placed.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// One socket's event, from the front door holding it to its object. The
/// frame's body is the message payload (or one part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketEvent {
    /// The object that accepted the socket.
    pub target: Target,
    /// The deadline and (empty) call chain.
    pub meta: CallMeta,
    /// The front door holding the socket: the endpoint its outputs go to.
    pub door: String,
    /// The socket, unique within its front door.
    pub socket: u64,
    /// When the front door last answered this socket's auto-response
    /// request, in milliseconds since the Unix epoch, if ever.
    pub auto_response_ms: Option<u64>,
    /// What happened.
    pub kind: SocketEventKind,
}

/// What happened on a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketEventKind {
    /// A whole message (or the last part of one sent in parts): text
    /// (UTF-8) or binary.
    Message {
        /// Binary rather than text.
        binary: bool,
    },
    /// A leading part of a message too large for one frame; the parts that
    /// follow, up to a [`SocketEventKind::Message`], complete it. Not a
    /// turn of its own.
    Part {
        /// The message's first part: whatever an earlier, failed attempt
        /// left is dropped.
        first: bool,
    },
    /// The socket closed: the client sent a close frame (`was_clean`), or
    /// the connection ended without one (code 1006), or the front door
    /// closed it (a limit; the code says which).
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
        /// Whether the close handshake completed.
        was_clean: bool,
    },
    /// The socket failed (a protocol error, a reset connection); it is
    /// closed.
    Error {
        /// What went wrong.
        message: String,
    },
    /// Whole messages of the object's sockets, in arrival order, in one
    /// call: each is a turn of its own, run as if sent one by one, but they
    /// share the trip and the object's commits. The frame's body holds
    /// their payloads one after the other, in order. A front door sends
    /// what queued for an object while its previous call ran. The call
    /// answers once every message's turn is answered; if one failed, its
    /// error (when the outcome of any may be unknown, that of the whole
    /// batch is).
    Messages {
        /// The messages, in order.
        messages: Vec<BatchedMessage>,
    },
    /// The front door's record of every socket it holds for the object,
    /// replacing what the worker knew (after the object's worker changed).
    /// Not a turn. Records too large for one frame travel in several
    /// `Sync`s, the first without `continued`, the last without `more`:
    /// the worker keeps the parts and takes them all at the last, so
    /// nothing sees half of them.
    Sync {
        /// The sockets.
        sockets: Vec<SocketRecord>,
        /// The object's auto-response pair, if it set one (what the last
        /// part says holds).
        auto_response: Option<(String, String)>,
        /// More records of this hand-over follow in the next `Sync`.
        more: bool,
        /// Continues a hand-over whose earlier parts came before.
        continued: bool,
    },
}

/// One message of a [`SocketEventKind::Messages`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchedMessage {
    /// The socket it came from.
    pub socket: u64,
    /// Binary rather than text.
    pub binary: bool,
    /// The payload's length in the frame's body.
    pub len: u32,
    /// When the socket's auto-response was last answered, if ever.
    pub auto_response_ms: Option<u64>,
}

/// What a front door keeps of one accepted socket, as it hands it to the
/// object's new worker after a crash or a move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketRecord {
    /// The socket.
    pub socket: u64,
    /// Its tags, as given at accept.
    pub tags: Vec<String>,
    /// Its serialized attachment, if any.
    pub attachment: Option<Vec<u8>>,
    /// When its auto-response was last answered, if ever.
    pub auto_response_ms: Option<u64>,
}

/// What one front door holds of one object's sockets, as it hands them to
/// the new holder of the object's shard when asked
/// ([`crate::wire::Request::SocketRecords`]): in a cluster a room's
/// members may be held by the doors of several hosts, and the shard's new
/// owner learns of every door's sockets before it serves the shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorSockets {
    /// The front door (its endpoint, where the object's outputs go).
    pub door: String,
    /// The object.
    pub object: ObjectId,
    /// Its sockets held there.
    pub sockets: Vec<SocketRecord>,
    /// The object's auto-response pair, as that door keeps it.
    pub auto_response: Option<(String, String)>,
}

/// Asks a front door for one page of its records of the sockets of one
/// shard's objects ([`crate::wire::Request::SocketRecords`]): they may
/// pass one frame, so they come in pages, in (object, socket) order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSockets {
    /// The shard.
    pub shard: u32,
    /// The number of shards (an object's shard is `id.shard(count)`).
    pub shard_count: u32,
    /// Where the page starts: after this (object, socket), the `next` of
    /// the page before; `None` for the first page.
    pub after: Option<(ObjectId, u64)>,
}

/// One page of a front door's records of a shard's sockets
/// ([`crate::wire::Response::SocketRecords`]). An object's sockets may
/// straddle two pages: [`append_page`] joins them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSocketsPage {
    /// The objects' records, in object order, each object's in socket
    /// order.
    pub objects: Vec<DoorSockets>,
    /// Where the next page starts (ask again with it as `after`); `None`
    /// when this page is the last.
    pub next: Option<(ObjectId, u64)>,
}

/// Appends `page` to `all`, the pages of one door before it: an object
/// whose sockets began on the page before continues its entry there.
pub fn append_page(all: &mut Vec<DoorSockets>, page: Vec<DoorSockets>) {
    for entry in page {
        match all.last_mut() {
            Some(last) if last.door == entry.door && last.object == entry.object => {
                last.sockets.extend(entry.sockets);
                if entry.auto_response.is_some() {
                    last.auto_response = entry.auto_response;
                }
            }
            _ => all.push(entry),
        }
    }
}

impl SocketRecord {
    /// About what the record takes in a frame, over-estimated: its tags,
    /// its attachment, and 64 bytes for its numbers, lengths and framing.
    /// What pages of records are cut by.
    pub fn estimated_bytes(&self) -> usize {
        64 + self.attachment.as_ref().map_or(0, Vec::len)
            + self.tags.iter().map(|t| t.len() + 8).sum::<usize>()
    }
}

/// Outputs of an object's turns for the sockets one front door holds, in
/// the order the object made them. The frame's body holds the payloads of
/// the ops, one after the other, in op order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOutput {
    /// The ops, applied in order.
    pub ops: Vec<SocketOp>,
}

/// One output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketOp {
    /// Sends the next `len` bytes of the body to each socket.
    Send {
        /// The sockets, in the order the object sent to them.
        sockets: Vec<u64>,
        /// Binary rather than text.
        binary: bool,
        /// The payload's length in the body.
        len: u32,
        /// The payload continues in the next `Send` to the same sockets
        /// (a message too large for one frame).
        more: bool,
        /// The payload continues the previous `Send` to the same sockets
        /// (that one had `more`). A door that holds the start of a message
        /// and gets a `Send` that does not continue it knows the rest was
        /// lost; one that gets a continuation without a start knows its
        /// start was.
        continued: bool,
        /// Names a message sent in parts among those of its sender: every
        /// part of one message carries the same, and a sender never gives
        /// two messages the same (it counts up from a random start), so
        /// parts of two senders to the same sockets (a host that lost its
        /// shard pushing late beside the shard's new owner) are never
        /// joined. 0 for a message in one part.
        message: u64,
    },
    /// Closes a socket with a close frame.
    Close {
        /// The socket.
        socket: u64,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Sets a socket's attachment to the next `len` bytes of the body
    /// (`None`: removes it).
    Attach {
        /// The socket.
        socket: u64,
        /// The attachment's length in the body, or `None`.
        len: Option<u32>,
    },
    /// Sets (or, with `None`, removes) the object's auto-response pair: a
    /// socket of the object that receives exactly the request text is
    /// answered the response text by the front door.
    AutoResponse {
        /// The object.
        object: ObjectId,
        /// The request and response texts.
        pair: Option<(String, String)>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Namespace;

    fn entry(door: &str, object: &str, sockets: &[u64]) -> DoorSockets {
        DoorSockets {
            door: door.into(),
            object: Namespace::new("ROOM").id_from_name(object),
            sockets: sockets
                .iter()
                .map(|&socket| SocketRecord {
                    socket,
                    tags: Vec::new(),
                    attachment: None,
                    auto_response_ms: None,
                })
                .collect(),
            auto_response: None,
        }
    }

    #[test]
    fn pages_join_an_object_that_straddles_them() {
        let mut all = Vec::new();
        append_page(
            &mut all,
            vec![entry("d", "a", &[1]), entry("d", "b", &[2, 3])],
        );
        append_page(&mut all, vec![entry("d", "b", &[4]), entry("d", "c", &[5])]);
        append_page(&mut all, vec![entry("e", "c", &[6])]);
        assert_eq!(
            all,
            vec![
                entry("d", "a", &[1]),
                entry("d", "b", &[2, 3, 4]),
                entry("d", "c", &[5]),
                entry("e", "c", &[6]),
            ]
        );
    }
}
