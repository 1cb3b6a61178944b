//! The object runtime: which objects are live, where their events go, the
//! shards (stores) this process serves, alarms and eviction.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::{ObjectAddress, WireError};
use odo_storage::{ShardSpec, Store, StoreOptions};
use odo_transport::forward::{ForwardError, OutboundCall};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, info, warn};

use crate::actor::ActorStart;
use crate::alarms::{AlarmHost, alarm_loop};
use crate::call::{CallError, CallScope, Cluster};
use crate::class::{ClassEntry, Classes};
use crate::config::RuntimeConfig;
use crate::mailbox::{Event, EventKind, Outcome};
use crate::rpc::RpcCall;
use crate::socket::WebSocketDoors;
use crate::stub::NamespaceHandle;
use crate::table::{ObjectTable, ShardState, lock};
use crate::types::{Request, Response};

mod sockets;

/// The object runtime of one process: hosts the objects of the shards it
/// serves, one live instance per object, one event at a time per object.
///
/// Cloning is cheap and gives another handle on the same runtime.
///
/// ```
/// use bytes::Bytes;
/// use odo_storage::{MemoryBackend, Store, StoreOptions};
/// use odo_worker::{Classes, Context, DurableObject, ObjectError, Request, Response, Runtime, RuntimeConfig};
///
/// struct Hello;
/// impl DurableObject for Hello {
///     fn create(_: &Context) -> Self { Hello }
///     async fn fetch(&mut self, ctx: &mut Context, _: Request) -> Result<Response, ObjectError> {
///         Ok(Response::new(Bytes::from(format!("hello from {}", ctx.name().unwrap_or("?")))))
///     }
/// }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut classes = Classes::default();
/// classes.register::<Hello>("HELLO").unwrap();
/// let runtime = Runtime::new(classes, RuntimeConfig::default(), 1);
/// runtime.open_shard(0, 1, Store::open(MemoryBackend::new(), StoreOptions::default()).unwrap()).unwrap();
/// let stub = runtime.namespace("HELLO").get_by_name("world");
/// let response = stub.fetch(Request::new(Bytes::new())).await.unwrap();
/// assert_eq!(response.body(), "hello from world");
/// runtime.shutdown().await;
/// # });
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("classes", &self.inner.classes)
            .field("shard_count", &self.inner.shard_count)
            .field("live_objects", &self.live_objects())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    classes: Classes,
    config: Arc<RuntimeConfig>,
    shard_count: u32,
    shards: RwLock<HashMap<u32, Arc<ShardState>>>,
    objects: Arc<ObjectTable>,
    cluster: RwLock<Option<Arc<dyn Cluster>>>,
    doors: RwLock<Option<Arc<dyn WebSocketDoors>>>,
    janitor: Arc<Notify>,
    janitor_started: AtomicBool,
    this: Weak<Inner>,
}

/// Why a shard cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The shard number is not below the shard count.
    #[error("shard {shard} does not exist (there are {count})")]
    NoSuchShard {
        /// The shard asked for.
        shard: u32,
        /// The runtime's shard count.
        count: u32,
    },
    /// The shard is already open here.
    #[error("shard {0} is already open")]
    AlreadyOpen(u32),
}

impl Runtime {
    /// A runtime hosting `classes` among `shard_count` virtual shards. It
    /// serves no shard until [`Runtime::open_shard`].
    pub fn new(classes: Classes, mut config: RuntimeConfig, shard_count: u32) -> Self {
        config.queue_depth = config.queue_depth.max(1);
        let inner = Arc::new_cyclic(|this| Inner {
            classes,
            config: Arc::new(config),
            shard_count: shard_count.max(1),
            shards: RwLock::default(),
            objects: Arc::default(),
            cluster: RwLock::new(None),
            doors: RwLock::new(None),
            janitor: Arc::new(Notify::new()),
            janitor_started: AtomicBool::new(false),
            this: this.clone(),
        });
        Self { inner }
    }

    /// The classes this runtime hosts.
    pub fn classes(&self) -> &Classes {
        &self.inner.classes
    }

    /// The options of the store of `shard`, whose backend is `durable` or
    /// not: [`StoreOptions::for_shard`] with the SQLite-backed objects'
    /// limits of this runtime's [`RuntimeConfig::sql`].
    pub fn store_options(&self, shard: &ShardSpec, durable: bool) -> StoreOptions {
        let mut options = StoreOptions::for_shard(shard, durable);
        options.sql = options.sql.with_limits(self.inner.config.sql);
        options
    }

