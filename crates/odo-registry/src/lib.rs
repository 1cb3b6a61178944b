//! odo-registry: spawns and supervises worker processes and owns shard
//! placement.
//!
//! The [`Registry`] starts N worker processes by re-executing a binary in
//! the worker role ([`odo_core::launch`]), waits for each one's hello on its
//! control endpoint, assigns it its shards with fresh epochs (recorded in
//! the data directory so that epochs never repeat), heartbeats it, and
//! publishes the [`PlacementTable`] to routers (a `watch` channel) and to
//! workers (for calls between objects). A worker that exits is restarted
//! with exponential backoff; one that misses heartbeats is killed with
//! SIGKILL. A dead worker's shards are given new epochs only after its
//! process has been reaped, so two instances of an object never live at
//! once.
//!
//! It knows nothing of HTTP (odo-router) or of objects and storage
//! (odo-worker): it moves shards, not requests.
//!
//! ```no_run
//! use odo_registry::{Registry, RegistryConfig, WorkerCommand};
//!
//! # async fn run() -> Result<(), odo_registry::RegistryError> {
//! let config = RegistryConfig::new(WorkerCommand::current_exe()?, "./.odo".into());
//! let registry = Registry::start(config).await?;
//! registry.ready().await?;
//! let table = registry.placement().borrow().clone();
//! println!("{} shards, version {}", table.shard_count(), table.version);
//! registry.shutdown().await;
//! # Ok(()) }
//! ```

mod placement;
mod supervisor;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_core::launch::StorageKind;
use odo_core::wire::{Control, ControlReply, Request, Response};
use odo_transport::{BindError, ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::sync::{oneshot, watch};
use tracing::info;

pub use placement::{Owner, PlacementTable, ShardEntry};
pub use supervisor::{WorkerState, WorkerStatus};

use supervisor::Slots;

/// Which transport workers listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Unix domain sockets in the private runtime directory (Unix only).
    Uds,
    /// TCP on the loopback address, ports chosen by the system.
    Tcp,
}

impl TransportKind {
    /// The transports this platform has, the default first.
    pub fn available() -> &'static [TransportKind] {
        if cfg!(unix) {
            &[TransportKind::Uds, TransportKind::Tcp]
        } else {
            &[TransportKind::Tcp]
        }
    }
}

/// The program a registry runs as a worker, and the arguments that come
/// before the worker command line.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments placed before the worker command line.
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// This process's own executable: the usual case, since one binary
    /// plays both roles.
    pub fn current_exe() -> Result<Self, RegistryError> {
        let program = std::env::current_exe().map_err(|e| RegistryError::Spawn {
            slot: 0,
            reason: format!("cannot find the current executable: {e}"),
        })?;
        Ok(Self {
            program,
            args: Vec::new(),
        })
    }
}

/// How the registry runs its workers. [`RegistryConfig::new`] gives the
/// defaults.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// What to execute as a worker.
    pub command: WorkerCommand,
    /// Worker processes. Default: the available cores.
    pub workers: u32,
    /// Virtual shards, used only when the data directory is new. Default:
    /// the worker count.
    pub shards: Option<u32>,
    /// Where the cluster record and shard data live.
    pub data_dir: PathBuf,
    /// The private directory for sockets. Default: a new directory under
    /// the system's temporary directory, removed at shutdown.
    pub runtime_dir: Option<PathBuf>,
    /// How workers are reached.
    pub transport: TransportKind,
    /// The storage backend workers use.
    pub storage: StorageKind,
    /// The cluster token. Default: 32 random bytes, hex.
    pub token: String,
    /// How often each worker is heartbeaten. Default 250 ms.
    pub heartbeat_interval: Duration,
    /// Consecutive unanswered heartbeats (each waiting one interval) after
    /// which a worker is killed. Default 4.
    pub heartbeat_misses: u32,
    /// How long a new worker may take to say hello. Default 10 s.
    pub startup_timeout: Duration,
    /// First restart delay; doubles per consecutive failure. Default 50 ms.
    pub restart_backoff: Duration,
    /// The cap on the restart delay. Default 5 s.
    pub max_restart_backoff: Duration,
    /// Consecutive quick failures after which a slot is reported as crash
    /// looping (it keeps being retried at the capped delay). Default 5.
    pub crash_loop_limit: u32,
    /// How long a worker may take to exit after `Shutdown`. Default 10 s.
    pub shutdown_grace: Duration,
}

