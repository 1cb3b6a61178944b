//! Point-in-time recovery of a SQLite-backed object: bookmarks, and the
//! restore of its whole database (SQL, key-value API and alarm) to one.
//!
//! Every local commit is a numbered log record (see `log.rs`). Records
//! stay in the log after the database file has caught up with them, for
//! as long as the history window ([`SqlOptions::history_ms`]) keeps them;
//! older ones are folded into a base file, `<id>.base-<n>` (the database
//! as of record `n`, named by the `sql/base` key). The state at record `k`
//! is the base with records up to `k` replayed over it.
//!
//! | key | value |
//! | --- | --- |
//! | `sql/when/<time ms, 16 hex>-<seq, 16 hex>` | empty: when record `seq` committed |
//! | `sql/base` | u64 big-endian: records up to this one are in the base file |
//! | `sql/restore` | u64 big-endian: restore to the state at this record when the database next opens |
//!
//! A bookmark is `<time ms, 16 hex>-<seq, 16 hex>`: it sorts in time order
//! and names the state after record `seq`. A restore is itself a commit:
//! the pages that differ between the current state and the bookmarked
//! one, as the next record, through the group commit, before the file is
//! brought up to date from the log as at any opening. A crash before that
//! commit leaves the request pending; after it, the log has the restore.
//!
//! [`SqlOptions::history_ms`]: super::SqlOptions::history_ms

use std::fs::File;
use std::io::Read;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use odo_core::ObjectId;

use super::database::PAGE_SIZE;
use super::error::SqlError;
use super::folding::Folding;
use super::ledger::{FoldPlan, ObjectHistory};
use super::log::{record_key, records_from, seq_of};
use super::wal::{Record, replay};
use crate::backend::{Backend, ScanLimit};
use crate::batch::{AlarmChange, KeyRange, ObjectBatch};
use crate::error::StorageError;

const WHEN_PREFIX: &str = "sql/when/";
/// The first key after every `when` key (`'/' + 1`).
const WHEN_END: &str = "sql/when0";
pub(crate) const BASE_KEY: &str = "sql/base";
pub(crate) const RESTORE_KEY: &str = "sql/restore";

/// The bookmark of the state after record `seq`, asked for at `time_ms`.
pub(crate) fn bookmark(time_ms: u64, seq: u64) -> String {
    format!("{time_ms:016x}-{seq:016x}")
}

/// The record a bookmark names.
pub(crate) fn parse_bookmark(bookmark: &str) -> Result<u64, StorageError> {
    let bad = || StorageError::Sql(SqlError::BadBookmark(bookmark.to_owned()));
    let (time, seq) = bookmark.split_once('-').ok_or_else(bad)?;
    if time.len() != 16 || seq.len() != 16 {
        return Err(bad());
    }
    u64::from_str_radix(time, 16).map_err(|_| bad())?;
    u64::from_str_radix(seq, 16).map_err(|_| bad())
}

/// The key that says record `seq` committed at `time_ms`.
pub(crate) fn when_key(time_ms: u64, seq: u64) -> String {
    format!("{WHEN_PREFIX}{}", bookmark(time_ms, seq))
}

pub(crate) fn u64_value(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

fn read_u64(backend: &dyn Backend, id: &ObjectId, key: &str) -> Result<Option<u64>, StorageError> {
    match backend.get(id, key)? {
        None => Ok(None),
        Some(value) => {
            let bytes: [u8; 8] = value
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::corruption(format!("{key} of object {id}")))?;
            Ok(Some(u64::from_be_bytes(bytes)))
        }
    }
}

/// Records up to this one are folded into the base file (0: none).
pub(crate) fn base(backend: &dyn Backend, id: &ObjectId) -> Result<u64, StorageError> {
    Ok(read_u64(backend, id, BASE_KEY)?.unwrap_or(0))
}

/// The restore asked for, if any: the record to go back to.
pub(crate) fn pending_restore(
    backend: &dyn Backend,
    id: &ObjectId,
) -> Result<Option<u64>, StorageError> {
    read_u64(backend, id, RESTORE_KEY)
}

/// The last record a fold of `id` (database at `db`) may take: a restore
/// asked for (pending in the backend, or being asked for in a turn not
/// yet committed) needs the state at its record.
pub(crate) fn fold_limit(
    backend: &dyn Backend,
    id: &ObjectId,
    db: &Path,
) -> Result<u64, StorageError> {
    let pending = pending_restore(backend, id)?.unwrap_or(u64::MAX);
    Ok(pending.min(Folding::pinned(db).unwrap_or(u64::MAX)))
}

/// The base file of `db` as of record `seq`.
pub(crate) fn base_file(db: &Path, seq: u64) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".base-{seq:016x}"));
    PathBuf::from(name)
}