    /// The number of virtual shards.
    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count
    }

    /// Objects live right now.
    pub fn live_objects(&self) -> usize {
        self.inner.objects.live()
    }

    /// The shards served here, with their epochs, sorted.
    pub fn shards(&self) -> Vec<(u32, u64)> {
        let mut shards: Vec<_> = read(&self.inner.shards)
            .values()
            .map(|s| (s.shard, s.epoch))
            .collect();
        shards.sort_unstable();
        shards
    }

    /// Group commits and committed turns so far, over the open shards'
    /// stores (for metrics).
    pub fn commit_totals(&self) -> (u64, u64) {
        read(&self.inner.shards).values().fold((0, 0), |(b, t), s| {
            let stats = s.store.stats();
            (b + stats.batches, t + stats.turns)
        })
    }

    /// The epoch this runtime holds `shard` at, if it serves it.
    pub fn shard_epoch(&self, shard: u32) -> Option<u64> {
        read(&self.inner.shards).get(&shard).map(|s| s.epoch)
    }

    /// Routes calls that objects make to other objects through `cluster`
    /// (a worker process forwards calls for shards it does not hold). By
    /// default every call is delivered in this runtime.
    pub fn set_cluster(&self, cluster: Arc<dyn Cluster>) {
        *self
            .inner
            .cluster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(cluster);
    }

    /// Sends the objects' WebSocket outputs to the front doors through
    /// `doors` (a worker process reaches them over the transport; a
    /// program hosting objects itself hands them to its own front door).
    /// Without it, objects cannot accept WebSockets.
    pub fn set_websocket_doors(&self, doors: Arc<dyn WebSocketDoors>) {
        *self
            .inner
            .doors
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(doors);
    }

    /// Forgets the front doors given to [`Runtime::set_websocket_doors`]
    /// (at shutdown: a front door in this process holds the runtime too).
    pub fn clear_websocket_doors(&self) {
        *self
            .inner
            .doors
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Delivers an event of a client's WebSocket, relayed by the front door
    /// `event.door`, to the object that accepted the socket; `payload` is
    /// the message (or one part of it). Resolves once its turn ran and its
    /// outputs were handed to the front doors. `epoch` as in
    /// [`Runtime::fetch`].
    pub async fn socket_event(
        &self,
        event: odo_core::socket::SocketEvent,
        epoch: Option<u64>,
        payload: Bytes,
        scope: CallScope,
    ) -> Result<(), WireError> {
        self.inner.socket_event(event, epoch, payload, scope).await
    }

    /// [`Runtime::socket_event`] for `target` in this process, addressed
    /// as [`Runtime::fetch_within`] addresses a request: at its shard's
    /// current epoch, within `scope`. `event` is an
    /// [`OutboundCall::Socket`]; any other call is a bad request.
    pub async fn socket_event_within(
        &self,
        target: ObjectAddress,
        event: &OutboundCall,
        payload: Bytes,
        scope: CallScope,
    ) -> Result<(), WireError> {
        let OutboundCall::Socket {
            door,
            socket,
            auto_response_ms,
            kind,
        } = event
        else {
            return Err(WireError::BadRequest {
                message: "not a WebSocket event".into(),
            });
        };
        let shard = target.id.shard(self.shard_count());
        let event = odo_core::socket::SocketEvent {
            target: odo_core::wire::Target {
                object: target,
                shard,
                epoch: self.shard_epoch(shard).unwrap_or(0),
            },
            meta: odo_core::wire::CallMeta::default(),
            door: door.clone(),
            socket: *socket,
            auto_response_ms: *auto_response_ms,
            kind: kind.clone(),
        };
        self.socket_event(event, None, payload, scope).await
    }

    /// Front door `door` is gone with its host (cluster mode: the host's
    /// lease expired): each object of this runtime's shards with sockets
    /// there gets a close event (1006, not clean) for each, as for a
    /// dropped connection on one machine, and forgets them. Returns how
    /// many sockets that was; the events run in the background.
    pub fn door_gone(&self, door: &str) -> usize {
        let shards: Vec<Arc<ShardState>> = read(&self.inner.shards).values().cloned().collect();
        let mut events = Vec::new();
        for shard in shards {
            for (id, socket) in shard.sockets.at_door(door) {
                let Some(class) = self.inner.classes.by_tag(id.namespace_tag()) else {
                    continue;
                };
                events.push(odo_core::socket::SocketEvent {
                    target: odo_core::wire::Target {
                        object: ObjectAddress {
                            class: class.name.clone(),
                            id,
                            name: None,
                        },
                        shard: shard.shard,
                        epoch: shard.epoch,
                    },
                    meta: odo_core::wire::CallMeta::default(),
                    door: door.to_owned(),
                    socket,
                    auto_response_ms: None,
                    kind: odo_core::socket::SocketEventKind::Close {
                        code: odo_core::socket::close_code::ABNORMAL,
                        reason: "the host holding the socket was lost".into(),
                        was_clean: false,
                    },
                });
            }
        }
        let n = events.len();
        if n > 0 {
            let this = self.clone();
            tokio::spawn(async move {
                for event in events {
                    let epoch = event.target.epoch;
                    let scope = CallScope::outside(this.inner.config.call_timeout);
                    if let Err(e) = this
                        .socket_event(event, Some(epoch), Bytes::new(), scope)
                        .await
                    {
                        debug!(error = %e, "a lost host's socket: its close event failed");
                    }
                }
            });
        }
        n
    }

    /// A handle on namespace `class`, for programs that hold the runtime.
    pub fn namespace(&self, class: &str) -> NamespaceHandle {
        NamespaceHandle::new(
            class,
            self.inner.cluster(),
            false,
            self.inner.config.call_timeout,
        )
    }

    /// Starts serving `shard` at `epoch` from `store`, including its alarms.
    pub fn open_shard(&self, shard: u32, epoch: u64, store: Store) -> Result<(), ShardError> {
        self.open_shard_with_sockets(shard, epoch, store, Vec::new())
    }

    /// As [`Runtime::open_shard`], knowing from the start the sockets the
    /// front doors hold for the shard's objects (`sockets`, as each door
    /// answered [`WebSocketDoors::shard_sockets_page`]): a cluster host taking
    /// over a shard serves it only with every door's sockets in its book,
    /// so a broadcast reaches the members held at doors whose clients have
    /// not spoken since.
    ///
    /// # Errors
    ///
    /// As [`Runtime::open_shard`].
    pub fn open_shard_with_sockets(
        &self,
        shard: u32,
        epoch: u64,
        store: Store,
        sockets: Vec<odo_core::socket::DoorSockets>,
    ) -> Result<(), ShardError> {
        let count = self.inner.shard_count;
        if shard >= count {
            return Err(ShardError::NoSuchShard { shard, count });
        }
        let state = Arc::new(ShardState::new(shard, epoch, store));
        for held in sockets {
            if held.object.shard(count) != shard {
                continue;
            }
            let door = state.sockets.door(&held.door);
            // Whole (not in parts): it fails only past the cap.
            let max = self.inner.config.websocket_max_sockets_per_object;
            if let Err(refused) = state.sockets.sync(
                &held.object,
                &door,
                held.sockets,
                held.auto_response,
                false,
                false,
                max,
            ) {
                tracing::warn!(object = %held.object, door = %held.door, ?refused, "a front door's records of an object's sockets refused: they are handed over with its next event");
            }
        }
        {
            let mut shards = self
                .inner
                .shards
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if shards.contains_key(&shard) {
                return Err(ShardError::AlreadyOpen(shard));
            }
            shards.insert(shard, state.clone());
        }
        let host: Weak<dyn AlarmHost> = self.inner.this.clone();
        let task = tokio::spawn(alarm_loop(host, state.clone()));
        *lock(&state.alarm_task) = Some(task);
        if !self.inner.janitor_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(janitor(self.inner.this.clone(), self.inner.janitor.clone()));
        }
        info!(shard, epoch, "shard opened");
        Ok(())
    }

    /// Stops serving `shard`: new events are answered `Moved`, queued and
    /// running events finish and their writes become durable, every object
    /// of the shard is dropped, and its store is flushed and closed. Returns
    /// `false` if the shard was not open here.
    ///
    /// Bounded: objects still busy after [`RuntimeConfig::release_grace`]
    /// (an event that never ends) are stopped, their events answered
    /// `OutcomeUnknown`; what they had committed is still made durable.
    pub async fn release_shard(&self, shard: u32) -> bool {
        let state = self
            .inner
            .shards
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&shard);
        let Some(state) = state else { return false };
        state.drain.send_replace(true);
        let grace = self.inner.config.release_grace;
        if tokio::time::timeout(grace, state.all_actors_gone())
            .await
            .is_err()
        {
            warn!(
                shard,
                busy = state.actors.load(Ordering::SeqCst),
                ?grace,
                "objects still busy after the release grace period; stopping them"
            );
            state.force_stop.send_replace(true);
            state.all_actors_gone().await;
        }
        let task = lock(&state.alarm_task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        if let Err(e) = state.store.close().await {
            warn!(shard, error = %e, "closing the shard's store failed");
        }
        info!(shard, epoch = state.epoch, "shard released");
        true
    }

    /// Releases every shard (see [`Runtime::release_shard`]).
    pub async fn shutdown(&self) {
        let shards: Vec<u32> = self.shards().into_iter().map(|(s, _)| s).collect();
        for shard in shards {
            self.release_shard(shard).await;
        }
    }

    /// Delivers an HTTP request to an object, with the runtime's
    /// [`call_timeout`](RuntimeConfig::call_timeout) as its deadline.
    /// `epoch`, when given, must be the epoch this runtime holds the
    /// object's shard at, or the answer is [`WireError::Moved`].
    pub async fn fetch(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        request: Request,
    ) -> Result<Response, WireError> {
        let scope = CallScope::outside(self.inner.config.call_timeout);
        self.fetch_within(target, epoch, request, scope).await
    }

    /// [`Runtime::fetch`] within a caller's `scope`: its deadline (then
    /// [`WireError::DeadlineExceeded`]) and call chain (a target already in
    /// it is refused with [`WireError::CallCycle`]).
    pub async fn fetch_within(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        request: Request,
        scope: CallScope,
    ) -> Result<Response, WireError> {
        match self
            .inner
            .deliver(target, epoch, EventKind::Fetch(request), scope)
            .await?
        {
            Outcome::Fetch(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Delivers an RPC call to an object; returns the encoded result.
    pub async fn call(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        call: RpcCall,
    ) -> Result<Bytes, WireError> {
        let scope = CallScope::outside(self.inner.config.call_timeout);
        self.call_within(target, epoch, call, scope).await
    }

    /// [`Runtime::call`] within a caller's `scope` (see
    /// [`Runtime::fetch_within`]).
    pub async fn call_within(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        call: RpcCall,
        scope: CallScope,
    ) -> Result<Bytes, WireError> {
        match self
            .inner
            .deliver(target, epoch, EventKind::Call(call), scope)
            .await?
        {
            Outcome::Call(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(outcome: Outcome) -> WireError {
    WireError::Internal {
        message: format!("unexpected outcome {outcome:?}"),
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(crate) fn cluster(&self) -> Arc<dyn Cluster> {
        if let Some(cluster) = read(&self.cluster).as_ref() {
            return cluster.clone();
        }
        Arc::new(LocalCluster(self.this.clone()))
    }

    /// Delivers one event to its object and waits for the outcome. Calls
    /// (fetch, RPC) are refused before delivery if they would close a cycle
    /// or their deadline has passed, and given up at their deadline;
    /// alarms are waited for until they end (their own time limit cuts
    /// them).
    pub(crate) async fn deliver(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        kind: EventKind,
        scope: CallScope,
    ) -> Result<Outcome, WireError> {
        self.submit(target, epoch, kind, scope)?.await
    }

    /// The first half of [`Inner::deliver`]: checks the event and queues it
    /// for its object at once (so events submitted one after the other run
    /// in that order); the returned future waits for its answer.
    fn submit(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        kind: EventKind,
        scope: CallScope,
    ) -> Result<impl Future<Output = Result<Outcome, WireError>> + use<>, WireError> {
        let is_call = kind.has_caller();
        if is_call {
            scope.check_cycle(&target.id)?;
            if scope.deadline <= tokio::time::Instant::now() {
                return Err(WireError::DeadlineExceeded);
            }
        }
        let (class, shard) = self.locate(&target, epoch)?;
        let (reply, outcome) = oneshot::channel();
        let deadline = scope.deadline;
        self.enqueue(&class, target, shard, Event { kind, reply, scope })?;
        Ok(async move {
            let stopped = |_| WireError::OutcomeUnknown {
                reason: "the object stopped before answering".into(),
            };
            if is_call {
                match tokio::time::timeout_at(deadline, outcome).await {
                    Ok(answer) => answer.map_err(stopped)?,
                    Err(_) => Err(WireError::DeadlineExceeded),
                }
            } else {
                outcome.await.map_err(stopped)?
            }
        })
    }

    /// The class and the shard of `target`, if this runtime serves it (at
    /// `epoch`, when given).
    fn locate(
        &self,
        target: &ObjectAddress,
        epoch: Option<u64>,
    ) -> Result<(Arc<ClassEntry>, Arc<ShardState>), WireError> {
        let class = self
            .classes
            .get(&target.class)
            .ok_or_else(|| WireError::UnknownClass {
                class: target.class.to_string(),
            })?;
        if !class.namespace.owns(&target.id) {
            return Err(WireError::BadRequest {
                message: format!(
                    "object id {} does not belong to class {}",
                    target.id, target.class
                ),
            });
        }
        let shard_no = target.id.shard(self.shard_count);
        let shard = read(&self.shards)
            .get(&shard_no)
            .cloned()
            .ok_or(WireError::Moved { epoch: 0 })?;
        if shard.is_draining() || epoch.is_some_and(|e| e != shard.epoch) {
            return Err(WireError::Moved { epoch: shard.epoch });
        }
        Ok((class.clone(), shard))
    }

    fn enqueue(
        &self,
        class: &Arc<ClassEntry>,
        target: ObjectAddress,
        shard: Arc<ShardState>,
        event: Event,
    ) -> Result<(), WireError> {
        let Some(control) =
            self.objects
                .enqueue(target.id, event, self.config.queue_depth, &shard)?
        else {
            return Ok(());
        };
        class.spawner.spawn(ActorStart {
            objects: self.objects.clone(),
            config: self.config.clone(),
            cluster: self.cluster(),
            target,
            storage: class.storage,
            shard,
            control,
            doors: read(&self.doors).clone(),
        });
        if self.objects.live() > self.config.max_live_objects {
            self.janitor.notify_one();
        }
        Ok(())
    }
}

impl AlarmHost for Inner {
    fn classes(&self) -> &Classes {
        &self.classes
    }

    fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    fn deliver(
        &self,
        target: ObjectAddress,
        kind: EventKind,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Outcome, WireError>> {
        let inner = self.this.upgrade();
        async move {
            let inner = inner.ok_or_else(|| WireError::Internal {
                message: "the runtime is gone".into(),
            })?;
            inner.deliver(target, None, kind, scope).await
        }
        .boxed()
    }
}

/// Delivers calls between objects of this runtime.
struct LocalCluster(Weak<Inner>);

impl LocalCluster {
    fn deliver(
        &self,
        target: ObjectAddress,
        kind: EventKind,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Outcome, CallError>> {
        let inner = self.0.upgrade();
        async move {
            let inner = inner.ok_or_else(|| {
                CallError::from(ForwardError::Unavailable(
                    "the runtime has shut down".into(),
                ))
            })?;
            Ok(inner.deliver(target, None, kind, scope).await?)
        }
        .boxed()
    }
}

impl Cluster for LocalCluster {
    fn fetch(
        &self,
        target: ObjectAddress,
        request: Request,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Response, CallError>> {
        let outcome = self.deliver(target, EventKind::Fetch(request), scope);
        async move {
            match outcome.await? {
                Outcome::Fetch(response) => Ok(response),
                other => Err(unexpected(other).into()),
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
        let outcome = self.deliver(target, EventKind::Call(RpcCall { method, args }), scope);
        async move {
            match outcome.await? {
                Outcome::Call(result) => Ok(result),
                other => Err(unexpected(other).into()),
            }
        }
        .boxed()
    }
}

/// Evicts the least recently used idle objects while more are live than the
/// cap allows.
async fn janitor(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let cap = strong.config.max_live_objects;
        let live = strong.objects.live();
        if live > cap {
            // Evict a little more than the excess so that a full runtime does
            // not scan its table on every activation.
            let excess = live - cap + (cap / 16).max(1);
            for control in strong.objects.least_recently_used(excess) {
                control.evict.notify_one();
            }
        }
        drop(strong);
        // `notify_one` keeps a permit, so a wake between the scan and here
        // is not lost.
        wake.notified().await;
    }
}
