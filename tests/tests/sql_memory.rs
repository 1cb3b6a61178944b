//! What an object's SQL holds while it sorts, groups or removes
//! duplicates stays out of the worker's memory: SQLite's temporary tables
//! (the b-trees of `DISTINCT`, `GROUP BY`, `ORDER BY` without an index, a
//! recursive query's queue) spill to temporary files past a small cache,
//! so a statement over hundreds of megabytes runs to its end and the
//! worker's peak memory stays far below what it went through. Before,
//! they lived in memory (`temp_store = MEMORY`): one statement could take
//! as much of the worker's memory as its time limit let it fill, and with
//! it every object of the worker when the kernel killed it.

use anyhow::{Context as _, Result, ensure};
use odo_tests::http::HttpClient;
use odo_tests::topology::{ServerSpec, proc_memory};
use serde_json::{Value, json};

/// Rows the statement goes through, of [`ROW`] bytes each: 200 MB.
const ROWS: u64 = 200_000;
const ROW: u64 = 1_000;
/// How much the worker's peak memory may grow by while it runs.
const GROWTH: u64 = 64 << 20;

async fn exec(c: &HttpClient, name: &str, sql: &str) -> Result<Value> {
    let body = json!({ "sql": sql, "params": [] }).to_string();
    let answer = c
        .send("POST", &format!("/sqlprobe/{name}/exec"), &[], body)
        .await?;
    ensure!(
        answer.status == 200,
        "{sql}: {} {}",
        answer.status,
        answer.text()
    );
    Ok(serde_json::from_slice(&answer.body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_hundreds_of_megabytes_keeps_the_workers_memory_flat() -> Result<()> {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: reading the worker's memory needs Linux's /proc");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    // The time limit is not what stops it here.
    spec.env
        .push(("ODO_TEST_SQL_MAX_STATEMENT_MS".into(), "120000".into()));
    let server = spec.start(dir.path())?;
    let c = HttpClient::new(&server.base);
    let name = "sorter";
    exec(&c, name, "SELECT 1").await?;
    let placement = c.get(&format!("/_odo/placement/sqlprobe/{name}")).await?;
    let placement: Value = serde_json::from_slice(&placement.body)?;
    let pid = placement["pid"].as_u64().context("the object's worker")? as u32;
    let before = proc_memory(pid, "VmHWM")?;
    let answer = exec(
        &c,
        name,
        &format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {ROWS}) \
             SELECT count(*) FROM (SELECT DISTINCT x, zeroblob({ROW}) FROM c)"
        ),
    )
    .await?;
    ensure!(
        answer["rows"] == json!([[{ "integer": ROWS }]]),
        "every row went through: {answer}"
    );
    let after = proc_memory(pid, "VmHWM")?;
    eprintln!(
        "the worker's peak: {} MB before, {} MB after going through {} MB",
        before >> 20,
        after >> 20,
        (ROWS * ROW) >> 20
    );
    ensure!(
        after.saturating_sub(before) < GROWTH,
        "the worker's peak grew by {} MB while it went through {} MB",
        after.saturating_sub(before) >> 20,
        (ROWS * ROW) >> 20
    );
    Ok(())
}
