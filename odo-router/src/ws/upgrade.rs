//! An upgrade request: checked, counted against the sockets cap, and
//! forwarded to the object, which accepts the socket (a `101` carrying its
//! tags) or answers like any request.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderValue, StatusCode};
use odo_core::ObjectAddress;
use odo_core::socket::{
    ACCEPT_TAGS_HEADER, SocketEventKind, UPGRADE_DOOR_HEADER, UPGRADE_SOCKET_HEADER, close_code,
};
use tokio::time::Instant;
use tracing::debug;

use super::{ClientWebSocket, Door, Obj, Outbound, Socket, served};
use crate::service::ForwardError;

/// What the front door answers an upgrade request.
#[derive(Debug)]
pub(crate) enum Upgrade {
    /// The `101` that switches the connection: sent as it is.
    Switch(http::Response<Bytes>),
    /// The object's answer (it did not accept), or the door's refusal.
    Answer(http::Response<Bytes>),
    /// Forwarding failed.
    Failed(ForwardError),
}

fn refuse(status: StatusCode, message: &str) -> Upgrade {
    let mut response = http::Response::new(Bytes::from(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Upgrade::Answer(response)
}

/// Whether `headers` ask for a WebSocket (`Upgrade: websocket`).
pub(crate) fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

fn has_token(headers: &http::HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `key` is a `Sec-WebSocket-Key` as RFC 6455 has it: 16 bytes
/// in canonical base64 (padded, no bits past the 16th byte).
fn valid_key(key: &[u8]) -> bool {
    data_encoding::BASE64
        .decode(key)
        .is_ok_and(|bytes| bytes.len() == 16)
}

impl Door {
    /// Handles an upgrade request for `object`.
    pub(crate) async fn upgrade(
        &self,
        object: ObjectAddress,
        mut parts: http::request::Parts,
        deadline: Instant,
    ) -> Upgrade {
        if parts.method != http::Method::GET {
            return refuse(StatusCode::BAD_REQUEST, "a WebSocket upgrade must be a GET");
        }
        if !has_token(&parts.headers, CONNECTION, "upgrade") {
            return refuse(StatusCode::BAD_REQUEST, "Connection: upgrade is missing");
        }
        if parts
            .headers
            .get(http::header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut answer = refuse(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
            if let Upgrade::Answer(r) = &mut answer {
                r.headers_mut().insert(
                    http::header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return answer;
        }
        let Some(key) = parts.headers.get(SEC_WEBSOCKET_KEY).cloned() else {
            return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing");
        };
        if !valid_key(key.as_bytes()) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key must be 16 bytes in base64",
            );
        }
        if self.inner.closing.load(Ordering::SeqCst) {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            );
        }
        let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return refuse(StatusCode::BAD_REQUEST, "WebSocket upgrades need HTTP/1.1");
        };
        let (id, out, response) = match self.open(object, parts, deadline).await {
            Ok(opened) => opened,
            Err(answer) => return answer,
        };
        let mut switch = http::Response::new(Bytes::new());
        *switch.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = switch.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) =
            HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
        {
            h.insert(SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(protocol) = response.headers().get(SEC_WEBSOCKET_PROTOCOL) {
            h.insert(SEC_WEBSOCKET_PROTOCOL, protocol.clone());
        }
        let upgraded = async move {
            on_upgrade
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(|e| e.to_string())
        };
        served::start(self.clone(), id, upgraded, out);
        Upgrade::Switch(switch)
    }

    /// Registers a socket for `object`, counted against the cap, and
    /// forwards the upgrade request to the object; the socket's number and
    /// queue and the object's `101` when it accepted.
    pub(super) async fn open(
        &self,
        object: ObjectAddress,
        mut parts: http::request::Parts,
        deadline: Instant,
    ) -> Result<(u64, std::sync::Arc<Outbound>, http::Response<Bytes>), Upgrade> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        // Counted against the cap from now on, until the socket is gone.
        let max = self.config().max_sockets;
        if self
            .inner
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("at the limit of {max} open WebSockets: retry later"),
            ));
        }
        let id = self.inner.next_socket.fetch_add(1, Ordering::Relaxed);
        let out = Outbound::new(self.clock_ms());
        {
            let mut state = self.state();
            state.sockets.insert(
                id,
                Socket {
                    object: object.id,
                    accepted: false,
                    tags: Box::default(),
                    attachment: None,
                    auto_response_ms: None,
                    out: out.clone(),
                },
            );
            state
                .objects
                .entry(object.id)
                .or_insert_with(|| Obj {
                    address: object.clone(),
                    sockets: BTreeSet::new(),
                    auto_response: None,
                    queue: Default::default(),
                    queued_bytes: 0,
                    pumping: false,
                })
                .sockets
                .insert(id);
        }
        let mut registration = Registration {
            door: self,
            id,
            armed: true,
        };
        // The object learns which socket it may accept; a client cannot
        // name one itself.
        let headers = &mut parts.headers;
        headers.remove(UPGRADE_DOOR_HEADER);
        headers.remove(UPGRADE_SOCKET_HEADER);
        for name in [
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-extensions",
        ] {
            headers.remove(name);
        }
        if let (Ok(door), Ok(socket)) = (
            HeaderValue::from_str(self.endpoint()),
            HeaderValue::from_str(&id.to_string()),
        ) {
            headers.insert(UPGRADE_DOOR_HEADER, door);
            headers.insert(UPGRADE_SOCKET_HEADER, socket);
        }
        let request = http::Request::from_parts(parts, Bytes::new());
        let answer = self.inner.service.fetch(object, request, deadline).await;
        registration.armed = false;
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                self.forget(id);
                return Err(Upgrade::Failed(e));
            }
        };
        let accepted = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let tags = response
            .headers()
            .get(ACCEPT_TAGS_HEADER)
            .and_then(|v| serde_json::from_slice::<Vec<String>>(v.as_bytes()).ok());
        let (true, Some(tags)) = (accepted, tags) else {
            self.forget(id);
            if accepted {
                return Err(refuse(
                    StatusCode::BAD_GATEWAY,
                    "the object answered 101 without accepting the WebSocket",
                ));
            }
            return Err(Upgrade::Answer(response));
        };
        if let Some(socket) = self.state().sockets.get_mut(&id) {
            socket.tags = tags.into_boxed_slice();
            socket.accepted = true;
        }
        debug!(socket = id, "WebSocket accepted");
        Ok((id, out, response))
    }

    /// Opens a WebSocket to `object` for a program in this process (the
    /// Rust `Client`): the same upgrade, over an in-process pipe instead of
    /// an HTTP connection. `request`'s path and headers reach the object.
    pub(crate) async fn connect(
        &self,
        object: ObjectAddress,
        request: http::Request<()>,
        deadline: Instant,
    ) -> Result<ClientWebSocket, Upgrade> {
        let (parts, ()) = request.into_parts();
        let (id, out, _) = self.open(object, parts, deadline).await?;
        let (door_end, client_end) = tokio::io::duplex(64 * 1024);
        served::start(self.clone(), id, async move { Ok(door_end) }, out);
        Ok(tokio_tungstenite::WebSocketStream::from_raw_socket(
            client_end,
            tungstenite::protocol::Role::Client,
            None,
        )
        .await)
    }

    /// Drops a socket that was never opened (the object answered, and did
    /// not accept it): no event, nothing kept.
    fn forget(&self, id: u64) {
        let mut state = self.state();
        if let Some(socket) = state.sockets.remove(&id)
            && let Some(obj) = state.objects.get_mut(&socket.object)
        {
            obj.sockets.remove(&id);
            if obj.idle() {
                state.objects.remove(&socket.object);
            }
        }
        drop(state);
        self.inner.open.fetch_sub(1, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
    }
}

