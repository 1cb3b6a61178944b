//! The retry policy of every forwarder, as an I/O-free state machine: given
//! what each attempt to reach an object came to and the time left before
//! the call's deadline, decide whether to send it again, and after how
//! long.
//!
//! The one rule: a call is sent again only if it never reached its object
//! (it was never written, or the worker answered `Moved`), and only while
//! the deadline leaves time. A call that was written and then lost, or
//! answered in any other way, goes back to the caller as it is. Between
//! attempts the forwarder waits for a placement change, at most
//! [`Decision::Retry::after`]: 5 ms at first, doubling, capped at 200 ms,
//! never past the deadline.
//!
//! ```
//! use std::time::Duration;
//! use odo_core::retry::{AttemptKind, Decision, RetryPolicy};
//!
//! let mut retry = RetryPolicy::default().start();
//! let left = Duration::from_secs(1);
//! assert_eq!(
//!     retry.decide(AttemptKind::NotWritten, left),
//!     Decision::Retry { after: Duration::from_millis(5) }
//! );
//! assert_eq!(
//!     retry.decide(AttemptKind::Moved, left),
//!     Decision::Retry { after: Duration::from_millis(10) }
//! );
//! // Written, then lost: never sent again.
//! assert_eq!(retry.decide(AttemptKind::Lost, left), Decision::Return);
//! // No time left: the call was never delivered, and it gives up.
//! assert_eq!(retry.decide(AttemptKind::NotWritten, Duration::ZERO), Decision::GiveUp);
//! ```

use std::time::Duration;

use crate::WireError;

/// What one attempt to send a call to an object's worker came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// The worker answered: a response, or an error other than `Moved`
    /// (which the caller gets as it is).
    Answered,
    /// The worker answered `Moved`: the shard is elsewhere now; the call
    /// never reached the object.
    Moved,
    /// The call was never written: no worker held the shard, the
    /// connection could not be made, or it closed before the call went out.
    NotWritten,
    /// The call was written, then the connection died: its outcome is
    /// unknown.
    Lost,
    /// The deadline passed during the attempt; `written` says whether the
    /// call may have reached the object.
    TimedOut {
        /// Whether the call was written.
        written: bool,
    },
    /// The call cannot be sent at all (too large for a frame, cannot be
    /// encoded): it never reached the object, and sending it again would
    /// fail the same way.
    Refused,
}

impl AttemptKind {
    /// The kind of an error answer: `Moved` is [`AttemptKind::Moved`],
    /// every other error an answer for the caller.
    pub fn of_error(error: &WireError) -> AttemptKind {
        match error {
            WireError::Moved { .. } => AttemptKind::Moved,
            _ => AttemptKind::Answered,
        }
    }

    /// Whether the call may have reached the object (or the worker's
    /// answer must reach the caller): such a call is never sent again.
    pub fn may_have_reached(self) -> bool {
        match self {
            AttemptKind::Answered | AttemptKind::Lost => true,
            AttemptKind::Moved | AttemptKind::NotWritten | AttemptKind::Refused => false,
            AttemptKind::TimedOut { written } => written,
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Hand the attempt's own result to the caller: an answer, an error
    /// answer, a lost call, a deadline or a call that cannot be sent.
    Return,
    /// Send again: wait for a placement change, but no longer than `after`
    /// (which is never zero and never past the deadline), look the object
    /// up again and resend.
    Retry {
        /// The longest wait before the next attempt.
        after: Duration,
    },
    /// The call never reached its object and the deadline leaves no time
    /// for another attempt: it is unavailable (safe to send again later).
    GiveUp,
}

/// The waits between attempts. [`RetryPolicy::default`] gives 5 ms,
/// doubling, capped at 200 ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait (a zero counts as 1 ms).
    pub first: Duration,
    /// The longest wait (at least `first`).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(5),
            max: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// The state of one call's retries.
    pub fn start(&self) -> Retry {
        let first = self.first.max(Duration::from_millis(1));
        Retry {
            next: first,
            max: self.max.max(first),
            retries: 0,
        }
    }
}

/// One call's retries: feed it each attempt's outcome.
#[derive(Debug, Clone)]
pub struct Retry {
    next: Duration,
    max: Duration,
    retries: u32,
}

impl Retry {
    /// Decides what follows an attempt that came to `attempt`, with
    /// `remaining` time before the call's deadline.
    pub fn decide(&mut self, attempt: AttemptKind, remaining: Duration) -> Decision {
        if attempt.may_have_reached()
            || matches!(attempt, AttemptKind::TimedOut { .. } | AttemptKind::Refused)
        {
            return Decision::Return;
        }
        let after = self.next.min(remaining);
        if after.is_zero() {
            return Decision::GiveUp;
        }
        self.next = self.next.saturating_mul(2).min(self.max);
        self.retries = self.retries.saturating_add(1);
        Decision::Retry { after }
    }

    /// How many retries were decided so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}
