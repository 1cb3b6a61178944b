//! Placement as an I/O-free state machine: which worker process holds each
//! shard, at which epoch, and what the registry must do next.
//!
//! The [`Machine`] is handed events (a process said hello, a process was
//! reaped, a worker acknowledged a shard, a record reached the disk, time
//! passed) and hands back [`Action`]s (start a process, write the record,
//! assign or release a shard, stop or kill a process, publish the routes).
//! It never reads a clock, touches a file or a socket: time comes in as a
//! [`Duration`] since an origin the driver picks, the way quinn-proto takes
//! `now`. The registry is its driver; the property tests in
//! `odo-core/tests/placement_model.rs` are another.
//!
//! # Words
//!
//! - A **slot** (`0..workers`) is a place for one worker process; a
//!   [`Process`] is one run of a slot, numbered by its **generation**. A
//!   slot has at most one process at a time: the machine starts the next
//!   generation only after the previous one was reaped.
//! - A **shard** (`0..S`) has a **home** slot, `shard % workers`, where it
//!   lives when all is well. With S ≥ workers each slot is home to S /
//!   workers shards (one, once the registry has split shards so that every
//!   worker holds one); with fewer workers than shards a slot holds
//!   several.
//! - A shard's **epoch** grows by one each time the shard is given to a
//!   process. A worker serves a shard only at the epoch it was assigned, so
//!   a request stamped with an older epoch is answered `Moved`.
//!
//! # Slot states
//!
//! | state | on | the machine emits | next state |
//! | --- | --- | --- | --- |
//! | `Restarting` (down) | its restart time (a `Tick`) | `Spawn` | `Starting` |
//! | `Starting` | `Ready` | (assigns follow) | `Running` |
//! | `Starting` | [`Config::startup_timeout`] passed, `Unresponsive` | `Kill` | `Killing` |
//! | `Running` | `Drain` | `Release` of each of its shards | `Draining` |
//! | `Running`, `Draining` | `Unresponsive`, `AssignFailed`, `ReleaseFailed` | `Kill` | `Killing` |
//! | `Draining` | its last shard released | `Stop` | `Stopping` |
//! | `Stopping` | [`Config::stop_grace`] passed, `Unresponsive` | `Kill` | `Killing` |
//! | any with a process | `Exited` (reaped: known dead) | its shards are free | `Restarting` |
//! | `Starting` / `Running` | `Shutdown` | `Kill` / `Stop` | `Killing` / `Stopping` |
//! | without a process | `Shutdown` | | `Stopped` (never restarts) |
//!
//! A slot restarts at once after a drain, else after its restart backoff:
//! [`Config::restart_backoff`], doubling with each quick failure up to
//! [`Config::max_restart_backoff`], back to the start once a process stayed
//! ready for [`Config::stable_after`]. [`Config::crash_loop_limit`] quick
//! failures in a row flag the slot as crash looping: it is still restarted,
//! at the capped delay, and shards do not move back to it until it has
//! been stable.
//!
//! # Shard states
//!
//! | state | on | the machine emits | next state |
//! | --- | --- | --- | --- |
//! | `Unassigned` | a slot may take it (see below) | new epoch; `Persist` | `Persisting{to}` |
//! | `Persisting{to}` | `Persisted` covering it | `Assign` | `Assigning{to}` |
//! | `Persisting{to}` | `to` no longer running (or not current) | | `Unassigned` |
//! | `Assigning{to}` | `Assigned` | `Publish` | `Held{by: to}` |
//! | `Assigning{to}` | `AssignFailed` | `Kill` of `to` | `Held{by: to}` until reaped |
//! | `Assigning{to}` | `AssignRefused` | | `Unassigned`, placed again after its refusal backoff |
//! | `Held{by}` | `by` drains, or the home slot takes it back | `Release` | `Releasing{by}` |
//! | `Releasing{by}` | `Released` | | `Unassigned` |
//! | `Releasing{by}` | `ReleaseFailed` | `Kill` of `by` | `Releasing{by}` until reaped |
//! | `Assigning`, `Held`, `Releasing` | `Exited` of that process | | `Unassigned` |
//!
//! A shard leaves its holder only through `Released` (the holder said it
//! let go) or `Exited` (the holder's process was reaped): a hung holder is
//! killed first and keeps its shards until it is reaped. Then the shard is
//! given a new epoch, the epoch is written ([`Action::Persist`]), and only
//! once the driver reports it durable ([`Event::Persisted`]) does the
//! [`Action::Assign`] go out.
//!
//! Where a shard goes: to its home slot if that slot runs and is not
//! draining; else to the running slot with the fewest shards (the lowest
//! number on a tie), which then holds two for a while. A shard never
//! assigned since the machine started waits for its home slot while that
//! slot is starting, so a cold start does not pile every shard on the
//! first worker to say hello. A shard held away from home moves back
//! (release, then a new epoch at home) once its home slot runs, has run
//! for [`Config::move_back_after`], and is not crash looping.
//!
//! # Invariants (checked by the property tests at every step)
//!
//! - At most one live process holds (or has an `Assign` in flight for) a
//!   shard at any moment.
//! - Every `Assign` of a shard carries an epoch greater than every earlier
//!   `Assign` of that shard, and that epoch was in a record the driver
//!   reported durable before the `Assign` was emitted.
//! - A shard is assigned to a new process only after every earlier holder
//!   has been reported reaped ([`Event::Exited`]) or has released it
//!   ([`Event::Released`]).
//! - Published routes only name a process that holds the shard at the
//!   published epoch; versions and epochs of the routes never go back.
//! - Once nothing is in flight (no record, assign or release waiting for
//!   its answer), every shard is held whenever some slot is running (save
//!   a shard still waiting for its home slot's first start).
//!
//! # Driving it
//!
//! ```
//! use std::time::Duration;
//! use odo_core::placement::{Action, Config, Event, Machine};
//!
//! # fn main() -> Result<(), odo_core::placement::ConfigError> {
//! // Two workers; the data directory recorded these epochs for 2 shards.
//! let mut machine = Machine::new(Config::new(2), vec![0, 0])?;
//! let mut queue = vec![(Duration::ZERO, Event::Tick)];
//! while let Some((now, event)) = queue.pop() {
//!     for action in machine.handle(now, event) {
//!         // A real driver does the I/O here and reports the outcome later.
//!         match action {
//!             Action::Spawn { process } => queue.push((now, Event::Ready { process })),
//!             Action::Persist { record } => queue.push((now, Event::Persisted { seq: record.seq })),
//!             Action::Assign { shard, epoch, process } => {
//!                 queue.push((now, Event::Assigned { shard, epoch, process }))
//!             }
//!             Action::Release { shard, epoch, process } => {
//!                 queue.push((now, Event::Released { shard, epoch, process }))
//!             }
//!             Action::Stop { process } | Action::Kill { process } => {
//!                 queue.push((now, Event::Exited { process }))
//!             }
//!             Action::Publish { .. } => {}
//!         }
//!     }
//! }
//! assert!(machine.routes().routes.iter().all(|route| route.holder.is_some()));
//! # Ok(()) }
//! ```
//!
//! A registry runs one machine in one task: it feeds it every event (with
//! `now` = time since the registry's start), carries out each action (each
//! I/O in its own task, which reports back with an event), and sleeps until
//! the next event or [`Machine::poll_timeout`], whichever comes first, then
//! hands the machine [`Event::Tick`].

