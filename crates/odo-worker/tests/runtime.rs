//! In-process tests of every runtime semantic, on both backends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use odo_core::WireError;
use odo_storage::conformance::InterceptCommits;
use odo_storage::{Backend, FjallBackend, FjallOptions, MemoryBackend, Store, StoreOptions};
use odo_worker::{
    AlarmInfo, AlarmRetry, Classes, Context, DurableObject, ObjectError, ObjectRef, Request,
    Response, RpcCall, RpcReply, Runtime, RuntimeConfig, now_ms,
};
use tokio::sync::{Notify, mpsc};

/// What objects report to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    Start(u64),
    End(u64),
    Alarm(u64, u32),
    Init,
}

/// Shared by the test and every instance.
#[derive(Default)]
struct Env {
    notes: Mutex<Vec<Note>>,
    alarm_tx: Mutex<Option<mpsc::UnboundedSender<Note>>>,
    /// Handlers of `/block` wait on this.
    unblock: Notify,
    blocked: Notify,
    /// Alarm handlers fail this many times before succeeding.
    alarm_failures: AtomicUsize,
    background_release: Notify,
}

impl Env {
    fn note(&self, note: Note) {
        self.notes.lock().unwrap().push(note.clone());
        if let Some(tx) = self.alarm_tx.lock().unwrap().as_ref() {
            let _ = tx.send(note);
        }
    }
}

struct Counter {
    env: Arc<Env>,
}

async fn count(ctx: &mut Context) -> Result<u64, ObjectError> {
    Ok(ctx.storage().get_typed::<u64>("n").await?.unwrap_or(0))
}

fn text(s: impl ToString) -> Response {
    Response::new(Bytes::from(s.to_string()))
}

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        unreachable!("registered with a factory")
    }

    async fn init(&mut self, ctx: &mut Context) -> Result<(), ObjectError> {
        if ctx.name() == Some("bad-init") {
            return Err(ObjectError::msg("init refuses"));
        }
        self.env.note(Note::Init);
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Context, req: Request) -> Result<Response, ObjectError> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/increment" => {
                let n = count(ctx).await? + 1;
                self.env.note(Note::Start(n));
                // A suspension point inside the turn: another event must not
                // run here.
                tokio::task::yield_now().await;
                ctx.storage().put_typed("n", &n).await?;
                self.env.note(Note::End(n));
                Ok(text(n))
            }
            "/get" => Ok(text(count(ctx).await?)),
            "/whoami" => Ok(text(ctx.activation())),
            "/panic" => {
                ctx.storage().put_typed("n", &1000u64).await?;
                panic!("boom");
            }
            "/fail" => {
                ctx.storage().put_typed("n", &1000u64).await?;
                Err(ObjectError::msg("refused"))
            }
            "/block" => {
                let unblock = self.env.unblock.notified();
                self.env.blocked.notify_one();
                unblock.await;
                Ok(text("unblocked"))
            }
            "/alarm" => {
                let at: u64 = req
                    .uri()
                    .query()
                    .unwrap_or("0")
                    .parse()
                    .map_err(ObjectError::msg)?;
                ctx.storage().set_alarm(at).await?;
                Ok(text("set"))
            }
            "/alarm-delete" => {
                ctx.storage().delete_alarm().await?;
                Ok(text("deleted"))
            }
            "/alarm-get" => Ok(text(format!("{:?}", ctx.storage().get_alarm().await?))),
            "/background" => {
                let env = self.env.clone();
                ctx.wait_until(async move { env.background_release.notified().await });
                Ok(text("started"))
            }
            "/add-to-other" => {
                let other = ctx.namespace("COUNTER").get_by_name("other");
                let total: u64 = ctx.call(&other, "add", &5u64).await?;
                Ok(text(total))
            }
            "/ungated" => {
                let other = ctx.namespace("COUNTER").get_by_name("other");
                match other.call::<u64, u64>("add", &1).await {
                    Err(e) => Ok(text(e)),
                    Ok(_) => Ok(text("the gate was bypassed")),
                }
            }
            other => Err(ObjectError::msg(format!("no route {other}"))),
        }
    }

    async fn call(&mut self, ctx: &mut Context, call: RpcCall) -> Result<RpcReply, ObjectError> {
        match call.method.as_str() {
            "add" => {
                let delta: u64 = call.args()?;
                let n = count(ctx).await? + delta;
                ctx.storage().put_typed("n", &n).await?;
                RpcReply::new(&n)
            }
            _ => Err(ObjectError::UnknownMethod(call.method)),
        }
    }

    async fn alarm(&mut self, ctx: &mut Context, alarm: AlarmInfo) -> Result<(), ObjectError> {
        self.env
            .note(Note::Alarm(alarm.scheduled_ms, alarm.retry_count));
        if self.env.alarm_failures.load(Ordering::SeqCst) > alarm.retry_count as usize {
            return Err(ObjectError::msg("alarm fails on purpose"));
        }
        let fired: u64 = ctx.storage().get_typed("alarms").await?.unwrap_or(0) + 1;
        ctx.storage().put_typed("alarms", &fired).await?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Memory,
    Fjall,
}

