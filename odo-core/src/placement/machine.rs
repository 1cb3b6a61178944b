//! The placement machine itself: slots, shards, and the rules that move
//! them. See the module above for the states, events and invariants.

use std::time::Duration;

use super::slot::{Phase, Slot};
use super::{Action, Config, ConfigError, Event, MAX_EPOCH, Process, Record, Route, RouteTable};

/// Placement of S shards over N worker slots, with epochs, failover,
/// restart backoff and drains: events in, actions out, no I/O. See the
/// [module documentation](super) for how to drive it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub(super) config: Config,
    /// The latest `now` handed in: time never goes back inside.
    pub(super) now: Duration,
    pub(super) slots: Vec<Slot>,
    pub(super) shards: Vec<Shard>,
    pub(super) shutting_down: bool,
    /// The seq of the next record to emit.
    pub(super) next_seq: u64,
    /// Every record up to this seq is durable (0: the one the machine was
    /// made from).
    pub(super) durable_seq: u64,
    /// An epoch was allocated since the last record.
    pub(super) epochs_dirty: bool,
    pub(super) routes: RouteTable,
    pub(super) out: Vec<Action>,
}

#[derive(Debug, Clone)]
pub(super) struct Shard {
    pub(super) home: u32,
    /// The newest epoch allocated (maybe not yet durable).
    pub(super) epoch: u64,
    /// The epoch of the latest `Assign` (or the recorded one at start).
    pub(super) sent_epoch: u64,
    pub(super) state: State,
    /// Assigned at least once since the machine started.
    pub(super) ever_assigned: bool,
    /// Refusals in a row (a worker could not open its store); 0 once a
    /// worker took it.
    pub(super) refusals: u32,
    /// Not placed again before this time, after a refusal.
    pub(super) refused_until: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Unassigned,
    Persisting { to: Process, seq: u64 },
    Assigning { to: Process },
    Held { by: Process },
    Releasing { by: Process },
}

impl State {
    /// The process this state involves.
    pub(super) fn process(self) -> Option<Process> {
        match self {
            State::Unassigned => None,
            State::Persisting { to, .. } | State::Assigning { to } => Some(to),
            State::Held { by } | State::Releasing { by } => Some(by),
        }
    }
}

impl Machine {
    /// A machine for `config.workers` slots and one shard per entry of
    /// `epochs` (each shard's newest recorded epoch; the next assign uses a
    /// greater one). Every slot is down and due to start: hand it
    /// [`Event::Tick`] to get the first [`Action::Spawn`]s.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when there are no slots or no shards, or a recorded
    /// epoch is corrupt.
    pub fn new(config: Config, epochs: Vec<u64>) -> Result<Self, ConfigError> {
        if config.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if epochs.is_empty() {
            return Err(ConfigError::NoShards);
        }
        let count = epochs.len();
        if u32::try_from(count).is_err() {
            return Err(ConfigError::TooManyShards(count));
        }
        if let Some((shard, &epoch)) = (0u32..).zip(&epochs).find(|(_, e)| **e > MAX_EPOCH) {
            return Err(ConfigError::EpochTooLarge { shard, epoch });
        }
        let workers = config.workers;
        let slots = (0..workers).map(|_| Slot::new(&config)).collect();
        let shards: Vec<Shard> = epochs
            .iter()
            .zip(0u32..)
            .map(|(&epoch, shard)| Shard {
                home: shard % workers,
                epoch,
                sent_epoch: epoch,
                state: State::Unassigned,
                ever_assigned: false,
                refusals: 0,
                refused_until: None,
            })
            .collect();
        let routes = RouteTable {
            version: 1,
            routes: shards
                .iter()
                .map(|s| Route {
                    epoch: s.sent_epoch,
                    holder: None,
                })
                .collect(),
        };
        Ok(Self {
            config,
            now: Duration::ZERO,
            slots,
            shards,
            shutting_down: false,
            next_seq: 1,
            durable_seq: 0,
            epochs_dirty: false,
            routes,
            out: Vec::new(),
        })
    }

