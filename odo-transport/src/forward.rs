//! The one forwarder: how a call reaches an object in another process,
//! and what its failure means for the caller.
//!
//! The router (forwarding HTTP requests) and the workers (forwarding calls
//! between objects) both use [`Forwarder`]: placement lookup through a
//! [`PlacementSource`], pooled channels, the one retry policy of
//! [`odo_core::retry`], the caller's remaining deadline and call chain
//! passed on ([`call_meta`]), and one error type, [`ForwardError`], whose
//! [`outcome`](ForwardError::outcome) says whether the call may have taken
//! effect.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::placement::{PlacementSource, ShardLocation};
use odo_core::retry::{AttemptKind, Decision, RetryPolicy};
use odo_core::wire::{CallMeta, FetchRequest, HttpHead, Request, Response, RpcCall, Target};
use odo_core::{ObjectAddress, ObjectId, WireError};
use tokio::time::Instant;
use tracing::debug;

use crate::{CallError, ChannelPool, ClientConfig};

/// Why a forwarded call has no answer from its object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The object's side answered with an error (see [`WireError`] for
    /// what each means).
    #[error(transparent)]
    Object(#[from] WireError),
    /// No worker took the call before the deadline (no worker held the
    /// object's shard, none could be reached, or the shard kept moving): it
    /// was never delivered, so it is safe to send again.
    #[error("no worker available for the object: {0}")]
    Unavailable(String),
    /// The call was written to a worker that went away before answering:
    /// the outcome is unknown, and it is not retried.
    #[error("outcome unknown: {0}")]
    Lost(String),
    /// The deadline passed. `written`: whether the call may have reached the
    /// object (its outcome is then unknown); if not, it never will.
    #[error("deadline exceeded")]
    Deadline {
        /// Whether the call may have been delivered.
        written: bool,
    },
}

/// What a caller knows about a call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It never reached the object: sending it again is safe.
    NotDelivered,
    /// The object ran it and it failed; its turn's writes were rolled back
    /// (except those it committed before calling out; see DURABILITY.md).
    Failed,
    /// It may or may not have taken effect.
    Unknown,
}

impl Outcome {
    /// What the caller knows of a call that the object's side answered
    /// `error`.
    pub fn of(error: &WireError) -> Outcome {
        match error {
            WireError::Moved { .. }
            | WireError::Overloaded
            | WireError::UnknownClass { .. }
            | WireError::CallCycle { .. }
            | WireError::CallTooDeep { .. }
            | WireError::UnknownSocket
            | WireError::ShardRefused { .. } => Outcome::NotDelivered,
            WireError::ObjectReset { .. } | WireError::BadRequest { .. } => Outcome::Failed,
            WireError::OutcomeUnknown { .. }
            | WireError::PartlyDelivered { .. }
            | WireError::DeadlineExceeded
            | WireError::Internal { .. } => Outcome::Unknown,
        }
    }
}

impl ForwardError {
    /// What the caller knows about the call's effect.
    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Unavailable(_) | ForwardError::Deadline { written: false } => {
                Outcome::NotDelivered
            }
            ForwardError::Lost(_) | ForwardError::Deadline { written: true } => Outcome::Unknown,
            ForwardError::Object(error) => Outcome::of(error),
        }
    }

    /// Whether sending the call again later is safe and may succeed: it was
    /// never delivered, and what stopped it is transient (no worker, a full
    /// queue, a moving shard, a deadline that passed before sending).
    pub fn retryable(&self) -> bool {
        match self {
            ForwardError::Unavailable(_) | ForwardError::Deadline { written: false } => true,
            ForwardError::Object(error) => error.retryable(),
            ForwardError::Lost(_) | ForwardError::Deadline { written: true } => false,
        }
    }
}

/// What a forwarder sends: an HTTP request (its body is the call's body) or
/// an RPC call (its arguments are).
#[derive(Debug, Clone)]
pub enum OutboundCall {
    /// An HTTP request's head.
    Fetch(HttpHead),
    /// An RPC call to a method.
    Rpc {
        /// The method's name.
        method: String,
    },
    /// An event of a client's WebSocket (the payload is the call's body).
    Socket {
        /// The front door holding the socket.
        door: String,
        /// The socket.
        socket: u64,
        /// When its auto-response was last answered, if ever.
        auto_response_ms: Option<u64>,
        /// What happened.
        kind: odo_core::socket::SocketEventKind,
    },
}

impl OutboundCall {
    fn request(&self, target: Target, meta: CallMeta) -> Request {
        match self {
            OutboundCall::Fetch(head) => Request::Fetch(FetchRequest {
                target,
                meta,
                head: head.clone(),
            }),
            OutboundCall::Rpc { method } => Request::Rpc(RpcCall {
                target,
                meta,
                method: method.clone(),
            }),
            OutboundCall::Socket {
                door,
                socket,
                auto_response_ms,
                kind,
            } => Request::Socket(odo_core::socket::SocketEvent {
                target,
                meta,
                door: door.clone(),
                socket: *socket,
                auto_response_ms: *auto_response_ms,
                kind: kind.clone(),
            }),
        }
    }
}

