//! One supervisor task per worker slot: spawn, wait for hello, assign
//! shards, heartbeat, and restart with backoff when the process dies.

use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use odo_core::launch::WorkerLaunch;
use odo_core::wire::{Control, ControlReply, Request, Response, WorkerStats};
use odo_transport::{Channel, Endpoint};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::placement::{Owner, PlacementTable};
use crate::{Shared, TransportKind};

/// Where a worker slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned, not yet serving its shards.
    Starting,
    /// Serving its shards.
    Running,
    /// Dead, waiting to be restarted.
    Restarting,
    /// Failing quickly again and again; still retried, at the capped delay.
    CrashLoop,
    /// Stopped by a registry shutdown.
    Stopped,
}

/// One worker slot as the admin endpoints show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// The slot.
    pub slot: u32,
    /// The current process, if any.
    pub pid: Option<u32>,
    /// Where it listens.
    pub endpoint: Option<String>,
    /// The shards it serves now.
    pub shards: Vec<u32>,
    /// Its state.
    pub state: WorkerState,
    /// How many times the slot's process was restarted.
    pub restarts: u32,
    /// Objects live in the current process, as of `stats_age_ms` ago (the
    /// last heartbeat, or a refresh by
    /// [`Registry::workers_fresh`](crate::Registry::workers_fresh)).
    pub live_objects: u64,
    /// Group commits by the current process.
    pub commit_batches: u64,
    /// Turns committed by the current process.
    pub commit_turns: u64,
    /// How old the figures above are, in milliseconds: since the registry
    /// received them. `None` while the current process has reported none
    /// (the figures are then 0).
    pub stats_age_ms: Option<u64>,
}

#[derive(Debug)]
struct SlotState {
    state: WorkerState,
    pid: Option<u32>,
    endpoint: Option<String>,
    restarts: u32,
    /// The registry's channel to the running worker.
    channel: Option<Channel>,
    /// The process whose hello is awaited, and where to hand its endpoint.
    waiting: Option<(u32, oneshot::Sender<String>)>,
    /// The last figures the running process reported, and when they came.
    stats: Option<(WorkerStats, Instant)>,
}

/// Every slot's state.
#[derive(Debug)]
pub(crate) struct Slots(Vec<Mutex<SlotState>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slots {
    pub(crate) fn new(workers: u32) -> Self {
        Slots(
            (0..workers)
                .map(|_| {
                    Mutex::new(SlotState {
                        state: WorkerState::Starting,
                        pid: None,
                        endpoint: None,
                        restarts: 0,
                        channel: None,
                        waiting: None,
                        stats: None,
                    })
                })
                .collect(),
        )
    }

    fn slot(&self, slot: u32) -> MutexGuard<'_, SlotState> {
        lock(&self.0[slot as usize])
    }

    /// A worker's hello: accepted only from the process its slot awaits.
    pub(crate) fn hello(&self, worker: u32, pid: u32, endpoint: String) -> Result<(), String> {
        let Some(slot) = self.0.get(worker as usize) else {
            return Err(format!("no worker slot {worker}"));
        };
        let mut slot = lock(slot);
        match slot.waiting.take() {
            Some((expected, reply)) if expected == pid => {
                let _ = reply.send(endpoint);
                Ok(())
            }
            other => {
                slot.waiting = other;
                Err(format!(
                    "slot {worker} does not expect a hello from pid {pid}"
                ))
            }
        }
    }

    /// Records figures process `pid` of `slot` reported, unless that process
    /// is gone or newer figures (by its clock) are already there.
    pub(crate) fn record_stats(&self, slot: u32, pid: u32, stats: WorkerStats) {
        let Some(state) = self.0.get(slot as usize) else {
            return;
        };
        let mut state = lock(state);
        if state.pid != Some(pid) {
            return;
        }
        if state
            .stats
            .is_some_and(|(known, _)| known.now_ms > stats.now_ms)
        {
            return;
        }
        state.stats = Some((stats, Instant::now()));
    }

    /// The running processes: slot, pid and the registry's channel to each.
    pub(crate) fn running(&self) -> Vec<(u32, u32, Channel)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = lock(s);
                Some((i as u32, s.pid?, s.channel.clone()?))
            })
            .collect()
    }

    pub(crate) fn status(&self, table: &PlacementTable) -> Vec<WorkerStatus> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let slot = lock(slot);
                let i = i as u32;
                WorkerStatus {
                    slot: i,
                    pid: slot.pid,
                    endpoint: slot.endpoint.clone(),
                    shards: (0..table.shard_count())
                        .filter(|&s| {
                            table.shards[s as usize]
                                .owner
                                .as_ref()
                                .is_some_and(|o| o.slot == i)
                        })
                        .collect(),
                    state: slot.state,
                    restarts: slot.restarts,
                    live_objects: slot.stats.map_or(0, |(s, _)| s.live_objects),
                    commit_batches: slot.stats.map_or(0, |(s, _)| s.commit_batches),
                    commit_turns: slot.stats.map_or(0, |(s, _)| s.commit_turns),
                    stats_age_ms: slot
                        .stats
                        .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect()
    }

    fn channels(&self) -> Vec<Channel> {
        self.0
            .iter()
            .filter_map(|s| lock(s).channel.clone())
            .collect()
    }
}

