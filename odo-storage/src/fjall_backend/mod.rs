//! The durable backend on fjall (an LSM tree with a write-ahead journal).
//!
//! # Layout
//!
//! `<dir>/odo.lock` is the lock file (holding the holder's pid) and
//! `<dir>/fjall/` the fjall database, with three keyspaces:
//!
//! | keyspace   | key                                  | value              |
//! | ---------- | ------------------------------------ | ------------------ |
//! | `data`     | object id (32 bytes) ‖ user key bytes | the value          |
//! | `alarms`   | time (u64 big-endian) ‖ object id     | empty              |
//! | `alarm_of` | object id                             | time (u64 big-endian) |
//!
//! So one object's data is one contiguous range ordered by the UTF-8 bytes
//! of its keys, and the alarm index is ordered by time.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use odo_core::ObjectId;

use crate::backend::{Backend, ScanLimit};
use crate::batch::{AlarmChange, KeyRange, ObjectBatch, bytes_successor};
use crate::error::StorageError;

mod claim;
mod pace;

use claim::{DirClaim, lock_dir};
use pace::{Pace, lock_pace, probe_writes};

const ID_LEN: usize = 32;
const DB_DIR: &str = "fjall";

/// How far a commit goes before it is acknowledged. See `DURABILITY.md`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The journal is written to the OS and `fsync`ed with data and
    /// metadata (`PersistMode::SyncAll`).
    SyncAll,
    /// The journal is written to the OS and `fdatasync`ed
    /// (`PersistMode::SyncData`). Survives power loss on file systems where
    /// `fdatasync` is enough for an appended file, which is all common ones.
    #[default]
    SyncData,
    /// The journal is written to the OS page cache but not synced
    /// (`PersistMode::Buffer`): survives a crash of the process, not of the
    /// machine.
    Buffer,
}

impl Durability {
    fn persist_mode(self) -> PersistMode {
        match self {
            Self::SyncAll => PersistMode::SyncAll,
            Self::SyncData => PersistMode::SyncData,
            Self::Buffer => PersistMode::Buffer,
        }
    }
}

/// Options of [`FjallBackend::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FjallOptions {
    /// What an acknowledged commit survives. Default: [`Durability::SyncData`].
    pub durability: Durability,
    /// fjall's block cache, in bytes. Default: 32 MiB.
    pub cache_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            durability: Durability::default(),
            cache_bytes: 32 * 1024 * 1024,
        }
    }
}

impl FjallOptions {
    /// The default options with another durability level.
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// A durable store in one directory, on fjall.
///
/// The directory is locked while the backend is open: a second
/// [`open`](Self::open) of the same directory, from this process or
/// another, fails with [`StorageError::Locked`] naming the holder's pid.
///
/// A write that fails (a full disk, a failed fsync) leaves fjall refusing
/// every later write until it is opened again, as a crash would. The
/// backend does that itself, at once, before the failure is reported: it
/// closes fjall and opens it again from the same directory. Closing first
/// settles the failed batch for good, whatever of it fjall still held
/// (a small batch may sit whole in its journal buffer, which a later close
/// with room on the disk would write out): recovery keeps it only if it
/// reached the journal whole, and drops a torn tail. So every read after
/// the failure, and every read after the disk has room again, sees the
/// same outcome.
///
/// Writes are then refused before they reach fjall until the directory
/// takes a write again: a probe file of 64 KiB written, synced and
/// removed, tried with the next commit and then paced (100 ms apart at
/// first, doubling up to 5 s while it fails; a commit that succeeds starts
/// the pace again). Reads go on meanwhile. Should the reopening itself
/// fail, every call fails (its cause in the error) until a paced try
/// opens the store again. So once the disk has room again, the same
/// process takes writes again.
#[derive(Debug)]
pub struct FjallBackend {
    dir: PathBuf,
    options: FjallOptions,
    inner: RwLock<State>,
    /// A write failed: writes are refused before fjall until the directory
    /// takes one again.
    refusing: AtomicBool,
    /// When the next try (a probe, or opening a store that is down) may
    /// come, and the pause after it.
    pace: Mutex<Pace>,
}

#[derive(Debug)]
enum State {
    Open(Open),
    /// Opening fjall again after a failed write failed: why, in words
    /// (the error itself went to the call that tried).
    Down(String),
    Closed,
}

// Field order matters: fjall is dropped (and so closed) before the lock file
// is released, and the lock before this process forgets the directory.
struct Open {
    data: Keyspace,
    alarms: Keyspace,
    alarm_of: Keyspace,
    db: Database,
    _lock: File,
    _claim: DirClaim,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open").finish_non_exhaustive()
    }
}

