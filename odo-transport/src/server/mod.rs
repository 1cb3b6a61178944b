//! The server side: bind, accept, handshake, and handle each connection's
//! requests concurrently until shutdown.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::codec;
use odo_core::wire::{Request, Response};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Admitted, LogLimiter};
use crate::endpoint::Endpoint;
use crate::framing::DEFAULT_MAX_FRAME_LEN;
use crate::handshake::MAX_TOKEN_LEN;
use crate::stream::Stream;
use crate::upgrade::TcpUpgrade;

mod connection;

use connection::{Connection, DropLogs};

/// The default cap on connections that have not completed the handshake.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;

/// How often a server logs connections it drops before their handshake
/// (and peers it turns away at its connection limit): one line per
/// interval, counting the others, so a flood of strangers cannot flood the
/// log.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Answers requests. One handler serves every connection of a server, and
/// calls are handled concurrently.
///
/// The future [`Handler::handle`] returns is first polled on the
/// connection's own task: if it completes without waiting (a cache hit, an
/// echo), it costs no task at all. If it waits, it continues in a task of
/// its own, so a slow call never holds up the others on its connection. A
/// handler must therefore not block the thread before its first `.await`
/// (use `spawn_blocking` for heavy work).
///
/// When the caller cancels (deadline or dropped call) or its connection
/// dies, the future is dropped: handlers that must not stop half-way should
/// hand their work to a task they own.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request and its body, returning the response and its
    /// body.
    fn handle(
        &self,
        request: Request,
        body: Bytes,
    ) -> impl Future<Output = (Response, Bytes)> + Send;
}

/// A [`Handler`] made from an async function or closure; see
/// [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from a function returning a future, such as
/// `handler_fn(|request, body| async move { (Response::Rpc, body) })`.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Request, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Response, Bytes)> + Send + 'static,
{
    HandlerFn { f }
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Request, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Response, Bytes)> + Send + 'static,
{
    fn handle(
        &self,
        request: Request,
        body: Bytes,
    ) -> impl Future<Output = (Response, Bytes)> + Send {
        (self.f)(request, body)
    }
}

