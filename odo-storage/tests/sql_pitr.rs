//! Point-in-time recovery of SQLite-backed objects: bookmarks, and the
//! restore of a whole database (SQL, key-value API, alarm) to each of
//! them, across a drop of a table, a `delete_all`, a restart, and back
//! (the undo bookmark). The history's cap: `sql_pitr_cap.rs`.

mod pitr;

use std::path::Path;

use odo_storage::{FjallBackend, FjallOptions, SqlError, StorageError, Store, StoreOptions};
use pitr::*;

fn open(dir: &Path) -> Store {
    open_capped(dir, StoreOptions::default().sql.max_history_bytes)
}

#[tokio::test]
async fn restoring_to_each_bookmark_gives_back_the_state_recorded_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "pitr").await;
    let mut marks = vec![(
        turns.current_bookmark().await.unwrap(),
        state(&mut turns).await,
    )];
    for n in 1..=12 {
        step(&mut turns, n).await;
        if n % 3 == 0 {
            marks.push((
                turns.current_bookmark().await.unwrap(),
                state(&mut turns).await,
            ));
        }
    }
    // Drop the table, then delete everything.
    turns.prepare().await.unwrap();
    turns.sql().unwrap().exec("DROP TABLE t", &[]).unwrap();
    commit(&mut turns).await;
    marks.push((
        turns.current_bookmark().await.unwrap(),
        state(&mut turns).await,
    ));
    turns.prepare().await.unwrap();
    turns.delete_all().await.unwrap();
    commit(&mut turns).await;
    let deleted = state(&mut turns).await;
    assert!(
        deleted.contains("keys: []") && deleted.contains("alarm: None"),
        "{deleted}"
    );
    let sorted: Vec<&String> = marks.iter().map(|(b, _)| b).collect();
    assert!(sorted.is_sorted(), "bookmarks sort in time order");

    for (bookmark, expected) in &marks {
        let (undo, mut restored) = restore(&store, turns, "pitr", bookmark).await;
        assert_eq!(
            &state(&mut restored).await,
            expected,
            "restored to {bookmark}"
        );
        // The alarm index follows the restored alarm.
        let alarm = restored.get_alarm().await.unwrap();
        restored.rollback_turn();
        assert_eq!(store.backend().alarm(&id("pitr")).unwrap(), alarm);
        // The undo bookmark goes back to the deleted state.
        let (_, mut undone) = restore(&store, restored, "pitr", &undo).await;
        assert_eq!(state(&mut undone).await, deleted, "undoing {bookmark}");
        turns = undone;
    }

    // A restore survives a restart, and the restored object goes on.
    let (bookmark, expected) = &marks[2];
    turns.prepare().await.unwrap();
    turns
        .on_next_session_restore_bookmark(bookmark)
        .await
        .unwrap();
    commit(&mut turns).await;
    drop(turns);
    store.close().await.unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "pitr").await;
    assert_eq!(&state(&mut turns).await, expected);
    step(&mut turns, 100).await;
    assert!(state(&mut turns).await.contains("[Integer(100)"));
    drop(turns);
    store.close().await.unwrap();
}

#[tokio::test]
async fn bookmarks_for_times_and_bad_bookmarks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "times").await;
    let before = turns.bookmark_for_time(0).await.unwrap();
    step(&mut turns, 1).await;
    let after_one = turns.current_bookmark().await.unwrap();
    let one = state(&mut turns).await;
    let now = now_ms();
    // The clock moves on before the second commit (waiting for it, not
    // timing anything).
    while now_ms() <= now {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    step(&mut turns, 2).await;
    // The state at a time after the first commit and before the second.
    let at = turns.bookmark_for_time(now).await.unwrap();
    assert!(
        before < after_one && after_one <= at,
        "{before} {after_one} {at}"
    );
    for bad in ["", "not a bookmark", "0-1"] {
        assert!(matches!(
            turns.on_next_session_restore_bookmark(bad).await,
            Err(StorageError::Sql(SqlError::BadBookmark(_)))
        ));
    }
    let future = format!("{:016x}-{:016x}", u64::MAX, 999);
    assert!(matches!(
        turns.on_next_session_restore_bookmark(&future).await,
        Err(StorageError::Sql(SqlError::OutsideHistory { .. }))
    ));
    let (_, mut restored) = restore(&store, turns, "times", &at).await;
    assert_eq!(state(&mut restored).await, one);
    let (_, mut empty) = restore(&store, restored, "times", &before).await;
    let nothing = state(&mut empty).await;
    assert!(
        nothing.contains("keys: []") && !nothing.contains("t: "),
        "{nothing}"
    );
    // A key-value-backed object has no bookmarks.
    let mut kv = store.object(id("kv"));
    assert!(matches!(
        kv.current_bookmark().await,
        Err(StorageError::Sql(SqlError::NotSqlBacked))
    ));
    drop((empty, kv));
    store.close().await.unwrap();
}

/// Records of `name` in the shard's log.
fn log_records(store: &Store, name: &str) -> usize {
    let range = odo_storage::KeyRange {
        lower: std::ops::Bound::Included("sql/log/".to_owned()),
        upper: std::ops::Bound::Excluded("sql/log0".to_owned()),
    };
    let limit = odo_storage::ScanLimit {
        entries: usize::MAX,
        bytes: usize::MAX,
    };
    store
        .backend()
        .scan(&id(name), &range, false, limit)
        .unwrap()
        .len()
}

