//! `logfile`: a storage backend defined outside odo's crates, the way a
//! user's crate defines one (against odo-storage's public API only), to
//! show that a backend plugs in without editing odo: the test server
//! registers it ([`App::backend`](odo::App::backend)), the conformance
//! suite checks it (`tests/logfile_backend.rs`), and it is a cell of the
//! multi-process matrix (`cargo xtask test-multiprocess --backend logfile`).
//!
//! It is a real, durable backend of its own design, not a wrapper: each
//! shard is an append-only log of commits in its directory
//! (`<data>/shards/<n>/commits.log`), replayed into an in-memory index on
//! open.
//!
//! - A commit is one record: `length (u32 LE) ‖ checksum (the first 8
//!   bytes of the BLAKE3 hash of the payload) ‖ payload` (the postcard
//!   encoding of every object's changes), appended and `fdatasync`ed
//!   before the index shows it. So a commit is atomic: after a crash, a
//!   record is whole and checks, or it is the torn tail of the log, which
//!   opening drops.
//! - Opening replays the log and, when it holds more than one record (or a
//!   torn tail), compacts it: one record per object, written to
//!   `commits.log.compacting`, synced, renamed over the log, and the
//!   directory synced.
//! - A failed write or sync fails every later commit (the file's end is
//!   then unknown): reopen the store.
//! - `commits.lock` is locked while the backend is open.
//!
//! The shard's epoch is not used: the directory is local and locked.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use odo_core::ObjectId;
use odo_storage::{
    AlarmChange, Backend, BackendFactory, Backends, KeyRange, ObjectBatch, OpenFuture, ScanLimit,
    ShardSpec, StorageError, open_blocking,
};
use serde::{Deserialize, Serialize};

/// The backend's name (`--storage logfile`).
pub const NAME: &str = "logfile";
/// The log, in the shard's directory.
pub const LOG_FILE: &str = "commits.log";
/// The lock file, in the shard's directory.
pub const LOCK_FILE: &str = "commits.lock";
const COMPACTING_FILE: &str = "commits.log.compacting";
/// Bytes before a record's payload: its length and checksum.
const HEADER: usize = 4 + 8;
/// How long an open waits for the lock (a process that forked while it
/// held it shares it until the child `exec`s).
const LOCK_WAIT: Duration = Duration::from_secs(5);
const ID_LEN: usize = 32;

/// The backends the test server offers (`tests/src/bin/odo-test-server.rs`
/// registers the same): the built-in ones and `logfile`. The multi-process
/// harness asks it whether a cell's backend is durable.
pub fn test_server_backends() -> Backends {
    let mut backends = Backends::builtin();
    backends
        .register(LogFileFactory)
        .expect("logfile is a free, valid name");
    backends
        .register(crate::sqlite_cell::SqliteCellFactory::default())
        .expect("sqlite is a free, valid name");
    backends
}

/// The factory of [`LogFileBackend`]s, named `logfile`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogFileFactory;

impl BackendFactory for LogFileFactory {
    fn name(&self) -> &str {
        NAME
    }

    fn durable(&self) -> bool {
        true
    }

    fn about(&self) -> &str {
        "durable, an append-only log of commits per shard (odo's test backend)"
    }

    fn open(&self, shard: ShardSpec) -> OpenFuture {
        open_blocking(move || LogFileBackend::open(shard.dir()))
    }
}

/// One object's changes in a record.
#[derive(Debug, Serialize, Deserialize)]
struct Change {
    object: [u8; ID_LEN],
    clear: bool,
    entries: Vec<(String, Option<Bytes>)>,
    alarm: AlarmRecord,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum AlarmRecord {
    Keep,
    Set(u64),
    Delete,
}

/// What the log says, in memory: the data of every object (keyed by object
/// id and key, so one object is one contiguous range) and the alarms.
#[derive(Debug, Default)]
struct Index {
    data: BTreeMap<Vec<u8>, Bytes>,
    alarm_of: HashMap<ObjectId, u64>,
    alarms: BTreeSet<(u64, ObjectId)>,
}

/// The bounds of every data key of `object`.
fn object_bounds(object: &ObjectId) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(object.as_bytes().to_vec()), after(object))
}

/// The bound just past every key of `object`.
fn after(object: &ObjectId) -> Bound<Vec<u8>> {
    let mut next = object.as_bytes().to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Bound::Excluded(next);
        }
    }
    Bound::Unbounded
}

