//! One live object: its mailbox, its turns, and its output gate.
//!
//! Each live object is one tokio task running [`run`]. It takes events from
//! a bounded mailbox one at a time (so handlers never interleave), commits
//! each successful turn's writes to the group commit, and holds each reply in
//! the [`Gate`] until every write made before it is durable. It does not wait
//! for durability before the next event: a hot object runs turn after turn
//! while their commits are batched together.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use odo_core::{ObjectAddress, WireError};
use odo_storage::CommitWait;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::activation::next_activation;
use crate::call::{CallScope, Cluster};
use crate::config::RuntimeConfig;
use crate::context::{Context, background_idle, open_view, start_deferred};
use crate::error::ObjectError;
use crate::gate::{Gate, Reply, drive};
use crate::mailbox::{Event, EventKind, Outcome, SocketIn};
use crate::object::DurableObject;
use crate::socket::{SocketView, WebSocketDoors, take_upgrade};
use crate::table::{ActorControl, ObjectTable, ShardState};
use crate::types::{AlarmInfo, ClassStorage, is_reserved_method};

/// Builds an instance of a class when its object activates.
pub(crate) type Factory<T> = Arc<dyn Fn(&Context) -> T + Send + Sync>;

/// Everything an actor task needs to start.
pub(crate) struct ActorStart {
    pub(crate) objects: Arc<ObjectTable>,
    pub(crate) config: Arc<RuntimeConfig>,
    pub(crate) cluster: Arc<dyn Cluster>,
    pub(crate) target: ObjectAddress,
    pub(crate) storage: ClassStorage,
    pub(crate) shard: Arc<ShardState>,
    pub(crate) control: Arc<ActorControl>,
    /// Where the object's WebSocket outputs go.
    pub(crate) doors: Option<Arc<dyn WebSocketDoors>>,
}

/// How long after its caller's deadline a turn is cut.
const CUT_GRACE: Duration = Duration::from_millis(5);

