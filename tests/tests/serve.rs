//! Black-box tests of the server: spawn the real binary (the demo app plus
//! a probe class), talk real HTTP, send real signals.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use odo_tests::http::HttpClient;
use odo_tests::topology::{RunningServer, ServerSpec, Signal, process_alive, signal, stop_process};

fn spec(workers: u32) -> ServerSpec {
    ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), workers)
}

fn start(spec: &ServerSpec, dir: &std::path::Path) -> (RunningServer, HttpClient) {
    let server = spec.start(dir).expect("the server starts");
    let client = HttpClient::new(&server.base);
    (server, client)
}

#[derive(Debug, serde::Deserialize)]
struct Worker {
    pid: Option<u32>,
    shards: Vec<u32>,
    restarts: u32,
}

async fn workers(client: &HttpClient) -> Vec<Worker> {
    serde_json::from_slice(&client.get("/_odo/workers").await.unwrap().body).unwrap()
}

async fn owner_pid(client: &HttpClient, class: &str, name: &str) -> u32 {
    let answer = client
        .get(&format!("/_odo/placement/{class}/{name}"))
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    value["pid"].as_u64().expect("an assigned shard") as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_http_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&spec(2), dir.path());
    let check =
        async |method: &str, path: &str, body: &'static str, status: u16, expected: &str| {
            let answer = c
                .send(method, path, &[], Bytes::from_static(body.as_bytes()))
                .await
                .unwrap();
            assert_eq!(
                (answer.status, answer.text().as_str()),
                (status, expected),
                "{method} {path}"
            );
        };
    check("GET", "/hello", "", 200, "hello").await;
    check("GET", "/counter/c1", "", 200, "0").await;
    check("POST", "/counter/c1/increment", "", 200, "1").await;
    check("POST", "/counter/c1/increment", "", 200, "2").await;
    check("GET", "/counter/c1", "", 200, "2").await;
    check("GET", "/counter/c1/alarms", "", 200, "0").await;
    check("POST", "/counter/c1/alarm?in_ms=50", "", 200, "ok").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("/counter/c1/alarms").await.unwrap().text() != "1" {
        assert!(Instant::now() < deadline, "the alarm never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let whoami: serde_json::Value =
        serde_json::from_slice(&c.get("/counter/c1/whoami").await.unwrap().body).unwrap();
    assert_eq!(
        whoami["id"],
        odo_core::Namespace::new("COUNTER")
            .id_from_name("c1")
            .to_string()
    );
    assert_eq!(
        whoami["pid"].as_u64().unwrap() as u32,
        owner_pid(&c, "counter", "c1").await
    );
    assert!(whoami["activation"].is_string());

    check("PUT", "/kv/k/a", "1", 204, "").await;
    check("PUT", "/kv/k/b", "2", 204, "").await;
    check("PUT", "/kv/k/c", "3", 204, "").await;
    check("GET", "/kv/k/b", "", 200, "2").await;
    check("GET", "/kv/k/zz", "", 404, "no such key\n").await;
    check("DELETE", "/kv/k/c", "", 200, "true").await;
    check("DELETE", "/kv/k/c", "", 200, "false").await;
    check("GET", "/kv/k", "", 200, r#"[["a","1"],["b","2"]]"#).await;
    check(
        "GET",
        "/kv/k?reverse=true&limit=1",
        "",
        200,
        r#"[["b","2"]]"#,
    )
    .await;
    check("GET", "/kv/k?start_after=a", "", 200, r#"[["b","2"]]"#).await;
    let bad = c.get("/kv/k?start=a&start_after=a").await.unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(c.get("/kv/k?limit=0").await.unwrap().status, 400);

    let workers = workers(&c).await;
    assert_eq!(workers.len(), 2);
    assert!(
        workers
            .iter()
            .all(|w| w.pid.is_some() && !w.shards.is_empty())
    );
    let metrics = c.get("/_odo/metrics").await.unwrap().text();
    for metric in [
        "odo_http_requests_total{class=\"COUNTER\",status=\"200\"}",
        "odo_http_request_duration_seconds_bucket",
        "odo_live_objects",
        "odo_worker_restarts_total",
        "odo_commit_batches_total",
    ] {
        assert!(
            metrics.contains(metric),
            "metrics lack {metric}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_increments_return_each_value_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&spec(2), dir.path());
    let calls = (0..200).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.post("/counter/hot/increment").await.unwrap() })
    });
    let mut values = Vec::new();
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, 200);
        values.push(answer.text().parse::<u64>().unwrap());
    }
    values.sort_unstable();
    assert_eq!(values, (1..=200).collect::<Vec<_>>());
    assert_eq!(c.get("/counter/hot").await.unwrap().text(), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_counters_spread_over_four_workers_each_on_one_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&spec(4), dir.path());
    let worker_pids: HashSet<u32> = workers(&c).await.iter().filter_map(|w| w.pid).collect();
    assert_eq!(worker_pids.len(), 4);
    let mut first: HashMap<u32, u32> = HashMap::new();
    for round in 0..2 {
        let answers = futures_util::future::join_all((0..1000u32).map(|i| {
            let c = c.clone();
            async move {
                let answer = c.get(&format!("/counter/n{i}/whoami")).await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
                (i, v["pid"].as_u64().unwrap() as u32)
            }
        }))
        .await;
        for (i, pid) in answers {
            assert!(worker_pids.contains(&pid));
            if round == 0 {
                first.insert(i, pid);
            } else {
                assert_eq!(first[&i], pid, "counter n{i} moved between pids");
            }
        }
    }
    let used: HashSet<u32> = first.values().copied().collect();
    assert_eq!(used, worker_pids, "every worker serves some counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_owning_worker_loses_no_acknowledged_increment() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&spec(2), dir.path());
    assert_eq!(
        c.post("/counter/victim/increment").await.unwrap().status,
        200
    );
    let victim = owner_pid(&c, "counter", "victim").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut unavailable) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let answer = c.post("/counter/victim/increment").await.unwrap();
                    match answer.status {
                        200 => ok += 1,
                        // Never delivered (503) or lost with the worker
                        // (502, outcome unknown): each says which.
                        503 | 502 => {
                            let retryable = answer.status == 503;
                            assert_eq!(
                                answer.header("x-odo-retryable"),
                                [if retryable { "true" } else { "false" }]
                            );
                            unavailable += 1;
                        }
                        other => panic!("unexpected status {other}: {}", answer.text()),
                    }
                }
                (ok, unavailable)
            })
        })
        .collect();
    // Let load build, then kill the owner.
    while c
        .get("/counter/victim")
        .await
        .unwrap()
        .text()
        .parse::<u64>()
        .unwrap()
        < 100
    {
        tokio::task::yield_now().await;
    }
    signal(victim, Signal::Kill).unwrap();
    let killed_at = Instant::now();
    // Service is back when a read succeeds on a new pid.
    loop {
        let answer = c.get("/counter/victim").await.unwrap();
        if answer.status == 200 && owner_pid(&c, "counter", "victim").await != victim {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the counter never came back"
        );
    }
    let recovery = killed_at.elapsed();
    // Keep incrementing a little on the new worker, then stop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut acknowledged, mut failed) = (1u64, 0u64);
    for client in clients {
        let (ok, unavailable) = client.await.unwrap();
        acknowledged += ok;
        failed += unavailable;
    }
    let final_value: u64 = c
        .get("/counter/victim")
        .await
        .unwrap()
        .text()
        .parse()
        .unwrap();
    eprintln!(
        "acknowledged={acknowledged} failed={failed} final={final_value} recovery={recovery:?}"
    );
    assert!(
        final_value >= acknowledged,
        "lost {} acknowledged increments",
        acknowledged - final_value
    );
    assert!(
        final_value <= acknowledged + failed,
        "more increments than requests"
    );
    assert!(
        recovery < Duration::from_secs(2),
        "recovery took {recovery:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_killed_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&spec(2), dir.path());
    assert_eq!(
        c.post("/counter/frozen/increment").await.unwrap().text(),
        "1"
    );
    let frozen = owner_pid(&c, "counter", "frozen").await;
    let seen_stopped = stop_process(frozen).await.unwrap();
    let stopped_at = Instant::now();
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let answer = c.post("/counter/frozen/increment").await.unwrap();
        if answer.status == 200 {
            let value: u64 = answer.text().parse().unwrap();
            if seen_stopped {
                // The frozen worker handled none of the refused attempts.
                assert_eq!(value, 2, "after {attempts} attempts");
            } else {
                // Where the stop cannot be watched it may land late, and the
                // worker may commit an increment whose answer never leaves
                // it (the router says 502, outcome unknown). None is lost,
                // none counts twice.
                assert!(
                    (2..=1 + attempts).contains(&value),
                    "{value} after {attempts} attempts"
                );
            }
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(15),
            "never replaced"
        );
    }
    assert_ne!(owner_pid(&c, "counter", "frozen").await, frozen);
    assert!(!process_alive(frozen), "the stopped worker must be dead");
    assert!(workers(&c).await.iter().any(|w| w.restarts == 1));
}

