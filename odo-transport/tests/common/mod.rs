//! Helpers shared by the transport tests: servers on real sockets, echo and
//! scripted handlers, and raw sockets for sending bad bytes.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Control, Hello, Message, PROTOCOL_VERSION, Request, Response};
use odo_transport::{Channel, ClientConfig, Endpoint, Handler, Server, ServerConfig, handler_fn};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token";
pub const LONG: Duration = Duration::from_secs(30);

/// Which socket type a test runs over.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Unix,
    Tcp,
}

/// A server running in the background until stopped.
pub struct Running {
    pub endpoint: Endpoint,
    stop: Option<oneshot::Sender<()>>,
    stopping: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
    // Keeps the socket directory alive as long as the server.
    pub dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts a graceful shutdown and waits until `serve` returns.
    pub async fn stop(mut self) {
        self.begin_stop();
        (&mut self.task).await.expect("serve panicked");
    }

    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the server has seen the shutdown signal: it no longer
    /// accepts, and its connections drain.
    pub async fn stopping(&mut self) {
        if let Some(stopping) = self.stopping.take() {
            stopping.await.expect("the server sees the shutdown");
        }
    }

    pub async fn join(self) {
        self.task.await.expect("serve panicked");
    }
}

pub fn server_config() -> ServerConfig {
    let mut config = ServerConfig::new(TOKEN);
    config.peer_name = "test server".into();
    config
}

pub fn client_config() -> ClientConfig {
    ClientConfig::new(TOKEN)
}

pub fn endpoint_for(kind: Kind) -> (Endpoint, Option<tempfile::TempDir>) {
    match kind {
        Kind::Tcp => (Endpoint::tcp_loopback_any_port(), None),
        Kind::Unix => {
            let dir = tempfile::tempdir().expect("tempdir");
            let endpoint = format!("unix:{}", dir.path().join("run").join("odo.sock").display())
                .parse()
                .expect("unix endpoint");
            (endpoint, Some(dir))
        }
    }
}

pub async fn start<H: Handler>(kind: Kind, config: ServerConfig, handler: H) -> Running {
    let (endpoint, dir) = endpoint_for(kind);
    start_at(&endpoint, dir, config, handler).await
}

pub async fn start_at<H: Handler>(
    endpoint: &Endpoint,
    dir: Option<tempfile::TempDir>,
    config: ServerConfig,
    handler: H,
) -> Running {
    let server = Server::bind(endpoint, config).await.expect("bind");
    let endpoint = server.endpoint().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (seen, stopping) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(Arc::new(handler), async move {
        let _ = stopped.await;
        let _ = seen.send(());
    }));
    Running {
        endpoint,
        stop: Some(stop),
        stopping: Some(stopping),
        task,
        dir,
    }
}

/// A handler that answers every request with its own body.
pub fn echo() -> impl Handler {
    handler_fn(|_request, body| async move { (Response::Rpc, body) })
}

pub async fn start_echo(kind: Kind) -> Running {
    start(kind, server_config(), echo()).await
}

pub async fn connect(endpoint: &Endpoint) -> Channel {
    Channel::connect(endpoint, client_config())
        .await
        .expect("connect")
}

pub fn request(n: u64) -> Request {
    Request::Control(Control::Heartbeat { now_ms: n })
}

/// Asserts that a fresh channel to `endpoint` still gets answers.
pub async fn assert_serving(endpoint: &Endpoint) {
    let channel = connect(endpoint).await;
    let (response, body) = channel
        .call(request(1), Bytes::from_static(b"still here"), LONG)
        .await
        .expect("a good channel still works");
    assert_eq!(response, Response::Rpc);
    assert_eq!(body, "still here");
}

/// A raw socket, to send bytes no well-behaved client would.
pub trait RawStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RawStream for T {}

pub async fn raw(endpoint: &Endpoint) -> Box<dyn RawStream> {
    match endpoint {
        Endpoint::Tcp { host, port } => Box::new(
            tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .expect("raw tcp connect"),
        ),
        #[cfg(unix)]
        Endpoint::Unix(path) => Box::new(
            tokio::net::UnixStream::connect(path)
                .await
                .expect("raw unix connect"),
        ),
    }
}

/// A frame with its length prefix.
pub fn prefixed(frame: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(frame.len() as u32);
    buf.put_slice(frame);
    buf.freeze()
}

pub fn encoded(frame: &Frame) -> Bytes {
    prefixed(&codec::encode(frame).expect("encode"))
}

pub fn hello(token: &str, protocol_version: u32) -> Bytes {
    encoded(&Frame {
        request_id: 0,
        message: Message::Hello(Hello {
            protocol_version,
            token: token.into(),
            peer: "raw test client".into(),
        }),
        body: Bytes::new(),
    })
}

pub fn good_hello() -> Bytes {
    hello(TOKEN, PROTOCOL_VERSION)
}

pub fn request_frame(request_id: u64, body: &'static [u8]) -> Bytes {
    encoded(&Frame {
        request_id,
        message: Message::Request(request(request_id)),
        body: Bytes::from_static(body),
    })
}

/// Reads one frame; `None` at end of stream or on a reset connection.
pub async fn read_frame(stream: &mut Box<dyn RawStream>) -> Option<Frame> {
    let len = stream.read_u32().await.ok()?;
    let mut buf = vec![0; len as usize];
    stream.read_exact(&mut buf).await.ok()?;
    Some(codec::decode(Bytes::from(buf)).expect("the server sends valid frames"))
}

/// Waits until the server closes the connection (EOF or reset), skipping
/// whatever it still sends.
pub async fn assert_closed_by_server(mut stream: Box<dyn RawStream>) {
    let mut sink = Vec::new();
    // Either outcome means closed: EOF, or a reset because our unread bytes
    // were still in the server's buffer when it closed.
    let _ = tokio::time::timeout(LONG, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes the connection");
}

/// Sends `bytes` on a raw connection and waits for the server to close it.
pub async fn send_and_expect_close(endpoint: &Endpoint, bytes: &[u8]) {
    let mut stream = raw(endpoint).await;
    // The server may close before reading everything; a failed write is
    // fine.
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    assert_closed_by_server(stream).await;
}

/// Signals when dropped: lets a test observe that a handler's future was
/// dropped (cancelled).
pub struct DropSignal(pub Option<tokio::sync::mpsc::UnboundedSender<&'static str>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send("dropped");
        }
    }
}

/// Log lines captured for one test (the test's runtime must be
/// current-thread, so every task logs on the test's thread).
///
/// One global subscriber writes each event into the buffer of the thread
/// that emitted it: per-thread subscribers race on tracing's global level
/// cache when tests run in parallel.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Stops capturing this thread's logs when dropped.
pub struct CaptureGuard(());

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

#[derive(Clone, Copy)]
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().expect("log buffer").extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's log output until the guard is dropped.
    pub fn capture() -> (Logs, CaptureGuard) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        });
        let logs = Logs::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(logs.clone()));
        (logs, CaptureGuard(()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }

    /// Asserts that some line contains every one of `parts`.
    pub fn assert_line(&self, parts: &[&str]) {
        let text = self.text();
        assert!(
            text.lines()
                .any(|line| parts.iter().all(|p| line.contains(p))),
            "no log line contains {parts:?}; the log:\n{text}"
        );
    }
}