/// The life of one object.
pub(crate) async fn run<T: DurableObject>(start: ActorStart, factory: Factory<T>) {
    let ActorStart {
        objects,
        config,
        cluster,
        target,
        storage,
        shard,
        control,
        doors,
    } = start;
    // However this task ends (even by a panic outside a handler), the
    // object leaves the table and its queued callers are answered.
    let _exit = Exit {
        objects: objects.clone(),
        control: control.clone(),
        shard: shard.clone(),
        id: target.id,
    };
    let mailbox = &control.mailbox;
    let idle_timeout = config.idle_timeout;
    let mut drain: watch::Receiver<bool> = shard.drain.subscribe();
    // Two receivers: one waited on between events, one during a turn.
    let mut force: watch::Receiver<bool> = shard.force_stop.subscribe();
    let mut force_in_turn = force.clone();
    let view = match open_view(&shard.store, target.id, storage) {
        Ok(view) => view,
        Err(error) => {
            warn!(class = %target.class, id = %target.id, %error, "cannot open the object's storage");
            // Nothing ran: its queued callers learn why (any queued after
            // this are answered when `_exit` drops).
            let message = format!("cannot open the object's storage: {error}");
            for event in mailbox.take_all() {
                let _ = event.reply.send(Err(WireError::Internal {
                    message: message.clone(),
                }));
            }
            return;
        }
    };
    let sockets = Arc::new(SocketView::new(
        target.id,
        shard.sockets.clone(),
        config.websocket_max_message_bytes,
        config.websocket_max_sockets_per_object,
    ));
    let mut ctx = Context {
        storage: view,
        storage_kind: storage,
        sockets,
        upgrade: None,
        target,
        activation: 0,
        cluster,
        scope: CallScope::outside(config.call_timeout),
        background: OnceLock::new(),
        deferred: Vec::new(),
        waits: control.clone(),
    };
    let mut instance: Option<T> = None;
    let mut gate = Gate::new(doors);
    let mut idle_deadline = Instant::now() + idle_timeout;
    loop {
        let draining = *drain.borrow();
        let quiet = gate.is_empty() && mailbox.is_empty();
        if draining && quiet && objects.try_remove(&ctx.target.id, &control) {
            break;
        }
        tokio::select! {
            biased;
            () = gate.release(), if !gate.is_empty() => {
                renew_failed_view(&mut instance, &mut ctx, &shard);
            }
            event = mailbox.recv() => {
                control.touch(objects.tick());
                // Boxed so that an idle object's task does not carry the
                // largest turn's state inline.
                let turn = Box::pin(turn(&mut ctx, &mut instance, &mut gate, &shard, &factory, event, config.alarm_time_limit));
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
                if background_idle(&ctx) && objects.try_remove(&ctx.target.id, &control) {
                    debug!(id = %ctx.target.id, "evicted after idle timeout");
                    break;
                }
                idle_deadline = Instant::now() + idle_timeout;
            }
            () = control.evict.notified() => {
                if gate.is_empty() && background_idle(&ctx) && objects.try_remove(&ctx.target.id, &control) {
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
    objects: Arc<ObjectTable>,
    control: Arc<ActorControl>,
    shard: Arc<ShardState>,
    id: odo_core::ObjectId,
}

impl Drop for Exit {
    fn drop(&mut self) {
        self.objects.forget(&self.id, &self.control);
        self.objects.actor_exited(&self.shard);
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
        // A fresh view reads only what is durable; a SQLite-backed
        // object's database is brought back to its last durable state
        // (the shard's log replayed into its file, its WAL forgotten) when
        // the view opens it, before the next turn.
        match open_view(&shard.store, ctx.target.id, ctx.storage_kind) {
            Ok(view) => ctx.storage = view,
            Err(error) => {
                warn!(id = %ctx.target.id, %error, "cannot open the object's storage again; it keeps failing");
            }
        }
    }
}

/// After a turn that asked for a point-in-time restore: once its commit
/// is durable, the object starts again (a new instance on a new view),
/// and the view's opening before the next event does the restore.
async fn restart_for_restore<T>(
    instance: &mut Option<T>,
    ctx: &mut Context,
    shard: &ShardState,
    durable: Option<CommitWait>,
) {
    if let Some(durable) = durable
        && durable.wait().await.is_err()
    {
        // The request never landed: the failed view is renewed as usual.
        return;
    }
    *instance = None;
    match open_view(&shard.store, ctx.target.id, ctx.storage_kind) {
        Ok(view) => ctx.storage = view,
        Err(error) => {
            warn!(id = %ctx.target.id, %error, "cannot open the object's storage again for its restore");
        }
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

/// What [`drive`] brought back from a handler: `None` if it was cut at the
/// turn's deadline.
fn classify<O>(
    result: Option<std::thread::Result<Result<O, ObjectError>>>,
    wrap: impl FnOnce(O) -> Outcome,
) -> Ran {
    match result {
        Some(Ok(Ok(out))) => Ran::Ok(wrap(out)),
        Some(Ok(Err(e))) if !e.resets() => Ran::Refused(WireError::BadRequest {
            message: e.to_string(),
        }),
        Some(Ok(Err(e))) => Ran::Failed(e.to_string()),
        Some(Err(panic)) => Ran::Failed(panic_message(&*panic)),
        None => Ran::Failed(
            "the turn ran past its deadline (its caller's, or an alarm's time limit); it was cut there"
                .into(),
        ),
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
    alarm_time_limit: Duration,
) {
    let Event { kind, reply, scope } = event;
    ctx.scope = scope.entered(ctx.target.id);
    // A turn whose caller waits is cut at the caller's deadline: past it,
    // its answer reaches no one, and a handler that never returns would
    // hold the object (and every event queued behind it) for good. An
    // alarm's has its own limit.
    let cut = match &kind {
        // Just after the deadline, so that a caller in this process times
        // out first, and learns 504 rather than the reset (the two timers
        // would fire in the same tick in either order).
        kind if kind.has_caller() => Some(ctx.scope.deadline + CUT_GRACE),
        EventKind::Alarm(_) => Some(Instant::now() + alarm_time_limit),
        _ => None,
    };
    // An event whose caller stopped waiting while it was queued (behind a
    // long turn) does not run: nothing of it happens, and an object under
    // a backlog is not reset for each late event cut at its first wait.
    if kind.has_caller() && ctx.scope.deadline <= Instant::now() {
        debug!(id = %ctx.target.id, "an event whose deadline passed in the queue is dropped unrun");
        gate.hold(None, reply, Err(WireError::DeadlineExceeded));
        return;
    }
    // So does one whose caller is gone (an HTTP client that reset its
    // request or closed its connection, a call cancelled): no one waits
    // for its answer. A client that reset its requests once queued a
    // thousand turns from one connection, and the object's other clients
    // waited behind them.
    if kind.has_caller() && reply.is_closed() {
        debug!(id = %ctx.target.id, "an event whose caller left while it was queued is dropped unrun");
        return;
    }
    // A SQLite-backed object's database opens (recovering from the shard's
    // log) or catches up here, off the async threads.
    if let Err(e) = ctx.storage.prepare().await {
        let error = reset_error(ctx, &format!("preparing the object's storage failed: {e}"));
        reset(instance, ctx, shard);
        gate.hold(None, reply, Err(error));
        return;
    }
    // Deleting an alarm that failed its last retry runs no object code:
    // an object whose initialisation fails must not fail it (it once
    // started the alarm's retries over, for good).
    if let EventKind::ClearAlarm(scheduled_ms) = kind {
        let ran = match clear_alarm(ctx, scheduled_ms).await {
            Ok(()) => Ran::Ok(Outcome::Done),
            Err(e) => Ran::Failed(e.to_string()),
        };
        end_turn(ctx, instance, gate, shard, reply, ran).await;
        return;
    }
    let obj = match instance {
        Some(obj) => obj,
        None => {
            ctx.activation = next_activation();
            let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory(ctx)));
            let ran = match created {
                Ok(mut obj) => {
                    let result =
                        drive(AssertUnwindSafe(obj.init(ctx)).catch_unwind(), gate, cut).await;
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
                    ctx.sockets.discard_turn();
                    let error = reset_error(ctx, &format!("initialisation failed: {why}"));
                    reset(instance, ctx, shard);
                    gate.hold(None, reply, Err(error));
                    return;
                }
            }
        }
    };
    let ran = match kind {
        EventKind::Fetch(mut request) => {
            ctx.upgrade = take_upgrade(&mut request, ctx.sockets.book());
            let result = drive(
                AssertUnwindSafe(obj.fetch(ctx, request)).catch_unwind(),
                gate,
                cut,
            )
            .await;
            ctx.upgrade = None;
            classify(result, Outcome::Fetch)
        }
        EventKind::Socket(key, event) => {
            let ws = ctx.sockets.handle(key);
            let result = match event {
                SocketIn::Message(message) => {
                    drive(
                        AssertUnwindSafe(obj.websocket_message(ctx, ws, message)).catch_unwind(),
                        gate,
                        cut,
                    )
                    .await
                }
                SocketIn::Close {
                    code,
                    reason,
                    was_clean,
                } => {
                    drive(
                        AssertUnwindSafe(obj.websocket_close(ctx, ws, code, reason, was_clean))
                            .catch_unwind(),
                        gate,
                        cut,
                    )
                    .await
                }
                SocketIn::Error(error) => {
                    drive(
                        AssertUnwindSafe(obj.websocket_error(ctx, ws, error)).catch_unwind(),
                        gate,
                        cut,
                    )
                    .await
                }
            };
            classify(result, |()| Outcome::Done)
        }
        EventKind::Call(call) => {
            if is_reserved_method(&call.method) {
                Ran::Refused(WireError::BadRequest {
                    message: format!("{:?} is a reserved method name", call.method),
                })
            } else {
                let result = drive(
                    AssertUnwindSafe(obj.call(ctx, call)).catch_unwind(),
                    gate,
                    cut,
                )
                .await;
                classify(result, |r| Outcome::Call(r.into_bytes()))
            }
        }
        EventKind::Alarm(info) => run_alarm(obj, ctx, gate, info, cut).await,
        EventKind::ClearAlarm(_) => unreachable!("cleared above, without the object"),
    };
    end_turn(ctx, instance, gate, shard, reply, ran).await;
}

/// Deletes the alarm if it is still set for `scheduled_ms`.
async fn clear_alarm(
    ctx: &mut Context,
    scheduled_ms: u64,
) -> Result<(), odo_storage::StorageError> {
    match ctx.storage.get_alarm().await? {
        Some(at) if at == scheduled_ms => ctx.storage.delete_alarm().await,
        _ => Ok(()),
    }
}

/// The end of a turn that `ran`: its writes committed and its answer held
/// until they are durable, or rolled back.
async fn end_turn<T>(
    ctx: &mut Context,
    instance: &mut Option<T>,
    gate: &mut Gate,
    shard: &ShardState,
    reply: Reply,
    ran: Ran,
) {
    let deferred = std::mem::take(&mut ctx.deferred);
    // A turn whose SQL transaction SQLite rolled back (a full database)
    // cannot commit, whatever its handler answered: it failed, and nothing
    // of it is written, which its caller is told (not "outcome unknown").
    let ran = match (ran, ctx.storage.turn_rolled_back()) {
        (Ran::Ok(_), Some(cause)) => Ran::Failed(format!(
            "the turn's transaction was rolled back after an earlier error: {cause}"
        )),
        (ran, _) => ran,
    };
    match ran {
        Ran::Ok(outcome) => {
            let restore = ctx.storage.restore_asked();
            // If a commit of the object failed during the turn, this wait
            // fails at once: the turn ran on state that was never durable.
            let durable = ctx.storage.commit_turn();
            start_deferred(deferred, durable.clone());
            let outputs = ctx.sockets.finish_turn();
            gate.hold_with(durable.clone(), reply, Ok(outcome), outputs);
            if restore {
                restart_for_restore(instance, ctx, shard, durable).await;
            }
            renew_failed_view(instance, ctx, shard);
        }
        Ran::Refused(error) => {
            ctx.storage.rollback_turn();
            ctx.sockets.discard_turn();
            gate.hold(None, reply, Err(error));
            renew_failed_view(instance, ctx, shard);
        }
        Ran::Failed(why) => {
            ctx.sockets.discard_turn();
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
    cut: Option<Instant>,
) -> Ran {
    match ctx.storage.get_alarm().await {
        Ok(Some(at)) if at == info.scheduled_ms => {}
        Ok(_) => return Ran::Ok(Outcome::AlarmStale),
        Err(e) => return Ran::Failed(e.to_string()),
    }
    let result = drive(
        AssertUnwindSafe(obj.alarm(ctx, info)).catch_unwind(),
        gate,
        cut,
    )
    .await;
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
