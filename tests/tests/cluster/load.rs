//! The load the scenarios run and the ledger they check it against.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use odo_tests::cluster::TestCluster;
use odo_tests::http::HttpClient;

use super::{COUNTERS, counter};

/// Every acknowledged increment: counter -> values it returned.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) acked: BTreeMap<usize, Vec<u64>>,
}

impl Ledger {
    /// The counters' values now (through `client`), checked against every
    /// acknowledged increment: none lost, none acknowledged twice with the
    /// same value (that would be two live activations).
    pub(crate) async fn check(&self, client: &HttpClient) -> Result<(usize, usize)> {
        let mut acked = 0;
        for (i, values) in &self.acked {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let before = sorted.len();
            sorted.dedup();
            ensure!(
                sorted.len() == before,
                "counter c{i}: an acknowledged value was returned twice: double activation"
            );
            let answer = client.get(&counter(*i)).await?;
            ensure!(answer.status == 200, "reading c{i}: {}", answer.status);
            let now: u64 = answer.text().parse()?;
            let max = sorted.last().copied().unwrap_or(0);
            ensure!(
                now >= max,
                "counter c{i} is {now}, but {max} was acknowledged: lost"
            );
            acked += before;
        }
        Ok((acked, 0))
    }
}

/// Load: `per_host` clients on each of `hosts`, incrementing counters
/// round-robin until `stop`; records what was acknowledged, counts what
/// was not; `on_ack` sees each (counter, when).
pub(crate) struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<LoadReport>>,
}

#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Acknowledged increments: counter, value, when sent, when answered.
    pub(crate) acked: Vec<(usize, u64, Instant, Instant)>,
    /// Failed requests by status (or `timeout`, `connection`).
    pub(crate) failed: BTreeMap<String, usize>,
    /// The host the requests entered at.
    pub(crate) entry: String,
    /// Every answer's status and when it came.
    pub(crate) after: Vec<(u16, Instant)>,
}

impl Load {
    pub(crate) fn start(clients: Vec<(String, HttpClient)>, per_host: usize) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut k = 0;
        for (entry, client) in clients {
            for _ in 0..per_host {
                let client = client.clone();
                let stopped = stopped.clone();
                let entry = entry.clone();
                let first = k;
                k += 7;
                tasks.push(tokio::spawn(async move {
                    let mut report = LoadReport {
                        entry,
                        ..LoadReport::default()
                    };
                    let mut i = first;
                    while !*stopped.borrow() {
                        let c = i % COUNTERS;
                        i += 1;
                        let began = Instant::now();
                        let sent = client.post(&format!("{}/increment", counter(c))).await;
                        let at = Instant::now();
                        match sent {
                            Ok(answer) if answer.status == 200 => {
                                if let Ok(n) = answer.text().parse() {
                                    report.acked.push((c, n, began, at));
                                }
                                report.after.push((200, at));
                            }
                            Ok(answer) => {
                                *report.failed.entry(answer.status.to_string()).or_default() += 1;
                                report.after.push((answer.status, at));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => {
                                let kind = if format!("{e:#}").contains("within 30 s") {
                                    "timeout"
                                } else {
                                    "connection"
                                };
                                *report.failed.entry(kind.into()).or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    report
                }));
            }
        }
        Self { stop, tasks }
    }

    pub(crate) async fn finish(self, book: &mut Ledger) -> Result<Vec<LoadReport>> {
        self.stop.send_replace(true);
        let mut reports = Vec::new();
        for task in self.tasks {
            let report = task.await?;
            for (c, n, _, _) in &report.acked {
                book.acked.entry(*c).or_default().push(*n);
            }
            reports.push(report);
        }
        Ok(reports)
    }
}

pub(crate) fn clients_of(cluster: &TestCluster, hosts: &[usize]) -> Vec<(String, HttpClient)> {
    hosts
        .iter()
        .filter_map(|i| cluster.host(*i))
        .map(|h| (h.id.clone(), h.client.clone()))
        .collect()
}

/// The shard of each counter.
pub(crate) async fn shards_of(client: &HttpClient) -> Result<BTreeMap<usize, u32>> {
    let mut out = BTreeMap::new();
    for i in 0..COUNTERS {
        let answer = client
            .get(&format!("/_odo/placement{}", counter(i)))
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
        out.insert(i, v["shard"].as_u64().context("shard")? as u32);
    }
    Ok(out)
}

pub(crate) fn failures(reports: &[LoadReport]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in reports {
        for (k, n) in &r.failed {
            *out.entry(k.clone()).or_default() += n;
        }
    }
    out
}
