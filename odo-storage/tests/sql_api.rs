//! The SQL API of a SQLite-backed object: typed values, cursors, turns
//! as implicit transactions, `transaction_sync`, refusals and limits.

use odo_core::{Namespace, ObjectId};
use odo_storage::{
    MAX_SQL_COLUMNS, MAX_SQL_PARAMETERS, MAX_SQL_RESULT_BYTES, MAX_SQL_ROW_BYTES,
    MAX_SQL_STATEMENT_BYTES, MemoryBackend, ObjectTurns, SqlError, SqlValue, StorageError, Store,
    StoreOptions, sql_params,
};

fn id(name: &str) -> ObjectId {
    Namespace::new("SQL").id_from_name(name)
}

fn store() -> Store {
    Store::open(MemoryBackend::new(), StoreOptions::default()).expect("store")
}

async fn object(store: &Store, name: &str) -> ObjectTurns {
    let mut turns = store.sql_object(id(name)).expect("sql object");
    turns.prepare().await.expect("prepare");
    turns
}

async fn commit(turns: &mut ObjectTurns) {
    if let Some(durable) = turns.commit_turn() {
        durable.await.expect("durable");
    }
}

fn refused(result: Result<odo_storage::Cursor, StorageError>) -> String {
    match result {
        Err(StorageError::Sql(SqlError::Refused { what, .. })) => what,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_values_round_trip_and_cursors_answer_rows() {
    let store = store();
    let mut turns = object(&store, "types").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n)", &[])
        .unwrap();
    let written = sql
        .exec(
            "INSERT INTO t VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)",
            &sql_params![
                i64::MIN,
                1.5,
                "é",
                vec![0u8, 255],
                None::<i64>,
                7,
                -0.0,
                "",
                Vec::<u8>::new(),
                None::<i64>
            ],
        )
        .unwrap();
    assert_eq!(written.rows_written(), 2);
    // A statement that changes no row reports none, not the last
    // INSERT's count.
    let index = sql.exec("CREATE INDEX t_i ON t (i)", &[]).unwrap();
    assert_eq!(index.rows_written(), 0);
    let batch = sql.exec("CREATE TABLE u (v); DROP TABLE u", &[]).unwrap();
    assert_eq!(batch.rows_written(), 0);
    let cursor = sql.exec("SELECT * FROM t ORDER BY i", &[]).unwrap();
    assert_eq!(cursor.column_names(), ["i", "r", "s", "b", "n"]);
    let rows: Vec<Vec<SqlValue>> = cursor.clone().into_raw();
    assert_eq!(
        rows[0],
        vec![
            SqlValue::Integer(i64::MIN),
            SqlValue::Real(1.5),
            SqlValue::Text("é".into()),
            SqlValue::Blob(vec![0u8, 255].into()),
            SqlValue::Null
        ]
    );
    assert_eq!(rows[1][2], SqlValue::Text(String::new()));
    assert_eq!(cursor.rows_read(), 2);
    assert!(matches!(cursor.one(), Err(SqlError::NotOneRow { rows: 2 })));

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct T {
        i: i64,
        s: String,
        b: Vec<u8>,
        n: Option<i64>,
    }
    let typed: T = sql
        .exec("SELECT i, s, b, n FROM t WHERE i = 7", &[])
        .unwrap()
        .one_as()
        .unwrap();
    assert_eq!(
        typed,
        T {
            i: 7,
            s: String::new(),
            b: vec![],
            n: None
        }
    );
    assert!(sql.database_size().unwrap() > 0);
    commit(&mut turns).await;
}

#[tokio::test]
async fn a_turn_is_a_transaction_and_reads_see_its_writes() {
    let store = store();
    let mut turns = object(&store, "turns").await;
    turns
        .sql()
        .unwrap()
        .exec("CREATE TABLE c (v INTEGER)", &[])
        .unwrap();
    turns
        .sql()
        .unwrap()
        .exec("INSERT INTO c VALUES (1)", &[])
        .unwrap();
    commit(&mut turns).await;

    // A failed turn rolls back only itself.
    turns.prepare().await.unwrap();
    turns
        .sql()
        .unwrap()
        .exec("UPDATE c SET v = 2", &[])
        .unwrap();
    let seen = turns.sql().unwrap().exec("SELECT v FROM c", &[]).unwrap();
    assert_eq!(seen.one().unwrap().values(), [SqlValue::Integer(2)]);
    turns.rollback_turn();
    turns.prepare().await.unwrap();
    let seen = turns.sql().unwrap().exec("SELECT v FROM c", &[]).unwrap();
    assert_eq!(seen.one().unwrap().values(), [SqlValue::Integer(1)]);

    // transaction_sync: an error rolls back only what it did.
    let sql = turns.sql().unwrap();
    sql.exec("UPDATE c SET v = 3", &[]).unwrap();
    let failed: Result<(), StorageError> = sql.transaction_sync(|sql| {
        sql.exec("UPDATE c SET v = 4", &[])?;
        Err(StorageError::Closed)
    });
    assert!(failed.is_err());
    let ok: Result<i64, StorageError> = sql.transaction_sync(|sql| {
        let row = sql
            .exec("UPDATE c SET v = v + 10 RETURNING v", &[])?
            .one()?;
        Ok(row.values()[0].as_i64().unwrap_or_default())
    });
    assert_eq!(ok.unwrap(), 13);
    commit(&mut turns).await;
}

/// odo runs statements of its own on an object's connection (its
/// transactions, the key-value API's reserved table) and keeps them
/// prepared. The object's SQL must not reach them by typing the same
/// text: each is refused as if odo had never prepared it.
#[tokio::test]
async fn odos_own_prepared_statements_are_out_of_the_objects_reach() {
    let store = store();
    let mut turns = object(&store, "own").await;
    turns.put_typed("secret", &41u64).await.unwrap();
    assert_eq!(turns.get_typed::<u64>("secret").await.unwrap(), Some(41));
    turns.delete("gone").await.unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    turns.get_typed::<u64>("secret").await.unwrap();
    let sql = turns.sql().unwrap();
    for (query, params) in [
        (
            "SELECT value FROM _odo_kv WHERE key = ?",
            sql_params!["secret"].to_vec(),
        ),
        (
            "INSERT OR REPLACE INTO _odo_kv (key, value) VALUES (?, ?)",
            sql_params!["secret", vec![0u8]].to_vec(),
        ),
        (
            "DELETE FROM _odo_kv WHERE key = ?",
            sql_params!["secret"].to_vec(),
        ),
        (
            "  SELECT value FROM _odo_kv WHERE key = ?  ",
            sql_params!["secret"].to_vec(),
        ),
        (
            "/*odo*/ SELECT value FROM _odo_kv WHERE key = ?",
            sql_params!["secret"].to_vec(),
        ),
        (
            " /*odo*/ SELECT value FROM _odo_kv WHERE key = ?",
            sql_params!["secret"].to_vec(),
        ),
        ("/*odo*/ SELECT 1", Vec::new()),
    ] {
        refused(sql.exec(query, &params));
    }
    for query in [
        "BEGIN",
        "COMMIT",
        " COMMIT",
        "ROLLBACK",
        "SAVEPOINT odo_kv_0",
        "/*odo*/ BEGIN",
        "/*odo*/ COMMIT",
    ] {
        refused(sql.exec(query, &[]));
    }
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    assert_eq!(turns.get_typed::<u64>("secret").await.unwrap(), Some(41));
    turns.rollback_turn();
}

#[tokio::test]
async fn what_cloudflare_refuses_is_refused() {
    let store = store();
    let mut turns = object(&store, "refusals").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (a)", &[]).unwrap();
    for (query, what) in [
        ("BEGIN", "BEGIN"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT s", "SAVEPOINT"),
        ("ATTACH 'x.db' AS x", "ATTACH"),
        ("CREATE TEMP TABLE x (a)", "CREATE TEMP TABLE"),
        ("CREATE TEMP VIEW v AS SELECT 1", "CREATE TEMP VIEW"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
        ("PRAGMA synchronous", "PRAGMA synchronous"),
        ("CREATE TABLE _odo_mine (a)", "table \"_odo_mine\""),
        (
            "CREATE VIRTUAL TABLE v USING dbstat",
            "virtual table module \"dbstat\"",
        ),
    ] {
        assert_eq!(refused(sql.exec(query, &[])), what, "{query}");
    }
    // Allowed: an ordinary index, fts5, rtree, the reading pragmas.
    for query in [
        "CREATE INDEX ta ON t (a)",
        "CREATE VIRTUAL TABLE f USING fts5(body)",
        "CREATE VIRTUAL TABLE r USING rtree(id, x0, x1)",
        "PRAGMA table_info(t)",
        "PRAGMA table_list",
        "PRAGMA index_list(t)",
        "PRAGMA foreign_keys",
        "PRAGMA quick_check",
        "PRAGMA optimize",
    ] {
        sql.exec(query, &[])
            .unwrap_or_else(|e| panic!("{query}: {e}"));
    }
    commit(&mut turns).await;
}

#[tokio::test]
async fn each_limit_is_a_typed_error() {
    let store = store();
    let mut turns = object(&store, "limits").await;
    let sql = turns.sql().unwrap();
    // Parameters.
    let params: Vec<SqlValue> = (0..=MAX_SQL_PARAMETERS as i64)
        .map(SqlValue::from)
        .collect();
    let marks = vec!["?"; params.len()].join(",");
    assert!(matches!(
        sql.exec(&format!("SELECT {marks}"), &params),
        Err(StorageError::Sql(SqlError::TooManyParameters {
            count: 101,
            max: 100
        }))
    ));
    let in_text = (1..=MAX_SQL_PARAMETERS + 1)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(",");
    assert!(matches!(
        sql.exec(&format!("SELECT {in_text}"), &[]),
        Err(StorageError::Sql(SqlError::TooManyParameters { .. }))
    ));
    sql.exec(
        &format!("SELECT {}", vec!["?"; 100].join(",")),
        &params[..100],
    )
    .unwrap();
    // Columns.
    let columns = |n: usize| {
        (0..n)
            .map(|c| format!("c{c}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    sql.exec(
        &format!("CREATE TABLE wide ({})", columns(MAX_SQL_COLUMNS)),
        &[],
    )
    .unwrap();
    assert!(matches!(
        sql.exec(
            &format!("CREATE TABLE wider ({})", columns(MAX_SQL_COLUMNS + 1)),
            &[]
        ),
        Err(StorageError::Sql(SqlError::TooManyColumns { max: 100 }))
    ));
    // Statement text.
    let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_STATEMENT_BYTES));
    assert!(matches!(
        sql.exec(&long, &[]),
        Err(StorageError::Sql(SqlError::StatementTooLong {
            max: 100_000,
            ..
        }))
    ));
    // Strings, blobs and rows.
    sql.exec("CREATE TABLE b (v)", &[]).unwrap();
    let big = vec![0u8; MAX_SQL_ROW_BYTES + 1];
    assert!(matches!(
        sql.exec("INSERT INTO b VALUES (?)", &[SqlValue::from(big)]),
        Err(StorageError::Sql(SqlError::TooBig { max: 2_000_000 }))
    ));
    assert!(matches!(
        sql.exec("SELECT zeroblob(2000001)", &[]),
        Err(StorageError::Sql(SqlError::TooBig { .. }))
    ));
    sql.exec("INSERT INTO b VALUES (zeroblob(1000000))", &[])
        .unwrap();
    commit(&mut turns).await;
}

#[tokio::test]
async fn the_database_size_limit_is_a_typed_error() {
    let mut options = StoreOptions::default();
    options.sql.max_database_bytes = 64 * 1024;
    let store = Store::open(MemoryBackend::new(), options).unwrap();
    let mut turns = object(&store, "full").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE b (v)", &[]).unwrap();
    let mut full = None;
    for _ in 0..100 {
        if let Err(e) = sql.exec("INSERT INTO b VALUES (zeroblob(8000))", &[]) {
            full = Some(e);
            break;
        }
    }
    assert!(
        matches!(
            full,
            Some(StorageError::Sql(SqlError::DatabaseFull {
                max_bytes: 65536
            }))
        ),
        "{full:?}"
    );
    // SQLite rolled the turn back: it cannot go on, and fails at its end.
    assert!(matches!(
        turns.sql().unwrap().exec("SELECT 1", &[]),
        Err(StorageError::Sql(SqlError::TurnRolledBack { .. }))
    ));
    let failed = turns.commit_turn().expect("a failed commit").await;
    assert!(
        matches!(failed, Err(StorageError::CommitFailed(_))),
        "{failed:?}"
    );
}

#[tokio::test]
async fn a_key_value_object_has_no_sql() {
    let store = store();
    let mut turns = store.object(id("kv"));
    assert!(matches!(
        turns.sql(),
        Err(StorageError::Sql(SqlError::NotSqlBacked))
    ));
}

#[tokio::test]
async fn statements_of_one_text_run_in_order_even_when_later_ones_need_earlier_ones() {
    let store = store();
    let mut turns = object(&store, "batch").await;
    let sql = turns.sql().unwrap();
    let last = sql
        .exec(
            "CREATE TABLE IF NOT EXISTS c (v INTEGER);
             INSERT INTO c SELECT 41 WHERE NOT EXISTS (SELECT 1 FROM c);
             UPDATE c SET v = v + 1 RETURNING v",
            &[],
        )
        .unwrap();
    assert_eq!(last.one().unwrap().values()[0].as_i64(), Some(42));
    // A refused statement inside a text is still refused.
    assert_eq!(
        refused(sql.exec("SELECT 1; BEGIN", &[])),
        "BEGIN",
        "a refusal inside a batch"
    );
    commit(&mut turns).await;
}

/// A statement that never ends (a recursive query without a bound) is
/// interrupted at its time limit with a typed error, instead of holding
/// its worker's thread until the registry kills the worker; the turn goes
/// on, and the object's data is as before.
#[tokio::test]
async fn a_statement_past_its_time_limit_is_interrupted_and_the_turn_goes_on() {
    let mut options = StoreOptions::default();
    options.sql.max_statement_ms = 200;
    let store = Store::open(MemoryBackend::new(), options).expect("store");
    let mut turns = object(&store, "endless").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (n INTEGER)", &[]).unwrap();
    sql.exec("INSERT INTO t VALUES (1)", &[]).unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    let endless =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    match sql.exec(endless, &[]) {
        Err(StorageError::Sql(SqlError::StatementTimedOut { limit_ms })) => {
            assert_eq!(limit_ms, 200)
        }
        other => panic!("expected the statement to be interrupted, got {other:?}"),
    }
    // The turn goes on: an ordinary statement runs, with the whole limit.
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 1);
    // The same, writing: interrupted. SQLite rolls back the transaction of
    // a write it interrupts, so the turn fails as a whole (as for any
    // error that rolls it back) and nothing of it stays.
    sql.exec("INSERT INTO t VALUES (2)", &[]).unwrap();
    let endless_insert = "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
    assert!(matches!(
        sql.exec(endless_insert, &[]),
        Err(StorageError::Sql(SqlError::StatementTimedOut { .. }))
    ));
    assert!(matches!(
        sql.exec("SELECT 1", &[]),
        Err(StorageError::Sql(SqlError::TurnRolledBack { .. }))
    ));
    turns.rollback_turn();
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 1);
    commit(&mut turns).await;
}

/// A turn too large for SQLite's page cache writes some of its pages to
/// the WAL before it commits. When it fails instead, those pages stay in
/// the file past the last commit: the next turns, reading or writing,
/// must not take them for a commit of theirs.
#[tokio::test]
async fn a_failed_turn_that_spilled_to_the_wal_leaves_the_next_turns_whole() {
    let store = store();
    let mut turns = object(&store, "spill").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB)", &[])
        .unwrap();
    sql.exec("INSERT INTO t VALUES (0, 'kept')", &[]).unwrap();
    commit(&mut turns).await;
    // About 8 MB in one turn (the page cache holds 2 MB), then it fails.
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec(
        "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000) SELECT x, randomblob(2000) FROM c",
        &[],
    )
    .unwrap();
    turns.rollback_turn();
    // A turn that only reads.
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 1);
    commit(&mut turns).await;
    // A turn that writes nothing (a write transaction that changed no
    // page appends nothing either).
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec("UPDATE t SET pad = NULL WHERE 0", &[]).unwrap();
    commit(&mut turns).await;
    assert!(!turns.has_failed());
    // A turn that writes a little.
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec("INSERT INTO t VALUES (1, 'also kept')", &[])
        .unwrap();
    commit(&mut turns).await;
    assert!(!turns.has_failed());
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 2);
    // The same inside a turn that goes on: a transaction of the turn
    // spills, fails and is rolled back; the turn writes a little more,
    // commits, and a reading turn follows.
    let big = "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 10 UNION ALL SELECT x + 1 FROM c WHERE x < 4010) SELECT x, randomblob(2000) FROM c";
    let failed: Result<(), StorageError> = sql.transaction_sync(|sql| {
        sql.exec(big, &[])?;
        Err(StorageError::Sql(SqlError::NotOneRow { rows: 0 }))
    });
    assert!(failed.is_err());
    sql.exec("INSERT INTO t VALUES (2, 'kept too')", &[])
        .unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 3);
    commit(&mut turns).await;
    assert!(!turns.has_failed());
    drop(turns);
    // What the log holds brings the same back.
    let mut turns = object(&store, "spill").await;
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 3);
    turns.rollback_turn();
}

