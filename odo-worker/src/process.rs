//! The worker role of a binary: serve the shards a registry assigns, over
//! odo-transport, until the registry says stop or goes away.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_core::launch::WorkerLaunch;
use odo_core::wire::{CallMeta, Control, ControlReply, Request, Response, WorkerStats};
use odo_storage::{BackendFactory, Backends, ShardSpec, StorageError, Store};
use odo_transport::forward;
use odo_transport::{
    BindError, Channel, ClientConfig, ConnectError, Endpoint, EndpointError, Handler, Server,
    ServerConfig,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::activation::now_ms;
use crate::call::CallScope;
use crate::class::Classes;
use crate::cluster::{ObjectRouter, PushedPlacement};
use crate::config::RuntimeConfig;
use crate::doors::RemoteDoors;
use crate::rpc::RpcCall;
use crate::runtime::Runtime;
use crate::wire::{request_from_wire, response_to_wire};

/// Why a worker process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// An endpoint on the command line does not parse.
    #[error("bad endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// The worker cannot listen.
    #[error("cannot listen: {0}")]
    Bind(#[from] BindError),
    /// The registry cannot be reached.
    #[error("cannot reach the registry: {0}")]
    Connect(#[from] ConnectError),
    /// The registry answered the worker's hello with something else than
    /// an acknowledgement.
    #[error("the registry did not accept this worker: {0}")]
    Hello(String),
    /// The worker's hello did not reach the registry or was not answered.
    #[error("the registry did not answer this worker's hello: {0}")]
    HelloFailed(#[source] odo_transport::CallError),
    /// The registry did not hand over a usable token.
    #[error("cannot start without the cluster token: {0}")]
    Token(#[from] odo_core::launch::TokenError),
    /// Standard input, where the token comes from, cannot be read.
    #[error("cannot read the cluster token from standard input: {0}")]
    TokenInput(#[source] std::io::Error),
    /// The command line names a storage backend this binary did not
    /// register.
    #[error(transparent)]
    Storage(#[from] odo_storage::BackendsError),
}

/// Reads the cluster token a registry writes on a worker's standard input:
/// one line, at most [`TOKEN_MAX_BYTES`](odo_core::launch::TOKEN_MAX_BYTES)
/// bytes before its newline (see [`odo_core::launch`]). Call it with
/// `std::io::stdin().lock()` before starting anything else, and pass the
/// token to [`serve`].
pub fn read_token(input: impl std::io::BufRead) -> Result<String, WorkerError> {
    use std::io::BufRead;
    let limit = odo_core::launch::TOKEN_MAX_BYTES as u64 + 1;
    let mut line = Vec::new();
    input
        .take(limit)
        .read_until(b'\n', &mut line)
        .map_err(WorkerError::TokenInput)?;
    Ok(odo_core::launch::decode_token(&line)?)
}

/// Runs the worker role until the registry asks it to shut down, its
/// control channel closes (the registry is gone), or the process gets
/// SIGTERM or SIGINT. Then it finishes in-flight events, flushes and closes
/// every store, and returns.
///
/// Each shard it is assigned is opened by the factory in `backends` that
/// the command line names (`launch.storage`); a name not in `backends` is
/// [`WorkerError::Storage`] before anything starts. The registry's binary
/// is this one, so it registered the same backends.
///
/// On Linux the worker also asks the kernel to kill it when its parent
/// dies (`PR_SET_PDEATHSIG`), and exits at once if its parent is already
/// not the registry that started it.
///
/// `config` is the runtime's, except its `websocket_max_message_bytes`:
/// the launch's value replaces it (the front door's limit, one for the
/// whole server).
pub async fn serve(
    classes: Classes,
    backends: Backends,
    launch: WorkerLaunch,
    token: String,
    mut config: RuntimeConfig,
) -> Result<(), WorkerError> {
    die_with_parent(launch.parent_pid);
    // The front door's limit (one for the whole server).
    config.websocket_max_message_bytes =
        usize::try_from(launch.websocket_max_message_bytes).unwrap_or(usize::MAX);
    if token.is_empty() {
        return Err(odo_core::launch::TokenError::Empty.into());
    }
    let backend = backends.get(&launch.storage)?.clone();
    let registry: Endpoint = launch.registry.parse()?;
    let listen: Endpoint = launch.listen.parse()?;
    let name = format!("worker {}", launch.index);
    let runtime = Runtime::new(classes, config, launch.shard_count);

    let server = Server::bind(
        &listen,
        ServerConfig {
            peer_name: name.clone(),
            ..ServerConfig::new(token.clone())
        },
    )
    .await?;
    let endpoint = server.endpoint().to_string();
    let client = ClientConfig {
        peer_name: name.clone(),
        ..ClientConfig::new(token)
    };
    let pushed = Arc::new(PushedPlacement::new(runtime.shard_count()));
    let cluster = ObjectRouter::new(
        runtime.clone(),
        endpoint.clone(),
        pushed.clone(),
        client.clone(),
    );
    runtime.set_cluster(Arc::new(cluster.clone()));
    runtime.set_websocket_doors(Arc::new(RemoteDoors::new(client.clone())));
    let (stop, mut stopped) = watch::channel(false);
    let handler = Arc::new(WorkerHandler {
        runtime: runtime.clone(),
        objects: ObjectHandler::new(runtime.clone()),
        placement: pushed,
        data_dir: PathBuf::from(&launch.data_dir),
        backend,
        stop: stop.clone(),
    });
    let mut server_stop = stopped.clone();
    let serving = tokio::spawn(server.serve(handler, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));

    let control = Channel::connect(&registry, client).await?;
    let hello = Request::Control(Control::WorkerHello {
        worker: launch.index,
        pid: std::process::id(),
        endpoint: endpoint.clone(),
        classes: runtime.classes().names(),
    });
    match control
        .call(hello, Bytes::new(), Duration::from_secs(30))
        .await
    {
        Ok((Response::Control(ControlReply::Ack), _)) => {}
        Ok((other, _)) => return Err(WorkerError::Hello(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(WorkerError::HelloFailed(e)),
    }
    info!(worker = launch.index, %endpoint, pid = std::process::id(), "worker ready");

    tokio::select! {
        () = control.closed() => info!("the registry's control channel closed; shutting down"),
        _ = stopped.wait_for(|s| *s) => info!("shutdown requested by the registry"),
        () = termination() => info!("signal received; shutting down"),
    }
    stop.send_replace(true);
    if serving.await.is_err() {
        warn!("the worker's server task failed");
    }
    runtime.shutdown().await;
    info!("worker stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C elsewhere).
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(parent_pid: u32) {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    if let Err(e) = set_parent_process_death_signal(Some(Signal::KILL)) {
        warn!(error = %e, "cannot arm the parent-death signal; relying on the control channel");
    }
    // The parent may have died before the signal was armed.
    let parent = getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if parent != parent_pid {
        warn!(
            parent,
            expected = parent_pid,
            "the registry is already gone; exiting"
        );
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_parent_pid: u32) {
    // Elsewhere the closed control channel is the signal.
}

/// Answers the registry's control messages and routers' requests.
struct WorkerHandler {
    runtime: Runtime,
    objects: ObjectHandler,
    placement: Arc<PushedPlacement>,
    data_dir: PathBuf,
    backend: Arc<dyn BackendFactory>,
    stop: watch::Sender<bool>,
}

impl WorkerHandler {
    async fn open_store(&self, shard: u32, epoch: u64) -> Result<Store, StorageError> {
        let spec = ShardSpec::new(&self.data_dir, shard, epoch);
        let options = self.runtime.store_options(&spec, self.backend.durable());
        let backend = self.backend.open(spec).await?;
        Store::open_shared(backend, options)
    }

    async fn control(&self, control: Control) -> Result<ControlReply, WireError> {
        match control {
            Control::AssignShard { shard, epoch } => {
                if let Some(held) = self.runtime.shard_epoch(shard) {
                    if held == epoch {
                        return Ok(ControlReply::Ack);
                    }
                    self.runtime.release_shard(shard).await;
                }
                // Either failure leaves nothing of the shard here: say so,
                // and the registry tries again later instead of killing
                // this worker (with every other shard it serves).
                let store =
                    self.open_store(shard, epoch)
                        .await
                        .map_err(|e| WireError::ShardRefused {
                            shard,
                            reason: e.to_string(),
                        })?;
                self.runtime.open_shard(shard, epoch, store).map_err(|e| {
                    WireError::ShardRefused {
                        shard,
                        reason: e.to_string(),
                    }
                })?;
                Ok(ControlReply::Ack)
            }
            Control::ReleaseShard { shard, .. } => {
                self.runtime.release_shard(shard).await;
                Ok(ControlReply::Ack)
            }
            Control::Heartbeat { .. } => {
                let (commit_batches, commit_turns) = self.runtime.commit_totals();
                Ok(ControlReply::Stats(WorkerStats {
                    now_ms: now_ms(),
                    live_objects: self.runtime.live_objects() as u64,
                    commit_batches,
                    commit_turns,
                    stalled_ms: crate::stall::longest_stall().as_millis() as u64,
                }))
            }
            Control::Placement(placement) => {
                self.placement.set(placement);
                Ok(ControlReply::Ack)
            }
            Control::Drain => {
                self.runtime.shutdown().await;
                Ok(ControlReply::Ack)
            }
            Control::Shutdown => {
                self.stop.send_replace(true);
                Ok(ControlReply::Ack)
            }
            Control::WorkerHello { .. } => Err(WireError::BadRequest {
                message: "a worker does not take worker hellos".into(),
            }),
        }
    }
}

/// The scope a received call runs in: the caller's remaining deadline
/// (counted from now) and its chain.
fn scope_of(meta: CallMeta) -> CallScope {
    CallScope {
        deadline: forward::deadline_of(&meta),
        chain: meta.chain.into(),
    }
}

impl Handler for WorkerHandler {
    async fn handle(&self, request: Request, body: Bytes) -> (Response, Bytes) {
        match request {
            Request::Control(control) => match self.control(control).await {
                Ok(reply) => (Response::Control(reply), Bytes::new()),
                Err(e) => (Response::Error(e), Bytes::new()),
            },
            other => self.objects.handle(other, body).await,
        }
    }
}

/// Serves the requests for objects that a transport server receives
/// (fetches and RPC calls stamped with a shard's epoch) from a
/// [`Runtime`]: what a worker process serves, and what a cluster host
/// serves to other hosts. Control messages are refused.
#[derive(Debug, Clone)]
pub struct ObjectHandler {
    runtime: Runtime,
}

impl ObjectHandler {
    /// Serves `runtime`'s objects.
    pub fn new(runtime: Runtime) -> Self {
        Self { runtime }
    }
}

impl Handler for ObjectHandler {
    async fn handle(&self, request: Request, body: Bytes) -> (Response, Bytes) {
        let result = match request {
            Request::Fetch(fetch) => match request_from_wire(fetch, body) {
                Ok((target, meta, request)) => self
                    .runtime
                    .fetch_within(target.object, Some(target.epoch), request, scope_of(meta))
                    .await
                    .map(|response| {
                        let (head, body) = response_to_wire(response);
                        (Response::Fetch(head), body)
                    }),
                Err(e) => Err(e),
            },
            Request::Rpc(call) => self
                .runtime
                .call_within(
                    call.target.object,
                    Some(call.target.epoch),
                    RpcCall {
                        method: call.method,
                        args: body,
                    },
                    scope_of(call.meta),
                )
                .await
                .map(|result| (Response::Rpc, result)),
            Request::Socket(event) => {
                let epoch = event.target.epoch;
                let scope = scope_of(event.meta.clone());
                self.runtime
                    .socket_event(event, Some(epoch), body, scope)
                    .await
                    .map(|()| (Response::Socket, Bytes::new()))
            }
            Request::SocketOutput(_) | Request::SocketRecords(_) => Err(WireError::BadRequest {
                message: "WebSocket outputs and records are a front door's, not a worker's".into(),
            }),
            Request::Alarm(_) => Err(WireError::BadRequest {
                message: "alarms are scheduled by the process that holds the shard".into(),
            }),
            Request::Control(_) => Err(WireError::BadRequest {
                message: "this endpoint serves objects, not control messages".into(),
            }),
        };
        result.unwrap_or_else(|e| (Response::Error(e), Bytes::new()))
    }
}
