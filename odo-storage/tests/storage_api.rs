//! The object API: limits, multi-key calls, turns, transactions, alarms,
//! in-flight visibility and commit failures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use odo_core::{Namespace, ObjectId};
use odo_storage::Backend;
use odo_storage::conformance::InterceptCommits;
use odo_storage::{
    MAX_KEY_BYTES, MAX_KEYS_PER_CALL, MAX_VALUE_BYTES, MemoryBackend, ObjectTurns, StorageError,
    Store, StoreOptions,
};

fn id(name: &str) -> ObjectId {
    Namespace::new("API").id_from_name(name)
}

fn memory_store() -> Store {
    Store::open(MemoryBackend::new(), StoreOptions::default()).unwrap()
}

async fn commit(s: &mut ObjectTurns) {
    s.commit_turn().expect("the turn wrote").await.unwrap();
}

#[tokio::test]
async fn limits_are_typed_errors_and_write_nothing() {
    let store = memory_store();
    let mut s = store.object(id("limits"));
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let max_key = "k".repeat(MAX_KEY_BYTES);
    assert!(matches!(
        s.put(&long_key, "v").await,
        Err(StorageError::KeyTooLarge { len, max }) if len == MAX_KEY_BYTES + 1 && max == MAX_KEY_BYTES
    ));
    assert!(matches!(
        s.get(&long_key).await,
        Err(StorageError::KeyTooLarge { .. })
    ));
    assert!(matches!(
        s.delete(&long_key).await,
        Err(StorageError::KeyTooLarge { .. })
    ));
    s.put(&max_key, "v").await.unwrap();
    assert!(matches!(
        s.put("k", vec![0; MAX_VALUE_BYTES + 1]).await,
        Err(StorageError::ValueTooLarge { max, .. }) if max == MAX_VALUE_BYTES
    ));
    s.put("k", vec![0; MAX_VALUE_BYTES]).await.unwrap();

    let too_many: Vec<String> = (0..=MAX_KEYS_PER_CALL).map(|i| format!("m{i}")).collect();
    let entries = too_many.iter().map(|k| (k.clone(), "v"));
    assert!(matches!(
        s.put_many(entries).await,
        Err(StorageError::TooManyKeys { count, max }) if count == MAX_KEYS_PER_CALL + 1 && max == MAX_KEYS_PER_CALL
    ));
    assert!(matches!(
        s.get_many(&too_many).await,
        Err(StorageError::TooManyKeys { .. })
    ));
    assert!(matches!(
        s.delete_many(&too_many).await,
        Err(StorageError::TooManyKeys { .. })
    ));
    let just_enough = &too_many[..MAX_KEYS_PER_CALL];
    s.put_many(just_enough.iter().map(|k| (k.clone(), "v")))
        .await
        .unwrap();

    // One bad entry spoils the whole put_many.
    let mixed = vec![
        ("good".to_string(), Bytes::from("v")),
        (long_key.clone(), Bytes::new()),
    ];
    assert!(s.put_many(mixed).await.is_err());
    assert_eq!(s.get("good").await.unwrap(), None);
    // The errors say what to do.
    let message = s.put(&long_key, "v").await.unwrap_err().to_string();
    assert!(message.contains("2048"), "{message}");
}

#[tokio::test]
async fn multi_key_calls() {
    let store = memory_store();
    let mut s = store.object(id("multi"));
    s.put_many([("c", "3"), ("a", "1"), ("", "empty key"), ("é", "e")])
        .await
        .unwrap();
    commit(&mut s).await;
    s.put("b", "2").await.unwrap();
    let got = s.get_many(&["é", "b", "zz", "a", "", "c"]).await.unwrap();
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["", "a", "b", "c", "é"],
        "sorted by key, missing left out"
    );
    assert_eq!(s.delete_many(&["a", "a", "nope", "b"]).await.unwrap(), 2);
    assert!(s.delete("c").await.unwrap());
    assert!(!s.delete("c").await.unwrap());
    // Empty values exist.
    s.put("empty", Bytes::new()).await.unwrap();
    assert_eq!(s.get("empty").await.unwrap(), Some(Bytes::new()));
    commit(&mut s).await;
    assert_eq!(s.get("empty").await.unwrap(), Some(Bytes::new()));
    assert_eq!(s.get("a").await.unwrap(), None);
}

#[tokio::test]
async fn typed_helpers_round_trip_and_report_bad_data() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Counter {
        name: String,
        value: u64,
    }
    let store = memory_store();
    let mut s = store.object(id("typed"));
    let c = Counter {
        name: "hits".into(),
        value: 41,
    };
    s.put_typed("c", &c).await.unwrap();
    assert_eq!(s.get_typed::<Counter>("c").await.unwrap(), Some(c));
    assert_eq!(s.get_typed::<u64>("missing").await.unwrap(), None);
    s.put("bad", "").await.unwrap();
    let error = s.get_typed::<Counter>("bad").await.unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::Serialization {
                action: "decode",
                ..
            }
        ),
        "{error:?}"
    );
    // The codec's own error is the source, not a copy of its message.
    let source = std::error::Error::source(&error).expect("a source");
    assert!(source.is::<postcard::Error>(), "{source:?}");
}

