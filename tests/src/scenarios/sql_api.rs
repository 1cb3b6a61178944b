//! The SQL API of a SQLite-backed object driven from outside, through the
//! test server's `SqlProbe` (`/sqlprobe/{name}`, see `crate::sqlprobe`):
//! schema and typed values, what is refused, each limit, rollback of a
//! `transaction_sync` and of a failed turn, and point-in-time recovery
//! (restores to each bookmark, of a deleted object, after a restart).
//! Bookmarks hold times, so they stay out of the transcripts: only what
//! each restore brought back is recorded.

use serde_json::{Value, json};

use super::*;
use crate::http::Answer;

/// `POST /sqlprobe/{name}/exec` of `sql` with `params`, recorded.
async fn exec(
    t: &mut Transcript,
    c: &HttpClient,
    name: &str,
    sql: &str,
    params: Value,
) -> Result<Answer> {
    let body = json!({ "sql": sql, "params": params }).to_string();
    t.send(c, "POST", &format!("/sqlprobe/{name}/exec"), &[], body)
        .await
}

/// The rows `sql` answers on `name` (unrecorded), as JSON text.
async fn rows(c: &HttpClient, name: &str, sql: &str) -> Result<String> {
    let body = json!({ "sql": sql, "params": [] }).to_string();
    let answer = c
        .send("POST", &format!("/sqlprobe/{name}/exec"), &[], body)
        .await?;
    let value: Value = match serde_json::from_slice(&answer.body) {
        Ok(value) => value,
        // An error is a state too (a dropped table): its message.
        Err(_) => return Ok(answer.text().trim().to_owned()),
    };
    Ok(value["rows"].to_string())
}

/// The object's state: its rows and its key-value entry `k`.
async fn state(c: &HttpClient, name: &str) -> Result<String> {
    let table = rows(c, name, "SELECT v FROM notes ORDER BY v").await?;
    let kv = c.get(&format!("/sqlprobe/{name}/kv/k")).await?;
    Ok(format!("{table} k={}", kv.text().trim()))
}

/// A bookmark of `name` now (unrecorded: it holds a time).
async fn bookmark(c: &HttpClient, name: &str) -> Result<String> {
    let answer = c.get(&format!("/sqlprobe/{name}/bookmark")).await?;
    ensure!(answer.status == 200, "bookmark: {}", answer.text());
    Ok(answer.text())
}

/// Asks `name` to restore `to` at its next activation, and starts one;
/// whether it was accepted, and the bookmark that undoes it.
async fn restore(c: &HttpClient, name: &str, to: &str) -> Result<(bool, String)> {
    let answer = c
        .send(
            "POST",
            &format!("/sqlprobe/{name}/restore"),
            &[],
            Bytes::from(to.to_owned()),
        )
        .await?;
    let reset = c.post(&format!("/sqlprobe/{name}/reset")).await?;
    Ok((answer.status == 200 && reset.status == 500, answer.text()))
}

/// Writes value `v` in the table and `k` in the key-value API, in one turn
/// each (unrecorded).
async fn write(c: &HttpClient, name: &str, v: &str) -> Result<()> {
    let body = json!({ "sql": "INSERT INTO notes VALUES (?)", "params": [{ "text": v }] });
    let answer = c
        .send(
            "POST",
            &format!("/sqlprobe/{name}/exec"),
            &[],
            body.to_string(),
        )
        .await?;
    ensure!(answer.status == 200, "insert: {}", answer.text());
    let answer = c
        .send(
            "PUT",
            &format!("/sqlprobe/{name}/kv/k"),
            &[],
            Bytes::from(v.to_owned()),
        )
        .await?;
    ensure!(answer.status == 200, "put: {}", answer.text());
    Ok(())
}

scenario!(sql_schema_and_types, |w, t| {
    let c = w.client.clone();
    let n = "types";
    exec(
        t,
        &c,
        n,
        "CREATE TABLE typed (id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB, x)",
        json!([]),
    )
    .await?;
    let insert = "INSERT INTO typed (i, r, s, b, x) VALUES (?, ?, ?, ?, ?)";
    exec(
        t,
        &c,
        n,
        insert,
        json!([{"integer": i64::MAX}, {"real": -1.5}, {"text": "héllo 🦀"}, {"blob": "00ff10"}, null]),
    )
    .await?;
    exec(
        t,
        &c,
        n,
        insert,
        json!([{"integer": i64::MIN}, {"real": 1e300}, {"text": ""}, {"blob": ""}, {"integer": 7}]),
    )
    .await?;
    let all = exec(
        t,
        &c,
        n,
        "SELECT i, r, s, b, x, typeof(x) FROM typed ORDER BY id",
        json!([]),
    )
    .await?;
    t.fact("rows", all.text().trim());
    exec(t, &c, n, "CREATE INDEX typed_i ON typed (i)", json!([])).await?;
    let info = exec(t, &c, n, "PRAGMA table_info(typed)", json!([])).await?;
    t.fact("table_info", info.text().trim());
    exec(
        t,
        &c,
        n,
        "SELECT count(*) AS n FROM typed WHERE i = ?",
        json!([{"integer": i64::MAX}]),
    )
    .await?;
    exec(t, &c, n, "SELEC nonsense", json!([])).await?;
    exec(t, &c, n, "SELECT ?", json!([{"nope": 1}])).await?;
    // The key-value API lives in the same database, in a table the
    // object's SQL does not see.
    t.send(&c, "PUT", &format!("/sqlprobe/{n}/kv/k"), &[], "v")
        .await?;
    exec(
        t,
        &c,
        n,
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        json!([]),
    )
    .await?;
    let size = c.get(&format!("/sqlprobe/{n}/size")).await?;
    t.fact(
        "database_size is positive",
        size.status == 200 && size.text().parse::<u64>().is_ok_and(|s| s > 0),
    );
    Ok(())
});

