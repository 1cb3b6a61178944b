//! Where the router sends a request once it knows the object: the
//! [`ObjectService`] trait, and [`ClusterService`], which forwards to the
//! owning worker by the registry's placement table.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::wire::{
    CallMeta, FetchRequest, FetchResponse, HttpHead, Request, Response, RpcCall, Target,
};
use odo_core::{ObjectId, WireError};
use odo_registry::PlacementTable;
pub use odo_transport::forward::ForwardError;
use odo_transport::forward::{self, Attempt, Backoff};
use odo_transport::{ChannelPool, ClientConfig};
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

/// Delivers requests to objects. [`ClusterService`] forwards to worker
/// processes; a program hosting objects in-process implements it over its
/// own runtime.
pub trait ObjectService: Send + Sync + 'static {
    /// Delivers an HTTP request (its head and body) to an object, by
    /// `deadline`.
    fn fetch(
        &self,
        object: ObjectAddress,
        request: HttpHead,
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
/// changes, until the deadline ([`Attempt::of`], the rule the workers'
/// calls between objects follow too). A request written to a worker that
/// then died is not retried: it answers [`ForwardError::Lost`]. The
/// request's remaining deadline travels with it.
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

    /// Sends `make(target, meta)` with `body` to the object's owner,
    /// retrying what is safe to retry until `deadline`.
    async fn forward(
        self,
        object: ObjectAddress,
        make: impl Fn(Target, CallMeta) -> Request + Send,
        body: Bytes,
        deadline: Instant,
    ) -> Result<(Response, Bytes), ForwardError> {
        let mut placement = self.inner.placement.clone();
        let mut backoff = Backoff::default();
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
                        let request = make(target, forward::call_meta(deadline, Vec::new()));
                        let left = forward::remaining(deadline);
                        match Attempt::of(channel.call(request, body.clone(), left).await) {
                            Attempt::Answered(response, body) => return Ok((response, body)),
                            Attempt::Failed(error) => return Err(error),
                            Attempt::Retry(why) => why,
                        }
                    }
                },
            };
            debug!(id = %object.id, reason = %why_retry, "retrying once the placement changes");
            // Wait for a placement change, or retry after a short backoff in
            // case the change already happened; never past the deadline.
            let Some(wait) = backoff.next_wait(deadline) else {
                return Err(ForwardError::Unavailable(why_retry));
            };
            let _ = tokio::time::timeout(wait, placement.changed()).await;
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
        head: HttpHead,
        body: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(FetchResponse, Bytes), ForwardError>> {
        let this = self.clone();
        async move {
            let make = move |target, meta| {
                Request::Fetch(FetchRequest {
                    target,
                    meta,
                    head: head.clone(),
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
            let make = move |target, meta| {
                Request::Rpc(RpcCall {
                    target,
                    meta,
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
