//! One connected byte stream, whatever the socket type, split into halves
//! that the reader and writer tasks own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp;

#[cfg(unix)]
use tokio::net::unix;

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
                let (r, w) = tokio::io::split(s);
                (ReadHalf::PipeClient(r), WriteHalf::PipeClient(w))
            }
            #[cfg(windows)]
            Stream::PipeServer(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::PipeServer(r), WriteHalf::PipeServer(w))
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
    PipeClient(tokio::io::ReadHalf<NamedPipeClient>),
    #[cfg(windows)]
    PipeServer(tokio::io::ReadHalf<NamedPipeServer>),
}

/// The writing half of a [`Stream`].
pub(crate) enum WriteHalf {
    Tcp(tcp::OwnedWriteHalf),
    #[cfg(unix)]
    Unix(unix::OwnedWriteHalf),
    #[cfg(windows)]
    PipeClient(tokio::io::WriteHalf<NamedPipeClient>),
    #[cfg(windows)]
    PipeServer(tokio::io::WriteHalf<NamedPipeServer>),
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
            ReadHalf::PipeClient(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(windows)]
            ReadHalf::PipeServer(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(s) => s.is_write_vectored(),
            #[cfg(unix)]
            WriteHalf::Unix(s) => s.is_write_vectored(),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => s.is_write_vectored(),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => Pin::new(s).poll_flush(cx),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            WriteHalf::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(windows)]
            WriteHalf::PipeClient(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(windows)]
            WriteHalf::PipeServer(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
