//! A failed turn resets its object without losing what earlier turns
//! committed, whatever the order of turns, failures and commit completions.
//!
//! Regression: a reset used to give the next activation a fresh storage
//! view at once, which read the backend before an earlier turn's commit
//! (still in flight) had landed, so the next turn overwrote an
//! acknowledged write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_storage::conformance::CommitValve;
use odo_storage::{MemoryBackend, Store, StoreOptions};
use odo_worker::{
    AlarmInfo, AlarmRetry, Classes, Context, DurableObject, ObjectAddress, ObjectError, Request,
    Response, Runtime, RuntimeConfig,
};
use proptest::prelude::*;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// `/incr` reads `n`, writes `n + 1` and answers it; `/fail` writes and
/// fails; `/panic` writes and panics; `/hang` writes and never returns;
/// `/get` answers `n`; `/alarm` sets
/// the alarm to fire at once, and the alarm handler writes and fails
/// (`/alarm-hang`: it writes and never returns).
struct Counter {
    env: Arc<Env>,
}

/// What the objects tell the test.
#[derive(Default)]
struct Env {
    alarm_ran: Notify,
    /// `/incr` turns that reached their end.
    increments: AtomicUsize,
    /// Runs of the alarm handler.
    alarm_runs: AtomicUsize,
}

async fn n(ctx: &mut Context) -> Result<u64, ObjectError> {
    Ok(ctx.storage().get_typed::<u64>("n").await?.unwrap_or(0))
}

fn text(s: impl ToString) -> Response {
    Response::new(Bytes::from(s.to_string()))
}

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        unreachable!("registered with a factory")
    }

    async fn fetch(&mut self, ctx: &mut Context, req: Request) -> Result<Response, ObjectError> {
        match req.uri().path() {
            "/incr" => {
                let next = n(ctx).await? + 1;
                ctx.storage().put_typed("n", &next).await?;
                self.env.increments.fetch_add(1, Ordering::SeqCst);
                Ok(text(next))
            }
            "/get" => Ok(text(n(ctx).await?)),
            "/fail" => {
                ctx.storage().put_typed("n", &1_000_000u64).await?;
                Err(ObjectError::msg("failing on purpose"))
            }
            "/panic" => {
                ctx.storage().put_typed("n", &2_000_000u64).await?;
                panic!("panicking on purpose");
            }
            "/hang" => {
                ctx.storage().put_typed("n", &4_000_000u64).await?;
                std::future::pending().await
            }
            "/alarm-hang" => {
                ctx.storage().put_typed("hang", &true).await?;
                ctx.storage().set_alarm(0).await?;
                Ok(text("set"))
            }
            "/alarm" => {
                ctx.storage().set_alarm(0).await?;
                Ok(text("set"))
            }
            other => Err(ObjectError::msg(format!("no route {other}"))),
        }
    }

    async fn alarm(&mut self, ctx: &mut Context, _: AlarmInfo) -> Result<(), ObjectError> {
        self.env.alarm_runs.fetch_add(1, Ordering::SeqCst);
        if ctx.storage().get_typed::<bool>("hang").await?.is_some() {
            ctx.storage().put_typed("n", &5_000_000u64).await?;
            self.env.alarm_ran.notify_one();
            return std::future::pending().await;
        }
        ctx.storage().put_typed("n", &3_000_000u64).await?;
        self.env.alarm_ran.notify_one();
        Err(ObjectError::msg("alarm fails on purpose"))
    }
}

struct Harness {
    runtime: Runtime,
    valve: Arc<CommitValve>,
    env: Arc<Env>,
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    /// A harness whose runtime's configuration `edit` changed.
    fn with(edit: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let valve = CommitValve::new();
        let store = Store::open(valve.backend(MemoryBackend::new()), StoreOptions::default())
            .expect("store");
        let env = Arc::new(Env::default());
        let mut classes = Classes::default();
        let shared = env.clone();
        classes
            .register_with("COUNTER", move |_| Counter {
                env: shared.clone(),
            })
            .expect("class");
        let mut config = RuntimeConfig {
            // A failed alarm is retried only after the test is over.
            alarm_retry: AlarmRetry {
                first_delay: Duration::from_secs(3600),
                max_delay: Duration::from_secs(3600),
                max_retries: 1,
            },
            alarm_time_limit: Duration::from_secs(60),
            ..RuntimeConfig::default()
        };
        edit(&mut config);
        let runtime = Runtime::new(classes, config, 1);
        runtime.open_shard(0, 1, store).expect("shard");
        Self {
            runtime,
            valve,
            env,
        }
    }

