//! After a failed write: when the next try may come (a probe of the
//! directory, or opening a store that could not be opened again), and the
//! probe itself. See [`FjallBackend`](super::FjallBackend).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The file that tells whether the directory takes writes again after a
/// failed one (written, synced, removed).
const PROBE_FILE: &str = "odo.probe";
/// What the probe writes.
const PROBE_BYTES: usize = 64 * 1024;

/// The first pause between two tries after a failed write.
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between two tries after a failed write.
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    not_before: Option<Instant>,
    delay: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            not_before: None,
            delay: RETRY_FIRST_DELAY,
        }
    }
}

impl Pace {
    /// Whether a try may come now; if so, the next one waits longer.
    pub(super) fn due(&mut self, now: Instant) -> bool {
        if self.not_before.is_some_and(|t| now < t) {
            return false;
        }
        self.not_before = Some(now + self.delay);
        self.delay = (self.delay * 2).min(RETRY_MAX_DELAY);
        true
    }
}

/// Whether `dir` takes a write again: [`PROBE_BYTES`] written to a file
/// of its own there, synced, and removed.
pub(super) fn probe_writes(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut file = File::create(&path)?;
        file.write_all(&[0; PROBE_BYTES])?;
        file.sync_data()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

pub(super) fn lock_pace(pace: &Mutex<Pace>) -> std::sync::MutexGuard<'_, Pace> {
    pace.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The pace of tries after a failed write, against a model: a try
        /// is due at once the first time, then never before the pause
        /// since the last due try has passed; the pauses double from
        /// 100 ms and never pass 5 s; and asking early changes nothing.
        #[test]
        fn tries_after_a_failed_write_are_paced(steps in proptest::collection::vec(0_u64..8_000, 1..64)) {
            let start = Instant::now();
            let mut pace = Pace::default();
            let mut now = start;
            let mut last_due: Option<(Instant, Duration)> = None;
            let mut expected_pause = RETRY_FIRST_DELAY;
            for step in steps {
                now += Duration::from_millis(step);
                let due = pace.due(now);
                let model = last_due.is_none_or(|(at, pause)| now >= at + pause);
                prop_assert_eq!(due, model);
                if due {
                    last_due = Some((now, expected_pause));
                    expected_pause = (expected_pause * 2).min(RETRY_MAX_DELAY);
                }
                prop_assert!(pace.delay <= RETRY_MAX_DELAY);
                prop_assert_eq!(pace.delay, expected_pause);
            }
        }
    }
}
