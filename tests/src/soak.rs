//! The kill soak: load on many counters while a random worker is SIGKILLed
//! again and again; checks from outside what must always hold (no
//! acknowledged write lost, never two live instances of an object) and
//! measures how long each kill keeps objects away.
//!
//! `cargo xtask soak` runs the long version (100 kills, one a second, four
//! workers, 50 counters); the multi-process suite runs a short one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::Mutex;

use crate::http::HttpClient;
use crate::topology::{Signal, signal};

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Workers to kill, one after the other.
    pub kills: u32,
    /// The time between two kills.
    pub interval: Duration,
    /// Counters under load (`/counter/soak{i}`).
    pub counters: u32,
    /// Concurrent load clients.
    pub clients: usize,
    /// A seed for choosing the victims.
    pub seed: u64,
}

impl Default for SoakPlan {
    fn default() -> Self {
        Self {
            kills: 100,
            interval: Duration::from_secs(1),
            counters: 50,
            clients: 16,
            seed: 0x0d0_50a6,
        }
    }
}

/// What a soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Increments sent.
    pub requests: u64,
    /// Increments answered 200.
    pub acknowledged: u64,
    /// Increments answered with a failure (each said whether it is safe to
    /// retry).
    pub failed: u64,
    /// Acknowledged increments missing from the final values.
    pub lost: u64,
    /// Values acknowledged twice for one counter, or an activation that
    /// answered again after a newer one had: both mean two live instances.
    pub double_activations: u64,
    /// Per kill: from the SIGKILL until every object that was on the
    /// killed worker answered again.
    pub recoveries: Vec<Duration>,
}

impl SoakReport {
    /// The `q`-quantile of the recoveries (0.5 for the median).
    pub fn recovery_quantile(&self, q: f64) -> Duration {
        let mut sorted = self.recoveries.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted[index.min(sorted.len() - 1)]
    }

    /// The worst recovery.
    pub fn recovery_max(&self) -> Duration {
        self.recoveries.iter().copied().max().unwrap_or_default()
    }
}

/// A small deterministic generator for choosing victims (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn counter(i: u32) -> String {
    format!("soak{i}")
}

async fn owner_pid(client: &HttpClient, name: &str) -> Result<Option<u32>> {
    let answer = client
        .get(&format!("/_odo/placement/counter/{name}"))
        .await?;
    let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
    Ok(value["pid"].as_u64().map(|p| p as u32))
}

/// Whether a failed increment said what happened: 503 (never delivered)
/// marked retryable, 502 or 504 (outcome unknown) marked not.
fn says_what_happened(status: u16, retryable: &[&str]) -> bool {
    match status {
        503 => retryable == ["true"],
        502 | 504 => retryable == ["false"],
        _ => false,
    }
}

