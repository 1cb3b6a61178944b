//! One socket's connection once upgraded: a reader that relays what the
//! client sends (answering the auto-response itself), a writer that sends
//! what the socket's queue holds, and how the connection ended, which the
//! object is told.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use odo_core::socket::{SocketEventKind, close_code};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tungstenite::Message;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::{CloseFrame, Role};

use super::{Door, Kill, Outbound, message_len};

/// How long a socket the door closes at shutdown has to take its close
/// frame. Otherwise (a limit, a client that stopped reading) it has the
/// idle timeout: a client that reads again within it finds the close
/// frame after what it had not read yet.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// tungstenite's read buffer per socket, which is also the most one read
/// takes from the connection.
const READ_BUFFER: usize = 512;

/// What a socket's connection runs over: an upgraded HTTP connection, or
/// one end of an in-process pipe (a Rust `Client`'s socket).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Runs socket `id` from its upgrade to its end, then tells its object.
pub(super) async fn run<S: Io>(
    door: Door,
    id: u64,
    io: impl Future<Output = Result<S, String>>,
    out: Arc<Outbound>,
) {
    let upgraded = match io.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            door.socket_gone(
                id,
                SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: format!("the upgrade failed: {e}"),
                    was_clean: false,
                },
            );
            return;
        }
    };
    let config = door.config();
    // tungstenite allocates its read buffer up front and zero-fills it
    // before every read, so each idle socket keeps it resident: 512 bytes
    // (a chat message and its header in one read) rather than 4 KiB costs
    // an idle socket 3.5 KiB less, and a large message more reads
    // (`cargo xtask bench websocket`, idle).
    let protocol = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_message_bytes.saturating_add(64 * 1024));
    let idle = config.idle_timeout;
    let stream = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(protocol)).await;
    let (sink, reader) = stream.split();
    let mut writer = tokio::spawn(write_loop(sink, out.clone()));
    let last = read_loop(&door, id, reader, &out, idle).await;
    if out.kill_reason().is_none() {
        writer.abort();
        door.socket_gone(id, last);
        return;
    }
    // The door closed it: its object hears of it now; the connection stays
    // (counted against the cap, holding at most the frame it was writing)
    // until its close frame is out, within a bound.
    let known = door.let_go(id, last);
    let grace = if door.closing() { CLOSE_GRACE } else { idle };
    if tokio::time::timeout(grace, &mut writer).await.is_err() {
        writer.abort();
    }
    if known {
        door.connection_gone();
    }
}

async fn read_loop<S: Io>(
    door: &Door,
    id: u64,
    mut reader: futures_util::stream::SplitStream<WebSocketStream<S>>,
    out: &Outbound,
    idle: Duration,
) -> SocketEventKind {
    let mut pinged = false;
    let mut closed_by_client: Option<(u16, String)> = None;
    loop {
        let next = tokio::select! {
            biased;
            () = out.killed.cancelled() => {
                let kill = out.kill_reason().unwrap_or(Kill {
                    code: close_code::GOING_AWAY,
                    reason: "closed",
                });
                return SocketEventKind::Close {
                    code: kill.code,
                    reason: kill.reason.to_owned(),
                    was_clean: false,
                };
            }
            next = tokio::time::timeout(idle, reader.next()) => next,
        };
        let next = match next {
            Err(_) if pinged => {
                return SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: "the client stopped answering (half-open connection)".into(),
                    was_clean: false,
                };
            }
            Err(_) => {
                pinged = true;
                out.push(Message::Ping(Bytes::from_static(b"odo")), usize::MAX);
                continue;
            }
            Ok(next) => next,
        };
        pinged = false;
        match next {
            None => break,
            Some(Ok(message)) => match message {
                Message::Text(text) => {
                    if !door.auto_respond(id, text.as_str()) {
                        door.relay(
                            id,
                            SocketEventKind::Message { binary: false },
                            Bytes::from(text),
                        );
                    }
                }
                Message::Binary(bytes) => {
                    door.relay(id, SocketEventKind::Message { binary: true }, bytes);
                }
                Message::Close(frame) => {
                    closed_by_client = Some(match frame {
                        Some(CloseFrame { code, reason }) => {
                            (u16::from(code), reason.as_str().to_owned())
                        }
                        None => (1005, String::new()),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            },
            // The connection ended without a close frame (a tab closed, a
            // reset): a close the object hears as 1006.
            Some(Err(
                WsError::ConnectionClosed
                | WsError::AlreadyClosed
                | WsError::Io(_)
                | WsError::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake),
            )) => break,
            Some(Err(WsError::Capacity(e))) => {
                out.kill(Kill {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: "message too big",
                });
                return SocketEventKind::Close {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: e.to_string(),
                    was_clean: false,
                };
            }
            Some(Err(WsError::Protocol(e))) => {
                out.kill(Kill {
                    code: 1002,
                    reason: "protocol error",
                });
                return SocketEventKind::Error {
                    message: format!("protocol error: {e}"),
                };
            }
            Some(Err(WsError::Utf8(e))) => {
                out.kill(Kill {
                    code: 1007,
                    reason: "text that is not UTF-8",
                });
                return SocketEventKind::Error {
                    message: format!("invalid text: {e}"),
                };
            }
            Some(Err(e)) => {
                return SocketEventKind::Error {
                    message: e.to_string(),
                };
            }
        }
    }
    match closed_by_client {
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

/// Sends what the socket's queue holds, several messages per flush; when
/// the door closes the socket, sends its close frame and stops.
///
/// A message counts against the socket's send buffer until it is handed to
/// the connection; a write that waits on a client that does not read is
/// given up when the door closes the socket (the messages not written yet
/// are dropped), and the close frame follows what the connection holds.
async fn write_loop<S: Io>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    out: Arc<Outbound>,
) {
    let mut batch = Vec::new();
    let kill = 'write: loop {
        match out.take(&mut batch) {
            Err(kill) => break 'write kill,
            Ok(()) if batch.is_empty() => out.ready.notified().await,
            Ok(()) => {
                for message in batch.drain(..) {
                    let close = matches!(message, Message::Close(_));
                    let len = message_len(&message);
                    tokio::select! {
                        biased;
                        () = out.killed.cancelled() => continue 'write,
                        fed = sink.feed(message) => if fed.is_err() { return },
                    }
                    out.written(len);
                    if close {
                        let _ = sink.flush().await;
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    () = out.killed.cancelled() => {}
                    flushed = sink.flush() => if flushed.is_err() { return },
                }
            }
        }
    };
    batch.clear();
    let frame = CloseFrame {
        code: kill.code.into(),
        reason: kill.reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}
