//! The `worker` benchmark: odo-worker's object runtime, in process.
//!
//! Measured against a minimal hand-written tokio actor (one task, a bounded
//! `mpsc` mailbox, a `oneshot` reply per event) in the same run:
//!
//! - events/s on one hot object with no storage, and spread over 10,000
//!   objects (all already live), with [`CALLERS`] callers in flight;
//! - new activations per second (every event goes to a new object);
//! - memory per live idle object: RSS growth over [`MEMORY_OBJECTS`] idle
//!   objects divided by their number, measured in a child process so that
//!   memory freed by earlier measurements cannot hide the growth. The figure
//!   is the runtime's own overhead (the object table entry, the actor task,
//!   its mailbox and storage handle): the objects are zero-sized;
//! - durable increments/s (fjall, `SyncData`) on one hot object and over
//!   1,000 objects with 64 callers, next to the disk's raw
//!   write + `fdatasync` rate measured before and after them.
//!
//! Targets: hot >= 500,000 events/s, >= 200,000 activations/s, <= 2 KiB per
//! live idle object, durable hot increments >= 20x the raw fsync rate.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use odo_core::Namespace;
use odo_storage::{FjallBackend, FjallOptions, MemoryBackend, Store, StoreOptions};
use odo_worker::{
    Classes, Context, DurableObject, ObjectAddress, ObjectError, Request, Response, Runtime,
    RuntimeConfig,
};
use tokio::sync::{mpsc, oneshot};

use crate::stats::{Latencies, ratio, us};

/// How long each throughput measurement runs, after its warm-up.
const MEASURE: Duration = Duration::from_secs(2);
const WARM_UP: Duration = Duration::from_millis(300);
/// Callers in flight for the event measurements.
const CALLERS: usize = 256;
/// Callers in flight for the durable increments.
const DURABLE_CALLERS: usize = 64;
const SPREAD_OBJECTS: usize = 10_000;
const DURABLE_OBJECTS: usize = 1_000;
const ACTIVATIONS: usize = 200_000;
const MEMORY_OBJECTS: usize = 100_000;
/// How long the raw fsync probe runs.
const FSYNC_PROBE: Duration = Duration::from_secs(2);
/// Set in the child process that measures memory: `odo` or `raw`.
const MEMORY_CHILD_ENV: &str = "ODO_BENCH_WORKER_MEMORY";
const MEMORY_LINE: &str = "worker-memory";

/// An object that answers at once and touches no storage.
struct Echo;

impl DurableObject for Echo {
    fn create(_: &Context) -> Self {
        Echo
    }

    async fn fetch(&mut self, _: &mut Context, _: Request) -> Result<Response, ObjectError> {
        Ok(Response::new(Bytes::new()))
    }
}

/// Reads, increments and writes back one durable counter per event.
struct Counter;

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        Counter
    }

    async fn fetch(&mut self, ctx: &mut Context, _: Request) -> Result<Response, ObjectError> {
        let storage = ctx.storage();
        let n: u64 = storage.get_typed("n").await?.unwrap_or(0) + 1;
        storage.put_typed("n", &n).await?;
        Ok(Response::new(Bytes::from(n.to_string())))
    }
}

