//! WebSockets across a planned move of their object's shard: a rolling
//! restart of the workers (SIGHUP) drains each worker in turn, so the
//! room's shard is released by its worker, assigned to the other one at a
//! new epoch, and brought back to the restarted worker at another, while
//! every member keeps sending. No socket is dropped (a planned move leaves
//! no event with an unknown outcome), every member receives every message
//! once and in the same order, the history holds the same, and the room
//! is served by a new process afterwards. Requests to counters on every
//! shard run through it too, and none fails.

use std::collections::HashMap;

use crate::ws::{GUARD, Got, Ws};

use super::websockets::{history, until_echo};
use super::*;

/// Sockets in the room, each a member that sends.
const MEMBERS: usize = 20;

/// The room's placement: the holder's pid and the shard's epoch.
async fn placement(c: &HttpClient, path: &str) -> Result<(u64, u64)> {
    let answer = c.get(&format!("/_odo/placement/{path}")).await?;
    let value: serde_json::Value = serde_json::from_slice(&answer.body)?;
    match (value["pid"].as_u64(), value["epoch"].as_u64()) {
        (Some(pid), Some(epoch)) => Ok((pid, epoch)),
        _ => Err(anyhow!("unassigned: {}", answer.text())),
    }
}

/// Each slot's restart count once every worker runs and holds its home
/// shard (`None` before).
async fn settled(c: &HttpClient) -> Result<Option<Vec<u64>>> {
    let workers: serde_json::Value = serde_json::from_slice(&c.get("/_odo/workers").await?.body)?;
    let workers = workers.as_array().cloned().unwrap_or_default();
    let home = |slot: usize, w: &serde_json::Value| {
        w["state"] == "running" && w["shards"] == serde_json::json!([slot])
    };
    if workers.len() == WORKERS as usize && workers.iter().enumerate().all(|(i, w)| home(i, w)) {
        Ok(Some(
            workers
                .iter()
                .map(|w| w["restarts"].as_u64().unwrap_or(0))
                .collect(),
        ))
    } else {
        Ok(None)
    }
}

/// What one member saw: every line, its own echoed messages, how its
/// socket ended (`None`: still open) and the socket.
type Member = (Vec<String>, Vec<String>, Option<Got>, Ws);