/// Sends the current table to every running worker (best effort: a worker
/// that misses it gets the next one, and answers `Moved` meanwhile).
fn push_placement(shared: &Shared) {
    let placement = shared.placement.borrow().to_wire();
    for channel in shared.slots.channels() {
        let message = Request::Control(Control::Placement(placement.clone()));
        tokio::spawn(async move {
            let _ = channel
                .call(message, Bytes::new(), Duration::from_secs(5))
                .await;
        });
    }
}

/// Supervises one slot until the registry stops.
pub(crate) async fn supervise(slot: u32, shared: Arc<Shared>) {
    let config = &shared.config;
    let mut stopping = shared.stopping.subscribe();
    let mut delay = config.restart_backoff;
    let mut quick_failures = 0;
    loop {
        let started = Instant::now();
        let outcome = run_worker(slot, &shared, &mut stopping).await;
        // The process is dead and reaped: only now may its shards move.
        {
            let mut state = shared.slots.slot(slot);
            state.channel = None;
            state.pid = None;
            state.endpoint = None;
            state.stats = None;
        }
        if let Err(e) = shared.update_table(|t| t.vacate(slot)).await {
            error!(slot, error = %e, "cannot record the placement");
        }
        push_placement(&shared);
        if *stopping.borrow() {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            delay = config.restart_backoff;
            quick_failures = 0;
        } else {
            quick_failures += 1;
        }
        {
            let mut state = shared.slots.slot(slot);
            state.restarts += 1;
            state.state = if quick_failures >= config.crash_loop_limit {
                WorkerState::CrashLoop
            } else {
                WorkerState::Restarting
            };
        }
        if quick_failures >= config.crash_loop_limit {
            error!(slot, failures = quick_failures, %outcome, ?delay, "worker is crash looping; retrying at the capped delay");
        } else {
            warn!(slot, %outcome, ?delay, "worker died; restarting");
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = until_stopping(&mut stopping) => break,
        }
        delay = (delay * 2).min(config.max_restart_backoff);
    }
    shared.slots.slot(slot).state = WorkerState::Stopped;
}

/// Kills (SIGKILL) and reaps.
async fn kill(child: &mut Child) -> String {
    let _ = child.start_kill();
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot reap: {e}"),
    }
}