struct Harness {
    runtime: Runtime,
    env: Arc<Env>,
    _dir: tempfile::TempDir,
}

fn config() -> RuntimeConfig {
    RuntimeConfig {
        alarm_retry: AlarmRetry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_retries: 6,
        },
        ..RuntimeConfig::default()
    }
}

fn open_store(kind: Kind, dir: &std::path::Path) -> Store {
    let backend: Arc<dyn Backend> = match kind {
        Kind::Memory => Arc::new(MemoryBackend::new()),
        Kind::Fjall => {
            Arc::new(FjallBackend::open(dir.join("shard-0"), FjallOptions::default()).unwrap())
        }
    };
    Store::open_shared(backend, StoreOptions::default()).unwrap()
}

fn classes(env: &Arc<Env>) -> Classes {
    let mut classes = Classes::default();
    let env = env.clone();
    classes
        .register_with("COUNTER", move |_| Counter { env: env.clone() })
        .unwrap();
    classes
}

impl Harness {
    fn new(kind: Kind, config: RuntimeConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_store(open_store(kind, dir.path()), config, dir)
    }

    fn with_store(store: Store, config: RuntimeConfig, dir: tempfile::TempDir) -> Self {
        let env = Arc::new(Env::default());
        let runtime = Runtime::new(classes(&env), config, 1);
        runtime.open_shard(0, 1, store).unwrap();
        Self {
            runtime,
            env,
            _dir: dir,
        }
    }

    fn target(&self, name: &str) -> ObjectRef {
        let id = odo_core::Namespace::new("COUNTER").id_from_name(name);
        ObjectRef {
            class: Arc::from("COUNTER"),
            id,
            name: Some(Arc::from(name)),
        }
    }

    /// Sends a request from a task of its own; the handle answers the
    /// raw response.
    fn spawn_fetch(
        &self,
        name: &str,
        path: &str,
    ) -> tokio::task::JoinHandle<Result<Response, WireError>> {
        let runtime = self.runtime.clone();
        let target = self.target(name);
        let request = http::Request::builder()
            .uri(path)
            .body(Bytes::new())
            .unwrap();
        tokio::spawn(async move { runtime.fetch(target, None, request).await })
    }

    async fn fetch(&self, name: &str, path: &str) -> Result<String, WireError> {
        let request = http::Request::builder()
            .uri(path)
            .body(Bytes::new())
            .unwrap();
        let response = self.runtime.fetch(self.target(name), None, request).await?;
        Ok(String::from_utf8(response.into_body().to_vec()).unwrap())
    }
}

async fn both(test: impl AsyncFn(Kind)) {
    test(Kind::Memory).await;
    test(Kind::Fjall).await;
}

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

/// The next note, within 30 s (a missing alarm fails instead of hanging).
async fn recv(rx: &mut mpsc::UnboundedReceiver<Note>) -> Note {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a note within 30 s")
        .expect("the sender is alive")
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
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

/// A latch the commits of a real memory backend wait at: the only way to
/// observe a response held by the output gate.
#[derive(Debug)]
struct Latch {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Latch {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.changed.wait(open).unwrap();
        }
    }
}

/// Opens the latch when dropped.
struct OpenOnDrop(Arc<Latch>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[tokio::test]
async fn responses_wait_for_durability_but_later_events_do_not() {
    let latch = Arc::new(Latch {
        open: Mutex::new(true),
        changed: Condvar::new(),
    });
    let waits = latch.clone();
    let backend = InterceptCommits::new(MemoryBackend::new(), move |_| {
        waits.wait();
        Ok(())
    });
    let store = Store::open(backend, StoreOptions::default()).unwrap();
    let h = Harness::with_store(store, config(), tempfile::tempdir().unwrap());
    // Dropped before the harness: a failing assertion must not leave the
    // commit thread stuck at the latch while the store closes.
    let _open_on_exit = OpenOnDrop(latch.clone());
    // Nothing pending: answers at once even with commits stuck.
    latch.set(false);
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
    latch.set(true);
    assert_eq!(first.await.unwrap().unwrap().into_body(), "1");
    assert_eq!(second.await.unwrap().unwrap().into_body(), "2");
    h.runtime.shutdown().await;
}
