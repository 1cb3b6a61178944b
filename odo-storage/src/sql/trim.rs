//! Keeping a shard's SQL history under its cap
//! ([`SqlOptions::max_history_bytes`]): measuring each object's history
//! when its database opens (and, once, every object of the shard), and
//! folding the oldest history of the shard away when it is over the cap
//! (the policy is `ledger.rs`'s). Blocking: runs on the blocking threads,
//! after a database file's catch-up.
//!
//! A trim is a fold (`history.rs`): the new base file is synced and in
//! place before one batch of the group commit names it and drops the
//! records it holds, so a crash at any point leaves either the old
//! history or the new one, each whole, and never touches a record that
//! recovery still needs (only records the file holds, synced, fold).
//!
//! [`SqlOptions::max_history_bytes`]: super::SqlOptions::max_history_bytes

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use odo_core::ObjectId;
use tokio::sync::watch;

use super::history::{Folded, Folding, fold, measure};
use super::ledger::{FoldPlan, Ledger};
use crate::error::StorageError;
use crate::store::{CommitState, CommitWait, ObjectFailure, StoreInner, Submission};

/// The SQL history of a store's shard: what it weighs, and the right to
/// trim it (one trim at a time).
#[derive(Debug, Default)]
pub(crate) struct ShardHistory {
    pub(crate) ledger: Mutex<Ledger>,
    trimming: Mutex<()>,
}

/// What a shard's SQL history weighs, and what its cap took away
/// ([`Store::sql_history`](crate::Store::sql_history)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlHistoryStats {
    /// Bytes of history (log records and base files) of the objects
    /// measured: those opened since the store opened, and every object of
    /// the shard once the first trim check has counted them.
    pub bytes: u64,
    /// Objects with history among them.
    pub objects: usize,
    /// The cap ([`SqlOptions::max_history_bytes`](super::SqlOptions::max_history_bytes)).
    pub cap: u64,
    /// Folds done to keep under the cap (one object's oldest records each).
    pub trims: u64,
    /// Bytes those folds took away.
    pub trimmed_bytes: u64,
}

impl ShardHistory {
    pub(crate) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn stats(&self, cap: u64) -> SqlHistoryStats {
        let ledger = self.ledger();
        SqlHistoryStats {
            bytes: ledger.total(),
            objects: ledger.objects(),
            cap,
            trims: ledger.trims,
            trimmed_bytes: ledger.trimmed_bytes,
        }
    }
}

/// Waits, on a blocking thread, until a submitted batch is durable.
pub(crate) fn wait_durable(durable: watch::Receiver<CommitState>) -> Result<(), StorageError> {
    let wait = CommitWait::new(durable).wait();
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime.block_on(wait),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StorageError::io("starting a runtime to wait for a fold", e))?
            .block_on(wait),
    }
}

/// Commits a fold of `id` and waits until it is durable; then the ledger
/// takes it into account.
pub(crate) fn commit_fold(
    store: &StoreInner,
    id: ObjectId,
    folded: Folded,
    trim: bool,
) -> Result<i64, StorageError> {
    let (done, durable) = watch::channel(CommitState::Pending);
    store.submit(Submission {
        object: id,
        batch: Arc::new(folded.batch),
        done,
        failure: ObjectFailure::default(),
    })?;
    // The next fold of the object reads the new base's key.
    wait_durable(durable)?;
    Ok(store
        .sql_history
        .ledger()
        .folded(id, folded.records, folded.base, folded.oldest_ms, trim))
}

/// Measures the history of `id` (its database at `db`) into the ledger.
pub(crate) fn measure_into(store: &StoreInner, id: &ObjectId, db: &Path) {
    match measure(&*store.backend, id, db) {
        Ok(history) => store.sql_history.ledger().set(*id, history),
        Err(error) => {
            tracing::warn!(%error, %id, "measuring an object's history failed");
        }
    }
}

/// Measures every object of the shard not measured yet (once per store).
fn census(store: &StoreInner, dir: &Path) {
    let mut after = None;
    loop {
        let page = match store.backend.objects(after.as_ref(), 1024) {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "the shard's objects cannot be listed: its SQL history is measured as objects open");
                break;
            }
        };
        let Some(last) = page.last().copied() else {
            break;
        };
        for id in page {
            if !store.sql_history.ledger().knows(&id) {
                measure_into(store, &id, &dir.join(format!("{id}.sqlite")));
            }
        }
        after = Some(last);
    }
    store.sql_history.ledger().censused = true;
}

/// Brings the shard's history under its cap, oldest history first, if it
/// is over (and no other trim is running). Blocking.
pub(crate) fn trim(store: &StoreInner) {
    let cap = store.options.sql.max_history_bytes;
    let Ok(_trimming) = store.sql_history.trimming.try_lock() else {
        return;
    };
    let Ok(dir) = store.sql_dir.path() else {
        return;
    };
    if !store.sql_history.ledger().censused {
        census(store, &dir);
    }
    let mut skip = HashSet::new();
    loop {
        let Some(step) = store.sql_history.ledger().next_trim(cap, &skip) else {
            break;
        };
        let id = step.id;
        let db = dir.join(format!("{id}.sqlite"));
        // Folding writes a new base, about the size of the database: fold
        // enough records to pay for it too, and leave an object whose
        // records would not (its history is mostly its base).
        let history = store.sql_history.ledger().get(&id).unwrap_or_default();
        let growth = std::fs::metadata(&db)
            .map_or(0, |m| m.len())
            .saturating_sub(history.base);
        if history.records <= growth {
            skip.insert(id);
            continue;
        }
        let Some(_folding) = Folding::take(&db) else {
            skip.insert(id);
            continue;
        };
        let folded = super::log::synced(&*store.backend, &id).and_then(|synced| {
            fold(
                &*store.backend,
                &id,
                &db,
                FoldPlan::new(synced, step.before_ms, step.need.saturating_add(growth)),
            )
        });
        match folded.and_then(|folded| match folded {
            Some(folded) => commit_fold(store, id, folded, true).map(Some),
            None => Ok(None),
        }) {
            Ok(Some(lost)) => {
                tracing::info!(
                    %id,
                    lost,
                    history_bytes = store.sql_history.ledger().total(),
                    cap,
                    "the shard's SQL history was over its cap: its oldest was folded away"
                );
                if lost <= 0 {
                    skip.insert(id);
                }
            }
            Ok(None) => {
                skip.insert(id);
            }
            Err(error) => {
                tracing::warn!(%error, %id, "trimming an object's history failed; it is kept");
                skip.insert(id);
            }
        }
    }
    let total = store.sql_history.ledger().total();
    if total > cap {
        tracing::debug!(
            total,
            cap,
            "the shard's SQL history is over its cap with nothing left to fold yet (base files, or records the files do not hold synced)"
        );
    }
}
