//! odo-router: the HTTP front door and the Rust client API.
//!
//! This crate owns the path from a request to the object's worker:
//! [`Router`] (hyper 1, HTTP/1.1 and HTTP/2) finds the object with an
//! [`IdExtractor`] (by default [`PathRoutes`]: `/{class}/{name}/...`),
//! enforces the limits (body size, name length, deadline), and hands the
//! request to an [`ObjectService`]; [`ClusterService`] forwards it over a
//! pooled, multiplexed channel to the worker that owns the object's shard,
//! retrying only what is safe to retry. [`Client`] offers the same reach to
//! Rust programs without HTTP.
//!
//! It does not host objects (odo-worker), supervise processes or keep
//! placement (odo-registry): it follows any
//! [`PlacementSource`](odo_core::placement::PlacementSource), and does not
//! depend on the registry. Plain routes that no object serves
//! ([`PlainRoutes`]) are answered before object routes.
//!
//! Answers: unknown class 404, malformed id or over-long name 400, body over
//! the limit 413; a failed call answers by what the client can do with it
//! (never delivered and worth retrying: 503 with `Retry-After`; the
//! object's handler failed: 500; outcome unknown: 502; deadline: 504; call
//! cycle: 508), with the headers `x-odo-error` (the kind) and
//! `x-odo-retryable` (`true` only when the request never reached the
//! object). The table is in the `status` module's docs and DURABILITY.md.
//!
//! ```no_run
//! use std::sync::Arc;
//! use odo_router::{ClusterService, PathRoutes, Router, RouterConfig};
//!
//! # async fn run(
//! #     placement: Arc<dyn odo_core::placement::PlacementSource>,
//! #     token: &str,
//! # ) -> std::io::Result<()> {
//! // `placement`: the registry's table (`Registry::placement_source()`),
//! // or any other source of placement.
//! let client = odo_transport::ClientConfig::new(token);
//! let service = Arc::new(ClusterService::new(placement, client));
//! let routes = Arc::new(PathRoutes::new(256).route("counter", "COUNTER"));
//! let router = Arc::new(Router::new(routes, service, RouterConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! router.serve(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```

mod accept;
mod budget;
mod client;
mod headers;
mod http;
mod metrics;
mod routes;
mod service;
mod status;
mod ws;

pub use client::{Client, ClientError, ClientNamespace, ClientStub};
pub use http::{Admin, Router, RouterConfig};
pub use odo_core::ObjectAddress;
pub use odo_transport::forward::Outcome;
pub use routes::{IdExtractor, PathRoutes, PlainHandler, PlainRoutes, RouteError};
pub use service::{ClusterService, ForwardError, Location, ObjectService, SocketEventOut};
pub use status::{ERROR_HEADER, RETRYABLE_HEADER};
pub use ws::{ClientWebSocket, Door, SOCKET_RECORDS_PAGE_BYTES, WebSocketConfig};
