//! The front door's connections: the accept loop and the life of each
//! connection, up to the point where hyper hands a request to
//! [`Router::handle`].
//!
//! Every wait has an end here:
//!
//! - **Accept errors** (out of descriptors, `EMFILE`/`ENFILE`, out of
//!   buffers) pause the loop, 1 ms doubling up to 1 s, reset by the next
//!   accepted connection, and are logged at most once a second with a count
//!   of the ones left out. Errors about one connection (aborted, reset)
//!   retry at once: the next accept waits for the next client anyway.
//! - **The connection cap** ([`RouterConfig::max_connections`]): a client
//!   over it is accepted and answered `503` with `Retry-After` and
//!   `Connection: close` straight on the socket, within a short bound, then
//!   closed; more than [`MAX_REFUSALS`] such answers in flight and the next
//!   is closed without one. Either way it is told at once.
//! - **Timeouts** ([`RouterConfig::header_read_timeout`],
//!   [`RouterConfig::idle_timeout`]): each connection's task watches what
//!   its connection is doing (below) and closes it when the timeout of its
//!   current phase runs out.
//!
//! A connection is in one of these phases:
//!
//! | phase | ends it | when it runs out |
//! | --- | --- | --- |
//! | a handler runs | the handler (bounded by the request deadline) | - |
//! | a response is being sent | the last byte | `idle_timeout` after its body last made progress (hyper took a part of it to send; the door's own writes, such as acknowledging an HTTP/2 PING, do not count): closed |
//! | a request head is awaited: a new connection, or bytes of the next head arrived | the whole head | `header_read_timeout` after accept or the first byte: closed |
//! | nothing to do: kept alive between requests, or HTTP/2 with no request | a new request | `idle_timeout`: graceful close (`GOAWAY`) |
//!
//! hyper's own `header_read_timeout` is left off: it starts counting as
//! soon as the connection waits for a head, so it would also close a
//! kept-alive connection that is merely idle, and there would be no idle
//! timeout longer than the header timeout.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::budget::Claim;
use crate::http::{Router, RouterConfig};

/// The first pause after an accept error.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest pause between accept attempts while they fail.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// At most one log line per this interval for each kind of trouble (accept
/// errors, refused clients); the lines left out are counted in the next.
const LOG_INTERVAL: Duration = Duration::from_secs(1);
/// The most over-the-cap clients being answered at once; past it they are
/// closed without an answer.
const MAX_REFUSALS: usize = 64;
/// How long answering one over-the-cap client may take, writing the answer
/// and reading what it sent until it closes.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// The most bytes read from an over-the-cap client before closing.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// How long a connection closed for idleness may take to say goodbye
/// (HTTP/2 `GOAWAY`) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The answer to a client over the connection cap.
const FULL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 44\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
server at its connection limit: retry later\n";

/// Accepts connections on `listener` until `shutdown` resolves, then stops
/// accepting and lets open connections finish, up to the grace period.
pub(crate) async fn serve(
    router: Arc<Router>,
    config: RouterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // Off: see the module documentation; the connection task keeps time.
    builder.http1().header_read_timeout(None);
    let timers = Timers {
        header_read: config.header_read_timeout,
        idle: config.idle_timeout,
    };
    // A semaphore counts up to `MAX_PERMITS` (and panics past it): a cap
    // that large is no cap anyway.
    let permits = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let (stop, stopping) = watch::channel(false);
    let mut backoff = Backoff::default();
    let mut error_log = RateLimit::default();
    let mut recovery_log = RateLimit::default();
    let mut refusal_log = RateLimit::default();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let pause = backoff.failed(&e);
                if let Some(suppressed) = error_log.allow(Instant::now()) {
                    warn!(
                        error = %e,
                        suppressed,
                        pause_ms = pause.as_millis() as u64,
                        "accept failed"
                    );
                }
                if !pause.is_zero() {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        let failures = backoff.succeeded();
        if failures > 0 && recovery_log.allow(Instant::now()).is_some() {
            info!(failures, "accepting connections again");
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let connection = Connection {
                    router: router.clone(),
                    timers,
                    stopping: stopping.clone(),
                    peer,
                };
                connection.spawn(&builder, stream, permit);
            }
            Err(_) => {
                if let Some(suppressed) = refusal_log.allow(Instant::now()) {
                    warn!(
                        max_connections = config.max_connections,
                        %peer,
                        suppressed,
                        "connection limit reached: answering 503"
                    );
                }
                refuse(stream, &refusals);
            }
        }
    }
    info!("router stopping: finishing open requests");
    let _ = stop.send(true);
    drop(stopping);
    // Resolves once every connection task has ended (each holds a receiver).
    if tokio::time::timeout(config.shutdown_grace, stop.closed())
        .await
        .is_err()
    {
        warn!("open requests did not finish within the grace period");
    }
}

