//! The `sql` benchmark: SQLite-backed objects through odo-storage's group
//! commit (fjall log, `SyncData`), against odo's fjall-backed objects and
//! raw rusqlite, in one run.
//!
//! - Counters, hot (one object, up to 64 turns in flight, as the runtime
//!   runs turn after turn while their commits batch) and spread (1,000
//!   objects, one turn in flight each): the key-value API on a fjall-backed
//!   object (the baseline), the key-value API on a SQLite-backed object,
//!   and SQL (`UPDATE ... RETURNING`) on a SQLite-backed object. Figures:
//!   durable turns/s and the ratio to the fjall-backed counter.
//! - Queries: 10,000 rows inserted in one turn, then one indexed point
//!   read per turn and one 100-row range scan per turn, as turns/s, beside
//!   raw rusqlite doing the same statements on a WAL database.
//!
//! - Waking an evicted object: the time from asking for it to its first
//!   durable turn, right after its eviction and a moment later, fjall-backed
//!   and SQLite-backed.
//!
//! Goal: the SQLite-backed counter at least 0.5x the fjall-backed one.
//! (The comparison with workerd's SQLite-backed counter is the e2e
//! benchmark's, over HTTP.)

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use odo_core::{Namespace, ObjectId};
use odo_storage::{
    CommitWait, FjallBackend, FjallOptions, ObjectTurns, SqlValue, StorageError, Store,
    StoreOptions,
};

use crate::stats::{Latencies, ratio, us};

/// A turn's durability, awaited by its own task: how long from its start.
type DurableIn = tokio::task::JoinHandle<Result<Duration, StorageError>>;

const MEASURE: Duration = Duration::from_secs(3);
const WARM_UP: Duration = Duration::from_millis(300);
const HOT_IN_FLIGHT: usize = 64;
const SPREAD: usize = 1000;
const ROWS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    FjallKv,
    SqliteKv,
    SqliteSql,
}

impl Counter {
    fn name(self) -> &'static str {
        match self {
            Counter::FjallKv => "fjall-backed, key-value",
            Counter::SqliteKv => "SQLite-backed, key-value",
            Counter::SqliteSql => "SQLite-backed, UPDATE RETURNING",
        }
    }
}

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;
    println!("durable counter turns/s (fjall log, SyncData):");
    println!(
        "{:<34} {:>12} {:>8} {:>12} {:>8}",
        "counter", "hot", "x fjall", "spread 1000", "x fjall"
    );
    let mut base = (0.0, 0.0);
    for counter in [Counter::FjallKv, Counter::SqliteKv, Counter::SqliteSql] {
        let hot = runtime.block_on(counters(counter, 1, HOT_IN_FLIGHT))?;
        let spread = runtime.block_on(counters(counter, SPREAD, 1))?;
        if counter == Counter::FjallKv {
            base = (hot, spread);
        }
        println!(
            "{:<34} {:>12.0} {:>8} {:>12.0} {:>8}",
            counter.name(),
            hot,
            ratio(hot, base.0),
            spread,
            ratio(spread, base.1)
        );
    }
    println!("goal: SQLite-backed counter >= 0.50x the fjall-backed one");
    println!(
        "waking an evicted object: asked for -> its first turn durable, {WAKES} objects, p50/p99 us"
    );
    for counter in [Counter::FjallKv, Counter::SqliteKv] {
        let (mut at_once, mut settled) = runtime.block_on(reactivation(counter))?;
        println!(
            "  {:<32} right after its eviction {}/{}; {} ms after it {}/{}",
            counter.name(),
            us(at_once.percentile(50.0)),
            us(at_once.percentile(99.0)),
            SETTLE.as_millis(),
            us(settled.percentile(50.0)),
            us(settled.percentile(99.0)),
        );
    }
    runtime.block_on(queries())
}

const WAKES: usize = 200;
/// Long enough for an evicted view's last work (a SQLite-backed object's
/// synced marker) to be done.
const SETTLE: Duration = Duration::from_millis(30);

