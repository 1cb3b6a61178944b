//! Durability of SQLite-backed objects on fjall: the shard's log brings
//! every acknowledged transaction back, whatever the database files hold.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use odo_core::{Namespace, ObjectId};
use odo_storage::conformance::InterceptCommits;
use odo_storage::{
    FjallBackend, FjallOptions, ObjectTurns, SqlValue, StorageError, Store, StoreOptions,
};

fn id(name: &str) -> ObjectId {
    Namespace::new("SQL").id_from_name(name)
}

fn options(dir: &Path) -> StoreOptions {
    let mut options = StoreOptions::default();
    options.sql.dir = Some(dir.join("sql"));
    options
}

fn open(dir: &Path) -> Store {
    let backend = FjallBackend::open(dir.join("kv"), FjallOptions::default()).unwrap();
    Store::open(backend, options(dir)).unwrap()
}

async fn object(store: &Store, name: &str) -> ObjectTurns {
    let mut turns = store.sql_object(id(name)).unwrap();
    turns.prepare().await.unwrap();
    turns
}

async fn insert(turns: &mut ObjectTurns, n: i64) {
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, pad BLOB)",
        &[],
    )
    .unwrap();
    sql.exec(
        "INSERT INTO t VALUES (?, randomblob(3000))",
        &[SqlValue::from(n)],
    )
    .unwrap();
    turns.commit_turn().unwrap().await.unwrap();
}

async fn rows(turns: &mut ObjectTurns) -> Vec<i64> {
    turns.prepare().await.unwrap();
    let cursor = turns
        .sql()
        .unwrap()
        .exec("SELECT n FROM t ORDER BY n", &[])
        .unwrap();
    let out = cursor.raw().map(|r| r[0].as_i64().unwrap()).collect();
    turns.rollback_turn();
    out
}

/// Ends the object as a crash would: in the middle of a turn, so nothing
/// catches up and the WAL stays as it is (the connection closes, so this
/// process can open the file again).
async fn crash(mut turns: ObjectTurns) {
    turns.prepare().await.unwrap();
    turns
        .sql()
        .unwrap()
        .exec("INSERT INTO t VALUES (-1, NULL)", &[])
        .unwrap();
    drop(turns);
}

fn db_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("sql").join(format!("{}.sqlite", id(name)))
}

#[tokio::test]
async fn a_clean_close_and_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "a").await;
    for n in 0..20 {
        insert(&mut turns, n).await;
    }
    drop(turns);
    store.close().await.unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "a").await;
    assert_eq!(rows(&mut turns).await, (0..20).collect::<Vec<_>>());
    drop(turns);
    store.close().await.unwrap();
}

/// A process that dies keeps what it wrote in the page cache; a machine
/// that dies may not. Here the database file is thrown back to an empty
/// copy and its WAL deleted: the log alone brings every acknowledged
/// transaction back.
#[tokio::test]
async fn the_log_alone_brings_back_what_the_files_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "b").await;
    insert(&mut turns, 0).await;
    // The file as it was synced after a catch-up (here: nothing yet).
    let copy = std::fs::read(db_file(dir.path(), "b")).unwrap_or_default();
    for n in 1..50 {
        insert(&mut turns, n).await;
    }
    crash(turns).await;
    store.close().await.unwrap();
    std::fs::write(db_file(dir.path(), "b"), &copy).unwrap();
    let mut wal = db_file(dir.path(), "b").into_os_string();
    wal.push("-wal");
    let _ = std::fs::remove_file(&wal);

    let store = open(dir.path());
    let mut turns = object(&store, "b").await;
    assert_eq!(rows(&mut turns).await, (0..50).collect::<Vec<_>>());
    drop(turns);
    store.close().await.unwrap();
}

/// Many catch-ups (a small WAL bound), then a file thrown back to its last
/// synced copy: still everything.
#[tokio::test]
async fn catch_ups_trim_the_log_and_keep_what_they_synced() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FjallBackend::open(dir.path().join("kv"), FjallOptions::default()).unwrap();
    let mut opts = options(dir.path());
    opts.sql.checkpoint_wal_bytes = 16 * 1024;
    let store = Store::open(backend, opts).unwrap();
    let mut turns = object(&store, "c").await;
    for n in 0..200 {
        insert(&mut turns, n).await;
    }
    crash(turns).await;
    store.close().await.unwrap();
    let mut wal = db_file(dir.path(), "c").into_os_string();
    wal.push("-wal");
    let _ = std::fs::remove_file(&wal);
    let store = open(dir.path());
    let mut turns = object(&store, "c").await;
    assert_eq!(rows(&mut turns).await, (0..200).collect::<Vec<_>>());
    drop(turns);
    store.close().await.unwrap();
}

