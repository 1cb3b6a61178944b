//! The server side: bind, accept, handshake, and handle each connection's
//! requests concurrently until shutdown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Message, Request, Response, WireError};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Admitted, LogLimiter, NotAdmitted, Pending};
use crate::endpoint::Endpoint;
use crate::framing::{
    CloseReason, DEFAULT_MAX_FRAME_LEN, EncodeError, FrameReader, FrameSink, encode_frame,
    handshake_reader, holds_whole_frame, lift_bound, with_encoded,
};
use crate::handshake::{
    MAX_HANDSHAKE_FRAME_LEN, MAX_TOKEN_LEN, judge_first_frame, refused_frame, welcome_frame,
};
use crate::stream::{Stream, WriteHalf};
use crate::upgrade::TcpUpgrade;

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

/// The server's rate-limited logs of connections it drops.
struct DropLogs {
    /// Connections dropped before their handshake completed.
    strangers: LogLimiter,
    /// Peers turned away at the authenticated cap.
    full: LogLimiter,
}

/// One accepted connection.
struct Connection<H> {
    config: Arc<ServerConfig>,
    handler: Arc<H>,
    /// Fires at shutdown: take no new requests, finish those in flight.
    draining: CancellationToken,
    peer: String,
    logs: Arc<DropLogs>,
}

impl<H: Handler> Connection<H> {
    /// Upgrades a TCP connection (TLS) if the server is set to, within the
    /// handshake timeout, then runs it.
    async fn upgrade_and_run(self, stream: Stream, pending: Pending) {
        let stream = match (self.config.upgrade.clone(), stream) {
            (Some(upgrade), Stream::Tcp(tcp)) => {
                // Held to the unauthenticated cap and to shutdown from the
                // first byte: a stranger stalled in its TLS handshake once
                // ignored both until its timeout (5,000 of them took the
                // server to 4,131 descriptors).
                let upgrade =
                    tokio::time::timeout(self.config.handshake_timeout, upgrade.accept(tcp));
                let Some(upgraded) = self
                    .unless_dropped(pending.evicted(), "upgrade", upgrade)
                    .await
                else {
                    return;
                };
                match upgraded {
                    Ok(Ok(io)) => match crate::upgrade::bridge(io) {
                        Ok(stream) => stream,
                        Err(e) => {
                            return self
                                .stranger_dropped("cannot bridge the upgraded connection", e);
                        }
                    },
                    Ok(Err(e)) => {
                        return self.stranger_dropped("the connection's upgrade (TLS) failed", e);
                    }
                    Err(_) => {
                        return self.stranger_dropped(
                            "the connection's upgrade (TLS) timed out",
                            format_args!("after {:?}", self.config.handshake_timeout),
                        );
                    }
                }
            }
            (_, stream) => stream,
        };
        self.run(stream, pending).await;
    }

