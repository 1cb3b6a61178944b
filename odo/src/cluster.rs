//! `odo serve --cluster` (feature `cluster`): this host joins its cluster
//! through etcd (odo-cluster) and its front door serves every object of
//! the cluster, its own shards in this process and the others' through
//! their owners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_cluster::{ClusterConfig, Host, TlsFiles};
use odo_core::ObjectId;
use odo_router::{Admin, Door, ForwardError, Location, ObjectService, SocketEventOut};
use odo_worker::{CallError, CallScope, Cluster, ObjectAddress, ObjectRouter};
use tokio::time::Instant;

use crate::app::OdoError;

/// `odo serve`'s cluster flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClusterFlags {
    /// Joins a cluster: etcd's client addresses, `etcd://host:2379[,host:2379...]`.
    /// Each host serves the shards etcd gives it, in this process.
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    pub(crate) cluster: Option<String>,
    /// The cluster's name (its keys live under /odo/NAME/ in etcd).
    #[arg(long, default_value = "odo", value_name = "NAME")]
    cluster_name: String,
    /// Where other hosts reach this host's objects (IP:PORT, bound by this
    /// host). A non-loopback address needs the --cluster-tls-* files.
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<SocketAddr>,
    /// This host's id in the cluster. Default: the advertised address.
    #[arg(long, value_name = "ID")]
    cluster_host: Option<String>,
    /// The number of shards of a new cluster (fixed once the first host
    /// has recorded it).
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// The membership lease's time to live, in whole seconds. A host that
    /// cannot renew stops serving after 2/3 of it; its shards move after
    /// all of it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_ttl_s: u64,
    /// With storage on the hosts (fjall), where a shard never moves: how
    /// many hosts the cluster waits for before it places a new cluster's
    /// shards, so they spread over the hosts started together.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    cluster_expected_hosts: u64,
    /// The longest a new cluster waits for --cluster-expected-hosts, in
    /// seconds; then it places its shards on the hosts it has.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    cluster_expected_hosts_wait_s: u64,
    /// The CA certificate (PEM) of the cluster: etcd's and other hosts'
    /// certificates must chain to it.
    #[arg(long, value_name = "FILE", requires_all = ["cluster_tls_cert", "cluster_tls_key"])]
    cluster_tls_ca: Option<PathBuf>,
    /// This host's certificate chain (PEM), shown to etcd and other hosts.
    #[arg(long, value_name = "FILE", requires = "cluster_tls_ca")]
    cluster_tls_cert: Option<PathBuf>,
    /// This host's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cluster_tls_ca")]
    cluster_tls_key: Option<PathBuf>,
}

impl ClusterFlags {
    /// The cluster settings, if `--cluster` was given.
    pub(crate) fn config(&self, http: SocketAddr) -> Result<Option<ClusterConfig>, OdoError> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        let etcd = ClusterConfig::parse_etcd(url).map_err(|e| OdoError::Other(e.to_string()))?;
        let advertise = self.advertise.ok_or_else(|| {
            OdoError::Other(
                "--cluster needs --advertise IP:PORT (where other hosts reach this one)".into(),
            )
        })?;
        let mut config = ClusterConfig::new(etcd, self.cluster_name.clone(), advertise);
        if let Some(host) = &self.cluster_host {
            config.host = host.clone();
        }
        config.http = http.to_string();
        config.shards = self.shards;
        config.lease_ttl = Duration::from_secs(self.lease_ttl_s);
        config.local_deadline = config.lease_ttl * 2 / 3;
        config.expected_hosts = usize::try_from(self.cluster_expected_hosts).unwrap_or(usize::MAX);
        config.expected_hosts_wait = Duration::from_secs(self.cluster_expected_hosts_wait_s);
        if let (Some(ca), Some(cert), Some(key)) = (
            &self.cluster_tls_ca,
            &self.cluster_tls_cert,
            &self.cluster_tls_key,
        ) {
            config.tls = Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        Ok(Some(config))
    }
}

/// The front door's way to objects on a cluster host.
#[derive(Debug, Clone)]
pub(crate) struct HostService(pub(crate) Arc<ObjectRouter>);

fn forward_error(error: CallError) -> ForwardError {
    match error {
        CallError::Forward(e) => e,
        other => ForwardError::Object(odo_core::WireError::Internal {
            message: other.to_string(),
        }),
    }
}

impl ObjectService for HostService {
    fn fetch(
        &self,
        object: ObjectAddress,
        request: http::Request<Bytes>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        let router = self.0.clone();
        async move {
            router
                .fetch(object, request, CallScope::outside_until(deadline))
                .await
                .map_err(forward_error)
        }
        .boxed()
    }