/// Runs `plan` against the server at `client`.
pub async fn soak(client: &HttpClient, plan: &SoakPlan) -> Result<SoakReport> {
    let stop = Arc::new(AtomicBool::new(false));
    // Every counter exists before the first kill.
    for i in 0..plan.counters {
        let answer = client
            .post(&format!("/counter/{}/increment", counter(i)))
            .await?;
        if answer.status != 200 {
            bail!(
                "warming up counter {i}: {} {}",
                answer.status,
                answer.text()
            );
        }
    }
    let acked: Arc<Mutex<BTreeMap<u32, Vec<u64>>>> = Arc::default();
    {
        let mut acked = acked.lock().await;
        for i in 0..plan.counters {
            acked.entry(i).or_default().push(1);
        }
    }
    let load: Vec<_> = (0..plan.clients)
        .map(|k| {
            let client = client.clone();
            let stop = stop.clone();
            let acked = acked.clone();
            let counters = plan.counters;
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0u64, 0u64);
                let mut i = k as u32 % counters;
                while !stop.load(Ordering::SeqCst) {
                    let answer = client
                        .post(&format!("/counter/{}/increment", counter(i)))
                        .await?;
                    sent += 1;
                    match answer.status {
                        200 => {
                            let value: u64 = answer.text().parse().context("an increment")?;
                            acked.lock().await.entry(i).or_default().push(value);
                        }
                        status if says_what_happened(status, &answer.header("x-odo-retryable")) => {
                            failed += 1
                        }
                        other => {
                            bail!("unexpected {other} {:?}: {}", answer.headers, answer.text())
                        }
                    }
                    i = (i + 1) % counters;
                }
                Ok::<_, anyhow::Error>((sent, failed))
            })
        })
        .collect();
    // One poller asks each counter who answers, in turn: an activation
    // that answers again after a newer one of the same object means two
    // were live at once.
    let whoami = {
        let client = client.clone();
        let stop = stop.clone();
        let counters = plan.counters;
        tokio::spawn(async move {
            let mut seen: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let answer = client
                    .get(&format!("/counter/{}/whoami", counter(i)))
                    .await?;
                if answer.status == 200 {
                    let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
                    let activation = value["activation"].as_str().unwrap_or("?").to_owned();
                    let history = seen.entry(i).or_default();
                    if history.last() != Some(&activation) {
                        history.push(activation);
                    }
                }
                i = (i + 1) % counters;
            }
            Ok::<_, anyhow::Error>(seen)
        })
    };
    let mut rng = Rng(plan.seed);
    let mut recoveries = Vec::new();
    for _ in 0..plan.kills {
        tokio::time::sleep(plan.interval).await;
        let pids = client.running_worker_pids().await?;
        if pids.is_empty() {
            continue;
        }
        let victim = pids[(rng.next() % pids.len() as u64) as usize];
        let mut on_victim = Vec::new();
        for i in 0..plan.counters {
            if owner_pid(client, &counter(i)).await? == Some(victim) {
                on_victim.push(i);
            }
        }
        signal(victim, Signal::Kill)?;
        let killed = Instant::now();
        let client = client.clone();
        recoveries.push(tokio::spawn(async move {
            for i in on_victim {
                loop {
                    let answer = client.get(&format!("/counter/{}", counter(i))).await?;
                    if answer.status == 200 {
                        break;
                    }
                    if killed.elapsed() > Duration::from_secs(60) {
                        bail!("counter {i} did not answer within 60 s of the kill");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let took = killed.elapsed();
            if took > Duration::from_secs(1) {
                eprintln!("soak: kill of pid {victim} took {took:?} to recover");
            }
            Ok::<_, anyhow::Error>(took)
        }));
    }
    let mut report = SoakReport::default();
    for recovery in recoveries {
        report.recoveries.push(recovery.await??);
    }
    stop.store(true, Ordering::SeqCst);
    for client in load {
        let (sent, failed) = client.await??;
        report.requests += sent;
        report.failed += failed;
    }
    let seen = whoami.await??;
    for history in seen.values() {
        let mut retired = HashSet::new();
        for (n, activation) in history.iter().enumerate() {
            if retired.contains(activation) {
                report.double_activations += 1;
            }
            if n > 0 {
                retired.insert(history[n - 1].clone());
            }
        }
    }
    for (i, values) in acked.lock().await.iter() {
        let final_value: u64 = client
            .get(&format!("/counter/{}", counter(*i)))
            .await?
            .text()
            .parse()
            .context("a final value")?;
        let distinct: HashSet<u64> = values.iter().copied().collect();
        report.acknowledged += values.len() as u64;
        report.double_activations += (values.len() - distinct.len()) as u64;
        // An acknowledged value above the final one is lost; so are the
        // acknowledged increments the final value cannot hold.
        let above = values.iter().filter(|&&v| v > final_value).count() as u64;
        let short = (values.len() as u64).saturating_sub(final_value);
        report.lost += above.max(short);
    }
    // The warm-up increments were acknowledged too, but not sent by load.
    report.requests += u64::from(plan.counters);
    Ok(report)
}
