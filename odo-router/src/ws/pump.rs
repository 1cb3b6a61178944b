//! Delivering one object's events: one call at a time, in arrival order,
//! the whole messages that queued meanwhile together in one batch (each
//! still its own turn at the object), and what a failure means for the
//! sockets whose events they were.
//!
//! An event that was never delivered (no worker holds the object's shard
//! yet, its worker is being replaced) waits at the head of the object's
//! queue and is sent again, to whichever activation then holds the object;
//! the events behind it wait in the bounded queue. An event whose outcome
//! is unknown (its worker died while it ran) is never sent again: its
//! socket is closed with 1012 so that its client can reconnect and check,
//! and its object gets the close event. The object's other sockets stay
//! open. Of a lost batch, each socket with a message in it is closed so:
//! the door cannot tell which of them ran.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use odo_core::socket::{BatchedMessage, SocketEventKind, SocketRecord, close_code};
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_transport::forward::Outcome;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Door, Kill, Pending, SOCKET_RECORDS_PAGE_BYTES, lock};
use crate::service::{ForwardError, SocketEventOut};

/// The largest part of a message sent in one event: a message larger than
/// one wire frame travels in several.
const PART_BYTES: usize = 4 * 1024 * 1024;
/// The first pause before sending an undelivered event again; doubled up
/// to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Whole messages delivered in one call at most (their bytes at most
/// [`PART_BYTES`]).
const BATCH_MESSAGES: usize = 64;

/// What the pump sends next: one event, or the whole messages that queued
/// behind one another, as one batch.
enum Next {
    One(Pending, Option<u64>),
    Batch(Vec<(Pending, Option<u64>)>),
}