    fn call(
        &self,
        object: ObjectAddress,
        method: String,
        args: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<Bytes, ForwardError>> {
        let router = self.0.clone();
        async move {
            router
                .call(object, method, args, CallScope::outside_until(deadline))
                .await
                .map_err(forward_error)
        }
        .boxed()
    }

    fn socket_event(
        &self,
        object: ObjectAddress,
        event: SocketEventOut,
        payload: Bytes,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        let router = self.0.clone();
        async move {
            router
                .socket_event(
                    object,
                    event.into(),
                    payload,
                    CallScope::outside_until(deadline),
                )
                .await
                .map_err(forward_error)
        }
        .boxed()
    }

    fn locate(&self, id: &ObjectId) -> Option<Location> {
        let location = self.0.placement().locate(id);
        let here = self.0.runtime().shard_epoch(location.shard) == Some(location.epoch);
        Some(Location {
            shard: location.shard,
            epoch: location.epoch,
            pid: here.then(std::process::id),
        })
    }
}

/// `/_odo/workers` on a cluster host: this host's lease and shards and the
/// cluster's placement as it sees it.
#[derive(Debug)]
pub(crate) struct HostAdmin(pub(crate) Arc<Host>);

impl Admin for HostAdmin {
    fn workers(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            let status = self.0.status();
            let mut value = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
            if let Some(object) = value.as_object_mut() {
                let note = if status.shards_move {
                    "shared storage: a shard moves to another host when its host is lost"
                } else {
                    "storage on the host: a shard's data stays on its host, and its shards are unavailable while that host is down"
                };
                object.insert("note".into(), note.into());
                if !status.serving {
                    object.insert(
                        "warning".into(),
                        "this host could not renew its lease within its local deadline: it serves no shard".into(),
                    );
                }
            }
            value
        })
    }

    fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let status = self.0.status();
        let _ = write!(
            out,
            "# HELP odo_cluster_serving Whether this host holds its lease within its local deadline.\n# TYPE odo_cluster_serving gauge\nodo_cluster_serving {}\n# HELP odo_cluster_shards Shards this host serves.\n# TYPE odo_cluster_shards gauge\nodo_cluster_shards {}\n# HELP odo_live_objects Objects live on this host.\n# TYPE odo_live_objects gauge\nodo_live_objects {}\n",
            u8::from(status.serving),
            status.shards.len(),
            self.0.runtime().live_objects(),
        );
    }
}

/// Serves as a cluster host until `shutdown`, then leaves gracefully.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    mut config: ClusterConfig,
    classes: odo_worker::Classes,
    backend: Arc<dyn odo_storage::BackendFactory>,
    options: &crate::ServeOptions,
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    router: impl FnOnce(Arc<dyn ObjectService>) -> odo_router::Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), OdoError> {
    config.shared_storage = backend.name() == odo_postgres::NAME;
    if config.shared_storage {
        for (class, kind) in classes.storage_kinds() {
            if kind == odo_worker::ClassStorage::Sqlite {
                tracing::warn!(
                    class,
                    storage = backend.name(),
                    "a SQLite-backed class: its objects are refused in cluster mode on storage that \
                     every host reaches (their database files would stay behind when shards move); \
                     serve it from fjall"
                );
            }
        }
    }
    config.http = local.to_string();
    // Storage on this host: one server per data directory, as alone.
    let _lock = if config.shared_storage {
        None
    } else {
        Some(odo_registry::DataDirLock::acquire(&options.data_dir)?)
    };
    let host = Host::start(
        config,
        classes,
        options.runtime.clone(),
        backend,
        options.data_dir.clone(),
    )
    .await
    .map_err(|e| OdoError::Other(e.to_string()))?;
    let host = Arc::new(host);
    let service = Arc::new(HostService(host.router().clone()));
    // The WebSocket front door: its sockets are named by this host's
    // transport endpoint, where the hosts that own their objects send the
    // outputs (ARCHITECTURE.md, "A WebSocket across hosts").
    let door = Door::new(
        options.websocket.clone(),
        host.endpoint().to_owned(),
        service.clone(),
    );
    // Socket numbers unique across this host's restarts (the milliseconds
    // since the Unix epoch, times 2^20): a room's owner may still list the
    // sockets of this door's previous incarnation.
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    door.number_sockets_from(started_ms << 20);
    host.set_front_door(Some(Arc::new(crate::websockets::LocalDoors(door.clone()))));
    let front = Arc::new(
        router(service)
            .with_admin(Arc::new(HostAdmin(host.clone())))
            .with_websockets(door.clone()),
    );
    tracing::info!(listen = %local, host = %host.status().host, "odo serving as a cluster host");
    crate::signals::say(format_args!("odo listening on http://{local}"));
    front.serve(listener, shutdown).await;
    // Every socket closes (1001) and its object hears of it while this
    // host still serves; then the door and the runtime let go of each
    // other.
    door.shutdown().await;
    host.set_front_door(None);
    match Arc::try_unwrap(host) {
        Ok(host) => host.leave().await,
        Err(_) => {
            return Err(OdoError::Other(
                "the cluster host is still in use at shutdown".into(),
            ));
        }
    }
    Ok(())
}
