//! What the machine shows its driver and admin endpoints.

use super::machine::State;
use super::slot::Phase;
use super::{Config, Machine, Record, RouteTable, ShardPhase, ShardStatus, SlotStatus};

impl Machine {
    /// The routes as last published (version 1, nothing held, before the
    /// first change).
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The latest record: what a driver writes again after a failed write
    /// (then reporting [`Event::Persisted`](super::Event::Persisted) with
    /// its `seq`).
    pub fn record(&self) -> Record {
        Record {
            seq: self.next_seq - 1,
            epochs: self.shards.iter().map(|s| s.epoch).collect(),
            assignment: self
                .shards
                .iter()
                .map(|s| s.state.process().map(|p| p.slot))
                .collect(),
        }
    }

    /// The number of shards, S.
    pub fn shard_count(&self) -> u32 {
        // Checked in `new`.
        self.shards.len() as u32
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every slot's state.
    pub fn slots(&self) -> Vec<SlotStatus> {
        (0u32..)
            .zip(&self.slots)
            .map(|(index, slot)| {
                let crash_looping = slot.crash_looping(&self.config);
                let phase = slot.status_phase();
                let process = slot.phase.process();
                SlotStatus {
                    slot: index,
                    process,
                    phase,
                    restarts: slot.restarts,
                    crash_looping,
                    shards: (0u32..)
                        .zip(&self.shards)
                        .filter(|(_, s)| process.is_some_and(|p| s.state == State::Held { by: p }))
                        .map(|(shard, _)| shard)
                        .collect(),
                }
            })
            .collect()
    }

    /// Every shard's state.
    pub fn shards(&self) -> Vec<ShardStatus> {
        (0u32..)
            .zip(&self.shards)
            .map(|(shard, s)| ShardStatus {
                shard,
                home: s.home,
                epoch: s.epoch,
                phase: match s.state {
                    State::Unassigned => ShardPhase::Unassigned,
                    State::Persisting { to, .. } => ShardPhase::Persisting { to },
                    State::Assigning { to } => ShardPhase::Assigning { to },
                    State::Held { by } => ShardPhase::Held { by },
                    State::Releasing { by } => ShardPhase::Releasing { by },
                },
                refused_until: s.refused_until.filter(|&until| until > self.now),
            })
            .collect()
    }

    /// Whether a shutdown finished: every process is reaped.
    pub fn is_stopped(&self) -> bool {
        self.shutting_down
            && self
                .slots
                .iter()
                .all(|s| matches!(s.phase, Phase::Down { .. }))
    }
}
