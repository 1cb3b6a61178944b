//! What workers send a front door: the outputs of objects' turns for its
//! sockets (sends, in parts when large; closes; attachments; the
//! auto-response), applied in the order they arrive, and the door's
//! records of its sockets, which an object's new worker is handed.

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::socket::{
    DoorSockets, ShardSockets, ShardSocketsPage, SocketOp, SocketOutput, SocketRecord, close_code,
};
use odo_core::wire::{Request, Response};
use odo_core::{ObjectId, WireError};
use tracing::debug;
use tungstenite::protocol::CloseFrame;

use super::outbound::{Out, Outbound};
use super::parts::Flow;
use super::{Door, Kill, SOCKET_RECORDS_PAGE_BYTES, State};

/// How the door closes a socket that missed a message its object sent
/// (cut off in parts): as a restart, so its client reconnects and reads
/// again what it missed.
const CUT_OFF: Kill = Kill {
    code: close_code::SERVICE_RESTART,
    reason: "a message to this socket was cut off: reconnect",
};

/// The send queues of the sockets in `cut` still open.
fn cut_off(state: &State, mut cut: Vec<u64>) -> Vec<Arc<Outbound>> {
    cut.sort_unstable();
    cut.dedup();
    if !cut.is_empty() {
        tracing::warn!(
            sockets = cut.len(),
            "a WebSocket message cut off in parts: closing its sockets with 1012"
        );
    }
    cut.iter()
        .filter_map(|id| state.sockets.get(id).map(|s| s.out.clone()))
        .collect()
}

impl Door {
    /// Answers a request a worker sent this door (its transport
    /// endpoint's handler): applies `SocketOutput`s, and answers
    /// `SocketRecords` with a page of [`Door::shard_sockets_page`]. Answers at once,
    /// without waiting, so outputs are applied in the order they arrive.
    pub fn handle_request(&self, request: Request, body: Bytes) -> (Response, Bytes) {
        match request {
            Request::SocketOutput(output) => match self.apply(output, body) {
                Ok(()) => (Response::Socket, Bytes::new()),
                Err(e) => (Response::Error(e), Bytes::new()),
            },
            Request::SocketRecords(asked) => (
                Response::SocketRecords(self.shard_sockets_page(&asked, SOCKET_RECORDS_PAGE_BYTES)),
                Bytes::new(),
            ),
            _ => (
                Response::Error(WireError::BadRequest {
                    message: "a front door takes only WebSocket outputs".into(),
                }),
                Bytes::new(),
            ),
        }
    }

    /// Applies an object's outputs (their payloads in `body`): sends,
    /// closes, attachments, the auto-response. Outputs for sockets that are
    /// gone are dropped. Outputs that cannot be applied (they overrun the
    /// body, a text message is not UTF-8) fail the rest of them; the
    /// sockets of a message that was dropped or cut off are closed (1012)
    /// even then.
    pub fn apply(&self, output: SocketOutput, body: Bytes) -> Result<(), WireError> {
        let mut overflowed = Vec::new();
        let mut cut = Vec::new();
        let mut state = self.state();
        let now = self.clock_ms();
        let applied = self.apply_ops(&mut state, output, body, now, &mut overflowed, &mut cut);
        let cut = cut_off(&state, cut);
        drop(state);
        for out in overflowed {
            out.kill(Kill {
                code: close_code::POLICY_VIOLATION,
                reason: "the client does not read its messages",
            });
        }
        for out in cut {
            out.kill(CUT_OFF);
        }
        applied
    }

    fn apply_ops(
        &self,
        state: &mut State,
        output: SocketOutput,
        body: Bytes,
        now_ms: u64,
        overflowed: &mut Vec<Arc<Outbound>>,
        cut: &mut Vec<u64>,
    ) -> Result<(), WireError> {
        let cap = self.config().send_buffer_bytes;
        let mut at = 0usize;
        let mut payload = |len: usize| -> Result<Bytes, WireError> {
            let end = at
                .checked_add(len)
                .filter(|&end| end <= body.len())
                .ok_or_else(|| WireError::BadRequest {
                    message: "socket output ops overrun the body".into(),
                })?;
            let bytes = body.slice(at..end);
            at = end;
            Ok(bytes)
        };
        for op in output.ops {
            match op {
                SocketOp::Send {
                    sockets,
                    binary,
                    len,
                    more,
                    continued,
                    message,
                } => {
                    let part = payload(len as usize)?;
                    let added = state.parts.add(
                        &sockets,
                        binary,
                        part,
                        Flow {
                            more,
                            continued,
                            message,
                        },
                        now_ms,
                    );
                    cut.extend(added.cut);
                    let Some((binary, whole)) = added.whole else {
                        continue;
                    };
                    if !binary && std::str::from_utf8(&whole).is_err() {
                        cut.extend(sockets);
                        return Err(WireError::BadRequest {
                            message: "a text message that is not UTF-8".into(),
                        });
                    }
                    // Framed once: every socket sends the same bytes.
                    let frame = Out::data(binary, &whole);
                    for id in sockets {
                        if let Some(socket) = state.sockets.get(&id)
                            && !socket.out.push(frame.clone(), cap)
                        {
                            overflowed.push(socket.out.clone());
                        }
                    }
                }
                SocketOp::Close {
                    socket,
                    code,
                    reason,
                } => {
                    if let Some(socket) = state.sockets.get(&socket) {
                        let frame = CloseFrame {
                            code: code.into(),
                            reason: reason.into(),
                        };
                        socket.out.push(Out::Close(frame), usize::MAX);
                    }
                }
                SocketOp::Attach { socket, len } => {
                    let value = match len {
                        Some(len) => Some(Box::from(&payload(len as usize)?[..])),
                        None => None,
                    };
                    if let Some(socket) = state.sockets.get_mut(&socket) {
                        socket.attachment = value;
                    }
                }
                SocketOp::AutoResponse { object, pair } => {
                    if let Some(obj) = state.objects.get_mut(&object) {
                        obj.auto_response = pair;
                    }
                }
            }
        }
        Ok(())
    }