/// A statement may answer at most `MAX_SQL_RESULT_BYTES` of rows: a
/// cursor holds its rows in memory, and one without a bound would take
/// its worker's memory. A reading statement that answers more fails
/// alone; a writing one (its changes are made before its rows are read)
/// fails its turn.
#[tokio::test]
async fn a_statement_that_answers_too_much_fails_and_a_write_fails_its_turn() {
    let store = store();
    let mut turns = object(&store, "huge").await;
    let rows = (MAX_SQL_RESULT_BYTES / 1_000_000) + 2;
    let many = format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT zeroblob(1000000) FROM c"
    );
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (v BLOB)", &[]).unwrap();
    match sql.exec(&many, &[]) {
        Err(StorageError::Sql(SqlError::ResultTooLarge { max })) => {
            assert_eq!(max, MAX_SQL_RESULT_BYTES)
        }
        other => panic!(
            "expected too large a result, got {:?}",
            other.map(|c| c.rows_read())
        ),
    }
    // Empty values count as the memory they take: 100 empty strings a
    // row, rows without end.
    let empties = vec!["''"; 100].join(", ");
    let endless_empties = format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT {empties} FROM c"
    );
    assert!(matches!(
        sql.exec(&endless_empties, &[]),
        Err(StorageError::Sql(SqlError::ResultTooLarge { .. }))
    ));
    // The turn goes on.
    sql.exec("INSERT INTO t VALUES (x'01')", &[]).unwrap();
    commit(&mut turns).await;
    // Writing, with the rows answered: the turn fails.
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    let insert = format!(
        "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT zeroblob(1000000) FROM c RETURNING v"
    );
    assert!(matches!(
        sql.exec(&insert, &[]),
        Err(StorageError::Sql(SqlError::ResultTooLarge { .. }))
    ));
    assert!(matches!(
        sql.exec("SELECT 1", &[]),
        Err(StorageError::Sql(SqlError::TurnRolledBack { .. }))
    ));
    turns.rollback_turn();
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM t"), 1);
    commit(&mut turns).await;
    assert!(!turns.has_failed());
}

