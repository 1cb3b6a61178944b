//! The registry's own behaviour, with real worker processes: this test
//! binary re-executes itself as a small scripted worker that speaks the
//! worker side of the control protocol (hello, shard assigns and releases,
//! heartbeats, shutdown) and logs what it was told.
//!
//! Heartbeats kill a stuck worker and spare a busy one; a dead worker's
//! shards move at once to a live one, with new epochs recorded before use,
//! and move back (released first) once its replacement runs; epochs only
//! grow, across restarts of the registry too; shutdown stops every worker
//! gracefully.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use odo_core::launch::WorkerLaunch;
use odo_core::wire::{Control, ControlReply, Request, Response, WorkerStats};
use odo_registry::{Registry, RegistryConfig, WorkerCommand, WorkerState};
use odo_transport::{Channel, ClientConfig, Server, ServerConfig, handler_fn};

/// How each slot's scripted worker behaves, by slot: `ODO_FAKE_MODES`,
/// comma-separated, one of `normal`, `stuck` (never answers a heartbeat),
/// `busy` (answers each heartbeat after 700 ms), `stalled` (reports a
/// stalled poll), `draining` (at shutdown closes its connections at once,
/// as a real worker does, and exits 1 s later, after its drain).
const MODES_ENV: &str = "ODO_FAKE_MODES";
/// Where scripted workers log what they are told: one line per message.
const LOG_ENV: &str = "ODO_FAKE_LOG";

/// One test: `Err` says what went wrong.
type Test = fn() -> Result<(), String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(Some(launch)) = WorkerLaunch::parse(args.iter().skip(1).cloned()) {
        return fake_worker(launch);
    }
    let tests: [(&str, Test); 5] = [
        (
            "heartbeats_kill_a_stuck_worker_and_spare_a_busy_one",
            heartbeats_kill_a_stuck_worker_and_spare_a_busy_one,
        ),
        (
            "a_dead_workers_shards_move_at_once_and_come_back_released_first",
            a_dead_workers_shards_move_at_once_and_come_back_released_first,
        ),
        (
            "epochs_are_recorded_before_use_and_only_grow",
            epochs_are_recorded_before_use_and_only_grow,
        ),
        (
            "shutdown_stops_every_worker_gracefully",
            shutdown_stops_every_worker_gracefully,
        ),
        (
            "shutdown_lets_a_worker_drain_after_it_closed_its_connections",
            shutdown_lets_a_worker_drain_after_it_closed_its_connections,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match test() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!(
        "supervision: {} passed, {failed} failed",
        tests.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The scripted worker: the protocol's worker side, nothing else.
fn fake_worker(launch: WorkerLaunch) -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        return ExitCode::FAILURE;
    }
    let Ok(token) = odo_core::launch::decode_token(line.as_bytes()) else {
        return ExitCode::FAILURE;
    };
    let mode = std::env::var(MODES_ENV)
        .unwrap_or_default()
        .split(',')
        .nth(launch.index as usize)
        .unwrap_or("normal")
        .to_owned();
    let log = std::env::var(LOG_ENV).ok().map(PathBuf::from);
    let draining = mode == "draining";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let note = move |text: String| {
            if let Some(log) = &log
                && let Ok(mut file) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
            {
                // One write per line: appends of several workers never mix.
                let line = format!("{} {text}\n", std::process::id());
                let _ = file.write_all(line.as_bytes());
            }
        };
        let last_words = note.clone();
        let listen = launch.listen.parse().expect("a listen endpoint");
        let server = Server::bind(&listen, ServerConfig::new(token.clone()))
            .await
            .expect("bind");
        let endpoint = server.endpoint().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stop = Arc::new(std::sync::Mutex::new(Some(stop)));
        let handler = handler_fn(move |request: Request, _body: Bytes| {
            let (mode, note, stop) = (mode.clone(), note.clone(), stop.clone());
            async move {
                let reply = |r| (Response::Control(r), Bytes::new());
                match request {
                    Request::Control(Control::AssignShard { shard, epoch }) => {
                        note(format!("assign {shard} {epoch}"));
                        reply(ControlReply::Ack)
                    }
                    Request::Control(Control::ReleaseShard { shard, epoch }) => {
                        note(format!("release {shard} {epoch}"));
                        reply(ControlReply::Ack)
                    }
                    Request::Control(Control::Heartbeat { .. }) => {
                        match mode.as_str() {
                            "stuck" => std::future::pending::<()>().await,
                            "busy" => tokio::time::sleep(Duration::from_millis(700)).await,
                            _ => {}
                        }
                        reply(ControlReply::Stats(WorkerStats {
                            stalled_ms: if mode == "stalled" { 60_000 } else { 0 },
                            ..WorkerStats::default()
                        }))
                    }
                    Request::Control(Control::Shutdown) => {
                        note("shutdown".into());
                        if let Some(stop) = stop.lock().unwrap().take() {
                            let _ = stop.send(());
                        }
                        reply(ControlReply::Ack)
                    }
                    _ => reply(ControlReply::Ack),
                }
            }
        });
        let serving = tokio::spawn(server.serve(Arc::new(handler), async move {
            let _ = stopped.await;
        }));
        let registry = launch.registry.parse().expect("a registry endpoint");
        let control = Channel::connect(&registry, ClientConfig::new(token))
            .await
            .expect("connect to the registry");
        let hello = Request::Control(Control::WorkerHello {
            worker: launch.index,
            pid: std::process::id(),
            endpoint,
            classes: vec![],
        });
        control
            .call(hello, Bytes::new(), Duration::from_secs(10))
            .await
            .expect("hello");
        tokio::select! {
            _ = serving => {}
            () = control.closed() => {}
        }
        if draining {
            tokio::time::sleep(Duration::from_secs(1)).await;
            last_words("drained".into());
        }
    });
    ExitCode::SUCCESS
}

