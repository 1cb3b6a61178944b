//! The `cluster` benchmark: odo across hosts on this one machine, with the
//! test harness's private etcd and PostgreSQL (`odo_tests::cluster`).
//!
//! In one run, the counter workloads (`hot`: one counter; `spread`: 1,000
//! counters, drawn at random per request), wrk with 32 connections, fsync
//! on everywhere, against:
//! - 1 host with fjall (each host's shards on its own disk);
//! - 1 host with PostgreSQL;
//! - 3 hosts with PostgreSQL, every request entering at a host that owns
//!   its object (`owner`), then at a host that does not (`remote`: one
//!   extra hop over odo's transport to the owner); then the same with TLS
//!   (rustls, the test CA's certificates) between the hosts and to etcd and
//!   PostgreSQL, as odo runs across machines (`tls`: the hosts share one
//!   machine's loopback here, where plain text is allowed);
//! - PostgreSQL alone: 32 clients, one transaction per increment
//!   (`INSERT .. ON CONFLICT DO UPDATE .. RETURNING`), the baseline for
//!   the backend's group commit.
//!
//! Besides requests/s, p50/p99, server CPU per request and memory, it
//! counts what the design costs the shared services, for SCALING.md:
//! PostgreSQL write transactions per increment (from the transaction ids
//! PostgreSQL handed out during a run), and etcd operations (from etcd's
//! own `/metrics`) per second of an idle 3-host cluster (lease renewals)
//! and per shard moved when a host leaves and when it joins.
//!
//! Last, failover (`cluster_failover.rs`): many SIGKILLs of a host, each
//! timed from the kill to the first durable write on the shard's new
//! owner, as p50/p99 against the goal (p99 under 5 s).
//!
//! Needs etcd, PostgreSQL and wrk (`cargo xtask test-cluster` installs the
//! first two, `apt-get install -y wrk` the last); without them it says so
//! and skips. Knobs: `DURATION` (per workload, default `5s`), `KILLS`
//! (failover rounds, default 20), `ODO_BENCH_CLUSTER_RUNS=workloads,failover`
//! (the parts to run).

#[cfg(not(target_os = "linux"))]
pub(crate) fn run() -> anyhow::Result<()> {
    println!("cluster skipped: the cluster harness (etcd, PostgreSQL) runs on Linux only");
    Ok(())
}

#[cfg(target_os = "linux")]
pub(crate) use linux::run;

#[cfg(target_os = "linux")]
pub(crate) mod linux {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use anyhow::{Context as _, Result, bail};
    use odo_tests::cluster::{ClusterSpec, TestCluster, available_or_skip};
    use odo_tests::http::HttpClient;

    use crate::e2e::cpu::{CpuSampler, clock_ticks_per_sec, tree_rss};
    use crate::e2e::servers::{on_path, target_dir, workspace_root};
    use crate::stats::{Latencies, ratio};

    const CONNS: usize = 32;
    const KEYS: usize = 1000;
    const SHARDS: u32 = 16;
    pub(crate) const LEASE_TTL_S: u64 = 3;
    pub(crate) const SETTLE: Duration = Duration::from_secs(60);
    /// The goal for the hop: the p50 of requests entering at a host that
    /// does not own the object, over that of requests entering at the
    /// owner, at most this.
    const HOP_GOAL: f64 = 1.5;
    /// The goal for the backend's group commit: its increments/s over
    /// PostgreSQL's own with one transaction per increment, at least this.
    const GROUP_COMMIT_GOAL: f64 = 3.0;

    /// One workload against one configuration.
    #[derive(Debug, Clone)]
    struct Row {
        config: &'static str,
        load: &'static str,
        rps: f64,
        p50_ms: f64,
        p99_ms: f64,
        ok: u64,
        cpu_us: Option<f64>,
        rss_mb: Option<f64>,
        check: String,
        /// PostgreSQL write transactions during the run.
        pg_xacts: Option<u64>,
    }