/// When SQLite rolls the turn's transaction back inside odo's own
/// statement (a key-value `put` past the database limit), the turn cannot
/// go on: a later statement must not run outside it (committing on its
/// own), and the turn fails at its end.
#[tokio::test]
async fn a_turn_rolled_back_inside_a_key_value_call_cannot_go_on() {
    let mut options = StoreOptions::default();
    options.sql.max_database_bytes = 64 * 1024;
    let store = Store::open(MemoryBackend::new(), options).unwrap();
    let mut turns = object(&store, "full-kv").await;
    turns
        .sql()
        .unwrap()
        .exec("CREATE TABLE log (v)", &[])
        .unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    let mut full = None;
    for n in 0..100 {
        if let Err(e) = turns.storage().put(&format!("k{n}"), vec![7u8; 8000]).await {
            full = Some(e);
            break;
        }
    }
    assert!(
        matches!(full, Some(StorageError::Sql(SqlError::DatabaseFull { .. }))),
        "{full:?}"
    );
    // The handler goes on, as a handler that logs its error might.
    assert!(matches!(
        turns
            .sql()
            .unwrap()
            .exec("INSERT INTO log VALUES ('after')", &[]),
        Err(StorageError::Sql(SqlError::TurnRolledBack { .. }))
    ));
    assert!(turns.storage().put("more", vec![1u8]).await.is_err());
    let failed = turns.commit_turn().expect("a failed commit").await;
    assert!(
        matches!(failed, Err(StorageError::CommitFailed(_))),
        "{failed:?}"
    );
    drop(turns);
    // Nothing of the turn stayed.
    let mut turns = object(&store, "full-kv").await;
    assert_eq!(
        count(turns.sql().unwrap(), "SELECT count(*) AS n FROM log"),
        0
    );
    assert_eq!(turns.storage().get("k0").await.unwrap(), None);
    turns.rollback_turn();
}

