//! When a socket's connection runs: only when something happened to it.
//!
//! A socket has no task of its own while it is idle. Its connection
//! ([`Conn`]) is kept in a [`Served`], which is also the waker that every
//! source of work for it holds: the connection's readiness (tokio's I/O
//! driver), the door's queue for it ([`Outbound`]) and the door's idle
//! sweep. A wake spawns a short task that polls the connection until it
//! has nothing left to do, and ends. An idle socket so costs its protocol
//! state, its stream and the door's record of it, not a task and a timer
//! (`cargo xtask bench websocket`, idle).
//!
//! One task at most polls a connection: a wake while it runs is noted and
//! the task polls again (after letting other tasks run) rather than a
//! second task starting. Silence is timed by the door's sweep (one task
//! per door, `Door::sweep_idle`), not by a timer per socket.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use odo_core::socket::{SocketEventKind, close_code};

use super::conn::{CLOSE_GRACE, Conn, Io};
use super::{Door, Outbound, lock};

/// Nothing to do: the next wake spawns a task.
const IDLE: u8 = 0;
/// A task polls the connection (or is about to).
const RUNNING: u8 = 1;
/// Woken while running: the task polls again.
const NOTIFIED: u8 = 2;
/// The connection ended: wakes do nothing.
const DONE: u8 = 3;

/// A socket's connection, and the waker of whatever polls it.
pub(super) struct Served<S> {
    door: Door,
    id: u64,
    out: Arc<Outbound>,
    runtime: tokio::runtime::Handle,
    state: AtomicU8,
    /// `None` once the connection ended. Only the task that moved the
    /// state to `RUNNING` locks it.
    conn: Mutex<Option<Conn<S>>>,
}

/// Serves socket `id` once `io` (its upgrade) completes, until it ends;
/// then its object is told how it ended. Call within a tokio runtime.
pub(super) fn start<S: Io>(
    door: Door,
    id: u64,
    io: impl Future<Output = Result<S, String>> + Send + 'static,
    out: Arc<Outbound>,
) {
    door.ensure_sweep();
    tokio::spawn(async move {
        let upgraded = match io.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                door.socket_gone(
                    id,
                    SocketEventKind::Close {
                        code: close_code::ABNORMAL,
                        reason: format!("the upgrade failed: {e}"),
                        was_clean: false,
                    },
                );
                return;
            }
        };
        let conn = Conn::new(upgraded, &door);
        out.heard(door.clock_ms());
        let served = Arc::new(Served {
            door,
            id,
            out,
            runtime: tokio::runtime::Handle::current(),
            state: AtomicU8::new(RUNNING),
            conn: Mutex::new(Some(conn)),
        });
        served.run().await;
    });
}

impl<S: Io> Served<S> {
    /// Polls the connection until it has nothing to do (then the task
    /// ends: the socket is idle) or it ended (then this task sees it out).
    async fn run(self: Arc<Self>) {
        let waker = Waker::from(self.clone());
        loop {
            let ended = {
                let mut conn = lock(&self.conn);
                let Some(served) = conn.as_mut() else {
                    return;
                };
                let mut cx = Context::from_waker(&waker);
                match served.poll_serve(&mut cx, &self.door, self.id, &self.out) {
                    Poll::Ready(last) => conn.take().map(|conn| (conn, last)),
                    Poll::Pending => None,
                }
            };
            if let Some((conn, last)) = ended {
                self.state.store(DONE, Ordering::Release);
                self.out.forget_waker();
                self.finish(conn, last).await;
                return;
            }
            match self
                .state
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(_) => {
                    // Woken while polling: again, after the others' turn.
                    self.state.store(RUNNING, Ordering::Release);
                    tokio::task::yield_now().await;
                }
            }
        }
    }

    /// The socket ended with `last`: its object hears of it now; the
    /// connection stays (counted against the cap, holding at most the
    /// frame it was writing) until what is left to send (the door's close
    /// frame, or tungstenite's answer to the client's) is out, within a
    /// bound.
    async fn finish(&self, mut conn: Conn<S>, last: SocketEventKind) {
        let (door, out) = (&self.door, &self.out);
        let kill = out.kill_reason();
        let known = door.let_go(self.id, last);
        let grace = match kill {
            Some(_) if !door.closing() => door.config().idle_timeout,
            _ => CLOSE_GRACE,
        };
        conn.finish(kill);
        let _ =
            tokio::time::timeout(grace, std::future::poll_fn(|cx| conn.poll_write(cx, out))).await;
        drop(conn);
        if known {
            door.connection_gone();
        }
    }
}

impl Door {
    /// Milliseconds since the door was made (monotonic): when sockets
    /// were last heard from.
    pub(super) fn clock_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Starts the idle sweep (once per door; call within a tokio
    /// runtime): every quarter of the idle timeout, each socket silent
    /// for the idle timeout is asked to ping its client, or to close as
    /// half-open if it pinged already. So a silent socket is pinged
    /// between one and one and a quarter idle timeouts after it was last
    /// heard from. The task ends with the door.
    fn ensure_sweep(&self) {
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let door = Arc::downgrade(&self.inner);
        let period = (self.config().idle_timeout / 4).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = door.upgrade() else {
                    return;
                };
                Door { inner }.sweep_idle();
            }
        });
    }

    /// One pass of the idle sweep over every socket. Which sockets are
    /// due is read under the door's lock (an atomic load each); they are
    /// woken after it, since a wake may spawn the socket's task: with many
    /// silent sockets (members that only listen) the lock is held for the
    /// scan alone, not for as many spawns. Also drops the messages in
    /// parts whose rest has not come for the idle timeout.
    fn sweep_idle(&self) {
        let now = self.clock_ms();
        let idle = self.config().idle_timeout.as_millis() as u64;
        let due: Vec<_> = self
            .state()
            .sockets
            .values()
            .filter(|socket| socket.out.mark_idle(now, idle))
            .map(|socket| socket.out.clone())
            .collect();
        for out in due {
            out.wake();
        }
        self.cut_stale_parts(now, idle);
    }
}

impl<S: Io> Wake for Served<S> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => RUNNING,
                RUNNING => NOTIFIED,
                _ => return,
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        if state == IDLE {
            self.runtime.spawn(self.clone().run());
        }
    }
}