scenario!(sql_refused, |w, t| {
    let c = w.client.clone();
    let n = "refused";
    exec(t, &c, n, "CREATE TABLE a (v)", json!([])).await?;
    for sql in [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE s",
        "ATTACH DATABASE 'other.db' AS other",
        "DETACH DATABASE other",
        "CREATE TEMP TABLE t (v)",
        "CREATE TEMP VIEW tv AS SELECT 1",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA writable_schema = ON",
        "SELECT * FROM _odo_kv",
        "CREATE TABLE _odo_mine (v)",
        "CREATE VIRTUAL TABLE d USING dbstat",
        // Allowed:
        "CREATE VIRTUAL TABLE f USING fts5(body)",
        "PRAGMA foreign_keys",
        "PRAGMA quick_check",
    ] {
        exec(t, &c, n, sql, json!([])).await?;
    }
    Ok(())
});

/// `ODO_TEST_SQL_MAX_DATABASE_BYTES` in [`sql_limits`]'s server.
const MAX_DATABASE_BYTES: u64 = 256 * 1024;
/// `ODO_TEST_SQL_MAX_STATEMENT_MS` in [`sql_limits`]'s server.
const MAX_STATEMENT_MS: u64 = 300;

scenario!(sql_limits, |w, t| {
    let c = w.client.clone();
    let n = "limits";
    let params: Vec<Value> = (0..101).map(|i| json!({ "integer": i })).collect();
    let marks = vec!["?"; 101].join(", ");
    exec(t, &c, n, &format!("SELECT {marks}"), json!(params)).await?;
    exec(
        t,
        &c,
        n,
        &format!("SELECT {}", marks.replacen("?, ", "", 1)),
        json!(params[1..]),
    )
    .await?;
    let columns: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    exec(
        t,
        &c,
        n,
        &format!("CREATE TABLE wide ({})", columns.join(", ")),
        json!([]),
    )
    .await?;
    exec(
        t,
        &c,
        n,
        &format!("CREATE TABLE wide ({})", columns[1..].join(", ")),
        json!([]),
    )
    .await?;
    let long = format!("SELECT '{}'", "x".repeat(100 * 1024));
    exec(t, &c, n, &long, json!([])).await?;
    exec(
        t,
        &c,
        n,
        "SELECT length(zeroblob(2 * 1024 * 1024 + 1))",
        json!([]),
    )
    .await?;
    exec(
        t,
        &c,
        n,
        "SELECT length(zeroblob(2 * 1000 * 1000 - 64))",
        json!([]),
    )
    .await?;

    // The database limit is the server's (`RuntimeConfig::sql`, set in
    // the workers by the test server's environment).
    let dir = tempfile::tempdir()?;
    let mut spec = w.spec.clone();
    spec.env.push((
        "ODO_TEST_SQL_MAX_DATABASE_BYTES".into(),
        MAX_DATABASE_BYTES.to_string(),
    ));
    spec.env.push((
        "ODO_TEST_SQL_MAX_STATEMENT_MS".into(),
        MAX_STATEMENT_MS.to_string(),
    ));
    let server = spec.start(dir.path())?;
    let c = HttpClient::new(&server.base);
    exec(t, &c, n, "CREATE TABLE big (b BLOB)", json!([])).await?;
    let mut stored = 0u64;
    let mut full = None;
    for _ in 0..64 {
        let answer = c
            .send(
                "POST",
                &format!("/sqlprobe/{n}/exec"),
                &[],
                json!({ "sql": "INSERT INTO big VALUES (zeroblob(16384))", "params": [] })
                    .to_string(),
            )
            .await?;
        if answer.status != 200 {
            full = Some(answer);
            break;
        }
        stored += 1;
    }
    let full =
        full.ok_or_else(|| anyhow!("64 blobs of 16 KiB fit in {MAX_DATABASE_BYTES} bytes"))?;
    t.fact(
        "a write past the database limit",
        format!("{} {}", full.status, full.text().trim()),
    );
    t.fact(
        "the database filled at its limit",
        stored * 16 * 1024 <= MAX_DATABASE_BYTES && stored > 0,
    );
    let kept = rows(&c, n, "SELECT count(*) FROM big").await?;
    t.fact(
        "every acknowledged blob kept",
        kept == format!("[[{{\"integer\":{stored}}}]]"),
    );
    exec(t, &c, n, "DELETE FROM big", json!([])).await?;
    exec(
        t,
        &c,
        n,
        "INSERT INTO big VALUES (zeroblob(16384))",
        json!([]),
    )
    .await?;
    // A statement that never ends is interrupted at the server's limit;
    // its worker lives on, and the object with it.
    exec(
        t,
        &c,
        n,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
        json!([]),
    )
    .await?;
    exec(t, &c, n, "SELECT count(*) FROM big", json!([])).await?;
    drop(server);
    Ok(())
});

