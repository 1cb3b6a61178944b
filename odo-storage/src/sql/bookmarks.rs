//! Point-in-time recovery as object code sees it: bookmarks, and the
//! restore asked for with one, done when the database next opens (see
//! `history.rs`).

use std::sync::Arc;

use tokio::sync::watch;

use super::error::SqlError;
use super::folding::Folding;
use super::history::{
    RESTORE_KEY, bookmark, build_restore, parse_bookmark, pending_restore, record_at, u64_value,
    when_key,
};
use super::{now_ms, record_entry, recover};
use crate::batch::ObjectBatch;
use crate::error::StorageError;
use crate::object::ObjectStorage;
use crate::store::{CommitState, CommitWait, ObjectFailure, Submission};

impl ObjectStorage {
    /// A bookmark of the object's database as of now: its last commit
    /// (the current turn's writes are not in it). Bookmarks are opaque
    /// strings that sort in time order (SQLite-backed objects only).
    ///
    /// # Errors
    ///
    /// [`SqlError::NotSqlBacked`] for a key-value-backed object.
    pub async fn current_bookmark(&mut self) -> Result<String, StorageError> {
        let sql = self.sql_kv()?.ok_or(SqlError::NotSqlBacked)?;
        Ok(bookmark(now_ms().max(sql.last_time), sql.next_seq - 1))
    }

    /// A bookmark of the object's database as it was at `time_ms`
    /// (milliseconds since the Unix epoch): after the last commit at or
    /// before it. Times after now give the current state.
    ///
    /// # Errors
    ///
    /// [`SqlError::OutsideHistory`] for a time before the history the
    /// object keeps ([`SqlOptions::history_ms`](crate::SqlOptions::history_ms),
    /// and the shard's cap, [`SqlOptions::max_history_bytes`](crate::SqlOptions::max_history_bytes)),
    /// naming the oldest bookmark it keeps;
    /// [`SqlError::NotSqlBacked`] for a key-value-backed object.
    pub async fn bookmark_for_time(&mut self, time_ms: u64) -> Result<String, StorageError> {
        let backend = self.store.backend.clone();
        let id = self.id;
        let sql = self.sql_kv()?.ok_or(SqlError::NotSqlBacked)?;
        let now = now_ms().max(sql.last_time);
        let time_ms = time_ms.min(now);
        // Records this view committed that are not durable yet have their
        // times in the turn's view only; those are the newest, after `now`
        // was read, so the durable ones answer every earlier time.
        let found = record_at(&*backend, &id, time_ms)?;
        let base = super::history::base(&*backend, &id)?;
        let seq = match found {
            Some(seq) => seq,
            None if base == 0 => 0,
            None => {
                return Err(SqlError::OutsideHistory {
                    asked: format!("time {time_ms}"),
                    oldest: super::history::oldest(&*backend, &id)?,
                }
                .into());
            }
        };
        Ok(bookmark(time_ms, seq))
    }

    /// The oldest bookmark the object's history still holds: how far back
    /// a restore can go (history older than
    /// [`SqlOptions::history_ms`](crate::SqlOptions::history_ms) is folded
    /// away as the database catches up, and the shard's oldest history
    /// when the shard is over its cap,
    /// [`SqlOptions::max_history_bytes`](crate::SqlOptions::max_history_bytes)).
    ///
    /// # Errors
    ///
    /// [`SqlError::NotSqlBacked`] for a key-value-backed object.
    pub async fn oldest_bookmark(&mut self) -> Result<String, StorageError> {
        let backend = self.store.backend.clone();
        let id = self.id;
        self.sql_kv()?.ok_or(SqlError::NotSqlBacked)?;
        super::history::oldest(&*backend, &id)
    }

