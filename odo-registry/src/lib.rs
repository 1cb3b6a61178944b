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
//! It touches only what it made: the data directory is locked for its
//! whole life ([`DataDirLock`]: a second server fails naming the holder's
//! pid), its sockets live in a private directory of its own inside the one
//! it is given (which keeps its mode), and workers get the cluster token on
//! their standard input, never in their environment.
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

mod classes;
mod datadir;
mod placement;
mod record;
mod runtime_dir;
mod split;
mod supervisor;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_core::wire::{Control, ControlReply, Request, Response};
use odo_transport::{BindError, ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::sync::{oneshot, watch};
use tracing::info;

pub use datadir::{DATA_DIR_LOCK_FILE, DataDirLock};
pub use odo_core::placement::SlotPhase as WorkerState;
pub use placement::{Owner, PlacementTable, ShardEntry, TablePlacement};
pub use split::{ShardAt, ShardSplitter, SplitDone, SplitError, SplitFuture};
pub use supervisor::WorkerStatus;

use runtime_dir::RuntimeDir;
use supervisor::{Hellos, Input, View};

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
        let program =
            std::env::current_exe().map_err(|source| RegistryError::CurrentExe { source })?;
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
    /// Splits the data directory's shards at startup when they are fewer
    /// than the workers (see [`ShardSplitter`]); without one, extra workers
    /// hold no shard (logged). Default: none; odo's facade gives the
    /// storage backend's.
    pub splitter: Option<Arc<dyn ShardSplitter>>,
    /// The classes the workers serve, each with its kind of storage
    /// (`key-value`, `sqlite`): checked against the data directory's
    /// record before any worker starts, and recorded (see
    /// [`DataDirLock::record_class_storage`]). Default: none.
    pub class_storage: Vec<(String, String)>,
    /// Where the cluster record and shard data live. Locked for the
    /// registry's whole life ([`DataDirLock`]).
    pub data_dir: PathBuf,
    /// Where the registry creates its private directory for sockets: a new
    /// `odo-<pid>-<random>` directory (mode 0700) inside this one, which is
    /// created if missing and otherwise left as it is; only the private
    /// directory is removed at shutdown. Default: the system's temporary
    /// directory.
    pub runtime_dir: Option<PathBuf>,
    /// How workers are reached.
    pub transport: TransportKind,
    /// The name of the storage backend workers use, as the worker binary
    /// registered it (odo-storage's `Backends`); the registry passes it on
    /// and gives it no meaning, so check it before starting (a worker
    /// refuses a name it does not know). Default `fjall`.
    pub storage: String,
    /// The cluster token: printable ASCII without spaces, at most
    /// [`odo_core::launch::TOKEN_MAX_BYTES`] bytes. Workers get it on their
    /// standard input, never in their environment. Default: 32 random
    /// bytes, hex.
    pub token: String,
    /// How often each worker is heartbeaten. Default 250 ms.
    pub heartbeat_interval: Duration,
    /// How long a worker has to answer a heartbeat; one that does not is
    /// killed (SIGKILL) as hung. Only one heartbeat is in flight at a time,
    /// so a busy worker that answers late is not punished twice. Default
    /// 2 s.
    pub heartbeat_timeout: Duration,
    /// How long one poll of object code may run without returning (an
    /// endless loop, a blocking call) before the worker is killed as stuck,
    /// even if its other threads still answer heartbeats. Default 10 s.
    pub stall_limit: Duration,
    /// How long a new worker may take to say hello. Default 10 s.
    pub startup_timeout: Duration,
    /// First restart delay; doubles per consecutive failure. Default 50 ms.
    pub restart_backoff: Duration,
    /// The cap on the restart delay. Default 5 s.
    pub max_restart_backoff: Duration,
    /// Consecutive quick failures after which a slot is reported as crash
    /// looping (it keeps being retried at the capped delay). Default 5.
    pub crash_loop_limit: u32,
    /// How long a worker must have been ready for its death not to count as
    /// a quick failure (its slot's backoff then starts again from
    /// `restart_backoff`). A worker killed from outside after serving for
    /// a while comes back at once. Default 1 s.
    pub stable_after: Duration,
    /// How long a restarted worker must have been ready before the shards
    /// that moved away from it (to keep them served) move back, each
    /// released by its temporary holder first. Default 500 ms.
    pub move_back_after: Duration,
    /// How long a worker may take to exit after `Shutdown`. Default 10 s.
    pub shutdown_grace: Duration,
    /// Environment variables set for every worker besides the ones it
    /// inherits from this process: a storage backend's settings (a
    /// database's address), never the cluster token. Default: none.
    pub worker_env: Vec<(String, String)>,
    /// How long [`Registry::workers_fresh`] waits for each worker's
    /// figures before it falls back to the last ones. Default 250 ms.
    pub stats_timeout: Duration,
    /// The largest WebSocket message, in bytes, passed to every worker
    /// (the front door's limit: the workers' objects receive every message
    /// the door lets through, and may send as large). Default 32 MiB.
    pub websocket_max_message_bytes: usize,
}