#[tokio::test]
async fn history_older_than_the_window_is_folded_away_and_the_rest_restores() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FjallBackend::open(dir.path().join("kv"), FjallOptions::default()).unwrap();
    let mut options = StoreOptions::default();
    options.sql.dir = Some(dir.path().join("sql"));
    options.sql.checkpoint_wal_bytes = 16 * 1024;
    options.sql.history_ms = 1000;
    let store = Store::open(backend, options).unwrap();
    let mut turns = object(&store, "window").await;
    let early = turns.current_bookmark().await.unwrap();
    for n in 1..=10 {
        step(&mut turns, n).await;
    }
    let old_records = log_records(&store, "window");
    assert!(old_records >= 10, "{old_records} records");
    // Wait for the clock to leave the first ten commits behind the window
    // (waiting for time to pass, not timing anything).
    let then = now_ms();
    while now_ms() < then + 1100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Later commits make the file catch up, which folds the old history.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut n = 11;
    let mut recent = Vec::new();
    // (A bookmark ends with its record's number, here only to watch the
    // history's start move.)
    let base = |b: String| u64::from_str_radix(b.rsplit('-').next().unwrap(), 16).unwrap();
    while base(turns.oldest_bookmark().await.unwrap()) == 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the history was never folded"
        );
        step(&mut turns, n).await;
        recent.push((
            turns.current_bookmark().await.unwrap(),
            state(&mut turns).await,
        ));
        n += 1;
        tokio::task::yield_now().await;
    }
    // One record per step: the folded ones left the log.
    let left = log_records(&store, "window");
    assert!(left < n as usize - 1, "{left} of {} records left", n - 1);
    // The folded past is out of reach; what is left restores.
    assert!(matches!(
        turns.on_next_session_restore_bookmark(&early).await,
        Err(StorageError::Sql(SqlError::OutsideHistory { .. }))
    ));
    assert!(matches!(
        turns.bookmark_for_time(1).await,
        Err(StorageError::Sql(SqlError::OutsideHistory { .. }))
    ));
    turns.rollback_turn();
    let (bookmark, expected) = recent.first().cloned().expect("a commit after the wait");
    let (_, mut restored) = restore(&store, turns, "window", &bookmark).await;
    assert_eq!(state(&mut restored).await, expected);

    // A second fold replaces the base file: the first one goes (with a
    // history window, every object would otherwise keep one base file
    // too many, each about its database's size).
    let first = base(restored.oldest_bookmark().await.unwrap());
    let then = now_ms();
    while now_ms() < then + 1100 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    while base(restored.oldest_bookmark().await.unwrap()) == first {
        assert!(
            std::time::Instant::now() < give_up + std::time::Duration::from_secs(20),
            "the history was never folded a second time"
        );
        step(&mut restored, n).await;
        n += 1;
        tokio::task::yield_now().await;
    }
    // (The old file goes once the fold's batch is durable, a moment after
    // the history moved: wait for it.)
    let mut bases = base_files(&dir.path().join("sql"));
    while bases.len() > 1
        && std::time::Instant::now() < give_up + std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        bases = base_files(&dir.path().join("sql"));
    }
    assert_eq!(bases.len(), 1, "one base file per object: {bases:?}");
    drop(restored);
    store.close().await.unwrap();
}

#[tokio::test]
async fn base_files_a_crash_left_behind_are_removed_and_the_named_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut turns = object(&store, "leftover").await;
    for n in 1..=3 {
        step(&mut turns, n).await;
    }
    drop(turns);
    store.close().await.unwrap();
    // What a fold cut short by a crash leaves beside the database: a base
    // written and renamed but never named by a durable batch, and one
    // still being written.
    let db = find(&dir.path().join("sql"), ".sqlite").expect("the object's database");
    let planted = |suffix: &str| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let (renamed, written) = (
        planted(".base-00000000000000ff"),
        planted(".base-0000000000000100.tmp"),
    );
    std::fs::write(&renamed, b"never named").unwrap();
    std::fs::write(&written, b"cut short").unwrap();

    let store = open(dir.path());
    let mut turns = object(&store, "leftover").await;
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut n = 4;
    while renamed.exists() || written.exists() {
        assert!(
            std::time::Instant::now() < give_up,
            "the stale base files were never removed"
        );
        step(&mut turns, n).await;
        n += 1;
        tokio::task::yield_now().await;
    }
    assert!(db.exists());
    // Everything is still there, and the history still restores.
    let bookmark = turns.oldest_bookmark().await.unwrap();
    turns.rollback_turn();
    let (_, mut restored) = restore(&store, turns, "leftover", &bookmark).await;
    state(&mut restored).await;
    drop(restored);
    store.close().await.unwrap();
}

/// The first file under `dir` whose name ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            if let Some(found) = find(&entry.path(), suffix) {
                return Some(found);
            }
        } else if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(suffix))
        {
            return Some(entry.path());
        }
    }
    None
}

/// The base files under `dir` (their names).
fn base_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(base_files(&entry.path()));
        } else if let Some(name) = entry.file_name().to_str()
            && name.contains(".base-")
        {
            found.push(name.to_owned());
        }
    }
    found
}
