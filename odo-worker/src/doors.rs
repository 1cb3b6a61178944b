//! The front doors, as a worker process reaches them: the WebSocket
//! outputs of its objects' turns go over the transport to the front door
//! holding each socket, in the order they were made.
//!
//! One sender task per front door keeps one push in flight and gathers
//! what queued meanwhile into the next, so a busy worker sends a few large
//! frames rather than one per turn, and a door sees every object's outputs
//! in the order the output gates released them. A message too large for
//! one frame travels in several (`SocketOp::Send` with `more`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::socket::{ShardSockets, ShardSocketsPage, SocketOp, SocketOutput};
use odo_core::wire::{Request, Response};
use odo_transport::{ChannelPool, ClientConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::socket::WebSocketDoors;

/// The payload bytes one push carries at most: well under the transport's
/// frame bound, whatever the envelope.
const PUSH_BYTES: usize = 4 * 1024 * 1024;
/// Output bytes waiting for one front door at most; beyond, outputs are
/// refused (their turns' callers learn the outcome is unknown).
const QUEUED_BYTES: usize = 256 * 1024 * 1024;
/// How long a front door has to take a push.
const PUSH_DEADLINE: Duration = Duration::from_secs(30);

struct Queued {
    output: SocketOutput,
    body: Bytes,
    done: oneshot::Sender<bool>,
}

struct Door {
    queue: mpsc::UnboundedSender<Queued>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Reaches the front doors over the transport: what a worker process
/// uses, and what a cluster host uses for the doors of other hosts (over
/// the hosts' authenticated transport).
pub struct RemoteDoors {
    pool: Arc<ChannelPool>,
    doors: Mutex<HashMap<String, Door>>,
    alive: Option<DoorAlive>,
}

/// Whether a front door may still be reached: see
/// [`RemoteDoors::with_liveness`].
pub type DoorAlive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl fmt::Debug for RemoteDoors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteDoors").finish_non_exhaustive()
    }
}

impl RemoteDoors {
    /// Reaches front doors as `client` (the token, and a TLS upgrade
    /// between hosts).
    pub fn new(client: ClientConfig) -> Self {
        Self {
            pool: Arc::new(ChannelPool::new(client)),
            doors: Mutex::default(),
            alive: None,
        }
    }

    /// Knowing which doors still exist (`alive`: in a cluster, the doors
    /// of the live members). A push to a door that no longer exists is
    /// dropped and counts as taken: its sockets ended with its host. A
    /// push that could not be sent to a door that still exists (its host
    /// died and its lease has not expired yet, or it restarts) is sent
    /// again until it is taken, the door is gone, or 30 s passed. A push
    /// that may have been applied is never sent again. Without it, any
    /// failed push fails (a worker's front door is its server's).
    #[must_use]
    pub fn with_liveness(mut self, alive: DoorAlive) -> Self {
        self.alive = Some(alive);
        self
    }
}