/// Delivers `object`'s queued events until its queue is empty.
pub(super) async fn pump(door: Door, object: ObjectId) {
    loop {
        let next = {
            let mut state = door.state();
            let state = &mut *state;
            let Some(obj) = state.objects.get_mut(&object) else {
                return;
            };
            let auto_response_ms =
                |socket: u64| state.sockets.get(&socket).and_then(|s| s.auto_response_ms);
            match obj.pop() {
                Some(pending) => {
                    let address = obj.address.clone();
                    let mut batch = Vec::new();
                    let mut bytes = pending.payload.len();
                    let more = batchable(&pending);
                    while more
                        && batch.len() + 1 < BATCH_MESSAGES
                        && obj
                            .queue
                            .front()
                            .is_some_and(|p| batchable(p) && bytes + p.payload.len() <= PART_BYTES)
                    {
                        let Some(p) = obj.pop() else {
                            break;
                        };
                        bytes += p.payload.len();
                        let at = auto_response_ms(p.socket);
                        batch.push((p, at));
                    }
                    let at = auto_response_ms(pending.socket);
                    if batch.is_empty() {
                        Some((address, Next::One(pending, at)))
                    } else {
                        batch.insert(0, (pending, at));
                        Some((address, Next::Batch(batch)))
                    }
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
        match next {
            None => {
                door.inner.changed.notify_waiters();
                return;
            }
            Some((address, Next::One(pending, at))) => deliver(&door, address, pending, at).await,
            Some((address, Next::Batch(batch))) => deliver_batch(&door, address, batch).await,
        }
    }
}

/// Whether `pending` may travel in a batch: a whole message that fits one
/// part.
fn batchable(pending: &Pending) -> bool {
    matches!(pending.kind, SocketEventKind::Message { .. }) && pending.payload.len() <= PART_BYTES
}

/// Delivers a batch of whole messages in one call: each is a turn of its
/// own at the object, as if sent one by one. A batch the worker refused as
/// a whole (nothing of it ran) is sent again or, if the refusal is not
/// transient, message by message, so each gets what it alone would have;
/// of a batch that ran in part (the shard moved after its lead), the rest
/// is handled so. A batch whose outcome is unknown closes each of its
/// sockets with 1012, as a single message would.
async fn deliver_batch(door: &Door, address: ObjectAddress, batch: Vec<(Pending, Option<u64>)>) {
    door.inner.batches.fetch_add(1, Ordering::Relaxed);
    door.inner
        .batched_messages
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let first = batch.first().map_or(0, |(p, _)| p.socket);
    let rest = Mutex::new(batch);
    let ended = until_delivered(door, &address, first, None, || {
        send_batch(door, &address, &rest)
    })
    .await;
    let batch = rest.into_inner().unwrap_or_else(PoisonError::into_inner);
    let Err(Some(error)) = ended else { return };
    match error.outcome() {
        Outcome::NotDelivered => {
            debug!(object = %address, %error, "a batch of WebSocket messages refused: sending them one by one");
            for (pending, at) in batch {
                deliver(door, address.clone(), pending, at).await;
            }
        }
        Outcome::Failed => {
            warn!(object = %address, %error, "a message of a batch of WebSocket messages failed");
        }
        Outcome::Unknown => {
            warn!(
                object = %address, messages = batch.len(), %error,
                "the outcome of a batch of WebSocket messages is unknown: closing their sockets with 1012"
            );
            let mut sockets: Vec<u64> = batch.iter().map(|(p, _)| p.socket).collect();
            sockets.sort_unstable();
            sockets.dedup();
            for socket in sockets {
                restart_socket(door, &address.id, socket);
            }
        }
    }
}

/// Sends the messages of `batch` as one event, their payloads one after
/// the other in its body. If the lead of them ran and the rest was never
/// delivered, the lead leaves `batch` and the rest's error is returned.
async fn send_batch(
    door: &Door,
    address: &ObjectAddress,
    batch: &Mutex<Vec<(Pending, Option<u64>)>>,
) -> Result<(), ForwardError> {
    let deadline = Instant::now() + door.config().event_deadline;
    let (event, body) = batch_event(door, &lock(batch));
    match door
        .inner
        .service
        .socket_event(address.clone(), event, body, deadline)
        .await
    {
        Err(ForwardError::Object(WireError::PartlyDelivered { delivered, rest })) => {
            let mut batch = lock(batch);
            let delivered = (delivered as usize).min(batch.len());
            debug!(object = %address, delivered, "a batch of WebSocket messages ran in part");
            batch.drain(..delivered);
            if batch.is_empty() {
                Ok(())
            } else {
                Err(ForwardError::Object(*rest))
            }
        }
        other => other,
    }
}

/// The event that carries the messages of `batch`, and its body.
fn batch_event(door: &Door, batch: &[(Pending, Option<u64>)]) -> (SocketEventOut, Bytes) {
    let mut body = BytesMut::with_capacity(batch.iter().map(|(p, _)| p.payload.len()).sum());
    let mut messages = Vec::with_capacity(batch.len());
    for (pending, auto_response_ms) in batch {
        let SocketEventKind::Message { binary } = pending.kind else {
            continue;
        };
        body.extend_from_slice(&pending.payload);
        messages.push(BatchedMessage {
            socket: pending.socket,
            binary,
            len: pending.payload.len() as u32,
            auto_response_ms: *auto_response_ms,
        });
    }
    let event = SocketEventOut {
        door: door.endpoint().to_owned(),
        socket: batch.first().map_or(0, |(p, _)| p.socket),
        auto_response_ms: None,
        kind: SocketEventKind::Messages { messages },
    };
    (event, body.freeze())
}

async fn deliver(
    door: &Door,
    address: ObjectAddress,
    pending: Pending,
    auto_response_ms: Option<u64>,
) {
    let ended = until_delivered(
        door,
        &address,
        pending.socket,
        pending.record.as_ref(),
        || send(door, &address, &pending, auto_response_ms),
    )
    .await;
    let Err(Some(error)) = ended else { return };
    match error.outcome() {
        // The close of a socket the object never had (its upgrade ended
        // before the object answered, and the object did not take it).
        _ if matches!(error, ForwardError::Object(WireError::UnknownSocket))
            && pending.record.is_none()
            && !matches!(pending.kind, SocketEventKind::Message { .. }) =>
        {
            debug!(object = %address, socket = pending.socket, "a socket's last event: its object never had it");
        }
        Outcome::NotDelivered | Outcome::Failed => {
            warn!(object = %address, socket = pending.socket, %error, "a WebSocket event failed");
        }
        Outcome::Unknown => {
            if matches!(pending.kind, SocketEventKind::Message { .. }) {
                warn!(
                    object = %address, socket = pending.socket, %error,
                    "a WebSocket message's outcome is unknown: closing its socket with 1012"
                );
                restart_socket(door, &address.id, pending.socket);
            }
        }
    }
}

/// Makes `attempt` until it is delivered (`Ok`) or ends otherwise: the
/// door closing while it was not delivered yet (`Err(None)`, dropped), or
/// an error that sending again would not mend (`Err(Some)`). A worker that
/// does not know a socket (the object's worker changed since its sockets
/// were accepted) is handed the door's records once (with `record`, that
/// of a socket the door let go already), and the attempt made again; one
/// that was not delivered for a passing reason is made again after a
/// pause, 20 ms doubling up to 1 s.
async fn until_delivered<F>(
    door: &Door,
    address: &ObjectAddress,
    socket: u64,
    record: Option<&SocketRecord>,
    mut attempt: impl FnMut() -> F,
) -> Result<(), Option<ForwardError>>
where
    F: Future<Output = Result<(), ForwardError>>,
{
    let mut pause = FIRST_PAUSE;
    let mut handed_over = false;
    loop {
        let Err(mut error) = attempt().await else {
            return Ok(());
        };
        if matches!(error, ForwardError::Object(WireError::UnknownSocket)) && !handed_over {
            handed_over = true;
            match hand_over(door, address, socket, record).await {
                Ok(()) => continue,
                Err(e) => {
                    if e.outcome() == Outcome::Failed {
                        // Refused (the records do not fit one frame, say):
                        // every event of the object's sockets here would
                        // fail the same way. They are closed, so their
                        // clients reconnect, rather than their messages
                        // dropped one by one.
                        warn!(object = %address, error = %e, "the object's worker cannot be handed its sockets: closing them with 1011");
                        close_all(door, &address.id);
                    }
                    error = e;
                }
            }
        }
        if error.outcome() != Outcome::NotDelivered || !error.retryable() {
            return Err(Some(error));
        }
        if door.inner.closing.load(Ordering::SeqCst) {
            debug!(object = %address, "shutting down: an undelivered WebSocket event dropped");
            return Err(None);
        }
        debug!(object = %address, %error, "WebSocket event not delivered yet; sending it again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Hands the object's worker the door's record of the object's sockets
/// (and `record`, that of a socket the door has let go already, whose last
/// event is being sent), with the object's auto-response: in parts of at
/// most [`SOCKET_RECORDS_PAGE_BYTES`] when they are larger (a room of many sockets
/// with large attachments), which the worker takes all at the last.
async fn hand_over(
    door: &Door,
    address: &ObjectAddress,
    socket: u64,
    record: Option<&SocketRecord>,
) -> Result<(), ForwardError> {
    let mut sockets = door.records(&address.id);
    if let Some(record) = record {
        sockets.push(record.clone());
    }
    let auto_response = door.auto_response(&address.id);
    let parts = sync_parts(sockets);
    debug!(object = %address, parts = parts.len(), "handing the object's WebSockets to its worker");
    let mut again = true;
    'over: loop {
        let last = parts.len() - 1;
        for (i, sockets) in parts.iter().enumerate() {
            let event = SocketEventOut {
                door: door.endpoint().to_owned(),
                socket,
                auto_response_ms: None,
                kind: SocketEventKind::Sync {
                    sockets: sockets.clone(),
                    auto_response: auto_response.clone(),
                    more: i < last,
                    continued: i > 0,
                },
            };
            let deadline = Instant::now() + door.config().event_deadline;
            let sent = door
                .inner
                .service
                .socket_event(address.clone(), event, Bytes::new(), deadline)
                .await;
            match sent {
                Ok(()) => {}
                // A later part reached a worker that never had the first
                // (the object moved between them): once more from the
                // start.
                Err(ForwardError::Object(WireError::UnknownSocket)) if i > 0 && again => {
                    again = false;
                    continue 'over;
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(());
    }
}

/// `records` cut into parts of at most [`SOCKET_RECORDS_PAGE_BYTES`] (a record
/// larger than that alone in its part); at least one part, which may be
/// empty.
fn sync_parts(records: Vec<SocketRecord>) -> Vec<Vec<SocketRecord>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0usize;
    for record in records {
        let size = record.estimated_bytes();
        if bytes + size > SOCKET_RECORDS_PAGE_BYTES && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push(record);
        }
    }
    parts
}

/// Closes every socket of `object` at this door with 1011.
fn close_all(door: &Door, object: &ObjectId) {
    let state = door.state();
    let Some(obj) = state.objects.get(object) else {
        return;
    };
    for id in &obj.sockets {
        if let Some(s) = state.sockets.get(id) {
            s.out.kill(Kill {
                code: close_code::INTERNAL_ERROR,
                reason: "the object could not be handed its sockets: reconnect",
            });
        }
    }
}

/// Closes `socket` with 1012 (its last message may or may not have been
/// handled) and drops its messages still queued: none is delivered twice.
/// Both under the door's lock, so no message of the socket is queued
/// between them ([`Door::relay`] drops those of a closed socket).
fn restart_socket(door: &Door, object: &ObjectId, socket: u64) {
    let mut state = door.state();
    if let Some(obj) = state.objects.get_mut(object) {
        obj.drop_messages_of(socket);
    }
    if let Some(s) = state.sockets.get(&socket) {
        // A kill only wakes the socket; it never takes the door's lock.
        s.out.kill(Kill {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(socket: u64, attachment: usize) -> SocketRecord {
        SocketRecord {
            socket,
            tags: vec!["t".into()],
            attachment: Some(vec![0; attachment]),
            auto_response_ms: None,
        }
    }

    #[test]
    fn records_are_cut_into_parts_under_the_bound_in_order() {
        assert_eq!(sync_parts(Vec::new()), vec![Vec::<SocketRecord>::new()]);
        let records: Vec<SocketRecord> = (0..1_100).map(|i| record(i, 16_000)).collect();
        let parts = sync_parts(records.clone());
        assert!(parts.len() > 1);
        for part in &parts {
            let bytes: usize = part
                .iter()
                .map(|r| r.attachment.as_ref().map_or(0, Vec::len))
                .sum();
            assert!(!part.is_empty() && bytes <= SOCKET_RECORDS_PAGE_BYTES);
        }
        assert_eq!(parts.concat(), records);
        // One record larger than a part goes alone.
        let huge = vec![
            record(1, 10),
            record(2, SOCKET_RECORDS_PAGE_BYTES),
            record(3, 10),
        ];
        assert_eq!(sync_parts(huge).len(), 3);
    }
}
