//! The registry's driver: one task runs the placement state machine
//! ([`odo_core::placement::Machine`]) and carries out what it decides.
//!
//! The machine decides everything that matters for safety (which process
//! holds which shard, at which epoch, when a dead worker's shards move and
//! when they move back, when a process is restarted or killed); this module
//! only does the I/O and reports each outcome back as an event: it spawns
//! worker processes (one task each, which waits for the hello, heartbeats
//! the worker, kills and reaps it when told, and reports its exit), writes
//! the cluster record (one task, in order), sends assigns and releases, and
//! publishes the routes to routers and workers.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_core::launch::WorkerLaunch;
use odo_core::placement::{
    Action, Event, Machine, Process, Record, RouteTable, SlotPhase, SlotStatus,
};
use odo_core::wire::{Control, ControlReply, Request, Response, WorkerStats};
use odo_transport::{Channel, Endpoint};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::placement::{Owner, PlacementTable, ShardEntry};
use crate::record::ClusterFile;
use crate::{Shared, TransportKind};

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
    pub state: SlotPhase,
    /// Failing quickly again and again: still restarted, at the capped
    /// delay, and its shards stay elsewhere until it has been stable.
    pub crash_looping: bool,
    /// How many times the slot's process ended and was restarted.
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

/// What is known of a process the driver runs.
#[derive(Debug, Clone, Default)]
struct ProcInfo {
    pid: Option<u32>,
    endpoint: Option<String>,
    channel: Option<Channel>,
    /// Its last figures, and when they came.
    stats: Option<(WorkerStats, Instant)>,
}

/// A process the driver runs.
#[derive(Debug)]
struct Proc {
    info: ProcInfo,
    /// Tells the process's task to stop or kill it.
    commands: mpsc::UnboundedSender<Command>,
}

/// What the driver tells a process's task.
#[derive(Debug, Clone, Copy)]
enum Command {
    /// Ask the worker to exit (`Control::Shutdown`).
    Stop,
    /// SIGKILL it.
    Kill,
}

/// What the driver's I/O tasks report.
#[derive(Debug)]
pub(crate) enum Input {
    /// An event for the machine.
    Event(Event),
    /// A process was spawned.
    Spawned { process: Process, pid: u32 },
    /// A process said hello and the registry's channel to it is open.
    Connected {
        process: Process,
        endpoint: String,
        channel: Channel,
    },
    /// Figures a process reported.
    Stats {
        process: Process,
        stats: WorkerStats,
    },
}