/// A registry of `workers` scripted workers in `dir`, each slot behaving
/// as `modes` says. The script travels in the workers' environment, set by
/// `env(1)` (which then executes this binary as the worker).
fn config(dir: &Path, workers: u32, modes: &str) -> RegistryConfig {
    let this = std::env::current_exe().expect("this test binary");
    let mut config = RegistryConfig::new(
        WorkerCommand {
            program: "env".into(),
            args: vec![
                format!("{MODES_ENV}={modes}"),
                format!("{LOG_ENV}={}", dir.join("log").display()),
                this.display().to_string(),
            ],
        },
        dir.join("data"),
    );
    config.workers = workers;
    config.runtime_dir = Some(dir.join("run"));
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_millis(1500);
    config.shutdown_grace = Duration::from_secs(5);
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Polls `check` until it holds, for at most 20 s.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let give_up = Instant::now() + Duration::from_secs(20);
    while !check() {
        if Instant::now() > give_up {
            return Err(format!("timed out waiting until {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn log_lines(dir: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, rest) = l.split_once(' ')?;
            Some((pid.parse().ok()?, rest.to_owned()))
        })
        .collect()
}

fn heartbeats_kill_a_stuck_worker_and_spare_a_busy_one() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = config(dir.path(), 2, "stuck,busy");
    runtime().block_on(async {
        let registry = Registry::start(config).await.map_err(|e| e.to_string())?;
        until("the stuck worker is restarted twice", || {
            registry.workers().first().is_some_and(|w| w.restarts >= 2)
        })
        .await?;
        let busy = &registry.workers()[1];
        let (restarts, state) = (busy.restarts, busy.state);
        registry.shutdown().await;
        if restarts != 0 || state != WorkerState::Running {
            return Err(format!(
                "the busy worker was restarted {restarts} times ({state:?})"
            ));
        }
        Ok(())
    })
}

fn a_dead_workers_shards_move_at_once_and_come_back_released_first() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = config(dir.path(), 2, "normal,normal");
    runtime().block_on(async {
        let registry = Registry::start(config).await.map_err(|e| e.to_string())?;
        registry.ready().await.map_err(|e| e.to_string())?;
        let workers = registry.workers();
        let (victim, survivor) = (workers[0].pid.unwrap(), workers[1].pid.unwrap());
        let killed = std::process::Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !killed.success() {
            return Err("kill failed".into());
        }
        // Shard 0 moves to the survivor (a new epoch), then back to a new
        // process of slot 0 once that one runs: released by the survivor
        // before it is assigned at home again.
        until("shard 0 is home again in a new process", || {
            let table = registry.placement().borrow().clone();
            table.shards[0]
                .owner
                .as_ref()
                .is_some_and(|o| o.slot == 0 && o.pid != victim)
        })
        .await?;
        let home = registry.placement().borrow().shards[0]
            .owner
            .as_ref()
            .map(|o| o.pid)
            .unwrap_or_default();
        registry.shutdown().await;
        let log = log_lines(dir.path());
        let at = |pid: u32, what: &str| {
            log.iter()
                .position(|(p, l)| *p == pid && l.starts_with(what))
        };
        let moved = at(survivor, "assign 0 ").ok_or("shard 0 never moved to the survivor")?;
        let released = at(survivor, "release 0 ").ok_or("the survivor never released shard 0")?;
        let back = at(home, "assign 0 ").ok_or("shard 0 never came home")?;
        if !(moved < released && released < back) {
            return Err(format!("wrong order: {log:?}"));
        }
        Ok(())
    })
}

