//! How a registry is set up: its workers' command line, transport and
//! limits ([`RegistryConfig`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use crate::{DataDirLock, Registry};
use crate::{RegistryError, ShardSplitter};

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
    /// Whether that backend keeps what it is given across restarts. A data
    /// directory keeps the durable backend it was first served with (its
    /// class record says which); one served with a backend that keeps
    /// nothing may be taken over by another. Default true.
    pub storage_durable: bool,
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
            storage_durable: true,
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
pub(crate) fn random_token() -> String {
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
