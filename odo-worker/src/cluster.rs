//! Calls between objects, from a process that hosts objects: delivered in
//! this process for the shards it holds, and through the one
//! [`Forwarder`](odo_transport::forward::Forwarder) to the owner otherwise,
//! following a [`PlacementSource`]: the placement the registry pushes to a
//! worker process, or a cluster's placement (etcd) on a host.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
use odo_core::wire::{Placement, Response};
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_transport::ClientConfig;
use odo_transport::forward::{Delivery, Forwarder, OutboundCall};
use tokio::sync::watch;

use crate::call::{CallError, CallScope, Cluster};
use crate::rpc::RpcCall;
use crate::runtime::Runtime;
use crate::types::{Request, Response as HttpResponse};
use crate::wire::{request_parts, response_from_wire};

/// The placement the registry pushes to a worker (`Control::Placement`),
/// as a [`PlacementSource`].
#[derive(Debug)]
pub(crate) struct PushedPlacement {
    shard_count: u32,
    table: watch::Sender<Placement>,
}

impl PushedPlacement {
    pub(crate) fn new(shard_count: u32) -> Self {
        Self {
            shard_count: shard_count.max(1),
            table: watch::Sender::new(Placement::default()),
        }
    }

    /// Takes `placement` unless a newer one is already known.
    pub(crate) fn set(&self, placement: Placement) {
        self.table.send_if_modified(|current| {
            if placement.version >= current.version {
                *current = placement;
                true
            } else {
                false
            }
        });
    }
}

impl PlacementSource for PushedPlacement {
    fn shard_count(&self) -> u32 {
        self.shard_count
    }

    fn version(&self) -> u64 {
        self.table.borrow().version
    }

    fn locate(&self, id: &ObjectId) -> ShardLocation {
        let table = self.table.borrow();
        let shard = id.shard(self.shard_count);
        let entry = table.shards.get(shard as usize);
        ShardLocation {
            version: table.version,
            shard,
            epoch: entry.map_or(0, |e| e.epoch),
            owner: entry
                .and_then(|e| e.endpoint.clone())
                .map(|endpoint| ShardOwner {
                    endpoint,
                    pid: None,
                }),
        }
    }

    fn changed(&self, seen: u64) -> Changed<'_> {
        let mut table = self.table.subscribe();
        Box::pin(async move {
            let _ = table.wait_for(|t| t.version != seen).await;
        })
    }
}

/// Routes calls to objects from a process that hosts objects: those of
/// the shards its [`Runtime`] holds run here, without the wire format;
/// the others go through the [`Forwarder`] to the owner that `placement`
/// names. It is the [`Cluster`] the runtime's objects call through, and a
/// host's front door can send its requests through it too.
pub struct ObjectRouter {
    runtime: Runtime,
    own_endpoint: String,
    placement: Arc<dyn PlacementSource>,
    forwarder: Forwarder,
}

impl fmt::Debug for ObjectRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectRouter")
            .field("own_endpoint", &self.own_endpoint)
            .field("forwarder", &self.forwarder)
            .finish_non_exhaustive()
    }
}

impl ObjectRouter {
    /// Routes for `runtime`, which this process serves at `own_endpoint`,
    /// following `placement`, reaching other processes with `client`.
    pub fn new(
        runtime: Runtime,
        own_endpoint: String,
        placement: Arc<dyn PlacementSource>,
        client: ClientConfig,
    ) -> Arc<Self> {
        let forwarder = Forwarder::new(placement.clone(), client);
        Arc::new(Self {
            runtime,
            own_endpoint,
            placement,
            forwarder,
        })
    }

    /// The placement it follows.
    pub fn placement(&self) -> &Arc<dyn PlacementSource> {
        &self.placement
    }

    /// The runtime whose shards are local.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Whether this process serves `location`'s shard.
    fn is_local(&self, location: &ShardLocation) -> bool {
        self.runtime.shard_epoch(location.shard).is_some()
            || location
                .owner
                .as_ref()
                .is_some_and(|o| o.endpoint == self.own_endpoint)
    }

    fn local_now(&self, target: &ObjectAddress) -> bool {
        self.is_local(&self.placement.locate(&target.id))
    }

    async fn forward(
        &self,
        target: &ObjectAddress,
        call: &OutboundCall,
        body: Bytes,
        scope: &CallScope,
    ) -> Result<Delivery, CallError> {
        Ok(self
            .forwarder
            .forward(
                target,
                call,
                body,
                scope.deadline,
                &scope.chain,
                &|location| self.is_local(location),
            )
            .await?)
    }
}

