//! Model-based tests of the placement machine: a simulated registry drives
//! it with random starts, hellos, crashes, hangs, kills, reaps, drains,
//! shutdowns, failed and delayed acknowledgements and passing time, and
//! checks the invariants of `odo_core::placement` after every step; then
//! lets everything settle and checks that every shard is back home.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use odo_core::placement::{
    Action, Config, Event, Machine, Process, RouteTable, ShardPhase, SlotPhase,
};
use proptest::prelude::*;

/// One step of the simulated world. Indices pick among what exists at that
/// moment (modulo its count).
#[derive(Debug, Clone)]
enum Op {
    /// Carry out a pending action successfully.
    Carry(usize),
    /// Carry out a pending action, failing it.
    Fail(usize),
    /// A live worker refuses a pending assign: its store would not open,
    /// and it holds nothing of the shard.
    Refuse(usize),
    /// A live process dies (not yet reaped: the registry does not know).
    Crash(usize),
    /// A dead process is reaped: the registry reports it exited.
    Reap(usize),
    /// A live process hangs: it answers nothing any more.
    Hang(usize),
    /// The registry reports a process unresponsive (rightly or not).
    Report(usize),
    /// A started process says hello.
    Hello(usize),
    /// Time passes, in milliseconds.
    Advance(u64),
    /// A slot is drained.
    Drain(u32),
}

#[derive(Debug, Default)]
struct Proc {
    alive: bool,
    reaped: bool,
    hung: bool,
    said_hello: bool,
    /// What the process believes it serves: shard to epoch.
    held: BTreeMap<u32, u64>,
}

/// How often interesting paths were taken (to show the tests are not
/// vacuous).
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    away_from_home: u64,
    move_backs: u64,
    kills: u64,
    drains_stopped: u64,
    refusals: u64,
}

/// A simulated registry around the machine, with the invariant checks.
struct World {
    machine: Machine,
    workers: u32,
    now: Duration,
    procs: BTreeMap<Process, Proc>,
    /// Actions not carried out yet (spawns are carried out at once).
    pending: Vec<Action>,
    /// The epochs of the last record reported durable.
    durable: Vec<u64>,
    /// The epochs of the last record emitted, and its seq.
    emitted: (u64, Vec<u64>),
    /// The epoch of each shard's latest assign.
    assigned: Vec<u64>,
    routes: RouteTable,
    epochs: Vec<u64>,
    shut_down: bool,
    log: String,
    seen: Seen,
}

fn config(workers: u32, move_back_ms: u64) -> Config {
    Config {
        workers,
        startup_timeout: Duration::from_millis(1_000),
        restart_backoff: Duration::from_millis(50),
        max_restart_backoff: Duration::from_millis(800),
        stable_after: Duration::from_millis(2_000),
        crash_loop_limit: 3,
        stop_grace: Duration::from_millis(1_000),
        move_back_after: Duration::from_millis(move_back_ms),
    }
}

impl World {
    fn new(workers: u32, epochs: Vec<u64>, move_back_ms: u64) -> World {
        let machine = Machine::new(config(workers, move_back_ms), epochs.clone()).unwrap();
        let mut world = World {
            routes: machine.routes().clone(),
            machine,
            workers,
            now: Duration::ZERO,
            procs: BTreeMap::new(),
            pending: Vec::new(),
            durable: epochs.clone(),
            emitted: (0, epochs.clone()),
            assigned: epochs.clone(),
            epochs,
            shut_down: false,
            log: String::new(),
            seen: Seen::default(),
        };
        world.event(Event::Tick);
        world
    }

    /// Panics with the transcript so far.
    fn fail(&self, why: String) -> ! {
        panic!("{why}\n--- transcript ---\n{}", self.log);
    }

    fn check(&self, ok: bool, why: impl FnOnce() -> String) {
        if !ok {
            self.fail(why());
        }
    }

    fn event(&mut self, event: Event) {
        if matches!(event, Event::Shutdown) {
            self.shut_down = true;
        }
        let actions = self.machine.handle(self.now, event.clone());
        let _ = write!(self.log, "t={} {event} ->", self.now.as_millis());
        for action in &actions {
            let _ = write!(self.log, " [{action}]");
        }
        self.log.push('\n');
        for action in actions {
            self.emitted_action(action);
        }
        self.check_state();
    }

