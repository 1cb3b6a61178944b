//! The crash test of SQLite-backed objects: a child process commits SQL
//! transactions and is killed with SIGKILL at random moments (during a
//! commit, during a file's catch-up); optionally the database files are
//! then thrown back to their last synced copies.

use std::path::Path;

use super::crash::{ACK, OBJECTS, READY, die, next_line, random_below, say, spawn_ready};
use super::{Harness, object_id, runtime};
use crate::{SqlError, SqlValue, Store};

const CHILD_ENV: &str = "ODO_STORAGE_CONFORMANCE_SQL_CRASH_DIR";
const ROWS: i64 = 4;
const ROUNDS: usize = 3;

/// Crashes a process that commits SQL transactions, then checks what
/// survived: every acknowledged transaction is there, none is half there.
///
/// Like [`crash`](super::crash), call it from a `#[test]` named
/// `test_name`, with a [`SqlHarness`](super::SqlHarness) over a durable
/// backend. Each turn of the child (8 objects at once) writes sequence
/// number `seq` into 4 rows of a table (deleting them all first every
/// 7th turn), into the key `seq` and into the alarm, and prints an
/// acknowledgement once it is durable. With `throw_back`, after each kill
/// every database file is replaced by its copy as last synced (or emptied)
/// and its WAL removed: the shard's log alone must bring everything back.
///
/// # Panics
///
/// Panics when a check fails or the child misbehaves.
pub fn sql_crash<H: Harness>(harness: &H, test_name: &str, throw_back: bool) {
    run(harness, test_name, throw_back, false);
}

/// [`sql_crash`], and after each kill also checks every object's history:
/// restored to its oldest bookmark it is whole, and the undo bookmark
/// brings it back. For a harness with a small history cap
/// ([`SqlHarness::max_history_bytes`](super::SqlHarness::max_history_bytes)),
/// so that trims run while the child is killed.
///
/// # Panics
///
/// Panics when a check fails or the child misbehaves.
pub fn sql_crash_checking_history<H: Harness>(harness: &H, test_name: &str) {
    run(harness, test_name, false, true);
}

fn run<H: Harness>(harness: &H, test_name: &str, throw_back: bool, check_history: bool) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(harness, Path::new(&dir));
    }
    if !harness.durable() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked = [0u64; OBJECTS];
    for round in 0..ROUNDS {
        let (mut guard, mut lines) = spawn_ready(
            test_name,
            (CHILD_ENV, dir.path()),
            harness.child_env(),
            round,
        );
        let target = 1 + random_below(400);
        let mut seen = 0;
        while seen < target {
            match next_line(&mut lines) {
                Some(line) => seen += record(&line, &mut acked),
                None => panic!(
                    "round {round}: the child exited early: {:?}",
                    guard.0.wait()
                ),
            }
        }
        guard.0.kill().expect("SIGKILL the child");
        while let Some(line) = next_line(&mut lines) {
            record(&line, &mut acked);
        }
        drop(guard);
        if throw_back {
            throw_back_files(&dir.path().join("sql"));
        }
        verify(harness, dir.path(), &acked, round, check_history);
    }
}

fn record(line: &str, acked: &mut [u64; OBJECTS]) -> u64 {
    let Some(at) = line.find(ACK) else { return 0 };
    let mut words = line[at + ACK.len()..]
        .split_whitespace()
        .map(|w| w.parse::<u64>().ok());
    let (Some(Some(object)), Some(Some(seq))) = (words.next(), words.next()) else {
        panic!("malformed acknowledgement {line:?}");
    };
    acked[object as usize] = seq;
    1
}

/// Replaces every database file by its last synced copy (or nothing) and
/// removes its WAL: what a machine that lost its page cache could be left
/// with.
fn throw_back_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sqlite") {
            continue;
        }
        let mut synced = path.as_os_str().to_owned();
        synced.push(".synced");
        match std::fs::read(&synced) {
            Ok(copy) => std::fs::write(&path, copy).expect("restoring a synced copy"),
            Err(_) => std::fs::write(&path, b"").expect("emptying a database file"),
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let _ = std::fs::remove_file(&wal);
    }
}

fn verify<H: Harness>(
    harness: &H,
    dir: &Path,
    acked: &[u64; OBJECTS],
    round: usize,
    check_history: bool,
) {
    runtime().block_on(async {
        let mut undone = 0;
        let backend = harness.open(dir).expect("reopening after the crash");
        let store = Store::open(backend, harness.store_options(dir)).expect("store");
        for (n, &acked) in acked.iter().enumerate() {
            let mut turns = harness.object(&store, object_id(n));
            let stored = whole_state(&store, &mut turns, &format!("round {round}, object {n}"))
                .await
                .unwrap_or(0);
            assert!(
                stored >= acked,
                "round {round}, object {n}: acknowledged transaction {acked} lost (found {stored})"
            );
            if check_history {
                let what = format!("round {round}, object {n}, at its oldest bookmark");
                undone += check_oldest_and_undo(harness, &store, turns, n, stored, &what).await;
            }
        }
        store.close().await.expect("close");
        assert!(
            !check_history || undone > 0,
            "round {round}: trims took every undo bookmark before it was asked for"
        );
    });
}