scenario!(ws_planned_move, |w, t| {
    let c = w.client.clone();
    let base = c.base().to_owned();
    let room = "move";
    let path = format!("room/{room}");
    let mut before = None;
    eventually(GUARD, async || {
        before = settled(&c).await?;
        Ok(before.is_some())
    })
    .await?;
    let before = before.ok_or_else(|| anyhow!("the workers never settled with their shards"))?;
    let mut sockets = Vec::new();
    for _ in 0..MEMBERS {
        sockets.push(Ws::connect(&base, &format!("/{path}/ws")).await?);
    }
    let (pid_before, epoch_before) = placement(&c, &path).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut members = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (stop, echoed) = (stop.clone(), echoed.clone());
        members.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            let mut acked = Vec::new();
            for k in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return Ok::<Member, anyhow::Error>((lines, acked, None, ws));
                }
                let text = format!("m{i}-{k}");
                ws.send(&text).await?;
                loop {
                    match ws.next().await? {
                        Got::Text(line) => {
                            let mine = line.split_once(':').is_some_and(|(_, m)| m == text);
                            lines.push(line);
                            if mine {
                                acked.push(text.clone());
                                echoed.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                        end => return Ok((lines, acked, Some(end), ws)),
                    }
                }
            }
            unreachable!("the loop above returns")
        }));
    }
    let progress = |n: u64| {
        let echoed = echoed.clone();
        async move { eventually(GUARD, async || Ok(echoed.load(Ordering::SeqCst) >= n)).await }
    };
    ensure!(
        progress(5 * MEMBERS as u64).await?,
        "the members made no progress"
    );
    // Requests too: two clients increment a counter on each shard.
    let http_stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<String> = (0..WORKERS)
        .map(|shard| {
            format!(
                "/counter/{}/increment",
                name_on("COUNTER", "planned", shard)
            )
        })
        .collect();
    let loads: Vec<_> = counters
        .iter()
        .flat_map(|path| load(&c, path, 2, http_stop.clone()))
        .collect();
    // The planned move: every worker drained and restarted, in turn.
    signal(w.server_pid(), Signal::Hup)?;
    let mut after = None;
    let restarted = eventually(Duration::from_secs(60), async || {
        after = settled(&c)
            .await?
            .filter(|now| now.iter().zip(&before).all(|(a, b)| a > b));
        Ok(after.is_some())
    })
    .await?;
    t.fact("every worker restarted, its shard back home", restarted);
    let (pid_after, epoch_after) = placement(&c, &path).await?;
    t.fact(
        "the room is served by a new process",
        pid_after != pid_before,
    );
    t.fact(
        "the room's shard moved away and back (epochs)",
        epoch_after.saturating_sub(epoch_before),
    );
    let moved_at = echoed.load(Ordering::SeqCst);
    t.fact(
        "messages flow after the move",
        progress(moved_at + 5 * MEMBERS as u64).await?,
    );
    stop.store(true, Ordering::SeqCst);
    http_stop.store(true, Ordering::SeqCst);
    let (mut increments, mut failed) = (0, 0);
    for client in loads {
        let (acked, refused) = client.await??;
        increments += acked.len();
        failed += refused;
    }
    t.fact("no request failed", failed == 0);
    let mut total = 0;
    for path in &counters {
        total += c
            .get(path.trim_end_matches("/increment"))
            .await?
            .text()
            .parse::<usize>()?;
    }
    t.fact("every increment acknowledged and kept", total == increments);
    let mut seen = Vec::new();
    let mut acked_all = Vec::new();
    let mut ends = Vec::new();
    let mut open = Vec::new();
    for member in members {
        let (lines, acked, end, ws) = member.await??;
        acked_all.extend(acked);
        match end {
            None => {
                seen.push(lines);
                open.push(ws);
            }
            Some(end) => ends.push(end.to_string()),
        }
    }
    t.fact("sockets dropped", format!("{ends:?}"));
    // Everyone reads up to one last message: then each has seen it all.
    let last = open.first_mut().ok_or_else(|| anyhow!("no member open"))?;
    last.send("the end").await?;
    for (lines, ws) in seen.iter_mut().zip(&mut open) {
        lines.extend(until_echo(ws, "the end").await?);
    }
    let first = seen.first().cloned().unwrap_or_default();
    t.fact(
        "every member got the same messages in the same order",
        seen.iter().all(|lines| *lines == first),
    );
    let numbered: Vec<(u64, String)> = first
        .iter()
        .filter_map(|line| {
            let (n, m) = line.split_once(':')?;
            Some((n.parse().ok()?, m.to_owned()))
        })
        .collect();
    t.fact(
        "numbered 1, 2, ... without a gap or a repeat",
        numbered.len() == first.len() && numbered.iter().zip(1..).all(|((n, _), k)| *n == k),
    );
    let mut per_sender: HashMap<&str, Vec<u64>> = HashMap::new();
    for (_, m) in &numbered {
        if let Some((sender, k)) = m.split_once('-') {
            per_sender
                .entry(sender)
                .or_default()
                .push(k.parse().unwrap_or(u64::MAX));
        }
    }
    t.fact(
        "each sender's messages once and in order",
        per_sender.len() == MEMBERS
            && per_sender
                .values()
                .all(|ks| ks.iter().zip(0..).all(|(k, i)| *k == i)),
    );
    let delivered: std::collections::HashSet<&str> =
        numbered.iter().map(|(_, m)| m.as_str()).collect();
    t.fact(
        "every echoed message delivered",
        acked_all.iter().all(|m| delivered.contains(m.as_str())),
    );
    let stored = history(&c, room).await?;
    t.fact(
        "the history ends with what the members got",
        !stored.is_empty() && numbered.ends_with(&stored),
    );
    t.figure("messages", numbered.len());
    t.figure("messages echoed once the workers were back", moved_at);
    for ws in open {
        ws.close(1000).await?;
    }
    Ok(())
});
