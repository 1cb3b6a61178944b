//! The `storage` benchmark: durable read-modify-write increments through
//! odo-storage's group commit, against raw fjall in one run.
//!
//! For 1, 64 and 1,024 objects committing concurrently, each object loops:
//! read its counter, write counter + 1, `commit_turn`, await durability.
//! Baselines, with the same fsync level (`SyncData`) and the same key
//! layout:
//!
//! - raw fjall **batched**: one thread reads and increments the same keys
//!   and commits them in batches of odo's measured average batch size;
//! - raw fjall **per write**: the same with one fsync per increment.
//!
//! It prints ops/s, commit latency p50/p99 (odo: from `commit_turn` until
//! durable; raw: one batch commit), the average batch and odo's ratio to
//! each baseline. Targets at 1,024 objects: at least 0.8x batched and 20x
//! per write. Last, the bytes on disk per stored key (16 B key, 100 B value).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use odo_core::{Namespace, ObjectId};
use odo_storage::{FjallBackend, FjallOptions, StorageError, Store, StoreOptions};

use crate::stats::{Latencies, ratio, us};

/// How long each measurement runs, after its warm-up.
const MEASURE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_millis(300);
const CONCURRENCY: [usize; 3] = [1, 64, 1024];
const COUNTER: &str = "counter";

/// One measurement.
struct Figures {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
    avg_batch: f64,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;
    println!(
        "{:<8} {:<18} {:>12} {:>10} {:>10} {:>8} {:>10}",
        "objects", "measurement", "ops/s", "p50 us", "p99 us", "batch", "odo/x"
    );
    let per_write = raw(1024, 1)?;
    for objects in CONCURRENCY {
        let odo = runtime.block_on(odo_increments(objects))?;
        let batch = (odo.avg_batch.round() as usize).clamp(1, objects);
        let batched = raw(objects, batch)?;
        row(objects, "odo group commit", &odo, "");
        row(
            objects,
            "raw fjall batched",
            &batched,
            &ratio(odo.ops_per_sec, batched.ops_per_sec),
        );
        row(
            objects,
            "raw fjall per write",
            &per_write,
            &ratio(odo.ops_per_sec, per_write.ops_per_sec),
        );
    }
    println!("targets at 1024 objects: odo/batched >= 0.80x, odo/per-write >= 20.00x");
    runtime.block_on(disk_usage())
}

fn row(objects: usize, what: &str, f: &Figures, vs: &str) {
    println!(
        "{:<8} {:<18} {:>12.0} {:>10} {:>10} {:>8.1} {:>10}",
        objects,
        what,
        f.ops_per_sec,
        us(f.p50),
        us(f.p99),
        f.avg_batch,
        vs
    );
}

fn object_id(n: usize) -> ObjectId {
    Namespace::new("BENCH").id_from_name(&n.to_string())
}

fn decode(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// `objects` tasks, each incrementing its own counter through odo-storage.
async fn odo_increments(objects: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let backend = FjallBackend::open(dir.path(), FjallOptions::default())?;
    let store = Store::open(backend, StoreOptions::default())?;
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + MEASURE;
    let mut tasks = Vec::with_capacity(objects);
    for n in 0..objects {
        let mut storage = store.object(object_id(n));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::with_capacity(4096);
            while Instant::now() < end {
                let value = storage.get(COUNTER).await?.map_or(0, |v| decode(&v));
                storage
                    .put(COUNTER, (value + 1).to_be_bytes().to_vec())
                    .await?;
                let started = Instant::now();
                if let Some(durable) = storage.commit_turn() {
                    durable.await?;
                }
                if started >= measure_from && started < end {
                    latencies.push(started.elapsed());
                }
            }
            Ok::<_, StorageError>(latencies)
        }));
    }
    // Batch sizes over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    let before = store.stats();
    tokio::time::sleep_until(end.into()).await;
    let after = store.stats();
    let mut all = Latencies::with_capacity(1 << 16);
    for task in tasks {
        all.extend(task.await.context("a benchmark task panicked")??);
    }
    store.close().await?;
    let batches = after.batches - before.batches;
    let turns = after.turns - before.turns;
    Ok(Figures {
        ops_per_sec: all.len() as f64 / MEASURE.as_secs_f64(),
        p50: all.percentile(50.0),
        p99: all.percentile(99.0),
        avg_batch: if batches == 0 {
            0.0
        } else {
            turns as f64 / batches as f64
        },
    })
}

