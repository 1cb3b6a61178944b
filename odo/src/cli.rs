//! `odo serve`'s command line (clap): its flags, and the [`ServeOptions`]
//! they make; each flag's default is the documented default of the option it sets.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use odo_registry::TransportKind;
use odo_router::{RouterConfig, WebSocketConfig};
use odo_storage::Backends;
use odo_worker::RuntimeConfig;

use crate::app::{OdoError, ServeOptions};

/// Parses the command line, with `--storage`'s help listing the backends
/// `backends` holds.
pub(crate) fn parse_cli(args: &[String], backends: &Backends) -> Result<Cli, clap::Error> {
    let names: Vec<&str> = backends.names().collect();
    let help = format!("The storage backend: {}", names.join(", "));
    let mut long_help = String::from("The storage backend, one of:");
    for factory in backends.iter() {
        let durable = if factory.durable() {
            "durable"
        } else {
            "not durable"
        };
        long_help.push_str(&format!("\n- {} ({durable})", factory.name()));
        if !factory.about().is_empty() {
            long_help.push_str(&format!(": {}", factory.about()));
        }
    }
    let mut command = Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_arg("storage", |arg| arg.help(help).long_help(long_help))
    });
    let mut matches = command.try_get_matches_from_mut(args)?;
    Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
}

#[derive(Debug, Parser)]
#[command(
    name = "odo",
    version,
    about = "odo: Open Durable Objects, a self-hostable Durable Objects server"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the server: a registry, worker processes and the HTTP front door.
    Serve(ServeFlags),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportFlag {
    /// Unix domain sockets in a private runtime directory (Unix only).
    Uds,
    /// TCP on the loopback address.
    Tcp,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeFlags {
    /// The HTTP address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Worker processes; 0 hosts every object in the main process
    /// (development mode). Default: the number of available cores.
    #[arg(long)]
    workers: Option<u32>,
    /// Where shard data and the cluster record live. The number of shards
    /// is fixed when the directory is created.
    #[arg(long, default_value = "./.odo")]
    data_dir: PathBuf,
    /// The storage backend, by name (the names are listed by `--help`).
    #[arg(long, default_value = "fjall", value_name = "NAME")]
    storage: String,
    /// How the router reaches the workers.
    #[arg(long, value_enum, default_value = if cfg!(unix) { "uds" } else { "tcp" })]
    transport: TransportFlag,
    /// The private directory (created with mode 0700) for the sockets
    /// between the processes. Default: a new directory under the system's
    /// temporary directory, removed at shutdown.
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// The largest request body, in bytes (larger answers 413).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// The request deadline, in milliseconds (slower answers 504).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// How long a client has to send a whole request head, in milliseconds
    /// (from accept, or from the first byte on a kept-alive connection);
    /// then the connection is closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout_ms: u64,
    /// How long a connection may stay open with no request in progress, in
    /// milliseconds; then it is closed.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// The most HTTP connections open at once; a client over it is answered
    /// 503 at once and closed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_COUNT))]
    max_connections: u64,
    /// The request and answer body bytes the front door holds at once over
    /// every connection; past it new requests are answered 503 (safe to
    /// send again) and answers over 64 KiB are dropped (502).
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_held_body_bytes: u64,
    /// How long a worker has to answer a heartbeat before it is killed as
    /// hung, in milliseconds.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_timeout_ms: u64,
    /// How long one poll of object code may run without returning (an
    /// endless loop, a blocking call) before its worker is killed as stuck,
    /// in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    stall_limit_ms: u64,
    /// The most WebSockets open at once (their own cap, apart from
    /// --max-connections); an upgrade over it is answered 503.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=MAX_COUNT))]
    max_websockets: u64,
    /// The largest WebSocket message, in bytes: a client's larger message
    /// closes its socket with 1009; objects (in every worker) receive and
    /// may send up to it.
    #[arg(long, default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_max_message_bytes: u64,
    /// The bytes queued for one WebSocket at most; a client that stops
    /// reading is closed with 1008.
    #[arg(long, default_value_t = 1024 * 1024)]
    websocket_send_buffer_bytes: usize,
    /// A WebSocket silent for this long is pinged, and closed as half-open
    /// if it stays silent as long again, in milliseconds; a message left
    /// unfinished this long closes its socket with 1008.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_idle_timeout_ms: u64,
    /// The events of one object waiting for delivery at most (while its
    /// worker is replaced); a message beyond closes its socket with 1013.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_object_buffer: u64,
    /// The bytes of one object's messages waiting for delivery at most
    /// (one message always fits); a message beyond closes its socket with
    /// 1013.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_object_buffer_bytes: u64,
    /// The bytes of the messages waiting for all objects together at most
    /// (queued, on their way to their object, or still arriving, those at
    /// most half of it); a message beyond closes its socket with 1013.
    #[arg(long, default_value_t = 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_door_buffer_bytes: u64,
    /// Shut down gracefully when standard input reaches end of file (for
    /// supervisors and test harnesses that hold a pipe to the server).
    #[arg(long, hide = true)]
    pub(crate) exit_on_stdin_eof: bool,
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    postgres: crate::postgres::PostgresFlags,
    #[cfg(feature = "cluster")]
    #[command(flatten)]
    cluster: crate::cluster::ClusterFlags,
    /// Join a cluster through etcd (needs the `cluster` feature).
    #[cfg(not(feature = "cluster"))]
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    cluster: Option<String>,
}

impl ServeFlags {
    pub(crate) fn into_options(self) -> Result<ServeOptions, OdoError> {
        let defaults = ServeOptions::default();
        #[cfg(not(feature = "cluster"))]
        if self.cluster.is_some() {
            return Err(OdoError::Other(NO_CLUSTER.into()));
        }
        Ok(ServeOptions {
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers),
            data_dir: self.data_dir,
            storage: self.storage,
            transport: match self.transport {
                TransportFlag::Uds => TransportKind::Uds,
                TransportFlag::Tcp => TransportKind::Tcp,
            },
            runtime_dir: self.runtime_dir,
            router: RouterConfig {
                max_body_bytes: self.max_body_bytes,
                request_deadline: std::time::Duration::from_millis(self.request_timeout_ms),
                header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
                idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
                max_connections: self.max_connections as usize,
                max_held_body_bytes: usize::try_from(self.max_held_body_bytes)
                    .unwrap_or(usize::MAX),
                ..RouterConfig::default()
            },
            websocket: WebSocketConfig {
                max_sockets: self.max_websockets as usize,
                max_message_bytes: self.websocket_max_message_bytes as usize,
                send_buffer_bytes: self.websocket_send_buffer_bytes,
                idle_timeout: std::time::Duration::from_millis(self.websocket_idle_timeout_ms),
                object_buffer_events: self.websocket_object_buffer as usize,
                object_buffer_bytes: usize::try_from(self.websocket_object_buffer_bytes)
                    .unwrap_or(usize::MAX),
                door_buffer_bytes: usize::try_from(self.websocket_door_buffer_bytes)
                    .unwrap_or(usize::MAX),
                ..WebSocketConfig::default()
            },
            runtime: RuntimeConfig::default(),
            heartbeat_timeout: std::time::Duration::from_millis(self.heartbeat_timeout_ms),
            stall_limit: std::time::Duration::from_millis(self.stall_limit_ms),
            #[cfg(feature = "postgres")]
            postgres: self.postgres.config()?,
            #[cfg(feature = "cluster")]
            cluster: self.cluster.config(self.listen)?,
        })
    }
}

