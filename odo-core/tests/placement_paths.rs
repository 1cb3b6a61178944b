//! The placement machine's main paths, one scenario each: cold start,
//! failover and move back, a hung worker, restart backoff, drains, startup
//! timeouts, shutdown, failed acknowledgements and records. Two transcripts
//! are snapshots (`tests/snapshots/placement_paths__*.snap`).

use std::fmt::Write as _;
use std::time::Duration;

use odo_core::placement::{
    Action, Config, ConfigError, Event, MAX_EPOCH, Machine, Process, ShardPhase, SlotPhase,
};

fn p(slot: u32, generation: u64) -> Process {
    Process { slot, generation }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A hand-driven registry: events in, actions logged and kept until
/// acknowledged.
struct Script {
    machine: Machine,
    now: Duration,
    log: String,
    pending: Vec<Action>,
}

impl Script {
    fn new(config: Config, epochs: Vec<u64>) -> Script {
        Script {
            machine: Machine::new(config, epochs).unwrap(),
            now: Duration::ZERO,
            log: String::new(),
            pending: Vec::new(),
        }
    }

    /// Two workers, four shards, the default configuration; both workers
    /// started, ready and holding their home shards.
    fn running() -> Script {
        let mut s = Script::new(Config::new(2), vec![0; 4]);
        s.send(Event::Tick);
        s.send(Event::Ready { process: p(0, 0) });
        s.send(Event::Ready { process: p(1, 0) });
        s.ack();
        assert_eq!(
            s.holders(),
            [Some(p(0, 0)), Some(p(1, 0)), Some(p(0, 0)), Some(p(1, 0))]
        );
        s.log.clear();
        s.pending.clear();
        s
    }

    fn at(&mut self, ms: u64) {
        self.now = Duration::from_millis(ms);
    }

    fn send(&mut self, event: Event) -> Vec<Action> {
        let actions = self.machine.handle(self.now, event.clone());
        let _ = writeln!(self.log, "t={:>5} {event}", self.now.as_millis());
        for action in &actions {
            let _ = writeln!(self.log, "        -> {action}");
            if !matches!(action, Action::Publish { .. }) {
                self.pending.push(action.clone());
            }
        }
        actions
    }

    /// Carries out every pending record, assign and release successfully,
    /// until none is left. Spawns, stops and kills stay pending.
    fn ack(&mut self) {
        while let Some(i) = self.pending.iter().position(|a| {
            matches!(
                a,
                Action::Persist { .. } | Action::Assign { .. } | Action::Release { .. }
            )
        }) {
            let event = match self.pending.remove(i) {
                Action::Persist { record } => Event::Persisted { seq: record.seq },
                Action::Assign {
                    shard,
                    epoch,
                    process,
                } => Event::Assigned {
                    shard,
                    epoch,
                    process,
                },
                Action::Release {
                    shard,
                    epoch,
                    process,
                } => Event::Released {
                    shard,
                    epoch,
                    process,
                },
                _ => unreachable!(),
            };
            self.send(event);
        }
    }

    /// Takes a pending action out, if it is there.
    fn take(&mut self, action: &Action) -> bool {
        let found = self.pending.iter().position(|a| a == action);
        found.map(|i| self.pending.remove(i)).is_some()
    }

    fn holders(&self) -> Vec<Option<Process>> {
        self.machine
            .routes()
            .routes
            .iter()
            .map(|r| r.holder)
            .collect()
    }

    fn epochs(&self) -> Vec<u64> {
        self.machine
            .routes()
            .routes
            .iter()
            .map(|r| r.epoch)
            .collect()
    }

    fn phase(&self, slot: u32) -> SlotPhase {
        self.machine.slots()[slot as usize].phase
    }

    fn assigns(&self) -> Vec<(u32, Process)> {
        self.pending
            .iter()
            .filter_map(|a| match a {
                Action::Assign { shard, process, .. } => Some((*shard, *process)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_machine_needs_slots_and_shards() {
    assert_eq!(
        Machine::new(Config::new(0), vec![0]).unwrap_err(),
        ConfigError::NoWorkers
    );
    assert_eq!(
        Machine::new(Config::new(1), vec![]).unwrap_err(),
        ConfigError::NoShards
    );
    assert_eq!(
        Machine::new(Config::new(1), vec![0, u64::MAX]).unwrap_err(),
        ConfigError::EpochTooLarge {
            shard: 1,
            epoch: u64::MAX
        }
    );
    assert!(Machine::new(Config::new(1), vec![MAX_EPOCH]).is_ok());
}

#[test]
fn a_cold_start_gives_each_worker_its_home_shards_at_new_durable_epochs() {
    let mut s = Script::new(Config::new(2), vec![3, 0, 0, 7]);
    assert_eq!(
        s.send(Event::Tick),
        [
            Action::Spawn { process: p(0, 0) },
            Action::Spawn { process: p(1, 0) }
        ]
    );
    // The first worker ready takes only its own shards: the others wait
    // for their home worker, which is still starting.
    let actions = s.send(Event::Ready { process: p(1, 0) });
    let [Action::Persist { record }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(record.epochs, [3, 1, 0, 8]);
    assert_eq!(record.assignment, [None, Some(1), None, Some(1)]);
    // Nothing is assigned before the record is durable.
    assert!(s.assigns().is_empty());
    s.send(Event::Persisted { seq: record.seq });
    assert_eq!(s.assigns(), [(1, p(1, 0)), (3, p(1, 0))]);
    // Routers learn of a holder only once it acknowledged.
    assert_eq!(s.holders(), [None; 4]);
    s.ack();
    assert_eq!(s.holders(), [None, Some(p(1, 0)), None, Some(p(1, 0))]);
    s.send(Event::Ready { process: p(0, 0) });
    s.ack();
    assert_eq!(
        s.holders(),
        [Some(p(0, 0)), Some(p(1, 0)), Some(p(0, 0)), Some(p(1, 0))]
    );
    assert_eq!(s.epochs(), [4, 1, 1, 8]);
    assert_eq!(s.machine.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn a_dead_workers_shards_move_at_once_and_come_back_drained() {
    let mut s = Script::running();
    // Worker 0 dies young (a quick failure): its restart waits 50 ms, but
    // its shards move to worker 1 at once, at new epochs, once durable.
    s.at(1_000);
    s.send(Event::Exited { process: p(0, 0) });
    assert_eq!(s.holders(), [None, Some(p(1, 0)), None, Some(p(1, 0))]);
    assert!(s.assigns().is_empty(), "assigns wait for the record");
    s.ack();
    assert_eq!(s.holders(), [Some(p(1, 0)); 4]);
    assert_eq!(s.epochs(), [2, 1, 2, 1]);
    assert_eq!(s.machine.slots()[1].shards, [0, 1, 2, 3]);
    assert_eq!(s.machine.poll_timeout(), Some(ms(1_050)));
    s.at(1_050);
    assert_eq!(s.send(Event::Tick), [Action::Spawn { process: p(0, 1) }]);
    // Ready again: its shards come back, released by worker 1 first.
    s.at(1_200);
    let actions = s.send(Event::Ready { process: p(0, 1) });
    assert!(actions.contains(&Action::Release {
        shard: 0,
        epoch: 2,
        process: p(1, 0)
    }));
    assert_eq!(s.holders(), [None, Some(p(1, 0)), None, Some(p(1, 0))]);
    s.ack();
    assert_eq!(
        s.holders(),
        [Some(p(0, 1)), Some(p(1, 0)), Some(p(0, 1)), Some(p(1, 0))]
    );
    assert_eq!(s.epochs(), [3, 1, 3, 1]);
    insta::assert_snapshot!("failover_and_move_back", s.log);
}

#[test]
fn a_hung_worker_is_killed_and_reaped_before_its_shards_move() {
    let mut s = Script::running();
    s.at(500);
    let actions = s.send(Event::Unresponsive { process: p(0, 0) });
    assert!(actions.contains(&Action::Kill { process: p(0, 0) }));
    // Routers stop sending to it, but its shards stay with it: it is not
    // known dead yet.
    assert_eq!(s.holders(), [None, Some(p(1, 0)), None, Some(p(1, 0))]);
    assert_eq!(s.phase(0), SlotPhase::Killing);
    assert_eq!(
        s.machine.shards()[0].phase,
        ShardPhase::Held { by: p(0, 0) }
    );
    for now in [600, 5_000, 60_000] {
        s.at(now);
        s.send(Event::Tick);
        s.ack();
        assert!(s.assigns().is_empty());
        assert_eq!(s.holders()[0], None);
    }
    assert!(s.take(&Action::Kill { process: p(0, 0) }));
    s.send(Event::Exited { process: p(0, 0) });
    s.ack();
    assert_eq!(s.holders(), [Some(p(1, 0)); 4]);
    insta::assert_snapshot!("hung_worker", s.log);
}

#[test]
fn restart_backoff_doubles_to_its_cap_flags_a_crash_loop_and_resets_once_stable() {
    let mut config = Config::new(1);
    config.max_restart_backoff = ms(300);
    config.crash_loop_limit = 3;
    let mut s = Script::new(config, vec![0]);
    s.send(Event::Tick);
    let mut now = 0;
    let mut delays = Vec::new();
    for generation in 0..5 {
        s.send(Event::Ready {
            process: p(0, generation),
        });
        s.ack();
        now += 100;
        s.at(now);
        s.send(Event::Exited {
            process: p(0, generation),
        });
        let restart = s.machine.poll_timeout().unwrap();
        delays.push((restart - ms(now)).as_millis());
        assert_eq!(
            s.machine.slots()[0].crash_looping,
            generation >= 2,
            "generation {generation}"
        );
        now = restart.as_millis() as u64;
        s.at(now);
        assert_eq!(
            s.send(Event::Tick),
            [Action::Spawn {
                process: p(0, generation + 1)
            }]
        );
    }
    assert_eq!(delays, [50, 100, 200, 300, 300]);
    assert_eq!(s.machine.slots()[0].restarts, 5);
    // Ready and stable for 10 s: the backoff and the crash loop reset.
    s.send(Event::Ready { process: p(0, 5) });
    s.ack();
    assert_eq!(s.machine.poll_timeout(), Some(ms(now + 10_000)));
    now += 10_000;
    s.at(now);
    s.send(Event::Tick);
    assert!(!s.machine.slots()[0].crash_looping);
    s.send(Event::Exited { process: p(0, 5) });
    assert_eq!(s.machine.poll_timeout(), Some(ms(now + 50)));
}

#[test]
fn a_worker_that_ran_stable_resets_its_backoff_even_without_a_tick() {
    let mut s = Script::new(Config::new(1), vec![0]);
    s.send(Event::Tick);
    s.send(Event::Exited { process: p(0, 0) });
    s.at(50);
    s.send(Event::Tick);
    s.send(Event::Exited { process: p(0, 1) });
    assert_eq!(s.machine.poll_timeout(), Some(ms(150)));
    s.at(150);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 2) });
    // Its exit, the next event after 10 s of running, restarts it at the
    // first delay.
    s.at(10_150);
    s.send(Event::Exited { process: p(0, 2) });
    assert_eq!(s.machine.poll_timeout(), Some(ms(10_200)));
}

#[test]
fn shards_do_not_move_back_to_a_crash_looping_worker_until_it_is_stable() {
    let mut config = Config::new(2);
    config.crash_loop_limit = 1;
    let mut s = Script::new(config, vec![0; 2]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 0) });
    s.send(Event::Ready { process: p(1, 0) });
    s.ack();
    s.at(10);
    s.send(Event::Exited { process: p(0, 0) });
    s.ack();
    s.at(60);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 1) });
    s.ack();
    assert!(s.machine.slots()[0].crash_looping);
    assert_eq!(s.holders(), [Some(p(1, 0)), Some(p(1, 0))]);
    assert_eq!(s.machine.poll_timeout(), Some(ms(10_060)));
    s.at(10_060);
    s.send(Event::Tick);
    s.ack();
    assert_eq!(s.holders(), [Some(p(0, 1)), Some(p(1, 0))]);
}

#[test]
fn move_back_waits_for_the_configured_time() {
    let mut config = Config::new(2);
    config.move_back_after = ms(2_000);
    let mut s = Script::new(config, vec![0; 2]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 0) });
    s.send(Event::Ready { process: p(1, 0) });
    s.ack();
    s.send(Event::Exited { process: p(1, 0) });
    s.ack();
    s.at(50);
    s.send(Event::Tick);
    s.at(100);
    s.send(Event::Ready { process: p(1, 1) });
    s.ack();
    assert_eq!(s.holders(), [Some(p(0, 0)), Some(p(0, 0))]);
    assert_eq!(s.machine.poll_timeout(), Some(ms(2_100)));
    s.at(2_100);
    s.send(Event::Tick);
    s.ack();
    assert_eq!(s.holders(), [Some(p(0, 0)), Some(p(1, 1))]);
}