impl RegistryConfig {
    /// The defaults, for `command` and `data_dir`.
    pub fn new(command: WorkerCommand, data_dir: PathBuf) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            command,
            workers,
            shards: None,
            data_dir,
            runtime_dir: None,
            transport: TransportKind::available()[0],
            storage: StorageKind::Fjall,
            token: random_token(),
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_misses: 4,
            startup_timeout: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(50),
            max_restart_backoff: Duration::from_secs(5),
            crash_loop_limit: 5,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// 32 random bytes as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // Without an OS generator, fall back to time and pid: still unique per
    // cluster, merely guessable, and logged as such.
    if getrandom::fill(&mut bytes).is_err() {
        tracing::warn!("no OS random generator: the cluster token is guessable");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            ^ u128::from(std::process::id());
        bytes[..16].copy_from_slice(&seed.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the registry cannot start or run.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The data directory is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The runtime directory cannot be created.
    #[error("runtime directory {path}: {reason}")]
    RuntimeDir {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The control endpoint cannot be bound.
    #[error("cannot listen for workers: {0}")]
    Bind(#[from] BindError),
    /// A worker cannot be started.
    #[error("worker {slot}: {reason}")]
    Spawn {
        /// The slot.
        slot: u32,
        /// What failed.
        reason: String,
    },
    /// A configuration value is unusable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// Some workers never became ready.
    #[error("workers not ready: {0}")]
    NotReady(String),
}

/// The number of shards, S, of the data directory `data_dir`: read from its
/// cluster record, or recorded as `default` if the directory is new. S never
/// changes once recorded, whatever the worker count.
pub fn shard_count(data_dir: &std::path::Path, default: u32) -> Result<u32, RegistryError> {
    std::fs::create_dir_all(data_dir).map_err(|e| RegistryError::DataDir {
        path: data_dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(placement::ClusterFile::load_or_create(data_dir, default)?.shard_count)
}

/// A running registry. Dropping it without [`Registry::shutdown`] kills
/// the workers (they die with their parent) but does not flush them
/// gracefully.
#[derive(Debug)]
pub struct Registry {
    shared: Arc<Shared>,
    control_stop: Option<oneshot::Sender<()>>,
    control_task: Option<tokio::task::JoinHandle<()>>,
    supervisors: Vec<tokio::task::JoinHandle<()>>,
    remove_runtime_dir: bool,
}

/// State shared by the supervisors, the control server and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RegistryConfig,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) control_endpoint: Endpoint,
    pub(crate) placement: watch::Sender<Arc<PlacementTable>>,
    /// Serialises changes to the table and the cluster record.
    pub(crate) table: Mutex<PlacementTable>,
    pub(crate) slots: Slots,
    pub(crate) stopping: watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig {
            peer_name: "registry".into(),
            ..ClientConfig::new(self.config.token.clone())
        }
    }

    /// Applies `change` to the table, records epochs and the assignment
    /// durably, and publishes
    /// the new table.
    pub(crate) fn update_table<T>(
        &self,
        change: impl FnOnce(&mut PlacementTable) -> T,
    ) -> Result<T, RegistryError> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let before = table.version;
        let out = change(&mut table);
        if table.version != before {
            let record = placement::ClusterFile {
                format: 1,
                shard_count: table.shard_count(),
                epochs: table.epochs(),
                assignment: table.assignment(),
            };
            record.save(&self.config.data_dir)?;
            self.placement.send_replace(Arc::new(table.clone()));
        }
        Ok(out)
    }
}

impl Registry {
    /// Creates the directories, binds the control endpoint and starts one
    /// supervisor per worker slot. Returns at once: await
    /// [`Registry::ready`] for the workers.
    pub async fn start(config: RegistryConfig) -> Result<Registry, RegistryError> {
        if config.workers == 0 {
            return Err(RegistryError::Config(
                "a registry needs at least one worker (0 workers means in-process hosting, without a registry)".into(),
            ));
        }
        if config.token.is_empty() {
            return Err(RegistryError::Config(
                "the cluster token must not be empty".into(),
            ));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| RegistryError::DataDir {
            path: config.data_dir.clone(),
            reason: e.to_string(),
        })?;
        let record = placement::ClusterFile::load_or_create(
            &config.data_dir,
            config.shards.unwrap_or(config.workers),
        )?;
        let (runtime_dir, remove_runtime_dir) = match &config.runtime_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                remove_stale_runtime_dirs(&std::env::temp_dir());
                (
                    std::env::temp_dir().join(format!(
                        "odo-{}-{}",
                        std::process::id(),
                        &random_token()[..8]
                    )),
                    true,
                )
            }
        };
        create_private_dir(&runtime_dir)?;
        let control_endpoint: Endpoint = match config.transport {
            TransportKind::Uds => format!("unix:{}", runtime_dir.join("registry.sock").display()),
            TransportKind::Tcp => "tcp:127.0.0.1:0".to_owned(),
        }
        .parse()
        .map_err(|e| RegistryError::Config(format!("control endpoint: {e}")))?;
        let server = Server::bind(
            &control_endpoint,
            ServerConfig {
                peer_name: "registry".into(),
                ..ServerConfig::new(config.token.clone())
            },
        )
        .await?;
        let control_endpoint = server.endpoint().clone();
        let table = PlacementTable::new(&record.epochs);
        let (placement, _) = watch::channel(Arc::new(table.clone()));
        let shared = Arc::new(Shared {
            slots: Slots::new(config.workers),
            config,
            runtime_dir: runtime_dir.clone(),
            control_endpoint,
            placement,
            table: Mutex::new(table),
            stopping: watch::Sender::new(false),
        });
        info!(
            workers = shared.config.workers,
            shards = record.shard_count,
            data_dir = %shared.config.data_dir.display(),
            runtime_dir = %runtime_dir.display(),
            "registry starting"
        );

        let hellos = shared.clone();
        let handler = handler_fn(move |request, _body: Bytes| {
            let shared = hellos.clone();
            async move {
                let answer = match request {
                    Request::Control(Control::WorkerHello {
                        worker,
                        pid,
                        endpoint,
                        ..
                    }) => match shared.slots.hello(worker, pid, endpoint) {
                        Ok(()) => Response::Control(ControlReply::Ack),
                        Err(message) => Response::Error(WireError::BadRequest { message }),
                    },
                    _ => Response::Error(WireError::BadRequest {
                        message: "the registry's control endpoint only takes worker hellos".into(),
                    }),
                };
                (answer, Bytes::new())
            }
        });
        let (control_stop, stopped) = oneshot::channel::<()>();
        let control_task = tokio::spawn(server.serve(std::sync::Arc::new(handler), async move {
            let _ = stopped.await;
        }));
        let supervisors = (0..shared.config.workers)
            .map(|slot| tokio::spawn(supervisor::supervise(slot, shared.clone())))
            .collect();
        Ok(Registry {
            shared,
            control_stop: Some(control_stop),
            control_task: Some(control_task),
            supervisors,
            remove_runtime_dir,
        })
    }

    /// Waits until every worker has started once and holds its shards (or
    /// until `startup_timeout` passes, with an error naming the missing).
    pub async fn ready(&self) -> Result<(), RegistryError> {
        let mut placement = self.shared.placement.subscribe();
        let deadline = tokio::time::Instant::now() + self.shared.config.startup_timeout;
        loop {
            let missing: Vec<u32> = {
                let table = placement.borrow_and_update();
                (0..table.shard_count())
                    .filter(|&s| table.shards[s as usize].owner.is_none())
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, placement.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(RegistryError::NotReady(format!(
                        "shards {missing:?} unassigned after {:?}; see the workers' logs",
                        self.shared.config.startup_timeout
                    )));
                }
            }
        }
    }