pub(crate) fn run() -> anyhow::Result<()> {
    if let Ok(mode) = std::env::var(MEMORY_CHILD_ENV) {
        return memory_child(&mode);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;

    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>12} {:>9}",
        "measurement", "odo", "p50 us", "p99 us", "raw actor", "odo/raw"
    );
    let hot = runtime.block_on(odo_events(1))?;
    let hot_raw = runtime.block_on(raw_events(1))?;
    event_row("events/s, 1 hot object", &hot, &hot_raw);
    let spread = runtime.block_on(odo_events(SPREAD_OBJECTS))?;
    let spread_raw = runtime.block_on(raw_events(SPREAD_OBJECTS))?;
    event_row("events/s, 10,000 objects", &spread, &spread_raw);
    let act = runtime.block_on(odo_activations())?;
    let act_raw = runtime.block_on(raw_activations())?;
    event_row("activations/s (new objects)", &act, &act_raw);
    drop(runtime);

    let mem = memory_in_child("odo")?;
    let mem_raw = memory_in_child("raw")?;
    println!(
        "{:<34} {:>12.0} {:>10} {:>10} {:>12.0} {:>9}",
        "bytes per live idle object",
        mem,
        "",
        "",
        mem_raw,
        ratio(mem, mem_raw)
    );
    println!(
        "  ({MEMORY_OBJECTS} objects; RSS growth / objects; odo: table entry, actor task, \
         mailbox, storage handle, zero-sized object; raw: task + mpsc + map entry)"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;
    let probe_dir = tempfile::tempdir().context("temp dir")?;
    let fsync_before = fsync_rate(probe_dir.path())?;
    let durable_hot = runtime.block_on(odo_durable(1))?;
    let durable_spread = runtime.block_on(odo_durable(DURABLE_OBJECTS))?;
    let fsync_after = fsync_rate(probe_dir.path())?;
    let fsync = (fsync_before + fsync_after) / 2.0;
    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>12} {:>9} {:>8}",
        "durable (fjall, SyncData, 64 callers)",
        "incr/s",
        "p50 us",
        "p99 us",
        "raw fsync/s",
        "odo/fsync",
        "batch"
    );
    for (what, f) in [
        ("increments/s, 1 hot object", &durable_hot),
        ("increments/s, 1,000 objects", &durable_spread),
    ] {
        println!(
            "{:<34} {:>12.0} {:>10} {:>10} {:>12.0} {:>9} {:>8.1}",
            what,
            f.per_sec,
            us(f.p50),
            us(f.p99),
            fsync,
            ratio(f.per_sec, fsync),
            f.avg_batch
        );
    }
    println!(
        "  raw fsync: write 16 B + fdatasync in a loop for {} s, before {fsync_before:.0}/s, \
         after {fsync_after:.0}/s; batch: turns per group commit (warm-up included)",
        FSYNC_PROBE.as_secs()
    );
    println!(
        "targets: hot >= 500000 events/s, activations >= 200000/s, <= 2048 B per idle object, \
         durable hot >= 20.00x raw fsync/s"
    );
    Ok(())
}

/// One throughput measurement.
#[derive(Debug)]
struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    avg_batch: f64,
}

fn event_row(what: &str, odo: &Figures, raw: &Figures) {
    println!(
        "{:<34} {:>12.0} {:>10} {:>10} {:>12.0} {:>9}",
        what,
        odo.per_sec,
        us(odo.p50),
        us(odo.p99),
        raw.per_sec,
        ratio(odo.per_sec, raw.per_sec)
    );
}

fn refs(class: &str, prefix: &str, count: usize) -> Arc<Vec<ObjectAddress>> {
    let namespace = Namespace::new(class);
    let class: Arc<str> = Arc::from(class);
    Arc::new(
        (0..count)
            .map(|n| {
                let name = format!("{prefix}{n}");
                ObjectAddress {
                    class: class.clone(),
                    id: namespace.id_from_name(&name),
                    name: Some(Arc::from(name)),
                }
            })
            .collect(),
    )
}

fn request() -> Request {
    Request::new(Bytes::new())
}

/// A small xorshift generator: which object each caller hits next.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs `callers` tasks, each calling `event(object index)` in a loop over
/// `objects` objects (chosen at random), for [`WARM_UP`] + [`MEASURE`];
/// counts and times the events that start inside the measured window.
/// [`closed_loop`] of fetches through `runtime`, caller `i` to `targets[i]`.
async fn fetch_loop(
    runtime: &Runtime,
    targets: &[ObjectAddress],
    callers: usize,
) -> anyhow::Result<Figures> {
    let rt = runtime.clone();
    let targets: Arc<[ObjectAddress]> = targets.into();
    closed_loop(callers, targets.len(), move |i| {
        let rt = rt.clone();
        let target = targets[i].clone();
        async move {
            rt.fetch(target, None, request())
                .await
                .map(drop)
                .map_err(|e| anyhow::anyhow!("fetch: {e}"))
        }
    })
    .await
}

async fn closed_loop<F, Fut>(callers: usize, objects: usize, event: F) -> anyhow::Result<Figures>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + MEASURE;
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::with_capacity(1 << 14);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (caller as u64 + 1).wrapping_mul(0x2545_f491);
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let index = if objects == 1 {
                    0
                } else {
                    (next_random(&mut rng) % objects as u64) as usize
                };
                event(index).await?;
                if started >= measure_from {
                    latencies.push(started.elapsed());
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Latencies::with_capacity(1 << 20);
    for task in tasks {
        all.extend(task.await.context("a caller panicked")??);
    }
    Ok(Figures {
        per_sec: all.len() as f64 / MEASURE.as_secs_f64(),
        p50: all.percentile(50.0),
        p99: all.percentile(99.0),
        avg_batch: 0.0,
    })
}

