//! Splitting shards: the storage half of growing a data directory's shard
//! count from S to 2S, which the registry runs at startup, before any
//! worker serves (see odo-registry's `ShardSplitter`).
//!
//! An object's shard is `id.shard(S)`, so with 2S shards every object of
//! shard `k` stays in `k` or moves to `k + S`. The split is two passes,
//! each safe to crash in and to run again:
//!
//! 1. [`copy_objects`] from each shard `k` into `k + S`: the target is
//!    emptied first (a crashed earlier copy may have left part of it), then
//!    every object bound for it is copied, data and alarm. The source is
//!    untouched, and the target is not served until the caller records
//!    2S shards.
//! 2. [`prune_objects`] of each shard `k`, once 2S shards are recorded:
//!    deletes the objects that now live in `k + S` (their data and alarms;
//!    an alarm left there would wake an object in the wrong shard).
//!
//! Both run on blocking threads and write through [`Backend::commit`] in
//! bounded batches, so any backend that lists its objects
//! ([`Backend::objects`]) splits.

use std::sync::Arc;

use odo_core::ObjectId;

use crate::backend::{Backend, ScanLimit};
use crate::batch::{AlarmChange, KeyRange, ObjectBatch};
use crate::error::StorageError;
use crate::factory::{BackendFactory, ShardSpec};

/// Objects per page of [`Backend::objects`].
const OBJECTS_PAGE: usize = 256;
/// One page of one object's keys while copying.
const SCAN_PAGE: ScanLimit = ScanLimit {
    entries: 4096,
    bytes: 1024 * 1024,
};
/// A commit of the split goes out once it holds this many objects...
const COMMIT_OBJECTS: usize = 256;
/// ... or this many bytes of keys and values (one sync per MiB keeps a
/// split near the disk's write speed while bounding what a commit holds).
const COMMIT_BYTES: usize = 1024 * 1024;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SplitReport {
    /// Objects copied (by [`copy_objects`]) or deleted (by
    /// [`prune_objects`], and by [`copy_objects`] when it empties the
    /// target).
    pub objects: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
    /// Backend commits made.
    pub commits: u64,
}

/// Copies into shard `to` every object of shard `from` whose shard is
/// `to.shard` among `shard_count` shards, after deleting whatever `to`
/// held. Both shards are opened with `factory` and closed before this
/// returns.
///
/// # Errors
///
/// [`StorageError::Unsupported`] when the backend cannot list its objects
/// (nothing was written then); otherwise whatever the backend fails with.
pub async fn copy_objects(
    factory: &dyn BackendFactory,
    from: ShardSpec,
    to: ShardSpec,
    shard_count: u32,
) -> Result<SplitReport, StorageError> {
    check(&to, shard_count)?;
    let source = factory.open(from).await?;
    // A backend that cannot list its objects fails here, before the target
    // is opened (and perhaps created).
    let probe = source.clone();
    if let Err(e) = blocking(move || probe.objects(None, 1)).await {
        return closing(&*source, Err(e));
    }
    let target = match factory.open(to.clone()).await {
        Ok(target) => target,
        Err(e) => return closing(&*source, Err(e)),
    };
    let target_shard = to.shard;
    blocking(move || {
        let copied = empty(&*target).and_then(|mut report| {
            let copy = copy(&*source, &*target, target_shard, shard_count)?;
            report.objects += copy.objects;
            report.bytes += copy.bytes;
            report.commits += copy.commits;
            Ok(report)
        });
        closing(&*source, closing(&*target, copied))
    })
    .await
}

/// Deletes from shard `shard` every object whose shard is not
/// `shard.shard` among `shard_count` shards (data and alarm). Run it only
/// once every such object has been copied to its shard.
///
/// # Errors
///
/// [`StorageError::Unsupported`] when the backend cannot list its objects;
/// otherwise whatever the backend fails with.
pub async fn prune_objects(
    factory: &dyn BackendFactory,
    shard: ShardSpec,
    shard_count: u32,
) -> Result<SplitReport, StorageError> {
    check(&shard, shard_count)?;
    let store = factory.open(shard.clone()).await?;
    let kept = shard.shard;
    blocking(move || {
        let pruned = delete_where(&*store, |id| id.shard(shard_count) != kept);
        closing(&*store, pruned)
    })
    .await
}