#[test]
fn a_drained_worker_hands_its_shards_over_then_stops_and_restarts_at_once() {
    let mut s = Script::running();
    s.at(100);
    let actions = s.send(Event::Drain { slot: 0 });
    assert_eq!(s.phase(0), SlotPhase::Draining);
    assert!(actions.contains(&Action::Release {
        shard: 0,
        epoch: 1,
        process: p(0, 0)
    }));
    s.ack();
    assert_eq!(s.holders(), [Some(p(1, 0)); 4]);
    // Nothing left on it: it is asked to stop.
    assert!(s.take(&Action::Stop { process: p(0, 0) }));
    assert_eq!(s.phase(0), SlotPhase::Stopping);
    s.at(300);
    assert_eq!(
        s.send(Event::Exited { process: p(0, 0) }),
        [Action::Spawn { process: p(0, 1) }]
    );
    s.send(Event::Ready { process: p(0, 1) });
    s.ack();
    assert_eq!(
        s.holders(),
        [Some(p(0, 1)), Some(p(1, 0)), Some(p(0, 1)), Some(p(1, 0))]
    );
    assert_eq!(s.machine.slots()[0].restarts, 1);
    assert!(!s.machine.slots()[0].crash_looping);
}

#[test]
fn a_drained_worker_that_does_not_exit_is_killed_after_the_grace_period() {
    let mut s = Script::running();
    s.send(Event::Drain { slot: 1 });
    s.ack();
    assert!(s.take(&Action::Stop { process: p(1, 0) }));
    s.at(10_000);
    assert_eq!(s.send(Event::Tick), [Action::Kill { process: p(1, 0) }]);
}