#[tokio::test]
async fn a_rolled_back_turn_vanishes() {
    let store = memory_store();
    let mut s = store.object(id("rollback"));
    s.put("kept", "1").await.unwrap();
    s.set_alarm(10).await.unwrap();
    commit(&mut s).await;
    s.put("lost", "1").await.unwrap();
    s.delete("kept").await.unwrap();
    s.delete_all().await.unwrap();
    assert_eq!(s.get("kept").await.unwrap(), None);
    assert_eq!(s.get_alarm().await.unwrap(), None);
    assert!(s.has_turn_writes());
    s.rollback_turn();
    assert!(!s.has_turn_writes());
    assert_eq!(s.get("kept").await.unwrap(), Some(Bytes::from("1")));
    assert_eq!(s.get("lost").await.unwrap(), None);
    assert_eq!(s.get_alarm().await.unwrap(), Some(10));
    assert!(
        s.commit_turn().is_none(),
        "nothing written, nothing in flight"
    );
}

#[tokio::test]
async fn transactions_roll_back_every_write_on_error() {
    let store = memory_store();
    let mut s = store.object(id("tx"));
    s.put("a", "before").await.unwrap();
    let result: Result<(), StorageError> = s
        .transaction(async |tx| {
            tx.put("a", "inside").await?;
            tx.put("b", "inside").await?;
            tx.set_alarm(5).await?;
            assert_eq!(tx.get("a").await?, Some(Bytes::from("inside")));
            assert_eq!(tx.list(&Default::default()).await?.len(), 2);
            // Half way through, a limit error aborts the transaction.
            tx.put(&"k".repeat(MAX_KEY_BYTES + 1), "x").await?;
            tx.put("c", "never").await
        })
        .await;
    assert!(matches!(result, Err(StorageError::KeyTooLarge { .. })));
    assert_eq!(s.get("a").await.unwrap(), Some(Bytes::from("before")));
    assert_eq!(s.get("b").await.unwrap(), None);
    assert_eq!(s.get_alarm().await.unwrap(), None);

    let value = s
        .transaction(async |tx| {
            tx.delete_all().await?;
            tx.put("z", "1").await?;
            Ok::<_, StorageError>(7)
        })
        .await
        .unwrap();
    assert_eq!(value, 7);
    let all = s.list(&Default::default()).await.unwrap();
    assert_eq!(all, vec![("z".to_string(), Bytes::from("1"))]);
    commit(&mut s).await;
    assert_eq!(s.list(&Default::default()).await.unwrap(), all);
}

#[tokio::test]
async fn the_next_turn_sees_writes_before_they_are_durable() {
    // The commit thread races the next turns.
    let store = memory_store();
    let mut s = store.object(id("inflight"));
    let mut waits = Vec::new();
    for i in 0..200u32 {
        let current: u32 = s.get_typed("n").await.unwrap().unwrap_or(0);
        assert_eq!(current, i, "turn {i} sees every earlier turn");
        s.put_typed("n", &(current + 1)).await.unwrap();
        if i % 7 == 0 {
            s.delete_all().await.unwrap();
            s.put_typed("n", &(current + 1)).await.unwrap();
        }
        waits.push(s.commit_turn().unwrap());
    }
    // A turn that writes nothing still waits for the earlier ones; with
    // none left in flight (the commit thread may have caught up) it has
    // nothing to wait for. Either way, every earlier turn is durable next.
    if let Some(last) = s.commit_turn() {
        last.await.unwrap();
    }
    for wait in waits {
        assert!(wait.is_done());
        wait.await.unwrap();
    }
    assert_eq!(s.in_flight_turns(), 0);
    assert!(s.pending_commit().is_none());
    assert_eq!(s.get_typed::<u32>("n").await.unwrap(), Some(200));
    let stats = store.stats();
    assert_eq!(stats.turns, 200);
    assert!(stats.batches >= 1 && stats.batches <= 200);
    assert!(stats.average_batch() >= 1.0);
}

