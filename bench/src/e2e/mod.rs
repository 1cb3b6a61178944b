//! The `e2e` benchmark: HTTP load on the running `odo serve` (fjall, fsync
//! on every commit) against the single-process limit server (bare hyper and
//! one fjall group-commit thread: the ceiling for odo's design on this
//! machine) and Cloudflare's workerd, all serving the same counter
//! contract, on the same machine in the same run.
//!
//! Load comes from the shared `loadgen.sh` (wrk, keep-alive connections,
//! fixed duration): `GET /hello`, `POST /counter/hot/increment` and
//! increments spread over 1,000 counters, each counter run followed by a
//! check that every 200 answer was counted. The servers run in alternation
//! (odo, limit, workerd, odo, limit, workerd, ...), each from an empty data
//! directory; the figures are the mean of a server's runs, and the ratios
//! odo/limit and odo/workerd.
//!
//! Server CPU per request is measured here, not by `loadgen.sh`: odo's
//! objects run in worker processes, so this sums user + system time over
//! the server's whole process tree, sampled every 20 ms, over the window in
//! which wrk ran (the `DURATION` before wrk's result line appears).
//!
//! Needs `wrk` (Debian package `wrk`; without it the benchmark says so and
//! skips). The limit server is built from `shared/bench/limit` with cargo
//! into the target directory; workerd is the `workerd` npm package,
//! installed on first use with `npm install` into `target/odo-bench-workerd`.
//! A baseline that cannot be had is named and left out; odo's figures are
//! printed regardless.
//!
//! Environment knobs: `ODO_BENCH_SHARED` (default `../shared/bench` from the
//! workspace), `DURATION` (per workload, default `5s`), `ODO_BENCH_E2E_ROUNDS`
//! (rounds of every server, default 2), `ODO_BENCH_E2E_PINNED=1` (servers on
//! CPU 0, wrk on CPU 1, see [`Pinning`]), `WORKERD` (a workerd binary to
//! use).

pub(crate) mod cpu;
pub(crate) mod servers;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::stats::ratio;
use cpu::{CpuSampler, clock_ticks_per_sec};
use servers::{Pinning, Running, Server};

const WORKLOADS: [&str; 3] = ["hello", "hot", "spread"];
const DEFAULT_DURATION: &str = "5s";
const DEFAULT_ROUNDS: usize = 2;

/// The goals against the limit server: odo's req/s at least this fraction
/// of the limit's, per workload.
const LIMIT_GOALS: [(&str, f64); 3] = [("hello", 0.9), ("hot", 0.8), ("spread", 0.7)];
/// The goal for server CPU per durable increment: at most this multiple of
/// the limit server's.
const LIMIT_CPU_GOAL: f64 = 2.0;

