//! Group commit, made deterministic: a backend that holds its first commit
//! until the test has queued more turns behind it.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};

use bytes::Bytes;
use odo_core::{Namespace, ObjectId};
use odo_storage::conformance::InterceptCommits;
use odo_storage::{KeyRange, MemoryBackend, Store, StoreOptions};

/// A memory backend that tells the test when each commit starts (and its
/// size) and holds the first one until the test says go.
fn gated_backend(entered: Sender<usize>, release: Receiver<()>) -> InterceptCommits<MemoryBackend> {
    let release = Mutex::new(Some(release));
    InterceptCommits::new(MemoryBackend::new(), move |writes| {
        let _ = entered.send(writes.len());
        let release = release.lock().unwrap().take();
        if let Some(release) = release {
            let _ = release.recv();
        }
        Ok(())
    })
}

fn id(n: usize) -> ObjectId {
    Namespace::new("GROUP").id_from_name(&n.to_string())
}

#[test]
fn turns_queued_during_a_commit_share_the_next_one() {
    let (entered, entered_rx) = channel();
    let (release, release_rx) = channel();
    let backend = gated_backend(entered, release_rx);
    let store = Store::open(backend, StoreOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let mut first = store.object(id(0));
    rt.block_on(first.put("k", "first")).unwrap();
    let first_wait = first.commit_turn().unwrap();
    // The commit thread is now inside the first commit, held.
    assert_eq!(entered_rx.recv().unwrap(), 1);

    let mut waits = Vec::new();
    let mut objects: Vec<_> = (1..=99).map(|n| store.object(id(n))).collect();
    for (n, s) in objects.iter_mut().enumerate() {
        rt.block_on(s.put("k", format!("v{n}"))).unwrap();
        rt.block_on(s.set_alarm(1_000 + n as u64)).unwrap();
        waits.push(s.commit_turn().unwrap());
    }
    // Three more turns of one object, queued behind: merged in order.
    let hot = &mut objects[0];
    rt.block_on(hot.put("a", "1")).unwrap();
    waits.push(hot.commit_turn().unwrap());
    rt.block_on(hot.delete_all()).unwrap();
    rt.block_on(hot.put("b", "2")).unwrap();
    waits.push(hot.commit_turn().unwrap());
    rt.block_on(hot.put("a", "3")).unwrap();
    waits.push(hot.commit_turn().unwrap());
    assert!(waits.iter().all(|w| !w.is_done()));

    release.send(()).unwrap();
    rt.block_on(first_wait.wait()).unwrap();
    for wait in waits {
        rt.block_on(wait.wait()).unwrap();
    }
    // 99 objects in the second commit (the hot one once, merged).
    assert_eq!(entered_rx.recv().unwrap(), 99);
    let stats = store.stats();
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.turns, 1 + 99 + 3);
    assert_eq!(stats.largest_batch, 102);

    let backend = store.backend();
    let hot_data = backend
        .scan(
            &id(1),
            &KeyRange::all(),
            false,
            odo_storage::ScanLimit {
                entries: usize::MAX,
                bytes: usize::MAX,
            },
        )
        .unwrap();
    assert_eq!(
        hot_data,
        vec![
            ("a".into(), Bytes::from("3")),
            ("b".into(), Bytes::from("2"))
        ]
    );
    assert_eq!(
        backend.alarm(&id(1)).unwrap(),
        None,
        "delete_all dropped it"
    );
    assert_eq!(backend.alarm(&id(2)).unwrap(), Some(1_001));
    assert_eq!(store.due_alarms(u64::MAX, 1000).unwrap().len(), 98);
    store.close_blocking().unwrap();
}