/// The time from asking for an object just evicted (its view dropped) to
/// its first increment being durable: right after the eviction, and
/// [`SETTLE`] after it. A SQLite-backed object's evicted view holds the
/// object until its synced marker is submitted (DURABILITY.md), so a wake
/// right after the eviction waits for that.
async fn reactivation(counter: Counter) -> anyhow::Result<(Latencies, Latencies)> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let store = store(dir.path())?;
    let open = |n| match counter {
        Counter::FjallKv => Ok(store.object(id(n))),
        _ => store.sql_object(id(n)),
    };
    let mut at_once = Latencies::with_capacity(WAKES);
    let mut settled = Latencies::with_capacity(WAKES);
    for n in 0..WAKES {
        let mut turns = open(n)?;
        if let Some(durable) = increment(&mut turns, counter).await? {
            durable.await?;
        }
        for (latencies, pause) in [(&mut at_once, Duration::ZERO), (&mut settled, SETTLE)] {
            drop(turns);
            tokio::time::sleep(pause).await;
            let asked = Instant::now();
            turns = open(n)?;
            if let Some(durable) = increment(&mut turns, counter).await? {
                durable.await?;
            }
            latencies.push(asked.elapsed());
        }
    }
    store.close().await?;
    Ok((at_once, settled))
}

fn id(n: usize) -> ObjectId {
    Namespace::new("BENCH").id_from_name(&n.to_string())
}

fn store(dir: &std::path::Path) -> anyhow::Result<Store> {
    let backend = FjallBackend::open(dir.join("kv"), FjallOptions::default())?;
    let mut options = StoreOptions::default();
    options.sql.dir = Some(dir.join("sql"));
    Ok(Store::open(backend, options)?)
}

/// One increment turn, ended: the wait for its durability.
async fn increment(
    turns: &mut ObjectTurns,
    counter: Counter,
) -> Result<Option<CommitWait>, StorageError> {
    turns.prepare().await?;
    match counter {
        Counter::FjallKv | Counter::SqliteKv => {
            let n = turns.get_typed::<u64>("n").await?.unwrap_or(0);
            turns.put_typed("n", &(n + 1)).await?;
        }
        Counter::SqliteSql => {
            let sql = turns.sql()?;
            sql.exec("UPDATE c SET v = v + 1 WHERE k = 0 RETURNING v", &[])?;
        }
    }
    Ok(turns.commit_turn())
}

/// Durable turns/s of `objects` counters, each with up to `in_flight`
/// turns not yet durable.
async fn counters(counter: Counter, objects: usize, in_flight: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let store = store(dir.path())?;
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + MEASURE;
    let mut tasks = Vec::with_capacity(objects);
    for n in 0..objects {
        let mut turns = match counter {
            Counter::FjallKv => store.object(id(n)),
            _ => store.sql_object(id(n))?,
        };
        tasks.push(tokio::spawn(async move {
            if counter == Counter::SqliteSql {
                turns.prepare().await?;
                turns.sql()?.exec(
                    "CREATE TABLE c (k INTEGER PRIMARY KEY, v INTEGER); INSERT INTO c VALUES (0, 0)",
                    &[],
                )?;
                if let Some(durable) = turns.commit_turn() {
                    durable.await?;
                }
            }
            // Each turn's durability is awaited by a task of its own, which
            // measures start -> durable as it happens.
            let mut pending: VecDeque<(Instant, DurableIn)> = VecDeque::new();
            let mut done = 0u64;
            let mut latencies = (Latencies::default(), Latencies::default());
            let finish = |started: Instant, durable: Duration, latencies: &mut (Latencies, Latencies)| {
                if started >= measure_from && started < end {
                    latencies.1.push(durable);
                    1
                } else {
                    0
                }
            };
            while Instant::now() < end {
                if pending.len() >= in_flight
                    && let Some((started, durable)) = pending.pop_front()
                {
                    let took = durable.await.map_err(|e| StorageError::backend("a waiter", e))??;
                    done += finish(started, took, &mut latencies);
                }
                let started = Instant::now();
                if let Some(durable) = increment(&mut turns, counter).await? {
                    if started >= measure_from {
                        latencies.0.push(started.elapsed());
                    }
                    pending.push_back((
                        started,
                        tokio::spawn(async move {
                            durable.await?;
                            Ok(started.elapsed())
                        }),
                    ));
                }
            }
            for (started, durable) in pending {
                let took = durable.await.map_err(|e| StorageError::backend("a waiter", e))??;
                done += finish(started, took, &mut latencies);
            }
            Ok::<_, StorageError>((done, latencies))
        }));
    }
    let mut total = 0;
    let mut all = (Latencies::default(), Latencies::default());
    for task in tasks {
        let (done, latencies) = task.await.context("a benchmark task panicked")??;
        total += done;
        all.0.extend(latencies.0);
        all.1.extend(latencies.1);
    }
    if objects == 1 {
        let (mut turn, mut durable) = all;
        println!(
            "  {:<32} turn (async side) p50/p99/p99.9/max us: {}/{}/{}/{}; start->durable: {}/{}/{}/{}",
            counter.name(),
            us(turn.percentile(50.0)),
            us(turn.percentile(99.0)),
            us(turn.percentile(99.9)),
            us(turn.percentile(100.0)),
            us(durable.percentile(50.0)),
            us(durable.percentile(99.0)),
            us(durable.percentile(99.9)),
            us(durable.percentile(100.0)),
        );
    }
    store.close().await?;
    Ok(total as f64 / MEASURE.as_secs_f64())
}