    /// The checks on each action as it is emitted.
    fn emitted_action(&mut self, action: Action) {
        match &action {
            Action::Spawn { process } => {
                let p = *process;
                self.check(!self.shut_down, || format!("{p} spawned after shutdown"));
                self.check(!self.procs.contains_key(&p), || {
                    format!("{p} spawned twice")
                });
                let others = self
                    .procs
                    .iter()
                    .filter(|(q, s)| q.slot == p.slot && !s.reaped)
                    .count();
                self.check(others == 0, || {
                    format!("{p} spawned while its slot has an unreaped process")
                });
                let before = self.procs.keys().filter(|q| q.slot == p.slot).count() as u64;
                self.check(p.generation == before, || format!("{p}: generations skip"));
                self.procs.insert(
                    p,
                    Proc {
                        alive: true,
                        ..Proc::default()
                    },
                );
                return;
            }
            Action::Persist { record } => {
                let (seq, epochs) = &self.emitted;
                self.check(record.seq > *seq, || "record seq went back".into());
                self.check(
                    record.epochs.iter().zip(epochs).all(|(a, b)| a >= b),
                    || "a recorded epoch went back".into(),
                );
                self.emitted = (record.seq, record.epochs.clone());
            }
            Action::Assign {
                shard,
                epoch,
                process,
            } => {
                let (s, e, p) = (*shard as usize, *epoch, *process);
                self.check(!self.shut_down, || format!("{p} assigned after shutdown"));
                self.check(e > self.assigned[s], || {
                    format!("assign of s{s} at {e}, not above {}", self.assigned[s])
                });
                self.assigned[s] = e;
                self.check(self.durable[s] >= e, || {
                    format!("assign of s{s} at {e} before it was durable")
                });
                self.check(self.procs.get(&p).is_some_and(|q| !q.reaped), || {
                    format!("s{s} assigned to {p}, which is gone")
                });
                // The old holder must be known dead (reaped) or have
                // released the shard; nothing else may be on its way.
                for (q, state) in &self.procs {
                    if *q == p || state.reaped {
                        continue;
                    }
                    self.check(!state.held.contains_key(shard), || {
                        format!("s{s} assigned to {p} while {q} still holds it")
                    });
                    self.check(!self.assign_pending(*shard, *q), || {
                        format!("s{s} assigned to {p} while an assign to {q} is in flight")
                    });
                }
                if p.slot != *shard % self.workers {
                    self.seen.away_from_home += 1;
                }
            }
            Action::Release {
                shard,
                epoch,
                process,
            } => {
                let held = self.procs.get(process).and_then(|q| q.held.get(shard));
                self.check(held == Some(epoch), || {
                    format!("release of s{shard}@{epoch} from {process}, which holds {held:?}")
                });
                if process.slot != *shard % self.workers {
                    self.seen.move_backs += 1;
                }
            }
            Action::Stop { process } => {
                if !self.shut_down {
                    self.seen.drains_stopped += 1;
                }
                let _ = process;
            }
            Action::Kill { process } => {
                self.seen.kills += 1;
                self.check(self.procs.get(process).is_some_and(|q| !q.reaped), || {
                    format!("{process} killed after it was reaped")
                });
            }
            Action::Publish { routes } => {
                self.check(routes.version > self.routes.version, || {
                    "route version went back".into()
                });
                for (s, route) in routes.routes.iter().enumerate() {
                    self.check(route.epoch >= self.routes.routes[s].epoch, || {
                        format!("route epoch of s{s} went back")
                    });
                    self.check(route.epoch == self.assigned[s], || {
                        format!("route of s{s} at {}, not its last assign", route.epoch)
                    });
                    if let Some(holder) = route.holder {
                        let held = self
                            .procs
                            .get(&holder)
                            .and_then(|q| q.held.get(&(s as u32)));
                        self.check(held == Some(&route.epoch), || {
                            format!("route names {holder} for s{s}, which holds {held:?}")
                        });
                    }
                }
                self.routes = routes.clone();
                return;
            }
        }
        self.pending.push(action);
    }

    fn assign_pending(&self, shard: u32, to: Process) -> bool {
        self.pending.iter().any(|a| {
            matches!(a, Action::Assign { shard: s, process, .. } if *s == shard && *process == to)
        })
    }