/// Answers a client over the connection cap, in a task of its own bounded by
/// [`REFUSAL_TIME`]; closes it at once when too many answers are in flight.
fn refuse(stream: TcpStream, refusals: &Arc<Semaphore>) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, answer_full(stream)).await;
        drop(permit);
    });
}

/// Writes [`FULL_ANSWER`], ends the sending side, and reads what the client
/// sent until it closes: closing with unread bytes would reset the
/// connection, and the client could lose the answer.
async fn answer_full(mut stream: TcpStream) -> io::Result<()> {
    stream.write_all(FULL_ANSWER).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        drained += n;
    }
    Ok(())
}

/// Pauses between failed accepts: none for errors about one connection,
/// otherwise exponential, capped, reset by a success.
#[derive(Debug, Default)]
struct Backoff {
    pause: Duration,
    failures: u64,
}

impl Backoff {
    /// How long to pause after `error`.
    fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        if is_connection_error(error) {
            return Duration::ZERO;
        }
        self.pause = if self.pause.is_zero() {
            FIRST_PAUSE
        } else {
            (self.pause * 2).min(MAX_PAUSE)
        };
        self.pause
    }

    /// Resets after an accepted connection. Returns the failures since the
    /// last accepted connection when the listener was in trouble (it had to
    /// pause), 0 when there was none or only errors about single
    /// connections.
    fn succeeded(&mut self) -> u64 {
        let failures = std::mem::take(&mut self.failures);
        if std::mem::take(&mut self.pause).is_zero() {
            0
        } else {
            failures
        }
    }
}

