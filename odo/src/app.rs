//! Building and running a server around object classes: the registry and
//! its workers, or an in-process runtime, behind the HTTP front door.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::launch::WorkerLaunch;
use odo_registry::{Registry, RegistryConfig, TransportKind, WorkerCommand};
use odo_router::{Door, PathRoutes, PlainRoutes, Router, RouterConfig, WebSocketConfig};
use odo_storage::{BackendFactory, Backends};
use odo_worker::{ClassError, ClassStorage, Classes, DurableObject, RuntimeConfig};
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
    /// Limits of the front door's WebSockets. Its `max_message_bytes` is
    /// the whole server's: it replaces the runtime's
    /// `websocket_max_message_bytes`, so objects receive every message the
    /// door lets through.
    pub websocket: WebSocketConfig,
    /// Limits of the object runtime (used by the workers, or in-process),
    /// but for its WebSocket message limit (see `websocket`).
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
    ///
    /// On Linux it first turns transparent huge pages off for this process
    /// and the workers it starts (which inherit the setting): an allocator
    /// given 2 MiB pages keeps whole pages resident where it touched a few
    /// KiB, and a fresh worker took 21 MB instead of 11.5 MB.
    pub fn main(self) -> ExitCode {
        #[cfg(target_os = "linux")]
        let huge_pages = rustix::thread::disable_transparent_huge_pages(true);
        let _log = crate::signals::init_logging();
        #[cfg(target_os = "linux")]
        if let Err(e) = huge_pages {
            tracing::debug!("transparent huge pages stay as the system sets them: {e}");
        }
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(e) => {
                crate::signals::complain(format_args!("odo: cannot start the async runtime: {e}"));
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
                crate::signals::complain(format_args!("odo: {e}"));
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
        let cli = match crate::cli::parse_cli(&args, &self.backends) {
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
            crate::cli::Command::Serve(flags) => {
                let stdin_eof = flags.exit_on_stdin_eof;
                let mut options = flags.into_options()?;
                options.runtime = self.runtime.clone();
                let signalled = crate::signals::shutdown_signal();
                let shutdown = async move {
                    tokio::select! {
                        () = signalled => {}
                        () = crate::signals::stdin_closed(), if stdin_eof => info!("standard input closed: shutting down"),
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
        mut options: ServeOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), OdoError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // One message limit for the whole server: objects receive every
        // message the front door lets through (in this process and in the
        // workers, which get it on their command line).
        options.runtime.websocket_max_message_bytes = options.websocket.max_message_bytes;
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
            let router = |service: Arc<dyn odo_router::ObjectService>| {
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
            let local_service =
                crate::local::LocalService::open(self.classes, backend, &options).await?;
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
            crate::signals::say(format_args!("odo listening on http://{local}"));
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
        config.storage_durable = backend.durable();
        config.transport = options.transport;
        config.runtime_dir = options.runtime_dir.clone();
        config.heartbeat_timeout = options.heartbeat_timeout;
        config.stall_limit = options.stall_limit;
        config.worker_env = worker_env;
        config.websocket_max_message_bytes = options.websocket.max_message_bytes;
        config.splitter = Some(Arc::new(crate::StorageSplitter::new(backend)));
        config.class_storage = crate::local::class_storage(&self.classes);
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
        crate::signals::say(format_args!("odo listening on http://{local}"));
        let rolling = tokio::spawn(crate::signals::restart_on_hangup(registry.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
