//! Calls between objects: every call carries its caller's remaining
//! deadline, a call cycle is refused at once, and releasing a shard is
//! bounded even while a call is pending.

mod common;

use common::*;
use odo_worker::CallScope;

fn request(path: &str) -> Request {
    http::Request::builder()
        .uri(path)
        .body(Bytes::new())
        .unwrap()
}

/// `fetch` within `timeout` (a failed assertion never hangs the test).
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 20 s"))
}

#[tokio::test]
async fn an_object_calling_itself_is_refused_at_once() {
    let h = Harness::new(Kind::Memory, config());
    let answer = bounded("a self-call", h.fetch("a", "/relay/a"))
        .await
        .unwrap();
    assert!(answer.starts_with("call failed: call cycle: "), "{answer}");
    let a = odo_core::Namespace::new("COUNTER").id_from_name("a");
    assert!(answer.ends_with(&format!("{a} -> {a}")), "{answer}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_two_object_cycle_is_refused_and_names_it() {
    let h = Harness::new(Kind::Memory, config());
    // a calls b, which calls a back: b's call is refused, b answers a.
    let answer = bounded("a cycle", h.fetch("a", "/relay/b/a"))
        .await
        .unwrap();
    let ns = odo_core::Namespace::new("COUNTER");
    let (a, b) = (ns.id_from_name("a"), ns.id_from_name("b"));
    assert_eq!(
        answer,
        format!("call failed: call cycle: {a} -> {b} -> {a}")
    );
    // A chain that does not come back is fine.
    let answer = bounded("a chain", h.fetch("a", "/relay/b/c"))
        .await
        .unwrap();
    assert!(answer.starts_with("end at c with "), "{answer}");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn the_callers_remaining_deadline_is_passed_on() {
    // The hanging object is stopped at shutdown after a short grace.
    let h = Harness::new(
        Kind::Memory,
        RuntimeConfig {
            release_grace: Duration::from_millis(100),
            ..config()
        },
    );
    let scope = CallScope::outside(Duration::from_millis(1500));
    let response = bounded(
        "a chain",
        h.runtime
            .fetch_within(h.target("a"), None, request("/relay/b/c"), scope),
    )
    .await
    .unwrap();
    let answer = String::from_utf8(response.into_body().to_vec()).unwrap();
    let left: u64 = answer
        .trim_start_matches("end at c with ")
        .trim_end_matches(" ms left")
        .parse()
        .unwrap();
    // Two hops later, what is left of the caller's 1.5 s, not a fresh 30 s.
    assert!(left <= 1500, "{answer}");

    // A call that cannot be answered in time ends at the caller's deadline
    // (here 300 ms), not at the runtime's 30 s default.
    let scope = CallScope::outside(Duration::from_millis(300));
    let answer = bounded(
        "a call to a hanging object",
        h.runtime
            .fetch_within(h.target("x"), None, request("/relay/y/hang"), scope),
    )
    .await;
    assert!(
        matches!(answer, Err(WireError::DeadlineExceeded)),
        "{answer:?}"
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_call_whose_deadline_passed_is_never_delivered() {
    let h = Harness::new(Kind::Memory, config());
    let scope = CallScope::outside(Duration::ZERO);
    let answer = h
        .runtime
        .fetch_within(h.target("late"), None, request("/increment"), scope)
        .await;
    assert!(matches!(answer, Err(WireError::DeadlineExceeded)));
    assert_eq!(h.fetch("late", "/get").await.unwrap(), "0");
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn releasing_a_shard_is_bounded_while_a_call_is_pending() {
    let h = Harness::new(
        Kind::Fjall,
        RuntimeConfig {
            release_grace: Duration::from_millis(200),
            ..config()
        },
    );
    // p calls q, which never answers; p's caller would wait 30 s.
    let blocked = h.env.blocked.notified();
    let pending = h.spawn_fetch("p", "/relay/q/hang");
    blocked.await;
    assert!(
        bounded("the release", h.runtime.release_shard(0)).await,
        "the shard was open"
    );
    assert_eq!(h.runtime.live_objects(), 0);
    // p and q are both stopped, in either order: p's caller learns that
    // the outcome is unknown, from the runtime or from p's own answer.
    let answer = bounded("the pending call", pending).await.unwrap();
    let unknown = match &answer {
        Err(WireError::OutcomeUnknown { .. }) => true,
        Ok(response) => response.body().starts_with(b"call failed: outcome unknown"),
        Err(_) => false,
    };
    assert!(unknown, "{answer:?}");
}

#[tokio::test]
async fn a_turn_that_fails_after_a_call_keeps_what_it_wrote_before_the_call() {
    both(async |kind| {
        let h = Harness::new(kind, config());
        let failed = h.fetch("partial", "/partial").await;
        assert!(
            matches!(failed, Err(WireError::ObjectReset { .. })),
            "{failed:?}"
        );
        // The call committed `before` (and the callee ran); `after` was
        // rolled back with the failed turn.
        assert_eq!(h.fetch("partial", "/keys").await.unwrap(), "before");
        assert_eq!(h.fetch("other", "/get").await.unwrap(), "1");
        h.runtime.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn wait_until_tasks_start_only_once_their_turn_is_durable() {
    let valve = CommitValve::new();
    let _open = valve.open_on_drop();
    let store = Store::open(valve.backend(MemoryBackend::new()), StoreOptions::default()).unwrap();
    let h = Harness::with_store(store, config(), tempfile::tempdir().unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    *h.env.alarm_tx.lock().unwrap() = Some(tx);
    let answer = h.spawn_fetch("w", "/notify-later");
    // The turn ran and deferred its task; its commit is held.
    wait_until("the turn's commit is held", || valve.waiting() == 1).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    while let Ok(note) = rx.try_recv() {
        assert!(
            !matches!(note, Note::Background(_)),
            "the task ran before its turn was durable: {note:?}"
        );
    }
    assert!(!answer.is_finished());
    valve.open();
    assert_eq!(answer.await.unwrap().unwrap().into_body(), "1");
    assert_eq!(background(&mut rx).await, 1);

    // A failed turn's task never runs; the next one's does.
    assert!(h.fetch("w", "/notify-later-fail").await.is_err());
    assert_eq!(h.fetch("w", "/notify-later").await.unwrap(), "2");
    assert_eq!(background(&mut rx).await, 2);

    // A failed commit drops the task too.
    let valve_failing = CommitValve::new();
    let _open_2 = valve_failing.open_on_drop();
    let store = Store::open(
        valve_failing.backend(MemoryBackend::new()),
        StoreOptions::default(),
    )
    .unwrap();
    let h2 = Harness::with_store(store, config(), tempfile::tempdir().unwrap());
    let (tx, mut rx2) = mpsc::unbounded_channel();
    *h2.env.alarm_tx.lock().unwrap() = Some(tx);
    valve_failing.allow(false);
    assert!(h2.fetch("w", "/notify-later").await.is_err());
    valve_failing.open();
    assert_eq!(h2.fetch("w", "/notify-later").await.unwrap(), "1");
    assert_eq!(background(&mut rx2).await, 1);
    h.runtime.shutdown().await;
    h2.runtime.shutdown().await;
}

/// The next `wait_until` task that ran (its value), skipping other notes.
async fn background(rx: &mut mpsc::UnboundedReceiver<Note>) -> u64 {
    loop {
        if let Note::Background(n) = recv(rx).await {
            return n;
        }
    }
}