    /// Asks for the object's whole database (SQL, key-value API and alarm)
    /// to be restored to `bookmark` when it next opens (the object's next
    /// activation: after an eviction, a reset or a restart); the request
    /// commits with the turn. Answers a bookmark of the state before the
    /// turn, which undoes the restore.
    ///
    /// # Errors
    ///
    /// [`SqlError::BadBookmark`] for a string that is not a bookmark,
    /// [`SqlError::OutsideHistory`] for one the object's history does not
    /// hold; [`SqlError::NotSqlBacked`] for a key-value-backed object.
    pub async fn on_next_session_restore_bookmark(
        &mut self,
        bookmark: &str,
    ) -> Result<String, StorageError> {
        let target = parse_bookmark(bookmark)?;
        let undo = self.current_bookmark().await?;
        let backend = self.store.backend.clone();
        let id = self.id;
        let sql = self.sql_kv()?.ok_or(SqlError::NotSqlBacked)?;
        let last = sql.next_seq - 1;
        let path = sql.path.clone();
        let held = {
            let backend = backend.clone();
            tokio::task::spawn_blocking(move || {
                // Checked and pinned in one step for folds: none moves the
                // base past `target` until the restore is done.
                let folding = Folding::wait(&path);
                let base = super::history::base(&*backend, &id)?;
                let held = base <= target && target <= last;
                if held {
                    folding.pin(target);
                }
                Ok::<_, StorageError>(held)
            })
            .await
            .map_err(|e| StorageError::backend("asking for a restore", e))??
        };
        if !held {
            return Err(SqlError::OutsideHistory {
                asked: bookmark.to_owned(),
                oldest: super::history::oldest(&*backend, &id)?,
            }
            .into());
        }
        self.layers[0]
            .entries
            .insert(RESTORE_KEY.to_owned(), Some(u64_value(target)));
        Ok(undo)
    }

    /// Whether the current turn asked for a restore.
    pub(crate) fn restore_asked(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|turn| turn.entries.contains_key(RESTORE_KEY))
    }

    /// Does the restore asked for, if any, on a database just opened: its
    /// record (the pages that differ) commits through the group commit
    /// first, then the file is brought up to date from the log.
    pub(crate) async fn restore_if_asked(&mut self) -> Result<(), StorageError> {
        let backend = self.store.backend.clone();
        let id = self.id;
        let Some(sql) = self.sql.as_deref_mut() else {
            return Ok(());
        };
        let Some(target) = pending_restore(&*backend, &id)? else {
            // A pin from a restore asked for in a turn that never
            // committed (this opening would have the restore).
            Folding::unpin(&sql.path);
            return Ok(());
        };
        let (path, seq) = (sql.path.clone(), sql.next_seq);
        let time = now_ms().max(sql.last_time);
        let built = {
            let backend = backend.clone();
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                // No fold of the object changes its base meanwhile.
                let _folding = Folding::wait(&path);
                build_restore(&*backend, &id, &path, target, time)
            })
            .await
            .map_err(|e| StorageError::backend("restoring an object's database", e))?
        };
        let mut batch = ObjectBatch::default();
        batch.entries.insert(RESTORE_KEY.to_owned(), None);
        match built {
            Ok((record, alarm)) => {
                let (key, value) = record_entry(seq, &record);
                let size = value.as_ref().map_or(0, |v| v.len() as u64);
                batch.entries.insert(key, value);
                batch
                    .entries
                    .insert(when_key(time, seq), Some(u64_value(size)));
                self.store.sql_history.ledger().add_record(id, size, time);
                batch.alarm = alarm;
            }
            // The history no longer holds the bookmark (it was folded
            // away since the request): the request goes, nothing changes.
            Err(StorageError::Sql(SqlError::OutsideHistory { asked, oldest })) => {
                tracing::warn!(%id, %asked, %oldest, "a restore asked for is outside the history now; dropped");
            }
            Err(e) => return Err(e),
        }
        let restored = batch.entries.len() > 1;
        let (done, receiver) = watch::channel(CommitState::Pending);
        self.store.submit(Submission {
            object: id,
            batch: Arc::new(batch),
            done,
            failure: ObjectFailure::default(),
        })?;
        if let Err(e) = CommitWait::new(receiver).wait().await {
            // Open again (and try again) before the next turn.
            if let Some(sql) = self.sql.as_deref_mut() {
                sql.conn = None;
            }
            return Err(e);
        }
        Folding::unpin(&path);
        if !restored {
            return Ok(());
        }
        tracing::info!(%id, record = target, "object's database restored to a bookmark");
        // The file catches up from the log, restore record included, as at
        // any opening.
        let Some(sql) = self.sql.as_deref_mut() else {
            return Ok(());
        };
        sql.conn = None;
        let (max_bytes, guard) = (sql.max_bytes, sql.guard.clone());
        let recovered =
            tokio::task::spawn_blocking(move || recover(&*backend, &id, &path, max_bytes, &guard))
                .await
                .map_err(|e| StorageError::backend("opening an object's database", e))??;
        sql.reopened(recovered);
        sql.kv_table = None;
        sql.last_time = sql.last_time.max(time);
        Ok(())
    }
}
