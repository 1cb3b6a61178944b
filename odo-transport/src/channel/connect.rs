//! Opening a channel's connection: what a client configures
//! ([`ClientConfig`]), the socket and its options, the handshake, and what
//! can go wrong on the way ([`ConnectError`]).

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Message, PROTOCOL_VERSION, Refused};
use tracing::debug;

use crate::endpoint::Endpoint;
use crate::framing::{
    CloseReason, DEFAULT_MAX_FRAME_LEN, FrameReader, encode_frame, handshake_reader, lift_bound,
};
use crate::handshake::{MAX_HANDSHAKE_FRAME_LEN, MAX_TOKEN_LEN, hello_frame};
use crate::stream::{Stream, WriteHalf};
use crate::upgrade::TcpUpgrade;

/// How a client connects.
#[derive(Clone)]
pub struct ClientConfig {
    /// The cluster's shared token, presented in the handshake; at most
    /// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN) bytes.
    pub token: String,
    /// Who this client is, for the server's logs (`router`, `worker 3`);
    /// cut to [`MAX_PEER_NAME_LEN`](crate::MAX_PEER_NAME_LEN) bytes.
    pub peer_name: String,
    /// The bound on one frame, sent or received, once the handshake is
    /// done. Default 16 MiB. The server's answer to the handshake is
    /// bounded to [`MAX_HANDSHAKE_FRAME_LEN`](crate::MAX_HANDSHAKE_FRAME_LEN).
    pub max_frame_len: usize,
    /// How long establishing the socket connection may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long the server may take to answer the handshake. Default 5 s.
    pub handshake_timeout: Duration,
    /// A layer over TCP connections (TLS), within the connect timeout.
    /// Default none.
    pub upgrade: Option<Arc<dyn TcpUpgrade>>,
    /// How long data sent on a TCP connection may stay unacknowledged
    /// before the kernel gives the connection up (`TCP_USER_TIMEOUT`, on
    /// Linux; ignored elsewhere). Without it a link that goes silent (a
    /// partition, a host that vanished) keeps a channel open for the
    /// kernel's ~15 minutes of retransmissions, and every call sent on it
    /// ends at its deadline with an unknown outcome; with it the channel
    /// closes, and the next call connects again or is answered as never
    /// delivered. Default 5 s; `None` keeps the kernel's behaviour.
    pub tcp_user_timeout: Option<Duration>,
}

impl ClientConfig {
    /// A configuration with this token and default limits.
    pub fn new(token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            token: token.into(),
            peer_name: "client".into(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            upgrade: None,
            tcp_user_timeout: Some(Duration::from_secs(5)),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("token", &"<redacted>")
            .field("peer_name", &self.peer_name)
            .field("max_frame_len", &self.max_frame_len)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("upgrade", &self.upgrade)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .finish()
    }
}

/// Which step of establishing a connection timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStage {
    /// Opening the socket.
    Connect,
    /// Waiting for the server's answer to the handshake.
    Handshake,
}

impl fmt::Display for ConnectStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectStage::Connect => "connecting",
            ConnectStage::Handshake => "the handshake",
        })
    }
}

/// Why [`Channel::connect`](super::Channel::connect) failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be opened (nothing listens, permission denied,
    /// the host does not resolve...).
    #[error("cannot connect to {endpoint}: {source}")]
    Io {
        /// Where we tried to connect.
        endpoint: Endpoint,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A step took longer than its configured timeout.
    #[error("{stage} to {endpoint} timed out after {after:?}")]
    Timeout {
        /// Where we tried to connect.
        endpoint: Endpoint,
        /// The step that timed out.
        stage: ConnectStage,
        /// The configured timeout.
        after: Duration,
    },
    /// The server refused the handshake (wrong token or protocol version).
    #[error("{endpoint} refused the handshake: {reason}")]
    Refused {
        /// Where we tried to connect.
        endpoint: Endpoint,
        /// The server's reason.
        reason: Refused,
    },
    /// The server welcomed us but speaks another protocol version.
    #[error("{endpoint} speaks protocol version {theirs}, we speak {ours}")]
    VersionMismatch {
        /// Where we tried to connect.
        endpoint: Endpoint,
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// The server's version.
        theirs: u32,
    },
    /// The server answered the handshake with something that is not a
    /// handshake answer.
    #[error("{endpoint} broke the handshake: {reason}")]
    Protocol {
        /// Where we tried to connect.
        endpoint: Endpoint,
        /// What it sent.
        reason: String,
    },
    /// The server closed the connection before answering the handshake
    /// (it may be at its connection limit or shutting down).
    #[error("{endpoint} closed the connection during the handshake")]
    ClosedDuringHandshake {
        /// Where we tried to connect.
        endpoint: Endpoint,
    },
    /// The client configuration is unusable (such as a token longer than
    /// [`MAX_TOKEN_LEN`](crate::MAX_TOKEN_LEN)); nothing was sent.
    #[error("invalid client configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
}

