//! The `e2e` benchmark: HTTP load on the running `odo serve` (fjall, fsync
//! on every commit) against Cloudflare's workerd serving the same counter
//! contract, on the same machine in the same run.
//!
//! Load comes from the shared `loadgen.sh` (wrk, keep-alive connections,
//! fixed duration): `GET /hello`, `POST /counter/hot/increment` and
//! increments spread over 1,000 counters, each counter run followed by a
//! check that every 200 answer was counted. The servers run in alternation
//! (odo, workerd, odo, workerd), each from an empty data directory; the
//! figures are the mean of a server's runs, and the ratios odo/workerd.
//!
//! Server CPU per request is measured here, not by `loadgen.sh`: odo's
//! objects run in worker processes, so this sums user + system time over
//! the server's whole process tree, sampled every 20 ms, over the window in
//! which wrk ran (the `DURATION` before wrk's result line appears).
//!
//! Needs `wrk` (Debian package `wrk`; without it the benchmark says so and
//! skips) and, for the comparison, the `workerd` npm package, installed on
//! first use with `npm install` into `target/odo-bench-workerd` (without
//! npm or network, odo's figures are printed alone).
//!
//! Environment knobs: `ODO_BENCH_SHARED` (default `../shared/bench` from the
//! workspace), `DURATION` (per workload, default `5s`), `ODO_BENCH_E2E_ROUNDS`
//! (odo/workerd pairs, default 2), `ODO_BENCH_E2E_PINNED=1` (servers on CPU 0,
//! wrk on CPU 1, see [`Pinning`]), `WORKERD` (a workerd binary to use).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::stats::ratio;

const WORKLOADS: [&str; 3] = ["hello", "hot", "spread"];
const DEFAULT_DURATION: &str = "5s";
const DEFAULT_ROUNDS: usize = 2;
const CPU_SAMPLE: Duration = Duration::from_millis(20);
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    Odo,
    Workerd,
}

impl Server {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Server::Odo => "odo",
            Server::Workerd => "workerd",
        }
    }
}

/// Where the processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pinning {
    /// Anywhere: server and wrk share both CPUs.
    None,
    /// The server (all its processes) on CPU 0, wrk on CPU 1.
    ServerCpu0WrkCpu1,
}

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
    let root = workspace_root();
    let shared = std::env::var_os("ODO_BENCH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/bench"));
    let loadgen = shared.join("loadgen.sh");
    if !loadgen.is_file() {
        println!(
            "e2e skipped: {} not found (set ODO_BENCH_SHARED to the directory holding loadgen.sh)",
            loadgen.display()
        );
        return Ok(());
    }
    if !on_path("wrk") {
        println!("e2e skipped: wrk not found (install it: apt-get install -y wrk)");
        return Ok(());
    }
    if !on_path("curl") {
        println!("e2e skipped: curl not found (loadgen.sh needs it)");
        return Ok(());
    }
    let odo = odo_binary(&root)?;
    let workerd = match workerd_binary(&root, &shared) {
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

    let mut results: Vec<(Server, HashMap<String, Workload>)> = Vec::new();
    println!(
        "{:<6} {:<8} {:<7} {:>10} {:>8} {:>8} {:>10} {:>8} {:<}",
        "round", "server", "load", "req/s", "p50 ms", "p99 ms", "cpu us/req", "requests", "check"
    );
    for round in 1..=rounds {
        let mut servers = vec![Server::Odo];
        if workerd.is_some() {
            servers.push(Server::Workerd);
        }
        for server in servers {
            let running = match server {
                Server::Odo => start_odo(&odo, pinning)?,
                Server::Workerd => start_workerd(workerd.as_ref().expect("checked"), pinning)?,
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

    println!("mean over rounds:");
    println!(
        "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "load",
        "odo req/s",
        "wd req/s",
        "rps o/w",
        "odo p99",
        "wd p99",
        "p99 o/w",
        "odo us/rq",
        "wd us/rq",
        "cpu o/w"
    );
    for name in WORKLOADS {
        let mean = |server: Server, f: fn(&Workload) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = results
                .iter()
                .filter(|(s, _)| *s == server)
                .filter_map(|(_, w)| w.get(name).and_then(f))
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let rps = |w: &Workload| Some(w.rps);
        let p99 = |w: &Workload| Some(w.p99_ms);
        let cpu = |w: &Workload| w.cpu_us_per_req;
        let cell = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
        };
        let vs = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "-".into(),
        };
        let (o_rps, w_rps) = (mean(Server::Odo, rps), mean(Server::Workerd, rps));
        let (o_p99, w_p99) = (mean(Server::Odo, p99), mean(Server::Workerd, p99));
        let (o_cpu, w_cpu) = (mean(Server::Odo, cpu), mean(Server::Workerd, cpu));
        println!(
            "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
            name,
            cell(o_rps, 0),
            cell(w_rps, 0),
            vs(o_rps, w_rps),
            cell(o_p99, 2),
            cell(w_p99, 2),
            vs(o_p99, w_p99),
            cell(o_cpu, 1),
            cell(w_cpu, 1),
            vs(o_cpu, w_cpu)
        );
    }
    println!(
        "goals (fsync on for both): req/s odo/workerd hello >= 2.00x, hot >= 3.00x, \
         spread >= 5.00x; p99 odo/workerd <= 1.00x"
    );
    Ok(())
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn parse_duration(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 60.0),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let n: f64 = number
        .parse()
        .with_context(|| format!("DURATION {text:?}: expected e.g. 5s"))?;
    Ok(n * scale)
}

/// Builds the release `odo` binary (a no-op when it is up to date).
pub(crate) fn odo_binary(root: &Path) -> anyhow::Result<PathBuf> {
    let binary = target_dir(root).join("release/odo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("e2e: cargo build --release -p odo");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "odo"])
        .current_dir(root)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other if binary.is_file() => {
            println!(
                "warning: building odo failed ({other:?}); using the existing {}",
                binary.display()
            );
        }
        other => anyhow::bail!(
            "cannot build odo ({other:?}); build it with `cargo build --release -p odo`"
        ),
    }
    anyhow::ensure!(binary.is_file(), "{} not found", binary.display());
    Ok(binary)
}

/// A workerd binary and the directory holding its config.
#[derive(Debug)]
pub(crate) struct Workerd {
    binary: PathBuf,
    dir: PathBuf,
}

/// Copies the shared workerd setup into the target directory and runs
/// `npm install` there once.
pub(crate) fn workerd_binary(root: &Path, shared: &Path) -> anyhow::Result<Workerd> {
    let source = shared.join("workerd");
    let dir = target_dir(root).join("odo-bench-workerd");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["config.capnp", "counter-worker.mjs", "package.json"] {
        let to = dir.join(file);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(source.join(file), &to)
            .with_context(|| format!("copying {}", source.join(file).display()))?;
        let mut perms = std::fs::metadata(&to)?.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&to, perms)?;
    }
    if let Some(binary) = std::env::var_os("WORKERD") {
        return Ok(Workerd {
            binary: binary.into(),
            dir,
        });
    }
    let binary = dir.join("node_modules/@cloudflare/workerd-linux-64/bin/workerd");
    if !binary.is_file() {
        anyhow::ensure!(on_path("npm"), "npm not found (needed to install workerd)");
        eprintln!("e2e: npm install in {}", dir.display());
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .context("running npm install")?;
        anyhow::ensure!(
            out.status.success(),
            "npm install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    anyhow::ensure!(
        binary.is_file(),
        "npm install left no binary at {}",
        binary.display()
    );
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .context("running workerd --version")?;
    anyhow::ensure!(
        version.status.success(),
        "workerd --version failed: {}",
        String::from_utf8_lossy(&version.stderr).trim()
    );
    Ok(Workerd { binary, dir })
}

/// A server under test; dropping its data directory removes its data.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) base: String,
    _data: tempfile::TempDir,
}

