//! The scripted object service the door tests run against, and their
//! helpers. The service answers each message by echoing `echo:{text}` to
//! its socket through [`Door::apply`], as a worker's output would. `hold`
//! makes its call wait until the test releases it, so the messages sent
//! meanwhile queue at the door; `lose` answers "outcome unknown" (a worker
//! that died mid-call), `unknown` "unknown socket" (nothing ran: a socket
//! the worker was never handed, even after the door's hand-over), `fail` a
//! failed turn; `bigclose` sends 16 messages of 64 KiB, then closes the
//! socket (4000).

#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use odo_core::socket::{ACCEPT_TAGS_HEADER, SocketEventKind, SocketOp, SocketOutput};
use odo_core::{ObjectId, WireError};
use odo_router::{
    Client, ClientWebSocket, Door, ForwardError, Location, ObjectAddress, ObjectService,
    SocketEventOut, WebSocketConfig,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A bound on every wait: a failure guard, not a timing.
pub(crate) const GUARD: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Scripted {
    pub(crate) door: OnceLock<Door>,
    /// The messages of each call carrying messages, in call order.
    pub(crate) calls: Mutex<Vec<Vec<String>>>,
    /// Released by the test (`notify_one` keeps a permit for a call not
    /// waiting yet): lets a `hold` call finish.
    pub(crate) release: Arc<Notify>,
    /// Upgrade requests the service received.
    pub(crate) fetches: std::sync::atomic::AtomicUsize,
    /// The sockets whose close event reached the service.
    pub(crate) closes: Mutex<Vec<u64>>,
    /// Refuse every hand-over of socket records (as a worker refuses one
    /// too large for a frame).
    pub(crate) refuse_sync: std::sync::atomic::AtomicBool,
}

impl Scripted {
    pub(crate) fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl ObjectService for Scripted {
    fn fetch(
        &self,
        _object: ObjectAddress,
        request: http::Request<Bytes>,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Every upgrade is accepted, without tags; one to a path ending in
        // `/held` only once the test releases it.
        let held = request
            .uri()
            .path()
            .ends_with("/held")
            .then(|| self.release.clone());
        let mut response = http::Response::new(Bytes::new());
        *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(ACCEPT_TAGS_HEADER, http::HeaderValue::from_static("[]"));
        async move {
            if let Some(release) = held {
                release.notified().await;
            }
            Ok(response)
        }
        .boxed()
    }

    fn call(
        &self,
        _object: ObjectAddress,
        _method: String,
        _args: Bytes,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>> {
        async { Err(ForwardError::Unavailable("no RPC here".into())) }.boxed()
    }

    fn locate(&self, _id: &ObjectId) -> Option<Location> {
        None
    }

    fn socket_event(
        &self,
        _object: ObjectAddress,
        event: SocketEventOut,
        mut payload: Bytes,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        let messages: Vec<(u64, String)> = match event.kind {
            SocketEventKind::Message { .. } => {
                vec![(event.socket, String::from_utf8_lossy(&payload).into_owned())]
            }
            SocketEventKind::Messages { messages } => messages
                .iter()
                .map(|m| {
                    let text = payload.split_to(m.len as usize);
                    (m.socket, String::from_utf8_lossy(&text).into_owned())
                })
                .collect(),
            SocketEventKind::Close { .. } => {
                self.closes.lock().unwrap().push(event.socket);
                return async { Ok(()) }.boxed();
            }
            SocketEventKind::Sync { .. }
                if self.refuse_sync.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                return async {
                    Err(ForwardError::Object(WireError::BadRequest {
                        message: "the hand-over is larger than a frame".into(),
                    }))
                }
                .boxed();
            }
            _ => return async { Ok(()) }.boxed(),
        };
        let texts: Vec<String> = messages.iter().map(|(_, t)| t.clone()).collect();
        self.calls.lock().unwrap().push(texts.clone());
        let door = self.door.get().expect("the door is set").clone();
        let held = texts
            .iter()
            .any(|t| t == "hold")
            .then(|| self.release.clone());
        async move {
            if let Some(release) = held {
                release.notified().await;
            }
            if texts.iter().any(|t| t == "unknown") {
                return Err(ForwardError::Object(WireError::UnknownSocket));
            }
            for (socket, text) in &messages {
                if text == "bigclose" {
                    // A last snapshot, then goodbye: 16 messages of 64 KiB,
                    // then the object closes the socket (4000).
                    let chunk = "x".repeat(64 * 1024);
                    let mut ops = Vec::new();
                    let mut body = Vec::new();
                    for _ in 0..16 {
                        ops.push(SocketOp::Send {
                            sockets: vec![*socket],
                            binary: false,
                            len: chunk.len() as u32,
                            more: false,
                            continued: false,
                            message: 0,
                        });
                        body.extend_from_slice(chunk.as_bytes());
                    }
                    ops.push(SocketOp::Close {
                        socket: *socket,
                        code: 4000,
                        reason: "bye".into(),
                    });
                    door.apply(SocketOutput { ops }, Bytes::from(body))
                        .expect("the door takes it");
                    continue;
                }
                if text == "lose" {
                    return Err(ForwardError::Lost("the worker died on purpose".into()));
                }
                let echo = format!("echo:{text}");
                let output = SocketOutput {
                    ops: vec![SocketOp::Send {
                        sockets: vec![*socket],
                        binary: false,
                        len: echo.len() as u32,
                        more: false,
                        continued: false,
                        message: 1,
                    }],
                };
                door.apply(output, Bytes::from(echo))
                    .expect("the door takes it");
            }
            if texts.iter().any(|t| t == "fail") {
                return Err(ForwardError::Object(WireError::ObjectReset {
                    reason: "failed on purpose".into(),
                }));
            }
            Ok(())
        }
        .boxed()
    }
}

pub(crate) struct Setup {
    pub(crate) service: Arc<Scripted>,
    pub(crate) door: Door,
    pub(crate) client: Client,
}

pub(crate) fn setup() -> Setup {
    setup_with(WebSocketConfig::default())
}

pub(crate) fn setup_with(config: WebSocketConfig) -> Setup {
    let service = Arc::new(Scripted::default());
    let door = Door::new(config, "test-door", service.clone());
    assert!(service.door.set(door.clone()).is_ok(), "set once");
    let client = Client::new(service.clone()).with_websockets(door.clone());
    Setup {
        service,
        door,
        client,
    }
}

impl Setup {
    pub(crate) async fn open(&self) -> ClientWebSocket {
        self.open_at("r").await
    }

    /// Opens a socket to room `name`.
    pub(crate) async fn open_at(&self, name: &str) -> ClientWebSocket {
        let room = self.client.namespace("ROOM").get_by_name(name);
        let request = http::Request::get(format!("/room/{name}/ws"))
            .body(())
            .unwrap();
        tokio::time::timeout(GUARD, room.websocket(request))
            .await
            .expect("the upgrade is answered")
            .expect("accepted")
    }

    /// Waits until `n` events wait at the door.
    pub(crate) async fn queued(&self, n: usize) {
        let start = Instant::now();
        while self.door.queued_events() < n {
            assert!(start.elapsed() < GUARD, "{n} events never queued");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until the service saw `n` calls carrying messages.
    pub(crate) async fn called(&self, n: usize) {
        let start = Instant::now();
        while self.service.calls().len() < n {
            assert!(start.elapsed() < GUARD, "{n} calls never came");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sends "hold" on `ws` and waits until its call runs (the object's
    /// pump is then busy, so what follows queues).
    pub(crate) async fn hold(&self, ws: &mut ClientWebSocket) {
        let before = self.service.calls().len();
        ws.send(Message::text("hold")).await.unwrap();
        self.called(before + 1).await;
    }
}

/// Three sockets; `a`'s call is held while `b` sends `b_sends` and `c`
/// sends "c1", which queue behind it, then released: `b`'s and `c`'s
/// messages go as one batch. Returns the sockets once `a` has its echo.
pub(crate) async fn batch_of(
    s: &Setup,
    b_sends: &str,
) -> (ClientWebSocket, ClientWebSocket, ClientWebSocket) {
    let mut a = s.open().await;
    let mut b = s.open().await;
    let mut c = s.open().await;
    s.hold(&mut a).await;
    b.send(Message::text(b_sends)).await.unwrap();
    s.queued(1).await;
    c.send(Message::text("c1")).await.unwrap();
    s.queued(2).await;
    s.service.release.notify_one();
    assert_eq!(text(&mut a).await, "echo:hold");
    (a, b, c)
}

pub(crate) async fn text(ws: &mut ClientWebSocket) -> String {
    match tokio::time::timeout(GUARD, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub(crate) async fn close_code(ws: &mut ClientWebSocket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}
