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
mod config;
mod datadir;
mod error;
mod placement;
mod record;
mod runtime_dir;
mod split;
mod supervisor;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use odo_core::WireError;
use odo_core::wire::{Control, ControlReply, Request, Response};
use odo_transport::{ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::sync::{oneshot, watch};
use tracing::info;

pub use classes::StorageBackend;
pub use config::{RegistryConfig, TransportKind, WorkerCommand};
pub use datadir::{DATA_DIR_LOCK_FILE, DataDirLock};
pub use error::RegistryError;
pub use odo_core::placement::SlotPhase as WorkerState;
pub use placement::{Owner, PlacementTable, ShardEntry, TablePlacement};
pub use split::{ShardAt, ShardSplitter, SplitDone, SplitError, SplitFuture};
pub use supervisor::WorkerStatus;

use runtime_dir::RuntimeDir;
use supervisor::{Hellos, Input, View};

/// The control server's settings: its caps on connections grow with the
/// workers, which all connect at once as they start. Past 64 handshakes at
/// once the oldest was closed to make room (strangers must not keep a
/// peer out): 646 of 1,000 workers started together failed their hello.
fn control_server_config(config: &RegistryConfig) -> ServerConfig {
    let workers = config.workers as usize;
    let defaults = ServerConfig::new(config.token.clone());
    ServerConfig {
        peer_name: "registry".into(),
        max_unauthenticated: defaults.max_unauthenticated.max(workers.saturating_mul(2)),
        max_connections: defaults.max_connections.max(workers.saturating_mul(4)),
        ..defaults
    }
}

/// Shard numbers for a message: all of them up to eight, else the first
/// eight and how many more (1,000 numbers made a 5 KB error line).
fn shard_list(shards: &[u32]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = shards.iter().take(SHOWN).map(u32::to_string).collect();
    let mut list = format!("shards {}", shown.join(", "));
    if shards.len() > SHOWN {
        list.push_str(&format!(" and {} more", shards.len() - SHOWN));
    }
    list
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
        data_lock.record_class_storage(
            StorageBackend {
                name: &config.storage,
                durable: config.storage_durable,
            },
            &config.class_storage,
        )?;
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
                Server::bind(&control_endpoint, control_server_config(&config)).await?,
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
                    let count = placement.borrow().shard_count();
                    return Err(RegistryError::NotReady(format!(
                        "{} of {count} shards unassigned after {:?} ({}); the log above says why \
                         (the registry's lines, such as a record it cannot write, and the workers')",
                        missing.len(),
                        self.shared.config.startup_timeout,
                        shard_list(&missing),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_control_servers_caps_grow_with_the_workers() {
        let mut config = super::RegistryConfig::new(
            super::WorkerCommand {
                program: "true".into(),
                args: Vec::new(),
            },
            "unused".into(),
        );
        config.workers = 2;
        let few = super::control_server_config(&config);
        assert_eq!((few.max_unauthenticated, few.max_connections), (64, 1024));
        config.workers = 1000;
        let many = super::control_server_config(&config);
        assert!(many.max_unauthenticated >= 1000 && many.max_connections >= 2000);
    }

    #[test]
    fn a_long_list_of_shards_is_cut_short() {
        assert_eq!(super::shard_list(&[3]), "shards 3");
        let all: Vec<u32> = (0..1000).collect();
        assert_eq!(
            super::shard_list(&all),
            "shards 0, 1, 2, 3, 4, 5, 6, 7 and 992 more"
        );
    }
}
