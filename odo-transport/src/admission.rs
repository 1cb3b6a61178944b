//! Who may hold a server connection, and for how long a stranger may.
//!
//! Two caps. Connections that have not completed the handshake (strangers,
//! until proven otherwise) are at most [`ServerConfig::max_unauthenticated`]:
//! when a new connection arrives with that cap full, the *oldest*
//! unauthenticated connection is closed to make room. A real peer completes
//! its handshake in one round trip, so it is never the oldest for long,
//! while silent strangers age in place: they cannot keep a real peer out,
//! and no new connection ever waits behind them. Authenticated peers are at
//! most [`ServerConfig::max_connections`], and a connection takes one of
//! those places only once its handshake succeeded: a stranger never holds
//! one.
//!
//! A flood of strangers must not flood the log either: [`LogLimiter`] lets
//! one line through per interval and counts the rest.
//!
//! [`ServerConfig::max_unauthenticated`]: crate::ServerConfig::max_unauthenticated
//! [`ServerConfig::max_connections`]: crate::ServerConfig::max_connections

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The two connection caps of one server.
pub(crate) struct Admission {
    max_unauthenticated: usize,
    authenticated: Arc<Semaphore>,
    unauthenticated: Mutex<Unauthenticated>,
}

struct Unauthenticated {
    next_id: u64,
    /// Each unauthenticated connection's eviction signal, oldest first.
    by_age: BTreeMap<u64, CancellationToken>,
}

/// What [`Admission::admit`] did.
pub(crate) struct Admitted {
    /// The new connection's place among the unauthenticated.
    pub(crate) pending: Pending,
    /// Whether the oldest unauthenticated connection was told to close to
    /// make room.
    pub(crate) evicted_another: bool,
}

impl Admission {
    pub(crate) fn new(max_unauthenticated: usize, max_connections: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_unauthenticated,
            // Past `MAX_PERMITS` a semaphore panics; a cap that large is
            // no cap anyway.
            authenticated: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            unauthenticated: Mutex::new(Unauthenticated {
                next_id: 0,
                by_age: BTreeMap::new(),
            }),
        })
    }

    fn unauthenticated(&self) -> MutexGuard<'_, Unauthenticated> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock is still usable.
        self.unauthenticated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection as unauthenticated. With the cap full, the
    /// oldest unauthenticated connection is told to close (its
    /// [`Pending::evicted`] fires) and leaves the count at once, so the new
    /// one always fits.
    pub(crate) fn admit(self: &Arc<Self>) -> Admitted {
        let mut waiting = self.unauthenticated();
        let mut evicted_another = false;
        while waiting.by_age.len() >= self.max_unauthenticated {
            let Some((_, oldest)) = waiting.by_age.pop_first() else {
                break;
            };
            oldest.cancel();
            evicted_another = true;
        }
        let id = waiting.next_id;
        waiting.next_id += 1;
        let evicted = CancellationToken::new();
        waiting.by_age.insert(id, evicted.clone());
        Admitted {
            pending: Pending {
                admission: self.clone(),
                id,
                evicted,
            },
            evicted_another,
        }
    }

    /// How many connections are unauthenticated now.
    #[cfg(test)]
    fn unauthenticated_count(&self) -> usize {
        self.unauthenticated().by_age.len()
    }
}

/// A connection's place among the unauthenticated; given up when dropped
/// or when the handshake succeeds ([`Pending::authenticate`]).
pub(crate) struct Pending {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
}

impl Pending {
    /// Fires when a newer connection took this one's place: close it.
    pub(crate) fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// The handshake succeeded: leaves the unauthenticated (the connection
    /// can no longer be evicted) and takes an authenticated place. Fails if
    /// the connection was evicted meanwhile, or every place is taken.
    pub(crate) fn authenticate(self) -> Result<OwnedSemaphorePermit, NotAdmitted> {
        let still_waiting = self
            .admission
            .unauthenticated()
            .by_age
            .remove(&self.id)
            .is_some();
        if !still_waiting {
            return Err(NotAdmitted::Evicted);
        }
        self.admission
            .authenticated
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotAdmitted::Full)
    }
}

