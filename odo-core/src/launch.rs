//! How a registry starts a worker process: the command-line contract
//! between the two roles of one binary.
//!
//! The registry re-executes the current binary as
//! `BINARY __odo-worker --index N --registry ENDPOINT --listen ENDPOINT
//! --data-dir PATH --storage NAME --shards S --parent-pid PID
//! --websocket-max-message-bytes B`. The
//! binary's `main` hands such a command line to the worker runtime instead
//! of its own CLI.
//!
//! # The cluster token
//!
//! The token is secret, so it is in neither the command line (any process
//! listing shows it) nor the environment (`/proc/<pid>/environ` shows it to
//! every process of the same user, and every program the worker starts
//! inherits it). The registry starts the worker with its standard input on
//! a pipe, writes the token there as one line ([`encode_token`]: the token
//! and `\n`, at most [`TOKEN_MAX_BYTES`] bytes before the newline) and
//! closes the pipe. The worker reads that one line before it starts
//! anything else ([`decode_token`] checks it) and refuses to run without
//! it. A program the worker starts later inherits only the drained pipe.

/// The first argument that selects the worker role.
pub const WORKER_ROLE_ARG: &str = "__odo-worker";

/// The longest token, in bytes (the newline not counted).
pub const TOKEN_MAX_BYTES: usize = 512;

/// Why a token cannot be handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token line: the input was empty or ended before its newline.
    #[error("no cluster token line on standard input (the registry writes it there)")]
    Missing,
    /// The token is empty.
    #[error("the cluster token is empty")]
    Empty,
    /// The token is longer than [`TOKEN_MAX_BYTES`].
    #[error("the cluster token is longer than {TOKEN_MAX_BYTES} bytes")]
    TooLong,
    /// The token holds something other than printable ASCII.
    #[error("the cluster token must be printable ASCII without spaces")]
    Malformed,
}

fn check_token(token: &[u8]) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > TOKEN_MAX_BYTES {
        return Err(TokenError::TooLong);
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(TokenError::Malformed);
    }
    Ok(())
}

/// The bytes a registry writes on a worker's standard input: the token and
/// a newline. Fails for a token a worker would refuse.
pub fn encode_token(token: &str) -> Result<Vec<u8>, TokenError> {
    check_token(token.as_bytes())?;
    let mut line = Vec::with_capacity(token.len() + 1);
    line.extend_from_slice(token.as_bytes());
    line.push(b'\n');
    Ok(line)
}

/// The token in `line`, the bytes a worker read from its standard input up
/// to and including the first newline (at most [`TOKEN_MAX_BYTES`] + 1
/// bytes are worth reading: more is [`TokenError::TooLong`]).
pub fn decode_token(line: &[u8]) -> Result<String, TokenError> {
    let Some(token) = line.strip_suffix(b"\n") else {
        return Err(if line.len() > TOKEN_MAX_BYTES {
            TokenError::TooLong
        } else {
            TokenError::Missing
        });
    };
    check_token(token)?;
    // Checked: printable ASCII.
    Ok(token.iter().map(|&b| char::from(b)).collect())
}