fn idle_config() -> RuntimeConfig {
    RuntimeConfig {
        idle_timeout: Duration::from_secs(3600),
        max_live_objects: 10_000_000,
        ..RuntimeConfig::default()
    }
}

fn echo_runtime() -> anyhow::Result<Runtime> {
    let mut classes = Classes::default();
    classes.register::<Echo>("ECHO")?;
    let runtime = Runtime::new(classes, idle_config(), 1);
    runtime.open_shard(
        0,
        1,
        Store::open(MemoryBackend::new(), StoreOptions::default())?,
    )?;
    Ok(runtime)
}

/// Activates every object of `targets`, `CALLERS` at a time; returns the
/// elapsed time.
async fn activate_all(
    runtime: &Runtime,
    targets: &Arc<Vec<ObjectAddress>>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let runtime = runtime.clone();
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            for target in targets.iter().skip(caller).step_by(CALLERS) {
                runtime
                    .fetch(target.clone(), None, request())
                    .await
                    .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await.context("a caller panicked")??;
    }
    Ok(started.elapsed())
}

/// Events/s through the runtime over `objects` live objects.
async fn odo_events(objects: usize) -> anyhow::Result<Figures> {
    let runtime = echo_runtime()?;
    let targets = refs("ECHO", "o", objects);
    activate_all(&runtime, &targets).await?;
    let figures = fetch_loop(&runtime, &targets, CALLERS).await?;
    runtime.shutdown().await;
    Ok(figures)
}

type RawEvent = (Request, oneshot::Sender<Response>);

/// The minimal actor: one task per object, answering every event at once.
fn raw_actor(queue_depth: usize) -> mpsc::Sender<RawEvent> {
    let (tx, mut rx) = mpsc::channel::<RawEvent>(queue_depth);
    tokio::spawn(async move {
        while let Some((_request, reply)) = rx.recv().await {
            let _ = reply.send(Response::new(Bytes::new()));
        }
    });
    tx
}

async fn raw_call(tx: &mpsc::Sender<RawEvent>) -> anyhow::Result<()> {
    let (reply, answer) = oneshot::channel();
    tx.try_send((request(), reply))
        .map_err(|_| anyhow::anyhow!("raw mailbox full or closed"))?;
    answer.await.context("raw actor gone")?;
    Ok(())
}

/// Events/s through raw actors over `objects` objects, found through a
/// locked map as odo's table does.
async fn raw_events(objects: usize) -> anyhow::Result<Figures> {
    let depth = RuntimeConfig::default().queue_depth;
    let table: Arc<Mutex<HashMap<usize, mpsc::Sender<RawEvent>>>> = Arc::new(Mutex::new(
        (0..objects).map(|i| (i, raw_actor(depth))).collect(),
    ));
    let t = table.clone();
    let figures = closed_loop(CALLERS, objects, move |i| {
        let tx = t.lock().expect("raw table").get(&i).cloned();
        async move { raw_call(&tx.context("no raw actor")?).await }
    })
    .await?;
    table.lock().expect("raw table").clear();
    Ok(figures)
}

/// New activations per second: every event goes to an object not yet live.
async fn odo_activations() -> anyhow::Result<Figures> {
    let runtime = echo_runtime()?;
    let targets = refs("ECHO", "new", ACTIVATIONS);
    // Warm the runtime's tables and allocator with other objects first.
    activate_all(&runtime, &refs("ECHO", "warm", 10_000)).await?;
    let elapsed = activate_all(&runtime, &targets).await?;
    let live = runtime.live_objects();
    anyhow::ensure!(
        live == ACTIVATIONS + 10_000,
        "expected {} live objects, found {live}",
        ACTIVATIONS + 10_000
    );
    runtime.shutdown().await;
    Ok(Figures {
        per_sec: ACTIVATIONS as f64 / elapsed.as_secs_f64(),
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        avg_batch: 0.0,
    })
}