#[test]
fn a_worker_that_never_says_hello_is_killed_and_its_shards_go_elsewhere() {
    let mut s = Script::new(Config::new(2), vec![0; 2]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(1, 0) });
    s.ack();
    assert_eq!(s.holders(), [None, Some(p(1, 0))]);
    assert_eq!(s.machine.poll_timeout(), Some(ms(10_000)));
    s.at(10_000);
    let actions = s.send(Event::Tick);
    assert_eq!(actions[0], Action::Kill { process: p(0, 0) });
    // It never held shard 0, so the shard need not wait for its reaping.
    s.ack();
    assert_eq!(s.holders(), [Some(p(1, 0)); 2]);
    assert_eq!(s.phase(0), SlotPhase::Killing);
}

/// Two workers started, their first record durable, shard 1 taken by
/// its worker and the assign of shard 0 (epoch 1) to w0 in flight.
fn assigning_shard_0() -> Script {
    let mut s = Script::new(Config::new(2), vec![0; 2]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 0) });
    s.send(Event::Ready { process: p(1, 0) });
    let Some(Action::Persist { record }) = s.pending.last().cloned() else {
        panic!("{:?}", s.pending);
    };
    s.pending.clear();
    // The latest record covers the earlier ones.
    s.send(Event::Persisted { seq: record.seq });
    assert_eq!(s.assigns(), [(0, p(0, 0)), (1, p(1, 0))]);
    s.pending.clear();
    s.send(Event::Assigned {
        shard: 1,
        epoch: 1,
        process: p(1, 0),
    });
    s
}