/// Runs one process of the slot; returns, with the process reaped, a
/// description of how it ended.
async fn run_worker(slot: u32, shared: &Shared, stopping: &mut watch::Receiver<bool>) -> String {
    let config = &shared.config;
    let listen = match config.transport {
        TransportKind::Uds => format!(
            "unix:{}",
            shared
                .runtime_dir
                .join(format!("worker-{slot}.sock"))
                .display()
        ),
        TransportKind::Tcp => "tcp:127.0.0.1:0".to_owned(),
    };
    let shard_count = shared.placement.borrow().shard_count();
    let launch = WorkerLaunch {
        index: slot,
        registry: shared.control_endpoint.to_string(),
        listen,
        data_dir: config.data_dir.display().to_string(),
        storage: config.storage.clone(),
        shard_count,
        parent_pid: std::process::id(),
    };
    // The token goes through a pipe on the worker's standard input, never
    // its environment or command line (see odo_core::launch).
    let token_line = match odo_core::launch::encode_token(&config.token) {
        Ok(line) => line,
        Err(e) => return format!("cannot hand over the token: {e}"),
    };
    let mut command = tokio::process::Command::new(&config.command.program);
    command
        .args(&config.command.args)
        .args(launch.to_args())
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    let (hello_tx, hello) = oneshot::channel();
    let (mut child, pid, stdin) = {
        // Held across the spawn so the hello cannot arrive before its slot
        // expects it.
        let mut state = shared.slots.slot(slot);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return format!("cannot spawn {}: {e}", config.command.program.display()),
        };
        let Some(pid) = child.id() else {
            return "the worker exited at once".into();
        };
        let stdin = child.stdin.take();
        state.state = WorkerState::Starting;
        state.pid = Some(pid);
        state.waiting = Some((pid, hello_tx));
        (child, pid, stdin)
    };
    // The token fits in a pipe's buffer: this does not wait for the worker.
    // Closing the pipe afterwards leaves nothing for its children to read.
    let handed = match stdin {
        Some(mut stdin) => stdin.write_all(&token_line).await,
        None => Err(std::io::Error::other("no pipe to the worker's stdin")),
    };
    if let Err(e) = handed {
        return format!(
            "cannot hand the token to the worker: {e}; killed: {}",
            kill(&mut child).await
        );
    }
    let endpoint = tokio::select! {
        endpoint = hello => match endpoint {
            Ok(endpoint) => endpoint,
            Err(_) => return format!("hello lost; {}", kill(&mut child).await),
        },
        status = child.wait() => return format!("exited before its hello: {}", describe(status)),
        () = tokio::time::sleep(config.startup_timeout) => {
            return format!("no hello within {:?}; killed: {}", config.startup_timeout, kill(&mut child).await)
        }
        () = until_stopping(stopping) => return format!("stopped while starting: {}", kill(&mut child).await),
    };
    let channel = match endpoint.parse::<Endpoint>() {
        Ok(parsed) => match Channel::connect(&parsed, shared.client_config()).await {
            Ok(channel) => channel,
            Err(e) => {
                return format!(
                    "cannot connect to {endpoint}: {e}; killed: {}",
                    kill(&mut child).await
                );
            }
        },
        Err(e) => {
            return format!(
                "bad endpoint {endpoint:?}: {e}; killed: {}",
                kill(&mut child).await
            );
        }
    };

    // Assign the slot's shards: a new epoch, recorded durably, then the
    // worker opens the shard, then routers learn of it.
    let shards = shared.placement.borrow().shards_of(slot, config.workers);
    for shard in shards {
        let epoch = match shared.update_table(|t| t.bump_epoch(shard)).await {
            Ok(epoch) => epoch,
            Err(e) => {
                return format!(
                    "cannot record epochs: {e}; killed: {}",
                    kill(&mut child).await
                );
            }
        };
        let assign = Request::Control(Control::AssignShard { shard, epoch });
        match channel
            .call(assign, Bytes::new(), config.startup_timeout)
            .await
        {
            Ok((Response::Control(ControlReply::Ack), _)) => {}
            answer => {
                return format!(
                    "did not take shard {shard}: {answer:?}; killed: {}",
                    kill(&mut child).await
                );
            }
        }
        let owner = Owner {
            slot,
            pid,
            endpoint: endpoint.clone(),
        };
        if let Err(e) = shared.update_table(|t| t.set_owner(shard, owner)).await {
            return format!(
                "cannot record the placement: {e}; killed: {}",
                kill(&mut child).await
            );
        }
    }
    {
        let mut state = shared.slots.slot(slot);
        state.state = WorkerState::Running;
        state.endpoint = Some(endpoint.clone());
        state.channel = Some(channel.clone());
    }
    push_placement(shared);
    info!(slot, pid, %endpoint, "worker running");

    let mut ticks = tokio::time::interval(config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_limit = config.stall_limit.as_millis() as u64;
    loop {
        tokio::select! {
            status = child.wait() => return format!("exited: {}", describe(status)),
            _ = ticks.tick() => {
                let beat = Request::Control(Control::Heartbeat { now_ms: 0 });
                match channel.call(beat, Bytes::new(), config.heartbeat_timeout).await {
                    Ok((Response::Control(ControlReply::Stats(stats)), _)) => {
                        if stats.stalled_ms >= stall_limit {
                            warn!(slot, pid, stalled_ms = stats.stalled_ms, "object code has not returned from a poll for too long; killing the worker");
                            return format!(
                                "stalled: a poll of object code ran {} ms; killed: {}",
                                stats.stalled_ms,
                                kill(&mut child).await
                            );
                        }
                        shared.slots.record_stats(slot, pid, stats);
                    }
                    Ok((Response::Control(ControlReply::Heartbeat { .. }), _)) => {}
                    answer => {
                        warn!(slot, pid, ?answer, timeout = ?config.heartbeat_timeout, "worker did not answer its heartbeat; killing it");
                        return format!(
                            "no heartbeat answer within {:?}; killed: {}",
                            config.heartbeat_timeout,
                            kill(&mut child).await
                        );
                    }
                }
            }
            () = until_stopping(stopping) => {
                let bye = Request::Control(Control::Shutdown);
                let _ = channel.call(bye, Bytes::new(), config.shutdown_grace).await;
                return match tokio::time::timeout(config.shutdown_grace, child.wait()).await {
                    Ok(status) => format!("shut down: {}", describe(status)),
                    Err(_) => format!("did not exit within {:?}; killed: {}", config.shutdown_grace, kill(&mut child).await),
                };
            }
        }
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot reap: {e}"),
    }
}

/// Resolves once the registry is stopping.
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
