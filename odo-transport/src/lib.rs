//! odo-transport owns how odo processes reach each other — endpoints,
//! bounded length-delimited framing, the token-and-version handshake, the
//! multiplexed client [`Channel`] and the [`Server`] accept loop — and
//! nothing about what the frames mean (that is `odo-core`'s wire types) or
//! who serves which object (that is the worker, registry and router).
//!
//! - [`Endpoint`]: `unix:/path` (Unix), `tcp:host:port`, and
//!   `pipe:\\.\pipe\name` (Windows named pipes).
//! - [`Channel`]: one connection, many calls in flight, each with a
//!   deadline; a dropped call is cancelled on the server; a failed call says
//!   whether it is safe to retry ([`CallError::is_retryable`]).
//! - [`Server`]: binds securely (private socket directory, loopback TCP by
//!   default), checks every client's handshake, runs each request in its own
//!   task, aborts cancelled ones, and shuts down gracefully.
//!
//! Every frame is a u32 big-endian length prefix followed by an
//! [`odo_core::codec`] frame, at most [`DEFAULT_MAX_FRAME_LEN`] bytes unless
//! configured otherwise. Malformed input closes only the offending
//! connection, with a logged reason.
//!
//! ## What a stranger can cost
//!
//! Nothing a connection sends before it has authenticated costs more than a
//! handshake:
//!
//! - **Frames before the handshake are bounded to the handshake's size**,
//!   [`MAX_HANDSHAKE_FRAME_LEN`] (669 bytes: a hello with a token of at most
//!   [`MAX_TOKEN_LEN`] and a name cut to [`MAX_PEER_NAME_LEN`]), on both
//!   ends: the server reading a hello, the client reading the answer. A
//!   length prefix over it closes the connection as soon as its four bytes
//!   arrive, before any room is made for the frame. Only after the
//!   handshake does the configured `max_frame_len` apply.
//! - **A handshake has a deadline**, [`ServerConfig::handshake_timeout`].
//! - **Two caps.** At most [`ServerConfig::max_unauthenticated`] connections
//!   (default 64) may be in their handshake at once; a new connection that
//!   finds that cap full is still accepted, and the *oldest*
//!   unauthenticated connection is closed instead, so silent strangers age
//!   out while a real peer, which authenticates within a round trip, gets
//!   in. Authenticated peers have their own cap,
//!   [`ServerConfig::max_connections`] (default 1024), and a connection
//!   takes one of those places only once its handshake succeeded: a stranger
//!   never holds one.
//! - **The log is rate-limited**: connections dropped before their
//!   handshake (and peers turned away at the connection limit) are logged
//!   at most once per five seconds each, with how many went unlogged.
//!
//! ## How a call moves (and why it is fast)
//!
//! A call spawns nothing. It encodes its frame (into a per-thread scratch
//! buffer), registers a slot keyed by its request id and hands the frame to
//! the connection's *sink*. A call alone on its connection writes its frame
//! itself, straight away, in one system call: no task switch. When other
//! calls are in flight, the first caller to find the queue empty queues its
//! frame, yields one scheduler turn so that the other callers woken by the
//! same burst of responses queue theirs, and then writes them all at once;
//! a caller that finds someone else writing leaves its frame to them. Only
//! when the socket is full does a writer task wait for room. One reader
//! task per connection takes every whole response already buffered,
//! matches them to their slots under one lock and wakes the callers.
//! Deadlines arm no timer per call: each slot's expiry goes into one
//! ordered set under the same lock, and a watcher task per connection
//! sleeps until the earliest, fails what expired and sends the server a
//! cancel frame for each.
//!
//! On the server, one task per connection reads requests and polls each
//! handler once in place (see [`Handler`]); while more whole requests are
//! buffered, answers are held back and written together.
//!
//! ## What a failed call tells you
//!
//! A request counts as written once the socket has taken its whole frame.
//! When a connection dies, calls whose request was never (wholly) written
//! fail with [`CallError::NotSent`] — the server cannot have seen them, so
//! they are safe to retry — and the others with [`CallError::Lost`] (outcome
//! unknown). [`CallError::is_retryable`] says which.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use odo_core::wire::{Control, Request, Response};
//! use odo_transport::{Channel, ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that echoes every body back.
//! let endpoint: Endpoint = "tcp:127.0.0.1:0".parse()?;
//! let server = Server::bind(&endpoint, ServerConfig::new("cluster-token")).await?;
//! let endpoint = server.endpoint().clone(); // now with the real port
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let echo = handler_fn(|_request, body| async move { (Response::Rpc, body) });
//! let serving = tokio::spawn(server.serve(Arc::new(echo), async move {
//!     let _ = stopped.await;
//! }));
//!
//! // A client: connect, call, and read the answer.
//! let channel = Channel::connect(&endpoint, ClientConfig::new("cluster-token")).await?;
//! let request = Request::Control(Control::Heartbeat { now_ms: 0 });
//! let (response, body) = channel
//!     .call(request, Bytes::from_static(b"ping"), Duration::from_secs(5))
//!     .await?;
//! assert_eq!(response, Response::Rpc);
//! assert_eq!(body, "ping");
//!
//! // Graceful shutdown: stop accepting, finish requests in flight.
//! drop(channel);
//! let _ = stop.send(());
//! serving.await?;
//! # Ok(())
//! # }
//! ```

mod admission;
mod channel;
mod endpoint;
pub mod forward;
mod framing;
mod handshake;
mod pool;
mod server;
mod stream;
#[cfg(unix)]
mod unix;
pub mod upgrade;

pub use channel::{CallError, Channel, ClientConfig, ConnectError, ConnectStage, MAX_DEADLINE};
pub use endpoint::{Endpoint, EndpointError};
pub use framing::{CloseReason, DEFAULT_MAX_FRAME_LEN};
pub use handshake::{MAX_HANDSHAKE_FRAME_LEN, MAX_PEER_NAME_LEN, MAX_TOKEN_LEN};
pub use pool::{ChannelPool, PoolError};
pub use server::{
    BindError, DEFAULT_MAX_UNAUTHENTICATED, Handler, HandlerFn, Server, ServerConfig, handler_fn,
};
