//! SQLite-backed objects through the conformance suite: their key-value
//! API and alarm (in each object's database) against the model, across
//! reopen, and across SIGKILL, with the shard's log on fjall or in memory.

#![cfg(feature = "fjall")]

use odo_storage::conformance::{self, FjallHarness, MemoryHarness, SqlHarness};

fn fjall() -> SqlHarness<FjallHarness> {
    SqlHarness::default()
}

#[test]
fn sql_on_fjall_matches_the_model() {
    conformance::state_machine(&fjall());
}

#[test]
fn sql_on_memory_matches_the_model() {
    conformance::state_machine(&SqlHarness::<MemoryHarness>::default());
}

#[test]
fn sql_on_fjall_survives_close_and_reopen() {
    conformance::durability(&fjall());
}

#[test]
fn sql_on_memory_comes_back_empty_after_reopen() {
    conformance::durability(&SqlHarness::<MemoryHarness>::default());
}

/// Killed while restores to bookmarks run: each restore is whole, done or
/// still to do, and every acknowledged turn is there.
#[test]
fn sql_restores_survive_sigkill() {
    conformance::sql_restore_crash(&fjall(), "sql_restores_survive_sigkill");
}

#[test]
fn sql_transactions_survive_sigkill() {
    conformance::sql_crash(&fjall(), "sql_transactions_survive_sigkill", false);
}

/// A SIGKILL keeps the page cache: here the database files also lose
/// everything they wrote since their last sync, and the log alone brings
/// every acknowledged transaction back.
#[test]
fn sql_transactions_survive_sigkill_and_lost_file_writes() {
    let harness = SqlHarness {
        inner: FjallHarness::default(),
        keep_synced_copies: true,
        ..SqlHarness::default()
    };
    conformance::sql_crash(
        &harness,
        "sql_transactions_survive_sigkill_and_lost_file_writes",
        true,
    );
}

/// With a small cap on the shard's history, trims fold it away while the
/// child commits and is killed: every acknowledged transaction stays, and
/// what is left of each object's history restores to a whole state.
#[test]
fn sql_transactions_survive_sigkill_while_history_is_trimmed() {
    let harness = SqlHarness {
        max_history_bytes: Some(64 * 1024),
        ..fjall()
    };
    conformance::sql_crash_checking_history(
        &harness,
        "sql_transactions_survive_sigkill_while_history_is_trimmed",
    );
}