fn check(shard: &ShardSpec, shard_count: u32) -> Result<(), StorageError> {
    if shard.shard < shard_count {
        Ok(())
    } else {
        Err(StorageError::backend(
            "splitting shards",
            format!(
                "shard {} is not below the shard count {shard_count}",
                shard.shard
            ),
        ))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::backend("splitting shards", e))?
}

/// Closes `store`, keeping the first error.
fn closing<T>(store: &dyn Backend, result: Result<T, StorageError>) -> Result<T, StorageError> {
    let closed = store.close();
    let value = result?;
    closed.map(|()| value)
}

/// Deletes every object of `store`.
fn empty(store: &dyn Backend) -> Result<SplitReport, StorageError> {
    delete_where(store, |_| true)
}

fn delete_where(
    store: &dyn Backend,
    doomed: impl Fn(&ObjectId) -> bool,
) -> Result<SplitReport, StorageError> {
    let mut report = SplitReport::default();
    let mut after = None;
    loop {
        let page = store.objects(after.as_ref(), OBJECTS_PAGE)?;
        let Some(&last) = page.last() else {
            return Ok(report);
        };
        let deletions: Vec<(ObjectId, Arc<ObjectBatch>)> = page
            .into_iter()
            .filter(|id| doomed(id))
            .map(|id| {
                let batch = ObjectBatch {
                    clear: true,
                    alarm: AlarmChange::Delete,
                    ..ObjectBatch::default()
                };
                (id, Arc::new(batch))
            })
            .collect();
        if !deletions.is_empty() {
            store.commit(&deletions)?;
            report.objects += deletions.len() as u64;
            report.commits += 1;
        }
        after = Some(last);
    }
}

/// Copies the objects of `source` that belong to `shard` into `target`.
fn copy(
    source: &dyn Backend,
    target: &dyn Backend,
    shard: u32,
    shard_count: u32,
) -> Result<SplitReport, StorageError> {
    let mut report = SplitReport::default();
    let mut pending = Pending::default();
    let mut after = None;
    loop {
        let page = source.objects(after.as_ref(), OBJECTS_PAGE)?;
        let Some(&last) = page.last() else { break };
        for id in page.into_iter().filter(|id| id.shard(shard_count) == shard) {
            report.objects += 1;
            let alarm = match source.alarm(&id)? {
                Some(time) => AlarmChange::Set(time),
                None => AlarmChange::Keep,
            };
            let mut batch = ObjectBatch {
                alarm,
                ..ObjectBatch::default()
            };
            let mut range = KeyRange::all();
            loop {
                let keys = source.scan(&id, &range, false, SCAN_PAGE)?;
                let Some((last_key, _)) = keys.last() else {
                    break;
                };
                range.lower = std::ops::Bound::Excluded(last_key.clone());
                for (key, value) in keys {
                    let size = key.len() + value.len();
                    report.bytes += size as u64;
                    pending.bytes += size;
                    batch.entries.insert(key, Some(value));
                }
                if pending.bytes >= COMMIT_BYTES {
                    // A big object goes out in several commits: the target
                    // is not served until the split is recorded.
                    pending.push(id, std::mem::take(&mut batch));
                    pending.flush(target, &mut report)?;
                }
            }
            pending.push(id, batch);
            if pending.full() {
                pending.flush(target, &mut report)?;
            }
        }
        after = Some(last);
    }
    pending.flush(target, &mut report)?;
    Ok(report)
}

/// Writes waiting for the next commit of a copy.
#[derive(Default)]
struct Pending {
    writes: Vec<(ObjectId, Arc<ObjectBatch>)>,
    bytes: usize,
}

impl Pending {
    fn push(&mut self, id: ObjectId, batch: ObjectBatch) {
        if !batch.is_empty() {
            self.writes.push((id, Arc::new(batch)));
        }
    }

    fn full(&self) -> bool {
        self.writes.len() >= COMMIT_OBJECTS || self.bytes >= COMMIT_BYTES
    }

