//! The front doors of a cluster, as a host reaches them: a room's members
//! may enter at different hosts, so each socket is held by the door of the
//! host it entered at, named by that host's transport endpoint, while its
//! object runs on the shard's owner.
//!
//! - Outputs of this host's objects' turns (sent once the turn is durable,
//!   by the runtime's output gate) go to this host's own door in-process
//!   and to other hosts' doors over the hosts' authenticated transport
//!   (token, and mutual TLS when configured), one push in flight per door,
//!   in order ([`odo_worker::RemoteDoors`]).
//! - Other hosts' pushes to this host's door, and their requests for its
//!   records of a shard's sockets, arrive on the host's transport server
//!   beside requests for objects ([`HostHandler`]).
//! - A host taking over a shard asks every live member's door for its
//!   records of the shard's sockets first ([`gather`]), so the objects it
//!   serves know their members at every door from their first turn.
//! - A host that leaves the members takes its door with it: pushes to it
//!   are dropped from then on, and the objects here get close events for
//!   its sockets ([`follow_members`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_core::WireError;
use odo_core::socket::{DoorSockets, ShardSockets, ShardSocketsPage, SocketOutput, append_page};
use odo_core::wire::{Request, Response};
use odo_transport::{ClientConfig, Handler};
use odo_worker::{ObjectHandler, RemoteDoors, Runtime, WebSocketDoors};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::view::View;

/// How long a host taking over a shard waits for one door's records.
const GATHER_WITHIN: Duration = Duration::from_secs(2);
/// A door that did not answer is not asked again for this long (a host
/// taking over several shards waits for it once, not once per shard).
const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// The doors of the cluster: this host's own (set by the program that
/// holds it, once its front door exists), the others over the transport.
pub(crate) struct HostDoors {
    own: String,
    local: RwLock<Option<Arc<dyn WebSocketDoors>>>,
    remote: RemoteDoors,
    unreachable: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for HostDoors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDoors")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl HostDoors {
    /// The doors as the host at `own` reaches them, with `client` (the
    /// cluster's token and TLS).
    ///
    /// A door exists while its host is a live member in `view`: pushes to
    /// the door of a host that died are sent again until its lease expired,
    /// then dropped (its sockets ended with it).
    pub(crate) fn new(own: String, client: ClientConfig, view: watch::Receiver<Arc<View>>) -> Self {
        let alive = move |door: &str| {
            view.borrow()
                .members
                .values()
                .any(|m| m.member.endpoint == door)
        };
        Self {
            own,
            local: RwLock::new(None),
            remote: RemoteDoors::new(client).with_liveness(Arc::new(alive)),
            unreachable: Mutex::default(),
        }
    }

    /// Sets (or with `None` forgets) this host's own front door.
    pub(crate) fn set_local(&self, door: Option<Arc<dyn WebSocketDoors>>) {
        *self.local.write().unwrap_or_else(PoisonError::into_inner) = door;
    }

    fn local(&self) -> Option<Arc<dyn WebSocketDoors>> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl WebSocketDoors for HostDoors {
    fn submit(&self, door: &str, output: SocketOutput, body: Bytes) -> BoxFuture<'static, bool> {
        if door == self.own {
            return match self.local() {
                Some(local) => local.submit(door, output, body),
                // No door (yet, or any more): it holds no socket, and
                // outputs for sockets that are gone are dropped.
                None => async { true }.boxed(),
            };
        }
        self.remote.submit(door, output, body)
    }

    fn shard_sockets_page(
        &self,
        door: &str,
        asked: ShardSockets,
    ) -> BoxFuture<'static, Result<ShardSocketsPage, String>> {
        if door == self.own {
            return match self.local() {
                Some(local) => local.shard_sockets_page(door, asked),
                None => async { Ok(ShardSocketsPage::default()) }.boxed(),
            };
        }
        self.remote.shard_sockets_page(door, asked)
    }
}