#[tokio::test]
async fn alarms_are_buffered_committed_and_indexed_by_time() {
    let store = memory_store();
    let mut changes = store.alarm_changes();
    let mut a = store.object(id("alarm-a"));
    let mut b = store.object(id("alarm-b"));
    a.set_alarm(300).await.unwrap();
    b.set_alarm(100).await.unwrap();
    assert_eq!(
        store.due_alarms(u64::MAX, 1).unwrap(),
        [],
        "not committed yet"
    );
    commit(&mut a).await;
    commit(&mut b).await;
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(
        store.due_alarms(u64::MAX, 1).unwrap(),
        [(id("alarm-b"), 100)]
    );
    assert_eq!(store.due_alarms(99, 10).unwrap(), vec![]);
    assert_eq!(
        store.due_alarms(300, 10).unwrap(),
        vec![(id("alarm-b"), 100), (id("alarm-a"), 300)]
    );
    assert_eq!(
        store.due_alarms(300, 1).unwrap(),
        vec![(id("alarm-b"), 100)]
    );
    // Moving and deleting keep the index exact.
    b.set_alarm(400).await.unwrap();
    commit(&mut b).await;
    a.delete_all().await.unwrap();
    commit(&mut a).await;
    assert!(changes.has_changed().unwrap());
    assert_eq!(
        store.due_alarms(u64::MAX, 10).unwrap(),
        vec![(id("alarm-b"), 400)]
    );
    assert_eq!(a.get_alarm().await.unwrap(), None);
    b.delete_alarm().await.unwrap();
    commit(&mut b).await;
    assert_eq!(store.due_alarms(u64::MAX, 1).unwrap(), []);
}

#[tokio::test]
async fn objects_never_see_each_other() {
    let store = memory_store();
    let mut a = store.object(id("a"));
    let mut b = store.object(id("b"));
    a.put("k", "a").await.unwrap();
    b.put("k", "b").await.unwrap();
    commit(&mut a).await;
    commit(&mut b).await;
    b.delete_all().await.unwrap();
    commit(&mut b).await;
    assert_eq!(a.get("k").await.unwrap(), Some(Bytes::from("a")));
    assert_eq!(b.get("k").await.unwrap(), None);
}

#[tokio::test]
async fn a_closed_store_refuses_commits() {
    let store = memory_store();
    let mut s = store.object(id("closed"));
    s.put("k", "v").await.unwrap();
    let durable = s.commit_turn().unwrap();
    store.close().await.unwrap();
    durable.await.unwrap();
    s.put("k2", "v").await.unwrap();
    let late = s.commit_turn().unwrap();
    assert!(matches!(late.await, Err(StorageError::CommitFailed(_))));
    assert!(matches!(s.get("other").await, Err(StorageError::Closed)));
    store.close().await.unwrap();
}

/// A memory backend whose commits fail while `fail` is set: the failure
/// path of group commit, which real disks rarely take on demand.
fn flaky_backend() -> (InterceptCommits<MemoryBackend>, Arc<AtomicBool>) {
    let fail = Arc::new(AtomicBool::new(false));
    let failing = fail.clone();
    let backend = InterceptCommits::new(MemoryBackend::new(), move |_| {
        if failing.load(Ordering::SeqCst) {
            return Err(StorageError::backend("committing", "injected failure"));
        }
        Ok(())
    });
    (backend, fail)
}

#[tokio::test]
async fn a_failed_commit_fails_the_object_until_it_is_reset() {
    let (backend, fail) = flaky_backend();
    let store = Store::open(backend, StoreOptions::default()).unwrap();
    let mut s = store.object(id("flaky"));
    s.put("k", "1").await.unwrap();
    commit(&mut s).await;

    fail.store(true, Ordering::SeqCst);
    s.put("k", "2").await.unwrap();
    let failed = s.commit_turn().unwrap();
    assert!(matches!(failed.await, Err(StorageError::CommitFailed(_))));
    fail.store(false, Ordering::SeqCst);
    // Everything behind the failure fails too, even though the disk is back.
    assert!(matches!(
        s.get("k").await,
        Err(StorageError::CommitFailed(_))
    ));
    assert!(matches!(
        s.put("k", "3").await,
        Err(StorageError::CommitFailed(_))
    ));
    assert!(matches!(
        s.commit_turn().unwrap().await,
        Err(StorageError::CommitFailed(_))
    ));
    assert_eq!(store.stats().failed_batches, 1);

    // The reset object sees only what was durable.
    drop(s);
    let mut s = store.object(id("flaky"));
    assert_eq!(s.get("k").await.unwrap(), Some(Bytes::from("1")));
    s.put("k", "4").await.unwrap();
    commit(&mut s).await;
    store.close().await.unwrap();
}

#[test]
fn dropping_the_last_handle_commits_and_closes() {
    let backend = Arc::new(MemoryBackend::new());
    let store = Store::open_shared(backend.clone(), StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut s = store.object(id("drop"));
    rt.block_on(s.put("k", "v")).unwrap();
    let wait = s.commit_turn().unwrap();
    drop(s);
    drop(store);
    rt.block_on(wait.wait()).unwrap();
    assert!(matches!(
        backend.get(&id("drop"), "k"),
        Err(StorageError::Closed)
    ));
}

/// The runtime spawns object turns on a multi-threaded executor.
#[test]
fn storage_and_its_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let store = memory_store();
    let mut s = store.object(id("send"));
    send(&s);
    send(&store);
    send(&s.get("k"));
    send(&s.list(&Default::default()));
    send(&s.transaction(async |tx| tx.put("k", "v").await));
    let wait = s.commit_turn();
    send(&wait);
    if let Some(wait) = wait {
        send(&wait.wait());
    }
}