fn data_key(object: &ObjectId, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(ID_LEN + key.len());
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn key_bound(
    object: &ObjectId,
    bound: &Bound<String>,
    unbounded: Bound<Vec<u8>>,
) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(key) => Bound::Included(data_key(object, key)),
        Bound::Excluded(key) => Bound::Excluded(data_key(object, key)),
        Bound::Unbounded => unbounded,
    }
}

impl Index {
    fn apply(&mut self, change: &Change) {
        let object = ObjectId::from_bytes(change.object);
        if change.clear {
            let doomed: Vec<Vec<u8>> = self
                .data
                .range(object_bounds(&object))
                .map(|(key, _)| key.clone())
                .collect();
            for key in doomed {
                self.data.remove(&key);
            }
        }
        for (key, value) in &change.entries {
            match value {
                Some(value) => {
                    self.data.insert(data_key(&object, key), value.clone());
                }
                None => {
                    self.data.remove(&data_key(&object, key));
                }
            }
        }
        let time = match change.alarm {
            AlarmRecord::Keep => return,
            AlarmRecord::Set(time) => Some(time),
            AlarmRecord::Delete => None,
        };
        if let Some(old) = self.alarm_of.remove(&object) {
            self.alarms.remove(&(old, object));
        }
        if let Some(time) = time {
            self.alarm_of.insert(object, time);
            self.alarms.insert((time, object));
        }
    }

    /// The whole index as changes, one per object, each putting every key
    /// and setting the alarm.
    fn snapshot(&self) -> Vec<Change> {
        let mut changes: BTreeMap<ObjectId, Change> = BTreeMap::new();
        let change = |object: ObjectId| Change {
            object: *object.as_bytes(),
            clear: false,
            entries: Vec::new(),
            alarm: AlarmRecord::Keep,
        };
        for (key, value) in &self.data {
            let (id, user) = key.split_at(ID_LEN);
            let id = ObjectId::from_bytes(id.try_into().expect("keys start with an object id"));
            let user = String::from_utf8(user.to_vec()).expect("keys come from strings");
            changes
                .entry(id)
                .or_insert_with(|| change(id))
                .entries
                .push((user, Some(value.clone())));
        }
        for (object, time) in &self.alarm_of {
            changes
                .entry(*object)
                .or_insert_with(|| change(*object))
                .alarm = AlarmRecord::Set(*time);
        }
        changes.into_values().collect()
    }
}

/// A record for `changes`: header and payload.
fn record(changes: &[Change]) -> Result<Vec<u8>, StorageError> {
    let payload = postcard::to_allocvec(changes)
        .map_err(|e| StorageError::backend("encoding a commit record", e))?;
    let length = u32::try_from(payload.len()).map_err(|_| {
        StorageError::backend(
            "encoding a commit record",
            format!("a record of {} bytes is over 4 GiB", payload.len()),
        )
    })?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let hash = blake3::hash(payload);
    let mut out = [0; 8];
    out.copy_from_slice(&hash.as_bytes()[..8]);
    out
}

/// What replaying a log found.
struct Replay {
    index: Index,
    records: usize,
    /// Whether bytes after the last whole record were dropped.
    torn: bool,
}

/// Replays `log`: every whole, checked record in order; the first record
/// that is cut short or fails its checksum starts the torn tail.
fn replay(log: &[u8]) -> Result<Replay, StorageError> {
    let mut index = Index::default();
    let mut at = 0;
    let mut records = 0;
    while let Some(header) = log.get(at..at + HEADER) {
        let (length, sum) = header.split_at(4);
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        let Some(payload) = log.get(at + HEADER..at + HEADER + length) else {
            break;
        };
        if checksum(payload) != sum {
            break;
        }
        let changes: Vec<Change> = postcard::from_bytes(payload).map_err(|e| {
            StorageError::corruption_from(
                format!("record {records} of the commit log checks but does not decode"),
                e,
            )
        })?;
        for change in &changes {
            index.apply(change);
        }
        records += 1;
        at += HEADER + length;
    }
    Ok(Replay {
        index,
        records,
        torn: at < log.len(),
    })
}

/// The appending end of the log, and the lock.
#[derive(Debug)]
struct Writer {
    log: File,
    /// Set by a failed write or sync: the file's end is unknown.
    failed: bool,
    _lock: File,
}

