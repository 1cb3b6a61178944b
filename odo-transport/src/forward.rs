//! What every forwarder shares: the rule for which failed attempts may be
//! sent again, the backoff between attempts, the deadline passed on to the
//! callee, and what a failure means for the caller.
//!
//! The router (forwarding HTTP requests) and the workers (forwarding calls
//! between objects) each keep their own loop over placement, but every
//! attempt's result goes through [`Attempt::of`], every wait through
//! [`Backoff`], and every envelope's deadline through [`call_meta`], so the
//! two cannot drift apart.

use std::time::Duration;

use bytes::Bytes;
use odo_core::wire::{CallMeta, Response};
use odo_core::{ObjectId, WireError};
use tokio::time::Instant;

use crate::CallError;

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

impl ForwardError {
    /// What the caller knows about the call's effect.
    pub fn outcome(&self) -> Outcome {
        match self {
            ForwardError::Unavailable(_) | ForwardError::Deadline { written: false } => {
                Outcome::NotDelivered
            }
            ForwardError::Lost(_) | ForwardError::Deadline { written: true } => Outcome::Unknown,
            ForwardError::Object(error) => match error {
                WireError::Moved { .. }
                | WireError::Overloaded
                | WireError::UnknownClass { .. }
                | WireError::CallCycle { .. } => Outcome::NotDelivered,
                WireError::ObjectReset { .. } | WireError::BadRequest { .. } => Outcome::Failed,
                WireError::OutcomeUnknown { .. }
                | WireError::DeadlineExceeded
                | WireError::Internal { .. } => Outcome::Unknown,
            },
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

/// What one attempt to send a call to an object's worker came to.
#[derive(Debug)]
pub enum Attempt {
    /// The worker answered (an answer, or an error other than `Moved`).
    Answered(Response, Bytes),
    /// The call was never delivered (not written, or answered `Moved`):
    /// look the placement up again and send it again, within the deadline.
    Retry(String),
    /// The call failed in a way that must not be retried.
    Failed(ForwardError),
}

impl Attempt {
    /// Classifies the result of one [`Channel::call`](crate::Channel::call).
    /// The one rule: only what was never written, or what the worker
    /// answered `Moved`, is sent again; a call written and then lost is
    /// never retried.
    pub fn of(result: Result<(Response, Bytes), CallError>) -> Attempt {
        match result {
            Ok((Response::Error(WireError::Moved { epoch }), _)) => {
                Attempt::Retry(format!("moved (epoch {epoch})"))
            }
            Ok((Response::Error(error), _)) => Attempt::Failed(ForwardError::Object(error)),
            Ok((response, body)) => Attempt::Answered(response, body),
            Err(CallError::DeadlineExceeded { written, .. }) => {
                Attempt::Failed(ForwardError::Deadline { written })
            }
            Err(e @ (CallError::NotSent { .. } | CallError::Closed { .. })) => {
                Attempt::Retry(e.to_string())
            }
            Err(e @ (CallError::Lost { .. } | CallError::Protocol { .. })) => {
                Attempt::Failed(ForwardError::Lost(e.to_string()))
            }
            Err(e @ CallError::TooLarge { .. }) => {
                Attempt::Failed(ForwardError::Object(WireError::BadRequest {
                    message: e.to_string(),
                }))
            }
            Err(e @ CallError::Encode(_)) => {
                Attempt::Failed(ForwardError::Object(WireError::Internal {
                    message: e.to_string(),
                }))
            }
        }
    }
}

/// The wait between attempts: 5 ms, doubling, capped at 200 ms, and never
/// past the deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(200);

    /// How long to wait before the next attempt, or `None` when the
    /// deadline leaves no time for one.
    pub fn next_wait(&mut self, deadline: Instant) -> Option<Duration> {
        let wait = self.next.min(remaining(deadline));
        if wait.is_zero() {
            return None;
        }
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait)
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
        // Rounded up so that a call with time left never arrives with none.
        deadline_ms: remaining(deadline).as_micros().div_ceil(1000) as u64,
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

    #[test]
    fn only_what_was_never_delivered_is_retried() {
        let retry = |r| matches!(Attempt::of(r), Attempt::Retry(_));
        assert!(retry(Ok((
            Response::Error(WireError::Moved { epoch: 3 }),
            Bytes::new()
        ))));
        assert!(retry(Err(CallError::NotSent {
            endpoint: endpoint(),
            reason: CloseReason::PeerClosed,
        })));
        assert!(retry(Err(CallError::Closed {
            endpoint: endpoint(),
            reason: CloseReason::PeerClosed,
        })));
        let failed = |r| match Attempt::of(r) {
            Attempt::Failed(e) => Some(e),
            _ => None,
        };
        assert!(matches!(
            failed(Err(CallError::Lost {
                endpoint: endpoint(),
                reason: CloseReason::PeerClosed,
            })),
            Some(ForwardError::Lost(_))
        ));
        assert!(matches!(
            failed(Err(CallError::DeadlineExceeded {
                endpoint: endpoint(),
                deadline: Duration::from_secs(1),
                written: true,
            })),
            Some(ForwardError::Deadline { written: true })
        ));
        assert!(matches!(
            failed(Ok((Response::Error(WireError::Overloaded), Bytes::new()))),
            Some(ForwardError::Object(WireError::Overloaded))
        ));
        assert!(matches!(
            Attempt::of(Ok((Response::Rpc, Bytes::from_static(b"x")))),
            Attempt::Answered(Response::Rpc, _)
        ));
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

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_its_cap_and_stops_at_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(600);
        let mut backoff = Backoff::default();
        let mut waits = Vec::new();
        while let Some(wait) = backoff.next_wait(deadline) {
            waits.push(wait.as_millis());
            tokio::time::advance(wait).await;
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 200, 85]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_remaining_deadline_is_passed_on_rounded_up() {
        let deadline = Instant::now() + Duration::from_micros(1500);
        assert_eq!(call_meta(deadline, vec![]).deadline_ms, 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(call_meta(deadline, vec![]).deadline_ms, 0);
    }
}
