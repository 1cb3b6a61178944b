//! Why the registry cannot start or run ([`RegistryError`]).

use std::path::PathBuf;

use odo_transport::BindError;

use crate::SplitError;

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
    /// The data directory's shards are kept with another storage backend
    /// than the one given.
    #[error(
        "the data directory's shards are kept with storage backend `{recorded}` (recorded in {record}); `{registered}` would not see their data, and splitting the shards with it would destroy it: serve the directory with `--storage {recorded}`, or use another data directory"
    )]
    BackendChanged {
        /// The backend in the record.
        recorded: String,
        /// The backend given now.
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
