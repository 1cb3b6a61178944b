//! The alarm scheduler of a shard: fires due alarms through the objects'
//! mailboxes, retries failures with backoff, reschedules alarms refused by
//! a full queue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use odo_core::{ObjectAddress, ObjectId, WireError};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::activation::now_ms;
use crate::call::CallScope;
use crate::class::Classes;
use crate::config::RuntimeConfig;
use crate::mailbox::{EventKind, Outcome};
use crate::table::ShardState;
use crate::types::AlarmInfo;

/// What the alarm scheduler needs of the runtime.
pub(crate) trait AlarmHost: Send + Sync + 'static {
    /// The classes hosted here (an alarm's object id names its class).
    fn classes(&self) -> &Classes;
    /// The runtime's limits (alarm retries, call deadlines).
    fn config(&self) -> &RuntimeConfig;
    /// Delivers an alarm event to its object; the outcome once it ran.
    fn deliver(
        &self,
        target: ObjectAddress,
        kind: EventKind,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Outcome, WireError>>;
}

/// Why an alarm is waiting to run again.
#[derive(Debug, Clone, Copy, Default)]
struct AlarmRetryState {
    /// The alarm's scheduled time these tries were for: an alarm set again
    /// (or deleted) is a new alarm, and this state no longer applies.
    at: u64,
    /// Runs of the handler that failed; the backoff and `retry_count`
    /// follow this.
    failures: u32,
    /// Deliveries refused because the object's queue was full in a row:
    /// overload is not the handler's fault, so it reschedules (with a
    /// backoff of its own) without counting as a failure.
    overloaded: u32,
    /// The earliest next try, in ms since the Unix epoch.
    not_before: u64,
    /// The alarm failed its last retry and is being deleted: the next try
    /// clears it, never runs its handler again.
    clearing: bool,
}

impl AlarmRetryState {
    /// The alarm at `at` is to be deleted, `after` from now.
    fn clearing(at: u64, after: Duration) -> Self {
        Self {
            at,
            clearing: true,
            not_before: now_ms() + after.as_millis() as u64,
            ..Self::default()
        }
    }
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
pub(crate) async fn alarm_loop(host: Weak<dyn AlarmHost>, shard: Arc<ShardState>) {
    let mut retries: HashMap<ObjectId, AlarmRetryState> = HashMap::new();
    // Objects of no registered class: their alarms stay stored (the class
    // may come back in a later build) but are never delivered here.
    let mut foreign: HashSet<ObjectId> = HashSet::new();
    let mut tasks = Deliveries::default();
    let mut alarm_changes = shard.store.alarm_changes();
    loop {
        let Some(rt) = host.upgrade() else { return };

        let now = now_ms();
        // Every alarm this loop holds back is among the earliest: read past
        // them so that 64 others are always considered.
        let skip = tasks.len() + retries.len() + foreign.len();
        let (pending, read) = match shard.store.due_alarms(u64::MAX, skip + 64) {
            Ok(pending) => (pending, true),
            Err(e) => {
                warn!(shard = shard.shard, error = %e, "reading the alarm index failed; retrying in 1 s");
                (Vec::new(), false)
            }
        };
        let mut next_wake = now + 1_000;
        // Which alarms with a retry the read found, and of those, which
        // were found as they were when they failed (their retries owed).
        let whole_index = read && pending.len() < skip + 64;
        let mut found: HashSet<ObjectId> = HashSet::with_capacity(retries.len());
        let mut owed: HashSet<ObjectId> = HashSet::with_capacity(retries.len());
        for (id, at) in pending {
            let retry = match retries.get(&id) {
                Some(retry) => {
                    found.insert(id);
                    if retry.at == at {
                        owed.insert(id);
                        *retry
                    } else {
                        AlarmRetryState::default()
                    }
                }
                None => AlarmRetryState::default(),
            };
            if tasks.runs(&id) || foreign.contains(&id) {
                continue;
            }
            let due = at.max(retry.not_before);
            if due > now {
                next_wake = next_wake.min(due);
                continue;
            }
            let Some(class) = rt.classes().by_tag(id.namespace_tag()) else {
                warn!(shard = shard.shard, %id, "alarm for an object of no registered class; it stays stored and is not run here");
                foreign.insert(id);
                continue;
            };
            let target = ObjectAddress {
                class: class.name.clone(),
                id,
                name: None,
            };
            let attempt = if retry.clearing {
                Attempt::Clear
            } else {
                Attempt::Run(AlarmInfo {
                    scheduled_ms: at,
                    retry_count: retry.failures,
                })
            };
            deliver(&*rt, &mut tasks, target, at, attempt);
        }
        // A retry is kept while its delivery runs, while its alarm is as
        // it failed, and while its alarm was not read (past the part of
        // the index read). One for an alarm deleted or set again since it
        // failed must not hold its place (nor, as it once did, wake this
        // loop at its past time on every tick, for nothing).
        retries.retain(|id, _| {
            tasks.runs(id) || owed.contains(id) || (!whole_index && !found.contains(id))
        });
        drop(rt);
        let sleep = Duration::from_millis(next_wake.saturating_sub(now_ms()));
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            _ = alarm_changes.changed() => {}
            Some(done) = tasks.next(), if !tasks.is_empty() => {
                // Every delivery already done, before the index is read
                // again: taken one per read, a burst of N alarms cost N
                // reads of N entries (2,000 alarms due at once left a worker
                // at 63% of a core after the last one had run).
                let mut next = Some(done);
                while let Some(done) = next {
                    let Some(rt) = host.upgrade() else { return };
                    if let Settled::Moved = settle(&*rt, &mut retries, done) {
                        return;
                    }
                    next = tasks.try_next();
                }
            }
        }
    }
}