    /// The checks on the whole state after each event.
    fn check_state(&mut self) {
        let shards = self.machine.shards();
        for status in &shards {
            let s = status.shard;
            // At most one live process holds the shard or has an assign
            // for it in flight.
            let holders: Vec<Process> = self
                .procs
                .iter()
                .filter(|(p, q)| {
                    q.alive && (q.held.contains_key(&s) || self.assign_pending(s, **p))
                })
                .map(|(p, _)| *p)
                .collect();
            self.check(holders.len() <= 1, || {
                format!("s{s} has holders {holders:?}")
            });
            let before = self.epochs[s as usize];
            self.check(status.epoch >= before, || {
                format!("epoch of s{s} went back")
            });
            self.epochs[s as usize] = status.epoch;
        }
        if let Some(at) = self.machine.poll_timeout() {
            self.check(at > self.now, || {
                format!("timeout {at:?} is not in the future")
            });
        }
        // Once nothing is in flight, every shard is held whenever a slot
        // runs (save one waiting for its home slot's first start).
        let settled = !self.pending.iter().any(|a| {
            matches!(
                a,
                Action::Persist { .. } | Action::Assign { .. } | Action::Release { .. }
            )
        });
        let slots = self.machine.slots();
        let running = slots.iter().any(|s| s.phase == SlotPhase::Running);
        if settled && running && !self.shut_down {
            for status in &shards {
                let waiting_home = status.phase == ShardPhase::Unassigned
                    && slots[status.home as usize].phase == SlotPhase::Starting;
                let held = matches!(
                    status.phase,
                    ShardPhase::Held { .. }
                        | ShardPhase::Releasing { .. }
                        | ShardPhase::Assigning { .. }
                );
                // Refused by a worker that could not open it: it waits out
                // its backoff, and no worker was killed for it.
                let refused =
                    status.phase == ShardPhase::Unassigned && status.refused_until.is_some();
                self.check(held || waiting_home || refused, || {
                    format!("settled with a running slot, yet {status:?}")
                });
            }
        }
    }

    fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
        (!items.is_empty()).then(|| items[i % items.len()])
    }

    fn procs_where(&self, f: impl Fn(&Proc) -> bool) -> Vec<Process> {
        self.procs
            .iter()
            .filter(|(_, q)| f(q))
            .map(|(p, _)| *p)
            .collect()
    }

    fn refuse(&mut self, i: usize) {
        let assigns: Vec<usize> = (0..self.pending.len())
            .filter(|&k| matches!(self.pending[k], Action::Assign { .. }))
            .collect();
        let Some(index) = Self::pick(&assigns, i) else {
            return;
        };
        let Action::Assign {
            shard,
            epoch,
            process,
        } = self.pending.remove(index)
        else {
            unreachable!("picked among the assigns");
        };
        let q = &self.procs[&process];
        if !q.alive || q.hung {
            self.event(Event::AssignFailed {
                shard,
                epoch,
                process,
            });
            return;
        }
        let kills = self.seen.kills;
        self.event(Event::AssignRefused {
            shard,
            epoch,
            process,
        });
        // A refusal kills no one: the worker holds nothing of the shard.
        self.check(self.seen.kills == kills, || {
            format!("{process} was killed for refusing s{shard}")
        });
        if self.machine.shards()[shard as usize]
            .refused_until
            .is_some()
        {
            self.seen.refusals += 1;
        }
    }

    fn carry(&mut self, i: usize, fail: bool) {
        if self.pending.is_empty() {
            return;
        }
        let index = i % self.pending.len();
        let action = self.pending.remove(index);
        match action {
            Action::Persist { record } => {
                // A later record replaces the earlier ones not yet written.
                let mut position = 0;
                self.pending.retain(|a| {
                    position += 1;
                    position > index || !matches!(a, Action::Persist { .. })
                });
                // A failed write is retried with the latest record.
                let record = if fail { self.machine.record() } else { record };
                self.durable = record.epochs.clone();
                self.event(Event::Persisted { seq: record.seq });
            }
            Action::Assign {
                shard,
                epoch,
                process,
            } => {
                let q = self.procs.get_mut(&process).unwrap();
                let event = if q.alive {
                    // A hung or failing worker may have taken it anyway.
                    q.held.insert(shard, epoch);
                    if q.hung || fail {
                        Event::AssignFailed {
                            shard,
                            epoch,
                            process,
                        }
                    } else {
                        Event::Assigned {
                            shard,
                            epoch,
                            process,
                        }
                    }
                } else {
                    Event::AssignFailed {
                        shard,
                        epoch,
                        process,
                    }
                };
                self.event(event);
            }
            Action::Release {
                shard,
                epoch,
                process,
            } => {
                let q = self.procs.get_mut(&process).unwrap();
                let event = if q.alive && !q.hung && !fail {
                    if q.held.get(&shard) == Some(&epoch) {
                        q.held.remove(&shard);
                    }
                    Event::Released {
                        shard,
                        epoch,
                        process,
                    }
                } else {
                    Event::ReleaseFailed {
                        shard,
                        epoch,
                        process,
                    }
                };
                self.event(event);
            }
            Action::Stop { process } => {
                let q = self.procs.get_mut(&process).unwrap();
                if q.alive && !q.hung && !fail {
                    q.alive = false;
                }
            }
            Action::Kill { process } => {
                self.procs.get_mut(&process).unwrap().alive = false;
            }
            Action::Spawn { .. } | Action::Publish { .. } => unreachable!("never pending"),
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Carry(i) => self.carry(i, false),
            Op::Fail(i) => self.carry(i, true),
            Op::Refuse(i) => self.refuse(i),
            Op::Crash(i) => {
                if let Some(p) = Self::pick(&self.procs_where(|q| q.alive), i) {
                    self.procs.get_mut(&p).unwrap().alive = false;
                }
            }
            Op::Reap(i) => {
                if let Some(p) = Self::pick(&self.procs_where(|q| !q.alive && !q.reaped), i) {
                    self.reap(p);
                }
            }
            Op::Hang(i) => {
                if let Some(p) = Self::pick(&self.procs_where(|q| q.alive), i) {
                    self.procs.get_mut(&p).unwrap().hung = true;
                }
            }
            Op::Report(i) => {
                if let Some(p) = Self::pick(&self.procs_where(|q| !q.reaped), i) {
                    self.event(Event::Unresponsive { process: p });
                }
            }
            Op::Hello(i) => {
                let ready = self.procs_where(|q| q.alive && !q.hung && !q.said_hello);
                if let Some(p) = Self::pick(&ready, i) {
                    self.procs.get_mut(&p).unwrap().said_hello = true;
                    self.event(Event::Ready { process: p });
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.event(Event::Tick);
            }
            Op::Drain(slot) => self.event(Event::Drain {
                slot: slot % self.workers,
            }),
        }
    }

    fn reap(&mut self, p: Process) {
        let q = self.procs.get_mut(&p).unwrap();
        q.reaped = true;
        q.held.clear();
        self.event(Event::Exited { process: p });
    }

    /// Lets everything finish: acknowledgements arrive, hung processes are
    /// reported, the dead are reaped, starters say hello, timers fire.
    fn settle(&mut self) {
        for _ in 0..20_000 {
            if !self.pending.is_empty() {
                self.carry(0, false);
            } else if let Some(p) = self
                .procs_where(|q| q.hung && !q.reaped && q.alive)
                .first()
                .copied()
            {
                self.event(Event::Unresponsive { process: p });
                // Every unreaped process is its slot's current one, so
                // the machine must have it killed.
                self.check(!self.pending.is_empty(), || {
                    format!("{p} hangs and was reported, but nothing kills it")
                });
            } else if let Some(p) = self.procs_where(|q| !q.alive && !q.reaped).first().copied() {
                self.reap(p);
            } else if let Some(p) = self
                .procs_where(|q| q.alive && !q.said_hello)
                .first()
                .copied()
            {
                self.procs.get_mut(&p).unwrap().said_hello = true;
                self.event(Event::Ready { process: p });
            } else if let Some(at) = self.machine.poll_timeout() {
                self.now = at;
                self.event(Event::Tick);
            } else {
                return;
            }
        }
        self.fail("placement did not settle".into());
    }

    /// After settling: every slot runs and holds its home shards, routes
    /// name them at their durable epochs; or, after a shutdown, everything
    /// is stopped.
    fn check_settled(&self) {
        let slots = self.machine.slots();
        if self.shut_down {
            self.check(self.machine.is_stopped(), || {
                "shutdown did not finish".into()
            });
            self.check(self.procs.values().all(|q| q.reaped), || {
                "a process outlived the shutdown".into()
            });
            return;
        }
        for slot in &slots {
            self.check(slot.phase == SlotPhase::Running, || {
                format!("slot {} settled as {:?}", slot.slot, slot.phase)
            });
        }
        for (s, route) in self.routes.routes.iter().enumerate() {
            let home = slots[s % self.workers as usize].process;
            self.check(route.holder.is_some() && route.holder == home, || {
                format!("s{s} settled on {:?}, not home {home:?}", route.holder)
            });
            self.check(route.epoch == self.durable[s], || {
                format!(
                    "s{s} is served at {}, recorded {}",
                    route.epoch, self.durable[s]
                )
            });
        }
        self.check(self.routes == *self.machine.routes(), || {
            "the last published routes are not the machine's".into()
        });
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => any::<usize>().prop_map(Op::Carry),
        2 => any::<usize>().prop_map(Op::Fail),
        1 => any::<usize>().prop_map(Op::Refuse),
        2 => any::<usize>().prop_map(Op::Crash),
        3 => any::<usize>().prop_map(Op::Reap),
        1 => any::<usize>().prop_map(Op::Hang),
        1 => any::<usize>().prop_map(Op::Report),
        5 => any::<usize>().prop_map(Op::Hello),
        2 => (0u64..100).prop_map(Op::Advance),
        1 => (0u64..3_000).prop_map(Op::Advance),
        1 => any::<u32>().prop_map(Op::Drain),
    ]
}

