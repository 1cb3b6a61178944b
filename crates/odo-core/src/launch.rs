//! How a registry starts a worker process: the command-line contract
//! between the two roles of one binary.
//!
//! The registry re-executes the current binary as
//! `BINARY __odo-worker --index N --registry ENDPOINT --listen ENDPOINT
//! --data-dir PATH --storage KIND --shards S --parent-pid PID`, with the
//! cluster token in the environment variable [`TOKEN_ENV`] so that it never
//! appears in a process listing. The binary's `main` hands such a command
//! line to the worker runtime instead of its own CLI.

use std::fmt;

/// The first argument that selects the worker role.
pub const WORKER_ROLE_ARG: &str = "__odo-worker";

/// The environment variable that carries the cluster token to a worker.
pub const TOKEN_ENV: &str = "ODO_CLUSTER_TOKEN";

/// Where a worker keeps shard data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// In memory: lost when the worker exits.
    Memory,
    /// fjall, one database per shard under `<data-dir>/shards/<n>`.
    Fjall,
}

impl StorageKind {
    /// The name used on command lines.
    pub fn as_str(&self) -> &'static str {
        match self {
            StorageKind::Memory => "memory",
            StorageKind::Fjall => "fjall",
        }
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StorageKind {
    type Err = LaunchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(StorageKind::Memory),
            "fjall" => Ok(StorageKind::Fjall),
            other => Err(LaunchError::BadValue {
                flag: "--storage",
                value: other.to_owned(),
                expected: "memory or fjall",
            }),
        }
    }
}

/// Everything a worker process is told at start, besides its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerLaunch {
    /// The worker's slot, 0-based; stable across restarts of the slot.
    pub index: u32,
    /// The registry's control endpoint, as `unix:/path` or `tcp:host:port`.
    pub registry: String,
    /// The endpoint the worker listens on.
    pub listen: String,
    /// The data directory (shards live in `<data-dir>/shards/<n>`).
    pub data_dir: String,
    /// The storage backend.
    pub storage: StorageKind,
    /// The number of virtual shards, S.
    pub shard_count: u32,
    /// The registry's pid: a worker whose parent is no longer this pid
    /// exits at once (the parent died before the worker could arm its
    /// parent-death signal).
    pub parent_pid: u32,
}

/// Why a command line is not a worker launch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// A required flag is absent.
    #[error("worker command line lacks {0}")]
    Missing(&'static str),
    /// A flag without its value.
    #[error("worker command line: {0} needs a value")]
    NoValue(String),
    /// A flag this version does not know.
    #[error("worker command line: unknown argument {0:?}")]
    Unknown(String),
    /// A value that does not parse.
    #[error("worker command line: {flag} {value:?} is not {expected}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl WorkerLaunch {
    /// The arguments to pass after the binary's path, role marker first.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            WORKER_ROLE_ARG.into(),
            "--index".into(),
            self.index.to_string(),
            "--registry".into(),
            self.registry.clone(),
            "--listen".into(),
            self.listen.clone(),
            "--data-dir".into(),
            self.data_dir.clone(),
            "--storage".into(),
            self.storage.to_string(),
            "--shards".into(),
            self.shard_count.to_string(),
            "--parent-pid".into(),
            self.parent_pid.to_string(),
        ]
    }

    /// Parses the arguments after the binary's path. Returns `Ok(None)` when
    /// they do not start with [`WORKER_ROLE_ARG`] (not a worker).
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Option<Self>, LaunchError> {
        let mut args = args.into_iter();
        if args.next().as_deref() != Some(WORKER_ROLE_ARG) {
            return Ok(None);
        }
        let (
            mut index,
            mut registry,
            mut listen,
            mut data_dir,
            mut storage,
            mut shards,
            mut parent,
        ) = (None, None, None, None, None, None, None);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| LaunchError::NoValue(flag.clone()))?;
            match flag.as_str() {
                "--index" => index = Some(number("--index", &value)?),
                "--registry" => registry = Some(value),
                "--listen" => listen = Some(value),
                "--data-dir" => data_dir = Some(value),
                "--storage" => storage = Some(value.parse()?),
                "--shards" => shards = Some(number("--shards", &value)?),
                "--parent-pid" => parent = Some(number("--parent-pid", &value)?),
                _ => return Err(LaunchError::Unknown(flag)),
            }
        }
        Ok(Some(WorkerLaunch {
            index: index.ok_or(LaunchError::Missing("--index"))?,
            registry: registry.ok_or(LaunchError::Missing("--registry"))?,
            listen: listen.ok_or(LaunchError::Missing("--listen"))?,
            data_dir: data_dir.ok_or(LaunchError::Missing("--data-dir"))?,
            storage: storage.ok_or(LaunchError::Missing("--storage"))?,
            shard_count: shards.ok_or(LaunchError::Missing("--shards"))?,
            parent_pid: parent.ok_or(LaunchError::Missing("--parent-pid"))?,
        }))
    }
}

fn number(flag: &'static str, value: &str) -> Result<u32, LaunchError> {
    value.parse().map_err(|_| LaunchError::BadValue {
        flag,
        value: value.to_owned(),
        expected: "a non-negative integer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> WorkerLaunch {
        WorkerLaunch {
            index: 2,
            registry: "unix:/run/odo/registry.sock".into(),
            listen: "tcp:127.0.0.1:0".into(),
            data_dir: "/var/lib/odo data".into(),
            storage: StorageKind::Fjall,
            shard_count: 8,
            parent_pid: 42,
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(WorkerLaunch::parse(launch().to_args()), Ok(Some(launch())));
    }

    #[test]
    fn other_command_lines_are_not_workers() {
        assert_eq!(WorkerLaunch::parse(["serve".to_owned()]), Ok(None));
        assert_eq!(WorkerLaunch::parse(Vec::<String>::new()), Ok(None));
    }

    #[test]
    fn errors_name_the_flag() {
        let mut args = launch().to_args();
        args.truncate(args.len() - 2);
        assert_eq!(
            WorkerLaunch::parse(args),
            Err(LaunchError::Missing("--parent-pid"))
        );
        let mut args = launch().to_args();
        args[2] = "two".into();
        assert!(matches!(
            WorkerLaunch::parse(args),
            Err(LaunchError::BadValue {
                flag: "--index",
                ..
            })
        ));
        let mut args = launch().to_args();
        args[10] = "rocks".into();
        assert!(matches!(
            WorkerLaunch::parse(args),
            Err(LaunchError::BadValue {
                flag: "--storage",
                ..
            })
        ));
        let mut args = launch().to_args();
        args.push("--what".into());
        assert_eq!(
            WorkerLaunch::parse(args),
            Err(LaunchError::NoValue("--what".into()))
        );
    }
}