    async fn run(self, stream: Stream, pending: Pending) {
        let (read, write) = stream.into_split();
        // Until the handshake is done, a frame is at most a handshake's size
        // and the buffer about as big.
        let mut frames = handshake_reader(read);
        let evicted = pending.evicted();
        let handshake = self.handshake(&mut frames, &write, pending);
        let Some(established) = self.unless_dropped(evicted, "handshake", handshake).await else {
            return;
        };
        let Some((client, _permit)) = established else {
            return;
        };
        lift_bound(&mut frames, self.config.max_frame_len);
        debug!(peer = %self.peer, client = %client, "connection established");

        let sink = Arc::new(FrameSink::new(write));
        // However this task ends (even aborted), the socket is let go.
        let _close = CloseOnDrop(sink.clone());
        let write_failed = CancellationToken::new();
        let writer = {
            let sink = sink.clone();
            let write_failed = write_failed.clone();
            let peer = self.peer.clone();
            tokio::spawn(async move {
                if let Err(reason) = sink.run().await {
                    debug!(%peer, %reason, "write failed");
                    write_failed.cancel();
                }
            })
        };

        let mut requests = JoinSet::new();
        let mut in_flight: HashMap<u64, AbortHandle> = HashMap::new();
        let mut draining = false;
        // A frame begun must go on arriving: checked once per stall
        // timeout, by frames read and bytes buffered since the last check
        // (a peer that stopped 4 KiB short of a 16 MiB frame held those
        // 16 MiB for good).
        let mut stall_check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.frame_stall_timeout,
            self.config.frame_stall_timeout,
        );
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut frames_read, mut checked) = (0_u64, (0_u64, 0_usize));
        // Pinned once: a fresh `cancelled()` future per frame would register
        // with the token again each time.
        let mut shutdown = std::pin::pin!(self.draining.cancelled());
        let mut write_failed = std::pin::pin!(write_failed.cancelled());
        // `None`: drained after a shutdown; `Some`: the connection is gone.
        let closed = loop {
            if draining && requests.is_empty() {
                break None;
            }
            let backlogged = sink.unsent() > self.config.max_unsent_bytes;
            if backlogged {
                // Answers held back while a burst of requests was read
                // would never go out: only reading the next frame uncorks
                // (a review found every call of such a burst lost).
                sink.uncork();
            }
            tokio::select! {
                biased;
                Some(done) = requests.join_next(), if !requests.is_empty() => {
                    // Aborted (cancelled) tasks were removed when cancelled.
                    if let Ok(id) = done {
                        in_flight.remove(&id);
                    }
                }
                _ = &mut shutdown, if !draining => {
                    debug!(peer = %self.peer, in_flight = requests.len(), "draining connection");
                    draining = true;
                }
                _ = &mut write_failed => break Some(CloseReason::Io {
                    kind: io::ErrorKind::BrokenPipe,
                    message: "writing to the peer failed".into(),
                }),
                _ = stall_check.tick() => {
                    let now = (frames_read, frames.read_buffer().len());
                    // Not while this side holds the reading back (an honest
                    // peer slow to read its answers is not a stalled one):
                    // the next check starts over.
                    if backlogged {
                        checked = (u64::MAX, 0);
                        continue;
                    }
                    if now.1 > 0 && now == checked {
                        break Some(CloseReason::Protocol {
                            reason: format!(
                                "a frame stalled: {} bytes of it and nothing more for {:?}",
                                now.1, self.config.frame_stall_timeout
                            ),
                        });
                    }
                    checked = now;
                }
                // Answers the peer has not read past the bound: its next
                // requests wait in the socket until it reads (they were
                // taken, and their answers queued, without end).
                () = sink.room(self.config.max_unsent_bytes), if backlogged => {}
                next = frames.next(), if !backlogged => {
                    frames_read += 1;
                    let bytes = match next {
                        None => break Some(CloseReason::PeerClosed),
                        Some(Err(e)) => break Some(CloseReason::from_read_error(e, self.config.max_frame_len)),
                        Some(Ok(bytes)) => bytes.freeze(),
                    };
                    // While more whole requests wait in the read buffer, hold
                    // the answers back and write them together.
                    sink.cork();
                    let requests = if draining { None } else { Some(&mut requests) };
                    let handled = self.on_frame(bytes, requests, &mut in_flight, &sink);
                    if !holds_whole_frame(frames.read_buffer()) {
                        sink.uncork();
                    }
                    if let Err(reason) = handled {
                        break Some(reason);
                    }
                }
            }
        };
        match closed {
            None => {
                // Every response is sent or queued: let the writer flush
                // them, then close the connection.
                sink.finish();
                let _ = writer.await;
                debug!(peer = %self.peer, "connection drained");
            }
            Some(reason) => {
                match &reason {
                    CloseReason::PeerClosed => {
                        debug!(peer = %self.peer, "connection closed by the peer")
                    }
                    reason => warn!(peer = %self.peer, %reason, "dropping connection"),
                }
                if !requests.is_empty() {
                    debug!(peer = %self.peer, requests = requests.len(), "aborting the requests of a closed connection");
                }
                sink.close(reason);
                requests.shutdown().await;
            }
        }
    }

    /// Runs the server side of the handshake; returns the client's name and
    /// its authenticated place, or `None` when the connection was dropped
    /// (already logged).
    async fn handshake(
        &self,
        frames: &mut FrameReader,
        write: &WriteHalf,
        pending: Pending,
    ) -> Option<(String, OwnedSemaphorePermit)> {
        let deadline = self.config.handshake_timeout;
        let first = match tokio::time::timeout(deadline, frames.next()).await {
            Err(_) => {
                self.stranger_dropped("no handshake in time", format_args!("{deadline:?}"));
                return None;
            }
            Ok(None) => {
                debug!(peer = %self.peer, "dropping connection: closed before its handshake");
                return None;
            }
            Ok(Some(Err(e))) => {
                let reason = CloseReason::from_handshake_read_error(e);
                self.stranger_dropped("bad handshake frame", reason);
                return None;
            }
            Ok(Some(Ok(bytes))) => bytes.freeze(),
        };
        let hello = match judge_first_frame(first, &self.config.token) {
            Ok(hello) => hello,
            Err((refused, detail)) => {
                // Tell the client why, if it reads; then close.
                let _ =
                    tokio::time::timeout(deadline, answer(write, &refused_frame(refused))).await;
                self.stranger_dropped("handshake refused", detail);
                return None;
            }
        };
        let permit = match pending.authenticate() {
            Ok(permit) => permit,
            Err(NotAdmitted::Evicted) => {
                self.stranger_dropped(
                    "too many unauthenticated connections, closing the oldest",
                    format_args!("the limit is {}", self.config.max_unauthenticated),
                );
                return None;
            }
            Err(NotAdmitted::Full) => {
                let limit = self.config.max_connections;
                match self.logs.full.allow() {
                    Some(unlogged) => warn!(
                        peer = %self.peer, client = %hello.peer, limit, unlogged,
                        "dropping connection: connection limit reached"
                    ),
                    None => debug!(
                        peer = %self.peer, client = %hello.peer, limit,
                        "dropping connection: connection limit reached"
                    ),
                }
                return None;
            }
        };
        let welcome = welcome_frame(&self.config.peer_name);
        match tokio::time::timeout(deadline, answer(write, &welcome)).await {
            Ok(Ok(())) => Some((hello.peer, permit)),
            Ok(Err(e)) => {
                debug!(peer = %self.peer, error = %e, "dropping connection: cannot answer its handshake");
                None
            }
            Err(_) => {
                self.stranger_dropped(
                    "it does not read its handshake answer",
                    format_args!("{deadline:?}"),
                );
                None
            }
        }
    }

    /// Runs `work`, a `step` of a connection not yet authenticated, unless
    /// the server shuts down or `evicted` fires first (the unauthenticated
    /// cap is full and this connection is the oldest): `None` then, logged.
    async fn unless_dropped<T>(
        &self,
        evicted: CancellationToken,
        step: &str,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.draining.cancelled() => {
                debug!(peer = %self.peer, "dropping connection: shutting down during its {step}");
                None
            }
            _ = evicted.cancelled() => {
                self.stranger_dropped(
                    "too many unauthenticated connections, closing the oldest",
                    format_args!("the limit is {}", self.config.max_unauthenticated),
                );
                None
            }
            done = work => Some(done),
        }
    }

    /// Logs that a connection is dropped before its handshake completed: a
    /// warning at most once per [`DROP_LOG_INTERVAL`] for the whole server
    /// (saying how many went unlogged since the last one), a debug line
    /// otherwise.
    fn stranger_dropped(&self, what: &str, reason: impl fmt::Display) {
        match self.logs.strangers.allow() {
            Some(unlogged) => warn!(
                peer = %self.peer, %reason, unlogged,
                "dropping connection: {what}"
            ),
            None => debug!(peer = %self.peer, %reason, "dropping connection: {what}"),
        }
    }

    /// Acts on one frame from an established client. While draining
    /// (`requests` is `None`) new requests are not started: their callers
    /// learn the outcome is unknown when the connection closes. An error
    /// closes the connection.
    ///
    /// A request's handler is first polled right here: one that answers
    /// without waiting costs no task. One that waits continues in its own
    /// task, which a cancel frame aborts.
    fn on_frame(
        &self,
        bytes: Bytes,
        requests: Option<&mut JoinSet<u64>>,
        in_flight: &mut HashMap<u64, AbortHandle>,
        sink: &Arc<FrameSink>,
    ) -> Result<(), CloseReason> {
        let frame = codec::decode(bytes).map_err(|e| CloseReason::Protocol {
            reason: format!("malformed frame: {e}"),
        })?;
        match frame.message {
            Message::Request(request) => {
                let id = frame.request_id;
                let Some(requests) = requests else {
                    debug!(peer = %self.peer, request_id = id, "not starting a request: shutting down");
                    return Ok(());
                };
                if in_flight.contains_key(&id) {
                    return Err(CloseReason::Protocol {
                        reason: format!("request id {id} is already in flight"),
                    });
                }
                let handler = self.handler.clone();
                let sink = sink.clone();
                let max_frame_len = self.config.max_frame_len;
                let body = frame.body;
                let mut handling = Box::pin(async move {
                    let answer = AssertUnwindSafe(handler.handle(request, body))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|_| {
                            error_response(WireError::Internal {
                                message: "the request handler panicked".into(),
                            })
                        });
                    send_response(&sink, id, answer, max_frame_len);
                    id
                });
                // The spawned task polls again with its own waker, so the
                // no-op waker of this first poll loses no wake-up.
                if handling.as_mut().now_or_never().is_none() {
                    let task = requests.spawn(handling);
                    in_flight.insert(id, task);
                }
                Ok(())
            }
            Message::Cancel => {
                // Unknown ids are calls that finished already.
                if let Some(task) = in_flight.remove(&frame.request_id) {
                    task.abort();
                }
                Ok(())
            }
            other => Err(CloseReason::Protocol {
                reason: format!("unexpected {:?} frame from the client", other.kind()),
            }),
        }
    }
}

