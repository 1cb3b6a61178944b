//! [`Host`]: one odo host of a cluster, started and stopped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use odo_storage::BackendFactory;
use odo_transport::upgrade::TcpUpgrade;
use odo_transport::{ClientConfig, Endpoint, Server, ServerConfig};
use odo_worker::{Classes, ObjectHandler, ObjectRouter, Runtime, RuntimeConfig, WebSocketDoors};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::doors::{HostDoors, HostHandler};
use crate::error::ClusterError;
use crate::keys::{Keys, Member};
use crate::lease::LeaseState;
use crate::placement::EtcdPlacement;
use crate::shards::Shards;
use crate::tls::HostTls;
use crate::view::{self, View};

/// How long a graceful leave waits for this host's shards to move.
const LEAVE_WITHIN: Duration = Duration::from_secs(30);

/// A running host: its objects' runtime, the transport server other hosts
/// reach it on, and the tasks that keep its membership, its shards and
/// (when elected) the assignment.
#[derive(Debug)]
pub struct Host {
    config: Arc<ClusterConfig>,
    router: Arc<ObjectRouter>,
    doors: Arc<HostDoors>,
    runtime: Runtime,
    endpoint: String,
    shard_count: u32,
    token: String,
    member: watch::Sender<Member>,
    lease: watch::Receiver<LeaseState>,
    leading: watch::Receiver<bool>,
    view: watch::Receiver<Arc<View>>,
    stop: watch::Sender<bool>,
    server_stop: watch::Sender<bool>,
    /// The view and the transport server: stopped last.
    background: Vec<JoinHandle<()>>,
    /// Membership, election, shards: they end by themselves on `stop`.
    tasks: Vec<JoinHandle<()>>,
    storage: String,
}

/// What `/_odo/cluster` (and `/_odo/workers` in cluster mode) shows.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// This host's id.
    pub host: String,
    /// Where other hosts reach its objects.
    pub endpoint: String,
    /// Whether it holds its lease within the local deadline (serving).
    pub serving: bool,
    /// Its lease, when held.
    pub lease: Option<i64>,
    /// Whether it is the elected host (assigning shards).
    pub leader: bool,
    /// Whether it is leaving.
    pub draining: bool,
    /// The storage backend, and whether shards can move between hosts.
    pub storage: String,
    /// `false` for storage on the host (fjall): such a shard is unavailable
    /// while its host is down.
    pub shards_move: bool,
    /// The shards this host serves, with their epochs.
    pub shards: BTreeMap<u32, u64>,
    /// Every shard: its owner and epoch, as etcd says.
    pub placement: BTreeMap<u32, ShardPlacement>,
    /// The live members.
    pub members: Vec<String>,
}

/// One shard in [`HostStatus::placement`].
#[derive(Debug, Clone, Serialize)]
pub struct ShardPlacement {
    /// The host it is assigned to.
    pub assigned: Option<String>,
    /// The host that owns it now.
    pub owner: Option<String>,
    /// Its epoch (the owner key's creation revision).
    pub epoch: u64,
}

impl Host {
    /// Joins the cluster: connects to etcd, reads (or, for the first host,
    /// records) the shard count and the transport token, binds the
    /// advertised address for other hosts, and starts the membership,
    /// election and shard tasks. `backend` opens this host's shards
    /// (epochs are etcd revisions); `storage` is its name.
    ///
    /// # Errors
    ///
    /// [`ClusterError`] if the configuration is unusable, etcd cannot be
    /// reached, or the address cannot be bound.
    pub async fn start(
        config: ClusterConfig,
        classes: Classes,
        runtime_config: RuntimeConfig,
        backend: Arc<dyn BackendFactory>,
        data_dir: PathBuf,
    ) -> Result<Host, ClusterError> {
        let storage = backend.name().to_owned();
        config.validate()?;
        let config = Arc::new(config);
        let keys = Keys::new(&config.name);
        let mut client = view::connect(&config).await?;
        let shard_count = record_once(
            &mut client,
            &keys.shards(),
            config.shards.to_string(),
            &config,
        )
        .await?
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ClusterError::Corrupt {
            key: keys.shards(),
            what: "not a positive shard count".into(),
        })?;
        let token = record_once(&mut client, &keys.token(), random_token(), &config).await?;
        if shard_count != config.shards {
            info!(
                shards = shard_count,
                "the cluster's shard count is fixed; --shards applies to a new cluster only"
            );
        }