    /// Takes one event at `now` (time since the driver's origin; a `now`
    /// earlier than one already seen counts as that one) and returns what
    /// to do, in order.
    pub fn handle(&mut self, now: Duration, event: Event) -> Vec<Action> {
        self.now = self.now.max(now);
        match event {
            Event::Tick => {}
            Event::Ready { process } => {
                let now = self.now;
                if let Some(slot) = self.slot_mut(process.slot)
                    && slot.phase.process() == Some(process)
                    && matches!(slot.phase, Phase::Starting { .. })
                {
                    slot.phase = Phase::Running {
                        process,
                        draining: false,
                    };
                    slot.ready_since = Some(now);
                }
            }
            Event::Exited { process } => self.exited(process),
            Event::Unresponsive { process } => {
                if self.is_current(process) {
                    self.kill(process.slot);
                }
            }
            Event::Assigned {
                shard,
                epoch,
                process,
            } => {
                if let Some(s) = self.shard_at(shard, epoch)
                    && s.state == (State::Assigning { to: process })
                {
                    s.state = State::Held { by: process };
                    s.refusals = 0;
                    s.refused_until = None;
                }
            }
            Event::AssignRefused {
                shard,
                epoch,
                process,
            } => {
                let now = self.now;
                let (first, most) = (self.config.restart_backoff, self.config.max_restart_backoff);
                if let Some(s) = self.shard_at(shard, epoch)
                    && s.state == (State::Assigning { to: process })
                {
                    // It holds nothing: the shard is free, and waits.
                    s.state = State::Unassigned;
                    s.refusals = s.refusals.saturating_add(1);
                    let doubled = first.saturating_mul(1u32 << (s.refusals - 1).min(16));
                    s.refused_until = Some(now.saturating_add(doubled.min(most)));
                }
            }
            Event::AssignFailed {
                shard,
                epoch,
                process,
            } => {
                if let Some(s) = self.shard_at(shard, epoch)
                    && s.state == (State::Assigning { to: process })
                {
                    // It may hold the shard: it keeps it until it is reaped.
                    s.state = State::Held { by: process };
                    self.kill(process.slot);
                }
            }
            Event::Released {
                shard,
                epoch,
                process,
            } => {
                if let Some(s) = self.shard_at(shard, epoch)
                    && s.state == (State::Releasing { by: process })
                {
                    s.state = State::Unassigned;
                }
            }
            Event::ReleaseFailed {
                shard,
                epoch,
                process,
            } => {
                if let Some(s) = self.shard_at(shard, epoch)
                    && s.state == (State::Releasing { by: process })
                {
                    self.kill(process.slot);
                }
            }
            Event::Persisted { seq } => {
                // Only records that were emitted can be durable.
                let seq = seq.min(self.next_seq - 1);
                self.durable_seq = self.durable_seq.max(seq);
            }
            Event::Drain { slot } => {
                let stopping = self.shutting_down;
                if let Some(slot) = self.slot_mut(slot)
                    && !stopping
                    && let Phase::Running { draining, .. } = &mut slot.phase
                {
                    *draining = true;
                }
            }
            Event::Shutdown => self.shut_down(),
        }
        self.reconcile();
        std::mem::take(&mut self.out)
    }