impl RegistryConfig {
    /// The defaults, for `command` and `data_dir`.
    pub fn new(command: WorkerCommand, data_dir: PathBuf) -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            command,
            workers,
            shards: None,
            splitter: None,
            class_storage: Vec::new(),
            data_dir,
            runtime_dir: None,
            transport: TransportKind::available()[0],
            storage: "fjall".to_owned(),
            token: random_token(),
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(2),
            stall_limit: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(50),
            max_restart_backoff: Duration::from_secs(5),
            crash_loop_limit: 5,
            stable_after: Duration::from_secs(1),
            move_back_after: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
            worker_env: Vec::new(),
            stats_timeout: Duration::from_millis(250),
            websocket_max_message_bytes: 32 * 1024 * 1024,
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
    /// Another server (or another holder in this process) has the data
    /// directory.
    #[error(
        "data directory {dir} is in use by another odo server ({}; lock file {lock_file})",
        holder(.holder_pid)
    )]
    DataDirLocked {
        /// The data directory.
        dir: PathBuf,
        /// Its lock file.
        lock_file: PathBuf,
        /// The holder's pid, as its lock file says.
        holder_pid: Option<u32>,
    },
    /// A class is registered with another kind of storage than the one
    /// the data directory recorded for it.
    #[error(
        "class {class} was served from this data directory {recorded}-backed and is now registered {registered}-backed; a class's kind of storage cannot change (register it {recorded}-backed again, or serve it from a new data directory; record: {record})"
    )]
    ClassStorageChanged {
        /// The class.
        class: String,
        /// Its kind in the record.
        recorded: String,
        /// Its kind as registered now.
        registered: String,
        /// The record's path.
        record: PathBuf,
    },
    /// The data directory is unusable.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The runtime directory cannot be created.
    #[error("runtime directory {path}: {source}")]
    RuntimeDir {
        /// The offending path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
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
    /// Splitting the data directory's shards failed; it goes on at the
    /// next start.
    #[error(
        "splitting the shards from {from} to {to} failed (the split goes on at the next start): {source}"
    )]
    Split {
        /// The shard count before the split.
        from: u32,
        /// The shard count after it.
        to: u32,
        /// What failed.
        #[source]
        source: SplitError,
    },
    /// Some workers never became ready.
    #[error("workers not ready: {0}")]
    NotReady(String),
    /// A file or directory of the data directory cannot be created, read,
    /// written or locked.
    #[error("data directory {path}: {what}: {source}")]
    DataDirIo {
        /// The offending path.
        path: PathBuf,
        /// What odo was doing.
        what: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The cluster record is not the JSON odo writes.
    #[error("cluster record {path} is unreadable: {source}")]
    ClusterRecord {
        /// The record's path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The class record (`odo-classes.json`) is not the JSON odo writes.
    #[error("class record {path} is unreadable: {source}")]
    ClassRecord {
        /// The record's path.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: serde_json::Error,
    },
    /// The program to run as a worker cannot be found.
    #[error("cannot find the current executable to run as a worker: {source}")]
    CurrentExe {
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// "pid N", or that it is unknown.
fn holder(pid: &Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// The number of shards, S, of the data directory `data_dir`: read from its
/// cluster record, or recorded as `default` if the directory is new. S
/// changes only when a server with more workers splits the shards at
/// startup ([`ShardSplitter`]). Locks the directory
/// meanwhile, so it fails with [`RegistryError::DataDirLocked`] while a
/// server has it; a server keeps a [`DataDirLock`] and asks it instead.
pub fn shard_count(data_dir: &std::path::Path, default: u32) -> Result<u32, RegistryError> {
    DataDirLock::acquire(data_dir)?.shard_count(default)
}

/// A running registry. Dropping it without [`Registry::shutdown`] kills
/// the workers (they die with their parent) but does not flush them
/// gracefully.
#[derive(Debug)]
pub struct Registry {
    shared: Arc<Shared>,
    control_stop: Option<oneshot::Sender<()>>,
    control_task: Option<tokio::task::JoinHandle<()>>,
    /// Writes the runtime directory's marker again when it went missing.
    marker_task: Option<tokio::task::JoinHandle<()>>,
    /// The task running the placement machine (and, through it, every
    /// worker process's task).
    driver: Option<tokio::task::JoinHandle<()>>,
    /// Removed at shutdown (or drop).
    runtime_dir: Option<RuntimeDir>,
}

/// State shared by the driver, the control server and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: RegistryConfig,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) control_endpoint: Endpoint,
    /// The number of shards, S.
    pub(crate) shard_count: u32,
    pub(crate) placement: watch::Sender<Arc<PlacementTable>>,
    /// The data directory's lock, released when the registry goes: no
    /// cluster record is written without it.
    pub(crate) data_lock: Arc<Mutex<Option<DataDirLock>>>,
    /// The slots and processes as the driver last saw them.
    pub(crate) view: Mutex<View>,
    /// Bumped each time the driver updates `view`.
    pub(crate) view_version: watch::Sender<u64>,
    /// The hellos the registry waits for.
    pub(crate) hellos: Hellos,
    /// Events for the driver.
    inputs: tokio::sync::mpsc::UnboundedSender<Input>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub(crate) fn client_config(&self) -> ClientConfig {
        ClientConfig {
            peer_name: "registry".into(),
            ..ClientConfig::new(self.config.token.clone())
        }
    }

    /// Whether the registry is shutting down.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Writes the cluster record durably (the file write and its fsync on
    /// a blocking thread, never on the async executor), under the data
    /// directory's lock.
    pub(crate) async fn write_record(
        &self,
        record: record::ClusterFile,
    ) -> Result<(), RegistryError> {
        let data_lock = self.data_lock.clone();
        let data_dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            // Held while writing: a registry letting go of its directory
            // waits for the write, and nothing writes after it.
            let held = data_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(lock) = held.as_ref() else {
                return Err(RegistryError::DataDir {
                    path: data_dir,
                    reason: "the registry has let go of its data directory".into(),
                });
            };
            record.save(lock.dir())
        })
        .await
        .map_err(|e| RegistryError::DataDir {
            path: self.config.data_dir.clone(),
            reason: format!("writing the cluster record failed: {e}"),
        })?
    }
}

impl Registry {
    /// Locks the data directory, creates the runtime directory, binds the
    /// control endpoint and starts one supervisor per worker slot. Returns
    /// at once: await [`Registry::ready`] for the workers.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DataDirLocked`] (naming the holder's pid) when
    /// another server has the data directory; the others when a directory,
    /// the endpoint or the configuration is unusable.
    pub async fn start(config: RegistryConfig) -> Result<Registry, RegistryError> {
        if config.workers == 0 {
            return Err(RegistryError::Config(
                "a registry needs at least one worker (0 workers means in-process hosting, without a registry)".into(),
            ));
        }
        if let Err(e) = odo_core::launch::encode_token(&config.token) {
            return Err(RegistryError::Config(e.to_string()));
        }
        let data_lock = DataDirLock::acquire(&config.data_dir)?;
        data_lock.record_class_storage(&config.class_storage)?;
        let record = split::prepare(
            data_lock.dir(),
            config.shards.unwrap_or(config.workers),
            config.workers,
            config.splitter.as_deref(),
        )
        .await?;
        let runtime = RuntimeDir::create(config.runtime_dir.as_deref())?;
        let runtime_dir = runtime.path().to_path_buf();
        let bound = async {
            let control_endpoint: Endpoint = match config.transport {
                TransportKind::Uds => {
                    format!("unix:{}", runtime_dir.join("registry.sock").display())
                }
                TransportKind::Tcp => "tcp:127.0.0.1:0".to_owned(),
            }
            .parse()
            .map_err(|e| RegistryError::Config(format!("control endpoint: {e}")))?;
            Ok::<_, RegistryError>(
                Server::bind(
                    &control_endpoint,
                    ServerConfig {
                        peer_name: "registry".into(),
                        ..ServerConfig::new(config.token.clone())
                    },
                )
                .await?,
            )
        }
        .await;
        let server = match bound {
            Ok(server) => server,
            Err(e) => {
                runtime.remove();
                return Err(e);
            }
        };
        let control_endpoint = server.endpoint().clone();
        let machine = odo_core::placement::Machine::new(
            odo_core::placement::Config {
                startup_timeout: config.startup_timeout,
                restart_backoff: config.restart_backoff,
                max_restart_backoff: config.max_restart_backoff,
                crash_loop_limit: config.crash_loop_limit,
                stable_after: config.stable_after,
                move_back_after: config.move_back_after,
                stop_grace: config.shutdown_grace,
                ..odo_core::placement::Config::new(config.workers)
            },
            record.epochs.clone(),
        )
        .map_err(|e| RegistryError::Config(e.to_string()));
        let machine = match machine {
            Ok(machine) => machine,
            Err(e) => {
                runtime.remove();
                return Err(e);
            }
        };
        let table = PlacementTable::new(&record.epochs);
        let (placement, _) = watch::channel(Arc::new(table));
        let (inputs, received) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            runtime_dir: runtime_dir.clone(),
            control_endpoint,
            shard_count: record.shard_count,
            placement,
            data_lock: Arc::new(Mutex::new(Some(data_lock))),
            view: Mutex::default(),
            view_version: watch::Sender::new(0),
            hellos: Hellos::default(),
            inputs: inputs.clone(),
            stopping: std::sync::atomic::AtomicBool::new(false),
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
                    }) => match shared.hellos.hello(worker, pid, endpoint) {
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
        let driver = tokio::spawn(supervisor::drive(shared.clone(), machine, inputs, received));
        let marker_task = tokio::spawn(runtime_dir::keep_marker(runtime_dir.clone()));
        Ok(Registry {
            shared,
            control_stop: Some(control_stop),
            control_task: Some(control_task),
            marker_task: Some(marker_task),
            driver: Some(driver),
            runtime_dir: Some(runtime),
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

    /// The placement as a [`PlacementSource`](odo_core::placement::PlacementSource),
    /// for forwarders (the router's).
    pub fn placement_source(&self) -> Arc<TablePlacement> {
        Arc::new(TablePlacement::new(self.shared.placement.subscribe()))
    }

    /// Each worker slot's state, with the figures of each worker's last
    /// heartbeat (`stats_age_ms` says how old they are).
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status()
    }

    /// [`Registry::workers`] with fresh figures: asks every running worker
    /// for them at once, waiting up to
    /// [`stats_timeout`](RegistryConfig::stats_timeout); a worker that does
    /// not answer in time keeps its last figures (and their age).
    pub async fn workers_fresh(&self) -> Vec<WorkerStatus> {
        let timeout = self.shared.config.stats_timeout;
        let connected = self
            .shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connected();
        let mut asks = tokio::task::JoinSet::new();
        for (process, channel) in connected {
            asks.spawn(async move {
                let ask = Request::Control(Control::Heartbeat { now_ms: 0 });
                match channel.call(ask, Bytes::new(), timeout).await {
                    Ok((Response::Control(ControlReply::Stats(stats)), _)) => {
                        Some((process, stats))
                    }
                    _ => None,
                }
            });
        }
        let mut fresh = std::collections::HashMap::new();
        // Each call ends by its deadline; the outer bound only guards.
        let _ = tokio::time::timeout(timeout * 2, async {
            while let Some(answer) = asks.join_next().await {
                if let Ok(Some((process, stats))) = answer {
                    fresh.insert(process.slot, stats);
                    // Kept: in the view now, and by the driver for later.
                    self.shared
                        .view
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record_stats(process, stats);
                    let _ = self.shared.inputs.send(Input::Stats { process, stats });
                }
            }
        })
        .await;
        let mut workers = self.workers();
        for worker in &mut workers {
            if let Some(stats) = fresh.get(&worker.slot) {
                worker.live_objects = stats.live_objects;
                worker.commit_batches = stats.commit_batches;
                worker.commit_turns = stats.commit_turns;
                worker.stats_age_ms = Some(0);
            }
        }
        workers
    }

    /// Restarts every worker, one slot after another, without dropping a
    /// request or a WebSocket (a rolling restart: `odo serve` does it on
    /// SIGHUP). Each slot is drained: its shards move to the other workers
    /// first (released by it, then assigned elsewhere at a new epoch), its
    /// process stops gracefully, the next one starts at once, and its
    /// shards move back (released again, assigned to it at a new epoch).
    /// The next slot starts once the last one is running and holds its
    /// home shards again. With one worker its shards wait, unassigned, for
    /// the new process (requests and WebSocket events wait too, within
    /// their deadlines).
    ///
    /// # Errors
    ///
    /// [`RegistryError::NotReady`] when a slot is not back with its
    /// shards within the startup timeout plus the shutdown grace (its
    /// state is in the message; the registry goes on supervising it), or
    /// the registry is shutting down.
    pub async fn restart_workers(&self) -> Result<(), RegistryError> {
        for slot in 0..self.shared.config.workers {
            self.restart_worker(slot).await?;
        }
        Ok(())
    }

    /// Drains `slot` and waits until its next process runs and holds its
    /// home shards (see [`Registry::restart_workers`]).
    async fn restart_worker(&self, slot: u32) -> Result<(), RegistryError> {
        let mut version = self.shared.view_version.subscribe();
        let restarts = |workers: &[WorkerStatus]| {
            workers
                .iter()
                .find(|w| w.slot == slot)
                .map_or(0, |w| w.restarts)
        };
        let before = restarts(&self.workers());
        info!(slot, "restarting a worker: its shards move away first");
        let _ = self
            .shared
            .inputs
            .send(Input::Event(odo_core::placement::Event::Drain { slot }));
        let workers = self.shared.config.workers;
        let home: Vec<u32> = (0..self.shared.shard_count)
            .filter(|s| s % workers == slot)
            .collect();
        let limit = self.shared.config.startup_timeout + self.shared.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            version.borrow_and_update();
            if self.shared.is_stopping() {
                return Err(RegistryError::NotReady(
                    "the registry is shutting down".into(),
                ));
            }
            let status = self.workers();
            let back = status.iter().find(|w| w.slot == slot).is_some_and(|w| {
                w.restarts > before
                    && w.state == WorkerState::Running
                    && home.iter().all(|s| w.shards.contains(s))
            });
            if back {
                info!(slot, "worker restarted; its shards are back");
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(RegistryError::NotReady(format!(
                        "worker slot {slot} was not back with its shards {home:?} after {limit:?}: {:?}",
                        status.iter().find(|w| w.slot == slot)
                    )));
                }
            }
        }
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
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .shared
            .inputs
            .send(Input::Event(odo_core::placement::Event::Shutdown));
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
        if let Some(stop) = self.control_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.control_task.take() {
            let _ = task.await;
        }
        if let Some(task) = self.marker_task.take() {
            task.abort();
        }
        if let Some(dir) = self.runtime_dir.take() {
            dir.remove();
        }
        self.release_data_dir();
        info!("registry stopped");
    }

    /// Lets go of the data directory: from here on nothing writes the
    /// cluster record, and another server may take the directory.
    fn release_data_dir(&self) {
        self.shared
            .data_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Without a graceful shutdown, children are killed by kill_on_drop
        // when the driver (which owns their tasks) is aborted.
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
        if let Some(task) = self.marker_task.take() {
            task.abort();
        }
        if let Some(dir) = self.runtime_dir.take() {
            dir.remove();
        }
        self.release_data_dir();
    }
}
