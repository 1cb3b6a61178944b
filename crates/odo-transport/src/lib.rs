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

mod channel;
mod endpoint;
mod framing;
mod handshake;
mod server;
mod stream;
#[cfg(unix)]
mod unix;

pub use channel::{CallError, Channel, ClientConfig, ConnectError, ConnectStage};
pub use endpoint::{Endpoint, EndpointError};
pub use framing::{CloseReason, DEFAULT_MAX_FRAME_LEN};
pub use server::{BindError, Handler, HandlerFn, Server, ServerConfig, handler_fn};
