//! A listing holds a bounded answer: over the bound it is refused with a
//! clear 413, never truncated; `limit` and `start_after` page through.

use super::*;

scenario!(large_listing, |w, t| {
    let c = w.client.clone();
    // 10 MiB in one object: 80 values of 128 KiB, over the 8 MiB bound.
    let value = Bytes::from(vec![b'x'; 128 * 1024]);
    for i in 0..80 {
        let answer = c
            .send("PUT", &format!("/kv/large/k{i:03}"), &[], value.clone())
            .await?;
        ensure!(answer.status == 204, "PUT: {}", answer.status);
    }
    t.get(&c, "/kv/large").await?;
    t.get(&c, "/kv/large?limit=100").await?;
    // Pages of 50 (6.4 MiB each), each after the last key of the one before.
    let mut keys = Vec::new();
    let mut after = String::new();
    loop {
        let page = c
            .get(&format!("/kv/large?limit=50&start_after={after}"))
            .await?;
        ensure!(page.status == 200, "page: {} {}", page.status, page.text());
        let rows: Vec<(String, String)> = serde_json::from_slice(&page.body)?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        keys.extend(rows.into_iter().map(|(k, _)| k));
    }
    let expected: Vec<String> = (0..80).map(|i| format!("k{i:03}")).collect();
    t.fact(
        "pages of 50 reach every key once, in order",
        keys == expected,
    );
    let workers: serde_json::Value = serde_json::from_slice(&c.get("/_odo/workers").await?.body)?;
    let restarts: u64 = workers
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["restarts"].as_u64()).sum())
        .unwrap_or(u64::MAX);
    t.fact("no worker restarted", restarts == 0);
    Ok(())
});
