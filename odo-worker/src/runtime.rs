//! The object runtime: which objects are live, where their events go, the
//! shards (stores) this process serves, alarms and eviction.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_storage::Store;
use odo_transport::forward::ForwardError;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::actor::{ActorStart, Event, EventKind, Mailbox, Outcome};
use crate::class::{ClassEntry, Classes};
use crate::config::RuntimeConfig;
use crate::object::{AlarmInfo, Request, Response, RpcCall};
use crate::stub::{CallError, CallScope, Cluster, NamespaceHandle};

const TABLE_SHARDS: usize = 32;

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
    pub(crate) classes: Classes,
    pub(crate) config: RuntimeConfig,
    shard_count: u32,
    shards: RwLock<HashMap<u32, Arc<ShardState>>>,
    tables: Box<[Mutex<HashMap<ObjectId, Slot>>]>,
    hasher: std::collections::hash_map::RandomState,
    live: AtomicUsize,
    clock: AtomicU64,
    cluster: RwLock<Option<Arc<dyn Cluster>>>,
    janitor: Arc<Notify>,
    janitor_started: AtomicBool,
    this: Weak<Inner>,
}

struct Slot {
    control: Arc<ActorControl>,
}

/// Shared between the object table and one actor.
#[derive(Debug)]
pub(crate) struct ActorControl {
    last_used: AtomicU64,
    pub(crate) evict: Notify,
    pub(crate) mailbox: Mailbox,
}

impl ActorControl {
    pub(crate) fn touch(&self, tick: u64) {
        self.last_used.store(tick, Ordering::Relaxed);
    }
}

/// One shard this process serves.
pub(crate) struct ShardState {
    shard: u32,
    epoch: u64,
    pub(crate) store: Store,
    pub(crate) drain: watch::Sender<bool>,
    /// Set when a release stops waiting for the shard's objects: every
    /// actor still running stops at once.
    pub(crate) force_stop: watch::Sender<bool>,
    actors: AtomicUsize,
    actors_gone: Notify,
    alarm_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ShardState {
    fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }
}