/// How a server listens and which limits it enforces.
#[derive(Clone)]
pub struct ServerConfig {
    /// The cluster's shared token every client must present. Must not be
    /// empty, nor longer than [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN).
    pub token: String,
    /// This server's name, sent in the handshake answer (`worker 3`); cut
    /// to [`MAX_PEER_NAME_LEN`](crate::MAX_PEER_NAME_LEN) bytes.
    pub peer_name: String,
    /// The bound on one frame, sent or received, once the handshake is
    /// done. Default 16 MiB. Before it, frames are bounded to
    /// [`MAX_HANDSHAKE_FRAME_LEN`](crate::MAX_HANDSHAKE_FRAME_LEN) whatever
    /// this says.
    pub max_frame_len: usize,
    /// How long a new connection may take to complete the handshake before
    /// it is dropped. Default 5 s.
    pub handshake_timeout: Duration,
    /// A frame begun whose bytes stop coming for about this long (between
    /// one and two of it) drops its connection. Idle connections between
    /// frames are not concerned. Default 5 s.
    pub frame_stall_timeout: Duration,
    /// Answers a peer has not read yet, in bytes, past which its next
    /// requests are not read until it reads (the answer that crosses it is
    /// still queued whole). Default 8 MiB.
    pub max_unsent_bytes: usize,
    /// Requests one connection may have running at once (those whose
    /// handler did not answer at its first poll). At the bound, the
    /// connection's next frames wait unread in the socket until one of
    /// them ends, so a peer that sends requests faster than they end
    /// cannot make the server hold a task and a body for each without
    /// end. Must be at least 1. Default 16,384: above the front door's
    /// default cap on HTTP connections (10,000), so one router's channel
    /// is not held back before its own clients are.
    pub max_requests_in_flight: usize,
    /// How many authenticated peers may be connected at once. A connection
    /// takes one of these places only once its handshake succeeded; a peer
    /// that finds them all taken is closed right after its handshake (it
    /// sees [`ConnectError::ClosedDuringHandshake`](crate::ConnectError)),
    /// with a log line. Connections still in their handshake do not count
    /// here: see [`ServerConfig::max_unauthenticated`]. Default 1024.
    pub max_connections: usize,
    /// How many connections may be in their handshake (not yet
    /// authenticated) at once. A new connection that finds this cap full
    /// is still accepted at once: the oldest unauthenticated connection is
    /// closed to make room. A real peer authenticates within a round trip,
    /// so silent or slow strangers are the ones that go, and they can never
    /// keep a real peer out or take its place. Default
    /// [`DEFAULT_MAX_UNAUTHENTICATED`] (64).
    pub max_unauthenticated: usize,
    /// How long a graceful shutdown waits for requests in flight before
    /// aborting them. Default 10 s.
    pub shutdown_grace: Duration,
    /// Allow binding a TCP endpoint that is not a loopback address (such
    /// as `tcp:0.0.0.0:7000`). Default false: only loopback.
    pub allow_non_loopback: bool,
    /// A layer over accepted TCP connections (TLS), within the handshake
    /// timeout. Default none.
    pub upgrade: Option<Arc<dyn TcpUpgrade>>,
    /// How long data this server sends on an accepted TCP connection may
    /// stay unacknowledged before the kernel gives the connection up
    /// (`TCP_USER_TIMEOUT`, on Linux; ignored elsewhere), as
    /// [`ClientConfig::tcp_user_timeout`](crate::ClientConfig::tcp_user_timeout)
    /// on the calling side: answers to a peer that went silent (a
    /// partition, a host that vanished) end the connection and the calls
    /// it still runs are dropped, instead of the kernel's ~15 minutes of
    /// retransmissions. Default 5 s; `None` keeps the kernel's behaviour.
    pub tcp_user_timeout: Option<Duration>,
    /// How often a server on a Unix socket checks that its socket file is
    /// still there, and makes it again if not: a cleaner of temporary
    /// files (systemd-tmpfiles ages `/tmp` out after 10 days) may remove
    /// it, or its whole directory, under a long-running server, and no
    /// new peer could connect after that. One `stat` per check. Default
    /// 1 s.
    pub socket_file_check: Duration,
}

