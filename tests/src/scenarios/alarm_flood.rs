//! An alarm that comes due while its object's queue is full runs once,
//! after the flood, as its first run (overload is not a failure).

use super::*;

scenario!(alarm_during_flood, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/probe/al-flood/alarm?in_ms=300").await?;
    // The flood: one slow turn running, the queue full behind it, for well
    // past the alarm's time.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.post("/probe/al-flood/slow?ms=1500").await })
    };
    // Every request below waits behind the slow one; once it runs, the
    // queue fills.
    let queued: Vec<_> = (0..QUEUE_DEPTH)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.post("/probe/al-flood/slow?ms=1").await })
        })
        .collect();
    // The slow turn may lose the race for the queue to the quick ones (then
    // it is refused with 503): the flood is what matters.
    let slow = slow.await??;
    ensure!(
        matches!(slow.status, 200 | 503),
        "the slow turn failed: {} {}",
        slow.status,
        slow.text()
    );
    // Some of these may be refused (503) if the alarm took a place in the
    // queue first: the flood is what matters, not who wins that race.
    for call in queued {
        call.await??;
    }
    let fired = eventually(Duration::from_secs(15), async || {
        Ok(c.get("/probe/al-flood/alarm")
            .await?
            .text()
            .contains("fired=1"))
    })
    .await?;
    t.fact("the alarm ran after the flood", fired);
    // Once, and as its first run (retry 0): refusals by a full queue do
    // not count as failures.
    t.get(&c, "/probe/al-flood/alarm").await?;
    Ok(())
});