/// A number unique to each activation in this process.
pub(crate) fn next_activation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The printed form of activation number `n`: unique in this process by
/// the counter, and across processes with overwhelming probability by a
/// random per-process prefix.
pub(crate) fn activation_name(n: u64) -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Falls back to the pid and time if the OS generator is unavailable:
        // uniqueness within the process still holds through the counter.
        if getrandom::fill(&mut bytes).is_err() {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            bytes = (t ^ u64::from(std::process::id())).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    format!("{prefix:016x}-{n}")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (every
    // critical section is a single map operation), so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            config,
            shard_count: shard_count.max(1),
            shards: RwLock::default(),
            tables: (0..TABLE_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            live: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            cluster: RwLock::new(None),
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

    /// The number of virtual shards.
    pub fn shard_count(&self) -> u32 {
        self.inner.shard_count
    }

    /// Objects live right now.
    pub fn live_objects(&self) -> usize {
        self.inner.live.load(Ordering::SeqCst)
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
        let count = self.inner.shard_count;
        if shard >= count {
            return Err(ShardError::NoSuchShard { shard, count });
        }
        let state = Arc::new(ShardState {
            shard,
            epoch,
            store,
            drain: watch::Sender::new(false),
            force_stop: watch::Sender::new(false),
            actors: AtomicUsize::new(0),
            actors_gone: Notify::new(),
            alarm_task: Mutex::new(None),
        });
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
        let task = tokio::spawn(alarm_loop(self.inner.this.clone(), state.clone()));
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
        if tokio::time::timeout(grace, all_actors_gone(&state))
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
            all_actors_gone(&state).await;
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

/// Resolves once no actor of `state` is left.
async fn all_actors_gone(state: &ShardState) {
    loop {
        let gone = state.actors_gone.notified();
        if state.actors.load(Ordering::SeqCst) == 0 {
            return;
        }
        gone.await;
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

    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn table(&self, id: &ObjectId) -> &Mutex<HashMap<ObjectId, Slot>> {
        &self.tables[(self.hasher.hash_one(id) as usize) % TABLE_SHARDS]
    }

    /// Delivers one event to its object and waits for the outcome. Calls
    /// (fetch, RPC) are refused before delivery if they would close a cycle
    /// or their deadline has passed, and given up at their deadline;
    /// alarms run to completion.
    pub(crate) async fn deliver(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        kind: EventKind,
        scope: CallScope,
    ) -> Result<Outcome, WireError> {
        let is_call = matches!(kind, EventKind::Fetch(_) | EventKind::Call(_));
        if is_call {
            scope.check_cycle(&target.id)?;
            if scope.deadline <= tokio::time::Instant::now() {
                return Err(WireError::DeadlineExceeded);
            }
        }
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
        let (reply, outcome) = oneshot::channel();
        let deadline = scope.deadline;
        self.enqueue(class, target, shard, Event { kind, reply, scope })?;
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
    }

    fn enqueue(
        &self,
        class: &Arc<ClassEntry>,
        target: ObjectAddress,
        shard: Arc<ShardState>,
        event: Event,
    ) -> Result<(), WireError> {
        let mut table = lock(self.table(&target.id));
        if let Some(slot) = table.get(&target.id) {
            return if slot.control.mailbox.push(event) {
                Ok(())
            } else {
                Err(WireError::Overloaded)
            };
        }
        let control = Arc::new(ActorControl {
            last_used: AtomicU64::new(0),
            evict: Notify::new(),
            mailbox: Mailbox::new(self.config.queue_depth),
        });
        if !control.mailbox.push(event) {
            return Err(WireError::Internal {
                message: "a new mailbox refused its first event".into(),
            });
        }
        control.touch(self.tick());
        table.insert(
            target.id,
            Slot {
                control: control.clone(),
            },
        );
        shard.actors.fetch_add(1, Ordering::SeqCst);
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(runtime) = self.this.upgrade() else {
            return Err(WireError::Internal {
                message: "the runtime is gone".into(),
            });
        };
        class.spawner.spawn(ActorStart {
            runtime,
            target,
            shard,
            control,
        });
        drop(table);
        if live > self.config.max_live_objects {
            self.janitor.notify_one();
        }
        Ok(())
    }

    /// Removes an exiting actor's slot whatever its mailbox holds, and drops
    /// the queued events, so their callers get an error instead of waiting
    /// forever (used when an actor task ends abnormally).
    pub(crate) fn forget(&self, id: &ObjectId, control: &Arc<ActorControl>) {
        let mut table = lock(self.table(id));
        if table
            .get(id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.control, control))
        {
            table.remove(id);
        }
        drop(table);
        control.mailbox.clear();
    }

    /// Removes an actor's slot if its mailbox is empty. Senders only send
    /// while holding the table lock, so once this returns `true` no event
    /// can reach the exiting actor: the next event starts a new one.
    pub(crate) fn try_remove(&self, id: &ObjectId, control: &Arc<ActorControl>) -> bool {
        let mut table = lock(self.table(id));
        if !control.mailbox.is_empty() {
            return false;
        }
        if table
            .get(id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.control, control))
        {
            table.remove(id);
        }
        true
    }

    pub(crate) fn actor_exited(&self, shard: &ShardState) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        if shard.actors.fetch_sub(1, Ordering::SeqCst) == 1 {
            shard.actors_gone.notify_waiters();
        }
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
        let live = strong.live.load(Ordering::SeqCst);
        if live > cap {
            // Evict a little more than the excess so that a full runtime does
            // not scan its table on every activation.
            let excess = live - cap + (cap / 16).max(1);
            let mut candidates: Vec<(u64, Arc<ActorControl>)> = Vec::with_capacity(live);
            for table in strong.tables.iter() {
                candidates.extend(lock(table).values().map(|slot| {
                    (
                        slot.control.last_used.load(Ordering::Relaxed),
                        slot.control.clone(),
                    )
                }));
            }
            candidates.sort_unstable_by_key(|(tick, _)| *tick);
            for (_, control) in candidates.into_iter().take(excess) {
                control.evict.notify_one();
            }
        }
        drop(strong);
        // `notify_one` keeps a permit, so a wake between the scan and here
        // is not lost.
        wake.notified().await;
    }
}

/// Why an alarm is waiting to run again.
#[derive(Debug, Clone, Copy, Default)]
struct AlarmRetryState {
    /// Runs of the handler that failed; the backoff and `retry_count`
    /// follow this.
    failures: u32,
    /// Deliveries refused because the object's queue was full in a row:
    /// overload is not the handler's fault, so it reschedules (with a
    /// backoff of its own) without counting as a failure.
    overloaded: u32,
    /// The earliest next try, in ms since the Unix epoch.
    not_before: u64,
}

/// The delay before delivering again an alarm refused `times` times in a
/// row by a full queue: 10 ms doubling, capped at 1 s.
fn overload_delay(times: u32) -> u64 {
    10u64
        .saturating_mul(1u64 << times.saturating_sub(1).min(7))
        .min(1_000)
}

/// The alarm scheduler of one shard: fires due alarms through the objects'
/// mailboxes (so an alarm never runs concurrently with another event of its
/// object), retries failures with backoff, reschedules alarms refused by a
/// full queue without counting them as failures, skips alarms of classes
/// this runtime does not host (without letting them hold back the alarms
/// behind them), and sleeps until the next alarm or until a commit changes
/// the alarm index.
async fn alarm_loop(inner: Weak<Inner>, shard: Arc<ShardState>) {
    let mut retries: HashMap<ObjectId, AlarmRetryState> = HashMap::new();
    let mut running: HashSet<ObjectId> = HashSet::new();
    // Objects of no registered class: their alarms stay stored (the class
    // may come back in a later build) but are never delivered here.
    let mut foreign: HashSet<ObjectId> = HashSet::new();
    let mut tasks: JoinSet<(ObjectId, u64, Result<Outcome, WireError>)> = JoinSet::new();
    let mut alarm_changes = shard.store.alarm_changes();
    loop {
        let Some(rt) = inner.upgrade() else { return };

        let now = now_ms();
        // Every alarm this loop holds back is among the earliest: read past
        // them so that 64 others are always considered.
        let skip = running.len() + retries.len() + foreign.len();
        let pending = match shard.store.due_alarms(u64::MAX, skip + 64) {
            Ok(pending) => pending,
            Err(e) => {
                warn!(shard = shard.shard, error = %e, "reading the alarm index failed; retrying in 1 s");
                Vec::new()
            }
        };
        let mut next_wake = now + 1_000;
        for (id, at) in pending {
            if running.contains(&id) || foreign.contains(&id) {
                continue;
            }
            let retry = retries.get(&id).copied().unwrap_or_default();
            let due = at.max(retry.not_before);
            if due > now {
                next_wake = next_wake.min(due);
                continue;
            }
            let Some(class) = rt.classes.by_tag(id.namespace_tag()) else {
                warn!(shard = shard.shard, %id, "alarm for an object of no registered class; it stays stored and is not run here");
                foreign.insert(id);
                continue;
            };
            let target = ObjectAddress {
                class: class.name.clone(),
                id,
                name: None,
            };
            let info = AlarmInfo {
                scheduled_ms: at,
                retry_count: retry.failures,
            };
            running.insert(id);
            let rt2 = rt.clone();
            let scope = CallScope::outside(rt.config.call_timeout);
            tasks.spawn(async move {
                let result = rt2
                    .deliver(target, None, EventKind::Alarm(info), scope)
                    .await;
                (id, at, result)
            });
        }
        for retry in retries.values() {
            next_wake = next_wake.min(retry.not_before);
        }
        drop(rt);
        let sleep = Duration::from_millis(next_wake.saturating_sub(now_ms()));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            _ = alarm_changes.changed() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                let Ok((id, at, result)) = done else { continue };
                running.remove(&id);
                let Some(rt) = inner.upgrade() else { return };
                match result {
                    Ok(_) => {
                        retries.remove(&id);
                    }
                    Err(WireError::Moved { .. }) => return,
                    Err(WireError::Overloaded) => {
                        let retry = retries.entry(id).or_default();
                        retry.overloaded += 1;
                        retry.not_before = now_ms() + overload_delay(retry.overloaded);
                        debug!(%id, times = retry.overloaded, "alarm refused by a full queue; rescheduled");
                    }
                    Err(error) => {
                        let failures = retries.get(&id).map_or(0, |r| r.failures) + 1;
                        match rt.config.alarm_retry.delay_after(failures) {
                            Some(delay) => {
                                warn!(%id, failures, ?delay, %error, "alarm failed; retrying");
                                retries.insert(id, AlarmRetryState {
                                    failures,
                                    overloaded: 0,
                                    not_before: now_ms() + delay.as_millis() as u64,
                                });
                            }
                            None => {
                                warn!(%id, failures, %error, "alarm failed too many times; dropped");
                                retries.remove(&id);
                                let Some(class) = rt.classes.by_tag(id.namespace_tag()) else { continue };
                                let target = ObjectAddress { class: class.name.clone(), id, name: None };
                                running.insert(id);
                                let rt2 = rt.clone();
                                let scope = CallScope::outside(rt.config.call_timeout);
                                tasks.spawn(async move {
                                    let result = rt2.deliver(target, None, EventKind::ClearAlarm(at), scope).await;
                                    (id, at, result.map(|_| Outcome::AlarmStale))
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}