/// Everything a worker process is told on its command line (the token
/// comes on standard input: see the [module](self) documentation).
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
    /// The storage backend's name, as the binary registered it (odo-storage's
    /// `Backends`: `fjall`, `memory`, or one of the binary's own). Never
    /// empty. odo-core gives names no meaning: the worker looks it up.
    pub storage: String,
    /// The number of virtual shards, S.
    pub shard_count: u32,
    /// The registry's pid: a worker whose parent is no longer this pid
    /// exits at once (the parent died before the worker could arm its
    /// parent-death signal).
    pub parent_pid: u32,
    /// The largest WebSocket message, in bytes: the front door's limit for
    /// what clients send, so the worker's objects receive (and may send)
    /// every message the door lets through. The worker's runtime takes it
    /// instead of its own `websocket_max_message_bytes`.
    pub websocket_max_message_bytes: u64,
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
            self.storage.clone(),
            "--shards".into(),
            self.shard_count.to_string(),
            "--parent-pid".into(),
            self.parent_pid.to_string(),
            "--websocket-max-message-bytes".into(),
            self.websocket_max_message_bytes.to_string(),
        ]
    }

    /// Parses the arguments after the binary's path. Returns `Ok(None)` when
    /// they do not start with [`WORKER_ROLE_ARG`] (not a worker).
    // Hand-written rather than clap: odo-core stays free of heavy
    // dependencies (no I/O, no CLI machinery; clap and its derive macros
    // would outweigh the rest of the crate), and this is no user-facing
    // command line but a machine-to-machine contract that `to_args` writes
    // and only a registry produces: `--flag value` pairs, each required, no
    // help text, abbreviations or defaults.
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
            mut max_message,
        ) = (None, None, None, None, None, None, None, None);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| LaunchError::NoValue(flag.clone()))?;
            match flag.as_str() {
                "--index" => index = Some(number("--index", &value)?),
                "--registry" => registry = Some(value),
                "--listen" => listen = Some(value),
                "--data-dir" => data_dir = Some(value),
                "--storage" if value.is_empty() => {
                    return Err(LaunchError::BadValue {
                        flag: "--storage",
                        value,
                        expected: "a storage backend's name",
                    });
                }
                "--storage" => storage = Some(value),
                "--shards" => shards = Some(number("--shards", &value)?),
                "--parent-pid" => parent = Some(number("--parent-pid", &value)?),
                "--websocket-max-message-bytes" => {
                    max_message = Some(number("--websocket-max-message-bytes", &value)?);
                }
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
            websocket_max_message_bytes: max_message
                .ok_or(LaunchError::Missing("--websocket-max-message-bytes"))?,
        }))
    }
}

fn number<N: std::str::FromStr>(flag: &'static str, value: &str) -> Result<N, LaunchError> {
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
            storage: "my-backend".into(),
            shard_count: 8,
            parent_pid: 42,
            websocket_max_message_bytes: 40 << 20,
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
    fn tokens_round_trip_as_one_line() {
        let line = encode_token("abc123").unwrap();
        assert_eq!(line, b"abc123\n");
        assert_eq!(decode_token(&line).as_deref(), Ok("abc123"));
        assert_eq!(decode_token(b""), Err(TokenError::Missing));
        assert_eq!(decode_token(b"abc"), Err(TokenError::Missing));
        assert_eq!(decode_token(b"\n"), Err(TokenError::Empty));
        assert_eq!(decode_token(b"a b\n"), Err(TokenError::Malformed));
        assert_eq!(decode_token(b"a\r\n"), Err(TokenError::Malformed));
        let long = "t".repeat(TOKEN_MAX_BYTES + 1);
        assert_eq!(encode_token(&long), Err(TokenError::TooLong));
        assert_eq!(decode_token(long.as_bytes()), Err(TokenError::TooLong));
        let longest = "t".repeat(TOKEN_MAX_BYTES);
        assert_eq!(
            decode_token(&encode_token(&longest).unwrap()),
            Ok(longest.clone())
        );
        assert_eq!(encode_token(""), Err(TokenError::Empty));
        assert_eq!(encode_token("tok\nen"), Err(TokenError::Malformed));
    }

    #[test]
    fn errors_name_the_flag() {
        let mut args = launch().to_args();
        args.truncate(args.len() - 2);
        assert_eq!(
            WorkerLaunch::parse(args),
            Err(LaunchError::Missing("--websocket-max-message-bytes"))
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
        // Any backend name goes through (the worker looks it up), but not
        // an empty one.
        let mut args = launch().to_args();
        args[10] = "rocks".into();
        assert_eq!(
            WorkerLaunch::parse(args).map(|l| l.map(|l| l.storage)),
            Ok(Some("rocks".to_owned()))
        );
        let mut args = launch().to_args();
        args[10] = String::new();
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