/// Raw fjall: the same increments (same key layout and fsync level) over
/// `objects` counters, committed `batch` at a time from one thread.
fn raw(objects: usize, batch: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let db = Database::builder(dir.path())
        .open()
        .map_err(|e| anyhow::anyhow!("opening fjall: {e:?}"))?;
    let data = db
        .keyspace("data", KeyspaceCreateOptions::default)
        .map_err(|e| anyhow::anyhow!("opening a keyspace: {e:?}"))?;
    let keys: Vec<Vec<u8>> = (0..objects)
        .map(|n| [object_id(n).as_bytes().as_slice(), COUNTER.as_bytes()].concat())
        .collect();
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + MEASURE;
    let mut latencies = Latencies::with_capacity(1 << 16);
    let mut ops = 0usize;
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut writes = db.batch().durability(Some(PersistMode::SyncData));
        for _ in 0..batch {
            let key = &keys[next % objects];
            next += 1;
            let value = data
                .get(key)
                .map_err(|e| anyhow::anyhow!("fjall get: {e:?}"))?
                .map_or(0, |v| decode(&v));
            writes.insert(&data, key.as_slice(), (value + 1).to_be_bytes().as_slice());
        }
        let started = Instant::now();
        writes
            .commit()
            .map_err(|e| anyhow::anyhow!("fjall commit: {e:?}"))?;
        if started >= measure_from {
            latencies.push(started.elapsed());
            ops += batch;
        }
    }
    Ok(Figures {
        ops_per_sec: ops as f64 / MEASURE.as_secs_f64(),
        p50: latencies.percentile(50.0),
        p99: latencies.percentile(99.0),
        avg_batch: batch as f64,
    })
}

const DISK_KEYS: usize = 100_000;
const DISK_OBJECTS: usize = 1_000;

/// 100 B of pseudo-random bytes (so compression does not flatter anyone).
fn value_bytes(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// (bytes in fjall's tables, bytes in all files): fjall preallocates its
/// journal files, so the total mostly measures that preallocation.
fn dir_bytes(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut tables = 0;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
                if entry
                    .path()
                    .components()
                    .any(|c| c.as_os_str() == "keyspaces")
                {
                    tables += meta.len();
                }
            }
        }
    }
    Ok((tables, total))
}

/// Bytes on disk per stored key (16 B key, 100 B value), through odo and
/// in raw fjall, after flushing memtables to tables.
async fn disk_usage() -> anyhow::Result<()> {
    let per_object = DISK_KEYS / DISK_OBJECTS;
    let dir = tempfile::tempdir().context("temp dir")?;
    let backend = Arc::new(FjallBackend::open(dir.path(), FjallOptions::default())?);
    let store = Store::open_shared(backend.clone(), StoreOptions::default())?;
    let mut waits = Vec::new();
    for n in 0..DISK_OBJECTS {
        let mut storage = store.object(object_id(n));
        let entries = (0..per_object).map(|i| {
            let k = n * per_object + i;
            (format!("key-{k:012}"), value_bytes(k as u64))
        });
        storage.put_many(entries).await?;
        waits.extend(storage.commit_turn());
    }
    for wait in waits {
        wait.await?;
    }
    backend.flush_memtables()?;
    let odo_bytes = dir_bytes(dir.path())?;
    store.close().await?;

    let raw_dir = tempfile::tempdir().context("temp dir")?;
    {
        let db = Database::builder(raw_dir.path())
            .open()
            .map_err(|e| anyhow::anyhow!("opening fjall: {e:?}"))?;
        let data = db
            .keyspace("data", KeyspaceCreateOptions::default)
            .map_err(|e| anyhow::anyhow!("opening a keyspace: {e:?}"))?;
        for chunk in (0..DISK_KEYS).collect::<Vec<_>>().chunks(per_object) {
            let mut batch = db.batch().durability(Some(PersistMode::SyncData));
            for &k in chunk {
                let key = format!("key-{k:012}");
                batch.insert(&data, key.as_bytes(), value_bytes(k as u64));
            }
            batch
                .commit()
                .map_err(|e| anyhow::anyhow!("fjall commit: {e:?}"))?;
        }
        data.rotate_memtable_and_wait()
            .map_err(|e| anyhow::anyhow!("fjall flush: {e:?}"))?;
    }
    let raw_bytes = dir_bytes(raw_dir.path())?;
    let per_key = |bytes: u64| bytes as f64 / DISK_KEYS as f64;
    println!("disk per key (16 B key, 100 B value, {DISK_KEYS} keys, memtables flushed):");
    println!(
        "  tables:    odo {:.1} B, raw fjall {:.1} B ({}; odo keys carry a 32 B object id)",
        per_key(odo_bytes.0),
        per_key(raw_bytes.0),
        ratio(per_key(odo_bytes.0), per_key(raw_bytes.0))
    );
    println!(
        "  all files: odo {:.1} B, raw fjall {:.1} B (includes preallocated journal files)",
        per_key(odo_bytes.1),
        per_key(raw_bytes.1)
    );
    Ok(())
}
