//! One live object: its mailbox, its turns, and its output gate.
//!
//! Each live object is one tokio task running [`run`]. It takes events from
//! a bounded mailbox one at a time (so handlers never interleave), commits
//! each successful turn's writes to the group commit, and holds each reply in
//! the [`Gate`] until every write made before it is durable. It does not wait
//! for durability before the next event: a hot object runs turn after turn
//! while their commits are batched together.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::FutureExt;
use odo_core::WireError;
use odo_storage::CommitWait;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::class::Factory;
use crate::context::{Context, background_idle, start_deferred};
use crate::object::{
    AlarmInfo, DurableObject, ObjectError, Request, Response, RpcCall, is_reserved_method,
};
use crate::runtime::{ActorControl, Inner, ShardState};
use odo_core::ObjectAddress;

use crate::stub::CallScope;

/// An event for one object, with where to send its outcome.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    pub(crate) reply: oneshot::Sender<Result<Outcome, WireError>>,
    /// The caller's deadline and chain, inherited by the calls the handler
    /// makes.
    pub(crate) scope: CallScope,
}

#[derive(Debug)]
pub(crate) enum EventKind {
    Fetch(Request),
    Call(RpcCall),
    Alarm(AlarmInfo),
    /// Deletes the alarm if it is still set for this time (after its last
    /// retry failed).
    ClearAlarm(u64),
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Fetch(Response),
    Call(Bytes),
    /// The alarm handler ran and succeeded.
    AlarmRan,
    /// The alarm was no longer set for that time: nothing ran.
    AlarmStale,
    Done,
}

