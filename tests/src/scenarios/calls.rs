//! Calls between objects: cycles are refused at once and named, the
//! caller's deadline travels with the call, and a turn that fails after a
//! call keeps exactly what it committed before the call.

use super::*;

scenario!(calls_and_cycles, |w, t| {
    let c = w.client.clone();
    let a = name_on("PROBE", "cyc", 0);
    let b = name_on("PROBE", "cyc", 1);
    t.fact(
        "a and b live on different shards",
        shard_of("PROBE", &a) != shard_of("PROBE", &b),
    );
    // An object calling itself.
    t.post(&c, &format!("/probe/{a}/relay/{a}")).await?;
    // a calls b (another worker), which calls a back.
    let cycle = c.post(&format!("/probe/{a}/relay/{b}/{a}")).await?;
    let ns = Namespace::new("PROBE");
    let (ia, ib) = (ns.id_from_name(&a), ns.id_from_name(&b));
    t.fact(
        "b's call back to a is refused, naming a -> b -> a",
        cycle.status == 200
            && cycle.text() == format!("call failed: call cycle: {ia} -> {ib} -> {ia}"),
    );
    // A chain that does not come back is served; the deadline that reaches
    // its end is what is left of the router's, not a fresh one per hop.
    let end = c.post(&format!("/probe/{a}/relay/{b}")).await?;
    let left: u64 = end
        .text()
        .rsplit(" with ")
        .next()
        .and_then(|s| s.strip_suffix(" ms left"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("unexpected answer {}", end.text()))?;
    t.fact(
        "the chain ended at b",
        end.text().starts_with(&format!("end at {b} ")),
    );
    t.fact(
        "deadline at the end of the chain within the router's 30 s",
        left <= 30_000,
    );
    // A turn that writes, calls, writes again and fails keeps what the call
    // committed, and only that.
    let counter = name_on("COUNTER", "partial", 1);
    t.post(&c, &format!("/probe/{a}/partial/{counter}")).await?;
    t.get(&c, &format!("/probe/{a}/keys")).await?;
    t.get(&c, &format!("/counter/{counter}")).await?;
    Ok(())
});