/// What every door of `endpoints` (this host's own and each live member's)
/// holds of `shard`'s sockets. A door that does not answer within
/// [`GATHER_WITHIN`] is left out (and not asked again for a while): its
/// sockets are handed over with their next events instead, as after a
/// worker's restart on one machine.
pub(crate) async fn gather(
    doors: &HostDoors,
    endpoints: &[String],
    shard: u32,
    shard_count: u32,
) -> Vec<DoorSockets> {
    let now = Instant::now();
    let asked: Vec<&String> = {
        let mut unreachable = doors
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        unreachable.retain(|_, until| *until > now);
        endpoints
            .iter()
            .filter(|e| !unreachable.contains_key(*e))
            .collect()
    };
    let answers = futures_util::future::join_all(asked.iter().map(|door| {
        tokio::time::timeout(GATHER_WITHIN, all_pages(doors, door, shard, shard_count))
    }))
    .await;
    let mut out = Vec::new();
    for (door, answer) in asked.into_iter().zip(answers) {
        let error = match answer {
            Ok(Ok(records)) => {
                debug!(shard, %door, objects = records.len(), "a front door's sockets of the shard");
                out.extend(records);
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} ms", GATHER_WITHIN.as_millis()),
        };
        warn!(shard, %door, %error, "cannot ask a front door for its sockets of the shard: they are handed over with their next events");
        doors
            .unreachable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(door.clone(), Instant::now() + UNREACHABLE_FOR);
    }
    out
}

/// Every page of what `door` holds of `shard`'s sockets, joined.
async fn all_pages(
    doors: &HostDoors,
    door: &str,
    shard: u32,
    shard_count: u32,
) -> Result<Vec<DoorSockets>, String> {
    let mut all = Vec::new();
    let mut asked = ShardSockets {
        shard,
        shard_count,
        after: None,
    };
    loop {
        let page = doors.shard_sockets_page(door, asked.clone()).await?;
        append_page(&mut all, page.objects);
        match page.next {
            Some(next) if Some(next) != asked.after => asked.after = Some(next),
            Some(_) => return Err("a page of socket records that does not move on".into()),
            None => return Ok(all),
        }
    }
}

/// What a host's transport server answers: requests for its objects, and,
/// for its front door, other hosts' outputs and requests for its records.
#[derive(Debug)]
pub(crate) struct HostHandler {
    pub(crate) objects: ObjectHandler,
    pub(crate) doors: Arc<HostDoors>,
}

impl Handler for HostHandler {
    async fn handle(&self, request: Request, body: Bytes) -> (Response, Bytes) {
        match request {
            Request::SocketOutput(output) => {
                // Applied before this returns: pushes are applied in the
                // order they arrive (each door's sender keeps one in flight).
                let applied = self.doors.submit(&self.doors.own, output, body);
                if applied.await {
                    (Response::Socket, Bytes::new())
                } else {
                    let error = WireError::BadRequest {
                        message: "this host's front door did not take the outputs".into(),
                    };
                    (Response::Error(error), Bytes::new())
                }
            }
            Request::SocketRecords(asked) => {
                let page = self.doors.shard_sockets_page(&self.doors.own, asked).await;
                match page {
                    Ok(page) => (Response::SocketRecords(page), Bytes::new()),
                    Err(message) => (
                        Response::Error(WireError::Internal { message }),
                        Bytes::new(),
                    ),
                }
            }
            other => self.objects.handle(other, body).await,
        }
    }
}

/// Follows the members until `stop`: when a host leaves the members (its
/// lease expired or was revoked), its door is gone with it, and the objects
/// of this host's shards get close events for the sockets it held
/// ([`Runtime::door_gone`]).
pub(crate) async fn follow_members(
    runtime: Runtime,
    own: String,
    mut view: watch::Receiver<Arc<View>>,
    mut stop: watch::Receiver<bool>,
) {
    let endpoints = |view: &View| -> BTreeSet<String> {
        view.members
            .values()
            .map(|m| m.member.endpoint.clone())
            .collect()
    };
    let mut known = endpoints(&view.borrow_and_update());
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = endpoints(&view.borrow_and_update());
        for gone in known.difference(&now).filter(|e| **e != own) {
            let sockets = runtime.door_gone(gone);
            if sockets > 0 {
                info!(door = %gone, sockets, "a host left the members: its front door's sockets are closed for their objects");
            }
        }
        known = now;
    }
}