/// Where a forwarded call ended.
#[derive(Debug)]
pub enum Delivery {
    /// The owning worker answered.
    Answered(Response, Bytes),
    /// The object's shard is served by this process: deliver the call here
    /// (only when the caller says which shards are its own).
    Local,
}

/// The one way to reach an object in another process: look its shard up in
/// a [`PlacementSource`], send the call over a pooled [`Channel`](crate::Channel)
/// stamped with the shard's epoch and the caller's remaining deadline and
/// call chain, and follow the one retry rule ([`odo_core::retry`]): only a
/// call that was never written, or that the worker answered `Moved`, is
/// sent again, after the placement changes or a short backoff, never past
/// the deadline. The router and the workers (for calls between objects)
/// both use it.
pub struct Forwarder {
    placement: Arc<dyn PlacementSource>,
    channels: ChannelPool,
    retry: RetryPolicy,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("placement_version", &self.placement.version())
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// One attempt's result, classified for the retry policy.
struct Tried {
    kind: AttemptKind,
    result: Result<(Response, Bytes), ForwardError>,
    why: String,
}

impl Tried {
    fn not_written(why: String) -> Self {
        Tried {
            kind: AttemptKind::NotWritten,
            result: Err(ForwardError::Unavailable(why.clone())),
            why,
        }
    }
}

/// Classifies the result of one [`Channel::call`](crate::Channel::call).
fn classify(result: Result<(Response, Bytes), CallError>) -> Tried {
    let why = match &result {
        Err(e) => e.to_string(),
        Ok((Response::Error(e), _)) => e.to_string(),
        Ok(_) => String::new(),
    };
    let (kind, result) = match result {
        Ok((Response::Error(error), _)) => (
            AttemptKind::of_error(&error),
            Err(ForwardError::Object(error)),
        ),
        Ok(answer) => (AttemptKind::Answered, Ok(answer)),
        Err(CallError::DeadlineExceeded { written, .. }) => (
            AttemptKind::TimedOut { written },
            Err(ForwardError::Deadline { written }),
        ),
        Err(CallError::NotSent { .. } | CallError::Closed { .. }) => (
            AttemptKind::NotWritten,
            Err(ForwardError::Unavailable(why.clone())),
        ),
        Err(CallError::Lost { .. } | CallError::Protocol { .. }) => {
            (AttemptKind::Lost, Err(ForwardError::Lost(why.clone())))
        }
        // Refused before anything was sent, for good: the caller's answer.
        Err(CallError::TooLarge { .. }) => (
            AttemptKind::Refused,
            Err(ForwardError::Object(WireError::BadRequest {
                message: why.clone(),
            })),
        ),
        Err(CallError::Encode(_)) => (
            AttemptKind::Refused,
            Err(ForwardError::Object(WireError::Internal {
                message: why.clone(),
            })),
        ),
    };
    Tried { kind, result, why }
}

impl Forwarder {
    /// A forwarder following `placement`, connecting with `client`, with
    /// the default retry policy.
    pub fn new(placement: Arc<dyn PlacementSource>, client: ClientConfig) -> Self {
        Self {
            placement,
            channels: ChannelPool::new(client),
            retry: RetryPolicy::default(),
        }
    }

    /// The placement it follows.
    pub fn placement(&self) -> &Arc<dyn PlacementSource> {
        &self.placement
    }

