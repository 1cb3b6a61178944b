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

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use odo_core::ObjectId;
use tokio::sync::watch;

use super::folding::Folding;
use super::history::{Folded, fold, fold_limit, measure, walk_records};
use super::ledger::{Candidate, FoldPlan, Ledger, ObjectHistory, plan_trim, trim_need};
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
    if let Some(replaced) = &folded.replaced
        && let Err(error) = std::fs::remove_file(replaced)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, file = %replaced.display(), "removing a replaced base file failed");
    }
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
    super::history::remove_stale_bases(&*store.backend, dir);
    store.sql_history.ledger().censused = true;
}

/// What object `id` (its database at `db`, its history `history`) can
/// give to a trim.
fn candidate(
    store: &StoreInner,
    id: ObjectId,
    db: &Path,
    history: ObjectHistory,
) -> Result<Candidate, StorageError> {
    let synced = super::log::synced(&*store.backend, &id)?;
    // What a restore asked for needs is not offered.
    let limit = synced.min(fold_limit(&*store.backend, &id, db)?);
    let mut records = Vec::new();
    walk_records(&*store.backend, &id, |seq, time, bytes| {
        if seq > limit {
            return false;
        }
        records.push((time, seq, bytes));
        true
    })?;
    Ok(Candidate {
        id,
        // The new base is the database as of the last record folded:
        // about the file's size now.
        growth: std::fs::metadata(db)
            .map_or(0, |m| m.len())
            .saturating_sub(history.base),
        records,
    })
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
    let need = trim_need(store.sql_history.ledger().total(), cap);
    if need == 0 {
        return;
    }
    let objects = store.sql_history.ledger().with_records();
    let db = |id: &ObjectId| dir.join(format!("{id}.sqlite"));
    let mut candidates = Vec::with_capacity(objects.len());
    for (id, history) in objects {
        match candidate(store, id, &db(&id), history) {
            Ok(candidate) => candidates.push(candidate),
            Err(error) => {
                tracing::warn!(%error, %id, "reading an object's history to trim it failed; it is kept");
            }
        }
    }
    let plan = plan_trim(&candidates, need);
    drop(candidates);
    let (mut lost, mut folds) = (0, 0);
    for (id, upto) in plan {
        let db = db(&id);
        // A fold of the object running now (its own catch-up) or a restore
        // reading its base: this trim leaves it, the next one sees it.
        let Some(_folding) = Folding::take(&db) else {
            continue;
        };
        let folded =
            fold(&*store.backend, &id, &db, FoldPlan::new(upto, u64::MAX)).and_then(|folded| {
                match folded {
                    Some(folded) => commit_fold(store, id, folded, true),
                    None => Ok(0),
                }
            });
        match folded {
            Ok(bytes) => {
                lost += bytes;
                folds += 1;
            }
            Err(error) => {
                tracing::warn!(%error, %id, "trimming an object's history failed; it is kept");
            }
        }
    }
    let total = store.sql_history.ledger().total();
    if folds > 0 {
        tracing::info!(
            cap,
            lost,
            folds,
            history_bytes = total,
            "the shard's SQL history was over its cap: its oldest was folded away"
        );
    } else {
        tracing::debug!(
            cap,
            history_bytes = total,
            "the shard's SQL history is over its cap with nothing worth folding yet (base files, or records their files do not hold synced yet)"
        );
    }
}