    /// When the machine next needs [`Event::Tick`] (time since the
    /// driver's origin, always later than the last `now`), or `None` when
    /// only an event can change anything.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let c = &self.config;
        let mut next: Option<Duration> = None;
        let mut consider = |at: Duration| {
            if at > self.now {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for (index, slot) in (0u32..).zip(&self.slots) {
            match slot.phase {
                Phase::Down {
                    restart_at: Some(at),
                } if !self.shutting_down => consider(at),
                Phase::Down { .. } | Phase::Killing { .. } => {}
                Phase::Starting { since, .. } => consider(since.saturating_add(c.startup_timeout)),
                Phase::Stopping { since, .. } => consider(since.saturating_add(c.stop_grace)),
                Phase::Running { .. } => {
                    let Some(ready) = slot.ready_since else {
                        continue;
                    };
                    if slot.backed_off(c) {
                        consider(ready.saturating_add(c.stable_after));
                    }
                    if !self.shutting_down && self.has_shards_away(index) {
                        consider(ready.saturating_add(c.move_back_after));
                    }
                }
            }
        }
        if !self.shutting_down {
            for shard in &self.shards {
                if shard.state == State::Unassigned
                    && let Some(until) = shard.refused_until
                {
                    consider(until);
                }
            }
        }
        next
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Slot> {
        self.slots.get_mut(slot as usize)
    }

    fn slot(&self, slot: u32) -> &Slot {
        &self.slots[slot as usize]
    }

    /// The shard, if it exists and `epoch` is its newest.
    fn shard_at(&mut self, shard: u32, epoch: u64) -> Option<&mut Shard> {
        self.shards
            .get_mut(shard as usize)
            .filter(|s| s.epoch == epoch)
    }

    fn is_current(&self, process: Process) -> bool {
        self.slots
            .get(process.slot as usize)
            .is_some_and(|s| s.phase.process() == Some(process))
    }

    /// Running, not draining, and not shutting down: may take shards.
    fn eligible(&self, slot: u32) -> bool {
        !self.shutting_down
            && matches!(
                self.slot(slot).phase,
                Phase::Running {
                    draining: false,
                    ..
                }
            )
    }

    fn eligible_process(&self, process: Process) -> bool {
        self.is_current(process) && self.eligible(process.slot)
    }

    /// Whether shards held elsewhere may come home to `slot` now.
    fn takes_shards_back(&self, slot: u32) -> bool {
        let s = self.slot(slot);
        self.eligible(slot)
            && !s.crash_looping(&self.config)
            && s.ready_since
                .is_some_and(|ready| ready.saturating_add(self.config.move_back_after) <= self.now)
    }

    /// Whether some shard whose home is `slot` is held by another slot.
    fn has_shards_away(&self, slot: u32) -> bool {
        self.shards
            .iter()
            .any(|s| s.home == slot && matches!(s.state, State::Held { by } if by.slot != slot))
    }

    /// Whether any shard involves `process`.
    fn involves(&self, process: Process) -> bool {
        self.shards
            .iter()
            .any(|s| s.state.process() == Some(process))
    }

    /// Has the slot's process killed, unless it is already being killed.
    fn kill(&mut self, slot: u32) {
        let Some(s) = self.slot_mut(slot) else {
            return;
        };
        match s.phase {
            Phase::Starting { process, .. }
            | Phase::Running { process, .. }
            | Phase::Stopping { process, .. } => {
                s.phase = Phase::Killing { process };
                self.out.push(Action::Kill { process });
            }
            Phase::Down { .. } | Phase::Killing { .. } => {}
        }
    }

    /// The process is reaped: its shards are free, and its slot waits for
    /// its restart.
    fn exited(&mut self, process: Process) {
        if !self.is_current(process) {
            return;
        }
        let now = self.now;
        let shutting_down = self.shutting_down;
        let config = &self.config;
        let slot = &mut self.slots[process.slot as usize];
        let drained = matches!(slot.phase, Phase::Stopping { restart: true, .. });
        let restart_at = if shutting_down {
            None
        } else if drained {
            Some(now)
        } else {
            Some(now.saturating_add(slot.failed(now, config)))
        };
        if restart_at.is_some() {
            slot.restarts = slot.restarts.saturating_add(1);
        }
        slot.phase = Phase::Down { restart_at };
        slot.ready_since = None;
        for shard in &mut self.shards {
            if shard.state.process() == Some(process) {
                shard.state = State::Unassigned;
            }
        }
    }

    fn shut_down(&mut self) {
        self.shutting_down = true;
        for index in 0..self.config.workers {
            let now = self.now;
            let slot = &mut self.slots[index as usize];
            match slot.phase {
                Phase::Starting { .. } => self.kill(index),
                Phase::Running { process, .. } => {
                    slot.phase = Phase::Stopping {
                        process,
                        since: now,
                        restart: false,
                    };
                    self.out.push(Action::Stop { process });
                }
                Phase::Stopping {
                    ref mut restart, ..
                } => *restart = false,
                Phase::Down { ref mut restart_at } => *restart_at = None,
                Phase::Killing { .. } => {}
            }
        }
    }

    /// Brings everything up to date with `now` and the state: timers,
    /// shard moves, stops of drained slots, the record, the routes.
    fn reconcile(&mut self) {
        self.run_timers();
        if self.shutting_down {
            for shard in &mut self.shards {
                if matches!(shard.state, State::Persisting { .. }) {
                    shard.state = State::Unassigned;
                }
            }
        } else {
            self.place();
            self.stop_drained();
        }
        if self.epochs_dirty {
            self.epochs_dirty = false;
            let record = Record {
                seq: self.next_seq,
                ..self.record()
            };
            self.next_seq += 1;
            self.out.push(Action::Persist { record });
        }
        self.publish();
    }

    fn run_timers(&mut self) {
        let now = self.now;
        for index in 0..self.config.workers {
            let c = &self.config;
            let slot = &mut self.slots[index as usize];
            match slot.phase {
                Phase::Starting { since, .. } if since.saturating_add(c.startup_timeout) <= now => {
                    self.kill(index);
                }
                Phase::Stopping { since, .. } if since.saturating_add(c.stop_grace) <= now => {
                    self.kill(index);
                }
                Phase::Down {
                    restart_at: Some(at),
                } if at <= now && !self.shutting_down => {
                    let process = Process {
                        slot: index,
                        generation: slot.next_generation,
                    };
                    slot.next_generation += 1;
                    slot.phase = Phase::Starting {
                        process,
                        since: now,
                    };
                    self.out.push(Action::Spawn { process });
                }
                Phase::Running { .. } if slot.stable(now, c) => slot.reset_backoff(c),
                _ => {}
            }
        }
    }

    /// Moves shards: assigns those whose epoch is durable, releases those
    /// that must leave their holder, and gives free shards a target and a
    /// new epoch.
    fn place(&mut self) {
        for index in 0..self.shards.len() {
            if let State::Persisting { to, seq } = self.shards[index].state {
                let eligible = self.eligible_process(to);
                let shard = &mut self.shards[index];
                if !eligible {
                    shard.state = State::Unassigned;
                } else if seq <= self.durable_seq {
                    shard.state = State::Assigning { to };
                    shard.sent_epoch = shard.epoch;
                    shard.ever_assigned = true;
                    self.out.push(Action::Assign {
                        shard: index as u32,
                        epoch: shard.epoch,
                        process: to,
                    });
                }
            }
        }
        for index in 0..self.shards.len() {
            let shard = &self.shards[index];
            if let State::Held { by } = shard.state
                && let Phase::Running { process, draining } = self.slot(by.slot).phase
                && process == by
            {
                // Only a running holder can let go: one being stopped or
                // killed keeps its shards until it is reaped.
                let going_home = by.slot != shard.home && self.takes_shards_back(shard.home);
                if draining || going_home {
                    let epoch = shard.epoch;
                    self.shards[index].state = State::Releasing { by };
                    self.out.push(Action::Release {
                        shard: index as u32,
                        epoch,
                        process: by,
                    });
                }
            }
        }
        let mut load = vec![0usize; self.slots.len()];
        for shard in &self.shards {
            if let State::Persisting { to: p, .. }
            | State::Assigning { to: p }
            | State::Held { by: p } = shard.state
            {
                load[p.slot as usize] += 1;
            }
        }
        for index in 0..self.shards.len() {
            let shard = &self.shards[index];
            if shard.state != State::Unassigned
                || shard.refused_until.is_some_and(|until| until > self.now)
            {
                continue;
            }
            let Some(slot) = self.target(index, &load) else {
                continue;
            };
            let Some(to) = self.slot(slot).phase.process() else {
                continue;
            };
            load[slot as usize] += 1;
            let shard = &mut self.shards[index];
            shard.epoch += 1;
            shard.state = State::Persisting {
                to,
                seq: self.next_seq,
            };
            self.epochs_dirty = true;
        }
    }

    /// Where a free shard goes: home if it may, else the least loaded
    /// running slot; `None` to wait.
    fn target(&self, index: usize, load: &[usize]) -> Option<u32> {
        let shard = &self.shards[index];
        if self.eligible(shard.home) {
            return Some(shard.home);
        }
        if !shard.ever_assigned && matches!(self.slot(shard.home).phase, Phase::Starting { .. }) {
            // A cold start: wait for the home slot rather than pile every
            // shard on the first worker that is ready.
            return None;
        }
        (0..self.config.workers)
            .filter(|&slot| self.eligible(slot))
            .min_by_key(|&slot| (load[slot as usize], slot))
    }

    /// Stops draining processes that no longer hold or await any shard.
    fn stop_drained(&mut self) {
        for index in 0..self.slots.len() {
            if let Phase::Running {
                process,
                draining: true,
            } = self.slots[index].phase
                && !self.involves(process)
            {
                self.slots[index].phase = Phase::Stopping {
                    process,
                    since: self.now,
                    restart: true,
                };
                self.out.push(Action::Stop { process });
            }
        }
    }

    /// Publishes the routes if they changed.
    fn publish(&mut self) {
        let routes: Vec<Route> = self
            .shards
            .iter()
            .map(|s| Route {
                epoch: s.sent_epoch,
                holder: match s.state {
                    State::Held { by } if self.eligible_process(by) => Some(by),
                    _ => None,
                },
            })
            .collect();
        if routes != self.routes.routes {
            self.routes.version += 1;
            self.routes.routes = routes;
            self.out.push(Action::Publish {
                routes: self.routes.clone(),
            });
        }
    }
}