/// The raw equivalent: spawn an actor and insert it in the map on the
/// first event for an object.
async fn raw_activations() -> anyhow::Result<Figures> {
    let depth = RuntimeConfig::default().queue_depth;
    let table: Arc<Mutex<HashMap<usize, mpsc::Sender<RawEvent>>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            for i in (caller..ACTIVATIONS).step_by(CALLERS) {
                let tx = table
                    .lock()
                    .expect("raw table")
                    .entry(i)
                    .or_insert_with(|| raw_actor(depth))
                    .clone();
                raw_call(&tx).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await.context("a caller panicked")??;
    }
    let elapsed = started.elapsed();
    table.lock().expect("raw table").clear();
    Ok(Figures {
        per_sec: ACTIVATIONS as f64 / elapsed.as_secs_f64(),
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        avg_batch: 0.0,
    })
}

/// The resident set size of this process, in bytes.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// Runs this benchmark again as a child process that only measures the
/// memory of `mode` (`odo` or `raw`) idle objects; returns bytes per object.
fn memory_in_child(mode: &str) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("current_exe")?;
    let output = std::process::Command::new(exe)
        .arg("worker")
        .env(MEMORY_CHILD_ENV, mode)
        .output()
        .context("running the memory child")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "memory child ({mode}) failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(MEMORY_LINE))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("memory child ({mode}) printed no figure: {stdout}"))
}

/// In the child: RSS growth per idle object, after activating
/// [`MEMORY_OBJECTS`] of them.
fn memory_child(mode: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;
    let per_object = runtime.block_on(async {
        let settle = Duration::from_millis(300);
        match mode {
            "odo" => {
                let rt = echo_runtime()?;
                let targets = refs("ECHO", "idle", MEMORY_OBJECTS);
                // Warm the allocator, the table and the runtime's threads.
                activate_all(&rt, &refs("ECHO", "warm", 1_000)).await?;
                tokio::time::sleep(settle).await;
                let before = rss_bytes()?;
                activate_all(&rt, &targets).await?;
                tokio::time::sleep(settle).await;
                let after = rss_bytes()?;
                anyhow::ensure!(rt.live_objects() == MEMORY_OBJECTS + 1_000);
                Ok::<_, anyhow::Error>((after - before) as f64 / MEMORY_OBJECTS as f64)
            }
            _ => {
                let depth = RuntimeConfig::default().queue_depth;
                let mut table: HashMap<usize, mpsc::Sender<RawEvent>> = HashMap::new();
                for i in 0..1_000 {
                    let tx = raw_actor(depth);
                    raw_call(&tx).await?;
                    table.insert(i, tx);
                }
                tokio::time::sleep(settle).await;
                let before = rss_bytes()?;
                for i in 1_000..1_000 + MEMORY_OBJECTS {
                    let tx = raw_actor(depth);
                    raw_call(&tx).await?;
                    table.insert(i, tx);
                }
                tokio::time::sleep(settle).await;
                let after = rss_bytes()?;
                Ok((after - before) as f64 / MEMORY_OBJECTS as f64)
            }
        }
    })?;
    println!("{MEMORY_LINE} {per_object:.1}");
    std::io::stdout().flush()?;
    // Exit without tearing 100,000 objects down.
    std::process::exit(0);
}

/// Writes of a 16 B record, each followed by `fdatasync`, per second.
fn fsync_rate(dir: &std::path::Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).context("creating the fsync probe file")?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < FSYNC_PROBE {
        file.write_all(&n.to_le_bytes())?;
        file.write_all(&[0u8; 8])?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Durable increments/s over `objects` counters, [`DURABLE_CALLERS`] in
/// flight, on fjall with its default durability (`SyncData`).
async fn odo_durable(objects: usize) -> anyhow::Result<Figures> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let backend = FjallBackend::open(dir.path(), FjallOptions::default())?;
    let mut classes = Classes::default();
    classes.register::<Counter>("COUNTER")?;
    let runtime = Runtime::new(classes, idle_config(), 1);
    runtime.open_shard(0, 1, Store::open(backend, StoreOptions::default())?)?;
    let targets = refs("COUNTER", "c", objects);
    let before = runtime.commit_totals();
    let mut figures = fetch_loop(&runtime, &targets, DURABLE_CALLERS).await?;
    let after = runtime.commit_totals();
    let batches = after.0 - before.0;
    figures.avg_batch = if batches == 0 {
        0.0
    } else {
        (after.1 - before.1) as f64 / batches as f64
    };
    runtime.shutdown().await;
    Ok(figures)
}
