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
use odo_core::socket::{DoorSockets, ShardSockets, SocketOp, SocketOutput};
use odo_core::wire::{Request, Response};
use odo_transport::{ChannelPool, ClientConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

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
}

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
        }
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

    fn shard_sockets(
        &self,
        door: &str,
        shard: u32,
        shard_count: u32,
    ) -> BoxFuture<'static, Result<Vec<DoorSockets>, String>> {
        let pool = self.pool.clone();
        let door = door.to_owned();
        async move {
            let channel = pool.get(&door).await.map_err(|e| e.to_string())?;
            let request = Request::SocketRecords(ShardSockets { shard, shard_count });
            match channel.call(request, Bytes::new(), PUSH_DEADLINE).await {
                Ok((Response::SocketRecords(records), _)) => Ok(records),
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
    door: String,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    queued_bytes: Arc<AtomicUsize>,
) {
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
                        ..
                    } if len > PUSH_BYTES => {
                        // Too large for one frame: its leading parts each
                        // fill a push of their own.
                        let mut rest = payload;
                        while rest.len() > PUSH_BYTES {
                            let part = rest.split_to(PUSH_BYTES);
                            push.ops.push(SocketOp::Send {
                                sockets: sockets.clone(),
                                binary,
                                len: part.len() as u32,
                                more: true,
                            });
                            push.body.extend_from_slice(&part);
                            pushes.push(std::mem::take(&mut push));
                        }
                        push.ops.push(SocketOp::Send {
                            sockets,
                            binary,
                            len: rest.len() as u32,
                            more,
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
        for push in pushes {
            let ok = !failed && send(&pool, &door, push.ops, push.body.freeze()).await;
            failed |= !ok;
            for done in push.done {
                let _ = done.send(ok);
            }
        }
    }
}

fn payload_len(op: &SocketOp) -> usize {
    match op {
        SocketOp::Send { len, .. } => *len as usize,
        SocketOp::Attach { len, .. } => len.unwrap_or(0) as usize,
        SocketOp::Close { .. } | SocketOp::AutoResponse { .. } => 0,
    }
}

async fn send(pool: &ChannelPool, door: &str, ops: Vec<SocketOp>, body: Bytes) -> bool {
    if ops.is_empty() {
        return true;
    }
    let channel = match pool.get(door).await {
        Ok(channel) => channel,
        Err(e) => {
            warn!(%door, error = %e, "cannot reach the front door: WebSocket outputs dropped");
            return false;
        }
    };
    let request = Request::SocketOutput(SocketOutput { ops });
    match channel.call(request, body, PUSH_DEADLINE).await {
        Ok((Response::Socket, _)) => true,
        Ok((other, _)) => {
            warn!(%door, answer = ?other, "the front door refused WebSocket outputs");
            false
        }
        Err(e) => {
            warn!(%door, error = %e, "WebSocket outputs lost on the way to the front door");
            false
        }
    }
}
