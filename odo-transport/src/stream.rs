//! One connected byte stream, whatever the socket type, split into halves
//! that the reader and writer tasks own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp;

#[cfg(unix)]
use tokio::net::unix;

#[cfg(windows)]
use std::sync::Arc;
#[cfg(windows)]
use tokio::net::windows::named_pipe::{NamedPipeClient, NamedPipeServer};

/// A connected stream of any supported socket type.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
    #[cfg(windows)]
    PipeClient(NamedPipeClient),
    #[cfg(windows)]
    PipeServer(NamedPipeServer),
}

impl Stream {
    /// Splits the stream into owned halves (without a lock where the socket
    /// type allows it).
    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            #[cfg(unix)]
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Unix(r), WriteHalf::Unix(w))
            }
            #[cfg(windows)]
            Stream::PipeClient(s) => {
                let s = Arc::new(s);
                (ReadHalf::PipeClient(s.clone()), WriteHalf::PipeClient(s))
            }
            #[cfg(windows)]
            Stream::PipeServer(s) => {
                let s = Arc::new(s);
                (ReadHalf::PipeServer(s.clone()), WriteHalf::PipeServer(s))
            }
        }
    }
}

/// The reading half of a [`Stream`].
pub(crate) enum ReadHalf {
    Tcp(tcp::OwnedReadHalf),
    #[cfg(unix)]
    Unix(unix::OwnedReadHalf),
    #[cfg(windows)]
    PipeClient(Arc<NamedPipeClient>),
    #[cfg(windows)]
    PipeServer(Arc<NamedPipeServer>),
}

/// Reads from a pipe shared with its writing half: wait for readiness, then
/// read what is there.
#[cfg(windows)]
fn poll_read_with(
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    mut ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut try_read: impl FnMut(&mut [u8]) -> io::Result<usize>,
) -> Poll<io::Result<()>> {
    loop {
        match ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match try_read(buf.initialize_unfilled()) {
            Ok(n) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// The writing half of a [`Stream`]. Writes take `&self`, so callers can
/// write without waiting (see [`crate::framing::FrameSink`]) while a writer
/// task waits for the socket when it is full.
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(unix::OwnedWriteHalf),
    #[cfg(windows)]
    PipeClient(Arc<NamedPipeClient>),
    #[cfg(windows)]
    PipeServer(Arc<NamedPipeServer>),
}

impl WriteHalf {
    /// Writes what the socket takes now, without waiting.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteHalf::Tcp(s) => s.try_write(buf),
            #[cfg(unix)]
            WriteHalf::Unix(s) => s.try_write(buf),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => s.try_write(buf),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => s.try_write(buf),
        }
    }

    /// Waits until the socket may take more bytes.
    pub(crate) async fn writable(&self) -> io::Result<()> {
        match self {
            WriteHalf::Tcp(s) => s.writable().await,
            #[cfg(unix)]
            WriteHalf::Unix(s) => s.writable().await,
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => s.writable().await,
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => s.writable().await,
        }
    }

    /// Writes all of `buf`, waiting whenever the socket is full.
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            ReadHalf::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(windows)]
            ReadHalf::PipeClient(s) => {
                poll_read_with(cx, buf, |cx| s.poll_read_ready(cx), |b| s.try_read(b))
            }
            #[cfg(windows)]
            ReadHalf::PipeServer(s) => {
                poll_read_with(cx, buf, |cx| s.poll_read_ready(cx), |b| s.try_read(b))
            }
        }
    }
}