    /// Sends `call` with `body` to `object`'s worker, by `deadline`, with
    /// the call chain `chain` (the objects waiting on this call, outermost
    /// first; empty from outside any object). `is_local` says whether this
    /// process serves the located shard itself: then the answer is
    /// [`Delivery::Local`] and nothing is sent.
    pub async fn forward(
        &self,
        object: &ObjectAddress,
        call: &OutboundCall,
        body: Bytes,
        deadline: Instant,
        chain: &[ObjectId],
        is_local: &(dyn Fn(&ShardLocation) -> bool + Send + Sync),
    ) -> Result<Delivery, ForwardError> {
        let mut retry = self.retry.start();
        loop {
            let location = self.placement.locate(&object.id);
            if is_local(&location) {
                return Ok(Delivery::Local);
            }
            let tried = match &location.owner {
                None => Tried::not_written(format!("shard {} has no worker", location.shard)),
                Some(owner) => match self.channels.get(&owner.endpoint).await {
                    Err(e) => {
                        Tried::not_written(format!("cannot connect to {}: {e}", owner.endpoint))
                    }
                    Ok(channel) => {
                        let target = Target {
                            object: object.clone(),
                            shard: location.shard,
                            epoch: location.epoch,
                        };
                        let request = call.request(target, call_meta(deadline, chain.to_vec()));
                        classify(
                            channel
                                .call(request, body.clone(), remaining(deadline))
                                .await,
                        )
                    }
                },
            };
            match retry.decide(tried.kind, remaining(deadline)) {
                Decision::Return => {
                    return tried
                        .result
                        .map(|(response, body)| Delivery::Answered(response, body));
                }
                Decision::GiveUp => return Err(ForwardError::Unavailable(tried.why)),
                Decision::Retry { after } => {
                    debug!(object = %object, reason = %tried.why, "retrying once the placement changes");
                    let _ =
                        tokio::time::timeout(after, self.placement.changed(location.version)).await;
                }
            }
        }
    }
}

/// The time left until `deadline` (zero once it passed).
pub fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The envelope fields that pass the caller's remaining deadline and call
/// chain on to the callee (never a fresh default per hop).
pub fn call_meta(deadline: Instant, chain: Vec<ObjectId>) -> CallMeta {
    CallMeta {
        // Rounded down: the callee counts it from when the call arrives,
        // so a deadline rounded up moved later at every hop (by up to a
        // millisecond, plus the time on the way). A call with less than a
        // millisecond left arrives with none, and fails at once.
        deadline_ms: remaining(deadline).as_millis() as u64,
        chain,
    }
}

/// The deadline a received envelope gives the callee: `meta.deadline_ms`
/// from now (capped so that it cannot overflow the clock).
pub fn deadline_of(meta: &CallMeta) -> Instant {
    Instant::now() + Duration::from_millis(meta.deadline_ms).min(crate::MAX_DEADLINE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloseReason, Endpoint};

    fn endpoint() -> Endpoint {
        "tcp:127.0.0.1:1".parse().unwrap()
    }

    fn kind(result: Result<(Response, Bytes), CallError>) -> AttemptKind {
        classify(result).kind
    }

    #[test]
    fn only_what_was_never_delivered_may_be_retried() {
        let moved = Ok((Response::Error(WireError::Moved { epoch: 3 }), Bytes::new()));
        assert_eq!(kind(moved), AttemptKind::Moved);
        let not_sent = Err(CallError::NotSent {
            endpoint: endpoint(),
            reason: CloseReason::PeerClosed,
        });
        assert_eq!(kind(not_sent), AttemptKind::NotWritten);
        let closed = Err(CallError::Closed {
            endpoint: endpoint(),
            reason: CloseReason::PeerClosed,
        });
        assert_eq!(kind(closed), AttemptKind::NotWritten);
        let lost = classify(Err(CallError::Lost {
            endpoint: endpoint(),
            reason: CloseReason::PeerClosed,
        }));
        assert_eq!(lost.kind, AttemptKind::Lost);
        assert!(matches!(lost.result, Err(ForwardError::Lost(_))));
        let late = classify(Err(CallError::DeadlineExceeded {
            endpoint: endpoint(),
            deadline: Duration::from_secs(1),
            written: true,
        }));
        assert_eq!(late.kind, AttemptKind::TimedOut { written: true });
        assert!(matches!(
            late.result,
            Err(ForwardError::Deadline { written: true })
        ));
        let overloaded = classify(Ok((Response::Error(WireError::Overloaded), Bytes::new())));
        assert_eq!(overloaded.kind, AttemptKind::Answered);
        assert!(matches!(
            overloaded.result,
            Err(ForwardError::Object(WireError::Overloaded))
        ));
        assert_eq!(
            kind(Ok((Response::Rpc, Bytes::from_static(b"x")))),
            AttemptKind::Answered
        );
    }

    #[test]
    fn outcomes_say_what_the_caller_knows() {
        use Outcome::*;
        let cases = [
            (ForwardError::Unavailable("x".into()), NotDelivered, true),
            (
                ForwardError::Deadline { written: false },
                NotDelivered,
                true,
            ),
            (ForwardError::Deadline { written: true }, Unknown, false),
            (ForwardError::Lost("x".into()), Unknown, false),
            (
                ForwardError::Object(WireError::Overloaded),
                NotDelivered,
                true,
            ),
            (
                ForwardError::Object(WireError::CallCycle { chain: vec![] }),
                NotDelivered,
                false,
            ),
            (
                ForwardError::Object(WireError::CallTooDeep { depth: 17, max: 16 }),
                NotDelivered,
                false,
            ),
            (
                ForwardError::Object(WireError::ObjectReset { reason: "x".into() }),
                Failed,
                false,
            ),
            (
                ForwardError::Object(WireError::OutcomeUnknown { reason: "x".into() }),
                Unknown,
                false,
            ),
        ];
        for (error, outcome, retryable) in cases {
            assert_eq!(error.outcome(), outcome, "{error:?}");
            assert_eq!(error.retryable(), retryable, "{error:?}");
        }
    }

    /// The time a call passes on is never more than its caller had left:
    /// the callee counts it from when the call arrives, so anything more
    /// moved the deadline later at every hop (rounded up, a 1,000-hop
    /// chain still worked 0.9 s after its request had timed out).
    #[tokio::test(start_paused = true)]
    async fn the_remaining_deadline_is_passed_on_rounded_down() {
        for (left_us, passed_ms) in [
            (0, 0),
            (400, 0),
            (1_000, 1),
            (1_500, 1),
            (29_999_999, 29_999),
        ] {
            let deadline = Instant::now() + Duration::from_micros(left_us);
            assert_eq!(
                call_meta(deadline, vec![]).deadline_ms,
                passed_ms,
                "{left_us} us left"
            );
        }
        let deadline = Instant::now() + Duration::from_micros(1500);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(call_meta(deadline, vec![]).deadline_ms, 0);
    }
}
