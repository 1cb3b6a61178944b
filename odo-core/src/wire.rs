//! The messages that cross process boundaries.
//!
//! Every frame carries one [`Message`] (its envelope, postcard-encoded) and
//! a raw body that is never re-encoded: an HTTP body, RPC arguments or an RPC
//! result. See [`crate::codec`] for the byte layout.
//!
//! postcard is not self-describing: appending an enum variant is the only
//! change that old decoders survive (they reject the new variant as
//! garbage). Any other change, such as a new struct field, bumps
//! [`crate::codec::FORMAT_VERSION`], and the golden snapshots in the codec
//! tests show it.

use serde::{Deserialize, Serialize};

use crate::address::ObjectAddress;
use crate::id::ObjectId;

/// The version of the odo protocol spoken over a connection, checked in the
/// handshake. Bumped when the meaning of messages changes, or when messages
/// are added that a peer of the version before cannot read (2: batches of
/// WebSocket messages, `PartlyDelivered`), so that peers of two versions
/// refuse each other at the handshake rather than mid-conversation.
pub const PROTOCOL_VERSION: u32 = 2;

/// One decoded frame: a request id, an envelope and the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Matches a response to its request. Chosen by the caller; unique among
    /// the calls in flight on one connection.
    pub request_id: u64,
    /// The envelope.
    pub message: Message,
    /// The raw body: bytes the envelope refers to (HTTP body, RPC arguments
    /// or result). Empty for most control messages.
    pub body: bytes::Bytes,
}

/// The envelope of a frame. Its variant is the frame's kind byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame from a client: protocol version and cluster token.
    Hello(Hello),
    /// The server accepted the handshake.
    Welcome(Welcome),
    /// The server (or client) refused the handshake; the connection closes.
    Refused(Refused),
    /// A call.
    Request(Request),
    /// The answer to the call with the same request id.
    Response(Response),
    /// The caller gave up on the call with this request id (deadline or
    /// dropped): the server may stop working on it and sends no response.
    Cancel,
}

impl Message {
    /// The kind byte written in the frame header for this message.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::Refused(_) => Kind::Refused,
            Message::Request(_) => Kind::Request,
            Message::Response(_) => Kind::Response,
            Message::Cancel => Kind::Cancel,
        }
    }
}

/// The kind byte of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`Message::Hello`].
    Hello = 1,
    /// [`Message::Welcome`].
    Welcome = 2,
    /// [`Message::Refused`].
    Refused = 3,
    /// [`Message::Request`].
    Request = 4,
    /// [`Message::Response`].
    Response = 5,
    /// [`Message::Cancel`].
    Cancel = 6,
}

impl Kind {
    /// The kind for a header byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Refused,
            4 => Kind::Request,
            5 => Kind::Response,
            6 => Kind::Cancel,
            _ => return None,
        })
    }
}

/// A client's handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The cluster's shared secret.
    pub token: String,
    /// Who is connecting, for logs (`router`, `worker 3`, `registry`).
    pub peer: String,
}

/// The server's acceptance of a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Who accepted, for logs.
    pub peer: String,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: we speak {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// The refusing side's version.
        ours: u32,
        /// The other side's version.
        theirs: u32,
    },
    /// The token is not this cluster's.
    #[error("wrong cluster token")]
    BadToken,
    /// The first frame was not a handshake.
    #[error("expected a handshake frame first")]
    NotAHandshake,
}

/// The object a request is for, and the placement the sender believes in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The object.
    pub object: ObjectAddress,
    /// The shard the sender computed for the object's id.
    pub shard: u32,
    /// The shard's epoch in the sender's placement.
    pub epoch: u64,
}

/// What a call carries besides its target: how long the callee has, and
/// which objects are waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CallMeta {
    /// The caller's remaining deadline, in milliseconds from when the frame
    /// is sent. The callee passes what is left of it on to the calls it
    /// makes, never a fresh default. 0 means none is left.
    pub deadline_ms: u64,
    /// The objects whose turns wait on this call, outermost first: the
    /// call chain. A call to an object already in its chain would wait on
    /// itself, so it is refused ([`WireError::CallCycle`]). Empty for a
    /// call from outside any object.
    pub chain: Vec<ObjectId>,
}

/// An HTTP header: name and raw value bytes. Repeated headers stay separate
/// entries, in order.
pub type Header = (String, Vec<u8>);

