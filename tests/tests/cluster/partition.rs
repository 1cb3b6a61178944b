//! Partitions, with real network namespaces: each etcd member and each of
//! 3 hosts in a namespace of its own on a bridge (`odo_tests::netns`),
//! PostgreSQL on the bridge's address, TLS everywhere (odo talks plain
//! text on loopback only). A partition is a pair of blackhole routes per
//! cut link; the load enters from this (the root) namespace, over the
//! bridge, at every host.
//!
//! 1. `from etcd`: h1 cut off from every etcd member (it still reaches
//!    the other hosts and PostgreSQL): it stops serving at its local
//!    deadline (its log and `/_odo/workers` say so), the others take its
//!    shards at higher epochs; healed, it rejoins and gets its share.
//! 2. `from hosts`: h1 cut off from h0 and h2 (it still reaches etcd): it
//!    keeps its shards and serves them, answers requests for the others'
//!    objects as never delivered (503, retryable), and so do the others
//!    for its objects; healed, requests cross again.
//!
//! Both under load from 9 clients; the ledger checks that nothing
//! acknowledged is lost and no value was acknowledged twice (two live
//! activations of a counter would), and whoami from every host finds one
//! activation of each object after each heal.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use odo_tests::cluster::{self, TestCluster};
use odo_tests::http::HttpClient;
use odo_tests::netns;

use super::load::{Ledger, Load, LoadReport, clients_of, failures, shards_of};
use super::{COUNTERS, counter, one_activation_each};

const ETCD: [&str; 3] = ["e0", "e1", "e2"];

/// The partition scenarios in one cluster in namespaces (or a skip that
/// says why: not root, no `ip`). Whether they ran.
pub(crate) async fn run() -> Result<bool> {
    if !netns::available_or_skip("cluster: partitions") {
        return Ok(false);
    }
    let mut spec = super::spec(3, true);
    // Requests whose owner cannot be reached end here, not at the 30 s
    // default: the load's figures cover the partition, not its timeouts.
    spec.request_timeout_ms = Some(2000);
    let began = Instant::now();
    let mut cluster = TestCluster::start(spec)?;
    let result = scenarios(&mut cluster).await;
    if result.is_err() {
        super::dump_logs(&cluster);
    }
    drop(cluster);
    println!(
        "cluster: partitions: all in {:.1} s (namespaces, etcd, PostgreSQL and hosts made and removed)",
        began.elapsed().as_secs_f64()
    );
    result.map(|()| true)
}

async fn scenarios(cluster: &mut TestCluster) -> Result<()> {
    for i in 0..cluster::NETNS_HOSTS {
        cluster.start_host(i)?;
    }
    let began = Instant::now();
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let net = cluster.network().context("no namespaces")?;
    let (gateway, h1) = (net.gateway(), net.node("h1")?.ip);
    println!(
        "cluster: partitions: 3 etcd members and 3 hosts in namespaces of their own (h1 at {h1}, PostgreSQL at {gateway}), mutual TLS: {} shards placed within {} ms",
        placed.len(),
        began.elapsed().as_millis()
    );
    let mut book = Ledger::default();
    from_etcd(cluster, &mut book).await.context("from etcd")?;
    from_hosts(cluster, &mut book).await.context("from hosts")?;
    Ok(())
}

fn client(cluster: &TestCluster, i: usize) -> Result<HttpClient> {
    Ok(cluster
        .host(i)
        .with_context(|| format!("h{i} is not running"))?
        .client
        .clone())
}

/// What the load saw: requests, acknowledged, failed by answer.
fn tally(reports: &[LoadReport]) -> (usize, usize, BTreeMap<String, usize>) {
    let failed = failures(reports);
    let acked: usize = reports.iter().map(|r| r.acked.len()).sum();
    let requests = acked + failed.values().sum::<usize>();
    (requests, acked, failed)
}

