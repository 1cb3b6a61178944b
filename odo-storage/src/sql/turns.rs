//! A SQLite-backed object's turns: how its database joins the object's
//! storage view (opening and recovery before a turn, the local commit and
//! its log record at the end of one, the lazy catch-up between them).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use odo_core::ObjectId;
use tokio::sync::watch;

use super::database::SqlStorage;
use super::error::SqlError;
use super::guard::OWN;
use super::ledger::FoldPlan;
use super::trim::{commit_fold, measure_into, trim};
use super::{SYNCED_KEY, record_entry, record_key, recover, sync_file, synced_value};
use crate::batch::{AlarmChange, ObjectBatch};
use crate::error::StorageError;
use crate::object::ObjectStorage;
use crate::store::{CommitState, ObjectFailure, StoreInner, Submission};

impl ObjectStorage {
    pub(crate) fn new_sql(id: ObjectId, store: Arc<StoreInner>, dir: &Path) -> Self {
        let sql = SqlStorage::new(id, dir, &store.options.sql);
        let mut storage = Self::new(id, store);
        storage.sql = Some(Box::new(sql));
        // Its key-value data is read from its database: the read cache
        // would only fill with the log records its turns commit.
        storage.no_read_cache();
        storage
    }

    /// The object's SQL database, for a SQLite-backed object.
    ///
    /// The runtime opens it (replaying the shard's log into it when needed)
    /// off the async threads before each turn; outside a runtime the first
    /// call opens it on the calling thread.
    ///
    /// # Errors
    ///
    /// [`SqlError::NotSqlBacked`] for a key-value-backed object;
    /// [`StorageError::CommitFailed`] after a commit of the object failed.
    pub fn sql(&mut self) -> Result<&mut SqlStorage, StorageError> {
        self.check_failure()?;
        let backend = self.store.backend.clone();
        let Some(sql) = self.sql.as_deref_mut() else {
            return Err(SqlError::NotSqlBacked.into());
        };
        if !sql.is_open() {
            let claim = self.store.sql_claims.take_now(sql.id)?;
            let recovered = recover(&*backend, &sql.id, &sql.path, sql.max_bytes, &sql.guard)?;
            if self.store.options.sql.history_ms > 0 {
                measure_into(&self.store, &sql.id, &sql.path);
            }
            sql.opened(recovered, claim);
        }
        Ok(sql)
    }

    /// The database, open, when this is a SQLite-backed object (its
    /// key-value API lives there).
    pub(crate) fn sql_kv(&mut self) -> Result<Option<&mut SqlStorage>, StorageError> {
        if self.sql.is_none() {
            return Ok(None);
        }
        self.sql().map(Some)
    }

    /// A key-value listing of a SQLite-backed object, with the bounds of
    /// every listing.
    pub(crate) fn sql_list(
        &mut self,
        range: &crate::batch::KeyRange,
        options: &crate::ListOptions,
    ) -> Result<Vec<(String, bytes::Bytes)>, StorageError> {
        let (max_entries, max_bytes) = (
            self.store.options.max_list_entries,
            self.store.options.max_list_bytes,
        );
        let want = options
            .limit
            .unwrap_or(usize::MAX)
            .min(max_entries.saturating_add(1));
        let sql = self.sql()?;
        let entries = sql.kv_list(range, options.reverse, want)?;
        let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        if entries.len() > max_entries || bytes > max_bytes {
            return Err(StorageError::ListTooLarge {
                max_entries,
                max_bytes,
            });
        }
        Ok(entries)
    }

    /// Opens a savepoint for a key-value transaction of a SQLite-backed
    /// object. If it cannot be opened, neither can anything inside it
    /// (the database failed), so the transaction's calls fail.
    pub(crate) fn sql_savepoint(&mut self, depth: usize) -> Option<String> {
        let sql = self.sql_kv().ok()??;
        let name = format!("odo_kv_{depth}");
        sql.begin().ok()?;
        sql.internal(&format!("{OWN}SAVEPOINT {name}")).ok()?;
        Some(name)
    }

