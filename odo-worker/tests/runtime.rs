//! In-process tests of every runtime semantic, on both backends.

mod common;

use common::*;

#[tokio::test]
async fn events_of_one_object_never_interleave_and_keep_arrival_order() {
    both(async |kind| {
        let h = Harness::new(kind, config());
        let calls = (0..200).map(|_| h.fetch("c", "/increment"));
        let results = futures_util::future::join_all(calls).await;
        let values: Vec<u64> = results
            .into_iter()
            .map(|r| r.unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            values,
            (1..=200).collect::<Vec<_>>(),
            "{kind:?}: arrival order"
        );
        let notes = h.env.notes.lock().unwrap().clone();
        let turns: Vec<Note> = notes
            .into_iter()
            .filter(|n| !matches!(n, Note::Init))
            .collect();
        let expected: Vec<Note> = (1..=200)
            .flat_map(|n| [Note::Start(n), Note::End(n)])
            .collect();
        assert_eq!(turns, expected, "{kind:?}: turns interleaved");
        assert_eq!(h.fetch("c", "/get").await.unwrap(), "200");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_panicking_or_failing_handler_resets_only_its_object() {
    both(async |kind| {
        let h = Harness::new(kind, config());
        assert_eq!(h.fetch("c", "/increment").await.unwrap(), "1");
        assert_eq!(h.fetch("bystander", "/increment").await.unwrap(), "1");
        let before = h.fetch("c", "/whoami").await.unwrap();
        for path in ["/panic", "/fail"] {
            let err = h.fetch("c", path).await.unwrap_err();
            assert!(
                matches!(err, WireError::ObjectReset { .. }),
                "{kind:?} {path}: {err:?}"
            );
            // The failed turn's write (1000) is gone; a new instance serves.
            assert_eq!(h.fetch("c", "/get").await.unwrap(), "1", "{kind:?} {path}");
        }
        let after = h.fetch("c", "/whoami").await.unwrap();
        assert_ne!(
            before, after,
            "{kind:?}: a reset object must be a new instance"
        );
        let bystander_before = h.fetch("bystander", "/whoami").await.unwrap();
        assert_eq!(h.fetch("bystander", "/get").await.unwrap(), "1");
        assert_eq!(
            h.fetch("bystander", "/whoami").await.unwrap(),
            bystander_before
        );
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_failing_init_fails_the_event_and_retries_on_the_next() {
    let h = Harness::new(Kind::Memory, config());
    for _ in 0..2 {
        let err = h.fetch("bad-init", "/get").await.unwrap_err();
        assert!(
            matches!(&err, WireError::ObjectReset { reason } if reason.contains("init refuses")),
            "{err:?}"
        );
    }
    assert_eq!(h.fetch("fine", "/get").await.unwrap(), "0");
    assert_eq!(*h.env.notes.lock().unwrap(), vec![Note::Init]);
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_answers_overloaded_at_once() {
    let h = Harness::new(
        Kind::Memory,
        RuntimeConfig {
            queue_depth: 2,
            ..config()
        },
    );
    let blocked = h.env.blocked.notified();
    let first = h.spawn_fetch("q", "/block");
    blocked.await;
    // The first event runs; two more fit in the queue; the fourth does not.
    // A first poll of a call enqueues its event.
    let mut queued: Vec<_> = (0..2).map(|_| Box::pin(h.fetch("q", "/get"))).collect();
    for call in queued.iter_mut() {
        assert!(call.as_mut().now_or_never().is_none());
    }
    let overflow = h.fetch("q", "/get").now_or_never();
    assert!(
        matches!(overflow, Some(Err(WireError::Overloaded))),
        "{overflow:?}"
    );
    h.env.unblock.notify_one();
    assert_eq!(first.await.unwrap().unwrap().into_body(), "unblocked");
    for call in queued {
        assert_eq!(call.await.unwrap(), "0");
    }
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn rpc_between_objects_passes_the_output_gate() {
    both(async |kind| {
        let h = Harness::new(kind, config());
        assert_eq!(h.fetch("a", "/add-to-other").await.unwrap(), "5");
        assert_eq!(h.fetch("a", "/add-to-other").await.unwrap(), "10");
        assert_eq!(h.fetch("other", "/get").await.unwrap(), "10");
        let ungated = h.fetch("a", "/ungated").await.unwrap();
        assert!(ungated.contains("output gate"), "{ungated}");
        // Unknown and reserved methods are the caller's error: no reset.
        let stub = h.runtime.namespace("COUNTER").get_by_name("other");
        let who = h.fetch("other", "/whoami").await.unwrap();
        let unknown = stub.call::<u64, u64>("nope", &1).await.unwrap_err();
        assert!(unknown.to_string().contains("unknown method"), "{unknown}");
        let reserved = stub.call::<u64, u64>("_private", &1).await.unwrap_err();
        assert!(reserved.to_string().contains("reserved"), "{reserved}");
        assert_eq!(h.fetch("other", "/whoami").await.unwrap(), who);
        assert_eq!(stub.call::<u64, u64>("add", &1).await.unwrap(), 11);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_class_and_foreign_ids_are_refused() {
    let h = Harness::new(Kind::Memory, config());
    let mut target = h.target("x");
    target.class = Arc::from("NOPE");
    let err = h
        .runtime
        .fetch(target, None, Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        WireError::UnknownClass {
            class: "NOPE".into()
        }
    );
    let mut target = h.target("x");
    target.id = odo_core::Namespace::new("OTHER").id_from_name("x");
    let err = h
        .runtime
        .fetch(target, None, Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::BadRequest { .. }), "{err:?}");
    let err = h
        .runtime
        .fetch(h.target("x"), Some(7), Request::new(Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(err, WireError::Moved { epoch: 1 });
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn idle_objects_are_evicted_and_come_back_with_their_state() {
    both(async |kind| {
        let h = Harness::new(
            kind,
            RuntimeConfig {
                idle_timeout: Duration::from_millis(20),
                ..config()
            },
        );
        assert_eq!(h.fetch("e", "/increment").await.unwrap(), "1");
        let first = h.fetch("e", "/whoami").await.unwrap();
        wait_until("the idle object is evicted", || {
            h.runtime.live_objects() == 0
        })
        .await;
        assert_eq!(h.fetch("e", "/get").await.unwrap(), "1");
        assert_ne!(h.fetch("e", "/whoami").await.unwrap(), first);
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_live_object_cap_evicts_least_recently_used() {
    both(async |kind| {
        let h = Harness::new(
            kind,
            RuntimeConfig {
                max_live_objects: 8,
                ..config()
            },
        );
        for i in 0..40 {
            h.fetch(&format!("o{i}"), "/increment").await.unwrap();
        }
        wait_until("live objects fall under the cap", || {
            h.runtime.live_objects() <= 8
        })
        .await;
        for i in 0..40 {
            assert_eq!(h.fetch(&format!("o{i}"), "/get").await.unwrap(), "1");
        }
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn background_tasks_keep_an_object_alive() {
    let h = Harness::new(
        Kind::Memory,
        RuntimeConfig {
            idle_timeout: Duration::from_millis(10),
            ..config()
        },
    );
    h.fetch("bg", "/background").await.unwrap();
    // Several idle timeouts pass; the object stays while its task runs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.runtime.live_objects(), 1);
    h.env.background_release.notify_waiters();
    wait_until("the object is evicted once its task ends", || {
        h.runtime.live_objects() == 0
    })
    .await;
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn releasing_a_shard_finishes_in_flight_events_then_answers_moved() {
    let h = Harness::new(Kind::Fjall, config());
    let blocked = h.env.blocked.notified();
    let in_flight = h.spawn_fetch("d", "/block");
    blocked.await;
    let release = tokio::spawn({
        let runtime = h.runtime.clone();
        async move { runtime.release_shard(0).await }
    });
    // New events are refused as soon as the shard starts draining.
    wait_until("the shard starts draining", || {
        h.runtime.shards().is_empty()
    })
    .await;
    assert!(matches!(
        h.fetch("d", "/get").await,
        Err(WireError::Moved { .. })
    ));
    h.env.unblock.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap().into_body(), "unblocked");
    assert!(release.await.unwrap());
    assert_eq!(h.runtime.live_objects(), 0);
}

#[tokio::test]
async fn responses_wait_for_durability_but_later_events_do_not() {
    let valve = CommitValve::new();
    let store = Store::open(valve.backend(MemoryBackend::new()), StoreOptions::default()).unwrap();
    let h = Harness::with_store(store, config(), tempfile::tempdir().unwrap());
    // Dropped before the harness: a failing assertion must not leave the
    // commit thread stuck at the valve while the store closes.
    let _open_on_exit = valve.open_on_drop();
    // Nothing pending: answers at once even with commits stuck.
    assert_eq!(h.fetch("g", "/get").await.unwrap(), "0");

    let first = h.spawn_fetch("g", "/increment");
    // The second increment runs on the first one's written, not yet durable,
    // state: its turn ends (Note::End(2)) while the first response is held.
    let second = h.spawn_fetch("g", "/increment");
    wait_until("the second turn ran", || {
        h.env.notes.lock().unwrap().contains(&Note::End(2))
    })
    .await;
    assert!(
        !first.is_finished() && !second.is_finished(),
        "responses must wait for the commit"
    );
    valve.open();
    assert_eq!(first.await.unwrap().unwrap().into_body(), "1");
    assert_eq!(second.await.unwrap().unwrap().into_body(), "2");
    h.runtime.shutdown().await;
}