impl ServerConfig {
    /// A configuration with this token and default limits.
    pub fn new(token: impl Into<String>) -> ServerConfig {
        ServerConfig {
            token: token.into(),
            peer_name: "server".into(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(5),
            frame_stall_timeout: Duration::from_secs(5),
            max_unsent_bytes: 8 * 1024 * 1024,
            max_requests_in_flight: 16_384,
            max_connections: 1024,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            shutdown_grace: Duration::from_secs(10),
            allow_non_loopback: false,
            upgrade: None,
            tcp_user_timeout: Some(Duration::from_secs(5)),
            socket_file_check: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("token", &"<redacted>")
            .field("peer_name", &self.peer_name)
            .field("max_frame_len", &self.max_frame_len)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("frame_stall_timeout", &self.frame_stall_timeout)
            .field("max_unsent_bytes", &self.max_unsent_bytes)
            .field("max_requests_in_flight", &self.max_requests_in_flight)
            .field("max_connections", &self.max_connections)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("allow_non_loopback", &self.allow_non_loopback)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("socket_file_check", &self.socket_file_check)
            .field("upgrade", &self.upgrade)
            .finish()
    }
}

/// Why [`Server::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something already listens on the endpoint.
    #[error("{endpoint} is in use: another server is listening on it")]
    AddrInUse {
        /// The endpoint asked for.
        endpoint: Endpoint,
    },
    /// The TCP endpoint is not a loopback address and
    /// [`ServerConfig::allow_non_loopback`] is not set.
    #[error(
        "{endpoint} is not a loopback address ({addr}); set allow_non_loopback to listen beyond this machine"
    )]
    NonLoopback {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// The offending address.
        addr: IpAddr,
    },
    /// The host name resolved to no address.
    #[error("{endpoint}: the host resolves to no address")]
    Unresolved {
        /// The endpoint asked for.
        endpoint: Endpoint,
    },
    /// The socket's directory exists and others may enter it.
    #[error(
        "socket directory {} has mode {mode:o}: it must be private (0700); fix it with chmod 700",
        dir.display()
    )]
    DirectoryNotPrivate {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The socket's directory belongs to another user.
    #[error("socket directory {} is owned by uid {owner}, not by us (uid {us})", dir.display())]
    DirectoryOwner {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        us: u32,
    },
    /// The socket's directory path names something else.
    #[error("socket directory {} is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// The socket's directory could not be created or inspected.
    #[error("cannot create socket directory {}: {source}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The socket path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The configuration is unusable.
    #[error("invalid server configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
    /// Any other failure to listen.
    #[error("cannot listen on {endpoint}: {source}")]
    Io {
        /// The endpoint asked for.
        endpoint: Endpoint,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    #[cfg(unix)]
    Unix {
        listener: tokio::net::UnixListener,
        /// Removes the socket file when the server is dropped.
        file: crate::unix::SocketFile,
    },
    #[cfg(windows)]
    Pipe {
        name: String,
        next: tokio::net::windows::named_pipe::NamedPipeServer,
    },
}

impl Listener {
    /// Whether it listens on a socket file (which
    /// [`Listener::keep_socket_file`] keeps): TCP and named pipes have none.
    fn has_socket_file(&self) -> bool {
        #[cfg(unix)]
        if let Listener::Unix { .. } = self {
            return true;
        }
        false
    }

    /// Makes the socket file again if it is gone (a cleaner of temporary
    /// files removed it, or its directory) or another file took its path:
    /// a new listener there replaces this one. Connections accepted
    /// before stay. A no-op for TCP (and named pipes).
    ///
    /// Returns whether the socket file is in place: a path another live
    /// server took is not taken back, and the caller checks less often.
    async fn keep_socket_file(&mut self, endpoint: &Endpoint, logs: &LogLimiter) -> bool {
        #[cfg(unix)]
        if let Listener::Unix { listener, file } = self {
            if file.in_place() {
                return true;
            }
            let path = file.path().to_owned();
            match crate::unix::bind(endpoint, &path).await {
                Ok((fresh, fresh_file)) => {
                    *listener = fresh;
                    // The old file's guard leaves the new file alone: it
                    // is another one.
                    *file = fresh_file;
                    warn!(%endpoint, "the socket file was removed under this server: listening on a new one");
                }
                Err(error) => {
                    if let Some(held_back) = logs.allow() {
                        warn!(%endpoint, %error, held_back, "the socket file was removed under this server, and making it again failed");
                    }
                    return false;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (endpoint, logs);
        true
    }

    /// Accepts one connection, with a description of the peer for logs; a
    /// TCP one with `user_timeout` (`TCP_USER_TIMEOUT`) set.
    async fn accept(&mut self, user_timeout: Option<Duration>) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, addr) = listener.accept().await?;
                stream.set_nodelay(true)?;
                if let Err(e) = crate::channel::set_user_timeout(&stream, user_timeout) {
                    warn!(peer = %addr, error = %e, "cannot set TCP_USER_TIMEOUT on an accepted connection");
                }
                Ok((Stream::Tcp(stream), addr.to_string()))
            }
            #[cfg(unix)]
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), "unix peer".into()))
            }
            #[cfg(windows)]
            Listener::Pipe { name, next } => {
                next.connect().await?;
                let fresh = pipe_instance(name, false)?;
                let connected = std::mem::replace(next, fresh);
                Ok((Stream::PipeServer(connected), "pipe peer".into()))
            }
        }
    }
}

#[cfg(windows)]
fn pipe_instance(
    name: &str,
    first: bool,
) -> io::Result<tokio::net::windows::named_pipe::NamedPipeServer> {
    tokio::net::windows::named_pipe::ServerOptions::new()
        .first_pipe_instance(first)
        .reject_remote_clients(true)
        .create(name)
}

