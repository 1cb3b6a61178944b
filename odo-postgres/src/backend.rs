//! [`PostgresBackend`]: one shard's store in PostgreSQL.
//!
//! # Threads
//!
//! [`Backend`] is synchronous: reads are called from the objects' async
//! tasks, commits from the store's commit thread. tokio-postgres is async.
//! So each backend owns a small tokio runtime (one worker thread, plus its
//! timers) that holds its two connections, and every call is a task on that
//! runtime whose result the calling thread waits for on a channel. A read
//! thus blocks its caller for one round trip to the database, as a fjall
//! read that misses the cache blocks for a disk read; the object's own
//! point-read cache (`StoreOptions::object_cache_bytes`) answers repeated
//! reads without it. Waiting on a channel (rather than `block_on`) works
//! from any thread, async or not, and never nests runtimes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use odo_core::ObjectId;
use odo_storage::{AlarmChange, Backend, KeyRange, ObjectBatch, ScanLimit, StorageError};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::ToSql;

use crate::conn::{Link, Session, Settings, with_session};
use crate::error::PostgresError;
use crate::sql::FENCED;

/// One shard of odo's schema in PostgreSQL, opened by a
/// [`PostgresFactory`](crate::PostgresFactory) at an epoch.
///
/// Every commit is one transaction that first checks that the shard is
/// still at this backend's epoch (the fence); once a newer holder has
/// opened the shard, every commit here fails with
/// [`StorageError::Fenced`] and nothing of it is written.
pub struct PostgresBackend {
    shared: Arc<Shared>,
    runtime: OwnRuntime,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("shard", &self.shared.shard)
            .field("epoch", &self.shared.epoch)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) shard: u32,
    pub(crate) epoch: u64,
    reads: Link,
    commits: Link,
    closed: AtomicBool,
    /// The newer epoch that fenced this holder, once seen (0: not fenced).
    fenced_by: AtomicU64,
}

/// A runtime that is never dropped in a place that forbids blocking: it
/// is shut down in the background.
struct OwnRuntime(Mutex<Option<Runtime>>);

impl OwnRuntime {
    fn handle(&self) -> Option<Handle> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|rt| rt.handle().clone())
    }

    fn shut_down(&self) {
        if let Some(rt) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        self.shut_down();
    }
}

pub(crate) fn build_runtime(shard: u32) -> Result<Runtime, PostgresError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("odo-pg-{shard}"))
        .enable_all()
        .build()
        .map_err(|e| PostgresError::Config(format!("cannot start a runtime for PostgreSQL: {e}")))
}

impl PostgresBackend {
    /// Wraps what [`open`](crate::factory) made: `runtime` drives the links.
    pub(crate) fn new(runtime: Runtime, shared: Arc<Shared>) -> Self {
        Self {
            shared,
            runtime: OwnRuntime(Mutex::new(Some(runtime))),
        }
    }

    /// The shard this backend holds.
    pub fn shard(&self) -> u32 {
        self.shared.shard
    }

    /// The epoch it holds the shard at (the fencing token its commits
    /// carry).
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Runs `work` on the backend's runtime and waits for its result on
    /// this thread.
    fn call<T, F, Fut>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, PostgresError>> + Send + 'static,
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let handle = self.runtime.handle().ok_or(StorageError::Closed)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(self.shared.clone());
        handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        // An Err here: the runtime was shut down (closed) under the call.
        match rx.recv() {
            Ok(result) => result.map_err(StorageError::from),
            Err(_) => Err(StorageError::Closed),
        }
    }
}

impl Shared {
    pub(crate) fn new(shard: u32, epoch: u64, settings: Arc<Settings>) -> Self {
        Self {
            shard,
            epoch,
            reads: Link::new("reads", settings.clone()),
            commits: Link::new("commits", settings),
            closed: AtomicBool::new(false),
            fenced_by: AtomicU64::new(0),
        }
    }

    pub(crate) fn reads(&self) -> &Link {
        &self.reads
    }

    fn shard_param(&self) -> i32 {
        // Shards are below the server's shard count, far below i32::MAX.
        i32::try_from(self.shard).unwrap_or(i32::MAX)
    }

    pub(crate) fn epoch_param(&self) -> Result<i64, PostgresError> {
        to_bigint("epoch", self.epoch)
    }

    fn fenced(&self, newest: u64) -> PostgresError {
        self.fenced_by.store(newest.max(1), Ordering::Release);
        PostgresError::Fenced {
            shard: self.shard,
            epoch: self.epoch,
            newest,
        }
    }
}

pub(crate) fn to_bigint(what: &'static str, value: u64) -> Result<i64, PostgresError> {
    i64::try_from(value).map_err(|_| PostgresError::OutOfRange { what, value })
}

fn object_id(bytes: &[u8]) -> Result<ObjectId, PostgresError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
        PostgresError::Corrupt(format!(
            "an object id of {} bytes, expected 32",
            bytes.len()
        ))
    })?;
    Ok(ObjectId::from_bytes(bytes))
}