/// Errors that concern one incoming connection, not the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// At most one event logged per [`LOG_INTERVAL`].
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(events left out since the last logged one)` when this one may
    /// be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The two timeouts of a connection.
#[derive(Debug, Clone, Copy)]
struct Timers {
    header_read: Duration,
    idle: Duration,
}

/// What a connection is doing, as its socket, its handlers and its response
/// bodies report it.
#[derive(Debug)]
struct Activity(Mutex<State>);

#[derive(Debug)]
struct State {
    /// Requests being handled (their handler futures are alive).
    handlers: usize,
    /// Responses whose body hyper has not finished sending.
    bodies: usize,
    /// When the request head being awaited was started: the accept for a
    /// new connection, else the first byte after the previous exchange.
    head_started: Option<Instant>,
    /// When the connection last had nothing in progress.
    quiet_since: Instant,
    /// When a response body last gave hyper a part to send (or a response
    /// started). Not the socket's writes: an HTTP/2 client makes the door
    /// write whenever it likes (every PING and SETTINGS is acknowledged),
    /// and those writes are no sign that an answer goes out.
    last_progress: Instant,
    /// HTTP/2: bytes between requests are frames, not a request head.
    http2: bool,
    /// The connection's place under the cap, given back when its task
    /// ends, or as soon as it answers `101` (the upgraded socket counts
    /// against the WebSocket cap instead: a client that opens its next
    /// connection as soon as it has the `101` must not find this one still
    /// counted).
    place: Option<OwnedSemaphorePermit>,
}

/// What a connection waits for next, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// A handler runs; its own deadline ends it.
    Busy,
    /// The current phase runs out at this instant.
    At(Instant, Expiry),
}

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// The request head did not arrive in time: close.
    Head,
    /// The client stopped reading a response: close.
    Stalled,
    /// Nothing to do for too long: close gracefully.
    Idle,
}

impl Activity {
    fn new(accepted: Instant, place: Option<OwnedSemaphorePermit>) -> Self {
        Self(Mutex::new(State {
            handlers: 0,
            bodies: 0,
            head_started: Some(accepted),
            quiet_since: accepted,
            last_progress: accepted,
            http2: false,
            place,
        }))
    }

    /// Gives the connection's place under the cap back (once).
    fn give_back_place(&self) {
        let place = self.state().place.take();
        drop(place);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a single assignment.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, now: Instant) {
        let mut state = self.state();
        if state.handlers == 0 && state.bodies == 0 && !state.http2 {
            state.head_started.get_or_insert(now);
        }
    }

    fn progressed(&self, now: Instant) {
        self.state().last_progress = now;
    }

    fn handler_started(&self, version: http::Version) {
        let mut state = self.state();
        state.handlers += 1;
        state.head_started = None;
        state.http2 |= version == http::Version::HTTP_2;
    }

    fn handler_ended(&self, now: Instant) {
        let mut state = self.state();
        state.handlers -= 1;
        if state.handlers == 0 && state.bodies == 0 {
            state.quiet_since = now;
        }
    }

    fn body_started(&self, now: Instant) {
        let mut state = self.state();
        state.bodies += 1;
        state.last_progress = now;
    }

    fn body_ended(&self, now: Instant) {
        let mut state = self.state();
        state.bodies -= 1;
        if state.handlers == 0 && state.bodies == 0 {
            state.quiet_since = now;
        }
    }

    fn next(&self, timers: Timers) -> Next {
        let state = self.state();
        if state.handlers > 0 {
            Next::Busy
        } else if state.bodies > 0 {
            Next::At(state.last_progress + timers.idle, Expiry::Stalled)
        } else if let Some(started) = state.head_started {
            Next::At(started + timers.header_read, Expiry::Head)
        } else {
            Next::At(state.quiet_since + timers.idle, Expiry::Idle)
        }
    }
}

/// Counts a running handler until dropped (finished or cancelled).
struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handler_ended(Instant::now());
    }
}

/// Counts a response being sent until hyper drops its body.
struct Sending(Arc<Activity>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.body_ended(Instant::now());
    }
}

/// The largest part of a response body handed to hyper at once: hyper
/// asks for the next part only once it has room to send it, so each part
/// taken is progress of the answer (see [`State::last_progress`]).
const PART_BYTES: usize = 64 * 1024;

/// A response body that hands hyper its bytes in parts, reports each part
/// taken as progress, and reports when hyper is done with it; it holds its
/// bytes' place in the door's budget until then.
struct Sent {
    rest: Bytes,
    sending: Sending,
    _claim: Option<Arc<Claim>>,
}

impl Sent {
    fn new(body: Full<Bytes>, sending: Sending, claim: Option<Arc<Claim>>) -> Self {
        // A `Full` is always ready and holds one frame of data at most:
        // take it now (no waker needed).
        let mut body = body;
        let rest = match Pin::new(&mut body)
            .poll_frame(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        Self {
            rest,
            sending,
            _claim: claim,
        }
    }
}

impl Body for Sent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let take = self.rest.len().min(PART_BYTES);
        let part = self.rest.split_to(take);
        self.sending.0.progressed(Instant::now());
        Poll::Ready(Some(Ok(Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// The socket, reporting reads to the connection's [`Activity`]
/// while its task watches it. A connection upgraded to a WebSocket
/// outlives its task: once nothing else holds the activity, the stream
/// lets it go (an idle WebSocket keeps no timing record of HTTP).
struct Watched {
    stream: TcpStream,
    activity: Option<Arc<Activity>>,
}

impl Watched {
    /// Lets go of the activity once nobody else holds it (the
    /// connection's task ended: the stream was upgraded). Called on every
    /// poll, so a socket lets go on the first poll after its upgrade.
    fn let_go_if_unwatched(&mut self) {
        if self
            .activity
            .as_ref()
            .is_some_and(|a| Arc::strong_count(a) == 1)
        {
            self.activity = None;
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.let_go_if_unwatched();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && let Some(activity) = &this.activity
        {
            activity.read(Instant::now());
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.let_go_if_unwatched();
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.let_go_if_unwatched();
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// One accepted connection within the cap.
struct Connection {
    router: Arc<Router>,
    timers: Timers,
    /// Becomes `true` when the router shuts down; held until the task ends.
    stopping: watch::Receiver<bool>,
    peer: SocketAddr,
}

impl Connection {
    /// Serves `stream` in its own task; `place` is its place under the
    /// cap, kept by its [`Activity`].
    fn spawn(
        self,
        builder: &Builder<TokioExecutor>,
        stream: TcpStream,
        place: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(Instant::now(), Some(place)));
        let io = TokioIo::new(Watched {
            stream,
            activity: Some(activity.clone()),
        });
        let router = self.router.clone();
        let tracker = activity.clone();
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            tracker.handler_started(request.version());
            let handling = Handling(tracker.clone());
            let router = router.clone();
            async move {
                let response = router.handle(request).await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    handling.0.give_back_place();
                }
                let sending = Sending(handling.0.clone());
                sending.0.body_started(Instant::now());
                drop(handling);
                let mut response = response;
                let claim = response.extensions_mut().remove::<Arc<Claim>>();
                Ok::<_, Infallible>(response.map(|body| Sent::new(body, sending, claim)))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        tokio::spawn(async move {
            self.drive(conn, &activity).await;
            activity.give_back_place();
        });
    }

    /// Runs the connection until it ends, a timeout closes it, or the
    /// router's shutdown has closed it gracefully.
    async fn drive<C>(&self, conn: C, activity: &Activity)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let mut conn = pin!(conn);
        let mut sleep = pin!(tokio::time::sleep(self.timers.idle));
        let mut stopping = self.stopping.clone();
        let mut stop_seen = *stopping.borrow_and_update();
        if stop_seen {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let outcome = tokio::select! {
                outcome = until_expiry(conn.as_mut(), activity, self.timers, sleep.as_mut()) => outcome,
                changed = stopping.changed(), if !stop_seen => {
                    stop_seen = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                    continue;
                }
            };
            match outcome {
                Outcome::Done(Ok(())) => {}
                // Malformed HTTP ends that connection only.
                Outcome::Done(Err(e)) => {
                    debug!(peer = %self.peer, error = %e, "connection ended with an error");
                }
                Outcome::Expired(Expiry::Idle) => {
                    debug!(peer = %self.peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                }
                Outcome::Expired(expiry) => {
                    debug!(peer = %self.peer, ?expiry, "closing a connection: timed out");
                }
            }
            return;
        }
    }
}

/// How [`until_expiry`] ended.
enum Outcome<T> {
    /// The connection ended by itself.
    Done(T),
    /// A timeout ran out first.
    Expired(Expiry),
}

/// Polls `conn` until it ends or the timeout of its current phase runs out.
/// The deadline is worked out again after each poll of the connection (its
/// reads and writes happen there) and when `sleep` fires; while a handler
/// runs, `sleep` only looks again every idle timeout.
async fn until_expiry<C: Future>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    timers: Timers,
    mut sleep: Pin<&mut Sleep>,
) -> Outcome<C::Output> {
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(output) = conn.as_mut().poll(cx) {
                return Poll::Ready(Outcome::Done(output));
            }
            let now = Instant::now();
            let deadline = match activity.next(timers) {
                Next::Busy if sleep.deadline() > now => sleep.deadline(),
                Next::Busy => now + timers.idle,
                Next::At(at, expiry) if at <= now => return Poll::Ready(Outcome::Expired(expiry)),
                Next::At(at, _) => at,
            };
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..13)
            .map(|_| backoff.failed(&emfile).as_millis())
            .collect();
        assert_eq!(
            pauses,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000, 1000]
        );
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted), Duration::ZERO);
        assert_eq!(backoff.succeeded(), 14);
        assert_eq!(backoff.failed(&emfile), FIRST_PAUSE);
        // Errors about single connections alone are no trouble to report.
        backoff.succeeded();
        assert_eq!(backoff.failed(&aborted), Duration::ZERO);
        assert_eq!(backoff.succeeded(), 0);
    }

    #[test]
    fn the_full_answer_declares_its_length() {
        let text = std::str::from_utf8(FULL_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
    }

    #[test]
    fn rate_limit_counts_what_it_leaves_out() {
        let mut limit = RateLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(limit.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(limit.allow(t0 + Duration::from_millis(1500)), None);
    }

    #[test]
    fn phases_pick_their_timeout() {
        let timers = Timers {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let activity = Activity::new(t0, None);
        // A new connection: the head is due header_read after accept, bytes
        // or not.
        assert_eq!(activity.next(timers), Next::At(at(10), Expiry::Head));
        activity.read(at(5));
        assert_eq!(activity.next(timers), Next::At(at(10), Expiry::Head));
        activity.handler_started(http::Version::HTTP_11);
        assert_eq!(activity.next(timers), Next::Busy);
        activity.body_started(at(7));
        activity.handler_ended(at(7));
        assert_eq!(activity.next(timers), Next::At(at(67), Expiry::Stalled));
        activity.progressed(at(8));
        assert_eq!(activity.next(timers), Next::At(at(68), Expiry::Stalled));
        // Kept alive: idle until the first byte of the next head.
        activity.body_ended(at(8));
        assert_eq!(activity.next(timers), Next::At(at(68), Expiry::Idle));
        activity.read(at(30));
        assert_eq!(activity.next(timers), Next::At(at(40), Expiry::Head));
        activity.handler_started(http::Version::HTTP_11);
        activity.handler_ended(at(31));
        assert_eq!(activity.next(timers), Next::At(at(91), Expiry::Idle));
    }

    #[test]
    fn http2_frames_between_requests_are_not_a_head() {
        let timers = Timers {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let activity = Activity::new(t0, None);
        activity.handler_started(http::Version::HTTP_2);
        activity.handler_ended(at(1));
        // A ping, a window update: still idle since the request ended.
        activity.read(at(20));
        assert_eq!(activity.next(timers), Next::At(at(61), Expiry::Idle));
    }
}
