//! In-process tests of alarms: firing, replacing, deleting, retries,
//! reopening, overload.

mod common;

use common::*;

#[tokio::test]
async fn alarms_fire_replace_delete_and_retry() {
    both(async |kind| {
        let h = Harness::new(kind, config());
        let (tx, mut rx) = mpsc::unbounded_channel();
        *h.env.alarm_tx.lock().unwrap() = Some(tx);
        // Bounded: a missing alarm fails the test instead of hanging it.
        let mut next_alarm = async || {
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if let Note::Alarm(at, retry) = rx.recv().await.unwrap() {
                        return (at, retry);
                    }
                }
            })
            .await
            .expect("an alarm fires within 30 s")
        };

        // Fire.
        let at = now_ms() + 20;
        h.fetch("a", &format!("/alarm?{at}")).await.unwrap();
        assert_eq!(next_alarm().await, (at, 0));
        assert!(now_ms() >= at);
        // Cleared after success.
        let get = async |h: &Harness| h.fetch("a", "/alarm-get").await.unwrap();
        assert_eq!(get(&h).await, "None");
        assert_eq!(h.fetch("a", "/get").await.unwrap(), "0");

        // Replace: only the second time fires.
        let far = now_ms() + 3_600_000;
        h.fetch("b", &format!("/alarm?{far}")).await.unwrap();
        let soon = now_ms() + 20;
        h.fetch("b", &format!("/alarm?{soon}")).await.unwrap();
        assert_eq!(next_alarm().await, (soon, 0));

        // Delete: the alarm is gone from storage.
        h.fetch("c", &format!("/alarm?{far}")).await.unwrap();
        h.fetch("c", "/alarm-delete").await.unwrap();
        assert_eq!(h.fetch("c", "/alarm-get").await.unwrap(), "None");

        // Retry: fails twice, succeeds on the third run.
        h.env.alarm_failures.store(2, Ordering::SeqCst);
        let at = now_ms() + 10;
        h.fetch("d", &format!("/alarm?{at}")).await.unwrap();
        assert_eq!(next_alarm().await, (at, 0));
        assert_eq!(next_alarm().await, (at, 1));
        assert_eq!(next_alarm().await, (at, 2));
        h.env.alarm_failures.store(0, Ordering::SeqCst);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_alarm_that_always_fails_is_dropped_after_its_retries() {
    let h = Harness::new(
        Kind::Memory,
        RuntimeConfig {
            alarm_retry: AlarmRetry {
                first_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(5),
                max_retries: 2,
            },
            ..config()
        },
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    *h.env.alarm_tx.lock().unwrap() = Some(tx);
    h.env.alarm_failures.store(100, Ordering::SeqCst);
    let at = now_ms();
    h.fetch("a", &format!("/alarm?{at}")).await.unwrap();
    let mut runs = Vec::new();
    while runs.len() < 3 {
        if let note @ Note::Alarm(..) = recv(&mut rx).await {
            runs.push(note);
        }
    }
    assert_eq!(
        runs,
        [Note::Alarm(at, 0), Note::Alarm(at, 1), Note::Alarm(at, 2)]
    );
    // After the last retry the alarm is cleared by a turn of its own; wait
    // for it (bounded), never for a fixed time.
    let mut cleared = false;
    for _ in 0..500 {
        if h.fetch("a", "/alarm-get").await.unwrap() == "None" {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cleared, "the alarm must be dropped after max_retries");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn alarms_fire_after_the_store_is_reopened_without_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let at = now_ms() + 50;
    {
        // Here the alarm fires once and fails, and its retry would wait an
        // hour: it is still stored, due, when this runtime stops. (Waiting
        // for that firing, rather than racing the clock to stop first,
        // keeps the test deterministic on a slow machine.)
        let hour = Duration::from_secs(3600);
        let h = Harness::with_store(
            open_store(Kind::Fjall, dir.path()),
            RuntimeConfig {
                alarm_retry: AlarmRetry {
                    first_delay: hour,
                    max_delay: hour,
                    max_retries: 6,
                },
                ..config()
            },
            tempfile::tempdir().unwrap(),
        );
        h.env.alarm_failures.store(usize::MAX, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::unbounded_channel();
        *h.env.alarm_tx.lock().unwrap() = Some(tx);
        h.fetch("sleeper", &format!("/alarm?{at}")).await.unwrap();
        loop {
            if let Note::Alarm(when, 0) = recv(&mut rx).await {
                assert_eq!(when, at);
                break;
            }
        }
        h.runtime.shutdown().await;
    }
    let h = Harness::with_store(
        open_store(Kind::Fjall, dir.path()),
        config(),
        tempfile::tempdir().unwrap(),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    *h.env.alarm_tx.lock().unwrap() = Some(tx);
    loop {
        if let Note::Alarm(when, 0) = recv(&mut rx).await {
            assert_eq!(when, at);
            break;
        }
    }
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn an_alarm_due_while_its_queue_is_flooded_runs_once_after_the_flood() {
    let h = Harness::new(
        Kind::Memory,
        RuntimeConfig {
            queue_depth: 2,
            // Failures would use up these retries within milliseconds.
            alarm_retry: AlarmRetry {
                first_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(5),
                max_retries: 2,
            },
            ..config()
        },
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    *h.env.alarm_tx.lock().unwrap() = Some(tx);
    let at = now_ms() + 100;
    h.fetch("f", &format!("/alarm?{at}")).await.unwrap();
    // The flood: one event running, the queue full behind it.
    let blocked = h.env.blocked.notified();
    let running = h.spawn_fetch("f", "/block");
    blocked.await;
    let mut queued: Vec<_> = (0..2).map(|_| Box::pin(h.fetch("f", "/get"))).collect();
    for call in queued.iter_mut() {
        assert!(call.as_mut().now_or_never().is_none(), "queued");
    }
    // The alarm comes due during the flood, which lasts well past it: long
    // enough for every retry to be used up if a refusal counted as one.
    while now_ms() < at + 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.env.unblock.notify_one();
    assert_eq!(running.await.unwrap().unwrap().into_body(), "unblocked");
    for call in queued {
        assert_eq!(call.await.unwrap(), "0");
    }
    loop {
        if let Note::Alarm(when, retry) = recv(&mut rx).await {
            assert_eq!((when, retry), (at, 0), "the first run, not a retry");
            break;
        }
    }
    // It ran once and succeeded: cleared, and counted once.
    let fired = async |h: &Harness| h.fetch("f", "/alarm-get").await.unwrap();
    let mut cleared = false;
    for _ in 0..500 {
        if fired(&h).await == "None" {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cleared, "the alarm is cleared after its run");
    let runs = h
        .env
        .notes
        .lock()
        .unwrap()
        .iter()
        .filter(|n| matches!(n, Note::Alarm(..)))
        .count();
    assert_eq!(runs, 1);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn alarms_of_unknown_classes_do_not_hold_back_the_others() {
    let store = Store::open(MemoryBackend::new(), StoreOptions::default()).unwrap();
    // More alarms of a class this runtime does not host than the scheduler
    // reads at a time, all earlier than the one that must fire.
    let gone = odo_core::Namespace::new("GONE");
    let early = now_ms().saturating_sub(60_000);
    for i in 0..200 {
        let mut storage = store.object(gone.id_from_name(&format!("g{i}")));
        storage.set_alarm(early + i).await.unwrap();
        storage.commit_turn().unwrap().await.unwrap();
    }
    let h = Harness::with_store(store, config(), tempfile::tempdir().unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    *h.env.alarm_tx.lock().unwrap() = Some(tx);
    let at = now_ms();
    h.fetch("mine", &format!("/alarm?{at}")).await.unwrap();
    loop {
        if let Note::Alarm(when, 0) = recv(&mut rx).await {
            assert_eq!(when, at);
            break;
        }
    }
    h.runtime.shutdown().await;
}
