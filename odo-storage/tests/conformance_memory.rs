//! The memory backend through the conformance suite.

use odo_storage::conformance::{self, MemoryHarness};

#[test]
fn memory_matches_the_model() {
    conformance::state_machine(&MemoryHarness);
}

#[test]
fn memory_comes_back_empty_after_reopen() {
    conformance::durability(&MemoryHarness);
}

#[test]
fn memory_crash_test_is_skipped_for_a_non_durable_backend() {
    conformance::crash(
        &MemoryHarness,
        "memory_crash_test_is_skipped_for_a_non_durable_backend",
    );
}