/// What the rest of the registry reads: the slots' status and the
/// processes' channels. Written by the driver only.
#[derive(Debug, Default)]
pub(crate) struct View {
    slots: Vec<SlotStatus>,
    procs: HashMap<Process, ProcInfo>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl View {
    /// Each slot as the admin endpoints show it.
    pub(crate) fn status(&self) -> Vec<WorkerStatus> {
        self.slots
            .iter()
            .map(|slot| {
                let proc = slot.process.and_then(|p| self.procs.get(&p));
                let stats = proc.and_then(|p| p.stats);
                WorkerStatus {
                    slot: slot.slot,
                    pid: proc.and_then(|p| p.pid),
                    endpoint: proc.and_then(|p| p.endpoint.clone()),
                    shards: slot.shards.clone(),
                    state: slot.phase,
                    crash_looping: slot.crash_looping,
                    restarts: slot.restarts,
                    live_objects: stats.map_or(0, |(s, _)| s.live_objects),
                    commit_batches: stats.map_or(0, |(s, _)| s.commit_batches),
                    commit_turns: stats.map_or(0, |(s, _)| s.commit_turns),
                    stats_age_ms: stats
                        .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                }
            })
            .collect()
    }

    /// Records figures `process` reported just now.
    pub(crate) fn record_stats(&mut self, process: Process, stats: WorkerStats) {
        if let Some(info) = self.procs.get_mut(&process) {
            info.stats = Some((stats, Instant::now()));
        }
    }

    /// The processes with an open channel.
    pub(crate) fn connected(&self) -> Vec<(Process, Channel)> {
        self.procs
            .iter()
            .filter_map(|(p, info)| Some((*p, info.channel.clone()?)))
            .collect()
    }
}

/// The hellos awaited: (slot, pid) to where the endpoint goes.
#[derive(Debug, Default)]
pub(crate) struct Hellos(Mutex<HashMap<(u32, u32), oneshot::Sender<String>>>);

impl Hellos {
    /// A worker's hello: accepted only from a process the registry started
    /// for that slot and still waits for.
    pub(crate) fn hello(&self, slot: u32, pid: u32, endpoint: String) -> Result<(), String> {
        match lock(&self.0).remove(&(slot, pid)) {
            Some(reply) => {
                let _ = reply.send(endpoint);
                Ok(())
            }
            None => Err(format!(
                "slot {slot} does not expect a hello from pid {pid}"
            )),
        }
    }
}

/// Runs the machine until it stopped (after a shutdown), then returns.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut machine: Machine,
    inputs: mpsc::UnboundedSender<Input>,
    mut received: mpsc::UnboundedReceiver<Input>,
) {
    let origin = Instant::now();
    let mut driver = Driver {
        shared: shared.clone(),
        inputs: inputs.clone(),
        procs: HashMap::new(),
        tasks: JoinSet::new(),
        records: start_persister(shared.clone(), inputs.clone()),
    };
    driver.publish_view(&machine);
    let mut next = Some(Input::Event(Event::Tick));
    loop {
        let input = match next.take() {
            Some(input) => input,
            None => {
                let wake = machine
                    .poll_timeout()
                    .map(|at| origin + at)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    input = received.recv() => match input {
                        Some(input) => input,
                        None => break,
                    },
                    () = tokio::time::sleep_until(wake) => Input::Event(Event::Tick),
                    Some(_) = driver.tasks.join_next(), if !driver.tasks.is_empty() => continue,
                }
            }
        };
        let event = match input {
            Input::Event(event) => event,
            Input::Spawned { process, pid } => {
                if let Some(proc) = driver.procs.get_mut(&process) {
                    proc.info.pid = Some(pid);
                }
                driver.publish_view(&machine);
                continue;
            }
            Input::Connected {
                process,
                endpoint,
                channel,
            } => {
                if let Some(proc) = driver.procs.get_mut(&process) {
                    proc.info.endpoint = Some(endpoint);
                    proc.info.channel = Some(channel);
                }
                Event::Ready { process }
            }
            Input::Stats { process, stats } => {
                if let Some(proc) = driver.procs.get_mut(&process) {
                    let newer = proc
                        .info
                        .stats
                        .is_none_or(|(known, _)| known.now_ms <= stats.now_ms);
                    if newer {
                        proc.info.stats = Some((stats, Instant::now()));
                    }
                }
                driver.publish_view(&machine);
                continue;
            }
        };
        if let Event::Exited { process } = &event {
            driver.procs.remove(process);
        }
        debug!(%event, "placement event");
        let actions = machine.handle(origin.elapsed(), event);
        for action in actions {
            driver.carry_out(action);
        }
        driver.publish_view(&machine);
        if machine.is_stopped() {
            break;
        }
    }
    info!("placement stopped");
}

struct Driver {
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
    procs: HashMap<Process, Proc>,
    tasks: JoinSet<()>,
    records: watch::Sender<Option<Record>>,
}

impl Driver {
    fn report(&self, event: Event) {
        let _ = self.inputs.send(Input::Event(event));
    }