#[test]
fn a_failed_assign_kills_the_worker_and_the_shard_waits_for_its_reaping() {
    let mut s = assigning_shard_0();
    let actions = s.send(Event::AssignFailed {
        shard: 0,
        epoch: 1,
        process: p(0, 0),
    });
    assert_eq!(actions, [Action::Kill { process: p(0, 0) }]);
    // It may have opened the shard: nothing moves until it is reaped.
    s.send(Event::Tick);
    assert!(s.assigns().is_empty());
    s.send(Event::Exited { process: p(0, 0) });
    s.ack();
    assert_eq!(s.holders(), [Some(p(1, 0)); 2]);
    assert_eq!(s.epochs(), [2, 1]);
}

/// A worker that answers that it cannot open a shard (a corrupt store)
/// holds nothing of it: it is not killed, and keeps its other shards. The
/// shard waits out its backoff (doubling with each refusal), then goes
/// out again. Killed for it, as a failed assign is, every worker took the
/// shard in turn and died of it: 4 workers crash looping within 8 s, and
/// the healthy shards unavailable with them.
#[test]
fn a_refused_assign_kills_no_one_and_the_shard_is_tried_again_after_a_backoff() {
    let mut s = assigning_shard_0();
    let backoff = Config::new(2).restart_backoff;
    for (refusal, epoch) in [(1u32, 1u64), (2, 2)] {
        let actions = s.send(Event::AssignRefused {
            shard: 0,
            epoch,
            process: p(0, 0),
        });
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Kill { .. })),
            "{actions:?}"
        );
        let wait = backoff * (1 << (refusal - 1));
        let until = s.machine.shards()[0].refused_until.expect("waiting");
        assert_eq!(until, s.now + wait);
        assert_eq!(s.machine.poll_timeout(), Some(until));
        // Nothing goes out before the backoff.
        s.send(Event::Tick);
        assert!(s.assigns().is_empty());
        s.at(until.as_millis() as u64);
        s.send(Event::Tick);
        // Its new epoch is written, then it goes out.
        let Some(Action::Persist { record }) = s.pending.last().cloned() else {
            panic!("refusal {refusal}: {:?}", s.pending);
        };
        s.pending.clear();
        s.send(Event::Persisted { seq: record.seq });
        assert_eq!(s.assigns(), [(0, p(0, 0))], "refusal {refusal}");
        s.pending.clear();
    }
    // Taken at last: the count of refusals starts over.
    s.send(Event::Assigned {
        shard: 0,
        epoch: 3,
        process: p(0, 0),
    });
    assert_eq!(s.holders(), [Some(p(0, 0)), Some(p(1, 0))]);
    assert_eq!(s.machine.shards()[0].refused_until, None);
}

