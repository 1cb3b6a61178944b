//! Messages that queue at the front door while their object's turn runs
//! reach the object as one batch: each still its own turn, in arrival
//! order per socket; a turn of the batch that fails rolls back only itself
//! and sends nothing, and every socket stays open.

use crate::ws::{GUARD, Ws};

use super::*;

/// The door's counter `name` in `/_odo/metrics`.
async fn door_metric(c: &HttpClient, name: &str) -> Result<u64> {
    let metrics = c.get("/_odo/metrics").await?.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {name} in the metrics"))
}

scenario!(ws_batches, |w, t| {
    const MEMBERS: usize = 4;
    const ROUNDS: usize = 3;
    let c = w.client.clone();
    let base = c.base().to_owned();
    let release = w.dir.path().join("ws-batches-release");
    let mut holder = Ws::connect(&base, "/probe/batches/ws").await?;
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        members.push(Ws::connect(&base, "/probe/batches/ws").await?);
    }
    let batched_before = door_metric(&c, "odo_websocket_batched_messages_total ").await?;
    // The holder's turn lasts until the file exists; the members' messages
    // queue at the door meanwhile.
    holder
        .send(&format!("waitfile:{}", release.display()))
        .await?;
    let started = w.dir.path().join("ws-batches-release.started");
    let running = eventually(GUARD, async || Ok(started.exists())).await?;
    t.fact("the holder's turn runs", running);
    for round in 0..ROUNDS {
        for (i, member) in members.iter_mut().enumerate() {
            let text = if (i, round) == (2, 1) {
                format!("fail:m{i}-{round}")
            } else {
                format!("put:m{i}-{round}")
            };
            member.send(&text).await?;
        }
    }
    let queued = eventually(GUARD, async || {
        Ok(door_metric(&c, "odo_websocket_queued_events ").await? >= (MEMBERS * ROUNDS) as u64)
    })
    .await?;
    t.fact(
        "every member's messages wait behind the running turn",
        queued,
    );
    std::fs::write(&release, b"")?;
    t.fact("holder", holder.text().await?);
    for (i, member) in members.iter_mut().enumerate() {
        let expected = if i == 2 { ROUNDS - 1 } else { ROUNDS };
        let mut got = Vec::new();
        for _ in 0..expected {
            got.push(member.text().await?);
        }
        t.fact(&format!("member {i} got, in order"), got.join(", "));
    }
    let batched = door_metric(&c, "odo_websocket_batched_messages_total ").await? - batched_before;
    t.fact(
        "the queued messages reached the object in batches",
        batched >= (MEMBERS * ROUNDS) as u64,
    );
    // The failed turn's write was rolled back, its neighbours' kept; and
    // every socket is still open.
    for key in ["m2-1", "m2-0", "m2-2", "m1-1", "m3-1"] {
        t.fact("ask", holder.ask(&format!("has:{key}")).await?);
    }
    for (i, member) in members.iter_mut().enumerate() {
        t.fact(
            &format!("member {i} still open"),
            member.ask("sockets").await?,
        );
    }
    Ok(())
});