/// One object's queue of events, bounded. Senders push while holding the
/// object table's lock; the actor pops. Unlike a channel it allocates
/// nothing while empty, so an idle object costs a few pointers.
#[derive(Debug)]
pub(crate) struct Mailbox {
    queue: std::sync::Mutex<VecDeque<Event>>,
    ready: tokio::sync::Notify,
    capacity: usize,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: std::sync::Mutex::new(VecDeque::new()),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event`; `false` (and the event dropped) when the queue is
    /// full.
    pub(crate) fn push(&self, event: Event) -> bool {
        let mut queue = self.queue();
        if queue.len() >= self.capacity {
            return false;
        }
        queue.push_back(event);
        drop(queue);
        // Keeps a permit if the actor is not waiting yet.
        self.ready.notify_one();
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Drops every queued event (their callers see the object stop).
    pub(crate) fn clear(&self) {
        let dropped = std::mem::take(&mut *self.queue());
        drop(dropped);
    }

    /// The next event. Cancel-safe: an event is taken only when returned.
    async fn recv(&self) -> Event {
        loop {
            {
                let mut queue = self.queue();
                if let Some(event) = queue.pop_front() {
                    if queue.is_empty() {
                        // Give the memory back between bursts.
                        queue.shrink_to_fit();
                    }
                    return event;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Everything an actor task needs to start.
pub(crate) struct ActorStart {
    pub(crate) runtime: Arc<Inner>,
    pub(crate) target: ObjectAddress,
    pub(crate) shard: Arc<ShardState>,
    pub(crate) control: Arc<ActorControl>,
}

type Reply = oneshot::Sender<Result<Outcome, WireError>>;

/// Replies waiting for durability, in the order their turns ran.
///
/// Each reply waits for its own turn's [`CommitWait`], which covers every
/// earlier write of the object made through the same storage view. A reply
/// whose commit failed is answered `ObjectReset` instead; the turns that ran
/// on its state fail with it, because their commits are refused once an
/// earlier commit of their view failed.
#[derive(Default)]
struct Gate {
    held: VecDeque<(Option<CommitWait>, Reply, Result<Outcome, WireError>)>,
}

impl Gate {
    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Queues a reply behind `durable` (and behind every earlier reply).
    fn hold(
        &mut self,
        durable: Option<CommitWait>,
        reply: Reply,
        result: Result<Outcome, WireError>,
    ) {
        if durable.is_none() && self.held.is_empty() {
            let _ = reply.send(result);
        } else {
            self.held.push_back((durable, reply, result));
        }
    }

    /// Waits for the oldest held commit, then releases every reply whose
    /// commit has completed, in order.
    async fn release(&mut self) {
        let first = match self.held.front() {
            Some((Some(durable), _, _)) => durable.clone().wait().await,
            _ => Ok(()),
        };
        self.answer_front(first);
        // Release what is already done without another trip through the
        // event loop.
        while let Some((durable, _, _)) = self.held.front() {
            let done = match durable {
                None => Ok(()),
                Some(d) => match d.clone().wait().now_or_never() {
                    Some(done) => done,
                    None => return,
                },
            };
            self.answer_front(done);
        }
    }

    fn answer_front(&mut self, durable: Result<(), odo_storage::StorageError>) {
        let Some((_, reply, result)) = self.held.pop_front() else {
            return;
        };
        let result = match durable {
            Ok(()) => result,
            Err(reason) => Err(WireError::OutcomeUnknown {
                reason: format!("a commit this answer waited for failed: {reason}"),
            }),
        };
        let _ = reply.send(result);
    }
}

/// Runs `fut` while releasing the gate, so replies leave as soon as their
/// commits are durable even while a long turn runs.
///
/// Every poll of the object's code is watched ([`crate::stall`]), so a
/// poll that never returns shows in the worker's heartbeats.
async fn drive<F: Future>(fut: F, gate: &mut Gate) -> F::Output {
    let mut fut = pin!(fut);
    let mut fut = std::future::poll_fn(move |cx| crate::stall::poll_watched(fut.as_mut(), cx));
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            () = gate.release(), if !gate.is_empty() => {}
        }
    }
}

/// The life of one object.
pub(crate) async fn run<T: DurableObject>(start: ActorStart, factory: Factory<T>) {
    let ActorStart {
        runtime,
        target,
        shard,
        control,
    } = start;
    // However this task ends (even by a panic outside a handler), the
    // object leaves the table and its queued callers are answered.
    let _exit = Exit {
        runtime: runtime.clone(),
        control: control.clone(),
        shard: shard.clone(),
        id: target.id,
    };
    let mailbox = &control.mailbox;
    let idle_timeout = runtime.config.idle_timeout;
    let mut drain: watch::Receiver<bool> = shard.drain.subscribe();
    // Two receivers: one waited on between events, one during a turn.
    let mut force: watch::Receiver<bool> = shard.force_stop.subscribe();
    let mut force_in_turn = force.clone();
    let mut ctx = Context {
        storage: shard.store.object(target.id),
        target,
        activation: 0,
        cluster: runtime.cluster(),
        scope: CallScope::outside(runtime.config.call_timeout),
        background: OnceLock::new(),
        deferred: Vec::new(),
    };
    let mut instance: Option<T> = None;
    let mut gate = Gate::default();
    let mut idle_deadline = Instant::now() + idle_timeout;
    loop {
        let draining = *drain.borrow();
        let quiet = gate.is_empty() && mailbox.is_empty();
        if draining && quiet && runtime.try_remove(&ctx.target.id, &control) {
            break;
        }
        tokio::select! {
            biased;
            () = gate.release(), if !gate.is_empty() => {
                renew_failed_view(&mut instance, &mut ctx, &shard);
            }
            event = mailbox.recv() => {
                control.touch(runtime.tick());
                // Boxed so that an idle object's task does not carry the
                // largest turn's state inline.
                let turn = Box::pin(turn(&mut ctx, &mut instance, &mut gate, &shard, &factory, event));
                tokio::select! {
                    biased;
                    () = turn => {}
                    // The shard's release gave up waiting: the turn is
                    // dropped and its caller answered `OutcomeUnknown`.
                    () = stopped(&mut force_in_turn) => {
                        warn!(id = %ctx.target.id, "stopped in the middle of an event: the shard was released");
                        break;
                    }
                }
                idle_deadline = Instant::now() + idle_timeout;
            }
            () = stopped(&mut force) => break,
            () = sleep_until(idle_deadline), if gate.is_empty() => {
                if background_idle(&ctx) && runtime.try_remove(&ctx.target.id, &control) {
                    debug!(id = %ctx.target.id, "evicted after idle timeout");
                    break;
                }
                idle_deadline = Instant::now() + idle_timeout;
            }
            () = control.evict.notified() => {
                if gate.is_empty() && background_idle(&ctx) && runtime.try_remove(&ctx.target.id, &control) {
                    debug!(id = %ctx.target.id, "evicted over the live-object cap");
                    break;
                }
            }
            _ = drain.changed(), if !draining => {}
        }
    }
    drop(instance);
    drop(ctx);
}

/// Resolves once `force` says stop (or its sender is gone).
async fn stopped(force: &mut watch::Receiver<bool>) {
    let _ = force.wait_for(|stop| *stop).await;
}

/// Runs when an actor task ends, normally or not.
struct Exit {
    runtime: Arc<Inner>,
    control: Arc<ActorControl>,
    shard: Arc<ShardState>,
    id: odo_core::ObjectId,
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.runtime.forget(&self.id, &self.control);
        self.runtime.actor_exited(&self.shard);
    }
}

/// Resets the object after a failed turn: drops the instance and the
/// failed turn's writes, and nothing else. Turns that already committed
/// stay in the storage view (their commits may still be in flight), so the
/// next activation reads them, and its replies wait for them.
fn reset<T>(instance: &mut Option<T>, ctx: &mut Context, shard: &ShardState) {
    *instance = None;
    ctx.storage.rollback_turn();
    renew_failed_view(instance, ctx, shard);
}

/// After a commit of the object failed: drops the instance (its later
/// turns ran on state that will never be durable) and replaces the storage
/// view with a fresh one that reads only what is durable. Safe at once:
/// once a commit of a view failed, none of its turns can still land.
fn renew_failed_view<T>(instance: &mut Option<T>, ctx: &mut Context, shard: &ShardState) {
    if ctx.storage.has_failed() {
        warn!(class = %ctx.target.class, id = %ctx.target.id, "a commit of this object failed: object reset");
        *instance = None;
        ctx.storage = shard.store.object(ctx.target.id);
    }
}

fn reset_error(ctx: &Context, why: &str) -> WireError {
    warn!(class = %ctx.target.class, id = %ctx.target.id, reason = why, "object reset");
    WireError::ObjectReset {
        reason: why.to_owned(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into());
    format!("handler panicked: {text}")
}

/// What a handler run came to.
enum Ran {
    Ok(Outcome),
    /// The caller's mistake: reply with this error, keep the instance.
    Refused(WireError),
    /// The handler failed or panicked: reset the object.
    Failed(String),
}

fn classify<O>(
    result: std::thread::Result<Result<O, ObjectError>>,
    wrap: impl FnOnce(O) -> Outcome,
) -> Ran {
    match result {
        Ok(Ok(out)) => Ran::Ok(wrap(out)),
        Ok(Err(e)) if !e.resets() => Ran::Refused(WireError::BadRequest {
            message: e.to_string(),
        }),
        Ok(Err(e)) => Ran::Failed(e.to_string()),
        Err(panic) => Ran::Failed(panic_message(&*panic)),
    }
}

/// One event, start to end of its turn.
async fn turn<T: DurableObject>(
    ctx: &mut Context,
    instance: &mut Option<T>,
    gate: &mut Gate,
    shard: &ShardState,
    factory: &Factory<T>,
    event: Event,
) {
    let Event { kind, reply, scope } = event;
    ctx.scope = scope.entered(ctx.target.id);
    let obj = match instance {
        Some(obj) => obj,
        None => {
            ctx.activation = crate::runtime::next_activation();
            let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory(ctx)));
            let ran = match created {
                Ok(mut obj) => {
                    let result = drive(AssertUnwindSafe(obj.init(ctx)).catch_unwind(), gate).await;
                    match classify(result, |()| Outcome::Done) {
                        Ran::Ok(_) => Ok(obj),
                        Ran::Refused(e) => Err(e.to_string()),
                        Ran::Failed(why) => Err(why),
                    }
                }
                Err(panic) => Err(panic_message(&*panic)),
            };
            match ran {
                Ok(obj) => instance.insert(obj),
                Err(why) => {
                    ctx.deferred.clear();
                    let error = reset_error(ctx, &format!("initialisation failed: {why}"));
                    reset(instance, ctx, shard);
                    gate.hold(None, reply, Err(error));
                    return;
                }
            }
        }
    };
    let ran = match kind {
        EventKind::Fetch(request) => {
            let result = drive(
                AssertUnwindSafe(obj.fetch(ctx, request)).catch_unwind(),
                gate,
            )
            .await;
            classify(result, Outcome::Fetch)
        }
        EventKind::Call(call) => {
            if is_reserved_method(&call.method) {
                Ran::Refused(WireError::BadRequest {
                    message: format!("{:?} is a reserved method name", call.method),
                })
            } else {
                let result =
                    drive(AssertUnwindSafe(obj.call(ctx, call)).catch_unwind(), gate).await;
                classify(result, |r| Outcome::Call(r.into_bytes()))
            }
        }
        EventKind::Alarm(info) => run_alarm(obj, ctx, gate, info).await,
        EventKind::ClearAlarm(scheduled_ms) => match ctx.storage.get_alarm().await {
            Ok(Some(at)) if at == scheduled_ms => match ctx.storage.delete_alarm().await {
                Ok(()) => Ran::Ok(Outcome::Done),
                Err(e) => Ran::Failed(e.to_string()),
            },
            Ok(_) => Ran::Ok(Outcome::Done),
            Err(e) => Ran::Failed(e.to_string()),
        },
    };
    let deferred = std::mem::take(&mut ctx.deferred);
    match ran {
        Ran::Ok(outcome) => {
            // If a commit of the object failed during the turn, this wait
            // fails at once: the turn ran on state that was never durable.
            let durable = ctx.storage.commit_turn();
            start_deferred(deferred, durable.clone());
            gate.hold(durable, reply, Ok(outcome));
            renew_failed_view(instance, ctx, shard);
        }
        Ran::Refused(error) => {
            ctx.storage.rollback_turn();
            gate.hold(None, reply, Err(error));
            renew_failed_view(instance, ctx, shard);
        }
        Ran::Failed(why) => {
            let error = reset_error(ctx, &why);
            reset(instance, ctx, shard);
            gate.hold(None, reply, Err(error));
        }
    }
}

/// Runs the alarm handler if the alarm is still set for that time, and
/// clears it after a success unless the handler set a new one.
async fn run_alarm<T: DurableObject>(
    obj: &mut T,
    ctx: &mut Context,
    gate: &mut Gate,
    info: AlarmInfo,
) -> Ran {
    match ctx.storage.get_alarm().await {
        Ok(Some(at)) if at == info.scheduled_ms => {}
        Ok(_) => return Ran::Ok(Outcome::AlarmStale),
        Err(e) => return Ran::Failed(e.to_string()),
    }
    let result = drive(AssertUnwindSafe(obj.alarm(ctx, info)).catch_unwind(), gate).await;
    match classify(result, |()| Outcome::AlarmRan) {
        Ran::Ok(outcome) => match ctx.storage.get_alarm().await {
            Ok(Some(at)) if at == info.scheduled_ms => match ctx.storage.delete_alarm().await {
                Ok(()) => Ran::Ok(outcome),
                Err(e) => Ran::Failed(e.to_string()),
            },
            Ok(_) => Ran::Ok(outcome),
            Err(e) => Ran::Failed(e.to_string()),
        },
        // An alarm handler's refusal is still a failure to retry.
        Ran::Refused(e) => Ran::Failed(e.to_string()),
        failed => failed,
    }
}
