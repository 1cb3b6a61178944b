//! WebSocket events at the runtime: a front door's events for its
//! sockets, kept (parts of a message, the door's record of its sockets) or
//! run as turns of the object that accepted the socket (messages, closes,
//! errors), one event at a time or as a batch of messages.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::WireError;
use odo_core::socket::BatchedMessage;
use odo_core::{ObjectAddress, socket::SocketEventKind as Kind};
use odo_transport::forward::Outcome as Known;

use super::{Inner, unexpected};
use crate::call::CallScope;
use crate::mailbox::{EventKind, Outcome, SocketIn};
use crate::socket::{SocketKey, SyncRefused, WebSocketMessage};

impl Inner {
    /// See [`Runtime::socket_event`]. Parts of a message and a front door's
    /// record of its sockets are kept without a turn; messages, closes and
    /// errors are turns.
    pub(crate) async fn socket_event(
        &self,
        event: odo_core::socket::SocketEvent,
        epoch: Option<u64>,
        payload: Bytes,
        scope: CallScope,
    ) -> Result<(), WireError> {
        let target = event.target.object;
        let (_, shard) = self.locate(&target, epoch)?;
        let book = &shard.sockets;
        let key = SocketKey {
            door: book.door(&event.door),
            id: event.socket,
        };
        let id = target.id;
        if !matches!(event.kind, Kind::Sync { .. }) {
            book.end_handing(&id, &key.door);
        }
        if let Some(at) = event.auto_response_ms {
            book.set_auto_response_ms(&id, &key, at);
        }
        let max = self.config.websocket_max_message_bytes;
        // A socket this worker never saw (it was accepted under another
        // worker): the front door hands over its record first.
        let turn = matches!(
            event.kind,
            Kind::Message { .. } | Kind::Close { .. } | Kind::Error { .. }
        );
        if turn && !book.knows(&id, &key) {
            return Err(WireError::UnknownSocket);
        }
        let input = match event.kind {
            Kind::Messages { messages } => {
                return self
                    .socket_messages(target, epoch, &key.door, messages, payload, scope)
                    .await;
            }
            Kind::Part { first } => {
                return if book.add_part(&id, &key, first, &payload, max) {
                    Ok(())
                } else {
                    Err(WireError::BadRequest {
                        message: format!("a WebSocket message over the {max}-byte limit"),
                    })
                };
            }
            Kind::Sync {
                sockets,
                auto_response,
                more,
                continued,
            } => {
                let max = self.config.websocket_max_sockets_per_object;
                return book
                    .sync(&id, &key.door, sockets, auto_response, more, continued, max)
                    .map_err(|refused| match refused {
                        // The door starts the hand-over again.
                        SyncRefused::NoFirstPart => WireError::UnknownSocket,
                        SyncRefused::TooMany => WireError::BadRequest {
                            message: format!(
                                "a hand-over of more than {max} sockets of one object"
                            ),
                        },
                    });
            }
            Kind::Message { binary } => {
                let payload = book.complete(&id, &key, payload);
                if binary {
                    SocketIn::Message(WebSocketMessage::Binary(payload))
                } else {
                    match String::from_utf8(payload.to_vec()) {
                        Ok(text) => SocketIn::Message(WebSocketMessage::Text(text)),
                        Err(_) => {
                            return Err(WireError::BadRequest {
                                message: "a text message that is not UTF-8".into(),
                            });
                        }
                    }
                }
            }
            Kind::Close {
                code,
                reason,
                was_clean,
            } => {
                book.remove(&id, &key);
                SocketIn::Close {
                    code,
                    reason,
                    was_clean,
                }
            }
            Kind::Error { message } => {
                book.remove(&id, &key);
                SocketIn::Error(message)
            }
        };
        match self
            .deliver(target, epoch, EventKind::Socket(key, input), scope)
            .await?
        {
            Outcome::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// A batch of whole messages ([`Kind::Messages`]): every message is
    /// checked (its socket known here, its text UTF-8, the lengths adding
    /// up to the body) before any is queued, so a refused batch ran
    /// nothing and may be sent again; then all are queued at once, in
    /// order, each its own turn, and their answers awaited.
    async fn socket_messages(
        &self,
        target: ObjectAddress,
        epoch: Option<u64>,
        door: &Arc<str>,
        messages: Vec<BatchedMessage>,
        mut payload: Bytes,
        scope: CallScope,
    ) -> Result<(), WireError> {
        let (_, shard) = self.locate(&target, epoch)?;
        let book = &shard.sockets;
        let id = target.id;
        let total: u64 = messages.iter().map(|m| u64::from(m.len)).sum();
        if total != payload.len() as u64 {
            return Err(WireError::BadRequest {
                message: format!(
                    "a batch of WebSocket messages of {total} bytes in a body of {}",
                    payload.len()
                ),
            });
        }
        let max = self.config.websocket_max_message_bytes;
        let mut turns = Vec::with_capacity(messages.len());
        for message in &messages {
            let key = SocketKey {
                door: door.clone(),
                id: message.socket,
            };
            if !book.knows(&id, &key) {
                return Err(WireError::UnknownSocket);
            }
            let body = payload.split_to(message.len as usize);
            if body.len() > max {
                return Err(WireError::BadRequest {
                    message: format!("a WebSocket message over the {max}-byte limit"),
                });
            }
            let input = if message.binary {
                WebSocketMessage::Binary(body)
            } else {
                match String::from_utf8(body.to_vec()) {
                    Ok(text) => WebSocketMessage::Text(text),
                    Err(_) => {
                        return Err(WireError::BadRequest {
                            message: "a text message that is not UTF-8".into(),
                        });
                    }
                }
            };
            turns.push((key, message.auto_response_ms, input));
        }
        let mut in_flight = VecDeque::with_capacity(turns.len());
        let mut answered = Vec::with_capacity(turns.len());
        let mut refused = None;
        // The batch never fills the object's queue by itself: with no room
        // left, its oldest message is answered first. The room is asked of
        // the object's queue once, and again only after such a wait.
        let depth = self.config.queue_depth;
        let mut room = self.objects.room(&id, depth);
        for (key, auto_response_ms, input) in turns {
            while room == 0 {
                let Some(answer) = in_flight.pop_front() else {
                    break;
                };
                answered.push(answer.await);
                room = self.objects.room(&id, depth);
            }
            if let Some(at) = auto_response_ms {
                book.set_auto_response_ms(&id, &key, at);
            }
            let event = EventKind::Socket(key, SocketIn::Message(input));
            match self.submit(target.clone(), epoch, event, scope.clone()) {
                Ok(answer) => {
                    in_flight.push_back(answer);
                    room = room.saturating_sub(1);
                }
                // Nothing of the batch was queued: it may be sent again.
                Err(e) if in_flight.is_empty() && answered.is_empty() => return Err(e),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        for answer in in_flight {
            answered.push(answer.await);
        }
        let answers: Vec<Result<(), WireError>> = answered
            .into_iter()
            .map(|answer| match answer {
                Ok(Outcome::Done) => Ok(()),
                Ok(other) => Err(unexpected(other)),
                Err(e) => Err(e),
            })
            .collect();
        batch_answer(answers, refused)
    }
}

/// The one answer of a batch of messages, from its messages' answers in
/// order and the refusal that stopped queueing the rest, if one did:
///
/// - all ran and succeeded: `Ok`;
/// - none was delivered: the first refusal (the batch may be sent again);
/// - a leading run of messages was answered (none with an unknown
///   outcome) and all the rest were never delivered (the shard moved on
///   after them, say): [`WireError::PartlyDelivered`], so that the front
///   door sends only the rest again;
/// - otherwise the worst error: an unknown outcome outweighs a failure,
///   and "never delivered" in a batch that partly ran, not after its
///   answered lead, is an unknown outcome (the door cannot tell those
///   messages apart).
fn batch_answer(
    answers: Vec<Result<(), WireError>>,
    refused: Option<WireError>,
) -> Result<(), WireError> {
    let not_delivered =
        |a: &Result<(), WireError>| matches!(a, Err(e) if Known::of(e) == Known::NotDelivered);
    let lead = answers.iter().take_while(|a| !not_delivered(a)).count();
    let rest_refused = answers[lead..].iter().all(not_delivered);
    let first_refusal = answers[lead..]
        .iter()
        .find_map(|a| a.as_ref().err().cloned())
        .or_else(|| refused.clone());
    let lead_known = answers[..lead].iter().all(|a| {
        a.as_ref()
            .err()
            .is_none_or(|e| Known::of(e) != Known::Unknown)
    });
    if let (true, Some(rest)) = (rest_refused, first_refusal) {
        if lead == 0 {
            return Err(rest);
        }
        if lead_known {
            return Err(WireError::PartlyDelivered {
                delivered: lead as u32,
                rest: Box::new(rest),
            });
        }
    }
    let mut worst: Option<WireError> = None;
    for error in answers.into_iter().filter_map(Result::err).chain(refused) {
        let error = match Known::of(&error) {
            Known::NotDelivered => WireError::OutcomeUnknown {
                reason: format!("a message of a batch that partly ran was refused: {error}"),
            },
            _ => error,
        };
        let replace = match &worst {
            None => true,
            Some(w) => Known::of(w) != Known::Unknown && Known::of(&error) == Known::Unknown,
        };
        if replace {
            worst = Some(error);
        }
    }
    worst.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> WireError {
        WireError::ObjectReset {
            reason: "thrown".into(),
        }
    }

    fn unknown() -> WireError {
        WireError::OutcomeUnknown {
            reason: "commit failed".into(),
        }
    }

    fn moved() -> WireError {
        WireError::Moved { epoch: 4 }
    }

    #[test]
    fn a_batch_that_all_ran_answers_ok() {
        assert_eq!(batch_answer(vec![Ok(()), Ok(())], None), Ok(()));
    }

    #[test]
    fn a_batch_that_never_ran_may_be_sent_again() {
        let answers = vec![Err(WireError::Overloaded), Err(WireError::Overloaded)];
        assert_eq!(batch_answer(answers, None), Err(WireError::Overloaded));
        assert_eq!(batch_answer(Vec::new(), Some(moved())), Err(moved()));
    }

    #[test]
    fn a_batch_whose_rest_was_never_delivered_names_what_ran() {
        let partly = |delivered| {
            Err(WireError::PartlyDelivered {
                delivered,
                rest: Box::new(moved()),
            })
        };
        let answers = vec![Ok(()), Err(reset()), Err(moved()), Err(moved())];
        assert_eq!(batch_answer(answers, None), partly(2));
        assert_eq!(batch_answer(vec![Ok(())], Some(moved())), partly(1));
    }

    #[test]
    fn a_refusal_that_is_not_the_rest_is_an_unknown_outcome() {
        // Refused, then one ran: the door cannot send only the refused.
        let error = batch_answer(vec![Ok(()), Err(moved()), Ok(())], None);
        assert!(
            matches!(error, Err(WireError::OutcomeUnknown { .. })),
            "{error:?}"
        );
        // An unknown outcome in the lead: the lead cannot be trusted.
        let error = batch_answer(vec![Err(unknown()), Err(moved())], None);
        assert_eq!(error, Err(unknown()));
    }

    #[test]
    fn an_unknown_outcome_outweighs_a_failure() {
        let answers = vec![Err(reset()), Err(unknown()), Err(reset())];
        assert_eq!(batch_answer(answers, None), Err(unknown()));
        assert_eq!(batch_answer(vec![Err(reset())], None), Err(reset()));
    }
}