/// A socket registered for an upgrade whose answer has not come yet.
/// Dropped armed (the upgrade's future was dropped: its client went away,
/// its connection timed out), it lets the socket go: the socket leaves
/// the door's maps and the cap, and its object gets a close event, since
/// it may have accepted the socket before the answer was lost.
struct Registration<'a> {
    door: &'a Door,
    id: u64,
    armed: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            debug!(
                socket = self.id,
                "an upgrade ended before its answer: letting its socket go"
            );
            self.door.socket_gone(
                self.id,
                SocketEventKind::Close {
                    code: close_code::ABNORMAL,
                    reason: "the client left before the upgrade was answered".into(),
                    was_clean: false,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn a_key_is_16_bytes_in_base64() {
        // RFC 6455's example, and the extremes of the alphabet.
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
            "+++++++++++++++++++++g==",
        ] {
            assert!(valid_key(key.as_bytes()), "{key}");
        }
        for key in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25jZQ===",
            // Bits past the 16th byte.
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25j!Q==",
            "dGhlIHNhbXBsZSBub25jZQ.=",
            // 17 bytes, 15 bytes.
            "dGhlIHNhbXBsZSBub25jZQ1=",
            "dGhlIHNhbXBsZSBub25j",
        ] {
            assert!(!valid_key(key.as_bytes()), "{key}");
        }
    }
}
