//! One worker slot: its process's life and its restart backoff.

use std::time::Duration;

use super::{Config, Process, SlotPhase};

/// A worker slot.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) phase: Phase,
    pub(super) next_generation: u64,
    /// The delay the next failure waits before the restart.
    pub(super) backoff: Duration,
    pub(super) quick_failures: u32,
    pub(super) restarts: u32,
    /// When the current process became ready.
    pub(super) ready_since: Option<Duration>,
}

/// Where a slot's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Down {
        restart_at: Option<Duration>,
    },
    Starting {
        process: Process,
        since: Duration,
    },
    Running {
        process: Process,
        draining: bool,
    },
    Stopping {
        process: Process,
        since: Duration,
        /// Started again at once on exit (a drain), rather than never (a
        /// shutdown).
        restart: bool,
    },
    Killing {
        process: Process,
    },
}

impl Phase {
    pub(super) fn process(self) -> Option<Process> {
        match self {
            Phase::Down { .. } => None,
            Phase::Starting { process, .. }
            | Phase::Running { process, .. }
            | Phase::Stopping { process, .. }
            | Phase::Killing { process } => Some(process),
        }
    }
}

impl Slot {
    /// A slot with no process, due to start at once.
    pub(super) fn new(config: &Config) -> Slot {
        Slot {
            phase: Phase::Down {
                restart_at: Some(Duration::ZERO),
            },
            next_generation: 0,
            backoff: config.restart_backoff,
            quick_failures: 0,
            restarts: 0,
            ready_since: None,
        }
    }

    /// Whether the current process has been ready for
    /// [`Config::stable_after`] by `now`.
    pub(super) fn stable(&self, now: Duration, config: &Config) -> bool {
        self.ready_since
            .is_some_and(|ready| ready.saturating_add(config.stable_after) <= now)
    }

    /// Forgets earlier failures.
    pub(super) fn reset_backoff(&mut self, config: &Config) {
        self.backoff = config.restart_backoff;
        self.quick_failures = 0;
    }

    /// Counts the failure of the current process at `now` and returns how
    /// long to wait before the restart: the backoff, which then doubles (up
    /// to its cap). A process that was stable resets the backoff first and
    /// is not a quick failure.
    pub(super) fn failed(&mut self, now: Duration, config: &Config) -> Duration {
        if self.stable(now, config) {
            self.reset_backoff(config);
        } else {
            self.quick_failures = self.quick_failures.saturating_add(1);
        }
        let delay = self.backoff;
        self.backoff = self
            .backoff
            .saturating_mul(2)
            .min(config.max_restart_backoff)
            .max(config.restart_backoff);
        delay
    }

    /// Whether the slot failed quickly too many times in a row.
    pub(super) fn crash_looping(&self, config: &Config) -> bool {
        self.quick_failures >= config.crash_loop_limit
    }

    /// Whether earlier failures still weigh on the next restart.
    pub(super) fn backed_off(&self, config: &Config) -> bool {
        self.quick_failures > 0 || self.backoff != config.restart_backoff
    }

    /// The state as admin endpoints show it.
    pub(super) fn status_phase(&self) -> SlotPhase {
        match self.phase {
            Phase::Down { restart_at: None } => SlotPhase::Stopped,
            Phase::Down { .. } => SlotPhase::Restarting,
            Phase::Starting { .. } => SlotPhase::Starting,
            Phase::Running {
                draining: false, ..
            } => SlotPhase::Running,
            Phase::Running { draining: true, .. } => SlotPhase::Draining,
            Phase::Stopping { .. } => SlotPhase::Stopping,
            Phase::Killing { .. } => SlotPhase::Killing,
        }
    }
}
