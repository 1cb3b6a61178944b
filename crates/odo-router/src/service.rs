//! Where the router sends a request once it knows the object: the
//! [`ObjectService`] trait, and [`ClusterService`], which forwards to the
//! owning worker by the registry's placement table.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::wire::{FetchRequest, FetchResponse, Request, Response, RpcCall, Target};
use odo_core::{ObjectId, WireError};
use odo_registry::PlacementTable;
use odo_transport::{CallError, ChannelPool, ClientConfig};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

/// An object as the router addresses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAddress {
    /// The class (namespace) name, such as `COUNTER`.
    pub class: String,
    /// The object id.
    pub id: ObjectId,
    /// The name the id was derived from, if any.
    pub name: Option<String>,
}

/// Why a forwarded request has no answer from its object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The object's side answered with an error.
    #[error(transparent)]
    Object(#[from] WireError),
    /// No worker could take the request before the deadline; it was never
    /// delivered.
    #[error("no worker available for the object: {0}")]
    Unavailable(String),
    /// The request reached a worker that died before answering: the
    /// outcome is unknown and the request is not retried.
    #[error("object reset: {0}")]
    Lost(String),
    /// The request deadline passed.
    #[error("deadline exceeded")]
    Deadline,
}

/// Delivers requests to objects. [`ClusterService`] forwards to worker
/// processes; a program hosting objects in-process implements it over its
/// own runtime.
pub trait ObjectService: Send + Sync + 'static {
    /// Delivers an HTTP request (its envelope and body) to an object, by
    /// `deadline`.
    fn fetch(
        &self,
        object: ObjectAddress,
        request: FetchRequest,
        body: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(FetchResponse, Bytes), ForwardError>>;

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
}

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Location {
    /// Its shard.
    pub shard: u32,
    /// The shard's epoch.
    pub epoch: u64,
    /// The pid of the worker serving the shard, if assigned.
    pub pid: Option<u32>,
}

/// Forwards requests to the worker that owns each object's shard, over a
/// pool of multiplexed channels (one per worker endpoint).
///
/// A request that was never written (no worker yet, a closed channel) or
/// that a worker answered `Moved` is retried once the placement table
/// changes, until the deadline. A request written to a worker that then
/// died is not retried: it answers [`ForwardError::Lost`].
#[derive(Clone)]
pub struct ClusterService {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    placement: watch::Receiver<Arc<PlacementTable>>,
    channels: ChannelPool,
}

impl fmt::Debug for ClusterService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterService")
            .field("placement_version", &self.inner.placement.borrow().version)
            .finish_non_exhaustive()
    }
}

impl ClusterService {
    /// A service following `placement`, connecting to workers with `client`.
    pub fn new(placement: watch::Receiver<Arc<PlacementTable>>, client: ClientConfig) -> Self {
        Self {
            inner: Arc::new(ClusterInner {
                placement,
                channels: ChannelPool::new(client),
            }),
        }
    }

    /// Sends `make(target)` with `body` to the object's owner, retrying
    /// what is safe to retry until `deadline`.
    async fn forward(
        self,
        object: ObjectAddress,
        make: impl Fn(Target) -> Request + Send,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(Response, Bytes), ForwardError> {
        let mut placement = self.inner.placement.clone();
        let mut backoff = Duration::from_millis(5);
        loop {
            let (target, endpoint) = {
                let table = placement.borrow_and_update();
                let (shard, entry) = table.lookup(&object.id);
                let target = Target {
                    class: object.class.clone(),
                    id: object.id,
                    name: object.name.clone(),
                    shard,
                    epoch: entry.epoch,
                };
                (target, entry.owner.as_ref().map(|o| o.endpoint.clone()))
            };
            let why_retry = match endpoint {
                None => format!("shard {} has no worker", target.shard),
                Some(endpoint) => match self.inner.channels.get(&endpoint).await {
                    Err(e) => format!("cannot connect to {endpoint}: {e}"),
                    Ok(channel) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        match channel.call(make(target), body.clone(), left).await {
                            Ok((Response::Error(WireError::Moved { epoch }), _)) => {
                                format!("moved (epoch {epoch})")
                            }
                            Ok((Response::Error(error), _)) => {
                                return Err(ForwardError::Object(error));
                            }
                            Ok(answer) => return Ok(answer),
                            Err(CallError::DeadlineExceeded { .. }) => {
                                return Err(ForwardError::Deadline);
                            }
                            Err(e) if e.is_retryable() => e.to_string(),
                            Err(e) => return Err(ForwardError::Lost(e.to_string())),
                        }
                    }
                },
            };
            debug!(id = %object.id, reason = %why_retry, "retrying once the placement changes");
            // Wait for a placement change, or retry after a short backoff in
            // case the change already happened; never past the deadline.
            let wait = backoff.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return Err(ForwardError::Unavailable(why_retry));
            }
            let _ = tokio::time::timeout(wait, placement.changed()).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

fn unexpected(answer: Response) -> ForwardError {
    ForwardError::Object(WireError::Internal {
        message: format!("unexpected answer from the worker: {answer:?}"),
    })
}

impl ObjectService for ClusterService {
    fn fetch(
        &self,
        object: ObjectAddress,
        request: FetchRequest,
        body: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(FetchResponse, Bytes), ForwardError>> {
        let this = self.clone();
        async move {
            let make = move |target| {
                Request::Fetch(FetchRequest {
                    target,
                    ..request.clone()
                })
            };
            match this.forward(object, make, body, deadline).await? {
                (Response::Fetch(head), body) => Ok((head, body)),
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
            let make = move |target| {
                Request::Rpc(RpcCall {
                    target,
                    method: method.clone(),
                })
            };
            match this.forward(object, make, args, deadline).await? {
                (Response::Rpc, body) => Ok(body),
                (other, _) => Err(unexpected(other)),
            }
        }
        .boxed()
    }

    fn locate(&self, id: &ObjectId) -> Option<Location> {
        let table = self.inner.placement.borrow();
        let (shard, entry) = table.lookup(id);
        Some(Location {
            shard,
            epoch: entry.epoch,
            pid: entry.owner.as_ref().map(|o| o.pid),
        })
    }
}
