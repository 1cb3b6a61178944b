//! A backend wrapper that runs a hook before every commit: the way tests
//! hold a commit open, or make it fail, on a real backend.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::{Backend, KeyRange, ObjectBatch, StorageError};

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
///     Err(StorageError::Backend { context: "committing".into(), message: "injected".into() })
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
        limit: Option<usize>,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.inner.scan(object, range, reverse, limit)
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.inner.alarm(object)
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.due_alarms(now_ms, limit)
    }

    fn next_alarm(&self) -> Result<Option<(ObjectId, u64)>, StorageError> {
        self.inner.next_alarm()
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        (self.hook)(writes)?;
        self.inner.commit(writes)
    }

    fn close(&self) -> Result<(), StorageError> {
        self.inner.close()
    }
}
