//! tungstenite's view of a socket's connection ([`Adapter`]): what the
//! client sent, handed to tungstenite from the bytes left over from the
//! last run, then from a scratch buffer on the stack of the task that
//! polls the socket, a frame at most at a time ([`Budget`] follows the
//! frames, counts the payload of a message still arriving against the
//! door's bound, and stops reading past it); what tungstenite writes
//! (pongs, close frames) kept to go out in order with the door's frames.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::ReadBuf;
use tungstenite::error::Error as WsError;

use super::HeldArriving;
use super::arriving::Arriving;
use super::conn::Io;

/// tungstenite's view of the connection: reads take what was left over,
/// then what the scratch buffer holds, then poll the connection into it
/// (a pending read is `WouldBlock`); writes (pongs, close frames) are kept
/// to be written in order with the door's frames.
pub(super) struct Adapter<'a, 'b, S> {
    pub(super) io: &'a mut S,
    pub(super) cx: Option<&'a mut Context<'b>>,
    pub(super) leftover: &'a mut Bytes,
    pub(super) scratch: Scratch<'a>,
    pub(super) written: Vec<u8>,
    /// The bytes of an unfinished message, counted as they are handed to
    /// tungstenite (settled into the door's count before each read from
    /// the connection).
    pub(super) budget: Budget<'a>,
}

/// An unfinished message's bytes, and the door's bound on what it holds.
pub(super) struct Budget<'a> {
    pub(super) arriving: &'a mut Arriving,
    pub(super) unfinished: &'a mut HeldArriving,
    /// Some payload of a message was handed to tungstenite in this run.
    pub(super) progress: bool,
    /// The door's bound ([`WebSocketConfig::door_buffer_bytes`]).
    ///
    /// [`WebSocketConfig::door_buffer_bytes`]: super::WebSocketConfig::door_buffer_bytes
    pub(super) limit: usize,
    /// Reading stopped: the message would pass the door's bound.
    pub(super) over: bool,
}

impl Budget<'_> {
    /// Follows the front of `bytes`, up to the end of a frame: how many
    /// to hand to tungstenite.
    /// `None` when the next bytes are a message's payload that the door's
    /// bound refuses ([`Budget::may_grow`]).
    fn take(&mut self, bytes: &[u8]) -> Option<usize> {
        if self.arriving.in_data_payload() && !self.may_grow() {
            self.over = true;
            return None;
        }
        let fed = self.arriving.feed(bytes);
        self.progress |= fed.payload > 0;
        Some(fed.taken)
    }

    /// Brings the door's count up to date.
    pub(super) fn settle(&mut self) {
        let unfinished = usize::try_from(self.arriving.unfinished()).unwrap_or(usize::MAX);
        self.unfinished.set(unfinished);
    }

    /// Whether the unfinished message may take more payload: while the
    /// door holds less than its bound, and messages still arriving less
    /// than half of it (the other half is kept for complete ones, so
    /// clients slow to finish their messages cannot take all of it). A
    /// message's first bytes are always taken (as much as one read
    /// holds): a small one arrives whole. Only payload is checked: a
    /// control frame is no message, so a ping on a full door is answered.
    fn may_grow(&mut self) -> bool {
        self.settle();
        if self.unfinished.bytes() == 0 {
            return true;
        }
        let (total, arriving) = self.unfinished.totals();
        total < self.limit && arriving < self.limit / 2
    }
}

/// A read buffer on the task's stack, never zero-filled (a poll that only
/// writes costs nothing for it): `filled()[start..]` not taken yet.
pub(super) struct Scratch<'a> {
    pub(super) buf: ReadBuf<'a>,
    pub(super) start: usize,
}

impl Scratch<'_> {
    pub(super) fn unread(&self) -> &[u8] {
        &self.buf.filled()[self.start..]
    }
}

impl<S: Io> Read for Adapter<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // No byte past a control frame's header that tungstenite would
        // buffer whole before refusing it.
        if self.budget.arriving.refused() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if !self.leftover.is_empty() {
            let n = buf.len().min(self.leftover.len());
            let Some(n) = self.budget.take(&self.leftover[..n]) else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            buf[..n].copy_from_slice(&self.leftover.split_to(n));
            if self.leftover.is_empty() {
                // Let go of the allocation.
                *self.leftover = Bytes::new();
            }
            return Ok(n);
        }
        if self.scratch.unread().is_empty() {
            let Some(cx) = self.cx.as_deref_mut() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            self.scratch.buf.clear();
            self.scratch.start = 0;
            match Pin::new(&mut *self.io).poll_read(cx, &mut self.scratch.buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
            }
        }
        let unread = self.scratch.unread();
        if unread.is_empty() {
            // The end of the connection.
            return Ok(0);
        }
        let n = buf.len().min(unread.len());
        // Up to the end of the frame: once a message came whole,
        // tungstenite holds nothing more of the client's.
        let Some(n) = self.budget.take(&unread[..n]) else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..n].copy_from_slice(&self.scratch.unread()[..n]);
        self.scratch.start += n;
        Ok(n)
    }
}

impl<S> Write for Adapter<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(super) fn would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}
