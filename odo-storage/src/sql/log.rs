//! Where a SQLite-backed object's log lives in the shard's backend.
//!
//! A SQLite-backed object's own key range in the backend (its id) holds
//! nothing of its key-value API (that is in its database): odo keeps its
//! log there, written by the group commit like any other write.
//!
//! | key | value |
//! | --- | --- |
//! | `sql/log/<seq, 16 hex digits>` | a [`Record`](super::wal::Record): the pages one local commit wrote |
//! | `sql/synced` | u64 big-endian: records up to this one are in the database file, synced |

use std::ops::Bound;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::backend::{Backend, ScanLimit};
use crate::batch::KeyRange;
use crate::error::StorageError;

const RECORD_PREFIX: &str = "sql/log/";
/// The first key after every record key (`'/' + 1`).
const RECORDS_END: &str = "sql/log0";
pub(crate) const SYNCED_KEY: &str = "sql/synced";

/// The key of record `seq`.
pub(crate) fn record_key(seq: u64) -> String {
    format!("{RECORD_PREFIX}{seq:016x}")
}

/// The sequence number in a record key.
pub(crate) fn seq_of(key: &str) -> Result<u64, StorageError> {
    key.strip_prefix(RECORD_PREFIX)
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| StorageError::corruption(format!("{key:?} is not a log record key")))
}

/// Every record from `seq` on.
pub(crate) fn records_from(seq: u64) -> KeyRange {
    KeyRange {
        lower: Bound::Included(record_key(seq)),
        upper: Bound::Excluded(RECORDS_END.to_owned()),
    }
}

/// The synced marker's value.
pub(crate) fn synced_value(seq: u64) -> Bytes {
    Bytes::copy_from_slice(&seq.to_be_bytes())
}

/// The synced marker of `id` (0 if none).
pub(crate) fn synced(backend: &dyn Backend, id: &ObjectId) -> Result<u64, StorageError> {
    match backend.get(id, SYNCED_KEY)? {
        None => Ok(0),
        Some(value) => {
            let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
                StorageError::corruption(format!("the synced marker of object {id}"))
            })?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// The highest record number in the log of `id` (0 if none).
pub(crate) fn last_seq(backend: &dyn Backend, id: &ObjectId) -> Result<u64, StorageError> {
    let last = backend.scan(
        id,
        &records_from(0),
        true,
        ScanLimit {
            entries: 1,
            bytes: usize::MAX,
        },
    )?;
    match last.first() {
        Some((key, _)) => seq_of(key),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_sort_by_number_and_stay_in_their_range() {
        let keys: Vec<String> = [0, 1, 15, 16, 255, u64::MAX].map(record_key).to_vec();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (key, seq) in keys.iter().zip([0, 1, 15, 16, 255, u64::MAX]) {
            assert_eq!(seq_of(key).unwrap(), seq);
            assert!(records_from(0).contains(key));
        }
        assert!(!records_from(0).contains(SYNCED_KEY));
    }
}