    /// Ends a key-value transaction's savepoint: kept, or rolled back.
    pub(crate) fn sql_release(&mut self, name: &str, keep: bool) {
        let Some(sql) = self.sql.as_deref_mut() else {
            return;
        };
        let ended = if keep {
            sql.internal(&format!("{OWN}RELEASE {name}"))
        } else {
            sql.kv_table = None;
            sql.internal(&format!("{OWN}ROLLBACK TO {name}"))
                .and_then(|()| sql.internal(&format!("{OWN}RELEASE {name}")))
        };
        if let Err(error) = ended {
            tracing::error!(%error, id = %sql.id, "ending a transaction's savepoint failed");
        }
    }

    /// Whether this is a SQLite-backed object's storage.
    pub fn is_sql(&self) -> bool {
        self.sql.is_some()
    }

    /// Gets a SQLite-backed object ready for a turn: opens its database
    /// (recovering it from the log) on a blocking thread, or lets its file
    /// catch up when its WAL has grown. Nothing for a key-value object.
    pub(crate) async fn prepare(&mut self) -> Result<(), StorageError> {
        let Some(sql) = self.sql.as_deref_mut() else {
            return Ok(());
        };
        if !sql.is_open() {
            // An older view of the object may still be closing its
            // connection (an eviction, a reset): wait for it.
            let claim = self.store.sql_claims.take(sql.id).await;
            let store = self.store.clone();
            let (id, path, max_bytes, guard) =
                (sql.id, sql.path.clone(), sql.max_bytes, sql.guard.clone());
            let recovered = tokio::task::spawn_blocking(move || {
                let recovered = recover(&*store.backend, &id, &path, max_bytes, &guard)?;
                if store.options.sql.history_ms > 0 {
                    measure_into(&store, &id, &path);
                }
                Ok::<_, StorageError>(recovered)
            })
            .await
            .map_err(|e| StorageError::backend("opening an object's database", e))??;
            sql.opened(recovered, claim);
            return self.restore_if_asked().await;
        }
        let wal = sql.wal.len();
        let options = self.store.options.sql.clone();
        if wal < options.checkpoint_wal_bytes {
            return Ok(());
        }
        self.prune()?;
        if !self.in_flight.is_empty() {
            if wal < options.max_wal_bytes {
                return Ok(());
            }
            // The WAL is at its bound: wait for the object's commits so the
            // file can catch up.
            if let Some(durable) = self.pending_commit() {
                durable.wait().await?;
            }
            self.prune()?;
        }
        // The checkpoint copies up to the WAL's bound into the file: off
        // the async threads, as the sync after it.
        match self.sql.as_deref_mut() {
            Some(sql) if !sql.in_turn() && sql.is_open() => sql.checkpoint_off_thread().await?,
            _ => return Ok(()),
        }
        self.after_checkpoint(true);
        Ok(())
    }

    /// Checkpoints the database into its file (every local commit is
    /// durable in the log) and syncs the file off the async threads; the
    /// next commit records the synced point. With `in_view` false (the
    /// view is going away) the sync's completion writes the marker itself.
    fn catch_up(&mut self, in_view: bool) -> Result<(), StorageError> {
        let Some(sql) = self.sql.as_deref_mut() else {
            return Ok(());
        };
        if sql.in_turn() || !sql.is_open() {
            return Ok(());
        }
        sql.checkpoint()?;
        self.after_checkpoint(in_view);
        Ok(())
    }