/// A call from one process to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An HTTP-like request for an object; the body is the frame's body.
    Fetch(FetchRequest),
    /// A typed RPC call; the serialized arguments are the frame's body.
    Rpc(RpcCall),
    /// An alarm firing for an object.
    Alarm(AlarmEvent),
    /// A control message between registry and worker.
    Control(Control),
    /// A front door relays an event of a client's WebSocket to its object;
    /// the payload is the frame's body.
    Socket(crate::socket::SocketEvent),
    /// A worker hands the outputs of its objects' turns (sends, closes,
    /// attachments) to the front door holding the sockets; the payloads
    /// are the frame's body.
    SocketOutput(crate::socket::SocketOutput),
    /// A shard's new holder asks a front door for its records of the
    /// sockets of that shard's objects (cluster mode: answered
    /// [`Response::SocketRecords`]).
    SocketRecords(crate::socket::ShardSockets),
}

/// An HTTP-like request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The object.
    pub target: Target,
    /// The deadline and call chain.
    pub meta: CallMeta,
    /// The request's method, URI and headers.
    pub head: HttpHead,
}

/// The head of an HTTP request as the wire carries it: everything but the
/// body, which travels as the frame's raw body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpHead {
    /// The HTTP method, such as `GET`.
    pub method: String,
    /// The request URI, path and query as received.
    pub uri: String,
    /// The headers, repeated ones as separate entries, in order.
    pub headers: Vec<Header>,
}

/// An RPC call to a named method of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcCall {
    /// The object.
    pub target: Target,
    /// The deadline and call chain.
    pub meta: CallMeta,
    /// The method name.
    pub method: String,
}

/// An alarm event delivered to an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// The object.
    pub target: Target,
    /// When the alarm was due, in milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
    /// How many times this alarm already failed (0 on the first run).
    pub retry_count: u32,
}

/// Control messages between the registry and a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Worker to registry, once connected: who it is and where it listens.
    WorkerHello {
        /// The worker's slot number, from its command line.
        worker: u32,
        /// The worker's process id.
        pid: u32,
        /// The endpoint the worker listens on, as `unix:/path` or `tcp:host:port`.
        endpoint: String,
        /// The object classes the worker hosts.
        classes: Vec<String>,
    },
    /// Registry to worker: serve `shard` from now on, at `epoch`.
    AssignShard {
        /// The shard.
        shard: u32,
        /// The shard's new epoch.
        epoch: u64,
    },
    /// Registry to worker: stop serving `shard` (held at `epoch`), flush and
    /// close its store.
    ReleaseShard {
        /// The shard.
        shard: u32,
        /// The epoch the worker holds it at.
        epoch: u64,
    },
    /// Liveness probe, in either direction.
    Heartbeat {
        /// The sender's clock, milliseconds since the Unix epoch.
        now_ms: u64,
    },
    /// Registry to everyone: the current placement table.
    Placement(Placement),
    /// Registry to worker: finish in-flight events, accept no new ones.
    Drain,
    /// Registry to worker: drain, flush, close every store and exit.
    Shutdown,
}

/// Which worker serves each shard, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    /// Bumped on every change of the table.
    pub version: u64,
    /// One entry per shard, indexed by shard number.
    pub shards: Vec<ShardPlacement>,
}

/// Where one shard lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The shard's epoch.
    pub epoch: u64,
    /// The owning worker's endpoint, or `None` while the shard is unassigned.
    pub endpoint: Option<String>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to a fetch; the body is the frame's body.
    Fetch(FetchResponse),
    /// The serialized result of an RPC call is the frame's body.
    Rpc,
    /// The alarm handler ran to completion.
    Alarm,
    /// The answer to a control message.
    Control(ControlReply),
    /// The call failed.
    Error(WireError),
    /// A socket event was handled (its turn's outputs were handed to the
    /// front door first), or a front door applied a socket output.
    Socket,
    /// A page of a front door's records of the sockets of a shard's
    /// objects.
    SocketRecords(crate::socket::ShardSocketsPage),
}

/// An HTTP-like response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The headers, repeated ones as separate entries, in order.
    pub headers: Vec<Header>,
}

/// The answer to a [`Control`] message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Done.
    Ack,
    /// The answer to a heartbeat.
    Heartbeat {
        /// The responder's clock, milliseconds since the Unix epoch.
        now_ms: u64,
        /// Objects live on the responder.
        live_objects: u64,
    },
    /// A worker's answer to a heartbeat: liveness plus the figures the
    /// registry exports as metrics.
    Stats(WorkerStats),
}

