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

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use odo_core::socket::{
    ShardSockets, ShardSocketsPage, SocketOutput, UPGRADE_DOOR_HEADER, UPGRADE_SOCKET_HEADER,
};

mod book;
mod view;

pub(crate) use book::{SocketBook, SocketKey, SyncRefused};
pub use view::WebSocket;
pub(crate) use view::{DoorOutput, SocketView};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
    #[test]
    fn the_default_cap_is_cloudflares() {
        assert_eq!(
            crate::RuntimeConfig::default().websocket_max_sockets_per_object,
            super::MAX_SOCKETS_PER_OBJECT
        );
    }
}