    fn carry_out(&mut self, action: Action) {
        debug!(%action, "placement action");
        match action {
            Action::Spawn { process } => {
                let (commands, commanded) = mpsc::unbounded_channel();
                self.procs.insert(
                    process,
                    Proc {
                        info: ProcInfo::default(),
                        commands,
                    },
                );
                self.tasks.spawn(run_process(
                    process,
                    self.shared.clone(),
                    self.inputs.clone(),
                    commanded,
                ));
            }
            Action::Persist { record } => {
                self.records.send_replace(Some(record));
            }
            Action::Assign {
                shard,
                epoch,
                process,
            } => {
                let Some(channel) = self.channel_of(process) else {
                    self.report(Event::AssignFailed {
                        shard,
                        epoch,
                        process,
                    });
                    return;
                };
                let inputs = self.inputs.clone();
                let timeout = self.shared.config.startup_timeout;
                self.tasks.spawn(async move {
                    let assign = Request::Control(Control::AssignShard { shard, epoch });
                    let event = match channel.call(assign, Bytes::new(), timeout).await {
                        Ok((Response::Control(ControlReply::Ack), _)) => Event::Assigned {
                            shard,
                            epoch,
                            process,
                        },
                        Ok((Response::Error(error @ WireError::ShardRefused { .. }), _)) => {
                            warn!(shard, epoch, %process, %error, "the worker cannot open its shard; it is tried again after a pause, and the worker keeps its other shards");
                            Event::AssignRefused {
                                shard,
                                epoch,
                                process,
                            }
                        }
                        answer => {
                            warn!(shard, epoch, %process, ?answer, "the worker did not take its shard");
                            Event::AssignFailed {
                                shard,
                                epoch,
                                process,
                            }
                        }
                    };
                    let _ = inputs.send(Input::Event(event));
                });
            }
            Action::Release {
                shard,
                epoch,
                process,
            } => {
                let Some(channel) = self.channel_of(process) else {
                    self.report(Event::ReleaseFailed {
                        shard,
                        epoch,
                        process,
                    });
                    return;
                };
                let inputs = self.inputs.clone();
                // The worker waits up to its release grace for busy objects.
                let timeout = self.shared.config.shutdown_grace + Duration::from_secs(5);
                self.tasks.spawn(async move {
                    let release = Request::Control(Control::ReleaseShard { shard, epoch });
                    let event = match channel.call(release, Bytes::new(), timeout).await {
                        Ok((Response::Control(ControlReply::Ack), _)) => Event::Released {
                            shard,
                            epoch,
                            process,
                        },
                        answer => {
                            warn!(shard, epoch, %process, ?answer, "the worker did not release its shard");
                            Event::ReleaseFailed {
                                shard,
                                epoch,
                                process,
                            }
                        }
                    };
                    let _ = inputs.send(Input::Event(event));
                });
            }
            Action::Stop { process } => self.command(process, Command::Stop),
            Action::Kill { process } => self.command(process, Command::Kill),
            Action::Publish { routes } => self.publish(&routes),
        }
    }

    fn channel_of(&self, process: Process) -> Option<Channel> {
        self.procs.get(&process)?.info.channel.clone()
    }

    fn command(&self, process: Process, command: Command) {
        match self.procs.get(&process) {
            Some(proc) => {
                let _ = proc.commands.send(command);
            }
            // Its task already ended: it was reaped.
            None => self.report(Event::Exited { process }),
        }
    }

    /// Builds the placement table routers and workers follow.
    fn publish(&self, routes: &RouteTable) {
        let shards = routes
            .routes
            .iter()
            .map(|route| ShardEntry {
                epoch: route.epoch,
                owner: route.holder.and_then(|process| {
                    let info = &self.procs.get(&process)?.info;
                    Some(Owner {
                        slot: process.slot,
                        pid: info.pid?,
                        endpoint: info.endpoint.clone()?,
                    })
                }),
            })
            .collect();
        let table = PlacementTable {
            version: routes.version,
            shards,
        };
        let wire = table.to_wire();
        self.shared.placement.send_replace(Arc::new(table));
        // Best effort: a worker that misses it gets the next one, and
        // answers `Moved` meanwhile.
        for proc in self.procs.values() {
            if let Some(channel) = proc.info.channel.clone() {
                let message = Request::Control(Control::Placement(wire.clone()));
                tokio::spawn(async move {
                    let _ = channel
                        .call(message, Bytes::new(), Duration::from_secs(5))
                        .await;
                });
            }
        }
    }