/// What a finished delivery means for the scheduler.
enum Settled {
    /// Go on.
    Go,
    /// The shard moved away: this scheduler ends.
    Moved,
}

/// What a delivery of an alarm does.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    /// Runs its handler.
    Run(AlarmInfo),
    /// Deletes it, still set for its time, after its last retry failed.
    Clear,
}

/// A delivery that ended: of `id`'s alarm at `at`.
struct Done {
    id: ObjectId,
    at: u64,
    attempt: Attempt,
    result: Result<Outcome, WireError>,
}

/// The deliveries running, each a task, and whose alarm each carries (at
/// most one per object). One that panicked ends as a failed delivery of
/// its alarm, retried like any: its alarm stayed marked running, and was
/// never delivered again.
#[derive(Default)]
struct Deliveries {
    tasks: JoinSet<Done>,
    of: HashMap<tokio::task::Id, (ObjectId, u64, Attempt)>,
    running: HashSet<ObjectId>,
}

impl Deliveries {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a delivery of `id`'s alarm runs.
    fn runs(&self, id: &ObjectId) -> bool {
        self.running.contains(id)
    }

    fn spawn(
        &mut self,
        delivery: impl Future<Output = Done> + Send + 'static,
        of: (ObjectId, u64, Attempt),
    ) {
        let task = self.tasks.spawn(delivery);
        self.running.insert(of.0);
        self.of.insert(task.id(), of);
    }

    /// The next delivery to end.
    async fn next(&mut self) -> Option<Done> {
        loop {
            let ended = self.tasks.join_next_with_id().await?;
            if let Some(done) = self.ended(ended) {
                return Some(done);
            }
        }
    }

    /// A delivery that has ended, if any.
    fn try_next(&mut self) -> Option<Done> {
        loop {
            let ended = self.tasks.try_join_next_with_id()?;
            if let Some(done) = self.ended(ended) {
                return Some(done);
            }
        }
    }

    fn ended(
        &mut self,
        ended: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
    ) -> Option<Done> {
        match ended {
            Ok((task, done)) => {
                self.of.remove(&task);
                self.running.remove(&done.id);
                Some(done)
            }
            Err(error) => {
                // Every task is noted when spawned.
                let (id, at, attempt) = self.of.remove(&error.id())?;
                self.running.remove(&id);
                warn!(%id, %error, "an alarm's delivery panicked");
                Some(Done {
                    id,
                    at,
                    attempt,
                    result: Err(WireError::Internal {
                        message: format!("the alarm's delivery panicked: {error}"),
                    }),
                })
            }
        }
    }
}

/// Starts delivering `attempt` of `target`'s alarm at `at`.
fn deliver(
    rt: &dyn AlarmHost,
    tasks: &mut Deliveries,
    target: ObjectAddress,
    at: u64,
    attempt: Attempt,
) {
    let id = target.id;
    let kind = match attempt {
        Attempt::Run(info) => EventKind::Alarm(info),
        Attempt::Clear => EventKind::ClearAlarm(at),
    };
    let scope = CallScope::outside(rt.config().call_timeout);
    let delivery = rt.deliver(target, kind, scope);
    tasks.spawn(
        async move {
            Done {
                id,
                at,
                attempt,
                result: delivery.await,
            }
        },
        (id, at, attempt),
    );
}