    /// The placement table, updated on every change.
    pub fn placement(&self) -> watch::Receiver<Arc<PlacementTable>> {
        self.shared.placement.subscribe()
    }

    /// Each worker slot's state.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.shared.slots.status(&self.shared.placement.borrow())
    }

    /// The cluster token (for routers' client configuration).
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    /// The registry's control endpoint.
    pub fn control_endpoint(&self) -> &Endpoint {
        &self.shared.control_endpoint
    }

    /// Stops every worker gracefully (they finish in-flight events, flush
    /// and close their stores; one that does not exit within the grace
    /// period is killed), stops the control endpoint, and removes the
    /// runtime directory.
    pub async fn shutdown(mut self) {
        self.shared.stopping.send_replace(true);
        for supervisor in self.supervisors.drain(..) {
            let _ = supervisor.await;
        }
        if let Some(stop) = self.control_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.control_task.take() {
            let _ = task.await;
        }
        if self.remove_runtime_dir {
            let _ = std::fs::remove_dir_all(&self.shared.runtime_dir);
        }
        info!("registry stopped");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Without a graceful shutdown, children are killed by kill_on_drop
        // when their supervisors are aborted.
        for supervisor in &self.supervisors {
            supervisor.abort();
        }
        if self.remove_runtime_dir && !self.supervisors.is_empty() {
            let _ = std::fs::remove_dir_all(&self.shared.runtime_dir);
        }
    }
}

/// Removes runtime directories (`odo-<pid>-<random>`) that registries
/// killed without a shutdown left in `temp`: only those whose pid no longer
/// runs (checked through `/proc`, so only on Linux) and that we own.
fn remove_stale_runtime_dirs(temp: &std::path::Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("odo-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ours = entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::getuid().as_raw());
            if !ours {
                continue;
            }
        }
        tracing::info!(dir = %entry.path().display(), pid, "removing a dead registry's runtime directory");
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), RegistryError> {
    let err = |e: std::io::Error| RegistryError::RuntimeDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}
