//! The backend trait: what a storage engine must provide for one store.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::batch::{KeyRange, ObjectBatch};
use crate::error::StorageError;

/// How much one [`Backend::scan`] may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimit {
    /// The most entries.
    pub entries: usize,
    /// Stop after the entry that brings the keys' and values' bytes to this
    /// or more.
    pub bytes: usize,
}

impl ScanLimit {
    /// Whether a scan that has returned `entries` entries of `bytes` bytes
    /// must stop.
    pub fn reached(&self, entries: usize, bytes: usize) -> bool {
        entries >= self.entries || bytes >= self.bytes
    }
}

/// One store (one shard) of a storage engine.
///
/// A backend holds the data and alarms of many objects. It is opened by its
/// [`BackendFactory`](crate::BackendFactory) (or its own constructor)
/// and handed to [`Store::open`](crate::Store::open), which owns it from
/// then on: reads come from the objects' async tasks (the calls are
/// synchronous and should be quick: mostly cache hits), writes only from the
/// store's single commit thread.
///
/// # Contract
///
/// - Keys of one object are ordered by their UTF-8 bytes and never mix with
///   another object's; a backend should lay one object's data out as one
///   contiguous range.
/// - [`commit`](Backend::commit) is atomic across every object in the slice:
///   after a crash either all of it is visible or none of it is. When it
///   returns `Ok`, the writes are as durable as the backend promises (see
///   `DURABILITY.md`) and visible to every read.
/// - After [`close`](Backend::close) every call returns
///   [`StorageError::Closed`]; `close` is idempotent.
/// - Failures are returned as [`StorageError`], never as panics.
///
/// Run [`conformance`](crate#conformance) against a new backend to check
/// all of this.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The value of `key` in `object`'s data.
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError>;

    /// The keys and values of `object` within `range`, in key order (or
    /// descending when `reverse`), counted from the walking end: at most
    /// `limit.entries` of them, and stopping after the entry that brings the
    /// keys' and values' bytes to `limit.bytes` or more. Listings call it
    /// page by page (off the async threads), so one call must stay bounded.
    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError>;

    /// The alarm time of `object` (milliseconds since the Unix epoch), if set.
    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError>;

    /// Up to `limit` alarms due at or before `now_ms`, earliest first (ties
    /// in object id order).
    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError>;

    /// Applies the writes of many objects atomically (each object appears at
    /// most once; [`Store`](crate::Store) merges several turns of one object
    /// before calling this) and makes them durable.
    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError>;

    /// Flushes everything and releases the store (files, locks).
    fn close(&self) -> Result<(), StorageError>;

    /// Up to `limit` objects that have data or an alarm in this store, in
    /// id order, starting after `after` (from the first when `None`): one
    /// page of every object the store holds.
    ///
    /// Used only when shards split (a data directory served by more
    /// workers than it has shards; see [`split`](crate::split)). A backend
    /// that cannot list its objects keeps this default, which fails with
    /// [`StorageError::Unsupported`], and its shards never split.
    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        let _ = (after, limit);
        Err(StorageError::Unsupported {
            what: "listing the objects of a store (needed to split shards)",
        })
    }
}

/// A shared backend is a backend (so a factory's `Arc<dyn Backend>` can go
/// wherever a backend is taken).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        (**self).get(object, key)
    }

    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        (**self).scan(object, range, reverse, limit)
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        (**self).alarm(object)
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        (**self).due_alarms(now_ms, limit)
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        (**self).commit(writes)
    }

    fn close(&self) -> Result<(), StorageError> {
        (**self).close()
    }

    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        (**self).objects(after, limit)
    }
}