/// A turn whose local commit succeeded but whose group commit failed:
/// the object is reset and its database is back at the last durable
/// state.
#[tokio::test]
async fn a_failed_group_commit_takes_the_local_commit_back() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let failing = fail.clone();
    let backend = InterceptCommits::new(
        FjallBackend::open(dir.path().join("kv"), FjallOptions::default()).unwrap(),
        move |_| match failing.load(Ordering::SeqCst) {
            true => Err(StorageError::backend("committing", "injected")),
            false => Ok(()),
        },
    );
    let store = Store::open(backend, options(dir.path())).unwrap();
    let mut turns = object(&store, "d").await;
    insert(&mut turns, 1).await;
    fail.store(true, Ordering::SeqCst);
    turns.prepare().await.unwrap();
    turns
        .sql()
        .unwrap()
        .exec("INSERT INTO t VALUES (2, NULL)", &[])
        .unwrap();
    let failed = turns.commit_turn().unwrap().await;
    assert!(matches!(failed, Err(StorageError::CommitFailed(_))));
    assert!(turns.has_failed());
    fail.store(false, Ordering::SeqCst);
    drop(turns);
    let mut turns = object(&store, "d").await;
    assert_eq!(rows(&mut turns).await, vec![1]);
    insert(&mut turns, 3).await;
    assert_eq!(rows(&mut turns).await, vec![1, 3]);
    drop(turns);
    store.close().await.unwrap();
}

/// Every acknowledged SQL commit was in a backend commit (one fjall batch
/// and its fsync) that had returned before the acknowledgement, and many
/// objects' commits share one.
#[tokio::test]
async fn every_acknowledged_commit_was_covered_by_a_log_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let synced: Arc<Mutex<BTreeSet<(ObjectId, String)>>> = Arc::default();
    let batches = Arc::new(Mutex::new(0usize));
    let backend =
        Arc::new(FjallBackend::open(dir.path().join("kv"), FjallOptions::default()).unwrap());
    let wrapped = CountingBackend {
        inner: backend,
        synced: synced.clone(),
        batches: batches.clone(),
    };
    let store = Store::open(wrapped, options(dir.path())).unwrap();
    let mut tasks = Vec::new();
    for o in 0..16 {
        let store = store.clone();
        let synced = synced.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("o{o}");
            let mut turns = object(&store, &name).await;
            for n in 0..20 {
                turns.prepare().await.unwrap();
                let sql = turns.sql().unwrap();
                sql.exec("CREATE TABLE IF NOT EXISTS t (n)", &[]).unwrap();
                sql.exec("INSERT INTO t VALUES (?)", &[SqlValue::from(n)])
                    .unwrap();
                turns.commit_turn().unwrap().await.unwrap();
                // Acknowledged: the record of this turn is in a commit that
                // returned.
                let synced = synced.lock().unwrap();
                let mine = synced
                    .iter()
                    .filter(|(object, _)| *object == id(&name))
                    .count();
                assert!(
                    mine > n as usize,
                    "commit {n} of {name} acknowledged unsynced"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let batches = *batches.lock().unwrap();
    assert!(batches < 16 * 20, "{batches} batches for 320 commits");
    store.close().await.unwrap();
}

#[derive(Debug)]
struct CountingBackend {
    inner: Arc<FjallBackend>,
    synced: Arc<Mutex<BTreeSet<(ObjectId, String)>>>,
    /// Backend commits that carried at least one SQL commit record.
    batches: Arc<Mutex<usize>>,
}

impl odo_storage::Backend for CountingBackend {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<bytes::Bytes>, StorageError> {
        self.inner.get(object, key)
    }
    fn scan(
        &self,
        object: &ObjectId,
        range: &odo_storage::KeyRange,
        reverse: bool,
        limit: odo_storage::ScanLimit,
    ) -> Result<Vec<(String, bytes::Bytes)>, StorageError> {
        self.inner.scan(object, range, reverse, limit)
    }
    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.inner.alarm(object)
    }
    fn due_alarms(&self, now: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.due_alarms(now, limit)
    }
    fn commit(
        &self,
        writes: &[(ObjectId, Arc<odo_storage::ObjectBatch>)],
    ) -> Result<(), StorageError> {
        // fjall at SyncData: this returns after the journal's fdatasync.
        self.inner.commit(writes)?;
        let mut synced = self.synced.lock().unwrap();
        let mut with_records = 0;
        for (object, batch) in writes {
            let mut records = batch
                .entries
                .keys()
                .filter(|k| k.starts_with("sql/log/"))
                .peekable();
            with_records += usize::from(records.peek().is_some());
            for key in records {
                synced.insert((*object, key.clone()));
            }
        }
        // Only batches that carried commit records: a store also commits
        // bookkeeping of its own (the synced point, history folds).
        if with_records > 0 {
            *self.batches.lock().unwrap() += 1;
        }
        Ok(())
    }
    fn close(&self) -> Result<(), StorageError> {
        self.inner.close()
    }
}
