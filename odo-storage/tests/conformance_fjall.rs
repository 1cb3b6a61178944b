//! The fjall backend through the conformance suite, in real directories.

#![cfg(feature = "fjall")]

use odo_storage::conformance::{self, FjallHarness};
use odo_storage::{Durability, FjallOptions};

#[test]
fn fjall_matches_the_model() {
    conformance::state_machine(&FjallHarness::default());
}

#[test]
fn fjall_survives_close_and_reopen() {
    conformance::durability(&FjallHarness::default());
}

#[test]
fn fjall_buffered_survives_close_and_reopen() {
    let harness = FjallHarness {
        options: FjallOptions::with_durability(Durability::Buffer),
    };
    conformance::durability(&harness);
}

#[test]
fn fjall_survives_sigkill() {
    conformance::crash(&FjallHarness::default(), "fjall_survives_sigkill");
}

/// A killed process never loses what the OS has, even without fsync.
#[test]
fn fjall_buffered_survives_sigkill() {
    let harness = FjallHarness {
        options: FjallOptions::with_durability(Durability::Buffer),
    };
    conformance::crash(&harness, "fjall_buffered_survives_sigkill");
}
