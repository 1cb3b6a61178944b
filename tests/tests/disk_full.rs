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

/// Large values: 100 KiB, under the value limit (128 KiB).
const LARGE: usize = 100 * 1024;
/// Small values: 3 KiB, so that a write's journal record fits whole in
/// fjall's journal buffer (8 KiB), where a failed write leaves it.
const SMALL: usize = 3 * 1024;

/// Write `i`'s value of `size` bytes: letters from a generator seeded by
/// `i`, so that no compression can shrink what the disk must take.
fn value(i: usize, size: usize) -> String {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..size)
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

/// The backend alone, where the timing is the test's: a batch small enough
/// to sit whole in fjall's journal buffer fails on a full disk, is read as
/// absent, and must still be absent once the disk has room again and the
/// store takes writes (before, closing the failed fjall then wrote the
/// buffered record out whole, and recovery brought the write back).
#[test]
fn a_failed_small_batch_does_not_come_back_once_the_disk_has_room() {
    use std::io::Write as _;
    use std::sync::Arc;

    use odo_storage::{Backend as _, FjallBackend, FjallOptions, ObjectBatch};

    if !small_disk::available_or_skip("disk_full (backend)") {
        return;
    }
    let disk = SmallDisk::mount(8 * 1024 * 1024).expect("a small disk");
    let store = FjallBackend::open(disk.path().join("store"), FjallOptions::default()).unwrap();
    let id = odo_core::Namespace::new("KV").id_from_name("x");
    let batch = |key: &str, i: usize| {
        let mut batch = ObjectBatch::default();
        batch
            .entries
            .insert(key.into(), Some(bytes::Bytes::from(value(i, 7000))));
        vec![(id, Arc::new(batch))]
    };
    store.commit(&batch("acknowledged", 1)).unwrap();
    // Every byte taken, to the last block.
    disk.fill_leaving(0).unwrap();
    let mut last = std::fs::OpenOptions::new()
        .append(true)
        .open(disk.path().join("filler"))
        .unwrap();
    while last.write_all(&[0; 512]).is_ok() {}
    drop(last);
    assert!(
        store.commit(&batch("failed", 2)).is_err(),
        "a commit on a full disk succeeded"
    );
    let while_full = store.get(&id, "failed").unwrap();
    disk.free().unwrap();
    // The store takes writes again (a probe first, paced).
    let freed = Instant::now();
    while store.commit(&batch("later", 3)).is_err() {
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "no write taken after space was freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        store.get(&id, "failed").unwrap(),
        while_full,
        "the failed batch read one way while the disk was full and another once it had room"
    );
    assert!(store.get(&id, "acknowledged").unwrap().is_some());
    assert!(store.get(&id, "later").unwrap().is_some());
    store.close().unwrap();
    drop(store);
    // And after a restart.
    let store = FjallBackend::open(disk.path().join("store"), FjallOptions::default()).unwrap();
    assert_eq!(store.get(&id, "failed").unwrap(), while_full);
    assert!(store.get(&id, "acknowledged").unwrap().is_some());
    store.close().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_the_server_takes_them_again_once_space_is_freed() {
    fill_and_free("fjall", LARGE).await;
}

/// With small writes, a refused one may have been left whole in fjall's
/// journal buffer when the disk filled: it must not come back once there
/// is room again, after reads said it was not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_write_refused_on_a_full_disk_stays_as_it_was_read() {
    fill_and_free("fjall", SMALL).await;
}

/// The same with the `Kv` class SQLite-backed: each object's database is a
/// file of its own beside the shard's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_sql_writes_and_the_server_takes_them_again_once_space_is_freed() {
    fill_and_free(odo_tests::sqlite_cell::NAME, LARGE).await;
}

async fn fill_and_free(storage: &str, size: usize) {
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
    let mut refused = Vec::new();
    let mut i = 0;
    let most = 4 * 1024 * 1024 / size;
    while refused.len() < 20 {
        assert!(
            i < most,
            "{most} writes of {size} bytes and the disk never filled"
        );
        let answer = client
            .send("PUT", &path(i), &[], value(i, size))
            .await
            .unwrap();
        match answer.status {
            204 => {
                acknowledged.insert(i, value(i, size));
            }
            500 | 502 | 503 => refused.push(i),
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
    // A refused write's outcome is unknown to its client, who reads to
    // learn it: what that read says must hold.
    let mut read_while_full = BTreeMap::new();
    for k in &refused {
        let answer = client.get(&path(*k)).await.unwrap();
        read_while_full.insert(*k, (answer.status, answer.body));
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
            let answer = client
                .send("PUT", &path(i), &[], value(i, size))
                .await
                .unwrap();
            i += 1;
            if answer.status == 204 {
                acknowledged.insert(i - 1, value(i - 1, size));
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
        let answer = client
            .send("PUT", &path(i), &[], value(i, size))
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            204,
            "write {i} after every object took one: {}",
            answer.text()
        );
        acknowledged.insert(i, value(i, size));
        i += 1;
    }
    for (k, (status, body)) in &read_while_full {
        let answer = client.get(&path(*k)).await.unwrap();
        assert!(
            answer.status == *status && answer.body == *body,
            "refused write {k} read {status} ({} bytes) while the disk was full, {} ({} bytes) once it had room",
            body.len(),
            answer.status,
            answer.body.len()
        );
    }
    assert!(
        acknowledged.keys().any(|&k| k < full_at),
        "no write was acknowledged before the disk filled"
    );

    // Every acknowledged write survives a SIGKILL of every process.
    let workers = client.running_worker_pids().await.unwrap();
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