/// Takes note of how a delivery ended: done, refused by a full queue
/// (rescheduled), or failed (retried with backoff, then dropped: cleared
/// at the next read of the index, which is tried until it succeeds).
fn settle(
    rt: &dyn AlarmHost,
    retries: &mut HashMap<ObjectId, AlarmRetryState>,
    done: Done,
) -> Settled {
    let Done {
        id,
        at,
        attempt,
        result,
    } = done;
    let clearing = matches!(attempt, Attempt::Clear);
    match result {
        Ok(_) => {
            retries.remove(&id);
        }
        Err(WireError::Moved { .. }) => return Settled::Moved,
        Err(WireError::Overloaded) => {
            let retry = retries.entry(id).or_default();
            if retry.at != at {
                *retry = AlarmRetryState {
                    at,
                    ..AlarmRetryState::default()
                };
            }
            retry.clearing = clearing;
            retry.overloaded += 1;
            retry.not_before = now_ms() + overload_delay(retry.overloaded);
            debug!(%id, times = retry.overloaded, "alarm refused by a full queue; rescheduled");
        }
        // Clearing failed: tried again after the longest backoff. Counted
        // as the handler's failure, it started the handler's retries over.
        Err(error) if clearing => {
            let delay = rt.config().alarm_retry.max_delay;
            warn!(%id, ?delay, %error, "deleting an alarm that failed too many times failed; trying again");
            retries.insert(id, AlarmRetryState::clearing(at, delay));
        }
        Err(error) => {
            let failures = retries
                .get(&id)
                .filter(|r| r.at == at)
                .map_or(0, |r| r.failures)
                + 1;
            match rt.config().alarm_retry.delay_after(failures) {
                Some(delay) => {
                    warn!(%id, failures, ?delay, %error, "alarm failed; retrying");
                    retries.insert(
                        id,
                        AlarmRetryState {
                            at,
                            failures,
                            overloaded: 0,
                            not_before: now_ms() + delay.as_millis() as u64,
                            clearing: false,
                        },
                    );
                }
                None => {
                    warn!(%id, failures, %error, "alarm failed too many times; dropped");
                    retries.insert(id, AlarmRetryState::clearing(at, Duration::ZERO));
                }
            }
        }
    }
    Settled::Go
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use odo_core::Namespace;
    use odo_storage::{AlarmChange, Backend, MemoryBackend, ObjectBatch, Store, StoreOptions};
    use tokio::sync::Notify;

    use super::*;
    use crate::config::AlarmRetry;
    use crate::context::Context;
    use crate::object::DurableObject;

    struct Nothing;

    impl DurableObject for Nothing {
        fn create(_: &Context) -> Self {
            Nothing
        }

        async fn fetch(
            &mut self,
            _: &mut Context,
            _: crate::types::Request,
        ) -> Result<crate::types::Response, crate::error::ObjectError> {
            Err(crate::error::ObjectError::msg("nothing here"))
        }
    }

    /// A host whose first delivery panics; later ones succeed.
    struct Host {
        classes: Classes,
        config: RuntimeConfig,
        deliveries: AtomicUsize,
        delivered: Notify,
        kinds: Mutex<Vec<String>>,
    }

    impl AlarmHost for Host {
        fn classes(&self) -> &Classes {
            &self.classes
        }

        fn config(&self) -> &RuntimeConfig {
            &self.config
        }

        fn deliver(
            &self,
            _: ObjectAddress,
            kind: EventKind,
            _: CallScope,
        ) -> BoxFuture<'static, Result<Outcome, WireError>> {
            let n = self.deliveries.fetch_add(1, Ordering::SeqCst);
            self.kinds.lock().unwrap().push(format!("{kind:?}"));
            self.delivered.notify_one();
            Box::pin(async move {
                assert!(n > 0, "the first delivery panics");
                Ok(Outcome::AlarmRan)
            })
        }
    }

    /// A delivery task that panics is a failed delivery, retried: its
    /// alarm stayed marked running, never delivered again.
    #[tokio::test]
    async fn a_delivery_that_panics_is_retried() {
        let id = Namespace::new("NOTHING").id_from_name("a");
        let backend = MemoryBackend::new();
        let batch = ObjectBatch {
            alarm: AlarmChange::Set(1),
            ..ObjectBatch::default()
        };
        backend.commit(&[(id, Arc::new(batch))]).unwrap();
        let store = Store::open(backend, StoreOptions::default()).unwrap();
        let shard = Arc::new(ShardState::new(0, 1, store));
        let mut classes = Classes::default();
        classes.register::<Nothing>("NOTHING").unwrap();
        let host: Arc<Host> = Arc::new(Host {
            classes,
            config: RuntimeConfig {
                alarm_retry: AlarmRetry {
                    first_delay: Duration::from_millis(10),
                    max_delay: Duration::from_millis(10),
                    max_retries: 3,
                },
                ..RuntimeConfig::default()
            },
            deliveries: AtomicUsize::new(0),
            delivered: Notify::new(),
            kinds: Mutex::new(Vec::new()),
        });
        let dyn_host: Arc<dyn AlarmHost> = host.clone();
        let scheduler = tokio::spawn(alarm_loop(Arc::downgrade(&dyn_host), shard));
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while host.deliveries.load(Ordering::SeqCst) < 2 {
            let wait = tokio::time::timeout_at(give_up, host.delivered.notified()).await;
            assert!(
                wait.is_ok(),
                "delivered {} times: {:?}",
                host.deliveries.load(Ordering::SeqCst),
                host.kinds.lock().unwrap()
            );
        }
        let kinds = host.kinds.lock().unwrap().clone();
        assert!(kinds[1].contains("retry_count: 1"), "{kinds:?}");
        scheduler.abort();
    }
}