/// Writes a handshake answer.
async fn answer(write: &WriteHalf, frame: &Frame) -> io::Result<()> {
    let bytes = encode_frame(frame, MAX_HANDSHAKE_FRAME_LEN)
        .map_err(|e| io::Error::other(e.to_string()))?;
    write.write_all(&bytes).await
}

/// Closes a connection's sink when its task ends, however it ends.
struct CloseOnDrop(Arc<FrameSink>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(CloseReason::Local);
    }
}

fn error_response(error: WireError) -> (Response, Bytes) {
    (Response::Error(error), Bytes::new())
}

/// Sends a response; one that cannot be encoded becomes an error response
/// the caller can read. A failed send means the connection is closing,
/// which the read loop notices.
fn send_response(
    sink: &FrameSink,
    request_id: u64,
    (response, body): (Response, Bytes),
    max_frame_len: usize,
) {
    let frame = Frame {
        request_id,
        message: Message::Response(response),
        body,
    };
    let Err(e) = with_encoded(&frame, max_frame_len, |bytes| sink.send(bytes)) else {
        return;
    };
    let message = match e {
        EncodeError::TooLarge { len, max } => {
            format!("the response of {len} bytes exceeds the {max}-byte frame bound")
        }
        EncodeError::Codec(e) => format!("cannot encode the response: {e}"),
    };
    warn!(request_id, %message, "answering with an error instead");
    let frame = Frame {
        request_id,
        message: Message::Response(Response::Error(WireError::Internal { message })),
        body: Bytes::new(),
    };
    // A short error message fits any bound that holds a frame header plus a
    // little; if even that fails, the caller's deadline ends the call.
    let _ = with_encoded(&frame, max_frame_len, |bytes| sink.send(bytes));
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
