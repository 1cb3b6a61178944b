//! odo across machines, tested with real processes: a 3-member etcd
//! cluster, PostgreSQL, and odo hosts (each its own process on a loopback
//! address of its own), run by `cargo xtask test-cluster` (not by `cargo
//! test`: it needs etcd and PostgreSQL, which xtask installs).
//!
//! Scenarios, in one cluster, each printing its figures:
//! 1. `placement`: every shard has one owner; requests entering at any
//!    host reach it (whoami shows the same process and activation from
//!    every host; increments through every host add up).
//! 2. `failover`: SIGKILL one host under load: its shards move, nothing
//!    acknowledged is lost, no two acknowledged increments of a counter
//!    saw the same value; time from the kill to the first durable write on
//!    the new owner.
//! 3. `join`: the killed host comes back and gets its share.
//! 3b. `room` (module `room`): a chat room whose members enter at every
//!    host; the host holding the room is SIGKILLed while they talk: the
//!    other sockets stay open at their doors, the room moves, messages
//!    are stored and delivered once, in order (then the host comes back).
//! 4. `zombie`: SIGSTOP a host past its lease under load, then SIGCONT:
//!    its shards moved at a newer epoch meanwhile; its late commits are
//!    refused by PostgreSQL's fence (its log says so), nothing it answered
//!    after losing the lease is missing, no double activation.
//! 5. `leave`: a host leaves gracefully (SIGTERM) under load entering at
//!    the others: its shards move with draining, no request fails.
//! 6. `infrastructure`: SIGKILL the etcd leader, then restart PostgreSQL,
//!    under load: service resumes, nothing acknowledged is lost.
//!
//! Then `fjall`: a cluster whose hosts keep shards on their own disks:
//! a killed host's shards do not move (requests for them are answered as
//! never delivered, 503 or a retryable 504, at their deadline) and come
//! back, data intact, with the host.
//!
//! And `tls`: a second cluster with TLS everywhere (a test CA: etcd
//! requires client certificates, PostgreSQL over TCP with verify-full,
//! hosts talk TLS to each other): placement and forwarding, and a room's
//! broadcasts to the doors of both hosts.
//!
//! And `netns` (module `partition`): a cluster whose etcd members and
//! hosts each run in a network namespace of their own, partitioned from
//! etcd and from each other (root needed; it says why when it skips).
//! The scenarios above stay on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use odo_tests::cluster::{self, ClusterSpec, TestCluster};
use odo_tests::http::HttpClient;
use odo_tests::topology::{Signal, signal, stop_process};

#[path = "cluster/load.rs"]
mod load;
#[path = "cluster/partition.rs"]
mod partition;
#[path = "cluster/room.rs"]
mod room;

use load::{Ledger, Load, clients_of, failures, shards_of};