/// Turns/s of `turn` over the measuring time.
async fn per_second<F>(mut turn: F) -> anyhow::Result<f64>
where
    F: AsyncFnMut(i64) -> anyhow::Result<()>,
{
    let end = Instant::now() + MEASURE;
    let mut n = 0i64;
    while Instant::now() < end {
        turn(n).await?;
        n += 1;
    }
    Ok(n as f64 / MEASURE.as_secs_f64())
}

const SCHEMA: &str = "CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER, s TEXT)";
const INSERT: &str = "INSERT INTO t VALUES (?, ?, ?)";
const POINT: &str = "SELECT v FROM t WHERE k = ?";
const RANGE: &str = "SELECT sum(v) FROM t WHERE k BETWEEN ?1 AND ?1 + 99";

async fn queries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let store = store(dir.path())?;
    let mut turns = store.sql_object(id(0))?;
    turns.prepare().await?;
    let started = Instant::now();
    {
        let sql = turns.sql()?;
        sql.exec(SCHEMA, &[])?;
        for k in 0..ROWS {
            sql.exec(
                INSERT,
                &[
                    SqlValue::from(k),
                    SqlValue::from(k * 7),
                    SqlValue::from("row"),
                ],
            )?;
        }
    }
    if let Some(durable) = turns.commit_turn() {
        durable.await?;
    }
    let odo_insert = started.elapsed();
    let odo_point = per_second(async |n| {
        turns.prepare().await?;
        let key = SqlValue::from(n * 7919 % ROWS);
        turns.sql()?.exec(POINT, &[key])?.one()?;
        turns.rollback_turn();
        Ok(())
    })
    .await?;
    let odo_range = per_second(async |n| {
        turns.prepare().await?;
        let key = SqlValue::from(n * 7919 % (ROWS - 100));
        turns.sql()?.exec(RANGE, &[key])?.one()?;
        turns.rollback_turn();
        Ok(())
    })
    .await?;
    drop(turns);
    store.close().await?;

    let raw_dir = tempfile::tempdir().context("temp dir")?;
    let conn = rusqlite::Connection::open(raw_dir.path().join("raw.sqlite"))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    let started = Instant::now();
    {
        let tx = conn.unchecked_transaction()?;
        tx.execute(SCHEMA, [])?;
        let mut insert = tx.prepare(INSERT)?;
        for k in 0..ROWS {
            insert.execute(rusqlite::params![k, k * 7, "row"])?;
        }
        drop(insert);
        tx.commit()?;
    }
    let raw_insert = started.elapsed();
    let raw_point = per_second(async |n| {
        let v: i64 = conn
            .prepare_cached(POINT)?
            .query_row([n * 7919 % ROWS], |row| row.get(0))?;
        std::hint::black_box(v);
        Ok(())
    })
    .await?;
    let raw_range = per_second(async |n| {
        let v: i64 = conn
            .prepare_cached(RANGE)?
            .query_row([n * 7919 % (ROWS - 100)], |row| row.get(0))?;
        std::hint::black_box(v);
        Ok(())
    })
    .await?;
    println!("queries on one object ({ROWS} rows):");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "", "odo", "rusqlite", "odo/raw"
    );
    println!(
        "{:<34} {:>10.1}ms {:>10.1}ms {:>8}",
        "insert 10,000 rows in one turn",
        odo_insert.as_secs_f64() * 1e3,
        raw_insert.as_secs_f64() * 1e3,
        ratio(raw_insert.as_secs_f64(), odo_insert.as_secs_f64())
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8}",
        "point read per turn, turns/s",
        odo_point,
        raw_point,
        ratio(odo_point, raw_point)
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>8}",
        "100-row range scan per turn, turns/s",
        odo_range,
        raw_range,
        ratio(odo_range, raw_range)
    );
    Ok(())
}