/// Restores the object to its oldest bookmark and checks that it is
/// whole there, then undoes the restore and checks that it is back at
/// `stored`; answers 1 when the undo could be asked for, 0 when trims
/// (which run meanwhile: the harness's cap is small) had folded the state
/// it names away before it was asked for. A restore, once asked for, must
/// be done: folds stop at its bookmark.
async fn check_oldest_and_undo<H: Harness>(
    harness: &H,
    store: &Store,
    mut turns: crate::ObjectTurns,
    n: usize,
    stored: u64,
    what: &str,
) -> usize {
    turns.prepare().await.expect("preparing");
    let mut oldest = turns.oldest_bookmark().await.expect("the oldest bookmark");
    // A trim may fold the oldest bookmark away between reading it and
    // asking for it: then ask for the oldest the refusal names.
    let mut refusals = 0;
    let undo = loop {
        match turns.on_next_session_restore_bookmark(&oldest).await {
            Ok(undo) => break undo,
            Err(crate::StorageError::Sql(SqlError::OutsideHistory { oldest: now, .. }))
                if refusals < 100 =>
            {
                refusals += 1;
                oldest = now;
            }
            Err(e) => panic!("{what}: restoring to the oldest bookmark: {e}"),
        }
    };
    commit(&mut turns).await;
    drop(turns);
    let mut turns = harness.object(store, object_id(n));
    whole_state(store, &mut turns, what).await;
    turns.prepare().await.expect("preparing");
    match turns.on_next_session_restore_bookmark(&undo).await {
        Ok(_) => {}
        // The restore's record pushed the history over its cap and a trim
        // folded up to it.
        Err(crate::StorageError::Sql(SqlError::OutsideHistory { .. })) => return 0,
        Err(e) => panic!("{what}: undoing the restore: {e}"),
    }
    commit(&mut turns).await;
    drop(turns);
    let mut turns = harness.object(store, object_id(n));
    let back = whole_state(store, &mut turns, what).await.unwrap_or(0);
    assert_eq!(back, stored, "{what}: the undo did not bring it back");
    1
}

/// Opens the object (recovering its database, doing a restore asked for)
/// and answers the one sequence number its whole state holds (`None`:
/// nothing written), after checking that it is whole: its rows, its key,
/// its alarm and the shard's alarm index all say the same.
pub(super) async fn whole_state(
    store: &Store,
    turns: &mut crate::ObjectTurns,
    what: &str,
) -> Option<u64> {
    let id = turns.id();
    turns.prepare().await.expect("recovering the database");
    let has_table = !turns
        .sql()
        .expect("sql")
        .exec("PRAGMA table_list(t)", &[])
        .expect("table_list")
        .to_vec()
        .is_empty();
    let rows: Vec<i64> = if has_table {
        turns
            .sql()
            .expect("sql")
            .exec("SELECT seq FROM t ORDER BY k", &[])
            .expect("select")
            .raw()
            .map(|r| r[0].as_i64().expect("an integer"))
            .collect()
    } else {
        Vec::new()
    };
    let kv = turns
        .get("seq")
        .await
        .expect("get")
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")));
    let alarm = turns.get_alarm().await.expect("get_alarm");
    let indexed = store.backend().alarm(&id).expect("the alarm index");
    let stored = kv.unwrap_or(0);
    assert!(
        rows.len() == if kv.is_some() { ROWS as usize } else { 0 }
            && rows.iter().all(|seq| *seq as u64 == stored),
        "{what}: a transaction is half there: rows {rows:?}, key {kv:?}"
    );
    assert_eq!(alarm, kv, "{what}: the alarm does not match");
    assert_eq!(indexed, kv, "{what}: the alarm index does not match");
    turns.rollback_turn();
    kv
}

async fn commit(turns: &mut crate::ObjectTurns) {
    if let Some(durable) = turns.commit_turn() {
        durable.await.expect("committing");
    }
}

/// One turn of the crash tests' children: `seq` into 4 rows of a table
/// (all deleted first every 7th), into the key `seq` and into the alarm.
pub(super) async fn write_turn(
    turns: &mut crate::ObjectTurns,
    seq: u64,
) -> Result<(), crate::StorageError> {
    let sql = turns.sql()?;
    sql.exec(
        "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, seq INTEGER, pad BLOB)",
        &[],
    )?;
    if seq.is_multiple_of(7) {
        sql.exec("DELETE FROM t", &[])?;
    }
    for k in 0..ROWS {
        sql.exec(
            "INSERT OR REPLACE INTO t VALUES (?, ?, randomblob(300))",
            &[SqlValue::from(k), SqlValue::Integer(seq as i64)],
        )?;
    }
    turns.put("seq", seq.to_be_bytes().to_vec()).await?;
    turns.set_alarm(seq).await
}

/// The child: commits SQL transactions until killed.
fn child<H: Harness>(harness: &H, dir: &Path) -> ! {
    runtime().block_on(async {
        let backend = harness
            .open(dir)
            .unwrap_or_else(|e| die("opening the store", e));
        let store = Store::open(backend, harness.store_options(dir))
            .unwrap_or_else(|e| die("starting the store", e));
        say(READY);
        let mut tasks = Vec::new();
        for n in 0..OBJECTS {
            let mut turns = harness.object(&store, object_id(n));
            tasks.push(tokio::spawn(async move {
                turns
                    .prepare()
                    .await
                    .unwrap_or_else(|e| die("recovering", e));
                let stored = turns.get("seq").await.unwrap_or_else(|e| die("reading", e));
                let mut seq = stored.map_or(0, |v| {
                    u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))
                });
                loop {
                    seq += 1;
                    turns
                        .prepare()
                        .await
                        .unwrap_or_else(|e| die("preparing", e));
                    write_turn(&mut turns, seq)
                        .await
                        .unwrap_or_else(|e| die("writing", e));
                    if let Some(durable) = turns.commit_turn() {
                        durable.await.unwrap_or_else(|e| die("committing", e));
                    }
                    say(&format!("{ACK}{n} {seq}"));
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    std::process::exit(0)
}
