//! What an object read from the backend, kept within a bound
//! ([`ReadCache`]).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::{AlarmChange, ObjectBatch};

/// A bounded cache of what the backend holds for this object. Correct
/// because only this object's storage writes its keys (single activation),
/// and it learns every write of its own once that write is committed.
#[derive(Debug, Default)]
pub(super) struct ReadCache {
    pub(super) values: BTreeMap<String, Option<Bytes>>,
    pub(super) bytes: usize,
    max_bytes: usize,
    pub(super) alarm: Option<Option<u64>>,
}

impl ReadCache {
    const ENTRY_OVERHEAD: usize = 64;

    /// An empty cache of at most `max_bytes` (0: none at all).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            ..Self::default()
        }
    }

    fn cost(key: &str, value: &Option<Bytes>) -> usize {
        key.len() + value.as_ref().map_or(0, Bytes::len) + Self::ENTRY_OVERHEAD
    }

    pub(super) fn get(&self, key: &str) -> Option<Option<Bytes>> {
        self.values.get(key).cloned()
    }

    pub(super) fn insert(&mut self, key: &str, value: Option<Bytes>) {
        let cost = Self::cost(key, &value);
        if let Some(old) = self.values.remove(key) {
            self.bytes -= Self::cost(key, &old);
        }
        if cost > self.max_bytes {
            return;
        }
        while self.bytes + cost > self.max_bytes {
            match self.values.pop_first() {
                Some((k, v)) => self.bytes -= Self::cost(&k, &v),
                None => break,
            }
        }
        self.bytes += cost;
        self.values.insert(key.to_string(), value);
    }

    /// Records that `batch` is now in the backend.
    pub(super) fn apply(&mut self, batch: &ObjectBatch) {
        if self.max_bytes == 0 {
            return;
        }
        if batch.clear {
            self.values.clear();
            self.bytes = 0;
        }
        for (key, value) in &batch.entries {
            self.insert(key, value.clone());
        }
        match batch.alarm {
            AlarmChange::Keep => {}
            AlarmChange::Set(time) => self.alarm = Some(Some(time)),
            AlarmChange::Delete => self.alarm = Some(None),
        }
    }
}