/// Polls `what` every 50 ms until it holds, for at most 30 s.
async fn until<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let began = Instant::now();
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(began.elapsed()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if began.elapsed() > Duration::from_secs(30) {
            bail!("{what}: not within 30 s {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// h1 cut off from every etcd member.
async fn from_etcd(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let via = client(cluster, 0)?;
    let h1 = cluster.host(1).context("h1")?;
    let (h1_client, h1_log) = (h1.client.clone(), h1.log.clone());
    let theirs: BTreeSet<u32> = placed
        .iter()
        .filter(|(_, (o, _))| o == "h1")
        .map(|(s, _)| *s)
        .collect();
    let load = Load::start(clients_of(cluster, &[0, 1, 2]), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    cluster
        .network()
        .context("no namespaces")?
        .cut("h1", &ETCD)?;
    // h1 says it stopped serving: no lease, no shards.
    let stopped = until("h1 stops serving", || {
        let h1 = h1_client.clone();
        async move {
            let answer = h1.get("/_odo/workers").await?;
            let status: serde_json::Value = serde_json::from_slice(&answer.body)?;
            Ok(status["serving"] == false
                && status["lease"].is_null()
                && status["shards"].as_object().is_some_and(|m| m.is_empty()))
        }
    })
    .await?;
    // The others hold its shards at higher epochs, and serve them.
    let (h0, h2) = (client(cluster, 0)?, client(cluster, 2)?);
    until("h1's shards move", || {
        let (h0, h2, theirs, placed) = (h0.clone(), h2.clone(), theirs.clone(), placed.clone());
        async move {
            let mut serving = BTreeMap::new();
            let mut now = BTreeMap::new();
            for (id, h) in [("h0", &h0), ("h2", &h2)] {
                let answer = h.get("/_odo/workers").await?;
                let status: serde_json::Value = serde_json::from_slice(&answer.body)?;
                now = cluster::parse_placement(&status["placement"])?;
                serving.insert(id, status["shards"].clone());
            }
            Ok(theirs.iter().all(|s| {
                now.get(s).is_some_and(|(o, e)| {
                    o != "h1"
                        && *e > placed[s].1
                        && serving
                            .get(o.as_str())
                            .is_some_and(|held| held[s.to_string()].as_u64() == Some(*e))
                })
            }))
        }
    })
    .await?;
    let after_cut = cut_at.elapsed();
    let during = cluster
        .host(0)
        .context("h0")?
        .status()
        .await
        .map(|s| cluster::parse_placement(&s["placement"]))??;
    let log = std::fs::read_to_string(&h1_log).unwrap_or_default();
    ensure!(
        log.contains("within the local deadline"),
        "h1's log does not say it stopped serving at its local deadline"
    );
    // Some load on the new owners, then heal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healed_at = Instant::now();
    cluster.network().context("no namespaces")?.heal()?;
    let placed_after = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let rejoined = healed_at.elapsed();
    let reports = load.finish(book).await?;
    let (total, _) = book.check(&via).await?;
    one_activation_each(cluster).await?;
    let (requests, acked, failed) = tally(&reports);
    println!(
        "cluster: partition from etcd: h1 (shards {theirs:?}) cut off from the 3 etcd members under load from 9 clients (3 entering at h1): h1 stopped serving {} ms after the cut (lease TTL 3 s, local deadline 2 s; its log and /_odo/workers say so), its shards served elsewhere at higher epochs {} ms after the cut ({}); healed, h1 back in the placement within {} ms holding {} shards; {requests} requests, {acked} acknowledged, failed {failed:?}; {total} increments acknowledged in all, lost 0, double activations 0 (no value acknowledged twice, whoami from every host: one activation each)",
        stopped.as_millis(),
        after_cut.as_millis(),
        theirs
            .iter()
            .map(|s| format!("{s}: h1@{} -> {}@{}", placed[s].1, during[s].0, during[s].1))
            .collect::<Vec<_>>()
            .join(", "),
        rejoined.as_millis(),
        placed_after.values().filter(|(o, _)| o == "h1").count(),
    );
    Ok(())
}

/// Whether an answer says "never delivered, safe to send again".
fn never_delivered(answer: &odo_tests::http::Answer) -> bool {
    matches!(answer.status, 503 | 504) && answer.header("x-odo-retryable") == ["true"]
}

/// Reads each counter through its entry: (status and error kind, whether
/// it was answered as never delivered).
async fn cross(crossing: &[(HttpClient, &str, usize)]) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for (entry, _, c) in crossing {
        let answer = entry.get(&counter(*c)).await?;
        let kind = format!(
            "{} {}{}",
            answer.status,
            answer.header("x-odo-error").join(","),
            if answer.header("x-odo-retryable") == ["true"] {
                " retryable"
            } else {
                ""
            }
        );
        out.push((kind, never_delivered(&answer)));
    }
    Ok(out)
}

/// h1 cut off from h0 and h2; it still reaches etcd and PostgreSQL.
async fn from_hosts(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let via = client(cluster, 0)?;
    let h1 = client(cluster, 1)?;
    let shards = shards_of(&via).await?;
    let (own, others): (Vec<usize>, Vec<usize>) =
        (0..COUNTERS).partition(|c| placed[&shards[c]].0 == "h1");
    ensure!(
        !own.is_empty() && !others.is_empty(),
        "counters on h1: {own:?}, elsewhere: {others:?}"
    );
    let load = Load::start(clients_of(cluster, &[0, 1, 2]), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cut_at = Instant::now();
    cluster
        .network()
        .context("no namespaces")?
        .cut("h1", &["h0", "h2"])?;
    // h1 serves its own objects.
    let mut own_acked = 0;
    for c in &own {
        let answer = h1.post(&format!("{}/increment", counter(*c))).await?;
        ensure!(
            answer.status == 200,
            "c{c} (h1's own) via h1 during the partition: {} {}",
            answer.status,
            answer.text()
        );
        book.acked
            .entry(*c)
            .or_default()
            .push(answer.text().parse()?);
        own_acked += 1;
    }
    // The others' objects through h1, and h1's through h0. A request sent
    // on a connection that went silent ends at its deadline, outcome
    // unknown (504, not retryable): it may have arrived. Once the kernel
    // gives such a connection up (data unacknowledged past the
    // transport's TCP user timeout, 5 s), the next request finds no route
    // and is answered as never delivered; from then on, all are.
    // One each way: a never-delivered answer comes at the deadline (2 s),
    // once the router has given up waiting for a reachable owner.
    let crossing = vec![(h1.clone(), "h1", others[0]), (via.clone(), "h0", own[0])];
    let mut before: BTreeMap<String, usize> = BTreeMap::new();
    let all_undelivered = |answers: &[(String, bool)]| answers.iter().all(|(_, n)| *n);
    // From when on every request sent across was answered as never
    // delivered (the start of the first such round).
    let detected = loop {
        let sent = cut_at.elapsed();
        let answers = cross(&crossing).await?;
        if all_undelivered(&answers) {
            break sent;
        }
        for (kind, _) in answers {
            *before.entry(kind).or_default() += 1;
        }
        ensure!(
            cut_at.elapsed() < Duration::from_secs(30),
            "requests across the cut were not answered as never delivered within 30 s: {before:?}"
        );
    };
    let answers = cross(&crossing).await?;
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, _) in &answers {
        *after.entry(kind.clone()).or_default() += 1;
    }
    ensure!(
        all_undelivered(&answers),
        "across the cut, after the links were given up: {after:?}"
    );
    // h1 still holds its lease and its shards at the same epochs.
    let status = cluster.host(1).context("h1")?.status().await?;
    let kept = own
        .iter()
        .map(|c| shards[c])
        .collect::<BTreeSet<u32>>()
        .iter()
        .all(|s| status["shards"][s.to_string()].as_u64() == Some(placed[s].1));
    ensure!(
        status["serving"] == true && kept,
        "h1 during the partition: {status}"
    );
    let partitioned_for = cut_at.elapsed();
    cluster.network().context("no namespaces")?.heal()?;
    // Requests cross again: every other object through h1, h1's through
    // h0.
    let crossing_again = crossing.clone();
    let recovered = until("requests cross the healed link", || {
        let crossing = crossing_again.clone();
        async move {
            for (entry, _, c) in &crossing {
                if entry.get(&counter(*c)).await?.status != 200 {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })
    .await?;
    let placed_after = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let reports = load.finish(book).await?;
    let (total, _) = book.check(&via).await?;
    one_activation_each(cluster).await?;
    let moved = placed_after
        .iter()
        .filter(|(s, owner)| placed[*s] != **owner)
        .count();
    let (requests, acked, failed) = tally(&reports);
    println!(
        "cluster: partition from hosts: h1 cut off from h0 and h2 for {} ms under load from 9 clients (it still reaches etcd and PostgreSQL): h1 kept its lease and its {} shards at the same epochs and served its own objects ({own_acked} of {own_acked} increments through h1 acknowledged); requests across the cut (h1 to the others' objects, h0 to h1's): before the silent connections were given up {before:?}, then every one sent from {} ms after the cut answered as never delivered ({after:?}); healed, requests crossed again within {} ms; shards moved: {moved}; {requests} requests, {acked} acknowledged, failed {failed:?}; {total} increments acknowledged in all, lost 0, double activations 0",
        partitioned_for.as_millis(),
        placed.values().filter(|(o, _)| o == "h1").count(),
        detected.as_millis(),
        recovered.as_millis(),
    );
    Ok(())
}