        let (view_tx, view) = watch::channel(Arc::new(View::default()));
        let mut background = vec![tokio::spawn(view::follow(
            client.clone(),
            keys.clone(),
            view_tx,
        ))];
        let mut first = view.clone();
        let _ =
            tokio::time::timeout(config.etcd_timeout * 2, first.wait_for(|v| v.revision > 0)).await;

        let runtime = Runtime::new(classes, runtime_config, shard_count);
        let listen: Endpoint = format!("tcp:{}", config.advertise)
            .parse()
            .map_err(|e| ClusterError::Config(format!("--advertise: {e}")))?;
        let upgrade: Option<Arc<dyn TcpUpgrade>> = match &config.tls {
            Some(files) => Some(Arc::new(HostTls::from_files(files)?)),
            None => None,
        };
        let server = Server::bind(
            &listen,
            ServerConfig {
                peer_name: config.host.clone(),
                // Only with TLS or on loopback (ClusterConfig::validate).
                allow_non_loopback: true,
                upgrade: upgrade.clone(),
                ..ServerConfig::new(token.clone())
            },
        )
        .await?;
        let endpoint = server.endpoint().to_string();
        let placement = Arc::new(EtcdPlacement::new(shard_count, view.clone()));
        let hosts = ClientConfig {
            peer_name: config.host.clone(),
            upgrade,
            ..ClientConfig::new(token.clone())
        };
        let router = ObjectRouter::new(runtime.clone(), endpoint.clone(), placement, hosts.clone());
        runtime.set_cluster(Arc::new(router.clone()));
        let doors = Arc::new(HostDoors::new(endpoint.clone(), hosts, view.clone()));
        runtime.set_websocket_doors(doors.clone());
        let (server_stop, mut server_stopped) = watch::channel(false);
        let handler = Arc::new(HostHandler {
            objects: ObjectHandler::new(runtime.clone()),
            doors: doors.clone(),
        });
        background.push(tokio::spawn(async move {
            server
                .serve(handler, async move {
                    let _ = server_stopped.wait_for(|s| *s).await;
                })
                .await;
        }));