/// The last record committed at or before `time_ms` (0: none since the
/// base).
pub(crate) fn record_at(
    backend: &dyn Backend,
    id: &ObjectId,
    time_ms: u64,
) -> Result<Option<u64>, StorageError> {
    let range = KeyRange {
        lower: Bound::Included(WHEN_PREFIX.to_owned()),
        upper: Bound::Included(when_key(time_ms, u64::MAX)),
    };
    let last = backend.scan(
        id,
        &range,
        true,
        ScanLimit {
            entries: 1,
            bytes: usize::MAX,
        },
    )?;
    match last.first() {
        None => Ok(None),
        Some((key, _)) => {
            let name = key.strip_prefix(WHEN_PREFIX).unwrap_or_default();
            parse_bookmark(name).map(Some)
        }
    }
}

/// The commit time of the last record whose time is kept (0: none).
pub(crate) fn last_time(backend: &dyn Backend, id: &ObjectId) -> Result<u64, StorageError> {
    let last = backend.scan(
        id,
        &KeyRange {
            lower: Bound::Included(WHEN_PREFIX.to_owned()),
            upper: Bound::Excluded(WHEN_END.to_owned()),
        },
        true,
        ScanLimit {
            entries: 1,
            bytes: usize::MAX,
        },
    )?;
    Ok(last
        .first()
        .and_then(|(key, _)| key.strip_prefix(WHEN_PREFIX))
        .and_then(|b| u64::from_str_radix(b.split_once('-')?.0, 16).ok())
        .unwrap_or(0))
}

/// The oldest bookmark the history holds: the base's state.
pub(crate) fn oldest(backend: &dyn Backend, id: &ObjectId) -> Result<String, StorageError> {
    let base = base(backend, id)?;
    let first = backend.scan(
        id,
        &KeyRange {
            lower: Bound::Included(WHEN_PREFIX.to_owned()),
            upper: Bound::Excluded(WHEN_END.to_owned()),
        },
        false,
        ScanLimit {
            entries: 1,
            bytes: usize::MAX,
        },
    )?;
    // The base's own time is not kept: the first record's time, less one,
    // sorts before it.
    let time = first
        .first()
        .and_then(|(key, _)| key.strip_prefix(WHEN_PREFIX))
        .and_then(|b| u64::from_str_radix(b.split_once('-')?.0, 16).ok())
        .map_or(0, |t| t.saturating_sub(1));
    Ok(bookmark(time, base))
}

/// What a fold did: the batch that makes its base the object's and drops
/// the records it holds, and what the history weighs after it.
#[derive(Debug)]
pub(crate) struct Folded {
    pub(crate) batch: ObjectBatch,
    /// Bytes of the records folded.
    pub(crate) records: u64,
    /// The new base file's size.
    pub(crate) base: u64,
    /// When the oldest record left committed (`None`: none left).
    pub(crate) oldest_ms: Option<u64>,
    /// The base file the new one replaces, removed once the batch is
    /// durable (`None`: there was none).
    pub(crate) replaced: Option<PathBuf>,
}

/// The size of log record `seq` of `id`, as its `when` key's value says
/// (older logs left it empty: then the record's own).
fn record_size(
    backend: &dyn Backend,
    id: &ObjectId,
    seq: u64,
    value: &[u8],
) -> Result<u64, StorageError> {
    match <[u8; 8]>::try_from(value) {
        Ok(size) => Ok(u64::from_be_bytes(size)),
        Err(_) => Ok(backend
            .get(id, &record_key(seq))?
            .map_or(0, |r| r.len() as u64)),
    }
}

/// Feeds the records of `id` (oldest first, as their `when` keys say) to
/// `offer` until it answers false; answers the `when` keys it took.
pub(crate) fn walk_records(
    backend: &dyn Backend,
    id: &ObjectId,
    mut offer: impl FnMut(u64, u64, u64) -> bool,
) -> Result<Vec<String>, StorageError> {
    let mut taken = Vec::new();
    let mut range = KeyRange {
        lower: Bound::Included(WHEN_PREFIX.to_owned()),
        upper: Bound::Excluded(WHEN_END.to_owned()),
    };
    loop {
        let page = backend.scan(
            id,
            &range,
            false,
            ScanLimit {
                entries: 4096,
                bytes: usize::MAX,
            },
        )?;
        let Some((last, _)) = page.last() else {
            return Ok(taken);
        };
        range.lower = Bound::Excluded(last.clone());
        for (key, value) in page {
            let name = key.strip_prefix(WHEN_PREFIX).unwrap_or_default();
            let seq = parse_bookmark(name)?;
            let time = u64::from_str_radix(name.split_once('-').map_or("", |p| p.0), 16)
                .map_err(|_| StorageError::corruption(format!("{key} of object {id}")))?;
            if !offer(seq, time, record_size(backend, id, seq, &value)?) {
                return Ok(taken);
            }
            taken.push(key);
        }
    }
}

