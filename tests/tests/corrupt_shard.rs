//! A shard whose store cannot open (corrupt, unreadable) is the only thing
//! out of service: the workers that cannot open it are not killed for it,
//! so every other shard goes on being served, and the shard is tried again
//! after a pause, and served once its store is mended. Killed for it, as
//! for a lost answer, every worker took the shard in turn and died of it: 4
//! workers crash looping within 8 s, 28 of 30 counters on healthy shards
//! unavailable.
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use odo_tests::http::HttpClient;
use odo_tests::topology::{ServerSpec, Signal, signal};

/// A bound on every wait: a failure guard, not a timing.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Debug, serde::Deserialize)]
struct Placement {
    shard: Option<u32>,
    pid: Option<u32>,
}

async fn placement(client: &HttpClient, name: &str) -> Placement {
    let answer = client
        .get(&format!("/_odo/placement/probe/{name}"))
        .await
        .unwrap();
    serde_json::from_slice(&answer.body).unwrap()
}

/// Names of probe objects on shards 0 and 1, in that order.
async fn one_name_per_shard(client: &HttpClient) -> (String, String) {
    let (mut zero, mut one) = (None, None);
    for i in 0.. {
        let name = format!("c{i}");
        match placement(client, &name).await.shard {
            Some(0) if zero.is_none() => zero = Some(name),
            Some(1) if one.is_none() => one = Some(name),
            _ => {}
        }
        if let (Some(zero), Some(one)) = (&zero, &one) {
            return (zero.clone(), one.clone());
        }
    }
    unreachable!()
}

async fn incr(client: &HttpClient, name: &str) -> (u16, String) {
    let answer = client.post(&format!("/probe/{name}/incr")).await.unwrap();
    (answer.status, answer.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_cannot_open_takes_no_other_shard_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2);
    // A request for an object whose shard no one holds waits for it up to
    // its deadline: short here, so that each of those answers soon.
    spec.extra_args = vec!["--request-timeout-ms".into(), "1000".into()];
    let server = spec.start(dir.path()).expect("the server starts");
    let client = HttpClient::new(&server.base);
    let (broken, healthy) = one_name_per_shard(&client).await;
    assert_eq!(incr(&client, &broken).await, (200, "1".into()));
    assert_eq!(incr(&client, &healthy).await, (200, "1".into()));
    let holder = placement(&client, &broken).await.pid.expect("held");
    let other = placement(&client, &healthy).await.pid.expect("held");
    assert_ne!(holder, other, "two workers, one shard each");

    // Shard 0's store can no longer be opened (its holder keeps what it
    // has open); then its holder dies, and the shard must move.
    let store = dir.path().join("shards/0/fjall");
    let aside = dir.path().join("shard-0-aside");
    std::fs::rename(&store, &aside).unwrap();
    std::fs::write(&store, b"not a store").unwrap();
    signal(holder, Signal::Kill).unwrap();

    // The other worker is asked to take shard 0, cannot, and is not killed
    // for it: its own shard is served throughout, and shard 0's objects are
    // refused as unavailable (safe to send again).
    let began = Instant::now();
    let mut refused = 0;
    let mut expected = 1;
    while refused < 3 {
        assert!(began.elapsed() < GUARD, "shard 0 was never refused");
        expected += 1;
        assert_eq!(
            incr(&client, &healthy).await,
            (200, expected.to_string()),
            "the healthy shard's counter"
        );
        let (status, _) = incr(&client, &broken).await;
        assert_ne!(status, 200, "a shard whose store is gone was served");
        refused += 1;
    }
    assert_eq!(
        placement(&client, &healthy).await.pid,
        Some(other),
        "the worker that could not open shard 0 was killed"
    );

    // Mended: the shard is tried again and served, with its data.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&aside, &store).unwrap();
    let began = Instant::now();
    loop {
        let (status, text) = incr(&client, &broken).await;
        if status == 200 {
            assert_eq!(text, "2", "shard 0's counter after its store came back");
            break;
        }
        assert!(
            began.elapsed() < GUARD,
            "shard 0 not served again after its store came back: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = server.terminate().unwrap();
    assert!(status.success(), "{status}");
}