        let (member, member_rx) = watch::channel(Member {
            host: config.host.clone(),
            endpoint: endpoint.clone(),
            http: config.http.clone(),
            draining: false,
        });
        let mut tasks = Vec::new();
        let (lease_tx, lease) = watch::channel(LeaseState::Lost);
        let (stop, stop_rx) = watch::channel(false);
        let (leading_tx, leading) = watch::channel(false);
        tasks.push(tokio::spawn(crate::lease::run(
            client.clone(),
            keys.clone(),
            config.clone(),
            member_rx.clone(),
            lease_tx,
            stop_rx.clone(),
        )));
        let election = view::connect_for_election(&config).await?;
        tasks.push(tokio::spawn(crate::leader::run(
            election,
            keys.clone(),
            config.clone(),
            shard_count,
            lease.clone(),
            view.clone(),
            leading_tx,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::doors::follow_members(
            runtime.clone(),
            endpoint.clone(),
            view.clone(),
            stop_rx.clone(),
        )));
        let (draining_tx, draining_rx) = watch::channel(false);
        let mut member_watch = member_rx;
        let mut stopping = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            // The shard loop reads `draining` from the member record.
            loop {
                tokio::select! {
                    changed = member_watch.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let draining = member_watch.borrow().draining;
                        draining_tx.send_replace(draining);
                    }
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }));
        tasks.push(tokio::spawn(
            Shards {
                client,
                keys,
                config: config.clone(),
                shard_count,
                runtime: runtime.clone(),
                backend,
                data_dir,
                endpoint: endpoint.clone(),
                doors: doors.clone(),
                draining: draining_rx,
                lease: lease.clone(),
                view: view.clone(),
                stop: stop_rx,
                retry_at: BTreeMap::new(),
            }
            .run(),
        ));
        info!(host = %config.host, %endpoint, shards = shard_count, "cluster host started");
        Ok(Host {
            config,
            router,
            doors,
            runtime,
            endpoint,
            shard_count,
            token,
            member,
            lease,
            leading,
            view,
            stop,
            server_stop,
            background,
            tasks,
            storage,
        })
    }

    /// Routes requests to objects: local shards in this process, the
    /// others to their owners.
    pub fn router(&self) -> &Arc<ObjectRouter> {
        &self.router
    }

    /// Sets this host's WebSocket front door (`None`: forgets it, at
    /// shutdown, after the door closed its sockets). Its endpoint is
    /// [`Host::endpoint`]: the sockets it holds are named by it, their
    /// objects' outputs come to it in this process or over the transport
    /// from the host that owns the object, and a host taking over a shard
    /// asks it for its records of the shard's sockets.
    pub fn set_front_door(&self, door: Option<Arc<dyn WebSocketDoors>>) {
        self.doors.set_local(door);
    }

    /// The objects' runtime of this host.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The cluster's shard count.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Where other hosts reach this host's objects.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The token hosts present to each other.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// This host's state and the cluster's placement as it sees it.
    pub fn status(&self) -> HostStatus {
        let lease = self.lease.borrow().serving(Instant::now());
        let view = self.view.borrow().clone();
        let placement = (0..self.shard_count)
            .map(|shard| {
                let owner = view.owners.get(&shard);
                (
                    shard,
                    ShardPlacement {
                        assigned: view.assign.get(&shard).cloned(),
                        owner: owner.map(|o| o.owner.host.clone()),
                        epoch: owner.map_or(0, |o| o.epoch),
                    },
                )
            })
            .collect();
        HostStatus {
            host: self.config.host.clone(),
            endpoint: self.endpoint.clone(),
            serving: lease.is_some(),
            lease,
            leader: *self.leading.borrow(),
            draining: self.member.borrow().draining,
            storage: self.storage.clone(),
            shards_move: self.config.shared_storage,
            shards: self.runtime.shards().into_iter().collect(),
            placement,
            members: view.members.keys().cloned().collect(),
        }
    }

    /// Leaves the cluster gracefully: marks this host as draining so the
    /// elected host gives its shards to others (with shared storage), waits
    /// (up to 30 s) until it serves none, then revokes its lease and stops.
    /// Requests for its objects in the meantime are served here until each
    /// shard moves, then by the new owner.
    pub async fn leave(self) {
        self.member.send_modify(|m| m.draining = true);
        if self.config.shared_storage {
            let give_up = Instant::now() + LEAVE_WITHIN;
            let mut view = self.view.clone();
            while !self.runtime.shards().is_empty() && Instant::now() < give_up {
                let _ = tokio::time::timeout(Duration::from_millis(200), view.changed()).await;
            }
            if !self.runtime.shards().is_empty() {
                warn!("leaving with shards still here: they move once the lease is gone");
            }
        }
        self.stop().await;
    }

    /// Stops at once: releases this host's shards, revokes the lease,
    /// stops the server and the runtime.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        // The shard task releases every shard, then the others end.
        for task in &self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                while !task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
        self.server_stop.send_replace(true);
        self.runtime.shutdown().await;
        for task in self.tasks.iter().chain(&self.background) {
            task.abort();
        }
        info!(host = %self.config.host, "left the cluster");
    }
}

/// Writes `value` at `key` unless something is there, and returns what is.
async fn record_once(
    client: &mut Client,
    key: &str,
    value: String,
    config: &ClusterConfig,
) -> Result<String, ClusterError> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    let response = tokio::time::timeout(config.etcd_timeout, client.txn(txn))
        .await
        .map_err(|_| ClusterError::Timeout {
            context: "recording the cluster's settings",
            timeout_ms: config.etcd_timeout.as_millis() as u64,
        })?
        .map_err(ClusterError::etcd("recording the cluster's settings"))?;
    let got = client
        .get(key, None)
        .await
        .map_err(ClusterError::etcd("reading the cluster's settings"))?;
    let _ = response;
    let kv = got.kvs().first().ok_or_else(|| ClusterError::Corrupt {
        key: key.to_owned(),
        what: "missing after it was recorded".into(),
    })?;
    String::from_utf8(kv.value().to_vec()).map_err(|_| ClusterError::Corrupt {
        key: key.to_owned(),
        what: "not UTF-8".into(),
    })
}

/// 32 random bytes as hex: the transport token of a new cluster.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        warn!("no random source: the transport token is derived from the time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&now.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