fn time(at: i64) -> Result<u64, PostgresError> {
    u64::try_from(at).map_err(|_| PostgresError::Corrupt(format!("a negative alarm time {at}")))
}

fn bound_param(bound: &std::ops::Bound<String>, included: bool) -> Option<Vec<u8>> {
    match bound {
        std::ops::Bound::Included(key) if included => Some(key.as_bytes().to_vec()),
        std::ops::Bound::Excluded(key) if !included => Some(key.as_bytes().to_vec()),
        _ => None,
    }
}

impl Backend for PostgresBackend {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        let (object, key) = (*object, key.as_bytes().to_vec());
        self.call(move |shared| async move {
            with_session(shared.reads(), "reading a key", true, |s: Arc<Session>| {
                let key = key.clone();
                let shard = shared.shard_param();
                async move {
                    let row = s
                        .client
                        .query_opt(
                            &s.statements.get,
                            &[&shard, &object.as_bytes().as_slice(), &key],
                        )
                        .await
                        .map_err(PostgresError::query("reading a key"))?;
                    Ok(row.map(|row| Bytes::from(row.get::<_, Vec<u8>>(0))))
                }
            })
            .await
        })
    }

    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        if range.is_empty() || limit.entries == 0 {
            return Ok(Vec::new());
        }
        let object = *object;
        let bounds = [
            bound_param(&range.lower, true),
            bound_param(&range.lower, false),
            bound_param(&range.upper, false),
            bound_param(&range.upper, true),
        ];
        let rows = i64::try_from(limit.entries).unwrap_or(i64::MAX);
        self.call(move |shared| async move {
            with_session(shared.reads(), "scanning keys", true, |s: Arc<Session>| {
                let bounds = bounds.clone();
                let shard = shared.shard_param();
                async move {
                    let statement = if reverse {
                        &s.statements.scan_desc
                    } else {
                        &s.statements.scan_asc
                    };
                    let id = object.as_bytes().as_slice();
                    let params: [&(dyn ToSql + Sync); 7] = [
                        &shard, &id, &bounds[0], &bounds[1], &bounds[2], &bounds[3], &rows,
                    ];
                    let stream = s
                        .client
                        .query_raw(statement, params)
                        .await
                        .map_err(PostgresError::query("scanning keys"))?;
                    let mut stream = std::pin::pin!(stream);
                    let mut out = Vec::new();
                    let mut bytes = 0;
                    // Stop reading at the byte bound; the rest of the
                    // page is discarded by the connection.
                    while !limit.reached(out.len(), bytes) {
                        let Some(row) = stream.next().await else {
                            break;
                        };
                        let row = row.map_err(PostgresError::query("scanning keys"))?;
                        let key = String::from_utf8(row.get::<_, Vec<u8>>(0)).map_err(|_| {
                            PostgresError::Corrupt(format!("a key of object {object} is not UTF-8"))
                        })?;
                        let value = Bytes::from(row.get::<_, Vec<u8>>(1));
                        bytes += key.len() + value.len();
                        out.push((key, value));
                    }
                    Ok(out)
                }
            })
            .await
        })
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        let object = *object;
        self.call(move |shared| async move {
            with_session(
                shared.reads(),
                "reading an alarm",
                true,
                |s: Arc<Session>| {
                    let shard = shared.shard_param();
                    async move {
                        let row = s
                            .client
                            .query_opt(
                                &s.statements.alarm,
                                &[&shard, &object.as_bytes().as_slice()],
                            )
                            .await
                            .map_err(PostgresError::query("reading an alarm"))?;
                        row.map(|row| time(row.get(0))).transpose()
                    }
                },
            )
            .await
        })
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |shared| async move {
            with_session(
                shared.reads(),
                "listing due alarms",
                true,
                |s: Arc<Session>| {
                    let shard = shared.shard_param();
                    async move {
                        let rows = s
                            .client
                            .query(&s.statements.due, &[&shard, &now, &limit])
                            .await
                            .map_err(PostgresError::query("listing due alarms"))?;
                        rows.iter()
                            .map(|row| Ok((object_id(row.get(0))?, time(row.get(1))?)))
                            .collect()
                    }
                },
            )
            .await
        })
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        let newest = self.shared.fenced_by.load(Ordering::Acquire);
        if newest != 0 {
            return Err(StorageError::Fenced {
                shard: self.shared.shard,
                epoch: self.shared.epoch,
                newest,
            });
        }
        let rows = Arc::new(CommitRows::of(writes)?);
        self.call(move |shared| async move { commit(&shared, rows).await })
    }

    fn close(&self) -> Result<(), StorageError> {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(handle) = self.runtime.handle() {
            let shared = self.shared.clone();
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                shared.reads.close().await;
                shared.commits.close().await;
                let _ = tx.send(());
            });
            let _ = rx.recv();
        }
        self.runtime.shut_down();
        Ok(())
    }
}

/// One `bytea[]` parameter.
type Column = Vec<Vec<u8>>;

/// A group commit's writes as the columns the statements take.
#[derive(Debug, Default)]
struct CommitRows {
    clear: Column,
    delete: (Column, Column),
    upsert: (Column, Column, Column),
    set_alarms: (Column, Vec<i64>),
    delete_alarms: Column,
}