/// What the history of `id` (database at `db`) weighs: its records and
/// its base file. Blocking; reads every `when` key of the object.
pub(crate) fn measure(
    backend: &dyn Backend,
    id: &ObjectId,
    db: &Path,
) -> Result<ObjectHistory, StorageError> {
    let base = base(backend, id)?;
    let mut history = ObjectHistory {
        records: 0,
        base: base_size(db, base),
        oldest_ms: None,
    };
    walk_records(backend, id, |_, time, bytes| {
        history.oldest_ms.get_or_insert(time);
        history.records += bytes;
        true
    })?;
    Ok(history)
}

fn base_size(db: &Path, base: u64) -> u64 {
    match base {
        0 => 0,
        n => std::fs::metadata(base_file(db, n)).map_or(0, |m| m.len()),
    }
}

/// Folds the records of `id` that `plan` takes (never past record
/// `synced`, which the file at `db` holds, synced) into a new base file,
/// and answers the batch that makes it the base and drops the records it
/// holds; `None` when there is nothing to fold. Never folds past a
/// bookmark that a restore asked for needs ([`Folding::pinned`], or the
/// restore pending in the backend). Blocking; the caller holds the
/// object's [`Folding`].
///
/// The new base is written, synced and renamed into place before the
/// batch exists, so the `sql/base` key never names a file that is not
/// there. The base it replaces is removed once the batch is durable
/// ([`Folded::replaced`]); one a crash left behind (written, never named)
/// is removed by [`remove_stale_bases`], once per store.
pub(crate) fn fold(
    backend: &dyn Backend,
    id: &ObjectId,
    db: &Path,
    mut plan: FoldPlan,
) -> Result<Option<Folded>, StorageError> {
    let base = base(backend, id)?;
    let limit = fold_limit(backend, id, db)?;
    let when_keys = walk_records(backend, id, |seq, time, bytes| {
        seq <= limit && plan.offer(seq, time, bytes)
    })?;
    let upto = plan.upto;
    if upto <= base {
        return Ok(None);
    }
    let io = |what: &str, e: std::io::Error| StorageError::io(format!("{what} of object {id}"), e);
    let new = base_file(db, upto);
    let mut tmp = new.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        if base > 0 {
            std::fs::copy(base_file(db, base), &tmp).map_err(|e| io("copying the base", e))?;
        } else {
            File::create(&tmp).map_err(|e| io("creating a base", e))?;
        }
        replay_range(backend, id, &tmp, base + 1, upto)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing a base", e))?;
        std::fs::rename(&tmp, &new).map_err(|e| io("renaming a base", e))?;
        if let Some(dir) = db.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("syncing the database directory", e))?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let mut batch = ObjectBatch::default();
    batch
        .entries
        .insert(BASE_KEY.to_owned(), Some(u64_value(upto)));
    for seq in base + 1..=upto {
        batch.entries.insert(record_key(seq), None);
    }
    for key in when_keys {
        batch.entries.insert(key, None);
    }
    Ok(Some(Folded {
        batch,
        records: plan.bytes,
        base: base_size(db, upto),
        oldest_ms: plan.next_ms,
        replaced: (base > 0).then(|| base_file(db, base)),
    }))
}