/// One workload of one run.
#[derive(Debug, Clone, Default)]
struct Workload {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    cpu_us_per_req: Option<f64>,
    check: Option<String>,
    errors: String,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let root = servers::workspace_root();
    let shared = std::env::var_os("ODO_BENCH_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/bench"));
    let loadgen = shared.join("loadgen.sh");
    if !loadgen.is_file() {
        println!(
            "e2e skipped: {} not found (set ODO_BENCH_SHARED to the directory holding loadgen.sh)",
            loadgen.display()
        );
        return Ok(());
    }
    if !servers::on_path("wrk") {
        println!("e2e skipped: wrk not found (install it: apt-get install -y wrk)");
        return Ok(());
    }
    if !servers::on_path("curl") {
        println!("e2e skipped: curl not found (loadgen.sh needs it)");
        return Ok(());
    }
    let odo = servers::odo_binary(&root)?;
    let limit = match servers::limit_binary(&root, &shared) {
        Ok(l) => Some(l),
        Err(e) => {
            println!("limit server unavailable: {e:#}");
            None
        }
    };
    let workerd = match servers::workerd_binary(&root, &shared) {
        Ok(w) => Some(w),
        Err(e) => {
            println!("workerd unavailable: {e:#}");
            None
        }
    };
    let duration = std::env::var("DURATION").unwrap_or_else(|_| DEFAULT_DURATION.into());
    let duration_s = parse_duration(&duration)?;
    let rounds = std::env::var("ODO_BENCH_E2E_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let pinning = if std::env::var("ODO_BENCH_E2E_PINNED").is_ok_and(|v| v == "1") {
        Pinning::ServerCpu0WrkCpu1
    } else {
        Pinning::None
    };
    println!(
        "odo: {} serve --workers 2 (fjall, SyncData, uds); wrk -t2 -c32, {duration} per workload, \
         {rounds} round(s), pinning: {}",
        odo.display(),
        match pinning {
            Pinning::None => "none (server and wrk share both CPUs)",
            Pinning::ServerCpu0WrkCpu1 => "server on CPU 0, wrk on CPU 1",
        }
    );
    if let Some(l) = &limit {
        println!(
            "limit: {} --mode fjall-group (one process, one group-commit thread, SyncData)",
            l.display()
        );
    }
    if let Some(w) = &workerd {
        println!(
            "workerd: {} (SQLite-backed Durable Object, fsync per write, one thread)",
            w.binary.display()
        );
    }
    println!(
        "raw fsync/s of the disk before the runs: {:.0}",
        fsync_rate(&std::env::temp_dir())?
    );

    let mut servers = vec![Server::Odo, Server::OdoSql];
    if limit.is_some() {
        servers.push(Server::Limit);
    }
    if workerd.is_some() {
        servers.push(Server::Workerd);
    }
    let mut results: Vec<(Server, HashMap<String, Workload>)> = Vec::new();
    println!(
        "{:<6} {:<8} {:<7} {:>10} {:>8} {:>8} {:>10} {:>8} {:<}",
        "round", "server", "load", "req/s", "p50 ms", "p99 ms", "cpu us/req", "requests", "check"
    );
    for round in 1..=rounds {
        for &server in &servers {
            let running = match server {
                Server::Odo => servers::start_odo(&odo, pinning, false)?,
                Server::OdoSql => servers::start_odo(&odo, pinning, true)?,
                Server::Limit => servers::start_limit(limit.as_deref().expect("checked"), pinning)?,
                Server::Workerd => {
                    servers::start_workerd(workerd.as_ref().expect("checked"), pinning)?
                }
            };
            let outcome = load(&loadgen, &running, &duration, duration_s, pinning);
            running.stop();
            let workloads = outcome?;
            for name in WORKLOADS {
                let Some(w) = workloads.get(name) else {
                    println!("{round:<6} {:<8} {name:<7} (no result)", server.name());
                    continue;
                };
                println!(
                    "{round:<6} {:<8} {name:<7} {:>10.0} {:>8.2} {:>8.2} {:>10} {:>8} {}{}",
                    server.name(),
                    w.rps,
                    w.p50_ms,
                    w.p99_ms,
                    w.cpu_us_per_req
                        .map_or_else(|| "?".into(), |c| format!("{c:.1}")),
                    w.requests,
                    w.check.as_deref().unwrap_or("-"),
                    if w.errors.is_empty() || w.errors == "0/0/0/0" {
                        String::new()
                    } else {
                        format!(" socket errors c/r/w/t={}", w.errors)
                    }
                );
            }
            results.push((server, workloads));
        }
    }
    report(&results);
    Ok(())
}

/// The mean of each server's runs per workload, and odo's ratios to the
/// baselines, beside the goals.
fn report(results: &[(Server, HashMap<String, Workload>)]) {
    let mean = |server: Server, name: &str, f: fn(&Workload) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = results
            .iter()
            .filter(|(s, _)| *s == server)
            .filter_map(|(_, w)| w.get(name).and_then(f))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let cell =
        |v: Option<f64>, digits: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
    let vs = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".into(),
    };
    let rps = |w: &Workload| Some(w.rps);
    let p99 = |w: &Workload| Some(w.p99_ms);
    let cpu = |w: &Workload| w.cpu_us_per_req;
    println!("mean over rounds (o = odo, l = limit, w = workerd):");
    println!(
        "{:<7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7}",
        "load",
        "o req/s",
        "l req/s",
        "w req/s",
        "rps o/l",
        "rps o/w",
        "o p99",
        "l p99",
        "w p99",
        "o us",
        "l us",
        "w us",
        "cpu o/l",
        "cpu o/w"
    );
    for name in WORKLOADS {
        let [o_rps, l_rps, w_rps] =
            [Server::Odo, Server::Limit, Server::Workerd].map(|s| mean(s, name, rps));
        let [o_p99, l_p99, w_p99] =
            [Server::Odo, Server::Limit, Server::Workerd].map(|s| mean(s, name, p99));
        let [o_cpu, l_cpu, w_cpu] =
            [Server::Odo, Server::Limit, Server::Workerd].map(|s| mean(s, name, cpu));
        println!(
            "{:<7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>7} {:>7}",
            name,
            cell(o_rps, 0),
            cell(l_rps, 0),
            cell(w_rps, 0),
            vs(o_rps, l_rps),
            vs(o_rps, w_rps),
            cell(o_p99, 2),
            cell(l_p99, 2),
            cell(w_p99, 2),
            cell(o_cpu, 1),
            cell(l_cpu, 1),
            cell(w_cpu, 1),
            vs(o_cpu, l_cpu),
            vs(o_cpu, w_cpu)
        );
    }
    println!("odo's SQLite-backed counter (s = odo-sql):");
    println!(
        "{:<7} {:>9} {:>7} {:>7} {:>7} {:>7}",
        "load", "s req/s", "rps s/o", "rps s/w", "s p99", "s us"
    );
    for name in WORKLOADS {
        let s_rps = mean(Server::OdoSql, name, rps);
        println!(
            "{:<7} {:>9} {:>7} {:>7} {:>7} {:>7}",
            name,
            cell(s_rps, 0),
            vs(s_rps, mean(Server::Odo, name, rps)),
            vs(s_rps, mean(Server::Workerd, name, rps)),
            cell(mean(Server::OdoSql, name, p99), 2),
            cell(mean(Server::OdoSql, name, cpu), 1),
        );
    }
    println!(
        "goals for the SQLite-backed counter: hot and spread >= 10.00x workerd, >= 0.50x odo's \
         fjall-backed counter"
    );
    let goals: Vec<String> = LIMIT_GOALS
        .iter()
        .map(|(name, goal)| format!("{name} >= {goal:.2}x"))
        .collect();
    println!(
        "goals against the limit server: req/s odo/limit {}; cpu per durable increment \
         odo/limit <= {LIMIT_CPU_GOAL:.2}x (hot, spread)",
        goals.join(", ")
    );
    println!(
        "goals against workerd (fsync on for both): req/s odo/workerd hello >= 2.00x, \
         hot >= 3.00x, spread >= 5.00x; p99 odo/workerd <= 1.00x"
    );
}

