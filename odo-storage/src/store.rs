//! One store: a backend plus its group-commit thread.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use odo_core::ObjectId;
use tokio::sync::{oneshot, watch};

use crate::backend::Backend;
use crate::batch::{AlarmChange, ObjectBatch};
use crate::error::StorageError;
use crate::object::ObjectStorage;
use crate::turns::ObjectTurns;

/// Options of [`Store::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// The most turns merged into one backend commit (one fsync). Turns
    /// beyond it wait for the next commit. Default: 8192.
    pub max_batch_turns: usize,
    /// Bytes of point-read cache per [`ObjectStorage`] (keys plus values);
    /// 0 disables the cache. Default: 64 KiB.
    pub object_cache_bytes: usize,
    /// The most entries one listing may answer; a listing that would answer
    /// more is refused with [`StorageError::ListTooLarge`] (use `limit` and
    /// `start_after` to page). Default: 10,000.
    pub max_list_entries: usize,
    /// The most bytes (keys plus values) one listing may answer, likewise.
    /// Default: 8 MiB.
    pub max_list_bytes: usize,
    /// Options of the store's SQLite-backed objects.
    #[cfg(feature = "sql")]
    pub sql: crate::sql::SqlOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch_turns: 8192,
            object_cache_bytes: 64 * 1024,
            max_list_entries: 10_000,
            max_list_bytes: 8 * 1024 * 1024,
            #[cfg(feature = "sql")]
            sql: crate::sql::SqlOptions::default(),
        }
    }
}

impl StoreOptions {
    /// The default options for the store of `shard`, whose backend is
    /// `durable` or not: SQLite-backed objects keep their database files in
    /// `<data dir>/sql` when it is, in a private temporary directory when
    /// it is not (nothing of them survives then, as nothing of the backend
    /// does).
    ///
    /// The directory is the data directory's, not the shard's: a file is
    /// named by its object's id alone, so when shards split
    /// ([`split`](crate::split)) a SQLite-backed object's log moves with
    /// its keys to its new shard and finds its file where it was.
    pub fn for_shard(shard: &crate::ShardSpec, durable: bool) -> Self {
        #[cfg(feature = "sql")]
        {
            let mut options = Self::default();
            if durable {
                options.sql.dir = Some(shard.data_dir.join("sql"));
            }
            options
        }
        #[cfg(not(feature = "sql"))]
        {
            let _ = (shard, durable);
            Self::default()
        }
    }
}

/// Group-commit counters of a store, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Backend commits that succeeded (each one fsync at the default
    /// durability).
    pub batches: u64,
    /// Turns made durable (a turn is one `commit_turn` that wrote something).
    pub turns: u64,
    /// Keys written or deleted by those turns, after merging turns of the
    /// same object.
    pub entries: u64,
    /// Backend commits that failed.
    pub failed_batches: u64,
    /// The most turns in one commit so far.
    pub largest_batch: u64,
    /// Total time spent in backend commits, in microseconds.
    pub commit_micros: u64,
}

impl CommitStats {
    /// Average turns per backend commit.
    pub fn average_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.turns as f64 / self.batches as f64
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    turns: AtomicU64,
    entries: AtomicU64,
    failed_batches: AtomicU64,
    largest_batch: AtomicU64,
    commit_micros: AtomicU64,
}

/// The state of one submitted turn, published by the commit thread.
#[derive(Debug, Clone)]
pub(crate) enum CommitState {
    Pending,
    Done(Result<(), Arc<StorageError>>),
}

/// The first commit failure of an object, shared by its [`ObjectStorage`]
/// and its submissions so that nothing queued behind a failure commits.
pub(crate) type ObjectFailure = Arc<OnceLock<Arc<StorageError>>>;

pub(crate) struct Submission {
    pub(crate) object: ObjectId,
    pub(crate) batch: Arc<ObjectBatch>,
    pub(crate) done: watch::Sender<CommitState>,
    pub(crate) failure: ObjectFailure,
}