/// Why a connection whose handshake succeeded cannot stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotAdmitted {
    /// A newer connection took its place among the unauthenticated first.
    Evicted,
    /// Every authenticated place is taken.
    Full,
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Already gone if it was evicted.
        self.admission.unauthenticated().by_age.remove(&self.id);
    }
}

/// Lets one log line through per interval and counts those it held back,
/// so that the next line can say how many there were.
pub(crate) struct LogLimiter {
    interval: Duration,
    state: Mutex<LimiterState>,
}

struct LimiterState {
    /// When the next line may be written (`None`: now).
    next: Option<Instant>,
    /// Events not logged since the last line.
    held_back: u64,
}

impl LogLimiter {
    pub(crate) fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new(LimiterState {
                next: None,
                held_back: 0,
            }),
        }
    }

    /// Whether an event happening at `now` may be logged: `Some(n)` with
    /// the number of events held back since the last line, or `None` (the
    /// event is counted).
    pub(crate) fn check(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.next.is_some_and(|next| now < next) {
            state.held_back += 1;
            return None;
        }
        state.next = now.checked_add(self.interval);
        Some(std::mem::take(&mut state.held_back))
    }

    /// [`LogLimiter::check`] at the current time.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.check(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_stranger_makes_room() {
        let admission = Admission::new(2, 1);
        let first = admission.admit();
        let second = admission.admit();
        assert!(!first.evicted_another && !second.evicted_another);
        assert_eq!(admission.unauthenticated_count(), 2);
        let third = admission.admit();
        assert!(third.evicted_another);
        assert!(first.pending.evicted().is_cancelled(), "the oldest goes");
        assert!(!second.pending.evicted().is_cancelled());
        assert!(!third.pending.evicted().is_cancelled());
        assert_eq!(admission.unauthenticated_count(), 2);
        // The evicted connection's task ends later: that frees nothing more.
        drop(first);
        assert_eq!(admission.unauthenticated_count(), 2);
        drop(second);
        assert_eq!(admission.unauthenticated_count(), 1);
        let fourth = admission.admit();
        assert!(!fourth.evicted_another, "there was room");
    }

    #[test]
    fn an_evicted_connection_cannot_authenticate() {
        let admission = Admission::new(1, 8);
        let first = admission.admit();
        let _second = admission.admit();
        assert_eq!(
            first.pending.authenticate().err(),
            Some(NotAdmitted::Evicted)
        );
        assert_eq!(admission.authenticated.available_permits(), 8);
    }

    #[test]
    fn authenticated_places_are_taken_only_by_a_handshake() {
        let admission = Admission::new(4, 1);
        let strangers: Vec<_> = (0..4).map(|_| admission.admit()).collect();
        // Four strangers hold no authenticated place.
        assert_eq!(admission.authenticated.available_permits(), 1);
        let peer = admission.admit();
        assert!(peer.evicted_another);
        let permit = peer.pending.authenticate().expect("a free place");
        assert_eq!(
            admission.unauthenticated_count(),
            3,
            "it left the strangers"
        );
        let late = admission.admit();
        assert_eq!(
            late.pending.authenticate().err(),
            Some(NotAdmitted::Full),
            "every place is taken"
        );
        drop(permit);
        let again = admission.admit();
        assert!(again.pending.authenticate().is_ok(), "the place was freed");
        drop(strangers);
        assert_eq!(admission.unauthenticated_count(), 0);
    }

    #[test]
    fn a_limited_log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(limiter.check(start), Some(0), "the first line goes through");
        for ms in [1, 10, 4_999] {
            assert_eq!(limiter.check(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            limiter.check(start + Duration::from_secs(5)),
            Some(3),
            "the next line counts those held back"
        );
        assert_eq!(limiter.check(start + Duration::from_secs(6)), None);
        assert_eq!(limiter.check(start + Duration::from_secs(60)), Some(1));
        assert_eq!(limiter.check(start + Duration::from_secs(120)), Some(0));
    }
}