/// What a worker reports with each heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's clock, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// Objects live on the worker.
    pub live_objects: u64,
    /// Group commits (batches) since the worker started, over its stores.
    pub commit_batches: u64,
    /// Turns committed in those batches.
    pub commit_turns: u64,
    /// How long the longest poll of object code now running has run, in
    /// milliseconds (0 when none is running): a poll that never returns (an
    /// endless loop, a blocking call) stalls its thread, and the registry
    /// kills a worker stalled past its limit even if it still answers.
    pub stalled_ms: u64,
}

/// Errors that cross processes, with variants a caller acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The shard is not served here at the sender's epoch: refresh the
    /// placement table and retry.
    #[error("shard moved (now at epoch {epoch})")]
    Moved {
        /// The epoch the responder knows of, 0 if it holds no epoch.
        epoch: u64,
    },
    /// The object's handler failed (returned an error or panicked) and the
    /// object was reset: the writes of the failed turn were rolled back
    /// (writes it committed before a call it made stay; see DURABILITY.md).
    #[error("object reset: {reason}")]
    ObjectReset {
        /// What happened.
        reason: String,
    },
    /// The object's queue is full: retry later.
    #[error("object overloaded")]
    Overloaded,
    /// No class of that name is registered.
    #[error("unknown class {class:?}")]
    UnknownClass {
        /// The class that was asked for.
        class: String,
    },
    /// The request is malformed.
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// Anything else; not the caller's fault.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
    /// The call would wait on an object that is already waiting on it: the
    /// target is in the call chain. Refused before delivery.
    #[error("call cycle: {}", cycle_text(chain))]
    CallCycle {
        /// The chain, outermost first, ending with the object called again.
        chain: Vec<ObjectId>,
    },
    /// The call would make a chain of more than `max` objects, each waiting
    /// on the next (as Cloudflare refuses a request that recursed through
    /// too many Workers). Refused before delivery.
    #[error(
        "call chain too deep: the call would be the {depth}th object waiting on the next, at most {max}"
    )]
    CallTooDeep {
        /// The objects the chain would hold with this call's target.
        depth: u32,
        /// The most it may hold.
        max: u32,
    },
    /// The request reached the object, but its outcome is unknown: the
    /// object stopped before answering, or a commit its answer waited for
    /// failed. It may or may not have taken effect: do not retry blindly.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown {
        /// What happened.
        reason: String,
    },
    /// The caller's deadline passed before the object answered (or before
    /// the call could start).
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// A WebSocket event for a socket the object's worker does not know of
    /// (the object's worker changed since the socket was accepted): the
    /// front door hands the worker its record of the object's sockets and
    /// sends the event again. Never delivered.
    #[error("unknown WebSocket: the front door must hand over its sockets first")]
    UnknownSocket,
    /// A batch of WebSocket messages ([`crate::socket::SocketEventKind::Messages`])
    /// ran in part: its first `delivered` messages ran, each answered and
    /// none with an unknown outcome; the rest were never delivered, for
    /// the reason `rest` (the shard moved, say), and may be sent again.
    /// Only a batch's sender can act on it: for anyone else its outcome is
    /// unknown.
    #[error("{delivered} messages of a batch ran; the rest were not delivered: {rest}")]
    PartlyDelivered {
        /// How many messages, from the first, ran.
        delivered: u32,
        /// Why the others were not delivered.
        rest: Box<WireError>,
    },
    /// A worker's answer to [`Control::AssignShard`] when it could not open
    /// the shard's store (corrupt, locked, unreadable): it holds nothing of
    /// the shard. Its supervisor does not kill it for that (it would take
    /// the worker's other shards down with it), and tries the shard again
    /// later.
    #[error("cannot open shard {shard}: {reason}")]
    ShardRefused {
        /// The shard.
        shard: u32,
        /// Why its store would not open.
        reason: String,
    },
}

fn cycle_text(chain: &[ObjectId]) -> String {
    chain
        .iter()
        .map(ObjectId::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

impl WireError {
    /// Whether the request was never delivered to the object and may be
    /// sent again as it is, later or elsewhere: `Moved` (ask the placement
    /// again) and `Overloaded` (the queue was full).
    pub fn retryable(&self) -> bool {
        matches!(self, WireError::Moved { .. } | WireError::Overloaded)
    }
}
