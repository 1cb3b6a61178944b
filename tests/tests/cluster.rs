//! odo across machines, tested with real processes: a 3-member etcd
//! cluster, PostgreSQL, and odo hosts, each etcd member and each host in a
//! Linux network namespace of its own, joined by a bridge, addresses from
//! 198.18.0.0/24 (a /28 per run; `odo_tests::netns`), PostgreSQL on the
//! bridge's address, all made and removed by the test; run by `cargo
//! xtask test-cluster` (not by `cargo test`: it needs etcd and
//! PostgreSQL, which xtask installs, and root for the namespaces).
//!
//! Traffic beyond loopback is never plain text in odo, so every cluster
//! here has TLS everywhere: a test CA signs a certificate for each etcd
//! member (which require client certificates), for PostgreSQL (reached
//! over TCP, certificate authentication) and for each host (mutual TLS
//! between hosts). Signals go to the host process itself: `ip netns exec`
//! execs, so the pid the test holds is the host's (`placement` checks
//! that every pid whoami names is one the test holds), and an etcd
//! member killed in its namespace frees its fixed ports for its restart.
//!
//! Three parts, each a cluster of its own, run in this order;
//! `ODO_CLUSTER_ONLY=hosts|fjall|partition` runs one (the older names
//! `plain` and `tls` mean `hosts`, `netns` means `partition`).
//!
//! `hosts`: 3 etcd members, 3 hosts on PostgreSQL, 8 shards:
//! 1. `placement`: every shard has one owner; requests entering at any
//!    host reach it (whoami shows the same process and activation from
//!    every host, some forwarded between hosts; increments through every
//!    host add up).
//! 2. `tls`: a room with one member at each host (each line reaches the
//!    doors of every host), and plain text to a host's transport port is
//!    refused and logged.
//! 3. `failover`: SIGKILL one host under load: its shards move, nothing
//!    acknowledged is lost, no two acknowledged increments of a counter
//!    saw the same value; time from the kill to the first durable write on
//!    the new owner.
//! 4. `join`: the killed host comes back and gets its share.
//! 5. `room` (module `room`): a chat room whose members enter at every
//!    host; the host holding the room is SIGKILLed while they talk: the
//!    other sockets stay open at their doors, the room moves, messages
//!    are stored and delivered once, in order (then the host comes back).
//! 6. `zombie`: SIGSTOP a host past its lease under load, then SIGCONT:
//!    its shards moved at a newer epoch meanwhile; its late commits are
//!    refused by PostgreSQL's fence (its log says so), nothing it answered
//!    after losing the lease is missing, no double activation.
//! 7. `leave`: a host leaves gracefully (SIGTERM) under load entering at
//!    the others: its shards move with draining, no request fails; then
//!    that host, started again without its TLS files, refuses to start
//!    (plain text beyond loopback; skipped on loopback, where odo allows
//!    it).
//! 8. `infrastructure`: SIGKILL the etcd leader (found from the members'
//!    `/metrics`, served in plain HTTP on a port of their own: the client
//!    port wants a client certificate), then restart PostgreSQL on the
//!    bridge's address, under load: service resumes, nothing acknowledged
//!    is lost.
//!
//! `fjall`: 1 etcd member and 2 hosts keeping shards on their own disks,
//! both expected before the first placement (`--cluster-expected-hosts
//! 2`), so each holds shards: a killed host's shards do not move
//! (requests for them are answered as never delivered, 503 or a
//! retryable 504, at their deadline) while every object on the other host
//! is served, and come back, data intact, with the host.
//!
//! `partition` (module `partition`): 3 etcd members and 3 hosts, one host
//! cut off from etcd, then from the other hosts, by blackhole routes in
//! the namespaces. It needs the namespaces themselves.
//!
//! Without root or `ip` (a developer's machine): `hosts` and `fjall` run
//! the same scenarios on loopback addresses instead (hosts on 127.0.1.N,
//! etcd on 127.0.2.N, PostgreSQL on 127.0.3.1, still with TLS), saying so
//! and why; `partition` skips, saying why. `cargo xtask test-cluster` as
//! root sets `ODO_REQUIRE_NETNS`, with which a missing namespace fails the
//! run instead (CI runs as root).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use odo_tests::cluster::{self, ClusterSpec, TestCluster};
use odo_tests::http::HttpClient;
use odo_tests::netns;
use odo_tests::topology::{Signal, signal, stop_process};