fn epochs_are_recorded_before_use_and_only_grow() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let record = |dir: &Path| -> Vec<u64> {
        let text = std::fs::read_to_string(dir.join("data/odo-cluster.json")).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        value["epochs"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_u64()).collect())
            .unwrap_or_default()
    };
    let assigned = |dir: &Path| -> Vec<(u32, u64)> {
        log_lines(dir)
            .into_iter()
            .filter_map(|(_, l)| {
                let mut parts = l.strip_prefix("assign ")?.split(' ');
                Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
            })
            .collect()
    };
    let mut highest: Vec<u64> = vec![0, 0];
    for round in 0..2 {
        let config = config(dir.path(), 2, "normal,normal");
        runtime().block_on(async {
            let registry = Registry::start(config).await.map_err(|e| e.to_string())?;
            registry.ready().await.map_err(|e| e.to_string())?;
            registry.shutdown().await;
            Ok::<_, String>(())
        })?;
        let epochs = record(dir.path());
        for (shard, epoch) in assigned(dir.path()) {
            // Every epoch a worker was given is recorded.
            if epochs.get(shard as usize).is_none_or(|&e| e < epoch) {
                return Err(format!(
                    "round {round}: shard {shard} at {epoch} beyond the record {epochs:?}"
                ));
            }
        }
        if epochs
            .iter()
            .zip(&highest)
            .any(|(now, before)| now <= before)
        {
            return Err(format!(
                "round {round}: epochs {epochs:?} did not grow past {highest:?}"
            ));
        }
        highest = epochs;
    }
    Ok(())
}

fn shutdown_stops_every_worker_gracefully() -> Result<(), String> {
    let took = shutdown_logs("normal,normal", "shutdown")?;
    // They exited on their own, not at the 5 s grace's kill.
    if took >= Duration::from_secs(5) {
        return Err(format!("shutdown took {took:?}"));
    }
    Ok(())
}

/// Starts 2 scripted workers behaving as `modes`, shuts the registry down,
/// and checks that each of them logged `word` and no longer runs; returns
/// how long the shutdown took.
fn shutdown_logs(modes: &str, word: &str) -> Result<Duration, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = config(dir.path(), 2, modes);
    runtime().block_on(async {
        let registry = Registry::start(config).await.map_err(|e| e.to_string())?;
        registry.ready().await.map_err(|e| e.to_string())?;
        let pids: Vec<u32> = registry.workers().iter().filter_map(|w| w.pid).collect();
        if pids.len() != 2 {
            return Err(format!("2 workers expected, running: {pids:?}"));
        }
        let started = Instant::now();
        registry.shutdown().await;
        let took = started.elapsed();
        let log = log_lines(dir.path());
        for pid in &pids {
            if !log.iter().any(|(p, l)| p == pid && l == word) {
                return Err(format!("worker {pid} did not log {word:?}: {log:?}"));
            }
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(format!("worker {pid} still runs"));
            }
        }
        Ok(took)
    })
}

/// A worker that closed its connections at the shutdown request is
/// draining, not unresponsive: the heartbeats that then fail must not get
/// it killed before its drain ends (they did: the first one after the
/// close reported it unresponsive, and the registry killed it).
fn shutdown_lets_a_worker_drain_after_it_closed_its_connections() -> Result<(), String> {
    // Killed before its drain, a worker never logs "drained".
    shutdown_logs("draining,draining", "drained").map(|_| ())
}
