//! What requests from outside can make objects do to a worker through
//! alarms and calls between objects: nothing that outlives the request or
//! the alarm (found by a review that attacked a running server).

use std::time::Duration;

use bytes::Bytes;
use odo_tests::http::HttpClient;
use odo_tests::topology::{RunningServer, ServerSpec};

/// A server with two workers; its log goes to `dir/server.log`.
fn start(dir: &std::path::Path) -> (RunningServer, HttpClient) {
    start_with(dir, &[])
}

/// [`start`] with more arguments for `serve`.
fn start_with(dir: &std::path::Path, args: &[&str]) -> (RunningServer, HttpClient) {
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2);
    spec.extra_args = args.iter().map(|a| a.to_string()).collect();
    spec.stderr = Some(dir.join("server.log"));
    spec.env.push(("RUST_LOG".into(), "warn".into()));
    let server = spec.start(&dir.join("data")).expect("the server starts");
    let client = HttpClient::new(&server.base);
    (server, client)
}

/// Waits until the server's log says alarms failed `times` times (and
/// are to be retried).
async fn alarm_failures(dir: &std::path::Path, times: usize) {
    let log = dir.join("server.log");
    let waiting = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("alarm failed; retrying").count() >= times {
            return;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "alarms did not fail {times} times within 10 s; the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sets probe `name` an alarm due now whose handler fails its first 100
/// runs, waits until it failed `failures` times (from then on a retry is
/// always pending, 50 ms, 100 ms, ... after each failure, but for the
/// moments it runs), and deletes it.
async fn delete_a_failing_alarm(
    c: &HttpClient,
    dir: &std::path::Path,
    name: &str,
    failures: usize,
) {
    let path = format!("/probe/{name}/alarm");
    let set = c
        .send(
            "POST",
            &format!("{path}?in_ms=0&fail=100"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(set.status, 200, "{}", set.text());
    alarm_failures(dir, failures).await;
    let deleted = c.send("DELETE", &path, &[], Bytes::new()).await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let state = c.get(&path).await.unwrap().text();
    assert!(state.starts_with("pending=false"), "{state}");
}

/// User and system CPU time of `pid` so far, in clock ticks.
#[cfg(target_os = "linux")]
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command's closing parenthesis: field 3 (state) first, so
    // utime (field 14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The share of one core `pid` used over `over`, in percent.
#[cfg(target_os = "linux")]
async fn cpu_percent(pid: u32, over: Duration) -> f64 {
    let before = cpu_ticks(pid);
    tokio::time::sleep(over).await;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    (cpu_ticks(pid) - before) as f64 / ticks_per_s / over.as_secs_f64() * 100.0
}

/// An alarm whose handler failed once and that was then deleted left its
/// retry behind in the shard's scheduler, which woke at that retry's past
/// time on every timer tick from then on: two requests from outside, and a
/// worker spent 6% to 100% of a core with nothing to do, forever.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_alarm_deleted_before_its_retry_leaves_the_worker_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(dir.path());
    let owner = c.owner_pid("probe/stale-retry").await.unwrap();
    let baseline = cpu_percent(owner, Duration::from_secs(2)).await;

    delete_a_failing_alarm(&c, dir.path(), "stale-retry", 1).await;

    let after = cpu_percent(owner, Duration::from_secs(3)).await;
    assert!(
        after < baseline + 3.0,
        "worker {owner} stays busy with no alarm pending: {after:.1}% of a core \
         ({baseline:.1}% before the alarm was set and deleted)"
    );
}

/// A new alarm set after a failing one was deleted ran first with the
/// deleted alarm's retry count (4 instead of 0), and so would have been
/// dropped after fewer retries than the policy gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_alarm_does_not_inherit_the_retries_of_a_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(dir.path());
    delete_a_failing_alarm(&c, dir.path(), "inherit", 2).await;
    // A new alarm, whose handler succeeds at once.
    let set = c
        .send(
            "POST",
            "/probe/inherit/alarm?in_ms=0&fail=0",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(set.status, 200, "{}", set.text());
    let waiting = std::time::Instant::now();
    loop {
        let state = c.get("/probe/inherit/alarm").await.unwrap().text();
        if state.contains("fired=1") {
            assert!(
                state.ends_with("last_retry=0"),
                "the new alarm's first run was told it is a retry: {state}"
            );
            return;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the new alarm never ran: {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `relay/a/b/...` makes each object fetch the next: one request of 3,000
/// names (17 KB) held 3,000 objects waiting on each other, each hop
/// carrying the whole chain, and took 350 MB in each worker. A chain holds
/// at most `MAX_CALL_DEPTH` objects (16, as Cloudflare's subrequest
/// depth); the call that would make it longer fails at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_calls_holds_at_most_sixteen_objects() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(dir.path());
    let chain = |objects: usize| {
        let mut path = String::from("/probe/deep1/relay");
        for i in 2..=objects {
            path.push_str(&format!("/deep{i}"));
        }
        path
    };
    let whole = c.post(&chain(16)).await.unwrap();
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert!(
        whole.text().starts_with("end at deep16 with "),
        "{}",
        whole.text()
    );

    let deeper = c.post(&chain(3000)).await.unwrap();
    assert_eq!(deeper.status, 200, "{}", deeper.text());
    assert!(
        deeper.text().starts_with("call failed: ")
            && deeper
                .text()
                .contains("call chain too deep: the call would be the 17th object"),
        "{}",
        deeper.text()
    );
}

/// The sum of the workers' `commit_turns`.
#[cfg(target_os = "linux")]
async fn commit_turns(c: &HttpClient) -> u64 {
    let workers: serde_json::Value =
        serde_json::from_slice(&c.get("/_odo/workers").await.unwrap().body).unwrap();
    workers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["commit_turns"].as_u64())
        .sum()
}

/// Alarms falling due together were taken back one per read of the alarm
/// index, each read passing every alarm still running: N alarms cost N
/// reads of N entries, and a burst of 2,000 kept each worker at a full
/// core for seconds after the last alarm had run.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_alarms_leaves_the_workers_idle_once_they_ran() {
    const ALARMS: usize = 2000;
    const SETTERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(dir.path());
    let workers = c.running_worker_pids().await.unwrap();
    // Every alarm at the same instant, far enough ahead to set them all.
    let at = odo_worker::now_ms() + 15_000;
    let mut setters = Vec::new();
    for first in 0..SETTERS {
        let c = c.clone();
        setters.push(tokio::spawn(async move {
            for i in (first..ALARMS).step_by(SETTERS) {
                let in_ms = at.saturating_sub(odo_worker::now_ms());
                let path = format!("/counter/burst{i}/alarm?in_ms={in_ms}");
                let answer = c.send("POST", &path, &[], Bytes::new()).await.unwrap();
                assert_eq!(answer.status, 200, "{}", answer.text());
            }
        }));
    }
    for setter in setters {
        setter.await.unwrap();
    }
    assert!(
        odo_worker::now_ms() < at,
        "setting the alarms took more than 15 s"
    );
    let before = commit_turns(&c).await;
    let waiting = std::time::Instant::now();
    while commit_turns(&c).await < before + ALARMS as u64 {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the alarms did not all run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get("/counter/burst0/alarms").await.unwrap().text(), "1");

    for pid in workers {
        let busy = cpu_percent(pid, Duration::from_secs(2)).await;
        assert!(
            busy < 20.0,
            "worker {pid} is at {busy:.0}% of a core with every alarm run"
        );
    }
}

/// A server whose requests have 10 s, for the crossed calls below.
fn start_with_a_deadline(dir: &std::path::Path) -> (RunningServer, HttpClient) {
    start_with(dir, &["--request-timeout-ms", "10000"])
}

/// Sends `one` and `two` (POSTs whose calls cross) at once: both are
/// answered well within the 10 s deadline, and exactly one call of the two
/// was refused as closing a cycle. Their answers.
async fn crossed(c: &HttpClient, round: usize, one: &str, two: &str) -> [String; 2] {
    let started = std::time::Instant::now();
    let (one, two) = tokio::join!(
        c.send("POST", one, &[], Bytes::new()),
        c.send("POST", two, &[], Bytes::new())
    );
    let took = started.elapsed();
    let (one, two) = (one.unwrap(), two.unwrap());
    let texts = [one.text(), two.text()];
    assert!(
        took < Duration::from_secs(5),
        "round {round}: the crossed calls took {took:?} ({} {:?}, {} {:?})",
        one.status,
        texts[0],
        two.status,
        texts[1]
    );
    assert_eq!(
        (one.status, two.status),
        (200, 200),
        "round {round}: {texts:?}"
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.starts_with("call failed: call cycle"))
            .count(),
        1,
        "round {round}: {texts:?}"
    );
    texts
}

/// Two requests whose calls cross: `xa` calls `xb` while `xb`, in a turn
/// of another request, calls `xa`. Each call queued behind the turn that
/// waited on it, and both requests waited out their whole deadline (504,
/// outcome unknown), the two objects stuck behind each other. One of the
/// two calls now closes a known cycle and is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_whose_calls_cross_do_not_wait_out_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start_with_a_deadline(dir.path());
    // Each first object waits before its call, so that both turns run
    // when the calls are made: at once, or one call queued well before
    // the other object's turn starts to wait.
    for (round, (pause_a, pause_b)) in [(300, 300), (100, 400), (400, 100)].into_iter().enumerate()
    {
        let (a, b) = (format!("xa{round}"), format!("xb{round}"));
        let texts = crossed(
            &c,
            round,
            &format!("/probe/{a}/relay/{b}?pause_ms={pause_a}"),
            &format!("/probe/{b}/relay/{a}?pause_ms={pause_b}"),
        )
        .await;
        // The other call went through.
        assert_eq!(
            texts.iter().filter(|t| t.starts_with("end at ")).count(),
            1,
            "{texts:?}"
        );
    }
}

/// The same across three objects: `a` calls `b`, which calls `c`, while
/// `c`, in a turn of another request, calls `a`. Only `c` can see that
/// cycle (the call queued behind its turn came from `b`, which waits on
/// `a`, which `c` waits on), so `c` refuses it whatever the order of the
/// ids; a tie-break between the two sides left this case to wait out the
/// deadline when `c`'s id was the larger (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossed_calls_through_a_third_object_do_not_wait_out_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start_with_a_deadline(dir.path());
    let id = |name: &str| odo_core::Namespace::new("PROBE").id_from_name(name);
    // Both orders of the two ends' ids.
    for (round, (mut first, mut last)) in [("ya", "yc"), ("za", "zc")].into_iter().enumerate() {
        if (round == 0) == (id(first) > id(last)) {
            std::mem::swap(&mut first, &mut last);
        }
        let middle = format!("{first}-b");
        // `first` calls `middle` at once, which calls `last` while `last`
        // pauses in its own turn, before it calls `first`.
        crossed(
            &c,
            round,
            &format!("/probe/{first}/relay/{middle}/{last}"),
            &format!("/probe/{last}/relay/{first}?pause_ms=300"),
        )
        .await;
    }
}

/// A handler that never returns (`relay/.../hang`, reached through a call
/// from another object): its request is answered at its deadline, and the
/// turn is cut there. Both objects of the chain answer the next
/// request; they stayed stuck for good, every later request waiting out
/// its deadline behind the turn that would never end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_never_ends_is_cut_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start_with(dir.path(), &["--request-timeout-ms", "1000"]);
    let hung = c
        .send("POST", "/probe/ha/relay/hb/hang", &[], Bytes::new())
        .await
        .unwrap();
    // `hb`'s deadline is `ha`'s rounded down, so `ha` may still answer in
    // time that its call failed.
    let text = hung.text();
    assert!(
        hung.status == 504 || (hung.status == 200 && text.starts_with("call failed:")),
        "{} {text}",
        hung.status
    );
    for name in ["ha", "hb"] {
        let next = c
            .send("POST", &format!("/probe/{name}/relay"), &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(
            (
                next.status,
                next.text().starts_with(&format!("end at {name} "))
            ),
            (200, true),
            "{name}: {}",
            next.text()
        );
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains("ran past its deadline"), "{log}");
}
