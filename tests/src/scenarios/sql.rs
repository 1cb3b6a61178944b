//! SQLite-backed objects across processes: the demo's SQL counter
//! (`/sqlcounter`, `UPDATE ... RETURNING` in each object's database), its
//! alarm, a restart, and a worker SIGKILLed under load.

use super::*;

scenario!(sql_counter, |w, t| {
    let c = w.client.clone();
    for _ in 0..3 {
        t.post(&c, "/sqlcounter/sql-a/increment").await?;
    }
    t.get(&c, "/sqlcounter/sql-a").await?;
    t.get(&c, "/sqlcounter/sql-b").await?;
    // Another class, another object, even under the same name.
    t.get(&c, "/counter/sql-a").await?;
    t.get(&c, "/sqlcounter/sql-a/nope").await?;
    // Its alarm lives in its database and fires like any other.
    t.post(&c, "/sqlcounter/sql-a/alarm?in_ms=0").await?;
    let fired = eventually(Duration::from_secs(10), async || {
        Ok(c.get("/sqlcounter/sql-a/alarms").await?.text() == "1")
    })
    .await?;
    t.fact("the alarm fired once", fired);
    t.get(&c, "/sqlcounter/sql-a/alarms").await?;
    t.get(&c, "/sqlcounter/sql-a").await?;
    Ok(())
});

scenario!(sql_after_restart, |w, t| {
    let names = [
        name_on("SQL_COUNTER", "sql-r", 0),
        name_on("SQL_COUNTER", "sql-r", 1),
    ];
    let c = w.client.clone();
    for (n, name) in names.iter().enumerate() {
        for _ in 0..=n {
            c.post(&format!("/sqlcounter/{name}/increment")).await?;
        }
    }
    w.restart()?;
    let c = w.client.clone();
    let mut values = Vec::new();
    for name in &names {
        values.push(c.get(&format!("/sqlcounter/{name}")).await?.text());
    }
    t.fact("both counters kept their values", values == ["1", "2"]);
    let answer = c
        .post(&format!("/sqlcounter/{}/increment", names[1]))
        .await?;
    t.fact("and go on from them", answer.text() == "3");
    Ok(())
});

scenario!(fault_sigkill_sql_worker, |w, t| {
    kill_under_load(&w.client.clone(), t, "sqlcounter/sql-victim").await
});