mod machine;
mod slot;
mod source;
mod view;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use machine::Machine;
pub use source::{Changed, PlacementSource, ShardLocation, ShardOwner};

/// One run of a worker slot: the slot and the process's generation (0 for
/// the slot's first process, then 1, 2, ...). The driver maps it to the
/// real process (pid, endpoint, channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Process {
    /// The worker slot.
    pub slot: u32,
    /// Which run of the slot.
    pub generation: u64,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}.{}", self.slot, self.generation)
    }
}

/// How the machine places shards and restarts workers. [`Config::new`]
/// gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Worker slots, N (at least one).
    pub workers: u32,
    /// How long a started process may take to become ready
    /// ([`Event::Ready`]) before it is killed. Default 10 s.
    pub startup_timeout: Duration,
    /// The first restart delay after a failure; it doubles with each quick
    /// failure. Zero restarts at once, every time. Default 50 ms.
    pub restart_backoff: Duration,
    /// The cap on the restart delay. Default 5 s.
    pub max_restart_backoff: Duration,
    /// How long a process must stay ready for its slot's backoff and
    /// quick-failure count to reset; a process that ends sooner counts as a
    /// quick failure. Default 10 s.
    pub stable_after: Duration,
    /// Quick failures in a row after which a slot is flagged as crash
    /// looping: it is restarted at the capped delay, and its home shards
    /// stay where they are until it has been stable. Default 5.
    pub crash_loop_limit: u32,
    /// How long a process asked to stop ([`Action::Stop`]) may take to exit
    /// before it is killed. Default 10 s.
    pub stop_grace: Duration,
    /// How long a slot must have been ready before shards held elsewhere
    /// move back to it. Default 0: as soon as it is ready.
    pub move_back_after: Duration,
}

