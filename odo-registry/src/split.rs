//! Shards that grow with the machine: at startup, before any worker runs,
//! a data directory with fewer shards than the server has workers has its
//! shards split, doubling S until every worker can hold one.
//!
//! An object's shard is `id.shard(S)`, so doubling S sends every object of
//! shard `k` either to `k` or to `k + S`. The registry drives the split
//! and records its progress in the cluster record; the storage work is a
//! [`ShardSplitter`]'s (odo's facade implements it with odo-storage's
//! `split` module, for any backend that can list its objects). One
//! doubling goes:
//!
//! 1. Record `split: {from: S, phase: copying}` (S shards still).
//! 2. Copy, for each `k < S`, the objects bound for `k + S` into it
//!    (replacing whatever a crashed earlier copy left there).
//! 3. Record 2S shards, `phase: pruning`; the new shards start at the
//!    epoch of the shard they came from.
//! 4. Prune, for each `k < S`, the objects that moved away from `k`.
//! 5. Record the split done.
//!
//! A crash anywhere leaves the record at a step from which the split goes
//! on at the next start: before step 3 the old shards hold everything and
//! the copies are redone; from step 3 on the new shards are the truth and
//! pruning (which only deletes what was copied) is redone. No worker runs
//! meanwhile, so no object has two live instances, and no acknowledged
//! write is lost: each was in its shard before the split and is there, or
//! in its new shard, after it.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use tracing::{info, warn};

use crate::RegistryError;
use crate::record::{ClusterFile, Split, SplitPhase};

/// One shard at one epoch, as a [`ShardSplitter`] opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardAt {
    /// The shard's number.
    pub shard: u32,
    /// Its epoch in the cluster record (for backends that fence by epoch).
    pub epoch: u64,
}

/// What one step of a split did, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SplitDone {
    /// Objects copied or deleted.
    pub objects: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
}

/// Why a step of a split failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// The storage backend cannot split (it cannot list its objects);
    /// nothing was written. The registry then runs with the shards it has.
    #[error("the storage backend cannot split shards: {0}")]
    Unsupported(String),
    /// The step failed; the split goes on at the next start.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// What a step of a [`ShardSplitter`] returns: the work, to be awaited.
pub type SplitFuture = Pin<Box<dyn Future<Output = Result<SplitDone, SplitError>> + Send>>;

/// The storage half of a split: copies and prunes shards in a data
/// directory. Each step must be safe to crash in and to run again; both
/// are called only while no worker serves the shards.
pub trait ShardSplitter: Send + Sync + fmt::Debug + 'static {
    /// Makes shard `to` hold exactly the objects of shard `from` whose
    /// shard is `to.shard` among `shard_count` shards (deleting whatever
    /// else it held), leaving `from` as it is.
    fn copy(&self, data_dir: &Path, from: ShardAt, to: ShardAt, shard_count: u32) -> SplitFuture;

    /// Deletes from `shard` every object whose shard is not `shard.shard`
    /// among `shard_count` shards.
    fn prune(&self, data_dir: &Path, shard: ShardAt, shard_count: u32) -> SplitFuture;
}

/// Reads (or creates, with `default` shards) the cluster record of
/// `data_dir`, finishes a split left unfinished, and splits the shards
/// while they are fewer than `workers` and `splitter` can split them.
/// The caller holds the data directory's lock.
pub(crate) async fn prepare(
    data_dir: &Path,
    default: u32,
    workers: u32,
    splitter: Option<&dyn ShardSplitter>,
) -> Result<ClusterFile, RegistryError> {
    let mut record = ClusterFile::load_or_create(data_dir, default)?;
    loop {
        match record.split {
            None => {
                let from = record.shard_count;
                let doubled = from.checked_mul(2);
                match (splitter, doubled) {
                    _ if from >= workers => return Ok(record),
                    (Some(_), Some(_)) => {
                        info!(from, to = from * 2, workers, "splitting shards");
                        record.set_split(Some(Split {
                            from,
                            phase: SplitPhase::Copying,
                        }));
                        record.save(data_dir)?;
                    }
                    _ => {
                        warn_idle(from, workers, "the storage backend has no splitter");
                        return Ok(record);
                    }
                }
            }
            Some(Split {
                from,
                phase: SplitPhase::Copying,
            }) => {
                let Some(splitter) = splitter else {
                    // Nothing is served from the copies yet: drop them.
                    warn!(
                        from,
                        "an unfinished shard split is abandoned: the storage backend has no splitter"
                    );
                    record.set_split(None);
                    record.save(data_dir)?;
                    continue;
                };
                let to = from * 2;
                for k in 0..from {
                    let source = ShardAt {
                        shard: k,
                        epoch: record.epochs[k as usize],
                    };
                    let target = ShardAt {
                        shard: k + from,
                        ..source
                    };
                    match splitter.copy(data_dir, source, target, to).await {
                        Ok(done) => info!(
                            from = k,
                            to = k + from,
                            objects = done.objects,
                            bytes = done.bytes,
                            "shard copied"
                        ),
                        Err(SplitError::Unsupported(why)) => {
                            record.set_split(None);
                            record.save(data_dir)?;
                            warn_idle(from, workers, &why);
                            return Ok(record);
                        }
                        Err(source) => return Err(RegistryError::Split { from, to, source }),
                    }
                }
                record.shard_count = to;
                record.epochs.extend_from_within(..from as usize);
                record.assignment.resize(to as usize, None);
                record.set_split(Some(Split {
                    from,
                    phase: SplitPhase::Pruning,
                }));
                record.save(data_dir)?;
            }
            Some(Split {
                from,
                phase: SplitPhase::Pruning,
            }) => {
                let to = from * 2;
                let Some(splitter) = splitter else {
                    return Err(RegistryError::Split {
                        from,
                        to,
                        source: SplitError::Unsupported(
                            "the split is recorded but its old shards are not pruned yet, and this server has no splitter for its storage backend: start it with the backend it ran".into(),
                        ),
                    });
                };
                for k in 0..from {
                    let shard = ShardAt {
                        shard: k,
                        epoch: record.epochs[k as usize],
                    };
                    let done = splitter
                        .prune(data_dir, shard, to)
                        .await
                        .map_err(|source| RegistryError::Split { from, to, source })?;
                    info!(shard = k, objects = done.objects, "shard pruned");
                }
                record.set_split(None);
                record.save(data_dir)?;
                info!(shards = to, "shards split");
            }
        }
    }
}

fn warn_idle(shards: u32, workers: u32, why: &str) {
    warn!(
        shards,
        workers,
        idle = workers.saturating_sub(shards),
        "more workers than shards, and the shards cannot split ({why}): some workers will hold no shard"
    );
}