/// A durable backend keeping an append-only log of commits per shard (see
/// the [module](self) documentation).
#[derive(Debug)]
pub struct LogFileBackend {
    dir: PathBuf,
    index: RwLock<Option<Index>>,
    writer: Mutex<Option<Writer>>,
}

fn io(context: &str, path: &Path, source: std::io::Error) -> StorageError {
    StorageError::io(format!("{context} {}", path.display()), source)
}

fn poisoned() -> StorageError {
    StorageError::backend("locking the logfile backend", "lock poisoned by a panic")
}

/// Syncs directory `dir`, so that a file created or renamed in it stays.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Locks `<dir>/commits.lock`, waiting out a lock a forked child shares.
fn lock(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io("opening", &path, e))?;
    let give_up = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    holder_pid: None,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", &path, e)),
        }
    }
}

impl LogFileBackend {
    /// Opens (creating if needed) the store in `dir`: locks it, replays the
    /// log, compacts it if it holds more than one record.
    ///
    /// # Errors
    ///
    /// [`StorageError::Locked`] if the directory stays locked for 5 s,
    /// [`StorageError::Io`] if a file cannot be read, written or synced,
    /// [`StorageError::Corruption`] for a record that checks but does not
    /// decode.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
        let lock = lock(&dir)?;
        let path = dir.join(LOG_FILE);
        let log = match std::fs::read(&path) {
            Ok(log) => Some(log),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &path, e)),
        };
        let replay = replay(log.as_deref().unwrap_or_default())?;
        if replay.records > 1 || replay.torn {
            compact(&dir, &replay.index)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        if log.is_none() {
            sync_dir(&dir)?;
        }
        Ok(Self {
            dir,
            index: RwLock::new(Some(replay.index)),
            writer: Mutex::new(Some(Writer {
                log: file,
                failed: false,
                _lock: lock,
            })),
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Option<Index>>, StorageError> {
        self.index.read().map_err(|_| poisoned())
    }

    fn with<T>(&self, f: impl FnOnce(&Index) -> T) -> Result<T, StorageError> {
        self.read()?.as_ref().map(f).ok_or(StorageError::Closed)
    }

    fn writer(&self) -> Result<MutexGuard<'_, Option<Writer>>, StorageError> {
        self.writer.lock().map_err(|_| poisoned())
    }
}

/// Rewrites the log of `dir` as `index`'s snapshot, crash-safely: the new
/// log replaces the old only once it is whole and synced.
fn compact(dir: &Path, index: &Index) -> Result<(), StorageError> {
    let path = dir.join(COMPACTING_FILE);
    let mut file = File::create(&path).map_err(|e| io("creating", &path, e))?;
    for change in index.snapshot() {
        file.write_all(&record(std::slice::from_ref(&change))?)
            .map_err(|e| io("writing", &path, e))?;
    }
    file.sync_all().map_err(|e| io("syncing", &path, e))?;
    drop(file);
    std::fs::rename(&path, dir.join(LOG_FILE)).map_err(|e| io("renaming", &path, e))?;
    sync_dir(dir)
}

fn change_of(object: &ObjectId, batch: &ObjectBatch) -> Change {
    Change {
        object: *object.as_bytes(),
        clear: batch.clear,
        entries: batch
            .entries
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        alarm: match batch.alarm {
            AlarmChange::Keep => AlarmRecord::Keep,
            AlarmChange::Set(time) => AlarmRecord::Set(time),
            AlarmChange::Delete => AlarmRecord::Delete,
        },
    }
}

impl Backend for LogFileBackend {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.with(|index| index.data.get(&data_key(object, key)).cloned())
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
        let bounds = (
            key_bound(
                object,
                &range.lower,
                Bound::Included(object.as_bytes().to_vec()),
            ),
            key_bound(object, &range.upper, after(object)),
        );
        self.with(|index| {
            let entries = index.data.range(bounds);
            let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Bytes)>> = if reverse {
                Box::new(entries.rev())
            } else {
                Box::new(entries)
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for (key, value) in entries {
                if limit.reached(out.len(), bytes) {
                    break;
                }
                let key = std::str::from_utf8(&key[ID_LEN..])
                    .map_err(|e| {
                        StorageError::corruption_from(format!("a key of {object} is not UTF-8"), e)
                    })?
                    .to_owned();
                bytes += key.len() + value.len();
                out.push((key, value.clone()));
            }
            Ok(out)
        })?
    }

    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.with(|index| index.alarm_of.get(object).copied())
    }

    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.with(|index| {
            index
                .alarms
                .iter()
                .take_while(|(time, _)| *time <= now_ms)
                .take(limit)
                .map(|(time, object)| (*object, *time))
                .collect()
        })
    }

    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        let mut writer = self.writer()?;
        let writer = writer.as_mut().ok_or(StorageError::Closed)?;
        if writer.failed {
            return Err(StorageError::backend(
                "committing",
                "an earlier write to the commit log failed; reopen the store",
            ));
        }
        let changes: Vec<Change> = writes
            .iter()
            .map(|(object, batch)| change_of(object, batch))
            .collect();
        let record = record(&changes)?;
        let path = self.dir.join(LOG_FILE);
        if let Err(e) = writer
            .log
            .write_all(&record)
            .and_then(|()| writer.log.sync_data())
        {
            writer.failed = true;
            return Err(io("appending to", &path, e));
        }
        // Durable: now visible.
        let mut index = self.index.write().map_err(|_| poisoned())?;
        let index = index.as_mut().ok_or(StorageError::Closed)?;
        for change in &changes {
            index.apply(change);
        }
        Ok(())
    }

    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        // The lowest key an object after `after` can have, if any.
        let past = |id: &ObjectId| match self::after(id) {
            Bound::Excluded(next) => Some(Bound::Included(next)),
            _ => None,
        };
        let start = match after {
            None => Some(Bound::Unbounded),
            Some(id) => past(id),
        };
        self.with(|index| {
            let mut ids = BTreeSet::new();
            // One seek per object with data, past the previous one's keys.
            let mut from = start;
            while let Some(lower) = from.take() {
                if ids.len() >= limit {
                    break;
                }
                let Some((key, _)) = index.data.range((lower, Bound::Unbounded)).next() else {
                    break;
                };
                let id: [u8; ID_LEN] = key
                    .get(..ID_LEN)
                    .and_then(|id| id.try_into().ok())
                    .ok_or_else(|| StorageError::corruption("a data key shorter than an id"))?;
                let id = ObjectId::from_bytes(id);
                ids.insert(id);
                from = past(&id);
            }
            ids.extend(
                index
                    .alarm_of
                    .keys()
                    .filter(|id| after.is_none_or(|after| *id > after)),
            );
            Ok(ids.into_iter().take(limit).collect())
        })?
    }

    fn close(&self) -> Result<(), StorageError> {
        let mut writer = self.writer()?;
        let synced = match writer.take() {
            Some(writer) if !writer.failed => writer
                .log
                .sync_all()
                .map_err(|e| io("syncing", &self.dir.join(LOG_FILE), e)),
            _ => Ok(()),
        };
        self.index.write().map_err(|_| poisoned())?.take();
        synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; ID_LEN])
    }

    fn put(object: ObjectId, key: &str, value: &str) -> Change {
        Change {
            object: *object.as_bytes(),
            clear: false,
            entries: vec![(key.to_owned(), Some(Bytes::from(value.to_owned())))],
            alarm: AlarmRecord::Keep,
        }
    }

    #[test]
    fn a_torn_tail_is_dropped_and_whole_records_are_kept() {
        let mut log = record(&[put(id(1), "a", "1")]).unwrap();
        log.extend(record(&[put(id(1), "b", "2"), put(id(2), "a", "3")]).unwrap());
        let whole = log.len();
        log.extend(record(&[put(id(1), "c", "4")]).unwrap());
        for cut in whole..log.len() {
            let replay = replay(&log[..cut]).unwrap();
            assert_eq!(replay.records, 2, "cut at {cut}");
            assert_eq!(replay.torn, cut > whole, "cut at {cut}");
            assert_eq!(replay.index.data.len(), 3, "cut at {cut}");
        }
        // A flipped byte in the last record's payload: dropped too.
        let last = log.len() - 1;
        log[last] ^= 0xff;
        let replay = replay(&log).unwrap();
        assert_eq!((replay.records, replay.torn), (2, true));
    }

    #[test]
    fn the_last_object_id_has_an_upper_bound() {
        let top = ObjectId::from_bytes([0xff; ID_LEN]);
        assert_eq!(after(&top), Bound::Unbounded);
        assert_eq!(
            after(&id(1)),
            Bound::Excluded({
                let mut next = vec![1; ID_LEN];
                next[ID_LEN - 1] = 2;
                next
            })
        );
    }
}