#[test]
fn a_failed_release_kills_the_holder_and_the_shard_waits_for_its_reaping() {
    let mut s = Script::running();
    s.send(Event::Drain { slot: 0 });
    let release = Action::Release {
        shard: 0,
        epoch: 1,
        process: p(0, 0),
    };
    assert!(s.take(&release));
    assert_eq!(
        s.send(Event::ReleaseFailed {
            shard: 0,
            epoch: 1,
            process: p(0, 0),
        }),
        [Action::Kill { process: p(0, 0) }]
    );
    assert_eq!(
        s.machine.shards()[0].phase,
        ShardPhase::Releasing { by: p(0, 0) }
    );
    s.ack();
    assert_eq!(s.holders()[0], None);
    s.send(Event::Exited { process: p(0, 0) });
    s.ack();
    assert_eq!(s.holders()[0], Some(p(1, 0)));
}

#[test]
fn a_record_that_failed_to_write_is_written_again_from_the_latest() {
    let mut s = Script::new(Config::new(1), vec![5, 9]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 0) });
    // The write failed: the driver writes the latest record instead.
    s.pending.clear();
    let record = s.machine.record();
    assert_eq!(record.epochs, [6, 10]);
    assert_eq!(record.assignment, [Some(0), Some(0)]);
    s.send(Event::Persisted { seq: record.seq });
    assert_eq!(s.assigns(), [(0, p(0, 0)), (1, p(0, 0))]);
}

