//! The `logfile` backend (defined in this crate, outside odo's) through
//! odo-storage's conformance suite, opened by its factory as a server
//! opens it.

use odo_storage::BackendFactory;
use odo_storage::conformance::{self, FactoryHarness};
use odo_tests::backend::{LOG_FILE, LogFileFactory};

fn harness() -> FactoryHarness<LogFileFactory> {
    FactoryHarness::new(LogFileFactory)
}

#[test]
fn logfile_matches_the_model() {
    conformance::state_machine(&harness());
}

#[test]
fn logfile_survives_close_and_reopen() {
    conformance::durability(&harness());
}

#[test]
fn logfile_survives_sigkill() {
    assert!(LogFileFactory.durable());
    conformance::crash(&harness(), "logfile_survives_sigkill");
}

/// Garbage after the last whole commit (a write cut short by a crash) is
/// dropped on open, and the log is compacted to what it held.
#[tokio::test]
async fn a_torn_tail_is_dropped_on_open() {
    use odo_core::Namespace;
    use odo_storage::{ShardSpec, Store, StoreOptions};

    let dir = tempfile::tempdir().unwrap();
    let spec = ShardSpec::new(dir.path(), 0, 1);
    let id = Namespace::new("TORN").id_from_name("x");
    let store = Store::open_shared(
        LogFileFactory.open(spec.clone()).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut s = store.object(id);
    for n in 0..3u64 {
        s.put_typed("n", &n).await.unwrap();
        s.commit_turn().unwrap().await.unwrap();
    }
    store.close().await.unwrap();
    drop(store);

    let log = spec.dir().join(LOG_FILE);
    let whole = std::fs::metadata(&log).unwrap().len();
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut file, &[7, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);

    let store = Store::open_shared(
        LogFileFactory.open(spec.clone()).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut s = store.object(id);
    assert_eq!(s.get_typed::<u64>("n").await.unwrap(), Some(2));
    store.close().await.unwrap();
    // Compacted: one record for the one object, smaller than three.
    assert!(std::fs::metadata(&log).unwrap().len() < whole);
}