fn unexpected(response: Response) -> CallError {
    WireError::Internal {
        message: format!("unexpected answer {response:?}"),
    }
    .into()
}

impl ObjectRouter {
    /// After this process answered `Moved` for a shard it held a moment
    /// ago (being released) or is about to hold (being opened): waits for
    /// the placement to change from `seen` (or a short while), and says
    /// whether there is time left to route the call again. `Moved` is
    /// answered before an event starts, so sending it again is safe.
    async fn wait_for_move(&self, seen: u64, scope: &CallScope) -> bool {
        let left = scope
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let pause = left.min(std::time::Duration::from_millis(50));
        let _ = tokio::time::timeout(pause, self.placement.changed(seen)).await;
        tokio::time::Instant::now() < scope.deadline
    }
}

impl ObjectRouter {
    /// Delivers an event of a client's WebSocket that front door `door`
    /// holds (socket `socket` there) to `target`: in this process if its
    /// shard is here, else to the shard's owner through the forwarder (a
    /// cluster host's door relays the events of sockets whose object lives
    /// on another host). `Moved` here waits for the placement and routes
    /// again, within the deadline; the door's pump decides what any other
    /// failure means for the socket.
    ///
    /// # Errors
    ///
    /// [`CallError::Forward`]: as the forwarder or the runtime answered
    /// (`UnknownSocket` when the object's holder must first be handed the
    /// door's record of its sockets).
    pub async fn socket_event(
        self: &Arc<Self>,
        target: ObjectAddress,
        event: OutboundCall,
        payload: Bytes,
        scope: CallScope,
    ) -> Result<(), CallError> {
        if !matches!(event, OutboundCall::Socket { .. }) {
            return Err(WireError::BadRequest {
                message: "not a WebSocket event".into(),
            }
            .into());
        }
        loop {
            let seen = self.placement.version();
            if !self.local_now(&target) {
                match self
                    .forward(&target, &event, payload.clone(), &scope)
                    .await?
                {
                    Delivery::Local => {}
                    Delivery::Answered(Response::Socket, _) => return Ok(()),
                    Delivery::Answered(other, _) => return Err(unexpected(other)),
                }
            }
            match self
                .runtime
                .socket_event_within(target.clone(), &event, payload.clone(), scope.clone())
                .await
            {
                Err(WireError::Moved { .. }) if self.wait_for_move(seen, &scope).await => {}
                result => return Ok(result?),
            }
        }
    }
}

impl Cluster for Arc<ObjectRouter> {
    fn fetch(
        &self,
        target: ObjectAddress,
        request: Request,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<HttpResponse, CallError>> {
        let this = self.clone();
        async move {
            let (head, body) = request_parts(request);
            loop {
                let seen = this.placement.version();
                // Local calls skip the wire format altogether.
                if !this.local_now(&target) {
                    let call = OutboundCall::Fetch(head.clone());
                    match this.forward(&target, &call, body.clone(), &scope).await? {
                        // The shard moved here while the call was retried.
                        Delivery::Local => {}
                        Delivery::Answered(Response::Fetch(head), body) => {
                            return Ok(response_from_wire(head, body)?);
                        }
                        Delivery::Answered(other, _) => return Err(unexpected(other)),
                    }
                }
                let request = crate::wire::request_from_parts(head.clone(), body.clone())?;
                match this
                    .runtime
                    .fetch_within(target.clone(), None, request, scope.clone())
                    .await
                {
                    Err(WireError::Moved { .. }) if this.wait_for_move(seen, &scope).await => {}
                    result => return Ok(result?),
                }
            }
        }
        .boxed()
    }

    fn call(
        &self,
        target: ObjectAddress,
        method: String,
        args: Bytes,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Bytes, CallError>> {
        let this = self.clone();
        async move {
            loop {
                let seen = this.placement.version();
                if !this.local_now(&target) {
                    let call = OutboundCall::Rpc {
                        method: method.clone(),
                    };
                    match this.forward(&target, &call, args.clone(), &scope).await? {
                        Delivery::Local => {}
                        Delivery::Answered(Response::Rpc, body) => return Ok(body),
                        Delivery::Answered(other, _) => return Err(unexpected(other)),
                    }
                }
                let call = RpcCall {
                    method: method.clone(),
                    args: args.clone(),
                };
                match this
                    .runtime
                    .call_within(target.clone(), None, call, scope.clone())
                    .await
                {
                    Err(WireError::Moved { .. }) if this.wait_for_move(seen, &scope).await => {}
                    result => return Ok(result?),
                }
            }
        }
        .boxed()
    }
}
