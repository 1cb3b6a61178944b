//! [`TcpUpgrade`]: a layer over each TCP connection, such as TLS, chosen
//! by the program (odo-cluster brings rustls) so this crate does not
//! depend on any TLS library.
//!
//! The framing layer writes to its socket without waiting
//! (its frame sink), which an encrypting stream cannot do;
//! so an upgraded connection is bridged to a Unix socket pair: one end is
//! the stream the framing layer uses, a task copies bytes between the
//! other end and the upgraded stream, both ways. Either side closing
//! closes the other, and then the bridge waits at most [`CLOSE_GRACE`]
//! for the rest: a peer that never closes its side holds nothing.
//! (Unix only: on other platforms an upgrade fails.)

use std::fmt;
use std::io;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::stream::Stream;

/// A byte stream an upgrade returns (a TLS stream over the TCP one).
pub trait UpgradedIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> UpgradedIo for T {}

/// A boxed [`UpgradedIo`].
pub type Upgraded = Box<dyn UpgradedIo>;

/// A layer over TCP connections, both ways: set it in
/// [`ClientConfig::upgrade`](crate::ClientConfig) and
/// [`ServerConfig::upgrade`](crate::ServerConfig). Its work counts
/// against the connect timeout (client) and the handshake timeout
/// (server).
pub trait TcpUpgrade: Send + Sync + fmt::Debug {
    /// Client side: `tcp` is connected to `host` (the endpoint's host, an
    /// IP address or a name, to check the server's identity against).
    fn connect(&self, tcp: TcpStream, host: &str) -> BoxFuture<'static, io::Result<Upgraded>>;

    /// Server side: `tcp` was just accepted.
    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Upgraded>>;
}

/// Once one direction of a bridge has ended, how long the other may go on
/// (the peer's close, the last answers) before both ends are dropped.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Bridges `io` to a [`Stream`] the framing layer can use.
#[cfg(unix)]
pub(crate) fn bridge(io: Upgraded) -> io::Result<Stream> {
    use tokio::io::AsyncWriteExt;

    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    tokio::spawn(async move {
        let (mut from_peer, mut to_peer) = tokio::io::split(io);
        let (mut from_us, mut to_us) = theirs.into_split();
        // Each direction ends by passing its end on (close_notify and FIN
        // to the peer; EOF to the framing layer).
        let outbound = async {
            let copied = tokio::io::copy(&mut from_us, &mut to_peer).await;
            let _ = to_peer.shutdown().await;
            copied
        };
        let inbound = async {
            let copied = tokio::io::copy(&mut from_peer, &mut to_us).await;
            let _ = to_us.shutdown().await;
            copied
        };
        let (mut outbound, mut inbound) = (std::pin::pin!(outbound), std::pin::pin!(inbound));
        // `copy_bidirectional` waited for both, and a peer that stayed
        // silent after the host closed its side held the connection's two
        // sockets for good.
        let ended = tokio::select! {
            ended = &mut outbound => {
                let _ = tokio::time::timeout(CLOSE_GRACE, inbound).await;
                ended
            }
            ended = &mut inbound => {
                let _ = tokio::time::timeout(CLOSE_GRACE, outbound).await;
                ended
            }
        };
        if let Err(e) = ended {
            debug!(error = %e, "upgraded connection ended");
        }
    });
    Ok(Stream::Unix(ours))
}

/// Bridges `io` to a [`Stream`] the framing layer can use.
#[cfg(not(unix))]
pub(crate) fn bridge(io: Upgraded) -> io::Result<Stream> {
    drop(io);
    debug!("upgraded TCP connections need Unix socket pairs");
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "upgraded (TLS) TCP connections are supported on Unix only",
    ))
}
