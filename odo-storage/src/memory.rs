//! The in-memory backend: same semantics as the durable ones, nothing
//! survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use odo_core::ObjectId;

use crate::backend::{Backend, ScanLimit};
use crate::batch::{AlarmChange, KeyRange, ObjectBatch};
use crate::error::StorageError;

/// A backend that keeps everything in memory (for tests, development and
/// objects whose state may be lost). Not durable: `commit` returns as soon
/// as the writes are applied.
#[derive(Debug)]
pub struct MemoryBackend {
    state: RwLock<Option<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    data: HashMap<ObjectId, BTreeMap<String, Bytes>>,
    alarm_of: HashMap<ObjectId, u64>,
    alarms: BTreeSet<(u64, ObjectId)>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: RwLock::new(Some(MemoryState::default())),
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Option<MemoryState>>, StorageError> {
        // A poisoned lock means a panic while applying a batch: the state
        // may be half-applied, so report it rather than serve it.
        self.state
            .read()
            .map_err(|_| StorageError::corruption("memory backend lock poisoned by a panic"))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Option<MemoryState>>, StorageError> {
        self.state
            .write()
            .map_err(|_| StorageError::corruption("memory backend lock poisoned by a panic"))
    }

    fn with<T>(&self, f: impl FnOnce(&MemoryState) -> T) -> Result<T, StorageError> {
        let guard = self.read()?;
        guard.as_ref().map(f).ok_or(StorageError::Closed)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.with(|s| s.data.get(object).and_then(|d| d.get(key).cloned()))
    }

    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.with(|s| {
            let (Some(data), Some(bounds)) = (s.data.get(object), range.as_bounds()) else {
                return Vec::new();
            };
            let iter = data.range::<str, _>(bounds);
            let iter: Box<dyn Iterator<Item = (&String, &Bytes)>> = if reverse {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for (key, value) in iter {
                if limit.reached(out.len(), bytes) {
                    break;
                }
                bytes += key.len() + value.len();
                out.push((key.clone(), value.clone()));
            }
            out
        })
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.with(|s| s.alarm_of.get(object).copied())
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.with(|s| {
            s.alarms
                .iter()
                .take_while(|(time, _)| *time <= now_ms)
                .take(limit)
                .map(|(time, id)| (*id, *time))
                .collect()
        })
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        let mut guard = self.write()?;
        let state = guard.as_mut().ok_or(StorageError::Closed)?;
        for (object, batch) in writes {
            let data = state.data.entry(*object).or_default();
            if batch.clear {
                data.clear();
            }
            for (key, value) in &batch.entries {
                match value {
                    Some(value) => {
                        data.insert(key.clone(), value.clone());
                    }
                    None => {
                        data.remove(key);
                    }
                }
            }
            if data.is_empty() {
                state.data.remove(object);
            }
            let new_time = match batch.alarm {
                AlarmChange::Keep => continue,
                AlarmChange::Set(time) => Some(time),
                AlarmChange::Delete => None,
            };
            if let Some(old) = state.alarm_of.remove(object) {
                state.alarms.remove(&(old, *object));
            }
            if let Some(time) = new_time {
                state.alarm_of.insert(*object, time);
                state.alarms.insert((time, *object));
            }
        }
        Ok(())
    }

    fn close(&self) -> Result<(), StorageError> {
        self.write()?.take();
        Ok(())
    }

    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        self.with(|s| {
            let ids: BTreeSet<ObjectId> = s
                .data
                .keys()
                .chain(s.alarm_of.keys())
                .filter(|id| after.is_none_or(|after| *id > after))
                .copied()
                .collect();
            ids.into_iter().take(limit).collect()
        })
    }
}