/// A bound server, listening; [`Server::serve`] accepts and handles
/// connections.
pub struct Server {
    listener: Listener,
    endpoint: Endpoint,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// Starts listening on `endpoint`. When this returns, clients can
    /// connect (their connections wait in the backlog until
    /// [`Server::serve`] runs).
    ///
    /// A Unix socket is created inside a private directory (created with
    /// mode 0700 if missing; refused if others can enter it or another user
    /// owns it) with mode 0600. A stale socket file is replaced only when
    /// nothing listens on it. A TCP endpoint must be a loopback address
    /// unless [`ServerConfig::allow_non_loopback`] is set.
    pub async fn bind(endpoint: &Endpoint, config: ServerConfig) -> Result<Server, BindError> {
        if config.token.is_empty() {
            return Err(BindError::Config {
                reason: "the token is empty",
            });
        }
        if config.token.len() > MAX_TOKEN_LEN {
            return Err(BindError::Config {
                reason: "the token is longer than MAX_TOKEN_LEN (512 bytes)",
            });
        }
        if config.max_frame_len < codec::HEADER_LEN || config.max_frame_len > u32::MAX as usize {
            return Err(BindError::Config {
                reason: "max_frame_len must be between the frame header size and 4 GiB",
            });
        }
        if config.max_connections == 0 {
            return Err(BindError::Config {
                reason: "max_connections must be at least 1",
            });
        }
        if config.max_requests_in_flight == 0 {
            return Err(BindError::Config {
                reason: "max_requests_in_flight must be at least 1",
            });
        }
        if config.frame_stall_timeout.is_zero() {
            return Err(BindError::Config {
                reason: "frame_stall_timeout must be more than zero",
            });
        }
        if config.max_unauthenticated == 0 {
            return Err(BindError::Config {
                reason: "max_unauthenticated must be at least 1",
            });
        }
        let (listener, bound) = match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let (listener, file) = crate::unix::bind(endpoint, path).await?;
                (Listener::Unix { listener, file }, endpoint.clone())
            }
            Endpoint::Tcp { host, port } => bind_tcp(endpoint, host, *port, &config).await?,
            #[cfg(windows)]
            Endpoint::Pipe(name) => {
                let first = pipe_instance(name, true).map_err(|source| match source.kind() {
                    io::ErrorKind::PermissionDenied => BindError::AddrInUse {
                        endpoint: endpoint.clone(),
                    },
                    _ => BindError::Io {
                        endpoint: endpoint.clone(),
                        source,
                    },
                })?;
                (
                    Listener::Pipe {
                        name: name.clone(),
                        next: first,
                    },
                    endpoint.clone(),
                )
            }
        };
        info!(endpoint = %bound, "listening");
        Ok(Server {
            listener,
            endpoint: bound,
            config: Arc::new(config),
        })
    }

    /// The endpoint the server actually listens on: for `tcp:…:0`, with the
    /// port the system picked.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Accepts connections and handles their requests with `handler` until
    /// `shutdown` resolves; then stops accepting, removes a Unix socket
    /// file, lets requests in flight finish (up to
    /// [`ServerConfig::shutdown_grace`], then aborts them), and returns.
    pub async fn serve<H: Handler>(self, handler: Arc<H>, shutdown: impl Future<Output = ()>) {
        let Server {
            mut listener,
            endpoint,
            config,
        } = self;
        let admission = Admission::new(config.max_unauthenticated, config.max_connections);
        let logs = Arc::new(DropLogs {
            strangers: LogLimiter::new(DROP_LOG_INTERVAL),
            full: LogLimiter::new(DROP_LOG_INTERVAL),
        });
        let draining = CancellationToken::new();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let rebind_logs = LogLimiter::new(DROP_LOG_INTERVAL);
        let accept_logs = LogLimiter::new(DROP_LOG_INTERVAL);
        let mut check =
            tokio::time::interval(config.socket_file_check.max(Duration::from_millis(1)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a failed try at making the socket again (another server
        // took the path), checks skipped, doubling up to 64.
        let (mut skip, mut backoff) = (0_u32, 0_u32);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = check.tick(), if listener.has_socket_file() => {
                    if skip > 0 {
                        skip -= 1;
                    } else if listener.keep_socket_file(&endpoint, &rebind_logs).await {
                        backoff = 0;
                    } else {
                        backoff = (backoff * 2).clamp(1, 64);
                        skip = backoff;
                    }
                }
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        warn!(%endpoint, "a connection task panicked");
                    }
                }
                accepted = listener.accept(config.tcp_user_timeout) => match accepted {
                    Ok((stream, peer)) => {
                        // Never refused nor queued here: with the
                        // unauthenticated cap full, the oldest stranger
                        // makes room (and logs its own close).
                        let Admitted { pending, evicted_another } = admission.admit();
                        if evicted_another {
                            debug!(%endpoint, %peer, "unauthenticated cap full: closing the oldest to make room");
                        }
                        let conn = Connection {
                            config: config.clone(),
                            handler: handler.clone(),
                            draining: draining.clone(),
                            peer,
                            logs: logs.clone(),
                        };
                        connections.spawn(conn.upgrade_and_run(stream, pending));
                    }
                    Err(e) => {
                        // Out of descriptors, this lasts: one line per
                        // interval (it was 20 a second), saying how many
                        // went unlogged.
                        match accept_logs.allow() {
                            Some(unlogged) => warn!(%endpoint, error = %e, unlogged, "accept failed"),
                            None => debug!(%endpoint, error = %e, "accept failed"),
                        }
                        // Out of file descriptors and the like: give the
                        // system a moment instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        info!(%endpoint, connections = connections.len(), "shutting down: no longer accepting");
        draining.cancel();
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                %endpoint, connections = connections.len(), grace = ?config.shutdown_grace,
                "shutdown grace period over: aborting requests still in flight"
            );
            connections.shutdown().await;
        }
        info!(%endpoint, "server stopped");
    }
}