/// Removes the base files in `dir` (the shard's databases) that no
/// object's history names: those a fold wrote and then never committed
/// (a crash, a failed commit), and the `.tmp` files of folds cut short.
/// A database whose history is being folded is left alone. Blocking;
/// once per store, as it reads the whole directory.
pub(crate) fn remove_stale_bases(backend: &dyn Backend, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((db_name, number)) = name.to_str().and_then(|n| n.split_once(".base-")) else {
            continue;
        };
        let Some(id) = db_name
            .strip_suffix(".sqlite")
            .and_then(|id| id.parse::<ObjectId>().ok())
        else {
            continue;
        };
        let db = dir.join(db_name);
        let Some(_folding) = Folding::take(&db) else {
            continue;
        };
        let named = match base(backend, &id) {
            Ok(named) => named,
            Err(error) => {
                tracing::debug!(%error, %id, "an object's base is unknown: its base files are kept");
                continue;
            }
        };
        let stale = match u64::from_str_radix(number, 16) {
            Ok(seq) => seq != named,
            Err(_) => number.ends_with(".tmp"),
        };
        if stale {
            tracing::debug!(file = %entry.path().display(), "removing a stale base file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Builds what restoring the database at `db` (its file up to date with
/// the log, no WAL) to the state after record `target` takes: one record
/// of the pages that differ, and the alarm of that state. Blocking.
pub(crate) fn build_restore(
    backend: &dyn Backend,
    id: &ObjectId,
    db: &Path,
    target: u64,
    time_ms: u64,
) -> Result<(Record, AlarmChange), StorageError> {
    let base = base(backend, id)?;
    if target < base {
        return Err(SqlError::OutsideHistory {
            asked: format!("record {target}"),
            oldest: oldest(backend, id)?,
        }
        .into());
    }
    let io = |what: &str, e: std::io::Error| StorageError::io(format!("{what} of object {id}"), e);
    let mut tmp = db.as_os_str().to_owned();
    tmp.push(".restore");
    let tmp = PathBuf::from(tmp);
    let built = (|| {
        if base > 0 {
            std::fs::copy(base_file(db, base), &tmp).map_err(|e| io("copying the base", e))?;
        } else {
            File::create(&tmp).map_err(|e| io("creating the restore file", e))?;
        }
        replay_range(backend, id, &tmp, base + 1, target)?;
        let wanted = std::fs::read(&tmp).map_err(|e| io("reading the restored state", e))?;
        let mut current = Vec::new();
        match File::open(db) {
            Ok(mut file) => {
                file.read_to_end(&mut current)
                    .map_err(|e| io("reading the database", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("opening the database", e)),
        }
        let size = PAGE_SIZE as usize;
        let mut pages = Vec::new();
        for (at, page) in wanted.chunks(size).enumerate() {
            let start = at * size;
            if current.get(start..start + page.len()) != Some(page) {
                let mut full = page.to_vec();
                full.resize(size, 0);
                pages.push((at as u32 + 1, Bytes::from(full)));
            }
        }
        let record = Record {
            time_ms,
            page_size: PAGE_SIZE as u32,
            db_pages: wanted.len().div_ceil(size) as u32,
            pages,
        };
        Ok((record, alarm_of(&tmp)?))
    })();
    let _ = std::fs::remove_file(&tmp);
    built
}

/// Replays records `from..=to` of `id` into the file at `path`.
fn replay_range(
    backend: &dyn Backend,
    id: &ObjectId,
    path: &Path,
    from: u64,
    to: u64,
) -> Result<(), StorageError> {
    if from > to {
        return Ok(());
    }
    let mut range = records_from(from);
    range.upper = Bound::Included(record_key(to));
    loop {
        let page = backend.scan(
            id,
            &range,
            false,
            ScanLimit {
                entries: 256,
                bytes: 16 * 1024 * 1024,
            },
        )?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        range.lower = Bound::Excluded(last.clone());
        let mut records = Vec::with_capacity(page.len());
        for (key, value) in page {
            let seq = seq_of(&key)?;
            records.push(Record::decode(value).ok_or_else(|| {
                StorageError::corruption(format!("log record {seq} of object {id}"))
            })?);
        }
        replay(path, &records)
            .map_err(|e| StorageError::io(format!("replaying into {}", path.display()), e))?;
    }
}

/// The alarm of the database at `path` (not otherwise open), as a change
/// of the shard's alarm index.
fn alarm_of(path: &Path) -> Result<AlarmChange, StorageError> {
    let sqlite = |e| StorageError::Sql(SqlError::Sqlite(e));
    if std::fs::metadata(path).map_or(0, |m| m.len()) == 0 {
        return Ok(AlarmChange::Delete);
    }
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sqlite)?;
    let has_table: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_odo_alarm')",
            [],
            |row| row.get(0),
        )
        .map_err(sqlite)?;
    if !has_table {
        return Ok(AlarmChange::Delete);
    }
    let time: Option<i64> = conn
        .query_row("SELECT time FROM _odo_alarm WHERE id = 0", [], |row| {
            row.get(0)
        })
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sqlite)?;
    Ok(match time {
        Some(t) => AlarmChange::Set(t.max(0) as u64),
        None => AlarmChange::Delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookmarks_sort_in_time_order_and_name_their_record() {
        let a = bookmark(5, 9);
        let b = bookmark(6, 10);
        let c = bookmark(0x1_0000, 11);
        assert!(a < b && b < c);
        assert_eq!(parse_bookmark(&c).unwrap(), 11);
        for bad in [
            "",
            "x",
            "0000000000000005-9",
            "zzzzzzzzzzzzzzzz-0000000000000009",
        ] {
            assert!(matches!(
                parse_bookmark(bad),
                Err(StorageError::Sql(SqlError::BadBookmark(_)))
            ));
        }
    }
}
