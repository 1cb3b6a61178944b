//! The cap on a shard's SQL history: the oldest goes first, the rest
//! restores, a restore asked for keeps what it needs, and record numbers
//! stay unique across folds.

mod pitr;

use odo_storage::{
    FjallBackend, FjallOptions, ObjectTurns, SqlError, SqlValue, StorageError, Store,
};
use pitr::*;

/// The record a bookmark names, and when it was taken (bookmarks are
/// opaque to objects; the test reads them to watch the history move).
fn parts(bookmark: &str) -> (u64, u64) {
    let (time, seq) = bookmark.split_once('-').unwrap();
    (
        u64::from_str_radix(time, 16).unwrap(),
        u64::from_str_radix(seq, 16).unwrap(),
    )
}

#[tokio::test]
async fn history_over_its_cap_loses_its_oldest_first_and_the_rest_restores() {
    let dir = tempfile::tempdir().unwrap();
    // Object "old" writes first: its history is the shard's oldest.
    let store = open_capped(dir.path(), u64::MAX);
    let mut old = object(&store, "old").await;
    let mut old_marks = Vec::new();
    for n in 1..=40 {
        step(&mut old, n).await;
        old_marks.push((old.current_bookmark().await.unwrap(), state(&mut old).await));
    }
    drop(old);
    store.close().await.unwrap();
    let old_bytes = {
        let store = open_capped(dir.path(), u64::MAX);
        let old = object(&store, "old").await;
        drop(old);
        let bytes = store.sql_history().bytes;
        store.close().await.unwrap();
        bytes
    };
    assert!(old_bytes > 40 * 2000, "{old_bytes} bytes of history");
    // The clock moves on: every record of "new" is newer than those of
    // "old" (waiting for time to pass, not timing anything).
    let then = now_ms();
    while now_ms() <= then {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    // With a cap a little above what "old" holds, "new" writes past it.
    let cap = old_bytes + 64 * 1024;
    let store = open_capped(dir.path(), cap);
    let mut new = object(&store, "new").await;
    let mut old = object(&store, "old").await;
    let mut new_marks = Vec::new();
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut n = 1;
    while parts(&old.oldest_bookmark().await.unwrap()).1 == 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the history was never trimmed: {:?}",
            store.sql_history()
        );
        step(&mut new, n).await;
        new_marks.push((new.current_bookmark().await.unwrap(), state(&mut new).await));
        n += 1;
        tokio::task::yield_now().await;
    }
    // The trim counts itself once its fold is durable, which is when the
    // oldest bookmark moved: wait for the count too.
    while store.sql_history().trims == 0 {
        assert!(
            std::time::Instant::now() < give_up,
            "the trim was never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let stats = store.sql_history();
    assert!(stats.trims >= 1 && stats.trimmed_bytes > 0, "{stats:?}");
    assert_eq!(stats.cap, cap);
    // The oldest went first: "new" kept all of its history.
    assert_eq!(parts(&new.oldest_bookmark().await.unwrap()).1, 0);
    let oldest = old.oldest_bookmark().await.unwrap();
    let (_, base) = parts(&oldest);
    assert!(base < 40, "'old' kept some of its history ({oldest})");

    // Before the oldest: refused, naming the oldest.
    let (early, _) = &old_marks[0];
    match old.on_next_session_restore_bookmark(early).await {
        Err(StorageError::Sql(SqlError::OutsideHistory { oldest: named, .. })) => {
            assert_eq!(named, oldest)
        }
        other => panic!("restoring to {early} before {oldest}: {other:?}"),
    }
    match old.bookmark_for_time(parts(early).0).await {
        Err(StorageError::Sql(SqlError::OutsideHistory { oldest: named, .. })) => {
            assert_eq!(named, oldest)
        }
        other => panic!("a bookmark for a time before {oldest}: {other:?}"),
    }
    old.rollback_turn();
    // After it: every state recorded then comes back exactly.
    let kept: Vec<_> = old_marks
        .iter()
        .filter(|(b, _)| parts(b).1 >= base)
        .cloned()
        .collect();
    assert!(!kept.is_empty());
    for (bookmark, expected) in [kept.first().unwrap(), kept.last().unwrap()] {
        let (_, mut restored) = restore(&store, old, "old", bookmark).await;
        assert_eq!(
            &state(&mut restored).await,
            expected,
            "restored to {bookmark}"
        );
        old = restored;
    }
    let (bookmark, expected) = &new_marks[0];
    let (_, mut restored) = restore(&store, new, "new", bookmark).await;
    assert_eq!(
        &state(&mut restored).await,
        expected,
        "restored to {bookmark}"
    );
    drop((old, restored));
    store.close().await.unwrap();
}

/// The log's synced marker can lag behind the base (a view going away
/// submitted its marker late, or a fold used a sync its marker had not
/// recorded yet). The next record still comes after the base: a record
/// number reused would name two states, and a restore to the bookmark
/// after it would be refused or give back the wrong one.
#[tokio::test]
async fn records_after_a_fold_are_numbered_past_it_whatever_the_synced_marker_says() {
    let dir = tempfile::tempdir().unwrap();
    // A cap of one byte: a trim folds all the history of "a" that its
    // file holds, synced (all of it, once its view went away and wrote
    // the marker). "b" writes until that happened.
    let store = open_capped(dir.path(), 1);
    let mut a = object(&store, "a").await;
    for n in 1..=10 {
        step(&mut a, n).await;
    }
    let last = parts(&a.current_bookmark().await.unwrap()).1;
    drop(a);
    let mut b = object(&store, "b").await;
    write_until_a_is_folded(&store, &mut b, last).await;
    drop(b);
    store.close().await.unwrap();

    // The marker of "a" taken back to nothing.
    let backend = FjallBackend::open(dir.path().join("kv"), FjallOptions::default()).unwrap();
    let mut batch = odo_storage::ObjectBatch::default();
    batch.entries.insert("sql/synced".to_owned(), None);
    odo_storage::Backend::commit(&backend, &[(id("a"), std::sync::Arc::new(batch))]).unwrap();
    odo_storage::Backend::close(&backend).unwrap();
    drop(backend);

    let store = open_capped(dir.path(), u64::MAX);
    let mut a = object(&store, "a").await;
    let before = state(&mut a).await;
    let bookmark = a.current_bookmark().await.unwrap();
    assert_eq!(
        parts(&bookmark).1,
        last,
        "the state after the base is its record"
    );
    step(&mut a, 11).await;
    assert_eq!(parts(&a.current_bookmark().await.unwrap()).1, last + 1);
    let (_, mut restored) = restore(&store, a, "a", &bookmark).await;
    assert_eq!(state(&mut restored).await, before, "restored to {bookmark}");
    drop(restored);
    store.close().await.unwrap();
}

/// Has `b` write (turns of [`step`]) until the history of object "a" is
/// folded up to record `upto` at least (a trim under a small cap); answers
/// where its base is then.
async fn write_until_a_is_folded(store: &Store, b: &mut ObjectTurns, upto: u64) -> u64 {
    let base = || {
        store
            .backend()
            .get(&id("a"), "sql/base")
            .unwrap()
            .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut n = 1;
    while base() < upto {
        assert!(
            std::time::Instant::now() < give_up,
            "the history of 'a' was never folded up to {upto}: {:?}",
            store.sql_history()
        );
        step(b, n).await;
        n += 1;
        tokio::task::yield_now().await;
    }
    base()
}

/// One turn that replaces the one row of table `r`, and key `k`.
async fn overwrite(turns: &mut ObjectTurns, n: i64) {
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS r (k INTEGER PRIMARY KEY, n INTEGER, pad BLOB)",
        &[],
    )
    .unwrap();
    sql.exec(
        "INSERT OR REPLACE INTO r VALUES (1, ?, randomblob(6000))",
        &[SqlValue::from(n)],
    )
    .unwrap();
    turns.put("k", n.to_be_bytes().to_vec()).await.unwrap();
    commit(turns).await;
}

/// A restore asked for keeps the history it needs until it is done, even
/// over the cap: trims of the shard before the object's next opening stop
/// at its bookmark (before, the trim folded past it and the restore was
/// dropped with a warning, leaving the object as it was).
#[tokio::test]
async fn a_restore_asked_for_is_done_though_trims_run_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_capped(dir.path(), u64::MAX);
    let mut a = object(&store, "a").await;
    // Its history weighs more than its file, so trims find it worth
    // folding.
    for n in 1..=10 {
        overwrite(&mut a, n).await;
    }
    let (bookmark, expected) = (a.current_bookmark().await.unwrap(), state(&mut a).await);
    for n in 11..=20 {
        overwrite(&mut a, n).await;
    }
    a.prepare().await.unwrap();
    a.on_next_session_restore_bookmark(&bookmark).await.unwrap();
    commit(&mut a).await;
    drop(a);
    store.close().await.unwrap();

    // A cap of one byte, and "b" writes until a trim folded what "a"
    // holds synced: up to the bookmark, no further.
    let store = open_capped(dir.path(), 1);
    let mut b = object(&store, "b").await;
    let target = parts(&bookmark).1;
    let base = write_until_a_is_folded(&store, &mut b, target).await;
    assert_eq!(base, target, "the trim stopped at the bookmark");
    let mut a = object(&store, "a").await;
    assert_eq!(state(&mut a).await, expected, "restored to {bookmark}");
    drop((a, b));
    store.close().await.unwrap();
}
