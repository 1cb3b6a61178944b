//! The object table: which objects are live in this process, their
//! mailboxes, and the shards they belong to.
//!
//! Single activation rests on it: an entry is created and removed under
//! the lock of its part of the table, and an actor removes its own entry
//! only when its mailbox is empty (senders push under the same lock), so
//! once an actor left, the next event starts a new one.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use odo_core::{ObjectId, WireError};
use odo_storage::Store;
use tokio::sync::{Notify, watch};

use crate::call::Waits;
use crate::mailbox::{Event, Mailbox};
use crate::socket::SocketBook;

/// Parts of the table, each with its own lock.
const TABLE_SHARDS: usize = 32;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (every
    // critical section is a single map operation), so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// The objects the running turn waits on through calls it made
    /// (usually none, or one).
    waiting_on: std::sync::Mutex<Vec<ObjectId>>,
}

impl ActorControl {
    pub(crate) fn touch(&self, tick: u64) {
        self.last_used.store(tick, Ordering::Relaxed);
    }

    fn waiting_on(&self) -> std::sync::MutexGuard<'_, Vec<ObjectId>> {
        self.waiting_on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event` for object `id` (`false`: the queue is full), unless
    /// it closes a cycle of calls across requests: two requests whose
    /// calls cross (`a` calls `b` while `b`, in a turn of another request,
    /// calls `a`) would each queue behind the turn waiting on it, and both
    /// waited out their whole deadline. One of the two calls (the one to
    /// the object with the smaller id) is refused at once instead
    /// ([`WireError::CallCycle`]), and the other goes on.
    fn push(&self, id: ObjectId, event: Event) -> Result<bool, WireError> {
        if event.scope.chain.is_empty() {
            // Not a call from an object (a request from outside, an
            // alarm): it waits on no turn, and is never refused.
            return Ok(self.mailbox.push(event));
        }
        // Held while the event is queued: a turn starting to wait checks
        // the queue under it too, so no call slips between the two.
        let waiting = self.waiting_on();
        if let Some(&waited) = waiting.iter().find(|&&w| refuses(id, w, &event)) {
            return Err(crossed(&event, id, waited));
        }
        Ok(self.mailbox.push(event))
    }
}

impl Waits for ActorControl {
    /// Also refuses the queued calls that this wait would never let run.
    fn begin(&self, id: ObjectId, target: ObjectId) {
        let mut waiting = self.waiting_on();
        waiting.push(target);
        self.mailbox
            .refuse_where(|event| refuses(id, target, event).then(|| crossed(event, id, target)));
    }

    fn end(&self, target: ObjectId) {
        let mut waiting = self.waiting_on();
        if let Some(at) = waiting.iter().position(|t| *t == target) {
            waiting.swap_remove(at);
        }
    }
}

/// Whether object `id`, whose running turn waits on `waited`, refuses
/// `event`: a call made, directly or not, by that very turn of `waited`,
/// which would wait behind the turn that waits on it.
///
/// When `waited` made the call itself, it waits on `id` and finds the
/// same cycle from its side (the call of `id` queued behind it): only the
/// smaller id of the two refuses, so exactly one of the two calls fails.
/// When the call came through other objects, only `id` can see the cycle,
/// and it refuses whatever the ids.
///
/// A chain says which turns wait. A handler that gave up on a call (a
/// timeout of its own around it) and went on with its turn no longer
/// waits, though the chain of that call still names it: a call made
/// through it may then be refused with no cycle left.
fn refuses(id: ObjectId, waited: ObjectId, event: &Event) -> bool {
    let chain = &event.scope.chain;
    chain.contains(&waited) && (chain.last() != Some(&waited) || id < waited)
}

fn crossed(event: &Event, id: ObjectId, waited: ObjectId) -> WireError {
    let mut chain = event.scope.chain.to_vec();
    chain.extend([id, waited]);
    WireError::CallCycle { chain }
}

/// One shard this process serves.
pub(crate) struct ShardState {
    pub(crate) shard: u32,
    pub(crate) epoch: u64,
    pub(crate) store: Store,
    pub(crate) drain: watch::Sender<bool>,
    /// Set when a release stops waiting for the shard's objects: every
    /// actor still running stops at once.
    pub(crate) force_stop: watch::Sender<bool>,
    pub(crate) actors: AtomicUsize,
    pub(crate) actors_gone: Notify,
    pub(crate) alarm_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The WebSockets of the shard's objects, live or evicted.
    pub(crate) sockets: Arc<SocketBook>,
}

impl ShardState {
    pub(crate) fn new(shard: u32, epoch: u64, store: Store) -> Self {
        Self {
            shard,
            epoch,
            store,
            drain: watch::Sender::new(false),
            force_stop: watch::Sender::new(false),
            actors: AtomicUsize::new(0),
            actors_gone: Notify::new(),
            alarm_task: Mutex::new(None),
            sockets: Arc::default(),
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Resolves once no actor of the shard is left.
    pub(crate) async fn all_actors_gone(&self) {
        loop {
            let gone = self.actors_gone.notified();
            if self.actors.load(Ordering::SeqCst) == 0 {
                return;
            }
            gone.await;
        }
    }
}

/// The live objects of this process.
pub(crate) struct ObjectTable {
    parts: Box<[Mutex<HashMap<ObjectId, Slot>>]>,
    hasher: std::collections::hash_map::RandomState,
    live: AtomicUsize,
    clock: AtomicU64,
}

impl Default for ObjectTable {
    fn default() -> Self {
        Self {
            parts: (0..TABLE_SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            live: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
        }
    }
}

impl ObjectTable {
    fn part(&self, id: &ObjectId) -> &Mutex<HashMap<ObjectId, Slot>> {
        &self.parts[(self.hasher.hash_one(id) as usize) % TABLE_SHARDS]
    }

    /// Events that may still be queued for `id` before its queue is full:
    /// `queue_depth` for an object with no actor (its mailbox is new).
    pub(crate) fn room(&self, id: &ObjectId, queue_depth: usize) -> usize {
        lock(self.part(id))
            .get(id)
            .map_or(queue_depth.max(1), |slot| slot.control.mailbox.room())
    }

    /// Objects live right now.
    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// A logical clock for least-recently-used eviction.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues `event` for object `id`: in its mailbox if it is live (or
    /// [`WireError::Overloaded`] when the mailbox is full), else in a new
    /// mailbox whose actor the caller must start: that control is returned.
    pub(crate) fn enqueue(
        &self,
        id: ObjectId,
        event: Event,
        queue_depth: usize,
        shard: &ShardState,
    ) -> Result<Option<Arc<ActorControl>>, WireError> {
        let mut part = lock(self.part(&id));
        if let Some(slot) = part.get(&id) {
            return if slot.control.push(id, event)? {
                Ok(None)
            } else {
                Err(WireError::Overloaded)
            };
        }
        let control = Arc::new(ActorControl {
            last_used: AtomicU64::new(0),
            evict: Notify::new(),
            mailbox: Mailbox::new(queue_depth),
            waiting_on: std::sync::Mutex::default(),
        });
        if !control.mailbox.push(event) {
            return Err(WireError::Internal {
                message: "a new mailbox refused its first event".into(),
            });
        }
        control.touch(self.tick());
        part.insert(
            id,
            Slot {
                control: control.clone(),
            },
        );
        shard.actors.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Some(control))
    }

    /// Removes an exiting actor's slot whatever its mailbox holds, and drops
    /// the queued events, so their callers get an error instead of waiting
    /// forever (used when an actor task ends abnormally).
    pub(crate) fn forget(&self, id: &ObjectId, control: &Arc<ActorControl>) {
        let mut part = lock(self.part(id));
        if part
            .get(id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.control, control))
        {
            part.remove(id);
        }
        drop(part);
        control.mailbox.clear();
    }

    /// Removes an actor's slot if its mailbox is empty. Senders only send
    /// while holding the table lock, so once this returns `true` no event
    /// can reach the exiting actor: the next event starts a new one.
    pub(crate) fn try_remove(&self, id: &ObjectId, control: &Arc<ActorControl>) -> bool {
        let mut part = lock(self.part(id));
        if !control.mailbox.is_empty() {
            return false;
        }
        if part
            .get(id)
            .is_some_and(|slot| Arc::ptr_eq(&slot.control, control))
        {
            part.remove(id);
        }
        true
    }

    /// Counts an actor of `shard` out.
    pub(crate) fn actor_exited(&self, shard: &ShardState) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        if shard.actors.fetch_sub(1, Ordering::SeqCst) == 1 {
            shard.actors_gone.notify_waiters();
        }
    }

    /// The `count` least recently used live objects.
    pub(crate) fn least_recently_used(&self, count: usize) -> Vec<Arc<ActorControl>> {
        let mut candidates: Vec<(u64, Arc<ActorControl>)> = Vec::with_capacity(self.live());
        for part in self.parts.iter() {
            candidates.extend(lock(part).values().map(|slot| {
                (
                    slot.control.last_used.load(Ordering::Relaxed),
                    slot.control.clone(),
                )
            }));
        }
        candidates.sort_unstable_by_key(|(tick, _)| *tick);
        candidates
            .into_iter()
            .take(count)
            .map(|(_, control)| control)
            .collect()
    }
}