    /// What the rest of the registry reads.
    fn publish_view(&self, machine: &Machine) {
        let mut view = lock(&self.shared.view);
        view.slots = machine.slots();
        view.procs = self
            .procs
            .iter()
            .map(|(process, proc)| (*process, proc.info.clone()))
            .collect();
        drop(view);
        self.shared.view_version.send_modify(|v| *v += 1);
    }
}

/// The task that writes the cluster record: always the newest one given,
/// in order, each reported durable with [`Event::Persisted`]. A failed
/// write is retried (with the newest record) until it succeeds.
fn start_persister(
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
) -> watch::Sender<Option<Record>> {
    let (records, mut pending) = watch::channel::<Option<Record>>(None);
    tokio::spawn(async move {
        loop {
            if pending.changed().await.is_err() {
                return;
            }
            loop {
                let Some(record) = pending.borrow_and_update().clone() else {
                    break;
                };
                let file = ClusterFile {
                    epochs: record.epochs.clone(),
                    assignment: record.assignment.clone(),
                    ..ClusterFile::new(record.epochs.len() as u32)
                };
                match shared.write_record(file).await {
                    Ok(()) => {
                        let _ = inputs.send(Input::Event(Event::Persisted { seq: record.seq }));
                        break;
                    }
                    Err(e) => {
                        error!(error = %e, "cannot write the cluster record; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    records
}

/// Kills (SIGKILL) and reaps.
async fn kill(child: &mut Child) -> String {
    let _ = child.start_kill();
    describe(child.wait().await)
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot reap: {e}"),
    }
}

/// Runs one process: spawns it, hands it the token, waits for its hello,
/// heartbeats it, stops or kills it when told, and reports
/// [`Event::Exited`] once it is reaped (and only then).
async fn run_process(
    process: Process,
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (outcome, as_asked) = process_life(process, &shared, &inputs, &mut commands).await;
    if as_asked {
        info!(%process, %outcome, "worker stopped");
    } else {
        // Also at shutdown: a worker killed after its grace period, or one
        // that failed, is news.
        warn!(%process, %outcome, "worker ended");
    }
    let _ = inputs.send(Input::Event(Event::Exited { process }));
}

/// The life of one process; returns, with the process reaped, how it ended
/// and whether that was as asked (it exited cleanly once told to stop, or
/// while the registry shuts down): a rolling restart's clean exits are no
/// warning.
async fn process_life(
    process: Process,
    shared: &Shared,
    inputs: &mpsc::UnboundedSender<Input>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (String, bool) {
    let config = &shared.config;
    let slot = process.slot;
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
    let launch = WorkerLaunch {
        index: slot,
        registry: shared.control_endpoint.to_string(),
        listen,
        data_dir: config.data_dir.display().to_string(),
        storage: config.storage.clone(),
        shard_count: shared.shard_count,
        parent_pid: std::process::id(),
        websocket_max_message_bytes: config.websocket_max_message_bytes as u64,
    };
    // The token goes through a pipe on the worker's standard input, never
    // its environment or command line (see odo_core::launch).
    let token_line = match odo_core::launch::encode_token(&config.token) {
        Ok(line) => line,
        Err(e) => return (format!("cannot hand over the token: {e}"), false),
    };
    let mut command = tokio::process::Command::new(&config.command.program);
    command
        .args(&config.command.args)
        .args(launch.to_args())
        .envs(config.worker_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    let (hello_tx, hello) = oneshot::channel();
    let (mut child, pid, stdin) = {
        // Held across the spawn so the hello cannot arrive before it is
        // expected.
        let mut hellos = lock(&shared.hellos.0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return (
                    format!("cannot spawn {}: {e}", config.command.program.display()),
                    false,
                );
            }
        };
        let Some(pid) = child.id() else {
            return ("the worker exited at once".into(), false);
        };
        let stdin = child.stdin.take();
        hellos.insert((slot, pid), hello_tx);
        (child, pid, stdin)
    };
    let _ = inputs.send(Input::Spawned { process, pid });
    let handed = match stdin {
        Some(mut stdin) => {
            let written = stdin.write_all(&token_line).await;
            // Dropping stdin closes the pipe: the worker reads to its end.
            drop(stdin);
            written
        }
        None => Err(std::io::Error::other("no pipe to the worker's stdin")),
    };
    if let Err(e) = handed {
        lock(&shared.hellos.0).remove(&(slot, pid));
        return (
            format!(
                "cannot hand over the token: {e}; killed: {}",
                kill(&mut child).await
            ),
            false,
        );
    }
    let endpoint = tokio::select! {
        endpoint = hello => match endpoint {
            Ok(endpoint) => endpoint,
            Err(_) => return (format!("hello lost; killed: {}", kill(&mut child).await), false),
        },
        status = child.wait() => {
            lock(&shared.hellos.0).remove(&(slot, pid));
            return (format!("exited before its hello: {}", describe(status)), false);
        }
        command = commands.recv() => {
            lock(&shared.hellos.0).remove(&(slot, pid));
            return (format!("{command:?} while starting; killed: {}", kill(&mut child).await), false);
        }
    };
    let channel = match endpoint.parse::<Endpoint>() {
        Ok(parsed) => match Channel::connect(&parsed, shared.client_config()).await {
            Ok(channel) => channel,
            Err(e) => {
                return (
                    format!(
                        "cannot connect to {endpoint}: {e}; killed: {}",
                        kill(&mut child).await
                    ),
                    false,
                );
            }
        },
        Err(e) => {
            return (
                format!(
                    "bad endpoint {endpoint:?}: {e}; killed: {}",
                    kill(&mut child).await
                ),
                false,
            );
        }
    };
    let _ = inputs.send(Input::Connected {
        process,
        endpoint: endpoint.clone(),
        channel: channel.clone(),
    });
    info!(%process, pid, %endpoint, "worker ready");

    let mut ticks = tokio::time::interval(config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_limit = config.stall_limit.as_millis() as u64;
    // Set once the worker was reported unresponsive: it is killed next.
    let mut reported = false;
    // Set once it was asked to stop: it closes its connections and drains,
    // so heartbeats would fail and report a draining worker unresponsive.
    // Its grace period bounds the drain instead (the machine's Kill).
    let mut stopping = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let clean = status.as_ref().is_ok_and(|s| s.success());
                let as_asked = clean && (stopping || shared.is_stopping());
                return (format!("exited: {}", describe(status)), as_asked);
            }
            command = commands.recv() => match command {
                Some(Command::Stop) => {
                    stopping = true;
                    let bye = Request::Control(Control::Shutdown);
                    let channel = channel.clone();
                    // The machine kills the process if it does not exit in
                    // its grace period; keep waiting for the exit meanwhile.
                    tokio::spawn(async move {
                        let _ = channel.call(bye, Bytes::new(), Duration::from_secs(5)).await;
                    });
                }
                Some(Command::Kill) | None => {
                    return (format!("killed: {}", kill(&mut child).await), false);
                }
            },
            _ = ticks.tick(), if !reported && !stopping => {
                let beat = Request::Control(Control::Heartbeat { now_ms: 0 });
                match channel.call(beat, Bytes::new(), config.heartbeat_timeout).await {
                    Ok((Response::Control(ControlReply::Stats(stats)), _)) => {
                        if stats.stalled_ms >= stall_limit {
                            warn!(%process, pid, stalled_ms = stats.stalled_ms, "object code has not returned from a poll for too long");
                            reported = true;
                        }
                        let _ = inputs.send(Input::Stats { process, stats });
                    }
                    Ok((Response::Control(ControlReply::Heartbeat { .. }), _)) => {}
                    answer => {
                        warn!(%process, pid, ?answer, timeout = ?config.heartbeat_timeout, "worker did not answer its heartbeat");
                        reported = true;
                    }
                }
                if reported {
                    let _ = inputs.send(Input::Event(Event::Unresponsive { process }));
                }
            }
        }
    }
}
