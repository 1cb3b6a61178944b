//! The failover part of the `cluster` benchmark: SIGKILL a host of a
//! 3-host PostgreSQL cluster, many times, and measure each time how long
//! after the kill the first write sent after it is acknowledged, that is
//! durable on the shard's new owner (the lease must expire first: TTL 3 s,
//! so the floor is about that). Reports p50, p99 and the worst over the
//! kills against the goal (p99 under 5 s).
//!
//! Each round kills the next host in turn while 4 clients at the other
//! hosts increment a counter on one of its shards, then starts it again
//! and waits until the placement settled. Knob: `KILLS` (rounds, default
//! 20; about 5 s each).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use odo_tests::cluster::TestCluster;
use odo_tests::http::HttpClient;

use crate::cluster::linux::{LEASE_TTL_S, Placement, SETTLE, placed_cluster};
use crate::stats::Latencies;

/// The goal: p99 from the kill to the first durable write on the new
/// owner, at most this.
const GOAL: Duration = Duration::from_secs(5);
/// Clients writing during a round.
const WRITERS: usize = 4;
/// A round gives up waiting for a write after this.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

/// A counter on a shard `victim` owns, by its name.
async fn counter_on(c: &TestCluster, placed: &Placement, victim: &str) -> Result<String> {
    let client = &c.live().next().context("no host")?.client;
    for i in 0..1000 {
        let name = format!("f{i}");
        let answer = client
            .get(&format!("/_odo/placement/counter/{name}"))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
        let shard = v["shard"].as_u64().context("no shard in placement")? as u32;
        if placed.get(&shard).is_some_and(|(o, _)| o == victim) {
            return Ok(name);
        }
    }
    bail!("no counter on a shard of {victim}")
}

/// One round: returns the time from the kill to the first acknowledged
/// write sent after it.
async fn round(c: &mut TestCluster, victim: usize) -> Result<Duration> {
    let placed = c.wait_placed(SETTLE, true).await?;
    let id = c.host(victim).context("victim not running")?.id.clone();
    let name = counter_on(c, &placed, &id).await?;
    let clients: Vec<HttpClient> = c
        .live()
        .filter(|h| h.id != id)
        .map(|h| h.client.clone())
        .collect();
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = clients[w % clients.len()].clone();
            let path = format!("/counter/{name}/increment");
            let (first, killed_at, stopped) = (first.clone(), killed_at.clone(), stopped.clone());
            tokio::spawn(async move {
                while !*stopped.borrow() {
                    let sent = Instant::now();
                    let ok = client.post(&path).await.is_ok_and(|a| a.status == 200);
                    let kill = *killed_at.lock().unwrap_or_else(PoisonError::into_inner);
                    if ok && kill.is_some_and(|k| sent > k) {
                        let mut first = first.lock().unwrap_or_else(PoisonError::into_inner);
                        let at = Instant::now();
                        if first.is_none_or(|f| at < f) {
                            *first = Some(at);
                        }
                    }
                    if !ok {
                        // A refused or failed write (the forwarder already
                        // waited for the placement): again, shortly.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    // Some writes on the victim's shard before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kill = Instant::now();
    *killed_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(kill);
    c.kill_host(victim)?;
    let give_up = kill + ROUND_LIMIT;
    let took = loop {
        if let Some(at) = *first.lock().unwrap_or_else(PoisonError::into_inner) {
            break at.duration_since(kill);
        }
        if Instant::now() > give_up {
            bail!("no write on {id}'s shard within {ROUND_LIMIT:?} of its kill");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.send_replace(true);
    for writer in writers {
        let _ = writer.await;
    }
    c.start_host(victim)?;
    c.wait_placed(SETTLE, true).await?;
    Ok(took)
}

/// Runs the rounds and prints the figures.
pub(crate) async fn run(binary: &std::path::Path) -> Result<()> {
    let kills: usize = std::env::var("KILLS")
        .ok()
        .map(|k| k.parse().context("KILLS: a number of rounds"))
        .transpose()?
        .unwrap_or(20);
    let (mut c, _) = placed_cluster(binary, "postgres", 3).await?;
    let mut samples = Latencies::with_capacity(kills);
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for k in 0..kills {
        let took = round(&mut c, k % 3)
            .await
            .with_context(|| format!("failover round {k}"))?;
        worst = worst.max(took);
        samples.push(took);
    }
    let p50 = samples.percentile(50.0);
    let p99 = samples.percentile(99.0);
    println!(
        "failover: {kills} SIGKILLs of a host (3 hosts, PostgreSQL, lease TTL {} s) in {:.0} s: \
         kill -> first durable write on the new owner p50 {} ms, p99 {} ms, worst {} ms \
         (goal p99 <= {} ms: {})",
        LEASE_TTL_S,
        started.elapsed().as_secs_f64(),
        p50.as_millis(),
        p99.as_millis(),
        worst.as_millis(),
        GOAL.as_millis(),
        if p99 <= GOAL { "met" } else { "MISSED" },
    );
    Ok(())
}