pub(crate) fn parse_duration(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("DURATION {text:?}: expected e.g. 5s"))?;
    Ok(n * scale)
}

/// `key=value` of a loadgen line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn number(line: &str, key: &str) -> f64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// Runs `loadgen.sh` against `server`; parses its lines as they appear.
fn load(
    loadgen: &Path,
    server: &Running,
    duration: &str,
    duration_s: f64,
    pinning: Pinning,
) -> anyhow::Result<HashMap<String, Workload>> {
    let sampler = CpuSampler::start(server.child.id());
    let hz = clock_ticks_per_sec();
    let mut command = Command::new(loadgen);
    command
        .arg(&server.base)
        .env("DURATION", duration)
        .env_remove("SERVER_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if pinning == Pinning::ServerCpu0WrkCpu1 {
        command.env("WRK_CPUS", "1");
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running {}", loadgen.display()))?;
    let stderr = child.stderr.take().context("loadgen stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().context("loadgen stdout")?;
    let mut out: HashMap<String, Workload> = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let seen = Instant::now();
        if line.starts_with("workload=") {
            let name = field(&line, "workload").unwrap_or("?").to_owned();
            let w = out.entry(name).or_default();
            w.rps = number(&line, "rps");
            w.p50_ms = number(&line, "p50_ms");
            w.p99_ms = number(&line, "p99_ms");
            // wrk ran for the DURATION before its result line appeared.
            let from = seen
                .checked_sub(Duration::from_secs_f64(duration_s))
                .unwrap_or(seen);
            w.cpu_us_per_req = sampler
                .between(from, seen)
                .map(|ticks| ticks as f64 / hz * 1e6);
        } else if line.starts_with("detail ") {
            let name = field(&line, "workload").unwrap_or("?").to_owned();
            let w = out.entry(name).or_default();
            w.requests = number(&line, "requests") as u64;
            w.errors = field(&line, "errors").unwrap_or("").to_owned();
            if let Some(cpu) = w.cpu_us_per_req.as_mut() {
                *cpu = if w.requests == 0 {
                    0.0
                } else {
                    *cpu / w.requests as f64
                };
            }
        } else if line.starts_with("check ") {
            let name = field(&line, "workload").unwrap_or("?").to_owned();
            let w = out.entry(name).or_default();
            let result = field(&line, "result").unwrap_or("?");
            let note = field(&line, "lost_writes")
                .map(|n| format!(" lost_writes={n}"))
                .or_else(|| field(&line, "extra_writes").map(|n| format!(" extra_writes={n}")))
                .unwrap_or_default();
            w.check = Some(format!(
                "{result} (2xx={} counted={}){note}",
                field(&line, "wrk_2xx").unwrap_or("?"),
                field(&line, "server_delta").unwrap_or("?")
            ));
        }
    }
    let status = child.wait()?;
    let stderr = err_thread.join().unwrap_or_default();
    if !status.success() {
        println!(
            "loadgen against {} exited with {status}; its log:\n{}",
            server.base,
            stderr.trim_end()
        );
    }
    Ok(out)
}

/// Writes of a 16 B record, each followed by `fdatasync`, per second (1 s).
fn fsync_rate(dir: &Path) -> anyhow::Result<f64> {
    let probe = tempfile::tempdir_in(dir).context("temp dir")?;
    let mut file = std::fs::File::create(probe.path().join("probe"))?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&[0u8; 16])?;
        file.sync_data()?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
