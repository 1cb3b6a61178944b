//! What the front-door tests share: a small real [`ObjectService`] (an echo:
//! every request's body comes back with status 200), a router on a loopback
//! listener, and raw-socket helpers to speak HTTP/1.1 by hand.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::ObjectId;
use odo_router::{
    ForwardError, Location, ObjectAddress, ObjectService, PathRoutes, PlainRoutes, Router,
    RouterConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Answers every fetch with 200 and the request's body (repeated as many
/// times as an `x-echo-times` header says); every call with its arguments.
#[derive(Debug)]
pub struct Echo;

impl ObjectService for Echo {
    fn fetch(
        &self,
        _object: ObjectAddress,
        request: http::Request<Bytes>,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        let times = request
            .headers()
            .get("x-echo-times")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(1);
        let body = request.into_body();
        let body = if times == 1 {
            body
        } else {
            Bytes::from(body.repeat(times))
        };
        async move { Ok(http::Response::new(body)) }.boxed()
    }

    fn call(
        &self,
        _object: ObjectAddress,
        _method: String,
        args: Bytes,
        _deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>> {
        async move { Ok(args) }.boxed()
    }

    fn locate(&self, _id: &ObjectId) -> Option<Location> {
        None
    }
}

/// The router over [`Echo`], objects under `/echo/{name}`, and the plain
/// route `GET /hello` (no object involved).
pub fn echo_router(config: RouterConfig) -> Arc<Router> {
    let routes = Arc::new(PathRoutes::new(256).route("echo", "ECHO"));
    let plain = PlainRoutes::default().route(http::Method::GET, "/hello", |_request| async {
        http::Response::new(Bytes::from_static(b"hello"))
    });
    Arc::new(Router::new(routes, Arc::new(Echo), config).with_plain_routes(plain))
}

/// A router serving on a loopback port; dropping it stops the router and
/// waits for it.
#[derive(Debug)]
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// Binds 127.0.0.1:0 and serves [`echo_router`] there.
    pub async fn start(config: RouterConfig) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = echo_router(config);
        let task = tokio::spawn(async move {
            router
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Served {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the router and waits until `serve` returned.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A bound on every wait in these tests: a failure guard, not a timing.
pub const GUARD: Duration = Duration::from_secs(10);

/// What a raw read saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes (the first read that returned any).
    Data(Vec<u8>),
    /// The server closed the connection (end of file or reset).
    Closed,
    /// Nothing within the wait.
    Silence,
}

/// Reads once from `stream`, waiting at most `wait`.
pub async fn read_some(stream: &mut TcpStream, wait: Duration) -> Read {
    let mut buf = vec![0u8; 64 * 1024];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Err(_) => Read::Silence,
        Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
        Ok(Ok(n)) => Read::Data(buf[..n].to_vec()),
    }
}

/// Reads until the server closes the connection, or `wait` passes; returns
/// everything read, and whether it closed.
pub async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + wait;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (all, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (all, true),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET /hello` on a kept-alive HTTP/1.1 connection and reads the
/// whole answer (its body is `hello`); returns the status line.
pub async fn hello(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + GUARD;
    while !got.ends_with(b"hello") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an answer to GET /hello within the guard")
            .expect("read");
        assert!(n > 0, "the connection closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_owned()
}

/// Connects to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    tokio::time::timeout(GUARD, TcpStream::connect(addr))
        .await
        .expect("connect within the guard")
        .expect("connect")
}

/// Reads an answer's head (up to the blank line), lowercased; the reads
/// may take part of the body too.
pub async fn answer_head(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("an answer within the guard")
            .expect("the answer, not a reset");
        assert!(n > 0, "closed before the answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_lowercase()
}
