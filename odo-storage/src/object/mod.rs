//! One object's view of its store: the API an object sees.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::batch::{AlarmChange, ObjectBatch};
use crate::error::StorageError;
use crate::listing::ListOptions;
use crate::listing::{self, AnswerBound};
use crate::store::{CommitState, CommitWait, ObjectFailure, StoreInner, Submission};
use crate::{MAX_KEY_BYTES, MAX_KEYS_PER_CALL, MAX_VALUE_BYTES};

mod cache;
mod transaction;

use cache::ReadCache;
pub use transaction::Transaction;

fn check_key(key: &str) -> Result<(), StorageError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StorageError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StorageError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StorageError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

fn check_count(count: usize) -> Result<(), StorageError> {
    if count > MAX_KEYS_PER_CALL {
        return Err(StorageError::TooManyKeys {
            count,
            max: MAX_KEYS_PER_CALL,
        });
    }
    Ok(())
}

/// A committed turn whose commit has not completed yet: its writes are
/// visible to the object's later turns.
#[derive(Debug)]
pub(crate) struct InFlight {
    batch: Arc<ObjectBatch>,
    done: watch::Receiver<CommitState>,
}

/// The storage of one object, as its code sees it: data, listings,
/// transactions and the alarm, and no way to commit, roll back or inspect
/// the turn (that is the runtime's, through [`ObjectTurns`](crate::ObjectTurns)).
///
/// Writes go to a turn buffer; reads and lists see that buffer merged over
/// the object's committed-but-not-yet-durable turns, over the backend. At
/// the end of a turn the runtime commits the buffer (handing it to the
/// group-commit thread, which returns at once) or drops it. The next turn
/// may run immediately: it sees the committed writes even before they are
/// durable. After a commit of this object fails, every call returns
/// [`StorageError::CommitFailed`]: the runtime resets the object.
#[derive(Debug)]
pub struct ObjectStorage {
    pub(crate) id: ObjectId,
    pub(crate) store: Arc<StoreInner>,
    /// `layers[0]` is the turn buffer, each further layer an open
    /// transaction.
    pub(crate) layers: Vec<ObjectBatch>,
    pub(crate) in_flight: VecDeque<InFlight>,
    cache: ReadCache,
    pub(crate) failure: ObjectFailure,
    /// The database of a SQLite-backed object (`None` for a key-value one).
    #[cfg(feature = "sql")]
    pub(crate) sql: Option<Box<crate::sql::SqlStorage>>,
}

impl ObjectStorage {
    pub(crate) fn new(id: ObjectId, store: Arc<StoreInner>) -> Self {
        let cache = ReadCache::new(store.options.object_cache_bytes);
        Self {
            id,
            store,
            layers: vec![ObjectBatch::default()],
            in_flight: VecDeque::new(),
            cache,
            failure: ObjectFailure::default(),
            #[cfg(feature = "sql")]
            sql: None,
        }
    }

    /// The object this storage belongs to.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The value of `key`, if any.
    pub async fn get(&mut self, key: &str) -> Result<Option<Bytes>, StorageError> {
        check_key(key)?;
        self.read(key)
    }