impl CommitRows {
    fn of(writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<Self, PostgresError> {
        let mut rows = Self::default();
        for (object, batch) in writes {
            let id = object.as_bytes().to_vec();
            if batch.clear {
                rows.clear.push(id.clone());
            }
            for (key, value) in &batch.entries {
                match value {
                    Some(value) => {
                        rows.upsert.0.push(id.clone());
                        rows.upsert.1.push(key.as_bytes().to_vec());
                        rows.upsert.2.push(value.to_vec());
                    }
                    // After a clear the key is gone already.
                    None if batch.clear => {}
                    None => {
                        rows.delete.0.push(id.clone());
                        rows.delete.1.push(key.as_bytes().to_vec());
                    }
                }
            }
            match batch.alarm {
                AlarmChange::Keep => {}
                AlarmChange::Set(at) => {
                    rows.set_alarms.0.push(id);
                    rows.set_alarms.1.push(to_bigint("alarm time", at)?);
                }
                AlarmChange::Delete => rows.delete_alarms.push(id),
            }
        }
        Ok(rows)
    }
}

/// One group commit: one transaction, its first statement the fence, sent
/// with its writes and its `COMMIT` in one pipeline (one round trip).
async fn commit(shared: &Arc<Shared>, rows: Arc<CommitRows>) -> Result<(), PostgresError> {
    let epoch = shared.epoch_param()?;
    let result = with_session(&shared.commits, "committing a batch", false, |s| {
        let rows = rows.clone();
        let shard = shared.shard_param();
        async move {
            // Polled in this order (biased), so sent in this order. After an
            // error the server ignores the rest of the transaction and turns
            // the `COMMIT` into a rollback (which `batch_execute` does not
            // report): the outcome is the first error, if any.
            let (begin, applied, commit) = tokio::join!(
                biased;
                s.client.batch_execute("BEGIN"),
                apply(&s, shard, epoch, &rows),
                s.client.batch_execute("COMMIT"),
            );
            begin.map_err(PostgresError::query("beginning a commit"))?;
            if !applied? {
                return Ok(false);
            }
            commit
                .map_err(PostgresError::query("committing a batch"))
                .map(|()| true)
        }
    })
    .await?;
    if result {
        return Ok(());
    }
    // Fenced: find the newest epoch to say so.
    let newest = with_session(&shared.reads, "reading the shard's epoch", true, |s| {
        let shard = shared.shard_param();
        async move {
            let row = s
                .client
                .query_opt(&s.statements.newest, &[&shard])
                .await
                .map_err(PostgresError::query("reading the shard's epoch"))?;
            Ok(row.map_or(0, |row| row.get::<_, i64>(0)))
        }
    })
    .await
    .unwrap_or(0);
    Err(shared.fenced(u64::try_from(newest).unwrap_or(0)))
}

/// The statements of one commit, pipelined on the connection inside the
/// transaction. `Ok(false)`: the fence did not hold (the transaction is
/// aborted).
async fn apply(
    s: &Session,
    shard: i32,
    epoch: i64,
    rows: &CommitRows,
) -> Result<bool, PostgresError> {
    let st = &s.statements;
    let client = &s.client;
    let fence_params: [&(dyn ToSql + Sync); 2] = [&shard, &epoch];
    let fence = client.query(&st.fence, &fence_params);
    let clear = async {
        if !rows.clear.is_empty() {
            client.execute(&st.clear, &[&shard, &rows.clear]).await?;
        }
        Ok(())
    };
    let delete = async {
        if !rows.delete.0.is_empty() {
            let (objects, keys) = &rows.delete;
            client.execute(&st.delete, &[&shard, objects, keys]).await?;
        }
        Ok(())
    };
    let upsert = async {
        if !rows.upsert.0.is_empty() {
            let (objects, keys, values) = &rows.upsert;
            client
                .execute(&st.upsert, &[&shard, objects, keys, values])
                .await?;
        }
        Ok(())
    };
    let set_alarms = async {
        if !rows.set_alarms.0.is_empty() {
            let (objects, times) = &rows.set_alarms;
            client
                .execute(&st.set_alarms, &[&shard, objects, times])
                .await?;
        }
        Ok(())
    };
    let delete_alarms = async {
        if !rows.delete_alarms.is_empty() {
            client
                .execute(&st.delete_alarms, &[&shard, &rows.delete_alarms])
                .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    // Polled in this order (biased), so sent in this order: clears before the
    // writes of the same objects.
    let (fence, clear, delete, upsert, set_alarms, delete_alarms) =
        tokio::join!(biased; fence, clear, delete, upsert, set_alarms, delete_alarms);
    let context = "committing a batch";
    if let Err(e) = fence {
        return match e.code() == Some(&FENCED) {
            true => Ok(false),
            false => Err(PostgresError::query(context)(e)),
        };
    }
    for result in [clear, delete, upsert, set_alarms, delete_alarms] {
        result.map_err(PostgresError::query(context))?;
    }
    Ok(true)
}