impl WebSocketDoors for RemoteDoors {
    fn submit(&self, door: &str, output: SocketOutput, body: Bytes) -> BoxFuture<'static, bool> {
        let mut doors = self.doors.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = doors.entry(door.to_owned()).or_insert_with(|| {
            let (queue, queued) = mpsc::unbounded_channel();
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            tokio::spawn(send_loop(
                self.pool.clone(),
                self.alive.clone(),
                door.to_owned(),
                queued,
                queued_bytes.clone(),
            ));
            Door {
                queue,
                queued_bytes,
            }
        });
        let len = body.len();
        if entry.queued_bytes.load(Ordering::Relaxed) + len > QUEUED_BYTES {
            warn!(%door, "too many WebSocket outputs waiting for this front door: refusing");
            return async { false }.boxed();
        }
        entry.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let (done, taken) = oneshot::channel();
        if entry.queue.send(Queued { output, body, done }).is_err() {
            return async { false }.boxed();
        }
        async move { taken.await.unwrap_or(false) }.boxed()
    }

    fn shard_sockets_page(
        &self,
        door: &str,
        asked: ShardSockets,
    ) -> BoxFuture<'static, Result<ShardSocketsPage, String>> {
        let pool = self.pool.clone();
        let door = door.to_owned();
        async move {
            let channel = pool.get(&door).await.map_err(|e| e.to_string())?;
            let request = Request::SocketRecords(asked);
            match channel.call(request, Bytes::new(), PUSH_DEADLINE).await {
                Ok((Response::SocketRecords(page), _)) => Ok(page),
                Ok((other, _)) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}

/// One push being gathered.
#[derive(Default)]
struct Push {
    ops: Vec<SocketOp>,
    body: BytesMut,
    done: Vec<oneshot::Sender<bool>>,
}

impl Push {
    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Sends the outputs queued for `door`, one push at a time.
async fn send_loop(
    pool: Arc<ChannelPool>,
    alive: Option<DoorAlive>,
    door: String,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let mut next_message = MessageNames::new();
    while let Some(first) = queued.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].body.len();
        while bytes < PUSH_BYTES {
            match queued.try_recv() {
                Ok(next) => {
                    bytes += next.body.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        let mut pushes = Vec::new();
        let mut push = Push::default();
        for Queued { output, body, done } in batch {
            let mut at = 0usize;
            for op in output.ops {
                let len = payload_len(&op);
                let payload = body.slice(at..at + len);
                at += len;
                if push.body.len() + len > PUSH_BYTES && !push.is_empty() {
                    pushes.push(std::mem::take(&mut push));
                }
                match op {
                    SocketOp::Send {
                        sockets,
                        binary,
                        more,
                        continued,
                        ..
                    } if len > PUSH_BYTES => {
                        // Too large for one frame: its leading parts each
                        // fill a push of their own. Each part after the
                        // first says it continues one, so the door knows
                        // a message whose rest was lost (a push that
                        // failed ends the batch: its later parts are
                        // never sent); all carry the message's name.
                        let message = next_message.next();
                        let mut rest = payload;
                        let mut continued = continued;
                        while rest.len() > PUSH_BYTES {
                            let part = rest.split_to(PUSH_BYTES);
                            push.ops.push(SocketOp::Send {
                                sockets: sockets.clone(),
                                binary,
                                len: part.len() as u32,
                                more: true,
                                continued,
                                message,
                            });
                            continued = true;
                            push.body.extend_from_slice(&part);
                            pushes.push(std::mem::take(&mut push));
                        }
                        push.ops.push(SocketOp::Send {
                            sockets,
                            binary,
                            len: rest.len() as u32,
                            more,
                            continued,
                            message,
                        });
                        push.body.extend_from_slice(&rest);
                    }
                    op => {
                        push.ops.push(op);
                        push.body.extend_from_slice(&payload);
                    }
                }
            }
            push.done.push(done);
        }
        if !push.is_empty() || !push.done.is_empty() {
            pushes.push(push);
        }
        let mut failed = false;
        for mut push in pushes {
            let done = std::mem::take(&mut push.done);
            let ok = !failed && send_until(&pool, alive.as_ref(), &door, push).await;
            failed |= !ok;
            for done in done {
                let _ = done.send(ok);
            }
        }
    }
}

/// Names for the messages a sender sends in parts
/// ([`SocketOp::Send`]'s `message`): counting up from a random start, so
/// two senders (two workers, or two incarnations of one) do not give the
/// same name to messages in flight to the same sockets. Never 0.
struct MessageNames(u64);

impl MessageNames {
    fn new() -> Self {
        Self(crate::activation::random_u64())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1).max(1);
        self.0
    }
}

fn payload_len(op: &SocketOp) -> usize {
    match op {
        SocketOp::Send { len, .. } => *len as usize,
        SocketOp::Attach { len, .. } => len.unwrap_or(0) as usize,
        SocketOp::Close { .. } | SocketOp::AutoResponse { .. } => 0,
    }
}

/// What became of one push.
enum Pushed {
    Taken,
    /// Never reached the door: safe to send again.
    Unsent,
    /// Written, then the connection ended: it may have been applied.
    Lost,
    /// The door refused it.
    Refused,
}

/// Sends one push; with `alive`, again while it was not sent and the door
/// still exists (see [`RemoteDoors::with_liveness`]).
async fn send_until(pool: &ChannelPool, alive: Option<&DoorAlive>, door: &str, push: Push) -> bool {
    let Some(alive) = alive else {
        let sent = send(pool, door, push.ops, push.body.freeze()).await;
        return matches!(sent, Pushed::Taken);
    };
    let body = push.body.freeze();
    let give_up = tokio::time::Instant::now() + PUSH_DEADLINE;
    let mut pause = Duration::from_millis(20);
    loop {
        if !alive(door) {
            debug!(%door, "the front door's host is gone: WebSocket outputs for it dropped");
            return true;
        }
        match send(pool, door, push.ops.clone(), body.clone()).await {
            Pushed::Taken => return true,
            Pushed::Unsent if tokio::time::Instant::now() + pause < give_up => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Pushed::Unsent => return !alive(door),
            Pushed::Refused => return false,
            // Never sent again (it may have been applied): taken if the
            // door turns out to be gone with its host, else failed.
            Pushed::Lost => {
                while alive(door) && tokio::time::Instant::now() < give_up {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                return !alive(door);
            }
        }
    }
}

async fn send(pool: &ChannelPool, door: &str, ops: Vec<SocketOp>, body: Bytes) -> Pushed {
    if ops.is_empty() {
        return Pushed::Taken;
    }
    let channel = match pool.get(door).await {
        Ok(channel) => channel,
        Err(e) => {
            warn!(%door, error = %e, "cannot reach the front door: WebSocket outputs not sent");
            return Pushed::Unsent;
        }
    };
    let request = Request::SocketOutput(SocketOutput { ops });
    match channel.call(request, body, PUSH_DEADLINE).await {
        Ok((Response::Socket, _)) => Pushed::Taken,
        Ok((other, _)) => {
            warn!(%door, answer = ?other, "the front door refused WebSocket outputs");
            Pushed::Refused
        }
        Err(odo_transport::CallError::NotSent { .. }) => Pushed::Unsent,
        Err(e) => {
            warn!(%door, error = %e, "WebSocket outputs lost on the way to the front door");
            Pushed::Lost
        }
    }
}
