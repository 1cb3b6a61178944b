//! Delivering one object's events: one at a time, in arrival order, and
//! what a failure means for the socket whose event it was.
//!
//! An event that was never delivered (no worker holds the object's shard
//! yet, its worker is being replaced) waits at the head of the object's
//! queue and is sent again, to whichever activation then holds the object;
//! the events behind it wait in the bounded queue. An event whose outcome
//! is unknown (its worker died while it ran) is never sent again: its
//! socket is closed with 1012 so that its client can reconnect and check,
//! and its object gets the close event. The object's other sockets stay
//! open.

use std::time::Duration;

use bytes::Bytes;
use odo_core::socket::{SocketEventKind, close_code};
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_transport::forward::Outcome;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Door, Kill, Pending};
use crate::service::{ForwardError, SocketEventOut};

/// The largest part of a message sent in one event: a message larger than
/// one wire frame travels in several.
const PART_BYTES: usize = 4 * 1024 * 1024;
/// The first pause before sending an undelivered event again; doubled up
/// to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Delivers `object`'s queued events until its queue is empty.
pub(super) async fn pump(door: Door, object: ObjectId) {
    loop {
        let next = {
            let mut state = door.state();
            let Some(obj) = state.objects.get_mut(&object) else {
                return;
            };
            match obj.queue.pop_front() {
                Some(pending) => {
                    let address = obj.address.clone();
                    let auto_response_ms = state
                        .sockets
                        .get(&pending.socket)
                        .and_then(|s| s.auto_response_ms);
                    Some((address, pending, auto_response_ms))
                }
                None => {
                    obj.pumping = false;
                    if obj.idle() {
                        state.objects.remove(&object);
                    }
                    None
                }
            }
        };
        let Some((address, pending, auto_response_ms)) = next else {
            door.inner.changed.notify_waiters();
            return;
        };
        deliver(&door, address, pending, auto_response_ms).await;
    }
}

async fn deliver(
    door: &Door,
    address: ObjectAddress,
    pending: Pending,
    auto_response_ms: Option<u64>,
) {
    let mut pause = FIRST_PAUSE;
    let mut handed_over = false;
    loop {
        let result = send(door, &address, &pending, auto_response_ms).await;
        let Err(mut error) = result else { return };
        // The object's worker changed since its sockets were accepted: it
        // gets the door's record of them (once per event), then the event.
        if matches!(error, ForwardError::Object(WireError::UnknownSocket)) && !handed_over {
            handed_over = true;
            match hand_over(door, &address, &pending).await {
                Ok(()) => continue,
                Err(e) => error = e,
            }
        }
        match error.outcome() {
            Outcome::NotDelivered if error.retryable() => {
                if door.inner.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    debug!(object = %address, "shutting down: an undelivered WebSocket event dropped");
                    return;
                }
                debug!(object = %address, %error, "WebSocket event not delivered yet; sending it again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Outcome::NotDelivered | Outcome::Failed => {
                warn!(object = %address, socket = pending.socket, %error, "a WebSocket event failed");
                return;
            }
            Outcome::Unknown => {
                if matches!(pending.kind, SocketEventKind::Message { .. }) {
                    warn!(
                        object = %address, socket = pending.socket, %error,
                        "a WebSocket message's outcome is unknown: closing its socket with 1012"
                    );
                    restart_socket(door, &address.id, pending.socket);
                }
                return;
            }
        }
    }
}

/// Hands the object's worker the door's record of the object's sockets
/// (and of the socket whose last event `pending` is, if the door has let
/// it go already), with the object's auto-response.
async fn hand_over(
    door: &Door,
    address: &ObjectAddress,
    pending: &Pending,
) -> Result<(), ForwardError> {
    let mut sockets = door.records(&address.id);
    if let Some(record) = &pending.record {
        sockets.push(record.clone());
    }
    debug!(object = %address, sockets = sockets.len(), "handing the object's WebSockets to its worker");
    let event = SocketEventOut {
        door: door.endpoint().to_owned(),
        socket: pending.socket,
        auto_response_ms: None,
        kind: SocketEventKind::Sync {
            sockets,
            auto_response: door.auto_response(&address.id),
        },
    };
    let deadline = Instant::now() + door.config().event_deadline;
    door.inner
        .service
        .socket_event(address.clone(), event, Bytes::new(), deadline)
        .await
}

/// Closes `socket` with 1012 (its last message may or may not have been
/// handled) and drops its messages still queued: none is delivered twice.
fn restart_socket(door: &Door, object: &ObjectId, socket: u64) {
    let mut state = door.state();
    if let Some(obj) = state.objects.get_mut(object) {
        obj.queue
            .retain(|p| p.socket != socket || !matches!(p.kind, SocketEventKind::Message { .. }));
    }
    let out = state.sockets.get(&socket).map(|s| s.out.clone());
    drop(state);
    if let Some(out) = out {
        out.kill(Kill {
            code: close_code::SERVICE_RESTART,
            reason: "service restart: the outcome of the last message is unknown",
        });
    }
}

/// Sends one event, in parts when its payload is larger than a part.
async fn send(
    door: &Door,
    address: &ObjectAddress,
    pending: &Pending,
    auto_response_ms: Option<u64>,
) -> Result<(), ForwardError> {
    let deadline = Instant::now() + door.config().event_deadline;
    let event = |kind: SocketEventKind| SocketEventOut {
        door: door.endpoint().to_owned(),
        socket: pending.socket,
        auto_response_ms,
        kind,
    };
    let mut rest: Bytes = pending.payload.clone();
    let mut first = true;
    while rest.len() > PART_BYTES {
        let part = rest.split_to(PART_BYTES);
        door.inner
            .service
            .socket_event(
                address.clone(),
                event(SocketEventKind::Part { first }),
                part,
                deadline,
            )
            .await?;
        first = false;
    }
    door.inner
        .service
        .socket_event(address.clone(), event(pending.kind.clone()), rest, deadline)
        .await
}