    /// Sends `path` to object `name`. The event is in the object's mailbox
    /// when this returns, so events keep the order of these calls.
    fn send(&self, name: &str, path: &str) -> Answer {
        let runtime = self.runtime.clone();
        let target = ObjectAddress {
            class: Arc::from("COUNTER"),
            id: odo_core::Namespace::new("COUNTER").id_from_name(name),
            name: Some(Arc::from(name)),
        };
        let request = http::Request::builder()
            .uri(path)
            .body(Bytes::new())
            .expect("request");
        let mut fetch = Box::pin(async move {
            let response = runtime.fetch(target, None, request).await?;
            Ok(String::from_utf8_lossy(response.body()).into_owned())
        });
        // The first poll queues the event.
        let first = futures_util::FutureExt::now_or_never(fetch.as_mut());
        tokio::spawn(async move {
            match first {
                Some(done) => done,
                None => fetch.await,
            }
        })
    }
}

/// A request on its way: its task answers the body or the error.
type Answer = JoinHandle<Result<String, WireError>>;

async fn answer(handle: Answer) -> Result<String, WireError> {
    tokio::time::timeout(Duration::from_secs(20), handle)
        .await
        .expect("an answer within 20 s")
        .expect("the task")
}

/// Waits (bounded) until `count` `/incr` turns have ended (and so
/// committed: the commit follows the handler without a suspension).
async fn increments(h: &Harness, count: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.env.increments.load(Ordering::SeqCst) < count {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the turns did not run"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits (bounded) until `count` commits wait at the valve.
async fn held(valve: &CommitValve, count: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while valve.waiting() < count {
        assert!(tokio::time::Instant::now() < give_up, "no commit arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_failed_turn_keeps_the_earlier_turns_commit_in_flight() {
    for failing in ["/fail", "/panic"] {
        let h = Harness::new();
        let _open = h.valve.open_on_drop();
        let first = h.send("a", "/incr");
        held(&h.valve, 1).await;
        let failed = h.send("a", failing);
        let second = h.send("a", "/incr");
        // The second increment's turn has run (after the reset) while the
        // first one's commit is still held.
        increments(&h, 2).await;
        h.valve.open();
        assert!(matches!(
            answer(failed).await,
            Err(WireError::ObjectReset { .. })
        ));
        let first = answer(first).await.expect("first increment");
        let second = answer(second).await.expect("second increment");
        let now = answer(h.send("a", "/get")).await.expect("read");
        assert_eq!(
            (first.as_str(), second.as_str(), now.as_str()),
            ("1", "2", "2"),
            "after {failing}: both increments were acknowledged, so both must count"
        );
        h.runtime.shutdown().await;
    }
}

#[tokio::test]
async fn a_failed_alarm_keeps_the_earlier_turns_commit_in_flight() {
    let h = Harness::new();
    let _open = h.valve.open_on_drop();
    // The alarm (due at once) is set; its commit waits at the valve.
    let set = h.send("a", "/alarm");
    held(&h.valve, 1).await;
    // An increment: its commit queues behind the alarm's.
    let first = h.send("a", "/incr");
    // The alarm's commit goes through, so the alarm fires while the
    // increment's commit is held at the valve; the handler fails.
    let ran = h.env.alarm_ran.notified();
    h.valve.allow(true);
    answer(set).await.expect("alarm set");
    tokio::time::timeout(Duration::from_secs(20), ran)
        .await
        .expect("the alarm ran");
    let second = h.send("a", "/incr");
    increments(&h, 2).await;
    h.valve.open();
    let first = answer(first).await.expect("first increment");
    let second = answer(second).await.expect("second increment");
    let now = answer(h.send("a", "/get")).await.expect("read");
    assert_eq!(
        (first.as_str(), second.as_str(), now.as_str()),
        ("1", "2", "2")
    );
    h.runtime.shutdown().await;
}

#[tokio::test]
async fn a_failed_commit_fails_every_reply_that_depended_on_it() {
    let h = Harness::new();
    let _open = h.valve.open_on_drop();
    let first = h.send("a", "/incr");
    held(&h.valve, 1).await;
    let failed = h.send("a", "/fail");
    // Runs on the first increment's state, so it depends on its commit.
    let second = h.send("a", "/incr");
    increments(&h, 2).await;
    h.valve.allow(false);
    h.valve.open();
    assert!(answer(failed).await.is_err());
    assert!(matches!(
        answer(first).await,
        Err(WireError::OutcomeUnknown { .. })
    ));
    assert!(matches!(
        answer(second).await,
        Err(WireError::OutcomeUnknown { .. })
    ));
    // Nothing was acknowledged, and the object starts again from what is
    // durable.
    assert_eq!(answer(h.send("a", "/get")).await.expect("read"), "0");
    assert_eq!(answer(h.send("a", "/incr")).await.expect("incr"), "1");
    h.runtime.shutdown().await;
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Step {
    /// An event for object `0..OBJECTS`.
    Send(usize, &'static str),
    /// The next commit goes through (`true`) or fails.
    Commit(bool),
    /// Let the runtime run a little.
    Yield,
}

const OBJECTS: usize = 3;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..OBJECTS).prop_map(|o| Step::Send(o, "/incr")),
        1 => (0..OBJECTS).prop_map(|o| Step::Send(o, "/fail")),
        1 => (0..OBJECTS).prop_map(|o| Step::Send(o, "/get")),
        3 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(Step::Commit),
        2 => Just(Step::Yield),
    ]
}

/// Runs `steps`, then lets every commit through, and checks against the
/// model: for each object, the increments answered 200 are exactly 1..=n
/// (each once) where n is the final value, and every read answered 200
/// showed 0 or an acknowledged value.
async fn check(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let h = Harness::new();
    let _open = h.valve.open_on_drop();
    let mut sent: Vec<(usize, &'static str, Answer)> = Vec::new();
    for step in steps {
        match step {
            Step::Send(object, path) => {
                sent.push((object, path, h.send(&format!("o{object}"), path)));
            }
            Step::Commit(ok) => h.valve.allow(ok),
            Step::Yield => {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    h.valve.open();
    let mut increments: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut reads: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (object, path, handle) in sent {
        let result = answer(handle).await;
        match (path, result) {
            ("/incr", Ok(v)) => increments
                .entry(object)
                .or_default()
                .push(v.parse().unwrap()),
            ("/get", Ok(v)) => reads.entry(object).or_default().push(v.parse().unwrap()),
            ("/fail", Ok(v)) => {
                return Err(TestCaseError::fail(format!("{path} answered {v}")));
            }
            (_, Ok(_)) => unreachable!("only these paths are sent"),
            // The handler failed, or a commit the answer waited for did.
            (_, Err(WireError::ObjectReset { .. } | WireError::OutcomeUnknown { .. })) => {}
            (_, Err(other)) => {
                return Err(TestCaseError::fail(format!("{path}: unexpected {other}")));
            }
        }
    }
    for object in 0..OBJECTS {
        let now: u64 = answer(h.send(&format!("o{object}"), "/get"))
            .await
            .map_err(|e| TestCaseError::fail(format!("final read: {e}")))?
            .parse()
            .unwrap();
        let mut acked = increments.remove(&object).unwrap_or_default();
        acked.sort_unstable();
        prop_assert_eq!(
            &acked,
            &(1..=now).collect::<Vec<_>>(),
            "object {}: acknowledged increments vs final value {}",
            object,
            now
        );
        for read in reads.remove(&object).unwrap_or_default() {
            prop_assert!(
                read == 0 || acked.contains(&read),
                "object {} showed {} which was never acknowledged",
                object,
                read
            );
        }
    }
    h.runtime.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn answered_writes_survive_failures_in_any_order(steps in prop::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(check(steps))?;
    }
}

/// A handler that never returns is cut at its request's deadline: the
/// object is reset, the writes of its turn are dropped, and the requests
/// queued behind it run (they waited out their own deadlines behind it).
#[tokio::test]
async fn a_turn_that_never_ends_is_cut_at_its_deadline_and_rolled_back() {
    let h = Harness::with(|c| c.call_timeout = Duration::from_millis(300));
    h.valve.open();
    assert_eq!(answer(h.send("a", "/incr")).await.expect("incr"), "1");
    let hung = h.send("a", "/hang");
    // Queued behind the hung turn, with a deadline later than its.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = h.send("a", "/incr");
    assert!(matches!(
        answer(hung).await,
        Err(WireError::DeadlineExceeded)
    ));
    assert_eq!(answer(next).await.expect("the next increment"), "2");
    assert_eq!(answer(h.send("a", "/get")).await.expect("get"), "2");
}

/// Increments `a` to 1, then sets it an alarm that hangs, and waits until
/// it runs.
async fn increment_then_hang_an_alarm(h: &Harness) {
    h.valve.open();
    assert_eq!(answer(h.send("a", "/incr")).await.expect("incr"), "1");
    assert_eq!(
        answer(h.send("a", "/alarm-hang")).await.expect("alarm"),
        "set"
    );
    tokio::time::timeout(Duration::from_secs(20), h.env.alarm_ran.notified())
        .await
        .expect("the alarm ran");
}

/// An alarm handler that never returns is cut at the alarm time limit:
/// its writes are dropped, and the requests queued behind it run.
#[tokio::test]
async fn an_alarm_that_never_ends_is_cut_at_its_time_limit() {
    let h = Harness::with(|c| {
        c.call_timeout = Duration::from_secs(2);
        c.alarm_time_limit = Duration::from_millis(300);
    });
    increment_then_hang_an_alarm(&h).await;
    // Queued behind the hung alarm: answered once it is cut, within this
    // request's 2 s.
    assert_eq!(answer(h.send("a", "/get")).await.expect("get"), "1");
}

/// An alarm that failed its last retry is deleted. If that deletion's
/// commit fails, it is tried again: the handler does not run again (a
/// failed deletion once started the alarm's retries over).
#[tokio::test]
async fn a_failed_deletion_of_a_dropped_alarm_does_not_run_it_again() {
    let h = Harness::with(|c| {
        c.alarm_retry = AlarmRetry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_retries: 1,
        };
    });
    let _open = h.valve.open_on_drop();
    let set = h.send("a", "/alarm");
    h.valve.allow(true);
    assert_eq!(answer(set).await.expect("alarm set"), "set");
    // The first run and its one retry fail (their writes are rolled back,
    // so nothing reaches the valve); then the deletion's commit does.
    held(&h.valve, 1).await;
    assert_eq!(h.env.alarm_runs.load(Ordering::SeqCst), 2);
    h.valve.allow(false);
    // The deletion again, after the longest backoff: this one commits.
    held(&h.valve, 1).await;
    h.valve.allow(true);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while h.valve.passed() < 3 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the deletion did not pass"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Long past every backoff: the handler never ran again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.env.alarm_runs.load(Ordering::SeqCst), 2);
}

/// An event whose caller gave up while it waited in the queue (behind an
/// alarm, whose limit is longer than a request's deadline) does not run
/// once its turn comes: its increment is not made.
#[tokio::test]
async fn an_event_whose_deadline_passed_in_the_queue_does_not_run() {
    let h = Harness::with(|c| {
        c.call_timeout = Duration::from_millis(300);
        c.alarm_time_limit = Duration::from_secs(1);
    });
    increment_then_hang_an_alarm(&h).await;
    assert!(matches!(
        answer(h.send("a", "/incr")).await,
        Err(WireError::DeadlineExceeded)
    ));
    // Once the alarm is cut, the object answers again.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    let n = loop {
        match answer(h.send("a", "/get")).await {
            Ok(n) => break n,
            Err(WireError::DeadlineExceeded) => {
                assert!(tokio::time::Instant::now() < give_up, "no answer");
            }
            Err(other) => panic!("{other:?}"),
        }
    };
    assert_eq!(n, "1");
    assert_eq!(h.env.increments.load(Ordering::SeqCst), 1);
}
