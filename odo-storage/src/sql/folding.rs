//! Who may fold a database's history, and how far: one fold of a database
//! at a time ([`Folding`]), and never past the bookmark of a restore being
//! asked for ([`Folding::pin`]).
//!
//! A restore asked for in a turn is checked against the history when it is
//! asked, but commits (with the turn) and is done (at the object's next
//! opening) later. In between, a fold (the history window's, or a trim
//! under the shard's cap) could move the base past its bookmark and the
//! restore would be dropped. So the check and a pin are one step under
//! the database's [`Folding`]; folds stop at the pin, and at the restore
//! pending in the backend once it committed (`history::fold_limit`). The
//! pin goes when the object next opens: the restore is done, or it never
//! committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// The databases of this process whose history is being folded (or whose
/// base is being read), and the records their restores asked for.
struct State {
    folding: Vec<PathBuf>,
    pins: BTreeMap<PathBuf, u64>,
}

static STATE: Mutex<State> = Mutex::new(State {
    folding: Vec::new(),
    pins: BTreeMap::new(),
});

/// Signalled when a [`Folding`] is released.
static FOLDED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The right to fold the history of one database, until dropped: one fold
/// at a time, from computing it to its batch being durable.
#[derive(Debug)]
pub(crate) struct Folding(PathBuf);

impl Folding {
    /// The right to fold `db`'s history, unless a fold of it is running.
    pub(crate) fn take(db: &Path) -> Option<Self> {
        let mut state = state();
        if state.folding.iter().any(|p| p == db) {
            return None;
        }
        state.folding.push(db.to_path_buf());
        Some(Folding(db.to_path_buf()))
    }

    /// The right to fold (or read the base of) `db`'s history, once no
    /// one else holds it. Blocking.
    pub(crate) fn wait(db: &Path) -> Self {
        let mut state = state();
        while state.folding.iter().any(|p| p == db) {
            state = FOLDED.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.folding.push(db.to_path_buf());
        Folding(db.to_path_buf())
    }

    /// Keeps every fold of this database at or before record `seq`, until
    /// [`Folding::unpin`]: a restore to it is being asked for. Taken under
    /// the right to fold, so no fold that missed the pin is under way.
    pub(crate) fn pin(&self, seq: u64) {
        let mut state = state();
        let pin = state.pins.entry(self.0.clone()).or_insert(seq);
        *pin = (*pin).min(seq);
    }

    /// The record that folds of `db` stop at, if a restore pinned one.
    pub(crate) fn pinned(db: &Path) -> Option<u64> {
        state().pins.get(db).copied()
    }

    /// Lets folds of `db` go past its pin: the restore asked for is done,
    /// dropped, or was never committed (the object opened without it).
    pub(crate) fn unpin(db: &Path) {
        state().pins.remove(db);
    }
}

impl Drop for Folding {
    fn drop(&mut self) {
        state().folding.retain(|p| p != &self.0);
        FOLDED.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_keeps_the_lowest_record_until_unpinned() {
        let db = Path::new("/nonexistent/folding-test.sqlite");
        assert_eq!(Folding::pinned(db), None);
        {
            let folding = Folding::take(db).expect("no fold of it runs");
            assert!(Folding::take(db).is_none(), "one fold at a time");
            folding.pin(9);
            folding.pin(4);
            folding.pin(7);
        }
        assert_eq!(Folding::pinned(db), Some(4));
        let _again = Folding::take(db).expect("released on drop");
        Folding::unpin(db);
        assert_eq!(Folding::pinned(db), None);
    }
}