    /// The values of `keys` that exist, sorted by key.
    pub async fn get_many<K: AsRef<str>>(
        &mut self,
        keys: &[K],
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        check_count(keys.len())?;
        for key in keys {
            check_key(key.as_ref())?;
        }
        let mut found = BTreeMap::new();
        for key in keys {
            if let Some(value) = self.read(key.as_ref())? {
                found.insert(key.as_ref().to_string(), value);
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Decodes the value of `key` (written by [`put_typed`](Self::put_typed),
    /// postcard encoding).
    pub async fn get_typed<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.get(key).await? else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| StorageError::Serialization {
                action: "decode",
                key: key.to_string(),
                source: e,
            })
    }

    /// Sets `key` to `value`.
    pub async fn put(&mut self, key: &str, value: impl Into<Bytes>) -> Result<(), StorageError> {
        self.check_failure()?;
        let value = value.into();
        check_key(key)?;
        check_value(&value)?;
        self.write(key.to_string(), Some(value))
    }

    /// Encodes `value` with postcard and stores it under `key`.
    pub async fn put_typed<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = postcard::to_allocvec(value).map_err(|e| StorageError::Serialization {
            action: "encode",
            key: key.to_string(),
            source: e,
        })?;
        self.put(key, bytes).await
    }

    /// Sets every key of `entries`, all or none: if any key or value is over
    /// its limit, nothing is written.
    pub async fn put_many<K, V>(
        &mut self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), StorageError>
    where
        K: Into<String>,
        V: Into<Bytes>,
    {
        let entries: Vec<(String, Bytes)> = entries
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.check_failure()?;
        check_count(entries.len())?;
        for (key, value) in &entries {
            check_key(key)?;
            check_value(value)?;
        }
        for (key, value) in entries {
            self.write(key, Some(value))?;
        }
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        check_key(key)?;
        let existed = self.read(key)?.is_some();
        self.write(key.to_string(), None)?;
        Ok(existed)
    }

    /// Deletes every key of `keys`; returns how many existed.
    pub async fn delete_many<K: AsRef<str>>(&mut self, keys: &[K]) -> Result<usize, StorageError> {
        check_count(keys.len())?;
        for key in keys {
            check_key(key.as_ref())?;
        }
        let mut count = 0;
        for key in keys {
            let key = key.as_ref();
            if self.read(key)?.is_some() {
                count += 1;
            }
            self.write(key.to_string(), None)?;
        }
        Ok(count)
    }

    /// Deletes all of the object's data and its alarm.
    pub async fn delete_all(&mut self) -> Result<(), StorageError> {
        self.check_failure()?;
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return sql.delete_everything();
        }
        let top = self.top();
        top.clear = true;
        top.entries.clear();
        top.alarm = AlarmChange::Delete;
        Ok(())
    }

    /// The keys and values selected by `options` (see [`ListOptions`]).
    ///
    /// A listing holds at most [`StoreOptions::max_list_entries`](crate::StoreOptions)
    /// entries and [`StoreOptions::max_list_bytes`](crate::StoreOptions)
    /// bytes: an answer that would be larger (with no `limit`, or too large a
    /// one) is refused with [`StorageError::ListTooLarge`] as soon as the
    /// scan crosses the bound, never cut short. Page with `limit` and
    /// `start_after`. The backend is read in bounded pages on blocking
    /// threads, never on the async executor.
    pub async fn list(
        &mut self,
        options: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let range = options.key_range()?;
        #[cfg(feature = "sql")]
        if self.sql.is_some() {
            return self.sql_list(&range, options);
        }
        self.prune()?;
        let Some(bounds) = range.as_bounds() else {
            return Ok(Vec::new());
        };
        // What is not in the backend yet, oldest first: a clear hides
        // everything below it.
        let mut overlay: BTreeMap<&str, Option<&Bytes>> = BTreeMap::new();
        let mut hide_backend = false;
        let layers = self
            .in_flight
            .iter()
            .map(|f| f.batch.as_ref())
            .chain(self.layers.iter());
        for layer in layers {
            if layer.clear {
                overlay.clear();
                hide_backend = true;
            }
            for (key, value) in layer.entries.range::<str, _>(bounds) {
                overlay.insert(key.as_str(), value.as_ref());
            }
        }
        let owned = |(key, value): (&&str, &Option<&Bytes>)| ((*key).to_owned(), value.cloned());
        let overlay: Vec<(String, Option<Bytes>)> = if options.reverse {
            overlay.iter().rev().map(owned).collect()
        } else {
            overlay.iter().map(owned).collect()
        };
        let bound = AnswerBound {
            entries: self.store.options.max_list_entries,
            bytes: self.store.options.max_list_bytes,
        };
        listing::merged(
            &self.store.backend,
            self.id,
            range,
            options.reverse,
            overlay,
            hide_backend,
            options.limit.unwrap_or(usize::MAX),
            bound,
        )
        .await
    }