impl Config {
    /// The defaults, for `workers` slots.
    pub fn new(workers: u32) -> Self {
        Self {
            workers,
            startup_timeout: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(50),
            max_restart_backoff: Duration::from_secs(5),
            stable_after: Duration::from_secs(10),
            crash_loop_limit: 5,
            stop_grace: Duration::from_secs(10),
            move_back_after: Duration::ZERO,
        }
    }
}

/// Why a [`Machine`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// [`Config::workers`] is 0.
    #[error("placement needs at least one worker slot")]
    NoWorkers,
    /// No epochs were given: a data directory has at least one shard.
    #[error("placement needs at least one shard")]
    NoShards,
    /// More shards than a `u32` numbers.
    #[error("{0} shards is more than placement can number")]
    TooManyShards(usize),
    /// A recorded epoch is above [`MAX_EPOCH`]: the record is corrupt.
    #[error("shard {shard} has epoch {epoch}, above {MAX_EPOCH}: the cluster record is corrupt")]
    EpochTooLarge {
        /// The shard.
        shard: u32,
        /// Its recorded epoch.
        epoch: u64,
    },
}

/// The largest epoch a machine starts from: far more assignments than any
/// cluster makes lie between it and `u64::MAX`, so epochs never wrap.
pub const MAX_EPOCH: u64 = u64::MAX / 2;

