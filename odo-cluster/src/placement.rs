//! [`EtcdPlacement`]: the owners in etcd as a [`PlacementSource`], which
//! the router of every host (and the objects' calls) follow.

use std::sync::Arc;

use odo_core::ObjectId;
use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
use tokio::sync::watch;

use crate::view::View;

/// Where each shard is, from the cluster's owner keys: the owner's
/// endpoint, and the epoch (the owner key's creation revision). The
/// version is the etcd revision of the view, so it only grows.
#[derive(Debug, Clone)]
pub struct EtcdPlacement {
    shard_count: u32,
    view: watch::Receiver<Arc<View>>,
}

impl EtcdPlacement {
    pub(crate) fn new(shard_count: u32, view: watch::Receiver<Arc<View>>) -> Self {
        Self {
            shard_count: shard_count.max(1),
            view,
        }
    }
}

impl PlacementSource for EtcdPlacement {
    fn shard_count(&self) -> u32 {
        self.shard_count
    }

    fn version(&self) -> u64 {
        u64::try_from(self.view.borrow().revision).unwrap_or(0)
    }

    fn locate(&self, id: &ObjectId) -> ShardLocation {
        let view = self.view.borrow();
        let shard = id.shard(self.shard_count);
        let owner = view.owners.get(&shard);
        ShardLocation {
            version: u64::try_from(view.revision).unwrap_or(0),
            shard,
            epoch: owner.map_or(0, |o| o.epoch),
            owner: owner.map(|o| ShardOwner {
                endpoint: o.owner.endpoint.clone(),
                pid: None,
            }),
        }
    }

    fn changed(&self, seen: u64) -> Changed<'_> {
        let mut view = self.view.clone();
        Box::pin(async move {
            let _ = view
                .wait_for(|v| u64::try_from(v.revision).unwrap_or(0) != seen)
                .await;
        })
    }
}