    /// The alarm time (milliseconds since the Unix epoch), if one is set.
    pub async fn get_alarm(&mut self) -> Result<Option<u64>, StorageError> {
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return sql.alarm_get();
        }
        self.prune()?;
        let layers = self
            .layers
            .iter()
            .rev()
            .chain(self.in_flight.iter().rev().map(|f| f.batch.as_ref()));
        for layer in layers {
            match layer.alarm {
                AlarmChange::Keep => {}
                AlarmChange::Set(time) => return Ok(Some(time)),
                AlarmChange::Delete => return Ok(None),
            }
        }
        if let Some(alarm) = self.cache.alarm {
            return Ok(alarm);
        }
        let alarm = self.store.backend.alarm(&self.id)?;
        self.cache.alarm = Some(alarm);
        Ok(alarm)
    }

    /// Sets the alarm to `time_ms` (milliseconds since the Unix epoch),
    /// replacing any other.
    pub async fn set_alarm(&mut self, time_ms: u64) -> Result<(), StorageError> {
        self.check_failure()?;
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return sql.alarm_set(time_ms);
        }
        self.top().alarm = AlarmChange::Set(time_ms);
        Ok(())
    }

    /// Removes the alarm, if any.
    pub async fn delete_alarm(&mut self) -> Result<(), StorageError> {
        self.check_failure()?;
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return sql.alarm_delete();
        }
        self.top().alarm = AlarmChange::Delete;
        Ok(())
    }

    /// Runs `f` as a transaction: its writes are applied to the turn only
    /// if it returns `Ok`; on `Err` (or if the future is dropped) every
    /// write it made is rolled back. Reads inside see its own writes.
    ///
    /// ```
    /// # use odo_storage::{MemoryBackend, Store, StoreOptions, StorageError};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let store = Store::open(MemoryBackend::new(), StoreOptions::default())?;
    /// # let mut storage = store.object(odo_core::Namespace::new("A").id_from_name("x"));
    /// let failed: Result<(), StorageError> = storage
    ///     .transaction(async |tx| {
    ///         tx.put("a", "1").await?;
    ///         assert!(tx.get("a").await?.is_some());
    ///         Err(StorageError::InvalidListOptions("changed my mind"))
    ///     })
    ///     .await;
    /// assert!(failed.is_err());
    /// assert_eq!(storage.get("a").await?, None);
    /// # Ok::<(), StorageError>(())
    /// # }).unwrap();
    /// ```
    pub async fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut Transaction<'_>) -> Result<T, E>,
    {
        self.layers.push(ObjectBatch::default());
        let depth = self.layers.len() - 1;
        #[cfg(feature = "sql")]
        let savepoint = self.sql_savepoint(depth);
        let mut tx = Transaction {
            storage: self,
            depth,
            committed: false,
            #[cfg(feature = "sql")]
            savepoint,
        };
        let result = f(&mut tx).await;
        if result.is_ok() {
            tx.commit();
        }
        result
    }

    /// Ends a successful turn: hands its writes to the group-commit thread
    /// and returns at once.
    ///
    /// The returned [`CommitWait`] resolves when this turn's writes and
    /// every earlier write of the object are durable: the output gate. It is
    /// `None` when the turn wrote nothing and nothing earlier is still in
    /// flight, so a response may leave at once.
    pub(crate) fn commit_turn(&mut self) -> Option<CommitWait> {
        // An unfinished transaction cannot survive its `transaction` call
        // (its guard rolls it back), so only the turn buffer remains.
        self.layers.truncate(1);
        #[cfg(feature = "sql")]
        if let Err(error) = self.commit_sql() {
            let error = Arc::new(error);
            let _ = self.failure.set(error.clone());
            return Some(CommitWait::ready(Err(error)));
        }
        let batch = std::mem::take(&mut self.layers[0]);
        if let Err(StorageError::CommitFailed(error)) = self.prune() {
            return Some(CommitWait::ready(Err(error)));
        }
        if batch.is_empty() {
            return self
                .in_flight
                .back()
                .map(|f| CommitWait::new(f.done.clone()));
        }
        let batch = Arc::new(batch);
        let (done, receiver) = watch::channel(CommitState::Pending);
        let submission = Submission {
            object: self.id,
            batch: batch.clone(),
            done,
            failure: self.failure.clone(),
        };
        if let Err(error) = self.store.submit(submission) {
            return Some(CommitWait::ready(Err(Arc::new(error))));
        }
        self.in_flight.push_back(InFlight {
            batch,
            done: receiver.clone(),
        });
        Some(CommitWait::new(receiver))
    }

    /// A wait for every committed turn of this object, without ending the
    /// current turn; `None` when nothing is in flight. This is the output
    /// gate for a response whose turn wrote nothing.
    pub(crate) fn pending_commit(&mut self) -> Option<CommitWait> {
        if let Err(StorageError::CommitFailed(error)) = self.prune() {
            return Some(CommitWait::ready(Err(error)));
        }
        self.in_flight
            .back()
            .map(|f| CommitWait::new(f.done.clone()))
    }

    /// Ends a failed turn: drops every write it made.
    pub(crate) fn rollback_turn(&mut self) {
        self.layers.truncate(1);
        self.layers[0] = ObjectBatch::default();
        #[cfg(feature = "sql")]
        if let Some(sql) = &mut self.sql {
            sql.rollback();
        }
    }

    /// Whether a commit of this object has failed. Every later call then
    /// fails with [`StorageError::CommitFailed`], and no turn committed
    /// through this view can still become durable: the runtime resets the
    /// object and takes a new view from [`Store::object`](crate::Store::object),
    /// which reads only what is durable.
    pub(crate) fn has_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Whether the current turn has written anything.
    pub(crate) fn has_turn_writes(&self) -> bool {
        #[cfg(feature = "sql")]
        if self.sql.as_ref().is_some_and(|sql| sql.in_turn()) {
            return true;
        }
        self.layers.iter().any(|layer| !layer.is_empty())
    }

    /// How many committed turns of this object are not durable yet.
    pub(crate) fn in_flight_turns(&mut self) -> usize {
        let _ = self.prune();
        self.in_flight.len()
    }

    fn top(&mut self) -> &mut ObjectBatch {
        // `layers` always holds the turn buffer.
        let last = self.layers.len() - 1;
        &mut self.layers[last]
    }

    fn write(&mut self, key: String, value: Option<Bytes>) -> Result<(), StorageError> {
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return match value {
                Some(value) => sql.kv_put(&key, &value),
                None => sql.kv_delete(&key).map(drop),
            };
        }
        self.top().entries.insert(key, value);
        Ok(())
    }

    pub(crate) fn check_failure(&self) -> Result<(), StorageError> {
        match self.failure.get() {
            Some(error) => Err(StorageError::CommitFailed(error.clone())),
            None => Ok(()),
        }
    }

    /// Keeps nothing in the read cache (an object whose reads never go
    /// through it).
    #[cfg(feature = "sql")]
    pub(crate) fn no_read_cache(&mut self) {
        self.cache = ReadCache::default();
    }

    /// Retires the in-flight turns whose commit completed, oldest first.
    pub(crate) fn prune(&mut self) -> Result<(), StorageError> {
        while let Some(front) = self.in_flight.front() {
            let state = front.done.borrow().clone();
            match state {
                CommitState::Pending => break,
                CommitState::Done(Ok(())) => {
                    if let Some(done) = self.in_flight.pop_front() {
                        self.cache.apply(&done.batch);
                    }
                }
                CommitState::Done(Err(error)) => {
                    let _ = self.failure.set(error);
                    break;
                }
            }
        }
        self.check_failure()
    }

    fn read(&mut self, key: &str) -> Result<Option<Bytes>, StorageError> {
        #[cfg(feature = "sql")]
        if let Some(sql) = self.sql_kv()? {
            return sql.kv_get(key);
        }
        self.prune()?;
        let layers = self
            .layers
            .iter()
            .rev()
            .chain(self.in_flight.iter().rev().map(|f| f.batch.as_ref()));
        for layer in layers {
            if let Some(value) = layer.entries.get(key) {
                return Ok(value.clone());
            }
            if layer.clear {
                return Ok(None);
            }
        }
        if let Some(value) = self.cache.get(key) {
            return Ok(value);
        }
        let value = self.store.backend.get(&self.id, key)?;
        self.cache.insert(key, value.clone());
        Ok(value)
    }
}