/// What happened, as the driver reports it to [`Machine::handle`]. Events
/// that no longer match the machine's state (about an older process, an
/// older epoch, a shard or slot that does not exist) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Time passed: see [`Machine::poll_timeout`].
    Tick,
    /// A process started by [`Action::Spawn`] said hello and the
    /// registry's control channel to it is connected: it can be given
    /// shards.
    Ready {
        /// The process.
        process: Process,
    },
    /// A process is known dead: it was reaped (or never started: a failed
    /// spawn is reported as an exit). Only this lets its shards move.
    Exited {
        /// The process.
        process: Process,
    },
    /// A process stopped answering (missed heartbeats): it is not known
    /// dead, so the machine has it killed and waits for
    /// [`Event::Exited`] before its shards move.
    Unresponsive {
        /// The process.
        process: Process,
    },
    /// A process acknowledged [`Action::Assign`]: it serves the shard.
    Assigned {
        /// The shard.
        shard: u32,
        /// The epoch it was assigned at.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// [`Action::Assign`] failed (a lost channel, a timeout): the process
    /// may or may not hold the shard, so it is killed and the shard moves
    /// once it is reaped.
    AssignFailed {
        /// The shard.
        shard: u32,
        /// The epoch of the assign.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// The process answered [`Action::Assign`] with a refusal (its store
    /// would not open: corrupt, locked, unreadable): it holds nothing of
    /// the shard and is not at fault, so it is not killed. The shard waits
    /// (its refusal backoff: [`Config::restart_backoff`] doubling up to
    /// [`Config::max_restart_backoff`]), then is placed again. A process
    /// killed for a shard it cannot open would take every other shard down
    /// with it, worker after worker.
    AssignRefused {
        /// The shard.
        shard: u32,
        /// The epoch of the assign.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// A process acknowledged [`Action::Release`]: it no longer serves the
    /// shard and has closed its store.
    Released {
        /// The shard.
        shard: u32,
        /// The epoch it held the shard at.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// [`Action::Release`] failed: the process may still hold the shard,
    /// so it is killed and the shard moves once it is reaped.
    ReleaseFailed {
        /// The shard.
        shard: u32,
        /// The epoch of the release.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// The record with this sequence number (and every earlier one) is
    /// durable.
    Persisted {
        /// [`Record::seq`] of the record written.
        seq: u64,
    },
    /// Retire the slot's running process gracefully: its shards move to
    /// other workers first (release, then assign), then it is stopped and
    /// started again at once; its shards come back once the new process is
    /// ready. Ignored unless the slot is running.
    Drain {
        /// The slot.
        slot: u32,
    },
    /// The registry is stopping: every process is stopped (killed if it is
    /// still starting or does not exit within the grace period), nothing is
    /// restarted or assigned any more.
    Shutdown,
}

/// What the driver must do, in the order given. Each I/O's outcome comes
/// back as an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start a new process for the slot. Report [`Event::Ready`] when it
    /// said hello, or [`Event::Exited`] if it could not start or died.
    Spawn {
        /// The new process.
        process: Process,
    },
    /// Write the record durably (temporary file, fsync, rename, fsync of
    /// the directory), then report [`Event::Persisted`]. Write records in
    /// the order given; a later record replaces an earlier one that is not
    /// written yet. If a write fails, report nothing: retry with
    /// [`Machine::record`] (or stop the registry); the assigns waiting for
    /// it stay back.
    Persist {
        /// The epochs and assignment to record.
        record: Record,
    },
    /// Tell the process to serve `shard` at `epoch` (`Control::AssignShard`),
    /// then report [`Event::Assigned`] or [`Event::AssignFailed`].
    Assign {
        /// The shard.
        shard: u32,
        /// Its new epoch, already durable.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// Tell the process to stop serving `shard`, flushing and closing its
    /// store (`Control::ReleaseShard`), then report [`Event::Released`] or
    /// [`Event::ReleaseFailed`].
    Release {
        /// The shard.
        shard: u32,
        /// The epoch the process holds it at.
        epoch: u64,
        /// The process.
        process: Process,
    },
    /// Ask the process to exit gracefully (`Control::Shutdown`); report
    /// [`Event::Exited`] once it is reaped.
    Stop {
        /// The process.
        process: Process,
    },
    /// Kill the process (SIGKILL) and reap it; report [`Event::Exited`].
    Kill {
        /// The process.
        process: Process,
    },
    /// The routes changed: publish them to routers and workers.
    Publish {
        /// The new routes.
        routes: RouteTable,
    },
}

/// What must be durable before an epoch is used: every shard's newest
/// epoch, and where each shard is (being) assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Grows with each record; [`Event::Persisted`] names it.
    pub seq: u64,
    /// Each shard's newest epoch: the next start of the registry continues
    /// from these, so an epoch is never handed out twice.
    pub epochs: Vec<u64>,
    /// The slot each shard is held by or on its way to (informational).
    pub assignment: Vec<Option<u32>>,
}

/// The placement routers see: for each shard, the epoch to stamp requests
/// with and the process serving it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// Grows with each change.
    pub version: u64,
    /// One route per shard, indexed by shard number.
    pub routes: Vec<Route>,
}

/// Where one shard is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The epoch of the shard's latest assign (never one that is not
    /// durable).
    pub epoch: u64,
    /// The process serving the shard at that epoch; `None` while the shard
    /// moves, or while its holder is being stopped or killed (requests
    /// then wait for the next route rather than reach a dying process).
    pub holder: Option<Process>,
}

/// A slot's state, as admin endpoints show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotPhase {
    /// No process; one starts at the restart time.
    Restarting,
    /// Started, not ready yet.
    Starting,
    /// Ready: may hold shards.
    Running,
    /// Ready, handing its shards to others before it stops.
    Draining,
    /// Asked to exit.
    Stopping,
    /// Being killed (unresponsive, failed a shard operation, or did not
    /// start or stop in time).
    Killing,
    /// No process, and none will start (the registry is stopping).
    Stopped,
}