    fn flush(
        &mut self,
        target: &dyn Backend,
        report: &mut SplitReport,
    ) -> Result<(), StorageError> {
        if !self.writes.is_empty() {
            target.commit(&self.writes)?;
            report.commits += 1;
        }
        self.writes.clear();
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use odo_core::Namespace;

    use super::*;
    use crate::factory::MemoryFactory;
    use crate::memory::MemoryBackend;

    /// The objects of a store: data and alarm.
    type Contents = BTreeMap<ObjectId, (Vec<(String, Bytes)>, Option<u64>)>;

    fn contents(store: &dyn Backend) -> Contents {
        let mut out = Contents::new();
        let mut after = None;
        loop {
            let page = store.objects(after.as_ref(), 7).unwrap();
            let Some(&last) = page.last() else {
                return out;
            };
            for id in page {
                let limit = ScanLimit {
                    entries: usize::MAX,
                    bytes: usize::MAX,
                };
                let data = store.scan(&id, &KeyRange::all(), false, limit).unwrap();
                out.insert(id, (data, store.alarm(&id).unwrap()));
            }
            after = Some(last);
        }
    }

    #[test]
    fn objects_are_paged_in_id_order() {
        let store = MemoryBackend::new();
        let ns = Namespace::new("P");
        let ids: Vec<ObjectId> = (0..20).map(|i| ns.id_from_name(&i.to_string())).collect();
        let writes: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut batch = ObjectBatch::default();
                if i % 3 == 0 {
                    batch.alarm = AlarmChange::Set(i as u64);
                } else {
                    batch.entries.insert("k".into(), Some(Bytes::from("v")));
                }
                (*id, Arc::new(batch))
            })
            .collect();
        store.commit(&writes).unwrap();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(contents(&store).into_keys().collect::<Vec<_>>(), sorted);
    }

    #[tokio::test]
    async fn a_split_moves_each_object_once_with_its_alarm() {
        let factory = MemoryFactory;
        // The memory factory opens empty stores: the passes still run and
        // report nothing to do.
        let spec = |shard| ShardSpec::new("/nonexistent", shard, 1);
        let report = copy_objects(&factory, spec(0), spec(1), 2).await.unwrap();
        assert_eq!(report, SplitReport::default());

        let source = MemoryBackend::new();
        let target = MemoryBackend::new();
        let ns = Namespace::new("S");
        let mut writes = Vec::new();
        for i in 0..300u64 {
            let mut batch = ObjectBatch::default();
            for k in 0..(i % 4) {
                batch
                    .entries
                    .insert(format!("k{k}"), Some(Bytes::from(vec![i as u8; 10])));
            }
            if i % 5 == 0 {
                batch.alarm = AlarmChange::Set(1000 + i);
            }
            writes.push((ns.id_from_name(&i.to_string()), Arc::new(batch)));
        }
        source.commit(&writes).unwrap();
        // Garbage from an earlier, crashed copy.
        let stale = ns.id_from_name("stale");
        let mut garbage = ObjectBatch::default();
        garbage.entries.insert("old".into(), Some(Bytes::from("x")));
        target.commit(&[(stale, Arc::new(garbage))]).unwrap();
        let before = contents(&source);

        let copied = empty(&target)
            .and_then(|_| copy(&source, &target, 1, 2))
            .unwrap();
        let moved: Contents = before
            .iter()
            .filter(|(id, _)| id.shard(2) == 1)
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        assert_eq!(contents(&target), moved);
        assert_eq!(copied.objects, moved.len() as u64);
        assert_eq!(contents(&source), before, "copying leaves the source alone");

        let pruned = delete_where(&source, |id| id.shard(2) != 0).unwrap();
        assert_eq!(pruned.objects, moved.len() as u64);
        let kept: Contents = before
            .into_iter()
            .filter(|(id, _)| id.shard(2) == 0)
            .collect();
        assert_eq!(contents(&source), kept);
        // Pruning again finds nothing.
        assert_eq!(
            delete_where(&source, |id| id.shard(2) != 0)
                .unwrap()
                .objects,
            0
        );
    }

    #[test]
    fn a_big_object_is_copied_in_several_commits() {
        let source = MemoryBackend::new();
        let target = MemoryBackend::new();
        let ns = Namespace::new("B");
        let id = (0..)
            .map(|i| ns.id_from_name(&format!("big{i}")))
            .find(|id| id.shard(2) == 1)
            .unwrap();
        let mut batch = ObjectBatch::default();
        for k in 0..30 {
            batch
                .entries
                .insert(format!("{k:04}"), Some(Bytes::from(vec![7u8; 100 * 1024])));
        }
        source.commit(&[(id, Arc::new(batch))]).unwrap();
        let report = copy(&source, &target, 1, 2).unwrap();
        assert!(report.commits >= 2, "{report:?}");
        assert_eq!(contents(&target), contents(&source));
    }
}