    /// Where requests enter, relative to their object's owner.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Entry {
        Owner,
        Remote,
    }

    pub(crate) fn run() -> Result<()> {
        if !available_or_skip("bench cluster") {
            return Ok(());
        }
        // ODO_BENCH_CLUSTER_RUNS=workloads,failover picks the parts.
        let runs =
            std::env::var("ODO_BENCH_CLUSTER_RUNS").unwrap_or_else(|_| "workloads,failover".into());
        let runs: Vec<&str> = runs.split(',').map(str::trim).collect();
        if let Some(unknown) = runs.iter().find(|r| !["workloads", "failover"].contains(r)) {
            bail!("ODO_BENCH_CLUSTER_RUNS: unknown part {unknown:?} (workloads, failover)");
        }
        let workloads_too = runs.contains(&"workloads");
        if workloads_too && !on_path("wrk") {
            println!("cluster skipped: wrk not found (install it: apt-get install -y wrk)");
            return Ok(());
        }
        let duration =
            crate::e2e::parse_duration(&std::env::var("DURATION").unwrap_or_else(|_| "5s".into()))?;
        let duration = Duration::from_secs_f64(duration);
        let binary = test_server_binary(&workspace_root())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        println!(
            "hosts: {} (odo's demo classes) with --cluster, {SHARDS} shards, lease TTL \
             {LEASE_TTL_S} s, 1 etcd member; PostgreSQL and fjall with fsync on; wrk -t2 -c{CONNS}, \
             {} s per workload; hot = 1 counter, spread = {KEYS} counters",
            binary.display(),
            duration.as_secs_f64()
        );
        let mut rows = Vec::new();
        if workloads_too {
            let (c, placed) = runtime.block_on(placed_cluster(&binary, "fjall", 1))?;
            let on_owner = (Entry::Owner, &placed);
            rows.extend(runtime.block_on(workloads(&c, "fjall, 1 host", on_owner, duration))?);
        }
        if workloads_too {
            let (c, placed) = runtime.block_on(placed_cluster(&binary, "postgres", 1))?;
            let on_owner = (Entry::Owner, &placed);
            rows.extend(runtime.block_on(workloads(&c, "pg, 1 host", on_owner, duration))?);
            for load in ["hot", "spread"] {
                rows.push(runtime.block_on(postgres_alone(&c.postgres.url(), load, duration))?);
            }
        }
        if workloads_too {
            let (mut c, placed) = runtime.block_on(placed_cluster(&binary, "postgres", 3))?;
            for (config, entry) in [
                ("pg, 3 hosts, owner", Entry::Owner),
                ("pg, 3 hosts, remote", Entry::Remote),
            ] {
                rows.extend(runtime.block_on(workloads(&c, config, (entry, &placed), duration))?);
            }
            let costs = runtime.block_on(etcd_costs(&mut c, duration))?;
            drop(c);
            let (c, placed) =
                runtime.block_on(placed_cluster_with(&binary, "postgres", 3, true))?;
            for (config, entry) in [
                ("pg, 3 hosts, tls, owner", Entry::Owner),
                ("pg, 3 hosts, tls, remote", Entry::Remote),
            ] {
                rows.extend(runtime.block_on(workloads(&c, config, (entry, &placed), duration))?);
            }
            report(&rows, &costs);
        }
        if runs.contains(&"failover") {
            runtime.block_on(crate::cluster_failover::run(&binary))?;
        }
        Ok(())
    }

    /// Shard -> (owner, epoch), once settled.
    pub(crate) type Placement = BTreeMap<u32, (String, u64)>;

    /// A cluster of `hosts` hosts on `storage`, started and settled.
    pub(crate) async fn placed_cluster(
        binary: &Path,
        storage: &str,
        hosts: usize,
    ) -> Result<(TestCluster, Placement)> {
        placed_cluster_with(binary, storage, hosts, false).await
    }

    /// [`placed_cluster`], with TLS everywhere (between the hosts, to etcd
    /// and to PostgreSQL) when `tls`.
    pub(crate) async fn placed_cluster_with(
        binary: &Path,
        storage: &str,
        hosts: usize,
        tls: bool,
    ) -> Result<(TestCluster, Placement)> {
        let mut c = TestCluster::start(ClusterSpec {
            tls,
            ..spec(binary, storage)
        })?;
        for i in 0..hosts {
            c.start_host(i)?;
        }
        let placed = c.wait_placed(SETTLE, true).await?;
        Ok((c, placed))
    }

    fn spec(binary: &Path, storage: &str) -> ClusterSpec {
        ClusterSpec {
            binary: binary.to_path_buf(),
            etcd_members: 1,
            shards: SHARDS,
            lease_ttl_s: LEASE_TTL_S,
            tls: false,
            storage: storage.into(),
            request_timeout_ms: None,
            expected_hosts: None,
            netns: false,
        }
    }

    /// Builds the release test server (odo's demo classes, cluster and
    /// PostgreSQL support; a no-op when it is up to date).
    fn test_server_binary(root: &Path) -> Result<PathBuf> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("cluster: cargo build --release -p odo-tests --bin odo-test-server");
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "odo-tests",
                "--bin",
                "odo-test-server",
            ])
            .current_dir(root)
            .status()
            .context("running cargo")?;
        if !status.success() {
            bail!("building odo-test-server failed ({status})");
        }
        Ok(target_dir(root).join("release/odo-test-server"))
    }

    /// Counter names whose object the entry host (host 0) owns, or does
    /// not: `count` of them.
    async fn names(
        c: &TestCluster,
        (entry, placement): (Entry, &Placement),
        count: usize,
    ) -> Result<Vec<String>> {
        let host = c.host(0).context("host 0 is not running")?;
        let mut out = Vec::with_capacity(count);
        for i in 0.. {
            if out.len() == count {
                break;
            }
            if i > count * 100 {
                bail!("no {count} counters with entry {entry:?} among {i}");
            }
            let name = format!("b{i}");
            let answer = host
                .client
                .get(&format!("/_odo/placement/counter/{name}"))
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&answer.body)
                .with_context(|| format!("placement of {name}: {}", answer.text()))?;
            let shard = v["shard"].as_u64().context("no shard in placement")? as u32;
            let owned = placement.get(&shard).is_some_and(|(o, _)| *o == host.id);
            if owned == (entry == Entry::Owner) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// `hot` and `spread` at host 0 of `c`.
    async fn workloads(
        c: &TestCluster,
        config: &'static str,
        entry: (Entry, &Placement),
        duration: Duration,
    ) -> Result<Vec<Row>> {
        let spread = names(c, entry, KEYS).await?;
        let hot = vec![spread[0].clone()];
        let mut rows = Vec::new();
        for (load, names) in [("hot", hot), ("spread", spread)] {
            let row = wrk_run(c, config, load, &names, duration).await?;
            print_row(&row);
            rows.push(row);
        }
        Ok(rows)
    }

    async fn sum_counts(client: &HttpClient, names: &[String]) -> Result<u64> {
        let mut sum = 0;
        for name in names {
            let answer = client.get(&format!("/counter/{name}")).await?;
            if answer.status != 200 {
                bail!("GET /counter/{name}: {} {}", answer.status, answer.text());
            }
            sum += answer
                .text()
                .trim()
                .parse::<u64>()
                .with_context(|| format!("GET /counter/{name}: {}", answer.text()))?;
        }
        Ok(sum)
    }

    async fn wrk_run(
        c: &TestCluster,
        config: &'static str,
        load: &'static str,
        names: &[String],
        duration: Duration,
    ) -> Result<Row> {
        let host = c.host(0).context("host 0 is not running")?;
        let mut script = tempfile::Builder::new().suffix(".lua").tempfile()?;
        let paths: Vec<String> = names
            .iter()
            .map(|n| format!("\"/counter/{n}/increment\""))
            .collect();
        writeln!(
            script,
            "local paths = {{ {} }}\nlocal n = #paths\nrequest = function()\n  return wrk.format(\"POST\", paths[math.random(n)])\nend",
            paths.join(", ")
        )?;
        let postgres = config.starts_with("pg");
        let xid_before = match postgres {
            true => Some(current_xid(&c.postgres.url()).await?),
            false => None,
        };
        let before = sum_counts(&host.client, names).await?;
        let samplers: Vec<CpuSampler> = c.live().map(|h| CpuSampler::start(h.server.pid)).collect();
        let base = host.client.base().to_owned();
        let seconds = format!("{}s", duration.as_secs().max(1));
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("wrk")
                .args([
                    "-t2",
                    &format!("-c{CONNS}"),
                    &format!("-d{seconds}"),
                    "--latency",
                    "-s",
                ])
                .arg(script.path())
                .arg(&base)
                .output()
        })
        .await??;
        let ended = Instant::now();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "wrk failed ({}): {text}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let wrk = WrkResult::parse(&text).with_context(|| format!("wrk said: {text}"))?;
        let ticks: Option<u64> = samplers
            .iter()
            .map(|s| s.between(started, ended))
            .sum::<Option<u64>>();
        drop(samplers);
        let rss: u64 = c.live().map(|h| tree_rss(h.server.pid)).sum();
        let after = sum_counts(&host.client, names).await?;
        let pg_xacts = match xid_before {
            // The second call's own transaction is not one of the run's.
            Some(b) => Some(current_xid(&c.postgres.url()).await?.saturating_sub(b + 1)),
            None => None,
        };
        let ok = wrk.requests.saturating_sub(wrk.non_2xx);
        let counted = after.saturating_sub(before);
        let check = match counted >= ok && counted <= wrk.requests + CONNS as u64 {
            true => format!("PASS (2xx={ok} counted={counted})"),
            false => format!("FAIL (2xx={ok} counted={counted} sent={})", wrk.requests),
        };
        Ok(Row {
            config,
            load,
            rps: ok as f64 / wrk.seconds,
            p50_ms: wrk.p50_ms,
            p99_ms: wrk.p99_ms,
            ok,
            cpu_us: ticks
                .filter(|_| ok > 0)
                .map(|t| t as f64 / clock_ticks_per_sec() * 1e6 / ok as f64),
            rss_mb: Some(rss as f64 / (1024.0 * 1024.0)),
            check: check
                + &match wrk.errors.as_str() {
                    "" => String::new(),
                    e => format!(" socket errors {e}"),
                },
            pg_xacts,
        })
    }

    /// What wrk printed.
    #[derive(Debug, Default)]
    struct WrkResult {
        requests: u64,
        seconds: f64,
        non_2xx: u64,
        p50_ms: f64,
        p99_ms: f64,
        errors: String,
    }

    impl WrkResult {
        fn parse(text: &str) -> Result<Self> {
            let mut out = Self::default();
            for line in text.lines().map(str::trim) {
                let words: Vec<&str> = line.split_whitespace().collect();
                match words.as_slice() {
                    ["50%", t] => out.p50_ms = millis(t)?,
                    ["99%", t] => out.p99_ms = millis(t)?,
                    [n, "requests", "in", t, ..] => {
                        out.requests = n.parse()?;
                        out.seconds = millis(t.trim_end_matches(','))? / 1000.0;
                    }
                    ["Non-2xx", "or", "3xx", "responses:", n] => out.non_2xx = n.parse()?,
                    ["Socket", "errors:", rest @ ..] => out.errors = rest.join(" "),
                    _ => {}
                }
            }
            if out.seconds == 0.0 {
                bail!("no 'requests in' line");
            }
            Ok(out)
        }
    }

    /// wrk's `1.23ms`, `456.00us`, `1.01s`, `2.00m` in milliseconds.
    fn millis(text: &str) -> Result<f64> {
        let (number, scale) = if let Some(n) = text.strip_suffix("us") {
            (n, 1e-3)
        } else if let Some(n) = text.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = text.strip_suffix('s') {
            (n, 1e3)
        } else if let Some(n) = text.strip_suffix('m') {
            (n, 60e3)
        } else {
            bail!("a duration without a unit: {text}")
        };
        Ok(number
            .parse::<f64>()
            .with_context(|| format!("duration {text}"))?
            * scale)
    }

    async fn connect(url: &str) -> Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A new transaction id (each call uses one).
    async fn current_xid(url: &str) -> Result<u64> {
        let client = connect(url).await?;
        let row = client.query_one("SELECT txid_current()", &[]).await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// PostgreSQL alone: 32 clients, each increment its own transaction.
    async fn postgres_alone(url: &str, load: &'static str, duration: Duration) -> Result<Row> {
        let setup = connect(url).await?;
        setup
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS bench_counter (name text PRIMARY KEY, n bigint NOT NULL)",
            )
            .await?;
        let keys = if load == "hot" { 1 } else { KEYS };
        let xid_before = current_xid(url).await?;
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = Vec::new();
        for i in 0..CONNS {
            let client = connect(url).await?;
            tasks.push(tokio::spawn(async move {
                let statement = client
                    .prepare(
                        "INSERT INTO bench_counter VALUES ($1, 1) ON CONFLICT (name) \
                         DO UPDATE SET n = bench_counter.n + 1 RETURNING n",
                    )
                    .await?;
                let mut latencies = Latencies::with_capacity(1 << 14);
                // xorshift: a different stream of keys per client.
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1);
                while Instant::now() < deadline {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = format!("k{}", x % keys as u64);
                    let sent = Instant::now();
                    client.query_one(&statement, &[&key]).await?;
                    latencies.push(sent.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut all = Latencies::default();
        for task in tasks {
            all.extend(task.await??);
        }
        let seconds = started.elapsed().as_secs_f64();
        let xacts = current_xid(url).await?.saturating_sub(xid_before + 1);
        let ok = all.len() as u64;
        let row = Row {
            config: "postgres alone",
            load,
            rps: ok as f64 / seconds,
            p50_ms: all.percentile(50.0).as_secs_f64() * 1e3,
            p99_ms: all.percentile(99.0).as_secs_f64() * 1e3,
            ok,
            cpu_us: None,
            rss_mb: None,
            check: "-".into(),
            pg_xacts: Some(xacts),
        };
        print_row(&row);
        Ok(row)
    }

    /// The sum of each etcd counter of interest over the members.
    async fn etcd_counters(c: &TestCluster) -> Result<BTreeMap<String, f64>> {
        let mut out = BTreeMap::new();
        for member in &c.etcd {
            let client = HttpClient::new(&format!("http://{}", member.spec.client()));
            let answer = client.get("/metrics").await?;
            if answer.status != 200 {
                bail!("etcd /metrics: {}", answer.status);
            }
            for line in answer.text().lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(value) = value.parse::<f64>() else {
                    continue;
                };
                let name = series.split('{').next().unwrap_or(series);
                let key = match name {
                    "etcd_mvcc_put_total" => "put".to_owned(),
                    "etcd_mvcc_txn_total" => "txn".to_owned(),
                    "etcd_mvcc_range_total" => "range".to_owned(),
                    "etcd_mvcc_delete_total" => "delete".to_owned(),
                    "grpc_server_msg_received_total" => {
                        let method = series
                            .split("grpc_method=\"")
                            .nth(1)
                            .and_then(|m| m.split('"').next())
                            .unwrap_or("?");
                        format!("grpc {method}")
                    }
                    _ => continue,
                };
                *out.entry(key).or_default() += value;
            }
        }
        Ok(out)
    }

    /// What etcd did in a window: each counter's increase, the zeros left
    /// out.
    #[derive(Debug)]
    struct EtcdCost {
        what: String,
        per: f64,
        unit: &'static str,
        deltas: BTreeMap<String, f64>,
    }

    fn delta(
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
    ) -> BTreeMap<String, f64> {
        after
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect()
    }

    /// etcd operations of an idle 3-host cluster per second, and per shard
    /// moved when host 2 leaves (SIGTERM: it drains) and joins again.
    async fn etcd_costs(c: &mut TestCluster, idle: Duration) -> Result<Vec<EtcdCost>> {
        let mut out = Vec::new();
        let before = etcd_counters(c).await?;
        let started = Instant::now();
        tokio::time::sleep(idle).await;
        let after = etcd_counters(c).await?;
        out.push(EtcdCost {
            what: "idle, 3 hosts".into(),
            per: started.elapsed().as_secs_f64(),
            unit: "s",
            deltas: delta(&before, &after),
        });
        let placement = c.wait_placed(SETTLE, true).await?;
        let leaving = c.host(2).context("host 2 is not running")?.id.clone();
        let moved = placement.values().filter(|(o, _)| *o == leaving).count();
        let before = etcd_counters(c).await?;
        let status = c.stop_host(2)?;
        if !status.success() {
            bail!("host 2 exited with {status} on SIGTERM");
        }
        c.wait_placed(SETTLE, true).await?;
        let after = etcd_counters(c).await?;
        out.push(EtcdCost {
            what: format!("host leaves ({moved} shards move)"),
            per: moved as f64,
            unit: "shard",
            deltas: delta(&before, &after),
        });
        let before = etcd_counters(c).await?;
        c.start_host(2)?;
        let placement = c.wait_placed(SETTLE, true).await?;
        let after = etcd_counters(c).await?;
        let moved = placement.values().filter(|(o, _)| *o == leaving).count();
        out.push(EtcdCost {
            what: format!("host joins ({moved} shards move)"),
            per: moved as f64,
            unit: "shard",
            deltas: delta(&before, &after),
        });
        Ok(out)
    }

    fn print_row(row: &Row) {
        println!(
            "{:<25} {:<7} {:>9.0} {:>7.2} {:>7.2} {:>8} {:>7} {:>9} {}",
            row.config,
            row.load,
            row.rps,
            row.p50_ms,
            row.p99_ms,
            row.cpu_us.map_or_else(|| "-".into(), |c| format!("{c:.1}")),
            row.rss_mb.map_or_else(|| "-".into(), |m| format!("{m:.0}")),
            row.pg_xacts.filter(|x| *x > 0).map_or_else(
                || "-".into(),
                |x| format!("{:.1}", row.ok as f64 / x as f64)
            ),
            row.check
        );
    }

    fn report(rows: &[Row], costs: &[EtcdCost]) {
        println!(
            "{:<25} {:<7} {:>9} {:>7} {:>7} {:>8} {:>7} {:>9} check",
            "config", "load", "req/s", "p50 ms", "p99 ms", "cpu us", "rss MB", "incr/xact"
        );
        for row in rows {
            print_row(row);
        }
        let find =
            |config: &str, load: &str| rows.iter().find(|r| r.config == config && r.load == load);
        println!(
            "ratios (goals: remote/owner p50 <= {HOP_GOAL:.2}x; pg backend / postgres alone req/s >= {GROUP_COMMIT_GOAL:.2}x):"
        );
        for load in ["hot", "spread"] {
            let pair = |a: &str, b: &str, f: fn(&Row) -> f64| match (find(a, load), find(b, load)) {
                (Some(a), Some(b)) => ratio(f(a), f(b)),
                _ => "-".into(),
            };
            println!(
                "{load:<7} p50 remote/owner {}  with tls {}  p50 remote tls/plain {}  \
                 p50 remote/1 host {}  req/s remote/owner {}  \
                 req/s pg 1 host/postgres alone {}  req/s pg 3 hosts owner/postgres alone {}  \
                 req/s pg/fjall (1 host) {}",
                pair("pg, 3 hosts, remote", "pg, 3 hosts, owner", |r| r.p50_ms),
                pair("pg, 3 hosts, tls, remote", "pg, 3 hosts, tls, owner", |r| r
                    .p50_ms),
                pair("pg, 3 hosts, tls, remote", "pg, 3 hosts, remote", |r| r
                    .p50_ms),
                pair("pg, 3 hosts, remote", "pg, 1 host", |r| r.p50_ms),
                pair("pg, 3 hosts, remote", "pg, 3 hosts, owner", |r| r.rps),
                pair("pg, 1 host", "postgres alone", |r| r.rps),
                pair("pg, 3 hosts, owner", "postgres alone", |r| r.rps),
                pair("pg, 1 host", "fjall, 1 host", |r| r.rps),
            );
        }
        println!("etcd operations (counters from etcd's /metrics):");
        for cost in costs {
            let per: Vec<String> = cost
                .deltas
                .iter()
                .map(|(k, d)| format!("{k} {:.1}", d / cost.per.max(1e-9)))
                .collect();
            println!("  {} per {}: {}", cost.what, cost.unit, per.join(", "));
        }
    }
}