enum Command {
    Turn(Submission),
    Close(Option<oneshot::Sender<Result<(), StorageError>>>),
}

/// A handle on the durability of a turn's writes (and of every earlier
/// write of the same object): await it, or call [`wait`](Self::wait).
///
/// It resolves to `Ok(())` once the writes are committed at the backend's
/// durability level, or to [`StorageError::CommitFailed`] (the object must
/// then be reset) or [`StorageError::Closed`].
#[derive(Debug, Clone)]
pub struct CommitWait {
    done: watch::Receiver<CommitState>,
}

impl CommitWait {
    pub(crate) fn new(done: watch::Receiver<CommitState>) -> Self {
        Self { done }
    }

    pub(crate) fn ready(result: Result<(), Arc<StorageError>>) -> Self {
        let (_, done) = watch::channel(CommitState::Done(result));
        Self { done }
    }

    /// Whether the commit has completed (successfully or not).
    pub fn is_done(&self) -> bool {
        matches!(*self.done.borrow(), CommitState::Done(_))
    }

    /// Waits until the writes are durable.
    pub async fn wait(mut self) -> Result<(), StorageError> {
        let state = self
            .done
            .wait_for(|state| matches!(state, CommitState::Done(_)))
            .await;
        match state.as_deref() {
            Ok(CommitState::Done(Ok(()))) => Ok(()),
            Ok(CommitState::Done(Err(error))) => Err(StorageError::CommitFailed(error.clone())),
            // The commit thread went away without an answer: the store closed.
            Ok(CommitState::Pending) | Err(_) => Err(StorageError::Closed),
        }
    }
}

impl IntoFuture for CommitWait {
    type Output = Result<(), StorageError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.wait())
    }
}

/// One store (usually one shard): a [`Backend`] and the thread that group
/// commits every object's turns into it.
///
/// Cheap to clone. Objects take their view with [`object`](Self::object).
/// The commit thread drains every pending turn into one backend commit (one
/// fsync), then completes each turn's [`CommitWait`]; the async executor
/// never blocks on a commit. Reads run on the caller's thread.
///
/// Close it with [`close`](Self::close) (or [`close_blocking`](Self::close_blocking));
/// dropping the last handle also closes it, blocking until pending commits
/// are done.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub(crate) backend: Arc<dyn Backend>,
    commands: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<Result<(), StorageError>>>>,
    counters: Arc<Counters>,
    alarm_changes: watch::Sender<u64>,
    pub(crate) options: StoreOptions,
    #[cfg(feature = "sql")]
    pub(crate) sql_dir: crate::sql::SqlDir,
    /// Which SQLite-backed objects have their database open in a view.
    #[cfg(feature = "sql")]
    pub(crate) sql_claims: Arc<crate::sql::Claims>,
    /// What the shard's SQL history weighs, against its cap.
    #[cfg(feature = "sql")]
    pub(crate) sql_history: crate::sql::ShardHistory,
}

impl std::fmt::Debug for StoreInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl StoreInner {
    pub(crate) fn submit(&self, submission: Submission) -> Result<(), StorageError> {
        self.commands
            .send(Command::Turn(submission))
            .map_err(|_| StorageError::Closed)
    }

    fn close_blocking(&self) -> Result<(), StorageError> {
        let Some(thread) = self.take_thread() else {
            return Ok(());
        };
        // The thread may already have stopped (on `close`), then this fails.
        let _ = self.commands.send(Command::Close(None));
        thread.join().unwrap_or_else(|_| {
            Err(StorageError::backend(
                "closing the store",
                "the commit thread panicked",
            ))
        })
    }

    fn take_thread(&self) -> Option<JoinHandle<Result<(), StorageError>>> {
        match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if let Err(error) = self.close_blocking() {
            tracing::error!(%error, "closing a dropped store failed");
        }
    }
}

