//! A worker that is truly stuck is killed and replaced; a worker that is
//! busy but making progress (here with listings of a large object) is not.

use std::time::{Duration, Instant};

use bytes::Bytes;
use odo_tests::http::HttpClient;
use odo_tests::topology::{RunningServer, ServerSpec};

fn start(extra: &[&str], dir: &std::path::Path) -> (RunningServer, HttpClient) {
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2);
    spec.extra_args = extra.iter().map(|s| s.to_string()).collect();
    let server = spec.start(dir).expect("the server starts");
    let client = HttpClient::new(&server.base);
    (server, client)
}

async fn owner_pid(client: &HttpClient, path: &str) -> u32 {
    let answer = client
        .get(&format!("/_odo/placement/{path}"))
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    value["pid"].as_u64().expect("an assigned shard") as u32
}

async fn restarts(client: &HttpClient) -> u64 {
    let answer = client.get("/_odo/workers").await.unwrap();
    let workers: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_in_object_code_gets_its_worker_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&["--stall-limit-ms", "1000"], dir.path());
    assert_eq!(c.post("/probe/spinner/incr").await.unwrap().status, 200);
    let stuck = owner_pid(&c, "probe/spinner").await;
    // The spinning turn never returns: its thread is lost, the worker's
    // other thread still answers heartbeats, and only the stall watch can
    // tell. Its caller learns the outcome is unknown.
    let spin = {
        let c = c.clone();
        tokio::spawn(async move { c.post("/probe/spinner/spin").await })
    };
    let answer = tokio::time::timeout(Duration::from_secs(25), spin)
        .await
        .expect("the spinning call ends")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.header("x-odo-retryable"), ["false"]);
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = c.get("/probe/spinner/n").await.unwrap();
        if answer.status == 200 {
            assert_eq!(answer.text(), "1");
            break;
        }
        assert!(Instant::now() < give_up, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(owner_pid(&c, "probe/spinner").await, stuck);
    assert_eq!(restarts(&c).await, 1);
}

/// The worker's peak resident memory, in KiB (Linux).
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_listings_under_load_are_refused_or_paged_and_kill_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, c) = start(&[], dir.path());
    // 40 MiB in one object: 320 values of 128 KiB.
    let value = Bytes::from(vec![b'x'; 128 * 1024]);
    for i in 0..320 {
        let answer = c
            .send("PUT", &format!("/kv/big/k{i:04}"), &[], value.clone())
            .await
            .unwrap();
        assert_eq!(answer.status, 204);
    }
    let worker = owner_pid(&c, "kv/big").await;
    let before = peak_kib(worker);
    // Four clients list the whole object (refused: over 8 MiB) and a page
    // of it, again and again, while a fifth increments a counter.
    let listers: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..10 {
                    let all = c.get("/kv/big").await.unwrap();
                    assert_eq!(all.status, 413, "{}", all.text());
                    assert!(all.text().contains("start_after"), "{}", all.text());
                    refused += 1;
                    let page = c.get("/kv/big?limit=20&start_after=k0100").await.unwrap();
                    assert_eq!(page.status, 200);
                    let rows: Vec<(String, String)> = serde_json::from_slice(&page.body).unwrap();
                    assert_eq!(rows.len(), 20);
                    assert_eq!(rows[0].0, "k0101");
                }
                refused
            })
        })
        .collect();
    let mut increments = 0;
    for listing in listers {
        assert_eq!(listing.await.unwrap(), 10);
        let answer = c.post("/counter/beside/increment").await.unwrap();
        assert_eq!(answer.status, 200);
        increments += 1;
    }
    assert_eq!(increments, 4);
    // Nobody was killed for missing heartbeats.
    assert_eq!(restarts(&c).await, 0);
    assert_eq!(owner_pid(&c, "kv/big").await, worker);
    // Each listing held at most its bound (8 MiB) plus a page, not 40 MiB.
    if let (Some(before), Some(after)) = (before, peak_kib(worker)) {
        println!("worker peak memory: {before} KiB before, {after} KiB after");
        assert!(
            after < before + 128 * 1024,
            "peak grew from {before} to {after} KiB"
        );
    }
}

/// Requests whose clients left while they waited in their object's queue
/// (behind a slow turn) do not run: nothing of them happens, and the
/// clients still waiting behind them are not held up by them. A client
/// that reset its requests once queued a thousand turns from one
/// connection; another client of the same object then waited 29.9 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_clients_left_while_queued_do_not_run() {
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(&[], dir.path());
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/probe/left/slow?ms=2000").await })
    };
    // The slow turn starts; then twenty more requests queue behind it and
    // their clients leave well before it ends (the margins are the slow
    // turn's two seconds, not a measurement).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut left = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(
                b"POST /probe/left/slow?ms=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        left.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(left);
    let first = slow.await.unwrap().unwrap();
    assert_eq!((first.status, first.text()), (200, "1".to_owned()));
    let after = client.get("/probe/left/slow").await.unwrap();
    assert_eq!(after.text(), "1", "turns ran for clients that had left");
    drop(server);
}
