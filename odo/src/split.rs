//! The registry's [`ShardSplitter`] for any storage backend: odo-storage's
//! `split` passes, run on shards opened with the backend's factory.

use std::path::Path;
use std::sync::Arc;

use odo_registry::{ShardAt, ShardSplitter, SplitDone, SplitError, SplitFuture};
use odo_storage::split::{SplitReport, copy_objects, prune_objects};
use odo_storage::{BackendFactory, ShardSpec, StorageError};

/// Splits the shards of one storage backend (see odo-registry's
/// [`ShardSplitter`]). Backends that cannot list their objects answer
/// [`SplitError::Unsupported`], and the server runs with the shards it has.
#[derive(Debug, Clone)]
pub struct StorageSplitter {
    factory: Arc<dyn BackendFactory>,
}

impl StorageSplitter {
    /// A splitter of the shards `factory` opens.
    pub fn new(factory: Arc<dyn BackendFactory>) -> Self {
        Self { factory }
    }
}

fn spec(data_dir: &Path, shard: ShardAt) -> ShardSpec {
    ShardSpec::new(data_dir, shard.shard, shard.epoch)
}

fn done(result: Result<SplitReport, StorageError>) -> Result<SplitDone, SplitError> {
    match result {
        Ok(report) => Ok(SplitDone {
            objects: report.objects,
            bytes: report.bytes,
        }),
        Err(e @ StorageError::Unsupported { .. }) => Err(SplitError::Unsupported(e.to_string())),
        Err(e) => Err(SplitError::Failed(Box::new(e))),
    }
}

impl ShardSplitter for StorageSplitter {
    fn copy(&self, data_dir: &Path, from: ShardAt, to: ShardAt, shard_count: u32) -> SplitFuture {
        let factory = self.factory.clone();
        let (from, to) = (spec(data_dir, from), spec(data_dir, to));
        Box::pin(async move { done(copy_objects(&*factory, from, to, shard_count).await) })
    }

    fn prune(&self, data_dir: &Path, shard: ShardAt, shard_count: u32) -> SplitFuture {
        let factory = self.factory.clone();
        let shard = spec(data_dir, shard);
        Box::pin(async move { done(prune_objects(&*factory, shard, shard_count).await) })
    }
}