/// Runs `ops`, shutting down before op `shutdown_at` if given, then settles.
fn run(
    workers: u32,
    epochs: Vec<u64>,
    move_back_ms: u64,
    ops: &[Op],
    shutdown_at: Option<usize>,
) -> Seen {
    let mut world = World::new(workers, epochs, move_back_ms);
    for (i, op) in ops.iter().enumerate() {
        if shutdown_at == Some(i) {
            world.event(Event::Shutdown);
        }
        let _ = writeln!(world.log, "# {op:?}");
        world.step(op);
    }
    world.settle();
    world.check_settled();
    world.seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn placement_keeps_its_invariants(
        workers in 1u32..5,
        epochs in proptest::collection::vec(0u64..1_000, 1..9),
        move_back_ms in prop_oneof![Just(0u64), Just(500u64)],
        ops in proptest::collection::vec(op(), 0..160),
        shutdown in proptest::option::weighted(0.15, any::<usize>()),
    ) {
        let shutdown_at = shutdown.map(|i| i % (ops.len() + 1));
        run(workers, epochs, move_back_ms, &ops, shutdown_at);
    }
}

/// A small generator, so that this test does not depend on proptest's.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_runs_take_every_interesting_path() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut total = Seen::default();
    for _ in 0..200 {
        let workers = 1 + (rng.next() % 4) as u32;
        let shards = workers as usize * (1 + (rng.next() % 2) as usize);
        let ops: Vec<Op> = (0..120)
            .map(|_| {
                let i = rng.next() as usize;
                match rng.next() % 29 {
                    0..=9 => Op::Carry(i),
                    10..=11 => Op::Fail(i),
                    12..=13 => Op::Crash(i),
                    14..=16 => Op::Reap(i),
                    17 => Op::Hang(i),
                    18 => Op::Report(i),
                    19..=23 => Op::Hello(i),
                    24..=25 => Op::Advance(rng.next() % 100),
                    26 => Op::Advance(rng.next() % 3_000),
                    27 => Op::Refuse(i),
                    _ => Op::Drain(i as u32),
                }
            })
            .collect();
        let seen = run(workers, vec![0; shards], 0, &ops, None);
        total.away_from_home += seen.away_from_home;
        total.move_backs += seen.move_backs;
        total.kills += seen.kills;
        total.drains_stopped += seen.drains_stopped;
        total.refusals += seen.refusals;
    }
    assert!(total.away_from_home > 0, "{total:?}");
    assert!(total.move_backs > 0, "{total:?}");
    assert!(total.kills > 0, "{total:?}");
    assert!(total.drains_stopped > 0, "{total:?}");
    assert!(total.refusals > 0, "{total:?}");
}