fn worker_pids_of(server_pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(server_pid) {
            pids.push(pid);
        }
    }
    pids
}

/// SIGTERM while the server starts (its registry up, its workers not yet):
/// the signal's default action killed it (exit by signal 15), since its
/// handler was only installed once the server listened. Now it finishes
/// starting and stops cleanly, its workers with it.
#[cfg(target_os = "linux")]
#[test]
fn sigterm_during_the_start_stops_the_server_cleanly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_odo-test-server"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let (starting_tx, starting) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("registry starting") {
                let _ = starting_tx.send(());
            }
        }
    });
    let guard = Duration::from_secs(30);
    starting
        .recv_timeout(guard)
        .expect("the registry's first line");
    signal(pid, Signal::Term).unwrap();
    let deadline = Instant::now() + guard;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not stop within {guard:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        worker_pids_of(pid).is_empty(),
        "a worker outlived the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_sigkill_takes_the_workers_along() {
    let dir = tempfile::tempdir().unwrap();
    let (server, c) = start(&spec(2), dir.path());
    c.post("/counter/t/increment").await.unwrap();
    let pids = worker_pids_of(server.pid);
    assert_eq!(pids.len(), 2, "two workers");
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        pids.iter().all(|&p| !process_alive(p)),
        "a worker outlived a SIGTERM'd server"
    );

    let (server, c) = start(&spec(2), dir.path());
    assert_eq!(c.get("/counter/t").await.unwrap().text(), "1");
    let pids = worker_pids_of(server.pid);
    assert_eq!(pids.len(), 2);
    tokio::task::spawn_blocking(move || server.kill())
        .await
        .unwrap()
        .unwrap();
    let killed = Instant::now();
    while pids.iter().any(|&p| process_alive(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "workers outlived their registry by 2 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_keeps_state_and_fires_pending_alarms() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (server, c) = start(&spec(2), dir.path());
        for _ in 0..3 {
            c.post("/counter/keep/increment").await.unwrap();
        }
        c.send("PUT", "/kv/keep/x", &[], "y").await.unwrap();
        assert_eq!(
            c.post("/counter/keep/alarm?in_ms=1500")
                .await
                .unwrap()
                .status,
            200
        );
        let status = tokio::task::spawn_blocking(move || server.terminate())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
    let (_server, c) = start(&spec(2), dir.path());
    let started = Instant::now();
    // No request touches the counter: the alarm fires on its own.
    while started.elapsed() < Duration::from_secs(20) {
        let metrics = c.get("/_odo/metrics").await.unwrap().text();
        if metrics.contains("odo_commit_turns_total")
            && c.get("/counter/keep/alarms").await.unwrap().text() == "1"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.get("/counter/keep/alarms").await.unwrap().text(), "1");
    assert_eq!(c.get("/counter/keep").await.unwrap().text(), "3");
    assert_eq!(c.get("/kv/keep/x").await.unwrap().text(), "y");
}

/// A directory first served by 2 workers, then by 4: its shards split at
/// startup, so every worker holds one, and nothing written before is lost
/// (values, keys, a pending alarm).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_workers_split_the_shards_and_keep_every_object() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (server, c) = start(&spec(2), dir.path());
        let writes = (0..100u32).map(|i| {
            let c = c.clone();
            async move {
                for _ in 0..=(i % 3) {
                    c.post(&format!("/counter/g{i}/increment")).await.unwrap();
                }
                c.send("PUT", &format!("/kv/g{i}/k"), &[], format!("v{i}"))
                    .await
                    .unwrap();
            }
        });
        futures_util::future::join_all(writes).await;
        let alarm = c.post("/counter/g7/alarm?in_ms=3000").await.unwrap();
        assert_eq!(alarm.status, 200);
        let shards: Vec<u32> = workers(&c)
            .await
            .iter()
            .map(|w| w.shards.len() as u32)
            .collect();
        assert_eq!(shards, vec![1, 1]);
        let status = tokio::task::spawn_blocking(move || server.terminate())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
    let (_server, c) = start(&spec(4), dir.path());
    let mut held: Vec<Vec<u32>> = workers(&c).await.into_iter().map(|w| w.shards).collect();
    held.sort();
    assert_eq!(held, vec![vec![0], vec![1], vec![2], vec![3]]);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("odo-cluster.json")).unwrap())
            .unwrap();
    assert_eq!(record["shard_count"], 4, "{record}");
    let mut pids = HashSet::new();
    for i in 0..100u32 {
        let count = c.get(&format!("/counter/g{i}")).await.unwrap().text();
        assert_eq!(count, (i % 3 + 1).to_string(), "counter g{i}");
        let value = c.get(&format!("/kv/g{i}/k")).await.unwrap().text();
        assert_eq!(value, format!("v{i}"), "kv g{i}");
        pids.insert(owner_pid(&c, "counter", &format!("g{i}")).await);
    }
    assert_eq!(
        pids.len(),
        4,
        "the objects are spread over all four workers"
    );
    // The alarm set before the split fires after it, once.
    let started = Instant::now();
    while c.get("/counter/g7/alarms").await.unwrap().text() != "1"
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.get("/counter/g7/alarms").await.unwrap().text(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(2);
    spec.extra_args = vec!["--request-timeout-ms".into(), "500".into()];
    spec.env = vec![("ODO_TEST_QUEUE_DEPTH".into(), "1".into())];
    let (server, c) = start(&spec, dir.path());
    assert_eq!(c.get("/nope/x").await.unwrap().status, 404);
    assert_eq!(c.get("/counter/id:1234").await.unwrap().status, 400);
    let foreign = odo_core::Namespace::new("KV").id_from_name("x");
    assert_eq!(
        c.get(&format!("/counter/id:{foreign}"))
            .await
            .unwrap()
            .status,
        400
    );
    let own = odo_core::Namespace::new("COUNTER").id_from_name("x");
    assert_eq!(
        c.get(&format!("/counter/id:{own}")).await.unwrap().status,
        200
    );
    assert_eq!(
        c.get(&format!("/counter/{}", "n".repeat(300)))
            .await
            .unwrap()
            .status,
        400
    );
    let big = Bytes::from(vec![7u8; 1024 * 1024 + 1]);
    assert_eq!(
        c.send("PUT", "/kv/b/k", &[], big).await.unwrap().status,
        413
    );
    // A value over the storage limit (but under the body limit).
    assert_eq!(
        c.send("PUT", "/kv/b/k", &[], vec![1u8; 200 * 1024])
            .await
            .unwrap()
            .status,
        413
    );
    // Deadline: a turn slower than the request deadline.
    assert_eq!(
        c.post("/probe/slow/slow?ms=1500").await.unwrap().status,
        504
    );
    // Overload: one running turn and one queued; the rest are refused.
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.post("/probe/busy/slow?ms=300").await.unwrap() })
        })
        .collect();
    let mut overloaded = 0;
    for call in slow {
        let answer = call.await.unwrap();
        if answer.status == 503 {
            assert_eq!(answer.header("retry-after"), ["1"]);
            overloaded += 1;
        }
    }
    assert!(overloaded > 0, "a full queue must answer 503");
    // Malformed HTTP closes that connection only.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut raw = std::net::TcpStream::connect(&addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(c.get("/hello").await.unwrap().text(), "hello");
}

/// Transparent huge pages gave each process's allocator 2 MiB pages where
/// it had touched a few KiB: a fresh worker was resident at 21.1 MB with
/// THP and 11.5 MB without. Every process of a server runs with them off
/// (`THP_enabled` in `/proc/PID/status`, Linux 5.0 and later).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_of_a_server_takes_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (server, c) = start(&spec(2), dir.path());
    let mut pids = c.running_worker_pids().await.unwrap();
    assert_eq!(pids.len(), 2, "two running workers");
    pids.push(server.pid);
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else {
            eprintln!("skipped: this kernel has no THP_enabled in /proc/PID/status (before 5.0)");
            return;
        };
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("0"),
            "process {pid} may take transparent huge pages ({line})"
        );
    }
}
