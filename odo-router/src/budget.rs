//! The door's bound on the body bytes it holds in memory, over every
//! connection: request bodies being read and answers not yet handed to
//! hyper to send ([`BodyBudget`]).
//!
//! Each connection has its own bounds (one body at most
//! [`RouterConfig::max_body_bytes`](crate::RouterConfig), 200 HTTP/2
//! streams), but nothing else bounded their sum: one HTTP/2 connection
//! could have 200 bodies of 1 MiB read in at once, and 200 unread answers
//! held, and the connection cap multiplies that by 10,000. Past the budget
//! a new request is refused before it reaches its object (503, safe to
//! send again), a body being read is refused the same way, and a large
//! answer is dropped (502: its object ran, the client cannot know how).
//! Small answers are always taken, so the budget is a bound on the large
//! ones plus, at most, one small answer per request in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Answers up to this size are taken whatever the budget says: dropping
/// them would save little and turn answers to requests that ran into
/// "outcome unknown".
pub(crate) const SMALL_ANSWER_BYTES: usize = 64 * 1024;

/// Body bytes held over every connection, against one bound.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    held: AtomicUsize,
    max: usize,
}

impl BodyBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            max,
        })
    }

    /// Whether the budget is spent: a new request should not start.
    pub(crate) fn is_spent(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.max
    }

    /// The bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty claim, to grow as a body is read.
    pub(crate) fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Claim {
    /// Takes `bytes` more if the budget has them; `false` (and nothing
    /// taken) if not.
    pub(crate) fn try_grow(&mut self, bytes: usize) -> bool {
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes)
                    .filter(|&after| after <= self.budget.max)
            });
        if taken.is_ok() {
            self.bytes += bytes;
        }
        taken.is_ok()
    }

    /// Takes `bytes` more whatever the budget says.
    pub(crate) fn grow(&mut self, bytes: usize) {
        self.budget.held.fetch_add(bytes, Ordering::Relaxed);
        self.bytes += bytes;
    }

    /// Gives back all but `keep` bytes of this claim.
    pub(crate) fn shrink_to(&mut self, keep: usize) {
        let give = self.bytes.saturating_sub(keep);
        self.budget.held.fetch_sub(give, Ordering::Relaxed);
        self.bytes -= give;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_take_within_the_bound_and_give_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = budget.claim();
        assert!(a.try_grow(60));
        let mut b = budget.claim();
        assert!(!b.try_grow(41), "over the bound");
        assert_eq!(budget.held(), 60);
        assert!(b.try_grow(40));
        assert!(budget.is_spent());
        b.grow(10);
        assert_eq!(budget.held(), 110);
        b.shrink_to(5);
        assert_eq!(budget.held(), 65);
        drop(a);
        assert_eq!(budget.held(), 5);
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(!budget.is_spent());
    }
}