/// The authorizer sees only the old name of a table being renamed: a
/// table of the object's renamed into a reserved name (before odo made
/// its own), with a trigger on it, would have run the object's SQL with
/// every write odo's key-value API makes there. Such a rename is refused
/// and its turn fails; `ANALYZE` keeps no statistics of odo's tables
/// (their samples would be its keys); `delete_all` drops the object's
/// triggers before its tables.
#[tokio::test]
async fn the_object_cannot_take_a_reserved_name_nor_read_odos_tables_sideways() {
    let store = store();
    let mut turns = object(&store, "sideways").await;
    let sql = turns.sql().unwrap();
    sql.exec(
        "CREATE TABLE x (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        &[],
    )
    .unwrap();
    sql.exec("CREATE TABLE leak (k, v)", &[]).unwrap();
    sql.exec(
        "CREATE TRIGGER tr AFTER INSERT ON x BEGIN INSERT INTO leak SELECT key, value FROM x; END",
        &[],
    )
    .unwrap();
    commit(&mut turns).await;
    for rename in [
        "ALTER TABLE x RENAME TO _odo_kv",
        "ALTER TABLE x RENAME TO \"_ODO_alarm\"",
        "ALTER TABLE x RENAME TO _odo_other; SELECT 1",
    ] {
        turns.prepare().await.unwrap();
        let sql = turns.sql().unwrap();
        match sql.exec(rename, &[]) {
            Err(StorageError::Sql(SqlError::Refused { what, .. })) => {
                assert_eq!(what, "ALTER TABLE into a reserved name", "{rename}")
            }
            other => panic!("{rename}: expected a refusal, got {other:?}"),
        }
        assert!(matches!(
            sql.exec("SELECT 1", &[]),
            Err(StorageError::Sql(SqlError::TurnRolledBack { .. }))
        ));
        turns.rollback_turn();
    }
    // odo's key-value API works, and nothing reached the object's table.
    turns.prepare().await.unwrap();
    turns.storage().put("secret", vec![42u8]).await.unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    let mut sql = turns.sql().unwrap();
    assert_eq!(count(sql, "SELECT count(*) AS n FROM leak"), 0);
    // Page statistics would show odo's tables (their sizes, how many
    // keys): refused, however they are named.
    for query in [
        "SELECT name, pgsize FROM dbstat",
        "SELECT count(*) AS n FROM DBSTAT WHERE name LIKE '\\_odo%' ESCAPE '\\'",
        "SELECT * FROM main.dbstat",
        "SELECT * FROM dbstat('main')",
        "SELECT * FROM sqlite_dbpage",
    ] {
        match sql.exec(query, &[]) {
            Err(StorageError::Sql(SqlError::Refused { what, .. })) => {
                assert!(
                    what.contains("dbstat") || what.contains("dbpage"),
                    "{query}: {what}"
                )
            }
            // A module this SQLite lacks is refused by SQLite itself.
            Err(StorageError::Sql(SqlError::Sqlite(e)))
                if e.to_string().contains("no such table") => {}
            other => panic!("{query}: expected a refusal, got {other:?}"),
        }
        turns.rollback_turn();
        turns.prepare().await.unwrap();
        sql = turns.sql().unwrap();
    }
    // An ordinary rename still works.
    sql.exec("ALTER TABLE x RENAME TO y", &[]).unwrap();
    // Statistics: none of odo's tables.
    sql.exec("ANALYZE", &[]).unwrap();
    sql.exec("PRAGMA optimize", &[]).unwrap();
    assert_eq!(
        count(
            sql,
            "SELECT count(*) AS n FROM sqlite_stat1 WHERE tbl LIKE '\\_odo\\_%' ESCAPE '\\'"
        ),
        0
    );
    // Named, it is skipped too.
    sql.exec("ANALYZE _odo_kv", &[]).unwrap();
    assert_eq!(
        count(
            sql,
            "SELECT count(*) AS n FROM sqlite_stat1 WHERE tbl LIKE '\\_odo\\_%' ESCAPE '\\'"
        ),
        0
    );
    commit(&mut turns).await;
    // delete_all with a trigger that a cascade would fire.
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE parent (id INTEGER PRIMARY KEY)", &[])
        .unwrap();
    sql.exec(
        "CREATE TABLE child (p REFERENCES parent(id) ON DELETE CASCADE)",
        &[],
    )
    .unwrap();
    // (SQLite authorizes a trigger's body when it fires, as part of the
    // statement that fires it: the object's own, refused.)
    sql.exec(
        "CREATE TRIGGER t2 BEFORE DELETE ON child BEGIN INSERT INTO leak SELECT key, value FROM _odo_kv; END",
        &[],
    )
    .unwrap();
    sql.exec("INSERT INTO parent VALUES (1)", &[]).unwrap();
    sql.exec("INSERT INTO child VALUES (1)", &[]).unwrap();
    assert!(matches!(
        sql.exec("DELETE FROM child", &[]),
        Err(StorageError::Sql(SqlError::Refused { .. }))
    ));
    turns.storage().delete_all().await.unwrap();
    commit(&mut turns).await;
    assert!(!turns.has_failed());
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    assert_eq!(
        count(
            sql,
            "SELECT count(*) AS n FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        ),
        0
    );
    assert_eq!(turns.storage().get("secret").await.unwrap(), None);
    turns.rollback_turn();
}

/// A turn that writes more pages than a log record may hold fails at its
/// end, and the object comes back at its last durable state. Before, the
/// record was written, could never be read back, and the object could
/// never open again (the limit here is the option's, set low).
#[tokio::test]
async fn a_turn_too_large_for_one_record_fails_and_the_object_opens_again() {
    let mut options = StoreOptions::default();
    options.sql.max_turn_bytes = 1024 * 1024;
    let store = Store::open(MemoryBackend::new(), options).unwrap();
    let mut turns = object(&store, "bulk").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (v BLOB)", &[]).unwrap();
    sql.exec("INSERT INTO t VALUES ('kept')", &[]).unwrap();
    commit(&mut turns).await;
    turns.prepare().await.unwrap();
    let sql = turns.sql().unwrap();
    sql.exec(
        "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200) SELECT randomblob(10000) FROM c",
        &[],
    )
    .unwrap();
    match turns.commit_turn() {
        Some(wait) => match wait.await {
            Err(StorageError::CommitFailed(cause)) => assert!(
                matches!(
                    *cause,
                    StorageError::Sql(SqlError::TurnTooLarge {
                        max_bytes: 1_048_576
                    })
                ),
                "{cause:?}"
            ),
            other => panic!("expected the turn to fail, got {other:?}"),
        },
        None => panic!("the turn wrote"),
    }
    assert!(turns.has_failed());
    drop(turns);
    let mut turns = object(&store, "bulk").await;
    assert_eq!(
        count(turns.sql().unwrap(), "SELECT count(*) AS n FROM t"),
        1
    );
    turns.rollback_turn();
}

/// Preparing a statement is outside the time limit (SQLite's progress
/// handler does not run then), and views nested in views can make it
/// take longer than the registry lets a worker's thread stall: such a
/// statement is refused once it has made too many of the authorizer's
/// checks, before the slow part.
#[tokio::test]
async fn a_statement_too_complex_to_prepare_is_refused_early() {
    let mut options = StoreOptions::default();
    options.sql.max_statement_ms = 60_000;
    let store = Store::open(MemoryBackend::new(), options).unwrap();
    let mut turns = object(&store, "views").await;
    let sql = turns.sql().unwrap();
    sql.exec("CREATE TABLE t (x)", &[]).unwrap();
    sql.exec(
        "CREATE VIEW v1 AS SELECT a.x FROM t a, t b WHERE a.x = b.x",
        &[],
    )
    .unwrap();
    for level in 2..=15 {
        let below = level - 1;
        sql.exec(
            &format!(
                "CREATE VIEW v{level} AS SELECT a.x FROM v{below} a, v{below} b WHERE a.x = b.x"
            ),
            &[],
        )
        .unwrap();
    }
    // (Without the refusal, preparing this fails with SQLite's own error
    // after minutes in a debug build.)
    match sql.exec("SELECT count(*) FROM v15", &[]) {
        Err(StorageError::Sql(SqlError::Refused { what, .. })) => {
            assert_eq!(what, "a statement this complex")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An ordinary statement over a few views is prepared as before.
    sql.exec("SELECT count(*) FROM v3", &[]).unwrap();
    commit(&mut turns).await;
}

/// The one value of `query`'s one row, named `n` (a count).
fn count(sql: &mut odo_storage::SqlStorage, query: &str) -> i64 {
    let row = sql.exec(query, &[]).unwrap().one().unwrap();
    match row.get("n") {
        Some(SqlValue::Integer(n)) => *n,
        other => panic!("{query}: {other:?}"),
    }
}