#[cfg(all(test, feature = "sql"))]
mod tests {
    use odo_core::Namespace;

    use crate::{MemoryBackend, Store, StoreOptions};

    /// A SQLite-backed object reads its key-value data from its database,
    /// never from the read cache; the log records its turns commit must
    /// not fill the cache (64 KiB per object of records no one reads).
    #[tokio::test]
    async fn a_sqlite_backed_objects_records_stay_out_of_its_read_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::default();
        options.sql.dir = Some(dir.path().join("sql"));
        let store = Store::open(MemoryBackend::new(), options).unwrap();
        let mut turns = store
            .sql_object(Namespace::new("SQL").id_from_name("cache"))
            .unwrap();
        for n in 0..50u64 {
            turns.prepare().await.unwrap();
            turns.storage().put_typed("n", &n).await.unwrap();
            if let Some(durable) = turns.commit_turn() {
                durable.await.unwrap();
            }
        }
        turns.prepare().await.unwrap();
        let storage = turns.storage();
        assert_eq!(storage.get_typed::<u64>("n").await.unwrap(), Some(49));
        storage.prune().unwrap();
        assert_eq!(
            storage.cache.values.len(),
            0,
            "{:?}",
            storage.cache.values.keys()
        );
        assert_eq!(storage.cache.bytes, 0);
        turns.rollback_turn();
    }
}