    /// The idle sweep's part: a message whose next part has not come for
    /// `stale_ms` was cut off (its worker died between two parts, or gave
    /// up on a push: a worker sends a message's parts one after the other,
    /// each within its push deadline). It is dropped and its sockets
    /// closed (1012).
    pub(crate) fn cut_stale_parts(&self, now_ms: u64, stale_ms: u64) {
        let mut state = self.state();
        if state.parts.len() == 0 {
            return;
        }
        let cut = state.parts.cut_stale(now_ms, stale_ms);
        if cut.is_empty() {
            return;
        }
        debug!(
            sockets = cut.len(),
            "a message in parts whose rest never came dropped"
        );
        let cut = cut_off(&state, cut);
        drop(state);
        for out in cut {
            out.kill(CUT_OFF);
        }
    }

    /// Messages being put together from parts.
    pub fn partial_messages(&self) -> usize {
        self.state().parts.len()
    }

    /// What the door keeps of `object`'s sockets, for its next worker.
    pub(crate) fn records(&self, object: &ObjectId) -> Vec<SocketRecord> {
        let state = self.state();
        let Some(obj) = state.objects.get(object) else {
            return Vec::new();
        };
        obj.sockets
            .iter()
            .filter_map(|id| Some((*id, state.sockets.get(id)?)))
            .filter(|(_, s)| s.accepted)
            .map(|(id, s)| s.record(id))
            .collect()
    }

    /// What the door holds of the sockets of every object of `shard` (of
    /// `shard_count`), for the shard's new holder: in a cluster, the host
    /// that takes over a shard asks every host's door before it serves it,
    /// so its objects know their sockets at every door, not only at the
    /// doors whose clients speak first. All of it at once: what
    /// [`Door::shard_sockets_page`] gives without a bound.
    pub fn shard_sockets(&self, shard: u32, shard_count: u32) -> Vec<DoorSockets> {
        let asked = ShardSockets {
            shard,
            shard_count,
            after: None,
        };
        self.shard_sockets_page(&asked, usize::MAX).objects
    }

    /// One page of what the door holds of the sockets of `asked`'s shard:
    /// in (object, socket) order from after `asked.after`, at most
    /// `max_bytes` of records (by [`SocketRecord::estimated_bytes`]; a
    /// record larger than that alone on its page). Each page is read under
    /// the door's lock, so a shard of many sockets with large attachments
    /// neither passes a frame nor holds the lock for all of them at once.
    pub fn shard_sockets_page(&self, asked: &ShardSockets, max_bytes: usize) -> ShardSocketsPage {
        let state = self.state();
        let after = asked.after;
        let mut objects: Vec<&ObjectId> = state
            .objects
            .keys()
            .filter(|id| id.shard(asked.shard_count) == asked.shard)
            .filter(|id| after.is_none_or(|(from, _)| **id >= from))
            .collect();
        objects.sort_unstable();
        let mut page = ShardSocketsPage::default();
        let mut bytes = 0usize;
        let mut last = None;
        for id in objects {
            let Some(obj) = state.objects.get(id) else {
                continue;
            };
            let from = match after {
                Some((object, socket)) if object == *id => Bound::Excluded(socket),
                _ => Bound::Unbounded,
            };
            let mut sockets = Vec::new();
            let mut full = false;
            for &n in obj.sockets.range((from, Bound::Unbounded)) {
                let Some(socket) = state.sockets.get(&n).filter(|s| s.accepted) else {
                    continue;
                };
                let record = socket.record(n);
                let size = record.estimated_bytes();
                if bytes > 0 && bytes + size > max_bytes {
                    full = true;
                    break;
                }
                bytes += size;
                last = Some((*id, n));
                sockets.push(record);
            }
            if !sockets.is_empty() {
                page.objects.push(DoorSockets {
                    door: self.endpoint().to_owned(),
                    object: *id,
                    sockets,
                    auto_response: obj.auto_response.clone(),
                });
            }
            if full {
                page.next = last;
                break;
            }
        }
        page
    }

    /// The object's auto-response pair, as the door keeps it.
    pub(crate) fn auto_response(&self, object: &ObjectId) -> Option<(String, String)> {
        self.state()
            .objects
            .get(object)
            .and_then(|o| o.auto_response.clone())
    }
}