#[test]
fn stale_and_unknown_events_are_ignored() {
    let mut s = Script::running();
    let before = s.machine.routes().clone();
    for event in [
        Event::Exited { process: p(0, 7) },
        Event::Ready { process: p(1, 3) },
        Event::Unresponsive { process: p(9, 0) },
        Event::Assigned {
            shard: 0,
            epoch: 0,
            process: p(1, 0),
        },
        Event::Released {
            shard: 99,
            epoch: 1,
            process: p(0, 0),
        },
        Event::ReleaseFailed {
            shard: 1,
            epoch: 1,
            process: p(1, 0),
        },
        Event::Drain { slot: 42 },
        Event::Persisted { seq: 1_000 },
    ] {
        assert_eq!(s.send(event.clone()), [], "{event}");
    }
    assert_eq!(*s.machine.routes(), before);
    // A record seq never emitted does not make later epochs durable.
    s.send(Event::Exited { process: p(0, 0) });
    assert!(s.assigns().is_empty());
}

#[test]
fn fewer_workers_than_shards_hold_several_and_extra_workers_stay_idle() {
    let mut s = Script::new(Config::new(2), vec![0; 5]);
    s.send(Event::Tick);
    s.send(Event::Ready { process: p(0, 0) });
    s.send(Event::Ready { process: p(1, 0) });
    s.ack();
    assert_eq!(s.machine.slots()[0].shards, [0, 2, 4]);
    assert_eq!(s.machine.slots()[1].shards, [1, 3]);

    let mut s = Script::new(Config::new(3), vec![0; 2]);
    s.send(Event::Tick);
    for slot in 0..3 {
        s.send(Event::Ready {
            process: p(slot, 0),
        });
    }
    s.ack();
    assert_eq!(s.holders(), [Some(p(0, 0)), Some(p(1, 0))]);
    assert!(s.machine.slots()[2].shards.is_empty());
}

#[test]
fn failover_goes_to_the_least_loaded_worker() {
    let mut s = Script::new(Config::new(3), vec![0; 6]);
    s.send(Event::Tick);
    for slot in 0..3 {
        s.send(Event::Ready {
            process: p(slot, 0),
        });
    }
    s.ack();
    s.send(Event::Exited { process: p(0, 0) });
    s.ack();
    // Shards 0 and 3 spread over workers 1 and 2.
    assert_eq!(s.machine.slots()[1].shards, [0, 1, 4]);
    assert_eq!(s.machine.slots()[2].shards, [2, 3, 5]);
}

#[test]
fn shutdown_stops_everything_and_restarts_nothing() {
    let mut s = Script::running();
    s.send(Event::Exited { process: p(1, 0) });
    s.at(50);
    s.send(Event::Tick);
    assert!(s.take(&Action::Spawn { process: p(1, 1) }));
    s.pending.clear();
    s.at(60);
    let actions = s.send(Event::Shutdown);
    assert!(actions.contains(&Action::Stop { process: p(0, 0) }));
    // Still starting: it has no channel to be asked on, so it is killed.
    assert!(actions.contains(&Action::Kill { process: p(1, 1) }));
    assert_eq!(s.holders(), [None; 4]);
    s.send(Event::Exited { process: p(1, 1) });
    assert!(!s.machine.is_stopped());
    // Worker 0 does not exit within the grace period.
    s.at(10_060);
    assert_eq!(s.send(Event::Tick), [Action::Kill { process: p(0, 0) }]);
    assert_eq!(s.send(Event::Exited { process: p(0, 0) }), []);
    assert!(s.machine.is_stopped());
    assert_eq!(s.machine.poll_timeout(), None);
    assert!(
        s.machine
            .slots()
            .iter()
            .all(|slot| slot.phase == SlotPhase::Stopped)
    );
}
