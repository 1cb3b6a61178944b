//! The backend trait: what a storage engine must provide for one store.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::batch::{KeyRange, ObjectBatch};
use crate::error::StorageError;

/// One store (one shard) of a storage engine.
///
/// A backend holds the data and alarms of many objects. It is opened by its
/// own constructor (for example [`FjallBackend::open`](crate::FjallBackend::open))
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
    /// descending when `reverse`), at most `limit` of them counted from the
    /// walking end.
    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: Option<usize>,
    ) -> Result<Vec<(String, Bytes)>, StorageError>;

    /// The alarm time of `object` (milliseconds since the Unix epoch), if set.
    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError>;

    /// Up to `limit` alarms due at or before `now_ms`, earliest first (ties
    /// in object id order).
    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError>;

    /// The earliest alarm of the store, if any.
    fn next_alarm(&self) -> Result<Option<(ObjectId, u64)>, StorageError>;

    /// Applies the writes of many objects atomically (each object appears at
    /// most once; [`Store`](crate::Store) merges several turns of one object
    /// before calling this) and makes them durable.
    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError>;

    /// Flushes everything and releases the store (files, locks).
    fn close(&self) -> Result<(), StorageError>;
}