impl FjallBackend {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    ///
    /// [`StorageError::Locked`] if the directory is already open,
    /// [`StorageError::Io`] if it cannot be created or locked,
    /// [`StorageError::Corruption`] if fjall finds damaged data.
    pub fn open(dir: impl AsRef<Path>, options: FjallOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        let open = Open::in_dir(&dir, &options)?;
        Ok(Self {
            dir,
            options,
            inner: RwLock::new(State::Open(open)),
            refusing: AtomicBool::new(false),
            pace: Mutex::new(Pace::default()),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The durability level commits are acknowledged at.
    pub fn durability(&self) -> Durability {
        self.options.durability
    }

    /// Bytes the database occupies on disk (journal and tables).
    pub fn disk_space(&self) -> Result<u64, StorageError> {
        self.with(|open| {
            open.db
                .disk_space()
                .map_err(|e| engine_error("measuring disk space", e))
        })
    }

    /// Writes every in-memory table out to disk tables and waits (for
    /// tools and measurements: commits never need it, the journal already
    /// holds them).
    pub fn flush_memtables(&self) -> Result<(), StorageError> {
        self.with(|open| {
            for keyspace in [&open.data, &open.alarms, &open.alarm_of] {
                keyspace
                    .rotate_memtable_and_wait()
                    .map_err(|e| engine_error("flushing memtables", e))?;
            }
            Ok(())
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let down = matches!(*self.inner.read().map_err(|_| poisoned())?, State::Down(_));
        if down {
            self.reopen_if_down()?;
        }
        match &*self.inner.read().map_err(|_| poisoned())? {
            State::Open(open) => f(open),
            State::Down(cause) => Err(down_error(cause)),
            State::Closed => Err(StorageError::Closed),
        }
    }

    /// Closes fjall, which a write just failed in, and opens it again (see
    /// [`FjallBackend`]): before the failure is reported, and before any
    /// other call reads.
    fn settle_failed_write(&self) {
        let Ok(mut state) = self.inner.write() else {
            return;
        };
        if !matches!(*state, State::Open(_)) {
            return;
        }
        // fjall writes out what its journal buffer still holds as it
        // closes: now, with the disk as full as when the write failed.
        let failed = std::mem::replace(&mut *state, State::Closed);
        drop(failed);
        *state = self.open_again();
    }

    /// A store that could not be opened again after a failed write: try
    /// again, if the pace allows.
    fn reopen_if_down(&self) -> Result<(), StorageError> {
        if !lock_pace(&self.pace).due(Instant::now()) {
            return Ok(());
        }
        let mut state = self.inner.write().map_err(|_| poisoned())?;
        if matches!(*state, State::Down(_)) {
            *state = self.open_again();
        }
        Ok(())
    }

    fn open_again(&self) -> State {
        match Open::in_dir(&self.dir, &self.options) {
            Ok(open) => {
                tracing::warn!(dir = %self.dir.display(), "store opened again after a failed write");
                State::Open(open)
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), %error, "opening the store again after a failed write failed");
                State::Down(error.to_string())
            }
        }
    }

    /// After a failed write: whether the directory takes writes again (a
    /// probe, when the pace allows).
    fn takes_writes_again(&self) -> bool {
        if !lock_pace(&self.pace).due(Instant::now()) {
            return false;
        }
        match probe_writes(&self.dir) {
            Ok(()) => {
                self.refusing.store(false, Ordering::Release);
                true
            }
            Err(error) => {
                tracing::debug!(dir = %self.dir.display(), %error, "the store's directory takes no writes yet");
                false
            }
        }
    }
}

impl Open {
    /// Claims and locks `dir` and opens fjall in it.
    fn in_dir(dir: &Path, options: &FjallOptions) -> Result<Self, StorageError> {
        let canonical = dir
            .canonicalize()
            .map_err(|e| StorageError::io(format!("resolving {}", dir.display()), e))?;
        let claim = DirClaim::take(canonical).ok_or_else(|| StorageError::Locked {
            dir: dir.to_path_buf(),
            holder_pid: Some(std::process::id()),
        })?;
        let lock = lock_dir(dir)?;
        let db = Database::builder(dir.join(DB_DIR))
            .cache_size(options.cache_bytes)
            .open()
            .map_err(|e| engine_error(format!("opening {}", dir.display()), e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| engine_error(format!("opening keyspace {name}"), e))
        };
        Ok(Open {
            data: keyspace("data")?,
            alarms: keyspace("alarms")?,
            alarm_of: keyspace("alarm_of")?,
            db,
            _lock: lock,
            _claim: claim,
        })
    }
}

/// The error of a call while fjall, which a failed write left refusing
/// writes, could not be opened again.
fn down_error(cause: &str) -> StorageError {
    StorageError::backend(
        "using the store",
        format!("it is closed after a failed write, and reopening it failed: {cause}"),
    )
}

fn poisoned() -> StorageError {
    StorageError::backend("locking the fjall backend", "lock poisoned by a panic")
}

fn engine_error(context: impl Into<String>, error: fjall::Error) -> StorageError {
    let context = context.into();
    match error {
        fjall::Error::Io(source) => StorageError::Io { context, source },
        fjall::Error::JournalRecovery(_)
        | fjall::Error::InvalidVersion(_)
        | fjall::Error::Decompress(_)
        | fjall::Error::InvalidTrailer
        | fjall::Error::InvalidTag(_)
        | fjall::Error::Unrecoverable
        | fjall::Error::Storage(
            fjall::LsmError::ChecksumMismatch { .. }
            | fjall::LsmError::InvalidHeader(_)
            | fjall::LsmError::InvalidTrailer
            | fjall::LsmError::InvalidTag(_)
            | fjall::LsmError::InvalidVersion(_)
            | fjall::LsmError::Decompress(_)
            | fjall::LsmError::Unrecoverable,
        ) => StorageError::corruption_from(context, error),
        other => StorageError::backend(context, other),
    }
}

fn data_key(object: &ObjectId, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ID_LEN + key.len());
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn alarm_key(time: u64, object: &ObjectId) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + ID_LEN);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(object.as_bytes());
    out
}

fn parse_alarm_key(key: &[u8]) -> Result<(ObjectId, u64), StorageError> {
    let (time, id) = key.split_at_checked(8).ok_or_else(|| bad_alarm_key(key))?;
    let time: [u8; 8] = time.try_into().map_err(|_| bad_alarm_key(key))?;
    let id: [u8; ID_LEN] = id.try_into().map_err(|_| bad_alarm_key(key))?;
    Ok((ObjectId::from_bytes(id), u64::from_be_bytes(time)))
}

fn bad_alarm_key(key: &[u8]) -> StorageError {
    StorageError::corruption(format!(
        "alarm index key of {} bytes, expected 40",
        key.len()
    ))
}

/// The object a data or `alarm_of` key belongs to: its first 32 bytes.
fn object_of(key: &[u8]) -> Result<ObjectId, StorageError> {
    let id: [u8; ID_LEN] = key
        .get(..ID_LEN)
        .and_then(|id| id.try_into().ok())
        .ok_or_else(|| {
            StorageError::corruption(format!(
                "a key of {} bytes, shorter than an object id",
                key.len()
            ))
        })?;
    Ok(ObjectId::from_bytes(id))
}

fn parse_time(value: &[u8]) -> Result<u64, StorageError> {
    let time: [u8; 8] = value.try_into().map_err(|_| {
        StorageError::corruption(format!("alarm time of {} bytes, expected 8", value.len()))
    })?;
    Ok(u64::from_be_bytes(time))
}

fn user_key(object: &ObjectId, key: &[u8]) -> Result<String, StorageError> {
    let user = key
        .strip_prefix(object.as_bytes().as_slice())
        .ok_or_else(|| {
            StorageError::corruption(format!("key outside object {object} in its range"))
        })?;
    String::from_utf8(user.to_vec()).map_err(|e| {
        StorageError::corruption_from(format!("a key of object {object} is not UTF-8"), e)
    })
}

fn lower_bound(object: &ObjectId, bound: &Bound<String>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(data_key(object, key)),
        Bound::Excluded(key) => Bound::Excluded(data_key(object, key)),
        Bound::Unbounded => Bound::Included(object.as_bytes().to_vec()),
    }
}