impl Store {
    /// Starts the commit thread for `backend`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Io`] if the thread cannot be spawned.
    pub fn open(backend: impl Backend, options: StoreOptions) -> Result<Self, StorageError> {
        Self::open_shared(Arc::new(backend), options)
    }

    /// Like [`open`](Self::open), for a backend already behind an `Arc`.
    pub fn open_shared(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Self, StorageError> {
        let (commands, receiver) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let (alarm_changes, _) = watch::channel(0);
        let worker = CommitThread {
            backend: backend.clone(),
            receiver,
            counters: counters.clone(),
            alarm_changes: alarm_changes.clone(),
            max_batch_turns: options.max_batch_turns.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("odo-storage-commit".into())
            .spawn(move || worker.run())
            .map_err(|e| StorageError::io("spawning the commit thread", e))?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                backend,
                commands,
                thread: Mutex::new(Some(thread)),
                counters,
                alarm_changes,
                #[cfg(feature = "sql")]
                sql_dir: crate::sql::SqlDir::new(options.sql.dir.clone()),
                #[cfg(feature = "sql")]
                sql_claims: Arc::default(),
                #[cfg(feature = "sql")]
                sql_history: crate::sql::ShardHistory::default(),
                options,
            }),
        })
    }

    /// One object's storage, with control of its turns (see
    /// [`ObjectTurns`]). The runtime must hold at most one per object at a
    /// time (single activation): it caches reads and keeps the object's
    /// writes that are not yet durable.
    pub fn object(&self, id: ObjectId) -> ObjectTurns {
        ObjectTurns::new(ObjectStorage::new(id, self.inner.clone()))
    }

    /// The storage of a SQLite-backed object, with control of its turns:
    /// its database, with its key-value API and its alarm inside (see
    /// [`ObjectStorage::sql`]). The same rules as [`object`](Self::object)
    /// hold; an object must always be opened the same way.
    #[cfg(feature = "sql")]
    pub fn sql_object(&self, id: ObjectId) -> Result<ObjectTurns, StorageError> {
        if let Some(why) = &self.inner.options.sql.refused {
            return Err(StorageError::Sql(crate::SqlError::NotServed {
                why: why.clone(),
            }));
        }
        let dir = self.inner.sql_dir.path()?;
        Ok(ObjectTurns::new(ObjectStorage::new_sql(
            id,
            self.inner.clone(),
            &dir,
        )))
    }

    /// What the shard's SQL history (kept for point-in-time recovery)
    /// weighs, against its cap
    /// ([`SqlOptions::max_history_bytes`](crate::SqlOptions::max_history_bytes)),
    /// and what the cap took away so far.
    #[cfg(feature = "sql")]
    pub fn sql_history(&self) -> crate::sql::SqlHistoryStats {
        self.inner
            .sql_history
            .stats(self.inner.options.sql.max_history_bytes)
    }

    /// The backend, for reads outside any object (tools, metrics).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Up to `limit` durable alarms due at or before `now_ms`, earliest
    /// first.
    pub fn due_alarms(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.backend.due_alarms(now_ms, limit)
    }

    /// A counter bumped after every commit that set or deleted an alarm:
    /// an alarm scheduler sleeping until the earliest alarm
    /// ([`due_alarms`](Self::due_alarms)`(u64::MAX, 1)`) should also wake
    /// when this changes.
    pub fn alarm_changes(&self) -> watch::Receiver<u64> {
        self.inner.alarm_changes.subscribe()
    }

    /// The group-commit counters so far.
    pub fn stats(&self) -> CommitStats {
        let c = &self.inner.counters;
        CommitStats {
            batches: c.batches.load(Ordering::Relaxed),
            turns: c.turns.load(Ordering::Relaxed),
            entries: c.entries.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
            commit_micros: c.commit_micros.load(Ordering::Relaxed),
        }
    }

    /// Commits every turn submitted so far, closes the backend and stops the
    /// commit thread. Turns submitted afterwards fail with
    /// [`StorageError::Closed`]. Closing twice is harmless.
    pub async fn close(&self) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close(Some(reply)))
            .is_err()
        {
            return Ok(());
        }
        let result = answer.await.unwrap_or(Ok(()));
        // The thread answers as its last act: joining does not block.
        if let Some(thread) = self.inner.take_thread() {
            let _ = thread.join();
        }
        result
    }

    /// [`close`](Self::close) for synchronous code (blocks the thread).
    pub fn close_blocking(&self) -> Result<(), StorageError> {
        self.inner.close_blocking()
    }
}

