//! This host's shards: acquire the ones assigned to it (an owner key under
//! its lease; the key's creation revision is the epoch), open their
//! stores and serve them; give up the ones assigned elsewhere (drain, close,
//! delete the key); stop serving everything at the lease's local deadline.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use odo_storage::{BackendFactory, ShardSpec, Store};
use odo_worker::Runtime;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::doors::{self, HostDoors};
use crate::keys::{Keys, Owner};
use crate::lease::LeaseState;
use crate::view::View;

/// What the shard loop needs.
/// Why a SQLite-backed object is refused when shards move between hosts.
pub(crate) const SQL_ON_SHARED_STORAGE: &str = "in cluster mode SQLite-backed objects need storage on the host (fjall), whose shards stay on their host; with storage every host reaches (PostgreSQL) shards move between hosts and an object's database files would be left behind";

pub(crate) struct Shards {
    pub(crate) client: Client,
    pub(crate) keys: Keys,
    pub(crate) config: Arc<ClusterConfig>,
    pub(crate) shard_count: u32,
    pub(crate) runtime: Runtime,
    pub(crate) backend: Arc<dyn BackendFactory>,
    pub(crate) data_dir: PathBuf,
    pub(crate) endpoint: String,
    /// The cluster's front doors: asked for their sockets of a shard
    /// before it is served here.
    pub(crate) doors: Arc<HostDoors>,
    pub(crate) draining: watch::Receiver<bool>,
    pub(crate) lease: watch::Receiver<LeaseState>,
    pub(crate) view: watch::Receiver<Arc<View>>,
    pub(crate) stop: watch::Receiver<bool>,
    /// Shards that failed to open, and when to try again.
    pub(crate) retry_at: BTreeMap<u32, (Instant, Duration)>,
}

