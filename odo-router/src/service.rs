//! Where the router sends a request once it knows the object: the
//! [`ObjectService`] trait, in HTTP terms, and [`ClusterService`], which
//! reaches worker processes through the one [`Forwarder`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::placement::PlacementSource;
use odo_core::wire::{HttpHead, Response};
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_transport::ClientConfig;
pub use odo_transport::forward::ForwardError;
use odo_transport::forward::{Delivery, Forwarder, OutboundCall};
use tokio::time::Instant;

use crate::headers::{headers_from_wire, headers_to_wire};

/// Delivers requests to objects, in HTTP terms. [`ClusterService`] forwards
/// to worker processes; a program hosting objects in its own process (the
/// odo facade with `--workers 0`) implements it over its runtime, with no
/// wire conversion at all.
pub trait ObjectService: Send + Sync + 'static {
    /// Delivers an HTTP request to an object, by `deadline`.
    fn fetch(
        &self,
        object: ObjectAddress,
        request: http::Request<Bytes>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>>;

    /// Calls an RPC method with encoded arguments, by `deadline`.
    fn call(
        &self,
        object: ObjectAddress,
        method: String,
        args: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>>;

    /// Where the object lives now, for `/_odo/placement`.
    fn locate(&self, id: &ObjectId) -> Option<Location>;

    /// Delivers an event of a client's WebSocket, held by the front door
    /// `event.door`, to the object that accepted it, by `deadline`;
    /// `payload` is the message (or one part of it). Resolves once the
    /// event's turn ran and its outputs reached the front doors. The
    /// default refuses: a service that hosts no WebSockets.
    fn socket_event(
        &self,
        object: ObjectAddress,
        event: SocketEventOut,
        payload: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        let _ = (object, event, payload, deadline);
        async {
            Err(ForwardError::Object(WireError::BadRequest {
                message: "this front door's service carries no WebSocket events".into(),
            }))
        }
        .boxed()
    }
}

/// A socket event as a front door hands it to an [`ObjectService`].
#[derive(Debug, Clone)]
pub struct SocketEventOut {
    /// The front door holding the socket (its endpoint, where the object's
    /// outputs go).
    pub door: String,
    /// The socket's number in that front door.
    pub socket: u64,
    /// When its auto-response was last answered, if ever.
    pub auto_response_ms: Option<u64>,
    /// What happened.
    pub kind: odo_core::socket::SocketEventKind,
}

impl From<SocketEventOut> for OutboundCall {
    /// The event as the forwarder sends it to the object's holder.
    fn from(event: SocketEventOut) -> Self {
        OutboundCall::Socket {
            door: event.door,
            socket: event.socket,
            auto_response_ms: event.auto_response_ms,
            kind: event.kind,
        }
    }
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// Its shard.
    pub shard: u32,
    /// The shard's epoch.
    pub epoch: u64,
    /// The pid of the process serving the shard, if known.
    pub pid: Option<u32>,
}

/// Forwards requests to the worker that owns each object's shard, through
/// a [`Forwarder`] following any [`PlacementSource`] (the registry's table
/// on one machine).
///
/// A request that was never written (no worker yet, a closed channel) or
/// that a worker answered `Moved` is retried once the placement changes,
/// until the deadline. A request written to a worker that then died is not
/// retried: it answers [`ForwardError::Lost`]. The request's remaining
/// deadline travels with it.
#[derive(Clone)]
pub struct ClusterService {
    forwarder: Arc<Forwarder>,
}

impl fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterService")
            .field("forwarder", &self.forwarder)
            .finish()
    }
}

impl ClusterService {
    /// A service following `placement`, connecting to workers with `client`.
    pub fn new(placement: Arc<dyn PlacementSource>, client: ClientConfig) -> Self {
        Self {
            forwarder: Arc::new(Forwarder::new(placement, client)),
        }
    }

    async fn forward(
        self,
        object: ObjectAddress,
        call: OutboundCall,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(Response, Bytes), ForwardError> {
        // Nothing is local to a router: every shard is some worker's.
        match self
            .forwarder
            .forward(&object, &call, body, deadline, &[], &|_| false)
            .await?
        {
            Delivery::Answered(response, body) => Ok((response, body)),
            Delivery::Local => Err(unexpected("a local delivery")),
        }
    }
}

fn unexpected(what: impl fmt::Debug) -> ForwardError {
    ForwardError::Object(WireError::Internal {
        message: format!("unexpected answer from the worker: {what:?}"),
    })
}

impl ObjectService for ClusterService {
    fn fetch(
        &self,
        object: ObjectAddress,
        request: http::Request<Bytes>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        let this = self.clone();
        async move {
            let (parts, body) = request.into_parts();
            let head = HttpHead {
                method: parts.method.to_string(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |pq| pq.to_string()),
                headers: headers_to_wire(&parts.headers),
            };
            match this
                .forward(object, OutboundCall::Fetch(head), body, deadline)
                .await?
            {
                (Response::Fetch(head), body) => {
                    let mut response = http::Response::new(body);
                    *response.status_mut() = http::StatusCode::from_u16(head.status)
                        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                    headers_from_wire(&head.headers, response.headers_mut());
                    Ok(response)
                }
                (other, _) => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn call(
        &self,
        object: ObjectAddress,
        method: String,
        args: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>> {
        let this = self.clone();
        async move {
            match this
                .forward(object, OutboundCall::Rpc { method }, args, deadline)
                .await?
            {
                (Response::Rpc, body) => Ok(body),
                (other, _) => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn socket_event(
        &self,
        object: ObjectAddress,
        event: SocketEventOut,
        payload: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        let this = self.clone();
        async move {
            match this
                .forward(object, event.into(), payload, deadline)
                .await?
            {
                (Response::Socket, _) => Ok(()),
                (other, _) => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn locate(&self, id: &ObjectId) -> Option<Location> {
        let location = self.forwarder.placement().locate(id);
        Some(Location {
            shard: location.shard,
            epoch: location.epoch,
            pid: location.owner.and_then(|o| o.pid),
        })
    }
}