#[path = "cluster/load.rs"]
mod load;
#[path = "cluster/partition.rs"]
mod partition;
#[path = "cluster/room.rs"]
mod room;

use load::{Ledger, Load, clients_of, failures, shards_of};

const COUNTERS: usize = 24;

/// The parts of the run, as `ODO_CLUSTER_ONLY` names them, in order.
const PARTS: [&str; 3] = ["hosts", "fjall", "partition"];

/// The part `ODO_CLUSTER_ONLY` names (the names before the hosts cluster
/// moved into namespaces still work: `plain` and `tls` are `hosts` now,
/// `netns` is `partition`), or every part.
fn parts() -> Result<Vec<&'static str>> {
    let Ok(only) = std::env::var("ODO_CLUSTER_ONLY") else {
        return Ok(PARTS.to_vec());
    };
    let part = match only.as_str() {
        "plain" | "tls" => "hosts",
        "netns" => "partition",
        other => other,
    };
    match PARTS.iter().find(|p| **p == part) {
        Some(p) => Ok(vec![*p]),
        None => bail!("ODO_CLUSTER_ONLY={only}: not one of {}", PARTS.join(", ")),
    }
}

fn main() -> ExitCode {
    if !cluster::available_or_skip("cluster") {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let result = runtime.block_on(async {
        let mut skipped = Vec::new();
        for part in parts()? {
            let began = Instant::now();
            let ran = match part {
                "hosts" => hosts().await.context("the hosts cluster").map(|()| true)?,
                "fjall" => fjall().await.context("the fjall cluster").map(|()| true)?,
                _ => partition::run().await.context("the partitioned cluster")?,
            };
            if ran {
                println!(
                    "cluster: {part}: passed in {:.1} s",
                    began.elapsed().as_secs_f64()
                );
            } else {
                skipped.push(part);
            }
        }
        Ok::<_, anyhow::Error>(skipped)
    });
    match result {
        Ok(skipped) => {
            let all = if skipped.is_empty() {
                "all scenarios passed".to_owned()
            } else {
                format!("passed, {} skipped,", skipped.join(" and "))
            };
            println!("cluster: {all} in {:.0} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cluster: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// TLS everywhere (a test CA: etcd requires client certificates,
/// PostgreSQL certificate authentication, mutual TLS between hosts); in
/// network namespaces when `netns` (odo talks plain text on loopback
/// only, so a cluster in namespaces needs TLS; on loopback it is kept so
/// that both run the same checks).
fn spec(etcd_members: usize, netns: bool) -> ClusterSpec {
    ClusterSpec {
        binary: env!("CARGO_BIN_EXE_odo-test-server").into(),
        etcd_members,
        shards: 8,
        lease_ttl_s: 3,
        tls: true,
        storage: "postgres".into(),
        request_timeout_ms: None,
        expected_hosts: None,
        netns,
    }
}

/// Says where `cluster`'s hosts, etcd members and PostgreSQL run.
fn whereabouts(cluster: &TestCluster) -> String {
    let hosts: Vec<String> = cluster.live().map(|h| h.ip.to_string()).collect();
    let etcd: Vec<&str> = cluster.etcd.iter().map(|m| m.spec.ip.as_str()).collect();
    let (place, bridge) = if cluster.has_network() {
        (
            "in network namespaces of their own on a bridge",
            " (the bridge)",
        )
    } else {
        ("on loopback addresses", "")
    };
    format!(
        "{place}: hosts at {}, etcd at {}, PostgreSQL at {}{bridge}",
        hosts.join(", "),
        etcd.join(", "),
        cluster.pg_host(),
    )
}

fn counter(i: usize) -> String {
    format!("/counter/c{i}")
}

/// Prints the logs of every host (on failure).
fn dump_logs(cluster: &TestCluster) {
    for entry in std::fs::read_dir(cluster.dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            eprintln!("----- {}", path.display());
            eprintln!("{}", std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

async fn hosts() -> Result<()> {
    let netns = netns::available_or_loopback("cluster: hosts");
    let mut cluster = TestCluster::start(spec(3, netns))?;
    let result = hosts_scenarios(&mut cluster).await;
    if result.is_err() {
        dump_logs(&cluster);
    }
    result
}

async fn hosts_scenarios(cluster: &mut TestCluster) -> Result<()> {
    for i in 0..3 {
        cluster.start_host(i)?;
    }
    println!(
        "cluster: hosts: 3 etcd members and 3 hosts {}",
        whereabouts(cluster)
    );
    placement(cluster).await.context("placement")?;
    tls(cluster).await.context("TLS")?;
    sqlite_refused(cluster)
        .await
        .context("SQLite-backed objects")?;
    let mut book = Ledger::default();
    failover(cluster, &mut book).await.context("failover")?;
    join(cluster).await.context("join")?;
    room::room(cluster)
        .await
        .context("a room across hosts, its host killed")?;
    steady_etcd_links(cluster)?;
    zombie(cluster, &mut book).await.context("zombie")?;
    leave(cluster, &mut book).await.context("leave")?;
    plain_text_beyond_loopback(cluster).context("a host without TLS")?;
    infrastructure(cluster, &mut book)
        .await
        .context("etcd leader and PostgreSQL restart")?;
    Ok(())
}

/// Beyond loopback odo never talks plain text: h0 (gone since `leave`),
/// started again in its namespace without its TLS files, refuses to
/// start and says why. On loopback odo may talk plain text (one machine),
/// so there this check does not apply and is skipped.
fn plain_text_beyond_loopback(cluster: &mut TestCluster) -> Result<()> {
    if !cluster.has_network() {
        println!(
            "cluster: plain text beyond loopback: not checked on loopback, where odo allows it"
        );
        return Ok(());
    }
    ensure!(cluster.host(0).is_none(), "h0 is still running");
    let Err(e) = cluster.start_host_without_tls(0) else {
        bail!("h0 started without TLS on a bridge address");
    };
    let said = format!("{e:#}");
    let why = said
        .lines()
        .find(|l| l.contains("never plain text"))
        .with_context(|| format!("h0 did not say why it refused: {said}"))?;
    println!(
        "cluster: plain text beyond loopback: h0 without its TLS files refuses to start: {}",
        why.trim()
    );
    Ok(())
}

/// Which etcd member leads, from its metrics (`etcd_server_is_leader 1`).
async fn etcd_leader(cluster: &TestCluster) -> Result<usize> {
    for (i, member) in cluster.etcd.iter().enumerate() {
        // A member that is down does not answer: ask the others.
        let asked = HttpClient::new(&member.spec.metrics_url())
            .get("/metrics")
            .await;
        let Ok(metrics) = asked else { continue };
        if metrics
            .text()
            .lines()
            .any(|l| l == "etcd_server_is_leader 1")
        {
            return Ok(i);
        }
    }
    bail!("no etcd member says it leads")
}

/// Under load entering at hosts 1 and 2: SIGKILL the etcd leader (the
/// others elect another; the hosts' leases hold), bring it back; then
/// restart PostgreSQL (commits fail while it is down, then resume).
/// Nothing acknowledged is lost.
async fn infrastructure(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    let client = cluster.host(1).context("h1")?.client.clone();
    let load = Load::start(clients_of(cluster, &[1, 2]), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = etcd_leader(cluster).await?;
    let killed_at = Instant::now();
    cluster.etcd[leader].kill();
    // Another member leads, and the hosts still serve every shard.
    let give_up = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Ok(i) = etcd_leader(cluster).await
            && i != leader
        {
            break i;
        }
        ensure!(Instant::now() < give_up, "no new etcd leader within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elected = killed_at.elapsed();
    cluster.wait_placed(Duration::from_secs(30), true).await?;
    cluster.etcd[leader].restart()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // PostgreSQL goes away and comes back on its data directory.
    let stopped_at = Instant::now();
    cluster.postgres.stop()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.postgres.start_again()?;
    let restarted = Instant::now();
    // Service resumes: a write through each host is acknowledged.
    let give_up = Instant::now() + Duration::from_secs(30);
    for host in [1, 2] {
        let h = cluster.host(host).context("a host")?.client.clone();
        loop {
            let answer = h.post(&format!("{}/increment", counter(0))).await?;
            if answer.status == 200 {
                if let Ok(n) = answer.text().parse() {
                    book.acked.entry(0).or_default().push(n);
                }
                break;
            }
            ensure!(
                Instant::now() < give_up,
                "no write through h{host} within 30 s of PostgreSQL's restart: {}",
                answer.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let resumed = restarted.elapsed();
    let reports = load.finish(book).await?;
    cluster.wait_placed(Duration::from_secs(30), true).await?;
    let (acked, _) = book.check(&client).await?;
    let pg_down: BTreeMap<u16, usize> = reports
        .iter()
        .flat_map(|r| r.after.iter())
        .filter(|(_, at)| *at >= stopped_at && *at <= restarted)
        .fold(BTreeMap::new(), |mut m, (s, _)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    println!(
        "cluster: infrastructure: SIGKILL the etcd leader e{leader} under load from 6 clients: e{new_leader} leads within {} ms, every shard still served; e{leader} rejoins; PostgreSQL stopped and started again: answers while it was down {pg_down:?}, writes through both hosts again {} ms after it was back; failed requests in all {:?}; {acked} increments acknowledged in all, none lost, no value acknowledged twice",
        elected.as_millis(),
        resumed.as_millis(),
        failures(&reports),
    );
    Ok(())
}

/// The placement settles, and every host reaches each object's one
/// activation.
async fn placement(cluster: &mut TestCluster) -> Result<()> {
    let began = Instant::now();
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let settle = began.elapsed();
    // /_odo/workers shows the cluster: this host's lease and shards, the
    // leader, the members, and what storage means for moving shards.
    let status = cluster.host(0).context("h0")?.status().await?;
    ensure!(
        status["serving"] == true && status["lease"].is_i64(),
        "{status}"
    );
    ensure!(
        status["members"].as_array().map(Vec::len) == Some(3),
        "{status}"
    );
    ensure!(status["shards_move"] == true, "{status}");
    ensure!(
        status["note"]
            .as_str()
            .is_some_and(|n| n.contains("moves to another host")),
        "{status}"
    );
    let leaders = {
        let mut n = 0;
        for host in cluster.live() {
            if host.status().await?["leader"] == true {
                n += 1;
            }
        }
        n
    };
    ensure!(leaders == 1, "{leaders} hosts say they lead");
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for (owner, _) in placed.values() {
        *per_host.entry(owner).or_default() += 1;
    }
    let forwarded = one_activation_each(cluster).await?;
    ensure!(forwarded > 0, "no request was forwarded between the hosts");
    for i in 0..COUNTERS {
        for host in cluster.live() {
            let answer = host
                .client
                .post(&format!("{}/increment", counter(i)))
                .await?;
            ensure!(
                answer.status == 200,
                "increment via {}: {}",
                host.id,
                answer.status
            );
        }
        for host in cluster.live() {
            let answer = host.client.get(&counter(i)).await?;
            ensure!(
                answer.text() == "3",
                "c{i} via {} reads {}",
                host.id,
                answer.text()
            );
        }
    }
    println!(
        "cluster: placement: 3 hosts, 8 shards settled in {} ms as {per_host:?}; {COUNTERS} counters, whoami from every host: 1 activation each ({forwarded} of {} requests forwarded); 3 increments each through 3 hosts add up",
        settle.as_millis(),
        COUNTERS * 3
    );
    Ok(())
}

/// Every counter, entering at every host, shows one activation (one pid,
/// that of a running host, and one activation id). Returns how many of
/// those answers came from another host than the one entered at.
async fn one_activation_each(cluster: &TestCluster) -> Result<usize> {
    let pids: BTreeSet<u32> = cluster.live().map(|h| h.server.pid).collect();
    let mut forwarded = 0;
    for i in 0..COUNTERS {
        let mut seen = BTreeSet::new();
        for host in cluster.live() {
            let answer = host.client.get(&format!("{}/whoami", counter(i))).await?;
            ensure!(
                answer.status == 200,
                "whoami c{i} via {}: {}",
                host.id,
                answer.status
            );
            let who: serde_json::Value = serde_json::from_slice(&answer.body)?;
            let pid = who["pid"].as_u64().context("pid")? as u32;
            ensure!(pids.contains(&pid), "whoami names pid {pid}, no host");
            if pid != host.server.pid {
                forwarded += 1;
            }
            seen.insert((pid, who["activation"].to_string()));
        }
        ensure!(
            seen.len() == 1,
            "counter c{i}: {} activations seen: {seen:?}",
            seen.len()
        );
    }
    Ok(forwarded)
}

/// SIGKILL host 2 under load entering at hosts 0 and 1.
async fn failover(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let client = cluster.host(0).context("h0")?.client.clone();
    let shards = shards_of(&client).await?;
    let victim_shards: BTreeSet<u32> = placed
        .iter()
        .filter(|(_, (o, _))| o == "h2")
        .map(|(s, _)| *s)
        .collect();
    let victims: BTreeSet<usize> = shards
        .iter()
        .filter(|(_, s)| victim_shards.contains(s))
        .map(|(c, _)| *c)
        .collect();
    ensure!(
        !victims.is_empty(),
        "no counter on h2's shards {victim_shards:?}"
    );
    let load = Load::start(clients_of(cluster, &[0, 1]), 4);
    // Some load before the kill.
    wait_acks(&load, 200).await;
    let killed_at = Instant::now();
    cluster.kill_host(2)?;
    let placed_after = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let moved_within = killed_at.elapsed();
    // Let the load reach the moved shards.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = load.finish(book).await?;
    let first_write = reports
        .iter()
        .flat_map(|r| r.acked.iter())
        .filter(|(c, _, sent, _)| victims.contains(c) && *sent > killed_at)
        .map(|(_, _, _, at)| at.duration_since(killed_at))
        .min()
        .context("no write on a moved shard after the kill")?;
    for shard in &victim_shards {
        let (old, new) = (&placed[shard], &placed_after[shard]);
        ensure!(
            new.0 != "h2" && new.1 > old.1,
            "shard {shard}: {old:?} -> {new:?}"
        );
    }
    let (acked, _) = book.check(&client).await?;
    println!(
        "cluster: failover: SIGKILL h2 (shards {victim_shards:?}) under load from 8 clients at h0, h1: shards moved at higher epochs within {} ms; first durable write on a moved shard {} ms after the kill (lease TTL 3 s); {acked} increments acknowledged so far, none lost, no value acknowledged twice; failed requests during the move: {:?}",
        moved_within.as_millis(),
        first_write.as_millis(),
        failures(&reports),
    );
    Ok(())
}

async fn wait_acks(load: &Load, _n: usize) {
    // The load runs in its tasks; a short while is enough to have some in
    // flight (nothing is asserted on it).
    let _ = load;
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// Host 2 comes back: it gets its share again.
async fn join(cluster: &mut TestCluster) -> Result<()> {
    let began = Instant::now();
    cluster.start_host(2)?;
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let n = placed.values().filter(|(o, _)| o == "h2").count();
    println!(
        "cluster: join: h2 back, holds {n} shards within {} ms",
        began.elapsed().as_millis()
    );
    Ok(())
}

/// SIGSTOP host 1 past its lease under load, then SIGCONT.
async fn zombie(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let client = cluster.host(0).context("h0")?.client.clone();
    let zombie = cluster.host(1).context("h1")?;
    let zombie_pid = zombie.server.pid;
    let zombie_log = zombie.log.clone();
    let fenced_before = count_fenced(&zombie_log);
    let zombie_shards: BTreeSet<u32> = placed
        .iter()
        .filter(|(_, (o, _))| o == "h1")
        .map(|(s, _)| *s)
        .collect();
    // A probe object on h1's shards, whose slow turn (a write, 1.5 s of
    // sleep, a write) is in progress on h1 when h1 is stopped: its commit
    // comes after the pause, at the old epoch.
    let mut probe = None;
    for i in 0..256 {
        let answer = client.get(&format!("/_odo/placement/probe/z{i}")).await?;
        let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
        let shard = v["shard"].as_u64().context("shard")? as u32;
        if zombie_shards.contains(&shard) {
            probe = Some(format!("/probe/z{i}"));
            break;
        }
    }
    let probe = probe.context("no probe name on h1's shards")?;
    let load = Load::start(clients_of(cluster, &[0, 1, 2]), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow = {
        let h1 = zombie.client.clone();
        let path = format!("{probe}/slow?ms=1500");
        tokio::spawn(async move { h1.post(&path).await })
    };
    // Well inside its sleep (bounded: the turn's first write shows).
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_process(zombie_pid).await?;
    let stopped_at = Instant::now();
    // The others take its shards at newer epochs, and serve them (they
    // claimed them in PostgreSQL).
    let give_up = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let mut now = BTreeMap::new();
        let mut serving: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for i in [0, 2] {
            let host = cluster.host(i).context("a host")?;
            let status = host.status().await?;
            now = cluster::parse_placement(&status["placement"])?;
            serving.insert(host.id.clone(), status["shards"].clone());
        }
        let done = zombie_shards.iter().all(|s| {
            now.get(s).is_some_and(|(o, e)| {
                o != "h1"
                    && *e > placed[s].1
                    && serving
                        .get(o)
                        .is_some_and(|held| held[s.to_string()].as_u64() == Some(*e))
            })
        });
        if done {
            break now;
        }
        if Instant::now() > give_up {
            let _ = signal(zombie_pid, Signal::Cont);
            bail!("h1's shards did not move within 30 s of SIGSTOP: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved_within = stopped_at.elapsed();
    // Writes on the new owners while the zombie sleeps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(zombie_pid, Signal::Cont)?;
    let resumed_at = Instant::now();
    let placed_after = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let rejoined = resumed_at.elapsed();
    let reports = load.finish(book).await?;
    let (acked, _) = book.check(&client).await?;
    // The slow turn's commit came after the new owner claimed the shard:
    // refused by the fence, the object reset, nothing of it durable.
    let slow = slow.await??;
    ensure!(
        slow.status != 200,
        "the zombie acknowledged a turn committed after it lost its shard: {} {}",
        slow.status,
        slow.text()
    );
    let durable = client.get(&format!("{probe}/slow")).await?;
    ensure!(
        durable.text() == "0",
        "the zombie's late turn is durable: {}",
        durable.text()
    );
    let fenced = count_fenced(&zombie_log) - fenced_before;
    ensure!(
        fenced > 0,
        "no commit of the zombie was refused by the fence"
    );
    let zombie_answers: BTreeMap<u16, usize> = reports
        .iter()
        .filter(|r| r.entry == "h1")
        .flat_map(|r| r.after.iter())
        .filter(|(_, at)| *at >= resumed_at)
        .fold(BTreeMap::new(), |mut m, (s, _)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    let gave_up = std::fs::read_to_string(&zombie_log)
        .unwrap_or_default()
        .contains("lease not renewed within the local deadline");
    ensure!(
        gave_up,
        "h1 did not say it stopped serving at its local deadline"
    );
    println!(
        "cluster: zombie: SIGSTOP h1 (shards {zombie_shards:?}) under load from 9 clients: its shards moved at higher epochs within {} ms ({:?}); SIGCONT after that: h1 stopped serving at its local deadline (its log says so), {fenced} of its late commits refused by the fence (among them a turn in progress at SIGSTOP: answered {}, nothing of it durable), answers entering at h1 after SIGCONT {zombie_answers:?}; back in the placement within {} ms ({} shards); {acked} increments acknowledged so far, none lost, no value acknowledged twice",
        moved_within.as_millis(),
        zombie_shards
            .iter()
            .map(|s| (s, &moved[s].0))
            .collect::<Vec<_>>(),
        slow.status,
        rejoined.as_millis(),
        placed_after.values().filter(|(o, _)| o == "h1").count(),
    );
    Ok(())
}

/// Opens a plain TCP connection to `addr`, sends what an odo client would
/// send in clear, and says whether the server closed it without a word.
async fn plain_text_refused(addr: std::net::SocketAddr) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    // Not a TLS ClientHello: a server speaking TLS gives up on it.
    let _ = tcp.write_all(b"\x00\x00\x00\x10odo hello, plain").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .context("the host neither answered nor closed within 10 s")?;
    Ok(match read {
        Ok(0) | Err(_) => true,
        // A TLS alert is all a TLS server may say; no odo frame.
        Ok(n) => buf[0] == 0x15 && n <= 7,
    })
}

fn count_fenced(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("is fenced"))
        .count()
}

/// Host 0 leaves gracefully under load entering at hosts 1 and 2.
async fn leave(cluster: &mut TestCluster, book: &mut Ledger) -> Result<()> {
    cluster.wait_placed(Duration::from_secs(30), true).await?;
    let client = cluster.host(1).context("h1")?.client.clone();
    let load = Load::start(clients_of(cluster, &[1, 2]), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let status = cluster.stop_host(0)?;
    let left = began.elapsed();
    ensure!(status.success(), "h0 exited with {status}");
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reports = load.finish(book).await?;
    let (acked, _) = book.check(&client).await?;
    let failed = failures(&reports);
    println!(
        "cluster: leave: SIGTERM h0 under load from 6 clients at h1, h2: left in {} ms, its shards now on {:?}; failed requests {failed:?}; {acked} increments acknowledged in all, none lost, no value acknowledged twice",
        left.as_millis(),
        placed
            .values()
            .fold(BTreeMap::<&str, usize>::new(), |mut m, (o, _)| {
                *m.entry(o).or_default() += 1;
                m
            }),
    );
    ensure!(
        failed.is_empty(),
        "requests failed while h0 left: {failed:?}"
    );
    Ok(())
}

/// What TLS everywhere means between hosts: etcd (client certificates
/// required) and PostgreSQL (certificate authentication) serve the hosts,
/// which talk mutual TLS to each other (placement forwarded requests
/// already); a room's broadcasts reach the doors of every host; plain
/// text to a host's transport port gets no odo answer, and its log says
/// so.
async fn tls(cluster: &TestCluster) -> Result<()> {
    let lines = room::one_room_at_every_host(cluster)
        .await
        .context("a room")?;
    // Plain text to a host's transport port gets no odo answer: the
    // connection fails its TLS handshake and is closed.
    let h0 = cluster.host(0).context("h0")?;
    let refused = plain_text_refused(h0.advertise).await?;
    ensure!(refused, "h0 answered plain text on its transport port");
    // The host closes the socket before it writes its log line.
    let give_up = Instant::now() + Duration::from_secs(10);
    let logged = loop {
        let text = h0.log_text();
        if text.contains("upgrade (TLS) failed") {
            break true;
        }
        if Instant::now() > give_up {
            eprintln!("h0's log: {text}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(logged, "h0 did not log the refused plain-text connection");
    println!(
        "cluster: tls: etcd with client certificates, PostgreSQL over TLS with client certificates, hosts over mutual TLS; a room with a member at each of {} hosts: {lines} lines delivered, each to every member; plain text to {}'s transport port ({}) is refused (its log says so)",
        cluster.live().count(),
        h0.id,
        h0.advertise,
    );
    Ok(())
}

/// Storage on the hosts: a shard stays with its host, unavailable while
/// the host is down, back with its data when the host is.
async fn fjall() -> Result<()> {
    let netns = netns::available_or_loopback("cluster: fjall");
    let mut spec = spec(1, netns);
    spec.storage = "fjall".into();
    spec.request_timeout_ms = Some(1500);
    // fjall's shards never move: without waiting for both hosts, the
    // first one up would keep all of them, and the survivor would hold
    // none.
    spec.expected_hosts = Some(2);
    let mut cluster = TestCluster::start(spec)?;
    let result = fjall_scenario(&mut cluster).await;
    if result.is_err() {
        dump_logs(&cluster);
    }
    result
}

async fn fjall_scenario(cluster: &mut TestCluster) -> Result<()> {
    cluster.start_host(0)?;
    cluster.start_host(1)?;
    println!(
        "cluster: fjall: 1 etcd member and 2 hosts {}",
        whereabouts(cluster)
    );
    let placed = cluster.wait_placed(Duration::from_secs(30), false).await?;
    let status = cluster.host(0).context("h0")?.status().await?;
    ensure!(status["shards_move"] == false, "{status}");
    ensure!(
        status["note"]
            .as_str()
            .is_some_and(|n| n.contains("unavailable while that host is down")),
        "{status}"
    );
    // The host with the most shards goes down; the other one stays.
    let count = |h: &str| placed.values().filter(|(o, _)| o == h).count();
    let (victim, survivor) = if count("h0") >= count("h1") {
        (0, 1)
    } else {
        (1, 0)
    };
    let victim_id = format!("h{victim}");
    let survivor_id = format!("h{survivor}");
    let via = cluster.host(survivor).context("survivor")?.client.clone();
    let shards = shards_of(&via).await?;
    for i in 0..COUNTERS {
        let answer = via.post(&format!("{}/increment", counter(i))).await?;
        ensure!(answer.status == 200, "c{i}: {}", answer.status);
    }
    sqlite_on_its_host(cluster, &via, &placed).await?;
    let killed = Instant::now();
    cluster.kill_host(victim)?;
    // Its lease runs out: its shards have no owner, and stay assigned to it.
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.host(survivor).context("survivor")?.status().await?;
        let orphaned = placed
            .iter()
            .filter(|(_, (o, _))| *o == victim_id)
            .all(|(s, _)| {
                let entry = &status["placement"][s.to_string()];
                entry["owner"].is_null() && entry["assigned"] == victim_id.as_str()
            });
        if orphaned {
            break;
        }
        ensure!(Instant::now() < give_up, "the victim's shards: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_victim: Vec<usize> = shards
        .iter()
        .filter(|(_, s)| placed[s].0 == victim_id)
        .map(|(c, _)| *c)
        .collect();
    let elsewhere: Vec<usize> = (0..COUNTERS).filter(|c| !on_victim.contains(c)).collect();
    // Both hosts were expected before the first placement, so each holds
    // shards (and so objects) of its own.
    ensure!(
        count(&survivor_id) > 0 && !elsewhere.is_empty(),
        "the survivor {survivor_id} holds no shard of {placed:?}"
    );
    let c = *on_victim.first().context("no counter on the killed host")?;
    let answer = via.get(&counter(c)).await?;
    // Never delivered, so safe to send again: 503, or 504 when the
    // deadline ran out while the router waited for an owner (both marked
    // retryable; which one depends on where the wait ends).
    ensure!(
        matches!(answer.status, 503 | 504) && answer.header("x-odo-retryable") == ["true"],
        "c{c} on the downed host: {} {:?}",
        answer.status,
        answer.headers
    );
    for &c in &elsewhere {
        let answer = via.get(&counter(c)).await?;
        ensure!(
            answer.text() == "1",
            "c{c} on the survivor while the other host is down: {} {}",
            answer.status,
            answer.text()
        );
    }
    let orphaned_after = killed.elapsed();
    let restarted = Instant::now();
    cluster.start_host(victim)?;
    let back = cluster.wait_placed(Duration::from_secs(30), false).await?;
    let back_after = restarted.elapsed();
    for (shard, (owner, _)) in &placed {
        ensure!(
            back[shard].0 == *owner,
            "shard {shard} moved: {owner} -> {}",
            back[shard].0
        );
    }
    for i in 0..COUNTERS {
        let answer = via.get(&counter(i)).await?;
        ensure!(
            answer.text() == "1",
            "c{i} after the host came back: {}",
            answer.text()
        );
    }
    println!(
        "cluster: fjall: 2 hosts with storage on each: /_odo/workers says shards stay with their host; {victim_id} (SIGKILL, {} shards) left its shards unowned and assigned to it ({} ms after the kill), a request for one of its objects answered as never delivered (503 or 504, retryable) at its deadline, all {} objects on {survivor_id} ({} shards) served meanwhile; restarted on its data directory it serves the same shards within {} ms, all {COUNTERS} counters intact",
        count(&victim_id),
        orphaned_after.as_millis(),
        elsewhere.len(),
        count(&survivor_id),
        back_after.as_millis(),
    );
    Ok(())
}

/// On fjall, a SQLite-backed object is served, its database file in the
/// data directory of the host that owns it (not a temporary one).
async fn sqlite_on_its_host(
    cluster: &TestCluster,
    via: &HttpClient,
    placed: &BTreeMap<u32, (String, u64)>,
) -> Result<()> {
    for n in 1..=2 {
        let answer = via.post("/sqlcounter/s/increment").await?;
        ensure!(
            answer.status == 200 && answer.text() == n.to_string(),
            "sqlcounter: {} {}",
            answer.status,
            answer.text()
        );
    }
    let placement: serde_json::Value =
        serde_json::from_slice(&via.get("/_odo/placement/sqlcounter/s").await?.body)?;
    let shard = placement["shard"].as_u64().context("shard")? as u32;
    let owner = &placed.get(&shard).context("the shard's owner")?.0;
    let files = std::fs::read_dir(cluster.dir().join(owner).join("sql"))
        .with_context(|| format!("{owner}'s sql directory"))?
        .count();
    ensure!(files > 0, "no database file in {owner}'s data directory");
    Ok(())
}

/// On PostgreSQL, shards move between hosts, and a SQLite-backed object's
/// database files would not: such objects are refused, saying why.
async fn sqlite_refused(cluster: &TestCluster) -> Result<()> {
    let host = cluster.host(0).context("h0")?;
    let answer = host.client.post("/sqlcounter/s/increment").await?;
    ensure!(
        answer.status >= 500
            && answer
                .text()
                .contains("SQLite-backed objects are not served here"),
        "{} {}",
        answer.status,
        answer.text()
    );
    ensure!(
        host.log_text().contains("a SQLite-backed class"),
        "no startup warning in {}'s log",
        host.id
    );
    Ok(())
}

/// Seconds into the cluster's life, with etcd up all along, no host has
/// lost its connection to etcd: a follower's campaign (a stream that lasts
/// as long as the leader) still runs. Pinging etcd more often than its
/// `--grpc-keepalive-min-time` (5 s) made etcd close every host's
/// connection every few seconds, each campaign failing with it.
fn steady_etcd_links(cluster: &TestCluster) -> Result<()> {
    for host in cluster.live() {
        let log = host.log_text();
        let failed = log.matches("campaign failed").count();
        ensure!(failed == 0, "{}: {failed} campaigns failed", host.id);
    }
    Ok(())
}