const COUNTERS: usize = 24;

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
        // ODO_CLUSTER_ONLY=plain|tls|fjall|netns runs one cluster's
        // scenarios.
        let only = std::env::var("ODO_CLUSTER_ONLY").ok();
        let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
        if runs("plain") {
            plain().await.context("the plain cluster")?;
        }
        if runs("tls") {
            tls().await.context("the TLS cluster")?;
        }
        if runs("fjall") {
            fjall().await.context("the fjall cluster")?;
        }
        if runs("netns") {
            partition::run()
                .await
                .context("the cluster in network namespaces")?;
        }
        Ok::<(), anyhow::Error>(())
    });
    match result {
        Ok(()) => {
            println!(
                "cluster: all scenarios passed in {:.0} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cluster: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn spec(tls: bool, etcd_members: usize) -> ClusterSpec {
    ClusterSpec {
        binary: env!("CARGO_BIN_EXE_odo-test-server").into(),
        etcd_members,
        shards: 8,
        lease_ttl_s: 3,
        tls,
        storage: "postgres".into(),
        request_timeout_ms: None,
        netns: false,
    }
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

async fn plain() -> Result<()> {
    let mut cluster = TestCluster::start(spec(false, 3))?;
    let result = plain_scenarios(&mut cluster).await;
    if result.is_err() {
        dump_logs(&cluster);
    }
    result
}

async fn plain_scenarios(cluster: &mut TestCluster) -> Result<()> {
    for i in 0..3 {
        cluster.start_host(i)?;
    }
    placement(cluster).await.context("placement")?;
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
    infrastructure(cluster, &mut book)
        .await
        .context("etcd leader and PostgreSQL restart")?;
    Ok(())
}

/// Which etcd member leads, from its metrics (`etcd_server_is_leader 1`).
async fn etcd_leader(cluster: &TestCluster) -> Result<usize> {
    for (i, member) in cluster.etcd.iter().enumerate() {
        // A member that is down does not answer: ask the others.
        let asked = HttpClient::new(&format!("http://{}", member.spec.client()))
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

/// TLS everywhere: one etcd member requiring client certificates,
/// PostgreSQL over TCP with verify-full, two hosts talking TLS.
async fn tls() -> Result<()> {
    let mut cluster = TestCluster::start(spec(true, 1))?;
    let result = async {
        cluster.start_host(0)?;
        cluster.start_host(1)?;
        let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
        let mut forwarded = 0;
        for i in 0..8 {
            for host in cluster.live() {
                let answer = host.client.post(&format!("{}/increment", counter(i))).await?;
                ensure!(answer.status == 200, "increment via {}: {}", host.id, answer.status);
                let who = host.client.get(&format!("{}/whoami", counter(i))).await?;
                let who: serde_json::Value = serde_json::from_slice(&who.body)?;
                if who["pid"].as_u64() != Some(u64::from(host.server.pid)) {
                    forwarded += 1;
                }
            }
            for host in cluster.live() {
                let answer = host.client.get(&counter(i)).await?;
                ensure!(answer.text() == "2", "c{i} via {} reads {}", host.id, answer.text());
            }
        }
        ensure!(forwarded > 0, "no request was forwarded between the hosts");
        let lines = room::one_room_at_every_host(&cluster).await.context("a room")?;
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
            "cluster: tls: etcd with client certificates, PostgreSQL over TLS with client certificates, 2 hosts over mutual TLS: {} shards placed, {forwarded} of 16 whoami forwarded between hosts, increments add up; a room with a member at each host: {lines} lines delivered, each to both; plain text to a host's transport port is refused (its log says so)",
            placed.len()
        );
        Ok(())
    }
    .await;
    if result.is_err() {
        dump_logs(&cluster);
    }
    result
}

/// Storage on the hosts: a shard stays with its host, unavailable while
/// the host is down, back with its data when the host is.
async fn fjall() -> Result<()> {
    let mut spec = spec(false, 1);
    spec.storage = "fjall".into();
    spec.request_timeout_ms = Some(1500);
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
    let elsewhere = (0..COUNTERS).find(|c| !on_victim.contains(c));
    let (down, up) = (on_victim.first().copied(), elsewhere);
    if let Some(c) = down {
        let answer = via.get(&counter(c)).await?;
        // Never delivered, so safe to send again: 503, or 504 when the
        // deadline ran out while the router waited for an owner (both
        // marked retryable; which one depends on where the wait ends).
        ensure!(
            matches!(answer.status, 503 | 504) && answer.header("x-odo-retryable") == ["true"],
            "c{c} on the downed host: {} {:?}",
            answer.status,
            answer.headers
        );
    }
    if let Some(c) = up {
        let answer = via.get(&counter(c)).await?;
        ensure!(
            answer.text() == "1",
            "c{c} on the survivor: {}",
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
        "cluster: fjall: 2 hosts with storage on each: /_odo/workers says shards stay with their host; {victim_id} (SIGKILL, {} shards) left its shards unowned and assigned to it ({} ms after the kill), a request for one of its objects answered as never delivered (503 or 504, retryable) at its deadline, {} objects on {survivor_id} served meanwhile; restarted on its data directory it serves the same shards within {} ms, all {COUNTERS} counters intact",
        count(&victim_id),
        orphaned_after.as_millis(),
        COUNTERS - on_victim.len(),
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