fn upper_bound(object: &ObjectId, bound: &Bound<String>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(data_key(object, key)),
        Bound::Excluded(key) => Bound::Excluded(data_key(object, key)),
        Bound::Unbounded => match bytes_successor(object.as_bytes()) {
            Some(next) => Bound::Excluded(next),
            None => Bound::Unbounded,
        },
    }
}

impl Backend for FjallBackend {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.with(|open| {
            let value = open
                .data
                .get(data_key(object, key))
                .map_err(|e| engine_error("reading a key", e))?;
            Ok(value.map(|v| Bytes::copy_from_slice(&v)))
        })
    }

    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|open| {
            let bounds = (
                lower_bound(object, &range.lower),
                upper_bound(object, &range.upper),
            );
            let iter = open.data.range::<Vec<u8>, _>(bounds);
            let iter: Box<dyn Iterator<Item = fjall::Guard>> = if reverse {
                Box::new(iter.rev())
            } else {
                Box::new(iter)
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for guard in iter {
                if limit.reached(out.len(), bytes) {
                    break;
                }
                let (key, value) = guard
                    .into_inner()
                    .map_err(|e| engine_error("scanning keys", e))?;
                let key = user_key(object, &key)?;
                bytes += key.len() + value.len();
                out.push((key, Bytes::copy_from_slice(&value)));
            }
            Ok(out)
        })
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.with(|open| {
            let value = open
                .alarm_of
                .get(object.as_bytes())
                .map_err(|e| engine_error("reading an alarm", e))?;
            value.map(|v| parse_time(&v)).transpose()
        })
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.with(|open| {
            let mut upper = now_ms.to_be_bytes().to_vec();
            upper.extend_from_slice(&[0xff; ID_LEN]);
            let bounds = (Bound::Unbounded, Bound::Included(upper));
            let mut out = Vec::new();
            for guard in open.alarms.range::<Vec<u8>, _>(bounds).take(limit) {
                let key = guard
                    .key()
                    .map_err(|e| engine_error("scanning alarms", e))?;
                out.push(parse_alarm_key(&key)?);
            }
            Ok(out)
        })
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        // Only after a failed write is the pace looked at: the usual
        // commit takes no lock for it.
        let after_failure = self.refusing.load(Ordering::Acquire);
        if after_failure && !self.takes_writes_again() {
            return Err(StorageError::backend(
                "committing a batch",
                "refused before it was written: a write failed, and the store's directory takes no writes yet",
            ));
        }
        let written = self.with(|open| {
            let mut batch = open
                .db
                .batch()
                .durability(Some(self.options.durability.persist_mode()));
            for (object, writes) in writes {
                if writes.clear {
                    // One object's data is contiguous: tombstone each of its
                    // keys, except those the batch writes anyway (a key may
                    // appear only once in a fjall batch).
                    for guard in open.data.prefix(object.as_bytes()) {
                        let key = guard
                            .key()
                            .map_err(|e| engine_error("scanning keys to delete", e))?;
                        let user = user_key(object, &key)?;
                        if !writes.entries.contains_key(&user) {
                            batch.remove(&open.data, key);
                        }
                    }
                }
                for (key, value) in &writes.entries {
                    match value {
                        Some(value) => {
                            batch.insert(&open.data, data_key(object, key), value.as_ref())
                        }
                        None => batch.remove(&open.data, data_key(object, key)),
                    }
                }
                let new_time = match writes.alarm {
                    AlarmChange::Keep => continue,
                    AlarmChange::Set(time) => Some(time),
                    AlarmChange::Delete => None,
                };
                let old_time = open
                    .alarm_of
                    .get(object.as_bytes())
                    .map_err(|e| engine_error("reading an alarm", e))?
                    .map(|v| parse_time(&v))
                    .transpose()?;
                if old_time == new_time {
                    continue;
                }
                if let Some(old) = old_time {
                    batch.remove(&open.alarms, alarm_key(old, object));
                }
                match new_time {
                    Some(time) => {
                        batch.insert(&open.alarms, alarm_key(time, object), b"".as_slice());
                        batch.insert(
                            &open.alarm_of,
                            object.as_bytes().as_slice(),
                            time.to_be_bytes().as_slice(),
                        );
                    }
                    None => batch.remove(&open.alarm_of, object.as_bytes().as_slice()),
                }
            }
            Ok(batch.commit())
        })?;
        match written {
            Ok(()) => {
                if after_failure {
                    *lock_pace(&self.pace) = Pace::default();
                }
                Ok(())
            }
            Err(error) => {
                // Whatever failed (the journal's write or its sync), fjall
                // refuses writes from now on, and may still hold part of
                // this batch: settled here, before the failure is told.
                self.refusing.store(true, Ordering::Release);
                self.settle_failed_write();
                Err(engine_error("committing a batch", error))
            }
        }
    }

    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        self.with(|open| {
            // Where the next object can start: just past every key of `after`.
            let start = |after: Option<&ObjectId>| match after {
                None => Some(Bound::Unbounded),
                Some(id) => bytes_successor(id.as_bytes()).map(Bound::Included),
            };
            // The objects with data: one seek per object, to the first key
            // past the previous object's keys.
            let mut with_data = Vec::new();
            let mut from = start(after);
            while let Some(lower) = from.take() {
                if with_data.len() >= limit {
                    break;
                }
                let first = open
                    .data
                    .range::<Vec<u8>, _>((lower, Bound::Unbounded))
                    .next();
                let Some(guard) = first else { break };
                let key = guard
                    .key()
                    .map_err(|e| engine_error("scanning objects", e))?;
                let id = object_of(&key)?;
                with_data.push(id);
                from = start(Some(&id));
            }
            // The objects with an alarm (most also have data).
            let mut with_alarm = Vec::new();
            if let Some(lower) = start(after) {
                for guard in open
                    .alarm_of
                    .range::<Vec<u8>, _>((lower, Bound::Unbounded))
                    .take(limit)
                {
                    let key = guard
                        .key()
                        .map_err(|e| engine_error("scanning alarms", e))?;
                    with_alarm.push(object_of(&key)?);
                }
            }
            let mut ids: Vec<ObjectId> = with_data.into_iter().chain(with_alarm).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.truncate(limit);
            Ok(ids)
        })
    }

    fn close(&self) -> Result<(), StorageError> {
        let mut guard = self.inner.write().map_err(|_| poisoned())?;
        let State::Open(open) = std::mem::replace(&mut *guard, State::Closed) else {
            return Ok(());
        };
        let flushed = open
            .db
            .persist(PersistMode::SyncAll)
            .map_err(|e| engine_error("flushing on close", e));
        drop(open);
        flushed
    }
}
