//! The placement table: which worker serves each shard, at which epoch.
//! Plain data; the supervisor changes it and publishes copies.

use std::sync::Arc;

use odo_core::ObjectId;
use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
use odo_core::wire::{Placement, ShardPlacement};
use serde::Serialize;
use tokio::sync::watch;

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
