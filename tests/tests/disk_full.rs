//! A full disk, as an unlucky operator meets it: the data directory's
//! filesystem fills up under writes. Writes that cannot be made durable
//! are answered as failed (never acknowledged) while reads go on, and once
//! the operator frees space the same server takes writes again, without a
//! restart.
//! Nothing acknowledged is lost, also across a SIGKILL of every process
//! afterwards.
//!
//! The disk is a small tmpfs the test mounts (root needed: see
//! `odo_tests::small_disk`).

#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use odo_tests::http::HttpClient;
use odo_tests::small_disk::{self, SmallDisk};
use odo_tests::topology::{ServerSpec, process_alive};

/// What each write puts: 100 KiB, under the value limit (128 KiB).
const VALUE_BYTES: usize = 100 * 1024;

/// Write `i`'s value: letters from a generator seeded by `i`, so that no
/// compression can shrink what the disk must take.
fn value(i: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..VALUE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect()
}

/// The objects written to, in turn (spread over the server's shards).
const OBJECTS: usize = 8;

fn path(i: usize) -> String {
    format!("/kv/disk-{}/key-{i}", i % OBJECTS)
}

async fn worker_pids(client: &HttpClient) -> Vec<u32> {
    let body = client.get("/_odo/workers").await.unwrap().body;
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    workers
        .iter()
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_the_server_takes_them_again_once_space_is_freed() {
    fill_and_free("fjall").await;
}

/// The same with the `Kv` class SQLite-backed: each object's database is a
/// file of its own beside the shard's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sql_writes_and_the_server_takes_them_again_once_space_is_freed() {
    fill_and_free(odo_tests::sqlite_cell::NAME).await;
}

async fn fill_and_free(storage: &str) {
    if !small_disk::available_or_skip(&format!("disk_full ({storage})")) {
        return;
    }
    let disk = SmallDisk::mount(64 * 1024 * 1024).expect("a small disk");
    let data = disk.path().join("data");
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 2);
    spec.storage = storage.into();
    let server = spec.start(&data).expect("the server starts");
    let client = HttpClient::new(&server.base);

    // The disk fills: the filler leaves room for a few values only.
    disk.fill_leaving(1024 * 1024).unwrap();
    let mut acknowledged = BTreeMap::new();
    let mut refused = 0;
    let mut i = 0;
    while refused < 20 {
        assert!(i < 400, "400 writes of 100 KiB and the disk never filled");
        let answer = client.send("PUT", &path(i), &[], value(i)).await.unwrap();
        match answer.status {
            204 => {
                acknowledged.insert(i, value(i));
            }
            500 | 502 | 503 => refused += 1,
            other => panic!("write {i} on a full disk: {other} {}", answer.text()),
        }
        i += 1;
    }
    let full_at = i;
    // Reads go on while the disk is full.
    for (k, v) in &acknowledged {
        let answer = client.get(&path(*k)).await.unwrap();
        assert_eq!(
            answer.status,
            200,
            "read {k} on a full disk: {}",
            answer.text()
        );
        assert!(
            answer.body == v.as_bytes(),
            "read {k} on a full disk changed"
        );
    }

    // The operator frees space. The same server takes writes again, on
    // every shard: each store reopens after its failed writes at its own
    // pace (at most 5 s apart), so a write may still be refused until then.
    disk.free().unwrap();
    let freed = Instant::now();
    for object in 0..OBJECTS {
        loop {
            // The next write to `object`.
            i += (object + OBJECTS - i % OBJECTS) % OBJECTS;
            let answer = client.send("PUT", &path(i), &[], value(i)).await.unwrap();
            i += 1;
            if answer.status == 204 {
                acknowledged.insert(i - 1, value(i - 1));
                break;
            }
            assert!(
                freed.elapsed() < Duration::from_secs(30),
                "30 s after space was freed, writes to object {object} still fail: {} {}",
                answer.status,
                answer.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Then every write succeeds.
    for _ in 0..16 {
        let answer = client.send("PUT", &path(i), &[], value(i)).await.unwrap();
        assert_eq!(
            answer.status,
            204,
            "write {i} after every object took one: {}",
            answer.text()
        );
        acknowledged.insert(i, value(i));
        i += 1;
    }
    assert!(
        acknowledged.keys().any(|&k| k < full_at),
        "no write was acknowledged before the disk filled"
    );

    // Every acknowledged write survives a SIGKILL of every process.
    let workers = worker_pids(&client).await;
    tokio::task::spawn_blocking(move || server.kill())
        .await
        .unwrap()
        .unwrap();
    let killed = Instant::now();
    while workers.iter().any(|&p| process_alive(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "workers outlived their registry by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let server = spec.start(&data).expect("the server starts again");
    let client = HttpClient::new(&server.base);
    for (k, v) in &acknowledged {
        let answer = client.get(&path(*k)).await.unwrap();
        assert_eq!(answer.status, 200, "acknowledged write {k} lost");
        assert!(
            answer.body == v.as_bytes(),
            "acknowledged write {k} changed"
        );
    }
    drop(server);
    drop(disk);
}