impl Shards {
    /// Reconciles until `stop`, then releases every shard.
    pub(crate) async fn run(mut self) {
        loop {
            if *self.stop.borrow() {
                break;
            }
            self.reconcile().await;
            let next_retry = self.retry_at.values().map(|(at, _)| *at).min();
            let until = match *self.lease.borrow() {
                LeaseState::Held { until, .. } => Some(until),
                LeaseState::Lost => None,
            };
            let wake = [next_retry, until]
                .into_iter()
                .flatten()
                .filter(|t| *t > Instant::now())
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(250))
                .min(Instant::now() + Duration::from_millis(250));
            tokio::select! {
                _ = self.view.changed() => {}
                _ = self.lease.changed() => {}
                _ = self.draining.changed() => {}
                _ = self.stop.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        let open: Vec<u32> = self.runtime.shards().into_iter().map(|(s, _)| s).collect();
        for shard in open {
            let epoch = self.runtime.shard_epoch(shard);
            self.release(shard, epoch).await;
        }
    }

    async fn reconcile(&mut self) {
        let now = Instant::now();
        let Some(lease) = self.lease.borrow().serving(now) else {
            // Past the local deadline: stop serving everything at once,
            // before the lease can expire in etcd and another host take
            // the shards.
            let open = self.runtime.shards();
            if !open.is_empty() {
                warn!(
                    shards = ?open.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                    "lease not renewed within the local deadline: no longer serving these shards"
                );
                let releases = open
                    .iter()
                    .map(|(shard, _)| self.runtime.release_shard(*shard));
                futures_util::future::join_all(releases).await;
            }
            return;
        };
        let view = self.view.borrow_and_update().clone();
        let draining = *self.draining.borrow();
        let me = self.config.host.clone();
        for shard in 0..self.shard_count {
            let wanted = !draining && view.assign.get(&shard) == Some(&me);
            let owner = view.owners.get(&shard);
            let mine = owner.is_some_and(|o| o.owner.host == me && o.lease == lease);
            let open = self.runtime.shard_epoch(shard);
            match (wanted, owner, mine) {
                // Someone else's (or a key of this host's old lease, about
                // to expire): never serve it.
                (_, Some(_), false) => {
                    if open.is_some() {
                        info!(
                            shard,
                            "the shard belongs to another holder now; releasing it"
                        );
                        self.runtime.release_shard(shard).await;
                    }
                }
                (true, None, _) => {
                    if open.is_some() {
                        self.runtime.release_shard(shard).await;
                    }
                    if self.retry_at.get(&shard).is_some_and(|(at, _)| *at > now) {
                        continue;
                    }
                    self.acquire(shard, lease).await;
                }
                (true, Some(entry), true) => {
                    if open != Some(entry.epoch) {
                        if open.is_some() {
                            self.runtime.release_shard(shard).await;
                        }
                        if self.retry_at.get(&shard).is_some_and(|(at, _)| *at > now) {
                            continue;
                        }
                        self.open(shard, entry.epoch).await;
                    }
                }
                (false, Some(entry), true) => self.release(shard, Some(entry.epoch)).await,
                (false, None, _) => {
                    if open.is_some() {
                        self.runtime.release_shard(shard).await;
                    }
                }
            }
        }
    }

    /// Takes the owner key of `shard` if nobody holds it, then opens it.
    async fn acquire(&mut self, shard: u32, lease: i64) {
        let owner = Owner {
            host: self.config.host.clone(),
            endpoint: self.endpoint.clone(),
        };
        let Ok(value) = serde_json::to_vec(&owner) else {
            return;
        };
        let key = self.keys.owner(shard);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let result = tokio::time::timeout(self.config.etcd_timeout, self.client.txn(txn)).await;
        match result {
            Ok(Ok(response)) if response.succeeded() => {
                let epoch = response.header().map_or(0, |h| h.revision());
                let epoch = u64::try_from(epoch).unwrap_or(0);
                info!(shard, epoch, "acquired the shard");
                self.open(shard, epoch).await;
            }
            // Taken in the meantime: the next view shows by whom.
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(shard, error = %e, "acquiring the shard failed"),
            Err(_) => warn!(shard, "acquiring the shard timed out"),
        }
    }

    /// Opens `shard`'s store at `epoch` and serves it. A failure (the
    /// database unreachable, the shard fenced by a newer epoch) is retried
    /// with backoff.
    async fn open(&mut self, shard: u32, epoch: u64) {
        let spec = ShardSpec::new(&self.data_dir, shard, epoch);
        // SQLite-backed objects keep their files in this host's data
        // directory, as alone; where shards move between hosts, those files
        // would be left behind, so such objects are refused.
        let mut options = self.runtime.store_options(&spec, self.backend.durable());
        if self.config.shared_storage {
            options.sql.refused = Some(SQL_ON_SHARED_STORAGE.to_owned());
        }
        let opened = match self.backend.open(spec).await {
            Ok(backend) => Store::open_shared(backend, options),
            Err(e) => Err(e),
        };
        let result = match opened {
            Ok(store) => {
                // Every door's sockets of the shard's objects, before any
                // of them runs a turn here.
                let mut endpoints: Vec<String> = self
                    .view
                    .borrow()
                    .members
                    .values()
                    .map(|m| m.member.endpoint.clone())
                    .collect();
                endpoints.push(self.endpoint.clone());
                endpoints.sort();
                endpoints.dedup();
                let sockets = doors::gather(&self.doors, &endpoints, shard, self.shard_count).await;
                self.runtime
                    .open_shard_with_sockets(shard, epoch, store, sockets)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                self.retry_at.remove(&shard);
                info!(shard, epoch, "serving the shard");
            }
            Err(e) => {
                let delay = self
                    .retry_at
                    .get(&shard)
                    .map_or(Duration::from_millis(100), |(_, d)| {
                        (*d * 2).min(Duration::from_secs(2))
                    });
                warn!(shard, epoch, error = %e, retry_ms = delay.as_millis() as u64, "cannot open the shard");
                self.retry_at.insert(shard, (Instant::now() + delay, delay));
            }
        }
    }

    /// Drains `shard` (in-flight events finish, their writes become
    /// durable), closes its store, then deletes its owner key so the next
    /// holder can take it.
    async fn release(&mut self, shard: u32, key_epoch: Option<u64>) {
        self.runtime.release_shard(shard).await;
        // Only the key this host created (at that revision) is deleted.
        let Some(epoch) = key_epoch.and_then(|e| i64::try_from(e).ok()) else {
            return;
        };
        let key = self.keys.owner(shard);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                epoch,
            )])
            .and_then([TxnOp::delete(key, None)]);
        match tokio::time::timeout(self.config.etcd_timeout, self.client.txn(txn)).await {
            Ok(Ok(_)) => info!(shard, "released the shard"),
            Ok(Err(e)) => {
                warn!(shard, error = %e, "deleting the owner key failed; it expires with the lease")
            }
            Err(_) => warn!(
                shard,
                "deleting the owner key timed out; it expires with the lease"
            ),
        }
    }
}