/// One slot as admin endpoints show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot.
    pub slot: u32,
    /// Its current process, if any.
    pub process: Option<Process>,
    /// Its state.
    pub phase: SlotPhase,
    /// How many times a process of the slot ended and was to be restarted.
    pub restarts: u32,
    /// Failing quickly again and again (see [`Config::crash_loop_limit`]).
    pub crash_looping: bool,
    /// The shards it holds (assigned and acknowledged).
    pub shards: Vec<u32>,
}

/// Where a shard is in its moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardPhase {
    /// Nobody holds it, nothing is in flight.
    Unassigned,
    /// A new epoch for `to` is being written.
    Persisting {
        /// Where it goes.
        to: Process,
    },
    /// Assigned to `to`, not yet acknowledged.
    Assigning {
        /// Where it goes.
        to: Process,
    },
    /// Held and served by `by`.
    Held {
        /// The holder.
        by: Process,
    },
    /// `by` was asked to release it.
    Releasing {
        /// The holder.
        by: Process,
    },
}

/// One shard as admin endpoints show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard: u32,
    /// Its home slot.
    pub home: u32,
    /// Its newest epoch (possibly not yet durable or assigned).
    pub epoch: u64,
    /// Where it is.
    pub phase: ShardPhase,
    /// Refused by a worker (its store would not open): not placed again
    /// before this time (since the driver's origin).
    #[serde(default)]
    pub refused_until: Option<Duration>,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Tick => write!(f, "tick"),
            Event::Ready { process } => write!(f, "ready {process}"),
            Event::Exited { process } => write!(f, "exited {process}"),
            Event::Unresponsive { process } => write!(f, "unresponsive {process}"),
            Event::Assigned {
                shard,
                epoch,
                process,
            } => write!(f, "assigned s{shard}@{epoch} {process}"),
            Event::AssignFailed {
                shard,
                epoch,
                process,
            } => write!(f, "assign-failed s{shard}@{epoch} {process}"),
            Event::AssignRefused {
                shard,
                epoch,
                process,
            } => write!(f, "assign-refused s{shard}@{epoch} {process}"),
            Event::Released {
                shard,
                epoch,
                process,
            } => write!(f, "released s{shard}@{epoch} {process}"),
            Event::ReleaseFailed {
                shard,
                epoch,
                process,
            } => write!(f, "release-failed s{shard}@{epoch} {process}"),
            Event::Persisted { seq } => write!(f, "persisted #{seq}"),
            Event::Drain { slot } => write!(f, "drain slot {slot}"),
            Event::Shutdown => write!(f, "shutdown"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Spawn { process } => write!(f, "spawn {process}"),
            Action::Persist { record } => {
                write!(f, "persist #{} epochs {:?} on [", record.seq, record.epochs)?;
                for (i, slot) in record.assignment.iter().enumerate() {
                    let sep = if i == 0 { "" } else { " " };
                    match slot {
                        Some(slot) => write!(f, "{sep}{slot}")?,
                        None => write!(f, "{sep}-")?,
                    }
                }
                write!(f, "]")
            }
            Action::Assign {
                shard,
                epoch,
                process,
            } => write!(f, "assign s{shard}@{epoch} {process}"),
            Action::Release {
                shard,
                epoch,
                process,
            } => write!(f, "release s{shard}@{epoch} {process}"),
            Action::Stop { process } => write!(f, "stop {process}"),
            Action::Kill { process } => write!(f, "kill {process}"),
            Action::Publish { routes } => write!(f, "publish {routes}"),
        }
    }
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{} [", self.version)?;
        for (shard, route) in self.routes.iter().enumerate() {
            let sep = if shard == 0 { "" } else { " " };
            match route.holder {
                Some(holder) => write!(f, "{sep}s{shard}@{}:{holder}", route.epoch)?,
                None => write!(f, "{sep}s{shard}@{}:-", route.epoch)?,
            }
        }
        write!(f, "]")
    }
}
