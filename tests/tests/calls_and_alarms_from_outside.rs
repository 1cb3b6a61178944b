//! What requests from outside can make objects do to a worker through
//! alarms and calls between objects: nothing that outlives the request or
//! the alarm (found by a review that attacked a running server).

use std::time::Duration;

use bytes::Bytes;
use odo_tests::http::HttpClient;
use odo_tests::topology::{RunningServer, ServerSpec};

/// A server with two workers; its log goes to `dir/server.log`.
fn start(dir: &std::path::Path) -> (RunningServer, HttpClient) {
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2);
    spec.stderr = Some(dir.join("server.log"));
    spec.env.push(("RUST_LOG".into(), "warn".into()));
    let server = spec.start(&dir.join("data")).expect("the server starts");
    let client = HttpClient::new(&server.base);
    (server, client)
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

    // Due now, failing its first 100 runs (retried 50 ms later, then 100).
    let set = c
        .send(
            "POST",
            "/probe/stale-retry/alarm?in_ms=0&fail=100",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(set.status, 200, "{}", set.text());
    // Its first run failed: from now on a retry is always pending (50 ms,
    // 100 ms, ... after each failure) but for the moments it runs.
    let log = dir.path().join("server.log");
    let waiting = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("alarm failed; retrying")
    {
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the alarm's first run did not fail within 10 s; the log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deleted = c
        .send("DELETE", "/probe/stale-retry/alarm", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let state = c.get("/probe/stale-retry/alarm").await.unwrap().text();
    assert!(state.starts_with("pending=false"), "{state}");

    let after = cpu_percent(owner, Duration::from_secs(3)).await;
    assert!(
        after < baseline + 3.0,
        "worker {owner} stays busy with no alarm pending: {after:.1}% of a core \
         ({baseline:.1}% before the alarm was set and deleted)"
    );
}
