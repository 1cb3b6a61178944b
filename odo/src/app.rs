//! Building and running a server around object classes: the registry and
//! its workers, or an in-process runtime, behind the HTTP front door.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::ObjectId;
use odo_core::launch::WorkerLaunch;
use odo_registry::{Registry, RegistryConfig, TransportKind, WorkerCommand};
use odo_router::{
    Door, ForwardError, Location, ObjectService, PathRoutes, PlainRoutes, Router, RouterConfig,
    SocketEventOut, WebSocketConfig,
};
use odo_storage::{BackendFactory, Backends, ShardSpec, Store};
use odo_worker::{
    CallScope, ClassError, ClassStorage, Classes, DurableObject, ObjectAddress, RpcCall, Runtime,
    RuntimeConfig,
};
use tokio::time::Instant;
use tracing::info;

/// Why a server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OdoError {
    /// A class cannot be registered.
    #[error(transparent)]
    Class(#[from] ClassError),
    /// The registry cannot start its workers.
    #[error(transparent)]
    Registry(#[from] odo_registry::RegistryError),
    /// A store cannot be opened.
    #[error(transparent)]
    Storage(#[from] odo_storage::StorageError),
    /// A storage backend cannot be registered, or the one asked for is not
    /// registered.
    #[error(transparent)]
    Backend(#[from] odo_storage::BackendsError),
    /// The HTTP address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker process failed.
    #[error(transparent)]
    Worker(#[from] odo_worker::WorkerError),
    /// The worker command line a registry passed does not parse.
    #[error("bad worker command line: {0}")]
    Launch(#[from] odo_core::launch::LaunchError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// How `serve` runs. `Default` matches `odo serve` without flags.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The HTTP address. Default 127.0.0.1:8787.
    pub listen: SocketAddr,
    /// Worker processes; 0 hosts the objects in this process. Default: the
    /// available cores.
    pub workers: u32,
    /// The data directory. Default `./.odo`.
    pub data_dir: PathBuf,
    /// The storage backend's name: one the app registered
    /// ([`App::backends`]: `fjall`, `memory` and the app's own). Default
    /// `fjall`.
    pub storage: String,
    /// How the router reaches workers. Default: Unix sockets where they
    /// exist.
    pub transport: TransportKind,
    /// The private directory for the sockets. Default: a new directory under
    /// the system's temporary directory, removed at shutdown.
    pub runtime_dir: Option<PathBuf>,
    /// Limits of the front door.
    pub router: RouterConfig,
    /// Limits of the front door's WebSockets.
    pub websocket: WebSocketConfig,
    /// Limits of the object runtime (used by the workers, or in-process).
    pub runtime: RuntimeConfig,
    /// How long a worker has to answer a heartbeat before it is killed as
    /// hung. Default 2 s.
    pub heartbeat_timeout: std::time::Duration,
    /// How long one poll of object code may run without returning before
    /// its worker is killed as stuck. Default 10 s.
    pub stall_limit: std::time::Duration,
    /// With `storage` `postgres`: where the database is. `None` reads it
    /// from the environment (`ODO_POSTGRES_URL`, ...). Feature `postgres`.
    #[cfg(feature = "postgres")]
    pub postgres: Option<odo_postgres::PostgresConfig>,
    /// Join this cluster (etcd) instead of running alone: this process
    /// serves the shards the cluster gives it (`workers` does not apply).
    /// Feature `cluster`.
    #[cfg(feature = "cluster")]
    pub cluster: Option<odo_cluster::ClusterConfig>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            data_dir: PathBuf::from("./.odo"),
            storage: "fjall".to_owned(),
            transport: TransportKind::available()[0],
            runtime_dir: None,
            router: RouterConfig::default(),
            websocket: WebSocketConfig::default(),
            runtime: RuntimeConfig::default(),
            heartbeat_timeout: std::time::Duration::from_secs(2),
            stall_limit: std::time::Duration::from_secs(10),
            #[cfg(feature = "postgres")]
            postgres: None,
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

/// A server's object classes and the URL segment each is served under.
///
/// ```no_run
/// use odo::{App, Context, DurableObject, ObjectError, Request, Response};
///
/// struct Greeter;
/// impl DurableObject for Greeter {
///     fn create(_: &Context) -> Self { Greeter }
///     async fn fetch(&mut self, ctx: &mut Context, _: Request) -> Result<Response, ObjectError> {
///         Ok(Response::new(format!("hello, {}", ctx.name().unwrap_or("stranger")).into()))
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     // `my-server serve --workers 2` serves GET /greeter/{name}.
///     App::new().class::<Greeter>("greeter", "GREETER").main()
/// }
/// ```
#[derive(Debug)]
pub struct App {
    classes: Classes,
    routes: Vec<(String, String)>,
    plain: PlainRoutes,
    /// The first registration that failed, reported when the app runs.
    error: Option<OdoError>,
    runtime: RuntimeConfig,
    backends: Backends,
}

impl Default for App {
    fn default() -> Self {
        #[allow(unused_mut)]
        let mut backends = Backends::builtin();
        #[cfg(feature = "postgres")]
        backends
            .register(odo_postgres::PostgresFactory::from_env())
            .expect("postgres is a free, valid backend name");
        Self {
            classes: Classes::default(),
            routes: Vec::new(),
            plain: PlainRoutes::default(),
            error: None,
            runtime: RuntimeConfig::default(),
            backends,
        }
    }
}

impl App {
    /// An app with no classes, and the built-in storage backends
    /// ([`Backends::builtin`]: `fjall`, with the default `fjall` feature,
    /// and `memory`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a storage backend, which `--storage NAME` (and
    /// [`ServeOptions::storage`]) can then pick by its name. Workers are
    /// this same binary, so they build the same app and open shards with
    /// the same factory. A name already registered is an error when the
    /// app runs.
    ///
    /// ```no_run
    /// use odo::storage::{BackendFactory, MemoryBackend, OpenFuture, ShardSpec, open_ready};
    ///
    /// #[derive(Debug)]
    /// struct Scratch;
    ///
    /// impl BackendFactory for Scratch {
    ///     fn name(&self) -> &str { "scratch" }
    ///     fn durable(&self) -> bool { false }
    ///     fn open(&self, _shard: ShardSpec) -> OpenFuture { open_ready(MemoryBackend::new()) }
    /// }
    ///
    /// fn main() -> std::process::ExitCode {
    ///     // `my-server serve --storage scratch`
    ///     odo::demo_app().backend(Scratch).main()
    /// }
    /// ```
    pub fn backend(mut self, factory: impl BackendFactory) -> Self {
        if let Err(e) = self.backends.register(factory)
            && self.error.is_none()
        {
            self.error = Some(e.into());
        }
        self
    }

    /// The storage backends this app can run.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The object runtime's limits, for worker processes and in-process
    /// hosting alike (workers are this same binary, so they build the same
    /// app).
    pub fn runtime(mut self, config: RuntimeConfig) -> Self {
        self.runtime = config;
        self
    }

    /// Serves class `T`, registered as `class`, under `/{segment}/{name}/...`.
    pub fn class<T: DurableObject>(self, segment: &str, class: &str) -> Self {
        self.class_with(segment, class, T::create)
    }

    /// Like [`App::class`], with a factory that builds each instance (and can
    /// capture shared state).
    pub fn class_with<T, F>(self, segment: &str, class: &str, factory: F) -> Self
    where
        T: DurableObject,
        F: Fn(&odo_worker::Context) -> T + Send + Sync + 'static,
    {
        self.class_as(segment, class, ClassStorage::KeyValue, factory)
    }

    /// Serves the SQLite-backed class `T`, registered as `class`, under
    /// `/{segment}/{name}/...`: each object owns a SQLite database
    /// (`ctx.storage().sql()`). A class keeps its kind of storage for the
    /// life of a data directory.
    pub fn sqlite_class<T: DurableObject>(self, segment: &str, class: &str) -> Self {
        self.class_as(segment, class, ClassStorage::Sqlite, T::create)
    }

    /// Like [`App::class_with`], with `storage` as the class's kind of
    /// storage.
    pub fn class_as<T, F>(
        mut self,
        segment: &str,
        class: &str,
        storage: ClassStorage,
        factory: F,
    ) -> Self
    where
        T: DurableObject,
        F: Fn(&odo_worker::Context) -> T + Send + Sync + 'static,
    {
        if self.error.is_none() {
            match self.classes.register_as(class, storage, factory) {
                Ok(_) => self.routes.push((segment.to_owned(), class.to_owned())),
                Err(e) => self.error = Some(e.into()),
            }
        }
        self
    }

    /// Answers `method` `path` with `handler`: a plain route that no object
    /// serves (a health check, a static page), matched before any object
    /// route. The demo serves `GET /hello` this way.
    ///
    /// ```
    /// use bytes::Bytes;
    ///
    /// let app = odo::App::new().route(http::Method::GET, "/health", |_request| async {
    ///     http::Response::new(Bytes::from_static(b"ok"))
    /// });
    /// # drop(app);
    /// ```
    pub fn route<F, Fut>(mut self, method: http::Method, path: &str, handler: F) -> Self
    where
        F: Fn(http::Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = http::Response<Bytes>> + Send + 'static,
    {
        self.plain = self.plain.route(method, path, handler);
        self
    }

    /// Runs the binary: the worker role when a registry started this
    /// process as a worker, otherwise the command line (`serve`). Logs go to
    /// stderr, filtered by `RUST_LOG` (default `info`).
    pub fn main(self) -> ExitCode {
        init_logging();
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("odo: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = runtime.block_on(
            self.run(
                std::env::args_os()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            ),
        );
        // Everything was shut down gracefully by now; a blocking read of
        // standard input (`--exit-on-stdin-eof`) must not hold the exit.
        runtime.shutdown_background();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("odo: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// [`App::main`] for an async caller, with explicit arguments
    /// (`args[0]` is the program).
    pub async fn run(self, args: Vec<String>) -> Result<(), OdoError> {
        match WorkerLaunch::parse(args.iter().skip(1).cloned()) {
            Ok(Some(launch)) => {
                if let Some(e) = self.error {
                    return Err(e);
                }
                // Before anything else: the registry's token line on stdin
                // (see odo_core::launch).
                let token =
                    tokio::task::spawn_blocking(|| odo_worker::read_token(std::io::stdin().lock()))
                        .await
                        .map_err(|e| OdoError::Other(format!("reading the token: {e}")))??;
                return Ok(odo_worker::serve(
                    self.classes,
                    self.backends,
                    launch,
                    token,
                    self.runtime,
                )
                .await?);
            }
            Ok(None) => {}
            Err(e) => return Err(OdoError::Launch(e)),
        }
        let cli = match parse_cli(&args, &self.backends) {
            Ok(cli) => cli,
            Err(e) => {
                // --help and --version are not errors.
                let _ = e.print();
                return if e.use_stderr() {
                    Err(OdoError::Other("bad command line".into()))
                } else {
                    Ok(())
                };
            }
        };
        match cli.command {
            Command::Serve(flags) => {
                let stdin_eof = flags.exit_on_stdin_eof;
                let mut options = flags.into_options()?;
                options.runtime = self.runtime.clone();
                let shutdown = async move {
                    tokio::select! {
                        () = shutdown_signal() => {}
                        () = stdin_closed(), if stdin_eof => info!("standard input closed: shutting down"),
                    }
                };
                self.serve(options, shutdown).await
            }
        }
    }

    /// Serves until `shutdown` resolves, then stops gracefully: the router
    /// stops accepting and finishes open requests, the workers finish
    /// in-flight events, flush and exit, and the sockets are removed.
    pub async fn serve(
        self,
        options: ServeOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), OdoError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // Before anything starts: an unknown name fails here, listing the
        // registered ones.
        let backend = self.backends.get(&options.storage)?.clone();
        crate::websockets::raise_fd_limit();
        #[cfg(feature = "postgres")]
        let (backend, worker_env) =
            crate::postgres::resolve(&options.storage, options.postgres.as_ref(), backend)?;
        #[cfg(not(feature = "postgres"))]
        let worker_env = Vec::new();
        let mut routes = PathRoutes::new(options.router.max_name_bytes);
        for (segment, class) in &self.routes {
            routes = routes.route(segment, class);
        }
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| OdoError::Listen {
                addr: options.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| OdoError::Listen {
            addr: options.listen,
            source,
        })?;
        #[cfg(feature = "cluster")]
        if let Some(cluster) = options.cluster.clone() {
            let router = |service: Arc<dyn ObjectService>| {
                Router::new(Arc::new(routes.clone()), service, options.router.clone())
                    .with_plain_routes(self.plain.clone())
            };
            return crate::cluster::serve(
                cluster,
                self.classes,
                backend,
                &options,
                listener,
                local,
                router,
                shutdown,
            )
            .await;
        }
        if options.workers == 0 {
            let local_service = LocalService::open(self.classes, backend, &options).await?;
            let door = Door::new(
                options.websocket.clone(),
                format!("local:{}", std::process::id()),
                Arc::new(local_service.clone()),
            );
            local_service
                .runtime
                .set_websocket_doors(Arc::new(crate::websockets::LocalDoors(door.clone())));
            let router = Arc::new(
                Router::new(
                    Arc::new(routes),
                    Arc::new(local_service.clone()),
                    options.router.clone(),
                )
                .with_plain_routes(self.plain.clone())
                .with_websockets(door.clone()),
            );
            info!(listen = %local, "odo serving in-process (0 workers)");
            println!("odo listening on http://{local}");
            router.serve(listener, shutdown).await;
            door.shutdown().await;
            local_service.runtime.shutdown().await;
            // The door and the runtime hold each other: let go.
            local_service.runtime.clear_websocket_doors();
            return Ok(());
        }
        let mut config = RegistryConfig::new(
            WorkerCommand::current_exe().map_err(OdoError::Registry)?,
            options.data_dir.clone(),
        );
        config.workers = options.workers;
        config.storage = options.storage.clone();
        config.transport = options.transport;
        config.runtime_dir = options.runtime_dir.clone();
        config.heartbeat_timeout = options.heartbeat_timeout;
        config.stall_limit = options.stall_limit;
        config.worker_env = worker_env;
        config.splitter = Some(Arc::new(crate::StorageSplitter::new(backend)));
        config.class_storage = class_storage(&self.classes);
        let registry = Arc::new(Registry::start(config).await?);
        registry.ready().await?;
        let client = odo_transport::ClientConfig {
            peer_name: "router".into(),
            ..odo_transport::ClientConfig::new(registry.token())
        };
        let service = odo_router::ClusterService::new(registry.placement_source(), client);
        let door_server = crate::websockets::bind_door(
            &crate::websockets::door_endpoint(registry.control_endpoint())?,
            registry.token(),
        )
        .await?;
        let door = Door::new(
            options.websocket.clone(),
            door_server.endpoint().to_string(),
            Arc::new(service.clone()),
        );
        let (stop_door, door_stopped) = tokio::sync::oneshot::channel::<()>();
        let door_serving = crate::websockets::serve_door(door_server, door.clone(), async move {
            let _ = door_stopped.await;
        });
        let router = Arc::new(
            Router::new(Arc::new(routes), Arc::new(service), options.router.clone())
                .with_plain_routes(self.plain.clone())
                .with_admin(Arc::new(crate::admin::RegistryAdmin(registry.clone())))
                .with_websockets(door.clone()),
        );
        info!(listen = %local, workers = options.workers, "odo serving");
        println!("odo listening on http://{local}");
        let rolling = tokio::spawn(restart_on_hangup(registry.clone()));
        router.serve(listener, shutdown).await;
        rolling.abort();
        let _ = rolling.await;
        // Every socket closes (1001) and its object hears of it while the
        // workers still run.
        door.shutdown().await;
        let _ = stop_door.send(());
        let _ = door_serving.await;
        match Arc::try_unwrap(registry) {
            Ok(registry) => registry.shutdown().await,
            Err(_) => {
                return Err(OdoError::Other(
                    "the registry is still in use at shutdown".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The log filter when `RUST_LOG` is not set: odo at `info`, the storage
/// engine's own per-file chatter (fjall, lsm-tree) only from `warn`.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let color = log_color(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether logs are colored: only on a terminal, and not when `NO_COLOR`
/// is set to a non-empty value (<https://no-color.org>). A log written to a
/// file or a pipe carries no escape codes.
fn log_color(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Restarts the workers one after another on each SIGHUP
/// ([`Registry::restart_workers`]: their shards, and the WebSockets of
/// their objects, move to the other workers and back; nothing is dropped).
/// Never returns; aborted at shutdown.
async fn restart_on_hangup(registry: Arc<Registry>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            while hangup.recv().await.is_some() {
                info!("SIGHUP: restarting the workers one after another");
                match registry.restart_workers().await {
                    Ok(()) => info!("every worker restarted"),
                    Err(e) => tracing::warn!(error = %e, "the rolling restart stopped"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(registry);
    std::future::pending::<()>().await;
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("signal received: shutting down");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    info!("Ctrl-C received: shutting down");
}

/// Resolves when standard input reaches end of file (or fails).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Parses the command line, with `--storage`'s help listing the backends
/// `backends` holds.
fn parse_cli(args: &[String], backends: &Backends) -> Result<Cli, clap::Error> {
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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct ServeFlags {
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
    #[arg(long, default_value_t = 30_000)]
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
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
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
    #[arg(long, default_value_t = 100_000)]
    max_websockets: usize,
    /// The largest WebSocket message a client may send, in bytes; larger
    /// closes the socket with 1009.
    #[arg(long, default_value_t = 32 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_max_message_bytes: u64,
    /// The bytes queued for one WebSocket at most; a client that stops
    /// reading is closed with 1008.
    #[arg(long, default_value_t = 1024 * 1024)]
    websocket_send_buffer_bytes: usize,
    /// A WebSocket silent for this long is pinged, and closed as half-open
    /// if it stays silent as long again, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_idle_timeout_ms: u64,
    /// The events of one object waiting for delivery at most (while its
    /// worker is replaced); a message beyond closes its socket with 1013.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    websocket_object_buffer: u64,
    /// Shut down gracefully when standard input reaches end of file (for
    /// supervisors and test harnesses that hold a pipe to the server).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
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
    fn into_options(self) -> Result<ServeOptions, OdoError> {
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
                max_connections: self.max_connections,
                ..RouterConfig::default()
            },
            websocket: WebSocketConfig {
                max_sockets: self.max_websockets,
                max_message_bytes: self.websocket_max_message_bytes as usize,
                send_buffer_bytes: self.websocket_send_buffer_bytes,
                idle_timeout: std::time::Duration::from_millis(self.websocket_idle_timeout_ms),
                object_buffer_events: self.websocket_object_buffer as usize,
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

/// What `odo serve --cluster` says in a build without cluster support.
#[cfg(not(feature = "cluster"))]
const NO_CLUSTER: &str = "this odo was built without cluster support: build it with the `cluster` feature (`cargo build --release -p odo --features cluster`; the etcd client needs protoc at build time: `apt-get install protobuf-compiler`)";
/// Each class with its kind of storage, as the data directory records it.
fn class_storage(classes: &Classes) -> Vec<(String, String)> {
    classes
        .storage_kinds()
        .into_iter()
        .map(|(class, kind)| (class, kind.as_str().to_owned()))
        .collect()
}

/// Objects hosted in this process (0 workers): the same runtime a worker
/// runs, without the process boundary.
#[derive(Clone)]
struct LocalService {
    runtime: Runtime,
    /// Held while the service lives: one server per data directory.
    _data_lock: Arc<odo_registry::DataDirLock>,
}

impl LocalService {
    async fn open(
        classes: Classes,
        backend: Arc<dyn BackendFactory>,
        options: &ServeOptions,
    ) -> Result<Self, OdoError> {
        let data_lock = odo_registry::DataDirLock::acquire(&options.data_dir)?;
        data_lock.record_class_storage(&class_storage(&classes))?;
        // One process holds every shard: nothing to split, but a split a
        // crash left unfinished is finished before anything is served.
        let splitter = crate::StorageSplitter::new(backend.clone());
        let shards = data_lock.prepare_shards(1, 1, Some(&splitter)).await?;
        let runtime = Runtime::new(classes, options.runtime.clone(), shards);
        for shard in 0..shards {
            let spec = ShardSpec::new(&options.data_dir, shard, 1);
            let store_options = runtime.store_options(&spec, backend.durable());
            let opened = backend.open(spec).await?;
            let store = Store::open_shared(opened, store_options)?;
            runtime
                .open_shard(shard, 1, store)
                .map_err(|e| OdoError::Other(e.to_string()))?;
        }
        Ok(Self {
            runtime,
            _data_lock: Arc::new(data_lock),
        })
    }
}

impl ObjectService for LocalService {
    // In-process: the request goes to the runtime as it is, with no wire
    // conversion at all.
    fn fetch(
        &self,
        object: ObjectAddress,
        request: http::Request<Bytes>,
        deadline: Instant,
    ) -> BoxFuture<'static, Result<http::Response<Bytes>, ForwardError>> {
        let runtime = self.runtime.clone();
        async move {
            let scope = CallScope {
                deadline,
                chain: Arc::from([]),
            };
            Ok(runtime.fetch_within(object, None, request, scope).await?)
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
        let runtime = self.runtime.clone();
        async move {
            let scope = CallScope {
                deadline,
                chain: Arc::from([]),
            };
            Ok(runtime
                .call_within(object, None, RpcCall { method, args }, scope)
                .await?)
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
        let runtime = self.runtime.clone();
        async move {
            let shard = object.id.shard(runtime.shard_count());
            let event = odo_core::socket::SocketEvent {
                target: odo_core::wire::Target {
                    object,
                    shard,
                    epoch: runtime.shard_epoch(shard).unwrap_or(0),
                },
                meta: odo_core::wire::CallMeta::default(),
                door: event.door,
                socket: event.socket,
                auto_response_ms: event.auto_response_ms,
                kind: event.kind,
            };
            let scope = CallScope {
                deadline,
                chain: Arc::from([]),
            };
            Ok(runtime.socket_event(event, None, payload, scope).await?)
        }
        .boxed()
    }

    fn locate(&self, id: &ObjectId) -> Option<Location> {
        let shard = id.shard(self.runtime.shard_count());
        Some(Location {
            shard,
            epoch: self.runtime.shard_epoch(shard).unwrap_or(0),
            pid: Some(std::process::id()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::time::Duration;

    use super::*;

    #[test]
    fn logs_are_colored_only_on_a_terminal_without_no_color() {
        assert!(log_color(true, None));
        assert!(log_color(true, Some(OsStr::new(""))));
        assert!(!log_color(true, Some(OsStr::new("1"))));
        assert!(!log_color(false, None));
        assert!(!log_color(false, Some(OsStr::new("1"))));
    }

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
    fn a_backend_name_registered_twice_fails_the_app() {
        let app = App::new().backend(odo_storage::MemoryFactory);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let result = runtime.block_on(app.serve(ServeOptions::default(), async {}));
        assert!(
            matches!(
                result,
                Err(OdoError::Backend(odo_storage::BackendsError::Duplicate { ref name }))
                    if name == "memory"
            ),
            "{result:?}"
        );
    }

    #[test]
    fn front_door_flags() {
        let defaults = serve_options(&[]).unwrap().router;
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
        assert_eq!(defaults.max_connections, 10_000);
        let router = serve_options(&[
            "--header-read-timeout-ms",
            "250",
            "--idle-timeout-ms",
            "5000",
            "--max-connections",
            "7",
        ])
        .unwrap()
        .router;
        assert_eq!(router.header_read_timeout, Duration::from_millis(250));
        assert_eq!(router.idle_timeout, Duration::from_secs(5));
        assert_eq!(router.max_connections, 7);
        assert!(serve_options(&["--header-read-timeout-ms", "0"]).is_err());
        assert!(serve_options(&["--idle-timeout-ms", "0"]).is_err());
    }
}