async fn bind_tcp(
    endpoint: &Endpoint,
    host: &str,
    port: u16,
    config: &ServerConfig,
) -> Result<(Listener, Endpoint), BindError> {
    let io_error = |source: io::Error| BindError::Io {
        endpoint: endpoint.clone(),
        source,
    };
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(io_error)?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(BindError::Unresolved {
            endpoint: endpoint.clone(),
        });
    }
    if !config.allow_non_loopback
        && let Some(addr) = addrs.iter().find(|a| !a.ip().is_loopback())
    {
        return Err(BindError::NonLoopback {
            endpoint: endpoint.clone(),
            addr: addr.ip(),
        });
    }
    let mut last_error = None;
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                let local = listener.local_addr().map_err(io_error)?;
                let bound = Endpoint::Tcp {
                    host: local.ip().to_string(),
                    port: local.port(),
                };
                return Ok((Listener::Tcp(listener), bound));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) if e.kind() == io::ErrorKind::AddrInUse => BindError::AddrInUse {
            endpoint: endpoint.clone(),
        },
        Some(e) => io_error(e),
        None => BindError::Unresolved {
            endpoint: endpoint.clone(),
        },
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::{Listener, Stream};

    #[tokio::test]
    async fn accepted_tcp_connections_carry_the_user_timeout() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = tcp.local_addr().expect("address");
        let mut listener = Listener::Tcp(tcp);
        for (asked, seen) in [(Some(Duration::from_millis(2500)), 2500), (None, 0)] {
            let _client = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            let Ok((Stream::Tcp(stream), _)) = listener.accept(asked).await else {
                panic!("no TCP stream");
            };
            let set = rustix::net::sockopt::tcp_user_timeout(&stream).expect("getsockopt");
            assert_eq!(set, seen, "asked {asked:?}");
        }
    }
}
