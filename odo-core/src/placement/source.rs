//! What a forwarder needs from placement, whoever keeps it: the registry's
//! table on one machine, a cluster's store across machines.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ObjectId;

/// The future [`PlacementSource::changed`] returns: runtime-agnostic
/// (`std::future` only), so odo-core needs no async runtime.
pub type Changed<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where an object's shard is served, as one consistent reading of the
/// placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLocation {
    /// The placement version this was read from: pass it to
    /// [`PlacementSource::changed`] to wait for anything newer, without
    /// missing a change made in between.
    pub version: u64,
    /// The object's shard, `id.shard(S)`.
    pub shard: u32,
    /// The epoch to stamp the request with: a worker serves the shard only
    /// at its current epoch and answers `Moved` otherwise.
    pub epoch: u64,
    /// Who serves the shard; `None` while it moves (wait for a change).
    pub owner: Option<ShardOwner>,
}

/// The process serving a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOwner {
    /// Where it listens, as an endpoint string (`unix:/path`,
    /// `tcp:host:port`).
    pub endpoint: String,
    /// Its process id, when the source knows it (for admin endpoints).
    pub pid: Option<u32>,
}

/// The placement a forwarder (the router, or a worker calling another
/// object) follows: for an object, its shard, the shard's epoch and owner,
/// and a way to wait for the next change. The registry's table is one
/// implementation; a cluster mode is another.
///
/// The forwarding loop: [`locate`](Self::locate) the object; send to the
/// owner stamped with the epoch; if there was no owner, the send was never
/// written, or the owner answered `Moved`, wait for
/// [`changed`](Self::changed) from the location's version (bounded by the
/// retry policy's wait and the call's deadline) and locate again.
///
/// ```
/// use odo_core::ObjectId;
/// use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
///
/// /// One worker holding every shard, forever.
/// struct Fixed {
///     shards: u32,
/// }
///
/// impl PlacementSource for Fixed {
///     fn shard_count(&self) -> u32 {
///         self.shards
///     }
///     fn version(&self) -> u64 {
///         1
///     }
///     fn locate(&self, id: &ObjectId) -> ShardLocation {
///         ShardLocation {
///             version: 1,
///             shard: id.shard(self.shards),
///             epoch: 1,
///             owner: Some(ShardOwner { endpoint: "tcp:127.0.0.1:7000".into(), pid: None }),
///         }
///     }
///     fn changed(&self, seen: u64) -> Changed<'_> {
///         if seen == 1 {
///             Box::pin(std::future::pending())
///         } else {
///             Box::pin(std::future::ready(()))
///         }
///     }
/// }
///
/// let source: &dyn PlacementSource = &Fixed { shards: 4 };
/// let id = odo_core::Namespace::new("COUNTER").id_from_name("hot");
/// let location = source.locate(&id);
/// assert_eq!(location.shard, id.shard(source.shard_count()));
/// assert!(location.owner.is_some());
/// ```
pub trait PlacementSource: Send + Sync {
    /// The number of shards, S.
    fn shard_count(&self) -> u32;

    /// The current placement version; it grows with every change.
    fn version(&self) -> u64;

    /// Where `id` is served now.
    fn locate(&self, id: &ObjectId) -> ShardLocation;

    /// Resolves once the placement's version is no longer `seen`: at once
    /// if it already changed, or if the source will change no more (its
    /// keeper is gone; the caller's deadline then decides). Dropping the
    /// future stops the wait.
    fn changed(&self, seen: u64) -> Changed<'_>;
}

impl<T: PlacementSource + ?Sized> PlacementSource for Arc<T> {
    fn shard_count(&self) -> u32 {
        (**self).shard_count()
    }

    fn version(&self) -> u64 {
        (**self).version()
    }

    fn locate(&self, id: &ObjectId) -> ShardLocation {
        (**self).locate(id)
    }

    fn changed(&self, seen: u64) -> Changed<'_> {
        (**self).changed(seen)
    }
}
