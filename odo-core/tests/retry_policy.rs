//! The retry policy: what is sent again, how long it waits, when it gives
//! up. One property test over random attempt outcomes and deadlines, and
//! the cases a forwarder meets.

use std::time::Duration;

use odo_core::WireError;
use odo_core::retry::{AttemptKind, Decision, RetryPolicy};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = AttemptKind> {
    prop_oneof![
        Just(AttemptKind::Answered),
        Just(AttemptKind::Moved),
        Just(AttemptKind::NotWritten),
        Just(AttemptKind::Lost),
        Just(AttemptKind::Refused),
        any::<bool>().prop_map(|written| AttemptKind::TimedOut { written }),
    ]
}

proptest! {
    #[test]
    fn retries_only_the_undelivered_within_the_deadline_with_a_growing_capped_wait(
        first_ms in 0u64..50,
        extra_ms in 0u64..500,
        deadline_ms in 0u64..2_000,
        attempts in proptest::collection::vec((kind(), 0u64..50), 1..40),
    ) {
        let policy = RetryPolicy {
            first: Duration::from_millis(first_ms),
            max: Duration::from_millis(first_ms + extra_ms),
        };
        let cap = policy.max.max(Duration::from_millis(1));
        let mut retry = policy.start();
        let mut remaining = Duration::from_millis(deadline_ms);
        let mut last_full_wait: Option<Duration> = None;
        for (attempt, took_ms) in attempts {
            // The attempt itself takes some of the time left.
            remaining = remaining.saturating_sub(Duration::from_millis(took_ms));
            match retry.decide(attempt, remaining) {
                Decision::Return => {
                    prop_assert!(
                        !matches!(attempt, AttemptKind::Moved | AttemptKind::NotWritten),
                        "an undelivered attempt is returned: {attempt:?}"
                    );
                }
                Decision::Retry { after } => {
                    prop_assert!(
                        matches!(attempt, AttemptKind::Moved | AttemptKind::NotWritten),
                        "retried {attempt:?}"
                    );
                    prop_assert!(!after.is_zero());
                    prop_assert!(after <= remaining, "waits past the deadline");
                    prop_assert!(after <= cap, "waits past the cap");
                    if after < remaining {
                        // Not cut by the deadline: the policy's own wait,
                        // which only grows.
                        if let Some(last) = last_full_wait {
                            prop_assert!(after >= last, "the wait shrank");
                        }
                        last_full_wait = Some(after);
                    }
                    remaining -= after;
                }
                Decision::GiveUp => {
                    prop_assert!(
                        matches!(attempt, AttemptKind::Moved | AttemptKind::NotWritten),
                        "gave up on {attempt:?}"
                    );
                    prop_assert!(remaining.is_zero(), "gave up with time left");
                }
            }
        }
    }
}

#[test]
fn the_default_waits_double_to_their_cap_and_stop_at_the_deadline() {
    let mut retry = RetryPolicy::default().start();
    let mut remaining = Duration::from_millis(600);
    let mut waits = Vec::new();
    while let Decision::Retry { after } = retry.decide(AttemptKind::NotWritten, remaining) {
        waits.push(after.as_millis());
        remaining -= after;
    }
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 200, 85]);
    assert_eq!(retry.retries(), 8);
    assert_eq!(
        retry.decide(AttemptKind::Moved, remaining),
        Decision::GiveUp
    );
}

#[test]
fn what_may_have_reached_the_object_is_never_sent_again() {
    let left = Duration::from_secs(10);
    for (attempt, decision) in [
        (AttemptKind::Answered, Decision::Return),
        (AttemptKind::Lost, Decision::Return),
        (AttemptKind::TimedOut { written: true }, Decision::Return),
        (AttemptKind::TimedOut { written: false }, Decision::Return),
        (AttemptKind::Refused, Decision::Return),
        (
            AttemptKind::Moved,
            Decision::Retry {
                after: Duration::from_millis(5),
            },
        ),
        (
            AttemptKind::NotWritten,
            Decision::Retry {
                after: Duration::from_millis(5),
            },
        ),
    ] {
        assert_eq!(
            RetryPolicy::default().start().decide(attempt, left),
            decision,
            "{attempt:?}"
        );
    }
}

#[test]
fn error_answers_are_answers_except_moved() {
    assert_eq!(
        AttemptKind::of_error(&WireError::Moved { epoch: 3 }),
        AttemptKind::Moved
    );
    assert_eq!(
        AttemptKind::of_error(&WireError::Overloaded),
        AttemptKind::Answered
    );
    assert_eq!(
        AttemptKind::of_error(&WireError::OutcomeUnknown { reason: "x".into() }),
        AttemptKind::Answered
    );
}

#[test]
fn a_zero_first_wait_still_waits() {
    let policy = RetryPolicy {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };
    assert_eq!(
        policy
            .start()
            .decide(AttemptKind::NotWritten, Duration::from_secs(1)),
        Decision::Retry {
            after: Duration::from_millis(1)
        }
    );
}
