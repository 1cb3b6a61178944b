//! A backend wrapper that runs a hook before every commit: the way tests
//! hold a commit open, or make it fail, on a real backend.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::{Backend, KeyRange, ObjectBatch, ScanLimit, StorageError};

/// What [`InterceptCommits`] calls with each batch before committing it; an
/// `Err` fails the commit instead.
pub type CommitHook =
    dyn Fn(&[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> + Send + Sync;

/// `inner`, except that every commit first goes through a hook: block it (to
/// observe what waits for durability), count it, or fail it (to drive the
/// commit-failure paths that real disks rarely take on demand).
///
/// ```
/// use odo_storage::conformance::InterceptCommits;
/// use odo_storage::{MemoryBackend, StorageError, Store, StoreOptions};
///
/// let failing = InterceptCommits::new(MemoryBackend::new(), |_| {
///     Err(StorageError::backend("committing", "injected"))
/// });
/// let store = Store::open(failing, StoreOptions::default())?;
/// # Ok::<(), StorageError>(())
/// ```
pub struct InterceptCommits<B> {
    inner: B,
    hook: Box<CommitHook>,
}

impl<B: fmt::Debug> fmt::Debug for InterceptCommits<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptCommits")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> InterceptCommits<B> {
    /// Wraps `inner`; `hook` runs (on the store's commit thread) before each
    /// commit.
    pub fn new(
        inner: B,
        hook: impl Fn(&[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            inner,
            hook: Box::new(hook),
        }
    }
}

impl<B: Backend> Backend for InterceptCommits<B> {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(object, key)
    }

    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.inner.scan(object, range, reverse, limit)
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.inner.alarm(object)
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.due_alarms(now_ms, limit)
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        (self.hook)(writes)?;
        self.inner.commit(writes)
    }

    fn close(&self) -> Result<(), StorageError> {
        self.inner.close()
    }

    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        self.inner.objects(after, limit)
    }
}

/// A valve for commits: every commit waits at it until the test lets one
/// through with a verdict (commit, or fail with an injected error), or
/// opens it for good. Build the backend with
/// [`CommitValve::backend`]; the valve is shared with the test.
///
/// A valve that is dropped, or whose [`CommitValve::open_on_drop`] guard is
/// dropped (a failing assertion unwinding), opens, so a commit thread
/// never stays stuck at it while its store closes.
///
/// ```
/// use odo_storage::conformance::CommitValve;
/// use odo_storage::{MemoryBackend, Store, StoreOptions};
///
/// let valve = CommitValve::new();
/// let _open = valve.open_on_drop();
/// let store = Store::open(valve.backend(MemoryBackend::new()), StoreOptions::default())?;
/// valve.allow(false); // the next commit fails
/// valve.open(); // and every later one goes through
/// # Ok::<(), odo_storage::StorageError>(())
/// ```
#[derive(Debug, Default)]
pub struct CommitValve {
    state: std::sync::Mutex<ValveState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct ValveState {
    open: bool,
    /// Verdicts for the next commits, oldest first.
    verdicts: std::collections::VecDeque<bool>,
    /// Commits waiting at the valve now.
    waiting: usize,
    /// Commits that went through (committed or failed).
    passed: u64,
}

impl CommitValve {
    /// A closed valve.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ValveState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `inner`, with every commit passing this valve first.
    pub fn backend<B: Backend>(self: &Arc<Self>, inner: B) -> InterceptCommits<B> {
        let valve = self.clone();
        InterceptCommits::new(inner, move |_| valve.pass())
    }

    /// Lets the next commit through: it commits if `commit`, or fails with
    /// an injected [`StorageError::Backend`] error.
    pub fn allow(&self, commit: bool) {
        self.state().verdicts.push_back(commit);
        self.changed.notify_all();
    }

    /// Lets every commit through from now on (verdicts already given are
    /// used first).
    pub fn open(&self) {
        self.state().open = true;
        self.changed.notify_all();
    }

    /// Commits waiting at the valve right now.
    pub fn waiting(&self) -> usize {
        self.state().waiting
    }

    /// Commits that have passed the valve so far.
    pub fn passed(&self) -> u64 {
        self.state().passed
    }

    /// A guard that opens the valve when dropped.
    pub fn open_on_drop(self: &Arc<Self>) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }

    fn pass(&self) -> Result<(), StorageError> {
        let mut state = self.state();
        state.waiting += 1;
        let verdict = loop {
            if let Some(verdict) = state.verdicts.pop_front() {
                break verdict;
            }
            if state.open {
                break true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        };
        state.waiting -= 1;
        state.passed += 1;
        if verdict {
            Ok(())
        } else {
            Err(StorageError::backend(
                "committing",
                "failure injected by CommitValve",
            ))
        }
    }
}

/// Opens its [`CommitValve`] when dropped.
#[derive(Debug)]
pub struct OpenOnDrop(Arc<CommitValve>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}