impl Running {
    /// SIGTERM (or, for odo, closing its standard input), then SIGKILL
    /// after 10 s.
    pub(crate) fn stop(mut self) {
        drop(self.child.stdin.take());
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("e2e: server {pid} did not stop within 10 s; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(program: &Path, pinning: Pinning) -> Command {
    match pinning {
        Pinning::None => Command::new(program),
        Pinning::ServerCpu0WrkCpu1 => {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        }
    }
}

pub(crate) fn start_odo(odo: &Path, pinning: Pinning) -> anyhow::Result<Running> {
    let data = tempfile::tempdir().context("temp dir")?;
    let log = std::fs::File::create(data.path().join("odo.log"))?;
    let mut child = pinned(odo, pinning)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("--exit-on-stdin-eof")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", odo.display()))?;
    let stdout = child.stdout.take().context("odo stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("odo listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let base = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(url) => url,
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(data.path().join("odo.log")).unwrap_or_default();
            anyhow::bail!("odo did not report its address within 60 s; log:\n{log}");
        }
    };
    let running = Running {
        child,
        base,
        _data: data,
    };
    wait_ready(&running)?;
    Ok(running)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn start_workerd(workerd: &Workerd, pinning: Pinning) -> anyhow::Result<Running> {
    let data = tempfile::tempdir().context("temp dir")?;
    let store = data.path().join("do");
    std::fs::create_dir_all(&store)?;
    let port = free_port()?;
    let log = std::fs::File::create(data.path().join("workerd.log"))?;
    let child = pinned(&workerd.binary, pinning)
        .arg("serve")
        .arg("config.capnp")
        .arg("--socket-addr")
        .arg(format!("http=127.0.0.1:{port}"))
        .arg("--directory-path")
        .arg(format!("do-storage={}", store.display()))
        .current_dir(&workerd.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", workerd.binary.display()))?;
    let running = Running {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    };
    if let Err(e) = wait_ready(&running) {
        let log =
            std::fs::read_to_string(running._data.path().join("workerd.log")).unwrap_or_default();
        running.stop();
        anyhow::bail!("{e:#}; workerd log:\n{log}");
    }
    Ok(running)
}

/// Waits until `GET /hello` answers `hello`.
fn wait_ready(server: &Running) -> anyhow::Result<()> {
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("server address {:?}", server.base))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{} did not answer GET /hello within 60 s", server.base)
}

/// user + system clock ticks of `root` and all its descendants.
fn tree_cpu_ticks(root: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // (pid, ppid, ticks) of every process.
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        procs.push((pid, num(1) as u32, num(11) + num(12)));
    }
    let mut tree = vec![root];
    let mut total = 0;
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for &(pid, ppid, ticks) in &procs {
            if pid == parent {
                total += ticks;
            }
            if ppid == parent && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        i += 1;
    }
    total
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples the CPU time of a process tree in the background.
struct CpuSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CpuSampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = samples.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ticks = tree_cpu_ticks(pid);
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), ticks));
                    std::thread::sleep(CPU_SAMPLE);
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// CPU ticks used between `from` and `to` (nearest samples).
    fn between(&self, from: Instant, to: Instant) -> Option<u64> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let at = |t: Instant| {
            samples
                .iter()
                .min_by_key(|(s, _)| if *s > t { *s - t } else { t - *s })
                .map(|(_, ticks)| *ticks)
        };
        Some(at(to)?.saturating_sub(at(from)?))
    }
}

impl Drop for CpuSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