struct CommitThread {
    backend: Arc<dyn Backend>,
    receiver: mpsc::Receiver<Command>,
    counters: Arc<Counters>,
    alarm_changes: watch::Sender<u64>,
    max_batch_turns: usize,
}

impl CommitThread {
    fn run(self) -> Result<(), StorageError> {
        let mut pending = Vec::new();
        loop {
            let mut close = None;
            match self.receiver.recv() {
                Ok(Command::Turn(turn)) => pending.push(turn),
                Ok(Command::Close(reply)) => close = Some(reply),
                // Every handle is gone.
                Err(_) => return self.backend.close(),
            }
            while close.is_none() && pending.len() < self.max_batch_turns {
                match self.receiver.try_recv() {
                    Ok(Command::Turn(turn)) => pending.push(turn),
                    Ok(Command::Close(reply)) => close = Some(reply),
                    Err(_) => break,
                }
            }
            if !pending.is_empty() {
                self.commit(&mut pending);
            }
            if let Some(reply) = close {
                let closed = self.backend.close();
                return match reply {
                    Some(reply) => {
                        let _ = reply.send(closed);
                        Ok(())
                    }
                    None => closed,
                };
            }
        }
    }

    fn commit(&self, pending: &mut Vec<Submission>) {
        let mut live = Vec::with_capacity(pending.len());
        for turn in pending.drain(..) {
            match turn.failure.get() {
                // An earlier turn of this object failed: this one must not
                // commit on top of state that was never made durable.
                Some(error) => {
                    turn.done
                        .send_replace(CommitState::Done(Err(error.clone())));
                }
                None => live.push(turn),
            }
        }
        if live.is_empty() {
            return;
        }
        let mut merged: Vec<(ObjectId, Arc<ObjectBatch>)> = Vec::with_capacity(live.len());
        let mut slots: HashMap<ObjectId, usize> = HashMap::with_capacity(live.len());
        let mut alarms_changed = false;
        for turn in &live {
            alarms_changed |= turn.batch.clear || turn.batch.alarm != AlarmChange::Keep;
            match slots.get(&turn.object) {
                Some(&slot) => Arc::make_mut(&mut merged[slot].1).merge_ref(&turn.batch),
                None => {
                    slots.insert(turn.object, merged.len());
                    merged.push((turn.object, turn.batch.clone()));
                }
            }
        }
        let started = Instant::now();
        let result = self.backend.commit(&merged);
        let c = &self.counters;
        c.commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                let entries: usize = merged.iter().map(|(_, b)| b.entries.len()).sum();
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.turns.fetch_add(live.len() as u64, Ordering::Relaxed);
                c.entries.fetch_add(entries as u64, Ordering::Relaxed);
                c.largest_batch
                    .fetch_max(live.len() as u64, Ordering::Relaxed);
                if alarms_changed {
                    self.alarm_changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                for turn in live {
                    turn.done.send_replace(CommitState::Done(Ok(())));
                }
            }
            Err(error) => {
                tracing::error!(%error, turns = live.len(), "group commit failed");
                c.failed_batches.fetch_add(1, Ordering::Relaxed);
                let error = Arc::new(error);
                for turn in live {
                    let _ = turn.failure.set(error.clone());
                    turn.done
                        .send_replace(CommitState::Done(Err(error.clone())));
                }
            }
        }
    }
}
