//! What the point-in-time recovery tests share: an object's whole state,
//! a turn that writes, a restore done the way the runtime does it.

use std::path::Path;

use odo_core::{Namespace, ObjectId};
use odo_storage::{
    FjallBackend, FjallOptions, ListOptions, ObjectTurns, SqlValue, Store, StoreOptions,
};

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub(crate) fn id(name: &str) -> ObjectId {
    Namespace::new("SQL").id_from_name(name)
}

pub(crate) async fn object(store: &Store, name: &str) -> ObjectTurns {
    let mut turns = store.sql_object(id(name)).unwrap();
    turns.prepare().await.unwrap();
    turns
}

pub(crate) async fn commit(turns: &mut ObjectTurns) {
    if let Some(durable) = turns.commit_turn() {
        durable.await.unwrap();
    }
}

/// Everything the object holds: its tables' rows, its keys, its alarm.
pub(crate) async fn state(turns: &mut ObjectTurns) -> String {
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    let tables: Vec<String> = sql
        .exec(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_odo\\_%' ESCAPE '\\' ORDER BY name",
            &[],
        )
        .unwrap()
        .raw()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    let mut out = String::new();
    for table in tables {
        let rows = sql
            .exec(&format!("SELECT * FROM \"{table}\" ORDER BY 1"), &[])
            .unwrap();
        out.push_str(&format!("{table}: {:?}\n", rows.into_raw()));
    }
    let keys = turns.list(&ListOptions::default()).await.unwrap();
    out.push_str(&format!("keys: {keys:?}\n"));
    out.push_str(&format!("alarm: {:?}\n", turns.get_alarm().await.unwrap()));
    turns.rollback_turn();
    out
}

pub(crate) async fn step(turns: &mut ObjectTurns, n: i64) {
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec(
        "CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, pad BLOB)",
        &[],
    )
    .unwrap();
    sql.exec(
        "INSERT INTO t VALUES (?, randomblob(2000))",
        &[SqlValue::from(n)],
    )
    .unwrap();
    turns
        .put(&format!("k{n}"), n.to_be_bytes().to_vec())
        .await
        .unwrap();
    turns.set_alarm(1_000 + n as u64).await.unwrap();
    commit(turns).await;
}

/// Restores object `name` to `bookmark` (asked in a turn, done when the
/// object next opens); answers the undo bookmark and the new view.
pub(crate) async fn restore(
    store: &Store,
    turns: ObjectTurns,
    name: &str,
    bookmark: &str,
) -> (String, ObjectTurns) {
    let mut turns = turns;
    turns.prepare().await.unwrap();
    let undo = turns
        .on_next_session_restore_bookmark(bookmark)
        .await
        .unwrap();
    commit(&mut turns).await;
    drop(turns);
    (undo, object(store, name).await)
}

/// A store over fjall in `dir`, its files catching up often (so records
/// stay as history), its history capped at `cap` bytes.
pub(crate) fn open_capped(dir: &Path, cap: u64) -> Store {
    let backend = FjallBackend::open(dir.join("kv"), FjallOptions::default()).unwrap();
    let mut options = StoreOptions::default();
    options.sql.dir = Some(dir.join("sql"));
    // Small, so that files catch up (and records stay as history).
    options.sql.checkpoint_wal_bytes = 16 * 1024;
    options.sql.max_history_bytes = cap;
    Store::open(backend, options).unwrap()
}