/// Opens a connection to `endpoint` and runs the handshake: the frames
/// from the server (with the configured bound), the half to write to, and
/// the server's name.
pub(super) async fn establish(
    endpoint: &Endpoint,
    config: &ClientConfig,
) -> Result<(FrameReader, WriteHalf, String), ConnectError> {
    if config.token.len() > MAX_TOKEN_LEN {
        return Err(ConnectError::Config {
            reason: "the token is longer than MAX_TOKEN_LEN (512 bytes)",
        });
    }
    let opened = open(endpoint, config.upgrade.as_deref(), config.tcp_user_timeout);
    let stream = match tokio::time::timeout(config.connect_timeout, opened).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(ConnectError::Io {
                endpoint: endpoint.clone(),
                source,
            });
        }
        Err(_) => {
            return Err(ConnectError::Timeout {
                endpoint: endpoint.clone(),
                stage: ConnectStage::Connect,
                after: config.connect_timeout,
            });
        }
    };
    let (read, write) = stream.into_split();
    // The server's answer is a handshake frame: nothing bigger is read
    // (nor room made for it) until it has welcomed us.
    let mut frames = handshake_reader(read);
    let handshake = async {
        let hello = encode_frame(
            &hello_frame(&config.token, &config.peer_name),
            MAX_HANDSHAKE_FRAME_LEN,
        )
        .map_err(|e| ConnectError::Protocol {
            endpoint: endpoint.clone(),
            reason: format!("cannot encode the handshake: {e}"),
        })?;
        write
            .write_all(&hello)
            .await
            .map_err(|source| ConnectError::Io {
                endpoint: endpoint.clone(),
                source,
            })?;
        read_welcome(endpoint, &mut frames).await
    };
    let server_peer = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ConnectError::Timeout {
                endpoint: endpoint.clone(),
                stage: ConnectStage::Handshake,
                after: config.handshake_timeout,
            });
        }
    };
    lift_bound(&mut frames, config.max_frame_len);
    debug!(%endpoint, server = %server_peer, "channel connected");
    Ok((frames, write, server_peer))
}

/// Reads the server's answer to our hello; returns the server's name.
async fn read_welcome(
    endpoint: &Endpoint,
    frames: &mut FrameReader,
) -> Result<String, ConnectError> {
    let protocol = |reason: String| ConnectError::Protocol {
        endpoint: endpoint.clone(),
        reason,
    };
    let bytes = match frames.next().await {
        None => {
            return Err(ConnectError::ClosedDuringHandshake {
                endpoint: endpoint.clone(),
            });
        }
        Some(Err(e))
            if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::Other =>
        {
            return Err(match CloseReason::from_handshake_read_error(e) {
                CloseReason::Protocol { reason } => protocol(reason),
                other => protocol(other.to_string()),
            });
        }
        Some(Err(source)) => {
            return Err(ConnectError::Io {
                endpoint: endpoint.clone(),
                source,
            });
        }
        Some(Ok(bytes)) => bytes.freeze(),
    };
    match codec::decode(bytes) {
        Ok(Frame {
            message: Message::Welcome(welcome),
            ..
        }) => {
            if welcome.protocol_version != PROTOCOL_VERSION {
                return Err(ConnectError::VersionMismatch {
                    endpoint: endpoint.clone(),
                    ours: PROTOCOL_VERSION,
                    theirs: welcome.protocol_version,
                });
            }
            Ok(welcome.peer)
        }
        Ok(Frame {
            message: Message::Refused(reason),
            ..
        }) => Err(ConnectError::Refused {
            endpoint: endpoint.clone(),
            reason,
        }),
        Ok(frame) => Err(protocol(format!(
            "expected a handshake answer, got a {:?} frame",
            frame.message.kind()
        ))),
        Err(e) => Err(protocol(format!("malformed handshake answer: {e}"))),
    }
}

/// Opens a socket to `endpoint`, upgraded (TCP only) if asked.
async fn open(
    endpoint: &Endpoint,
    upgrade: Option<&dyn TcpUpgrade>,
    user_timeout: Option<Duration>,
) -> io::Result<Stream> {
    match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => Ok(Stream::Unix(tokio::net::UnixStream::connect(path).await?)),
        Endpoint::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            set_user_timeout(&stream, user_timeout)?;
            match upgrade {
                None => Ok(Stream::Tcp(stream)),
                Some(upgrade) => crate::upgrade::bridge(upgrade.connect(stream, host).await?),
            }
        }
        #[cfg(windows)]
        Endpoint::Pipe(name) => open_pipe(name).await,
    }
}

/// Sets `TCP_USER_TIMEOUT` (Linux only; elsewhere nothing).
#[cfg(target_os = "linux")]
pub(crate) fn set_user_timeout(
    stream: &tokio::net::TcpStream,
    after: Option<Duration>,
) -> io::Result<()> {
    if let Some(after) = after {
        let ms = u32::try_from(after.as_millis()).unwrap_or(u32::MAX).max(1);
        rustix::net::sockopt::set_tcp_user_timeout(stream, ms)?;
    }
    Ok(())
}

/// Sets `TCP_USER_TIMEOUT` (Linux only; elsewhere nothing).
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_user_timeout(
    _stream: &tokio::net::TcpStream,
    _after: Option<Duration>,
) -> io::Result<()> {
    Ok(())
}

#[cfg(windows)]
async fn open_pipe(name: &str) -> io::Result<Stream> {
    use tokio::net::windows::named_pipe::ClientOptions;
    /// Windows' ERROR_PIPE_BUSY: every instance is taken; the server creates
    /// another as soon as it accepts.
    const ERROR_PIPE_BUSY: i32 = 231;
    loop {
        match ClientOptions::new().open(name) {
            Ok(client) => return Ok(Stream::PipeClient(client)),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => {
                // Back off briefly; the caller's connect timeout bounds this.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::{Endpoint, Stream, open};

    #[tokio::test]
    async fn tcp_connections_carry_the_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let endpoint: Endpoint = format!("tcp:127.0.0.1:{port}").parse().expect("endpoint");
        for (asked, seen) in [(Some(Duration::from_millis(2500)), 2500), (None, 0)] {
            let Ok(Stream::Tcp(stream)) = open(&endpoint, None, asked).await else {
                panic!("no TCP stream");
            };
            let set = rustix::net::sockopt::tcp_user_timeout(&stream).expect("getsockopt");
            assert_eq!(set, seen, "asked {asked:?}");
        }
    }
}
