//! The placement table: which worker serves each shard, at which epoch.
//! Plain data; the supervisor changes it and publishes copies.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use odo_core::ObjectId;
use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
use odo_core::wire::{Placement, ShardPlacement};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::RegistryError;

/// The live owner of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// The worker slot.
    pub slot: u32,
    /// The worker process.
    pub pid: u32,
    /// Where it listens.
    pub endpoint: String,
}

/// One shard's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardEntry {
    /// Bumped every time the shard is assigned; a worker serves a request
    /// only when the request's epoch is the one it was assigned.
    pub epoch: u64,
    /// The worker serving it, `None` while it is being (re)assigned.
    pub owner: Option<Owner>,
}

/// The whole table. Every change bumps `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacementTable {
    /// Bumped on every change.
    pub version: u64,
    /// One entry per shard.
    pub shards: Vec<ShardEntry>,
}

impl PlacementTable {
    /// A table of `shard_count` unassigned shards whose epochs continue from
    /// `epochs` (from the data directory), before anything is published
    /// (version 0: every published table is newer).
    pub(crate) fn new(epochs: &[u64]) -> Self {
        Self {
            version: 0,
            shards: epochs
                .iter()
                .map(|&epoch| ShardEntry { epoch, owner: None })
                .collect(),
        }
    }

    /// The number of shards, S.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The shard of `id` and its entry.
    pub fn lookup(&self, id: &ObjectId) -> (u32, &ShardEntry) {
        let shard = id.shard(self.shard_count());
        (shard, &self.shards[shard as usize])
    }

    /// The table as workers receive it.
    pub fn to_wire(&self) -> Placement {
        Placement {
            version: self.version,
            shards: self
                .shards
                .iter()
                .map(|s| ShardPlacement {
                    epoch: s.epoch,
                    endpoint: s.owner.as_ref().map(|o| o.endpoint.clone()),
                })
                .collect(),
        }
    }
}

/// What the data directory records: S and the last epoch of each shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterFile {
    pub(crate) format: u32,
    pub(crate) shard_count: u32,
    pub(crate) epochs: Vec<u64>,
    /// The worker slot serving each shard when the record was written
    /// (`None`: unassigned). Informational: a restarted registry assigns
    /// shards afresh, with new epochs.
    #[serde(default)]
    pub(crate) assignment: Vec<Option<u32>>,
}

const CLUSTER_FILE: &str = "odo-cluster.json";

impl ClusterFile {
    /// Reads the data directory's record, or creates one with
    /// `shard_count` shards.
    pub(crate) fn load_or_create(data_dir: &Path, shard_count: u32) -> Result<Self, RegistryError> {
        let path = data_dir.join(CLUSTER_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ClusterFile =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::DataDir {
                        path: path.clone(),
                        reason: format!("unreadable cluster record: {e}"),
                    })?;
                if file.format != 1
                    || file.epochs.len() != file.shard_count as usize
                    || file.shard_count == 0
                {
                    return Err(RegistryError::DataDir {
                        path,
                        reason: "inconsistent cluster record (format, shard count or epochs)"
                            .into(),
                    });
                }
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = ClusterFile {
                    format: 1,
                    shard_count: shard_count.max(1),
                    epochs: vec![0; shard_count.max(1) as usize],
                    assignment: vec![None; shard_count.max(1) as usize],
                };
                file.save(data_dir)?;
                Ok(file)
            }
            Err(e) => Err(RegistryError::DataDir {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the record atomically and durably (temporary file, fsync,
    /// rename, fsync of the directory), so that epochs never go backwards.
    /// The temporary file's name is its writer's own (pid and a counter),
    /// and it is removed if the write fails.
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), RegistryError> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let path = data_dir.join(CLUSTER_FILE);
        let tmp = data_dir.join(format!(
            "{CLUSTER_FILE}.{}-{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write_and_rename(data_dir, &path, &tmp);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn write_and_rename(
        &self,
        data_dir: &Path,
        path: &Path,
        tmp: &Path,
    ) -> Result<(), RegistryError> {
        let io = |e: std::io::Error| RegistryError::DataDir {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| RegistryError::DataDir {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(tmp, path).map_err(io)?;
        #[cfg(unix)]
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(slot: u32) -> Owner {
        Owner {
            slot,
            pid: 100 + slot,
            endpoint: format!("unix:/w{slot}"),
        }
    }

    #[test]
    fn the_table_routes_by_shard_and_goes_on_the_wire() {
        let mut table = PlacementTable::new(&[4, 0]);
        assert_eq!(table.version, 0);
        table.shards[1].owner = Some(owner(1));
        let id = (0..)
            .map(|i| odo_core::Namespace::new("C").id_from_name(&format!("x{i}")))
            .find(|id| id.shard(2) == 1)
            .unwrap();
        assert_eq!(table.lookup(&id), (1, &table.shards[1]));
        let wire = table.to_wire();
        assert_eq!(wire.shards[0].endpoint, None);
        assert_eq!(wire.shards[0].epoch, 4);
        assert_eq!(wire.shards[1].endpoint.as_deref(), Some("unix:/w1"));
    }

    #[test]
    fn the_cluster_file_keeps_s_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ClusterFile::load_or_create(dir.path(), 3).unwrap();
        assert_eq!(file.epochs, vec![0, 0, 0]);
        file.epochs = vec![7, 8, 9];
        file.assignment = vec![Some(0), None, Some(1)];
        file.save(dir.path()).unwrap();
        // S is fixed at creation: a different worker count later does not
        // change it.
        assert_eq!(ClusterFile::load_or_create(dir.path(), 5).unwrap(), file);
        // Nothing but the record is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CLUSTER_FILE)]);
        std::fs::write(dir.path().join(CLUSTER_FILE), b"{garbage").unwrap();
        assert!(matches!(
            ClusterFile::load_or_create(dir.path(), 3),
            Err(RegistryError::DataDir { .. })
        ));
    }
}

/// The registry's table as a [`PlacementSource`]: what routers (and any
/// other forwarder in the registry's process) follow.
#[derive(Debug, Clone)]
pub struct TablePlacement {
    table: watch::Receiver<Arc<PlacementTable>>,
}

impl TablePlacement {
    /// Follows the table published on `table`.
    pub fn new(table: watch::Receiver<Arc<PlacementTable>>) -> Self {
        Self { table }
    }
}

impl PlacementSource for TablePlacement {
    fn shard_count(&self) -> u32 {
        self.table.borrow().shard_count()
    }

    fn version(&self) -> u64 {
        self.table.borrow().version
    }

    fn locate(&self, id: &ObjectId) -> ShardLocation {
        let table = self.table.borrow();
        let (shard, entry) = table.lookup(id);
        ShardLocation {
            version: table.version,
            shard,
            epoch: entry.epoch,
            owner: entry.owner.as_ref().map(|owner| ShardOwner {
                endpoint: owner.endpoint.clone(),
                pid: Some(owner.pid),
            }),
        }
    }

    fn changed(&self, seen: u64) -> Changed<'_> {
        let mut table = self.table.clone();
        Box::pin(async move {
            // An error means the registry is gone: no change will come.
            let _ = table.wait_for(|t| t.version != seen).await;
        })
    }
}
