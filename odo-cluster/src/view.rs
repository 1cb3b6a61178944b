//! The connection to etcd, and the host's view of the cluster's keys: one
//! watch on `/odo/<name>/`, kept in a [`View`] every part of the host
//! reads (the placement routers follow, the elected host's assignment, the
//! host's own shards).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, TlsOptions,
    WatchOptions,
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::config::ClusterConfig;
use crate::error::ClusterError;
use crate::keys::{Keys, Member, Owner};

/// Connects to etcd (with TLS from the cluster's files, if given); each
/// request is bounded by the configured etcd timeout.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<Client, ClusterError> {
    connect_with(config, Some(config.etcd_timeout)).await
}

/// Connects to etcd for the election: a campaign waits as long as another
/// host leads, so its requests have no timeout of their own (the caller
/// gives up when its lease is gone).
pub(crate) async fn connect_for_election(config: &ClusterConfig) -> Result<Client, ClusterError> {
    connect_with(config, None).await
}

async fn connect_with(
    config: &ClusterConfig,
    request_timeout: Option<Duration>,
) -> Result<Client, ClusterError> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoints: Vec<String> = config
        .etcd
        .iter()
        .map(|e| format!("{scheme}://{e}"))
        .collect();
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.etcd_timeout)
        // etcd refuses pings more often than every 5 s (its
        // `--grpc-keepalive-min-time`): it closed the connection with every
        // stream on it (a follower's campaign, a lease's keep-alives) every
        // few seconds when this pinged each second. A dead link is found by
        // the requests' own timeouts (a lease renewal's within the local
        // deadline), not by these pings.
        .with_keep_alive(ETCD_PING_INTERVAL, config.etcd_timeout);
    if let Some(timeout) = request_timeout {
        options = options.with_timeout(timeout);
    }
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ClusterError::TlsFile {
                path: path.to_path_buf(),
                source,
            })
        };
        let ca = read(&tls.ca)?;
        let cert = read(&tls.cert)?;
        let key = read(&tls.key)?;
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(cert, key)),
        );
    }
    Client::connect(endpoints, Some(options))
        .await
        .map_err(ClusterError::etcd("connecting"))
}

/// How often an idle connection to etcd is pinged (HTTP/2).
const ETCD_PING_INTERVAL: Duration = Duration::from_secs(10);

/// An owner key as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerEntry {
    /// Its value.
    pub owner: Owner,
    /// The shard's epoch: the revision at which the key was created.
    pub epoch: u64,
    /// The lease it is held under.
    pub lease: i64,
}

/// A member key as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// Its value.
    pub member: Member,
    /// The lease it is held under.
    pub lease: i64,
}

/// The cluster's keys at one etcd revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// The revision it reflects (0 before the first read).
    pub revision: i64,
    /// Live members, by host id.
    pub members: BTreeMap<String, MemberEntry>,
    /// The elected host's assignment: shard -> host.
    pub assign: BTreeMap<u32, String>,
    /// The owner of each owned shard.
    pub owners: BTreeMap<u32, OwnerEntry>,
}

impl View {
    fn apply(&mut self, keys: &Keys, kv: &KeyValue, deleted: bool) {
        let key = kv.key();
        if let Some(shard) = Keys::shard_of(&keys.owners(), key) {
            if deleted {
                self.owners.remove(&shard);
            } else {
                match serde_json::from_slice::<Owner>(kv.value()) {
                    Ok(owner) => {
                        self.owners.insert(
                            shard,
                            OwnerEntry {
                                owner,
                                epoch: u64::try_from(kv.create_revision()).unwrap_or(0),
                                lease: kv.lease(),
                            },
                        );
                    }
                    Err(e) => warn!(shard, error = %e, "ignoring an owner key odo did not write"),
                }
            }
        } else if let Some(shard) = Keys::shard_of(&keys.assigns(), key) {
            if deleted {
                self.assign.remove(&shard);
            } else if let Ok(host) = std::str::from_utf8(kv.value()) {
                self.assign.insert(shard, host.to_owned());
            }
        } else if let Some(host) = keys.host_of(key) {
            if deleted {
                self.members.remove(host);
            } else {
                match serde_json::from_slice::<Member>(kv.value()) {
                    Ok(member) => {
                        self.members.insert(
                            host.to_owned(),
                            MemberEntry {
                                member,
                                lease: kv.lease(),
                            },
                        );
                    }
                    Err(e) => warn!(host, error = %e, "ignoring a member key odo did not write"),
                }
            }
        }
    }
}

/// Keeps `view` up to date with etcd until the host stops: a full read,
/// then a watch from the next revision; after any error (etcd unreachable,
/// history compacted), a full read again, with backoff.
pub(crate) async fn follow(mut client: Client, keys: Keys, view: watch::Sender<Arc<View>>) {
    let root = keys.root();
    let mut backoff = Duration::from_millis(50);
    loop {
        match follow_once(&mut client, &keys, &root, &view).await {
            Ok(()) => return,
            Err(e) => {
                debug!(error = %e, "watching the cluster's keys; reading them again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn follow_once(
    client: &mut Client,
    keys: &Keys,
    root: &str,
    view: &watch::Sender<Arc<View>>,
) -> Result<(), ClusterError> {
    let got = client
        .get(root, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(ClusterError::etcd("reading the cluster's keys"))?;
    let revision = got.header().map_or(0, |h| h.revision());
    let mut fresh = View {
        revision,
        ..View::default()
    };
    for kv in got.kvs() {
        fresh.apply(keys, kv, false);
    }
    view.send_replace(Arc::new(fresh));
    let mut stream = client
        .watch(
            root,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(ClusterError::etcd("watching the cluster's keys"))?;
    loop {
        if view.is_closed() {
            return Ok(());
        }
        let Some(response) = stream
            .message()
            .await
            .map_err(ClusterError::etcd("watching the cluster's keys"))?
        else {
            return Err(ClusterError::Corrupt {
                key: root.to_owned(),
                what: "the watch ended".into(),
            });
        };
        if response.canceled() {
            return Err(ClusterError::Corrupt {
                key: root.to_owned(),
                what: format!("the watch was cancelled: {}", response.cancel_reason()),
            });
        }
        if response.events().is_empty() {
            continue;
        }
        let mut next = (**view.borrow()).clone();
        for event in response.events() {
            if let Some(kv) = event.kv() {
                next.apply(keys, kv, event.event_type() == EventType::Delete);
                next.revision = next.revision.max(kv.mod_revision());
            }
        }
        if let Some(header) = response.header() {
            next.revision = next.revision.max(header.revision());
        }
        view.send_replace(Arc::new(next));
    }
}