    /// The rest of a catch-up once the WAL is checkpointed: the file's
    /// sync, the fold of old history and the trim, on a blocking thread.
    fn after_checkpoint(&mut self, in_view: bool) {
        let store = self.store.clone();
        let Some(sql) = self.sql.as_deref_mut() else {
            return;
        };
        let seq = sql.next_seq - 1;
        let path = sql.path.clone();
        let fsynced = sql.fsynced.clone();
        let id = sql.id;
        let marked = sql.synced;
        let keep_copy = store.options.sql.keep_synced_copies;
        let history_ms = store.options.sql.history_ms;
        // A view going away keeps the next view of the object from opening
        // until its marker is submitted: a marker submitted after the next
        // view's would take the log's synced point back.
        let claim = (!in_view).then(|| sql.close_keeping_claim()).flatten();
        let sync = move || {
            if let Err(error) = sync_file(&path).and_then(|()| match keep_copy {
                true => keep_synced_copy(&path),
                false => Ok(()),
            }) {
                tracing::warn!(%error, path = %path.display(), "syncing an object's database failed; its log is kept");
                return;
            }
            fsynced.fetch_max(seq, Ordering::SeqCst);
            if !in_view && seq > marked {
                let mut batch = ObjectBatch::default();
                batch
                    .entries
                    .insert(SYNCED_KEY.to_owned(), Some(synced_value(seq)));
                let (done, _) = watch::channel(CommitState::Pending);
                // A closed store is fine: the records stay and are replayed.
                let _ = store.submit(Submission {
                    object: id,
                    batch: Arc::new(batch),
                    done,
                    failure: ObjectFailure::default(),
                });
            }
            drop(claim);
            if history_ms > 0 {
                if let Some(_folding) = super::folding::Folding::take(&path) {
                    let cutoff = super::now_ms().saturating_sub(history_ms);
                    let plan = FoldPlan::new(seq, cutoff);
                    let folded = super::history::fold(&*store.backend, &id, &path, plan).and_then(
                        |folded| match folded {
                            Some(folded) => commit_fold(&store, id, folded, false).map(drop),
                            None => Ok(()),
                        },
                    );
                    // A closed store is fine: the history stays longer.
                    if let Err(error) = folded {
                        tracing::warn!(%error, %id, "folding an object's old history failed; it is kept");
                    }
                }
                trim(&store);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(sync)),
            Err(_) => sync(),
        }
    }

    /// Commits the turn's SQL locally and puts its log record (and the
    /// synced point, once a catch-up's sync is done) into the turn's batch.
    pub(crate) fn commit_sql(&mut self) -> Result<(), StorageError> {
        let keep_history = self.store.options.sql.history_ms > 0;
        let Some(sql) = self.sql.as_deref_mut() else {
            return Ok(());
        };
        let turn = &mut self.layers[0];
        if let Some(record) = sql.commit_local()? {
            let (key, value) = record_entry(sql.next_seq, &record);
            // Times of records only grow, so the last one at or before a
            // time is the state at that time.
            let time = record.time_ms.max(sql.last_time);
            sql.last_time = time;
            // The record's size, for the history's cap.
            turn.entries.insert(
                super::history::when_key(time, sql.next_seq),
                Some(super::history::u64_value(value_len(&value))),
            );
            if keep_history {
                self.store
                    .sql_history
                    .ledger()
                    .add_record(sql.id, value_len(&value), time);
            }
            sql.next_seq += 1;
            turn.entries.insert(key, value);
        }
        let alarm = std::mem::take(&mut sql.alarm);
        if alarm != AlarmChange::Keep {
            turn.alarm = alarm;
        }
        let fsynced = sql.fsynced.load(Ordering::SeqCst);
        if fsynced > sql.synced && !turn.entries.is_empty() {
            turn.entries
                .insert(SYNCED_KEY.to_owned(), Some(synced_value(fsynced)));
            // With a history window the records stay (point-in-time
            // recovery replays them).
            if !keep_history {
                for seq in sql.synced + 1..=fsynced {
                    turn.entries.insert(record_key(seq), None);
                }
            }
            sql.synced = fsynced;
        }
        Ok(())
    }
}

fn value_len(value: &Option<Bytes>) -> u64 {
    value.as_ref().map_or(0, |v| v.len() as u64)
}

/// Copies the synced file at `path` to `<path>.synced`, atomically.
fn keep_synced_copy(path: &Path) -> std::io::Result<()> {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    std::fs::copy(path, with(".synced-tmp"))?;
    std::fs::rename(with(".synced-tmp"), with(".synced"))
}

impl Drop for ObjectStorage {
    /// A SQLite-backed object whose every commit is durable lets its file
    /// catch up as it goes (eviction, shutdown); otherwise its WAL is left
    /// for the next opening to forget.
    fn drop(&mut self) {
        let Some(sql) = self.sql.as_deref() else {
            return;
        };
        if !sql.is_open() || sql.in_turn() || self.prune().is_err() || !self.in_flight.is_empty() {
            return;
        }
        if let Err(error) = self.catch_up(false) {
            tracing::warn!(%error, id = %self.id, "an object's database could not catch up on close");
        }
    }
}