scenario!(sql_rollback, |w, t| {
    let c = w.client.clone();
    let n = "rollback";
    exec(
        t,
        &c,
        n,
        "CREATE TABLE notes (v TEXT PRIMARY KEY)",
        json!([]),
    )
    .await?;
    let insert =
        |v: &str| json!({ "sql": "INSERT INTO notes VALUES (?)", "params": [{ "text": v }] });
    // One statement fails: none of them happened.
    t.send(
        &c,
        "POST",
        &format!("/sqlprobe/{n}/txn"),
        &[],
        json!([insert("a"), insert("b"), insert("a")]).to_string(),
    )
    .await?;
    t.fact(
        "after a failed transaction",
        rows(&c, n, "SELECT v FROM notes ORDER BY v").await?,
    );
    t.send(
        &c,
        "POST",
        &format!("/sqlprobe/{n}/txn"),
        &[],
        json!([insert("a"), insert("b")]).to_string(),
    )
    .await?;
    t.fact(
        "after a transaction",
        rows(&c, n, "SELECT v FROM notes ORDER BY v").await?,
    );
    // A turn that fails after its statement: the object is reset and the
    // statement's write is gone; the earlier turns' stay.
    t.send(
        &c,
        "POST",
        &format!("/sqlprobe/{n}/exec?fail=1"),
        &[],
        insert("c").to_string(),
    )
    .await?;
    t.fact(
        "after a failed turn",
        rows(&c, n, "SELECT v FROM notes ORDER BY v").await?,
    );
    Ok(())
});

scenario!(sql_point_in_time_recovery, |w, t| {
    let c = w.client.clone();
    let n = "pitr";
    exec(t, &c, n, "CREATE TABLE notes (v TEXT)", json!([])).await?;
    write(&c, n, "a").await?;
    let first = bookmark(&c, n).await?;
    write(&c, n, "b").await?;
    let second = bookmark(&c, n).await?;
    exec(t, &c, n, "DROP TABLE notes", json!([])).await?;
    t.fact("bookmarks sort in time order", first < second);
    t.fact("now", state(&c, n).await?);

    let (accepted, undo) = restore(&c, n, &first).await?;
    t.fact("restore to the first bookmark accepted", accepted);
    t.fact("restored to the first", state(&c, n).await?);
    let (accepted, _) = restore(&c, n, &second).await?;
    t.fact("restore to the second accepted", accepted);
    t.fact("restored to the second", state(&c, n).await?);
    let (accepted, _) = restore(&c, n, &undo).await?;
    t.fact("undoing the first restore accepted", accepted);
    t.fact("undone", state(&c, n).await?);

    // A deleted object comes back too: history outlives delete_all.
    t.send(&c, "DELETE", &format!("/sqlprobe/{n}/"), &[], Bytes::new())
        .await?;
    t.fact("deleted", state(&c, n).await?);
    let (accepted, _) = restore(&c, n, &second).await?;
    t.fact("restore of the deleted object accepted", accepted);
    t.fact("restored after delete_all", state(&c, n).await?);

    // What is not a bookmark is refused; an object never written has a
    // bookmark for any time (its empty state).
    t.send(
        &c,
        "POST",
        &format!("/sqlprobe/{n}/restore"),
        &[],
        "nonsense",
    )
    .await?;
    let never = c.get("/sqlprobe/never-written/bookmark?at=0").await?;
    t.fact("a time before any write", never.status);
    Ok(())
});

scenario!(sql_restore_after_restart, |w, t| {
    let n = "pitr-restart";
    let c = w.client.clone();
    exec(t, &c, n, "CREATE TABLE notes (v TEXT)", json!([])).await?;
    write(&c, n, "a").await?;
    let first = bookmark(&c, n).await?;
    write(&c, n, "b").await?;
    // The restore is asked for, then the whole server stops before the
    // object starts again: the next activation, in new processes, does it.
    let answer = c
        .send(
            "POST",
            &format!("/sqlprobe/{n}/restore"),
            &[],
            Bytes::from(first.clone()),
        )
        .await?;
    t.fact("restore accepted", answer.status == 200);
    w.restart()?;
    let c = w.client.clone();
    t.fact("restored after the restart", state(&c, n).await?);
    // And the bookmark taken before the restart still restores.
    let (accepted, _) = restore(&c, n, &first).await?;
    t.fact("an old bookmark restores after the restart", accepted);
    t.fact("restored again", state(&c, n).await?);
    Ok(())
});