/// The largest count a cap on connections or sockets may be given: far past
/// any descriptor limit, and within what a semaphore can count on every
/// platform (a larger one made the server panic once it listened).
const MAX_COUNT: u64 = 1 << 28;

/// What `odo serve --cluster` says in a build without cluster support.
#[cfg(not(feature = "cluster"))]
const NO_CLUSTER: &str = "this odo was built without cluster support: build it with the `cluster` feature (`cargo build --release -p odo --features cluster`; the etcd client needs protoc at build time: `apt-get install protobuf-compiler`)";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use odo_storage::{BackendFactory, ShardSpec};

    use super::*;
    use crate::App;

    fn serve_options(args: &[&str]) -> Result<ServeOptions, clap::Error> {
        let cli = Cli::try_parse_from(["odo", "serve"].iter().chain(args))?;
        let Command::Serve(flags) = cli.command;
        Ok(flags.into_options().expect("valid options"))
    }

    /// A backend of the app's own.
    #[derive(Debug)]
    struct Scratch;

    impl BackendFactory for Scratch {
        fn name(&self) -> &str {
            "scratch"
        }
        fn durable(&self) -> bool {
            false
        }
        fn about(&self) -> &str {
            "a scratch pad"
        }
        fn open(&self, _shard: ShardSpec) -> odo_storage::OpenFuture {
            odo_storage::open_ready(odo_storage::MemoryBackend::new())
        }
    }

    #[test]
    fn storage_takes_any_name_and_its_help_lists_the_registered_backends() {
        let app = App::new().backend(Scratch);
        let args = |extra: &[&str]| -> Vec<String> {
            ["odo", "serve"]
                .iter()
                .chain(extra)
                .map(|a| a.to_string())
                .collect()
        };
        let cli = parse_cli(&args(&["--storage", "scratch"]), app.backends()).unwrap();
        let Command::Serve(flags) = cli.command;
        assert_eq!(flags.into_options().unwrap().storage, "scratch");
        let help = parse_cli(&args(&["--help"]), app.backends())
            .unwrap_err()
            .render()
            .to_string();
        let fjall = cfg!(feature = "fjall");
        for (line, listed) in [
            ("- fjall (durable): durable, on disk (fjall)", fjall),
            ("- memory (not durable): in memory", true),
            ("- scratch (not durable): a scratch pad", true),
        ] {
            assert_eq!(help.contains(line), listed, "{line:?} in:\n{help}");
        }
        assert_eq!(serve_options(&[]).unwrap().storage, "fjall");
    }

    #[test]
    fn front_door_flags() {
        let defaults = serve_options(&[]).unwrap().router;
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
        assert_eq!(defaults.max_connections, 10_000);
        assert_eq!(defaults.max_held_body_bytes, 256 * 1024 * 1024);
        let router = serve_options(&[
            "--header-read-timeout-ms",
            "250",
            "--idle-timeout-ms",
            "5000",
            "--max-connections",
            "7",
            "--max-held-body-bytes",
            "4096",
        ])
        .unwrap()
        .router;
        assert_eq!(router.header_read_timeout, Duration::from_millis(250));
        assert_eq!(router.idle_timeout, Duration::from_secs(5));
        assert_eq!(router.max_connections, 7);
        assert_eq!(router.max_held_body_bytes, 4096);
        assert!(serve_options(&["--max-held-body-bytes", "0"]).is_err());
        // A semaphore cannot count that far: the server panicked once it
        // listened. Nor is a cap of no connection a server.
        assert!(serve_options(&["--max-connections", "18446744073709551615"]).is_err());
        assert!(serve_options(&["--max-connections", "0"]).is_err());
        assert!(serve_options(&["--max-websockets", "18446744073709551615"]).is_err());
        assert!(serve_options(&["--header-read-timeout-ms", "0"]).is_err());
        assert!(serve_options(&["--idle-timeout-ms", "0"]).is_err());
        // Every request would time out before reaching its object, and
        // answer 504 "outcome unknown" though nothing happened.
        assert!(serve_options(&["--request-timeout-ms", "0"]).is_err());
    }
}
