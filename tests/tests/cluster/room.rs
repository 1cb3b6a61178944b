//! `room`: one chat room (the demo `room` class) whose members enter at
//! every host, and the host that holds the room SIGKILLed while they talk;
//! then another room, and a host that holds members but not the room
//! killed: no socket at another host is closed, no message missed.
//!
//! Before the kill every member, whichever host it entered at, receives
//! every message, in one order (the owner's broadcast reaches the doors of
//! the other hosts; `ctx.websockets()` lists them all). The members that
//! entered at the killed host lose their connections with it; every other
//! socket stays open at its door, except those whose messages were in
//! flight to the dead owner (in one batch; closed with 1012, their outcome
//! unknown, as on one machine; their members enter again). The room moves to a new owner and the messages sent meanwhile,
//! buffered at the doors, are stored and delivered in order.
//!
//! One member at each surviving host only listens: the new owner learns
//! of its socket from its door when it takes the room over, not from an
//! event of its own.
//!
//! Checked: no message stored twice, none delivered twice or out of order,
//! every line a member received is in the history; every message of a
//! member still open at the end is stored; a stored message some open
//! member missed was in flight at the kill (its sender was closed with
//! 1012 or entered at the killed host); every member still open received
//! every message stored after the kill.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use odo_tests::cluster::TestCluster;
use odo_tests::ws::{Got, Ws};
use tokio::sync::Notify;

/// Members entering at each host.
const PER_HOST: usize = 2;
/// Messages each member sends.
const MESSAGES: usize = 20;
/// The kill comes once this many messages were broadcast to member 0.
const KILL_AFTER: usize = 40;

/// How one member's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Sent all its messages and saw each come back; still open.
    Open,
    /// Closed by its door (the code).
    Closed(u16),
    /// Its connection ended without a close frame (its host was killed).
    Dropped,
}

/// What one member saw.
#[derive(Debug)]
struct Member {
    /// `m{member}-{k}` for k sent (those whose send returned), but those
    /// in `unknown`.
    sent: Vec<String>,
    /// Messages whose socket was closed with 1012 before their echo: their
    /// outcome is unknown (stored or not), so they are not sent again.
    unknown: Vec<String>,
    /// How often its socket was closed with 1012 and it entered again, as
    /// a client does (its new socket misses what was said meanwhile).
    restarted: usize,
    /// Every line received, `(n, message, when)`.
    got: Vec<(u64, String, Instant)>,
    end: End,
    ws: Option<Ws>,
}

/// Sends `MESSAGES` messages one after the other, each after the previous
/// came back, recording every line received. A socket closed with 1012 is
/// replaced by a new one at the same door (`base`, `path`): every member
/// with a message in flight to a killed owner gets 1012, batched as they
/// are.
async fn talk(
    mut ws: Ws,
    me: usize,
    (base, path): (String, String),
    broadcast: Arc<AtomicUsize>,
    enough: Arc<Notify>,
) -> Result<Member> {
    let mut member = Member {
        sent: Vec::new(),
        unknown: Vec::new(),
        restarted: 0,
        got: Vec::new(),
        end: End::Open,
        ws: None,
    };
    for k in 0..MESSAGES {
        let text = format!("m{me}-{k}");
        if ws.send(&text).await.is_err() {
            member.end = End::Dropped;
            return Ok(member);
        }
        member.sent.push(text.clone());
        loop {
            match ws.next().await.with_context(|| format!("member {me}"))? {
                Got::Text(line) => {
                    let (n, message) = line.split_once(':').context("a line N:M")?;
                    member
                        .got
                        .push((n.parse()?, message.to_owned(), Instant::now()));
                    if me == 0 && broadcast.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                        enough.notify_one();
                    }
                    if message == text {
                        break;
                    }
                }
                Got::Close(1012, _) => {
                    member.sent.pop();
                    member.unknown.push(text.clone());
                    member.restarted += 1;
                    ws = Ws::reconnect(&base, &path)
                        .await
                        .with_context(|| format!("member {me} entering again"))?;
                    break;
                }
                Got::Close(code, _) => {
                    member.end = End::Closed(code);
                    return Ok(member);
                }
                Got::Dropped => {
                    member.end = End::Dropped;
                    return Ok(member);
                }
                Got::Binary(_) => bail!("member {me}: a binary message"),
            }
        }
    }
    member.ws = Some(ws);
    Ok(member)
}

/// Room `name` and the index of the host that holds it.
async fn room_held_by_a_host(cluster: &TestCluster, name: &str) -> Result<(String, usize)> {
    let placed = cluster.wait_placed(Duration::from_secs(30), true).await?;
    let client = &cluster.live().next().context("no host")?.client;
    let name = name.to_owned();
    let answer = client.get(&format!("/_odo/placement/room/{name}")).await?;
    let v: serde_json::Value = serde_json::from_slice(&answer.body)?;
    let shard = v["shard"].as_u64().context("shard")? as u32;
    let (owner, _) = placed
        .get(&shard)
        .context("the room's shard has no owner")?;
    let index = owner.trim_start_matches('h').parse()?;
    Ok((name, index))
}

pub(crate) async fn room(cluster: &mut TestCluster) -> Result<()> {
    let began = Instant::now();
    let (name, owner) = room_held_by_a_host(cluster, "lobby").await?;
    conversation(cluster, &name, owner, true).await?;
    // Then a host that holds members but not the room: no socket at the
    // other hosts is closed, nothing is missed.
    let (name, owner) = room_held_by_a_host(cluster, "porch").await?;
    conversation(cluster, &name, (owner + 1) % 3, false).await?;
    println!(
        "cluster: room: both kills in {} s",
        began.elapsed().as_secs()
    );
    Ok(())
}

/// Members talk in room `name`, entering at every host; host `victim`
/// (the room's owner, or not) is SIGKILLed meanwhile, then started again.
async fn conversation(
    cluster: &mut TestCluster,
    name: &str,
    victim: usize,
    owner_killed: bool,
) -> Result<()> {
    let path = format!("/room/{name}/ws");
    // Members 0.. enter at the hosts in turn; member 0 at a host that
    // survives.
    let hosts: Vec<usize> = (0..3).filter(|i| *i != victim).chain([victim]).collect();
    let mut sockets = Vec::new();
    let base = |host: usize| -> Result<String> {
        Ok(cluster
            .host(host)
            .with_context(|| format!("h{host}"))?
            .client
            .base()
            .to_owned())
    };
    for (h, host) in hosts.iter().enumerate() {
        let base = base(*host)?;
        for j in 0..PER_HOST {
            let me = h * PER_HOST + j;
            let ws = Ws::connect(&base, &path)
                .await
                .with_context(|| format!("member {me} entering at h{host}"))?;
            sockets.push((*host, ws));
        }
    }
    // And one member at each surviving host that only listens: no event
    // of its own hands its socket to the room's new owner.
    let mut listeners = Vec::new();
    for host in hosts.iter().filter(|h| **h != victim) {
        let base = base(*host)?;
        let ws = Ws::connect(&base, &path)
            .await
            .with_context(|| format!("a listener entering at h{host}"))?;
        listeners.push((*host, ws));
    }
    let broadcast = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(me, (host, ws))| {
            let door = (base(host)?, path.clone());
            let task = tokio::spawn(talk(ws, me, door, broadcast.clone(), enough.clone()));
            Ok((host, task))
        })
        .collect::<Result<_>>()?;
    tokio::time::timeout(Duration::from_secs(60), enough.notified())
        .await
        .context("the members did not get going")?;
    let killed_at = Instant::now();
    cluster.kill_host(victim)?;
    let mut members = Vec::new();
    for (host, task) in tasks {
        members.push((host, task.await??));
    }
    for (host, ws) in listeners {
        let member = Member {
            sent: Vec::new(),
            unknown: Vec::new(),
            restarted: 0,
            got: Vec::new(),
            end: End::Open,
            ws: Some(ws),
        };
        members.push((host, member));
    }
    let survivor = cluster
        .live()
        .next()
        .context("no host left")?
        .client
        .clone();
    let answer = survivor
        .get(&format!("/room/{name}/history?limit=1000"))
        .await?;
    ensure!(answer.status == 200, "history: {}", answer.status);
    let rows: Vec<(u64, String)> = serde_json::from_slice(&answer.body)?;
    let history: BTreeMap<u64, String> = rows.into_iter().collect();
    let last = history.keys().next_back().copied().unwrap_or(0);
    // The last message of a member still open: its broadcast reached every
    // door before its sender saw it (the turn's reply waits for every
    // door's push), so every open member reads up to it.
    let open_sent: BTreeSet<&String> = members
        .iter()
        .filter(|(host, m)| *host != victim && m.end == End::Open)
        .flat_map(|(_, m)| m.sent.iter())
        .collect();
    let target = history
        .iter()
        .filter(|(_, m)| open_sent.contains(m))
        .map(|(n, _)| *n)
        .max()
        .unwrap_or(0);
    for (host, member) in &mut members {
        if *host == victim {
            member.ws = None;
            if member.end == End::Open {
                member.end = End::Dropped;
            }
        }
        let Some(ws) = member.ws.as_mut() else {
            continue;
        };
        while member.got.last().is_none_or(|(n, _, _)| *n < target) {
            match ws.next().await? {
                Got::Text(line) => {
                    let (n, message) = line.split_once(':').context("a line N:M")?;
                    member
                        .got
                        .push((n.parse()?, message.to_owned(), Instant::now()));
                }
                other => bail!("an open member's socket ended: {other}"),
            }
        }
    }

    // Stored once each, and every line received is the history's.
    let stored: BTreeSet<&String> = history.values().collect();
    ensure!(
        stored.len() == history.len(),
        "a message stored twice: {history:?}"
    );
    ensure!(
        history.keys().copied().eq(1..=last),
        "the history has gaps: {:?}",
        history.keys().collect::<Vec<_>>()
    );
    let mut duplicates = 0;
    let mut delivered = 0;
    for (i, (_, member)) in members.iter().enumerate() {
        let ns: Vec<u64> = member.got.iter().map(|(n, _, _)| *n).collect();
        duplicates += ns.len() - ns.iter().collect::<BTreeSet<_>>().len();
        ensure!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "member {i} received out of order: {ns:?}"
        );
        for (n, message, _) in &member.got {
            ensure!(
                history.get(n) == Some(message),
                "member {i} received {n}:{message}, the history says {:?}",
                history.get(n)
            );
        }
        delivered += ns.len();
    }
    ensure!(duplicates == 0, "{duplicates} lines delivered twice");
    // Whose message was in flight at the kill: senders closed with 1012
    // (who entered again), and those that entered at the killed host.
    let sender = |message: &str| -> Option<usize> {
        message.strip_prefix('m')?.split_once('-')?.0.parse().ok()
    };
    let in_flight: BTreeSet<usize> = members
        .iter()
        .enumerate()
        .filter(|(_, (host, m))| *host == victim || m.end != End::Open || m.restarted > 0)
        .map(|(i, _)| i)
        .collect();
    let mut lost = 0;
    let max_before_kill = members
        .iter()
        .flat_map(|(_, m)| m.got.iter())
        .filter(|(_, _, at)| *at < killed_at)
        .map(|(n, _, _)| *n)
        .max()
        .unwrap_or(0);
    for (i, (host, member)) in members.iter().enumerate() {
        if member.end == End::Open {
            ensure!(*host != victim, "member {i} at the killed host stayed open");
            for sent in &member.sent {
                ensure!(stored.contains(sent), "member {i}'s {sent} was not stored");
            }
            if member.restarted > 0 {
                // A new socket misses what was said while its member
                // entered again (a client reads the history for it).
                continue;
            }
            let got: BTreeSet<u64> = member.got.iter().map(|(n, _, _)| *n).collect();
            for (n, message) in history.range(..=target) {
                if got.contains(n) {
                    continue;
                }
                lost += 1;
                ensure!(
                    sender(message).is_some_and(|s| in_flight.contains(&s)),
                    "open member {i} missed {n}:{message}, which was not in flight at the kill"
                );
            }
        } else if *host != victim {
            ensure!(
                member.end == End::Closed(1012),
                "member {i} at a surviving host ended {:?}",
                member.end
            );
        }
    }
    let restarted = members
        .iter()
        .map(|(_, m)| m.restarted + usize::from(m.end == End::Closed(1012)))
        .sum::<usize>();
    let dropped = members
        .iter()
        .filter(|(_, m)| m.end == End::Dropped)
        .count();
    let sent: usize = members.iter().map(|(_, m)| m.sent.len()).sum();
    if !owner_killed {
        ensure!(
            restarted == 0 && lost == 0,
            "a host holding members but not the room was killed: {restarted} sockets at other hosts closed with 1012, {lost} messages missed"
        );
    }
    // The longest silence a talker still open saw from the kill on: from
    // the kill (or a line) to its next line.
    let talker = members
        .iter()
        .find(|(host, m)| *host != victim && m.end == End::Open && !m.sent.is_empty())
        .context("no talker stayed open")?;
    let times: Vec<Instant> = talker.1.got.iter().map(|(_, _, at)| *at).collect();
    let pause = std::iter::once(killed_at)
        .chain(times.iter().copied().filter(|at| *at > killed_at))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .context("nothing delivered after the kill")?;
    let what = if owner_killed {
        "the room's host"
    } else {
        "a host holding members, not the room,"
    };
    println!(
        "cluster: room: {} members entering at 3 hosts (2 of them only listening), {what} h{victim} SIGKILLed after {max_before_kill} messages: {sent} sent, {} stored (last {last}), {delivered} lines delivered, {lost} missed by open members (in flight at the kill), 0 duplicates, 0 out of order; sockets dropped with the killed host: {dropped}, closed 1012 (in flight, then entered again): {restarted}, open to the end: {}; longest silence at an open member after the kill {} ms",
        members.len(),
        history.len(),
        members.iter().filter(|(_, m)| m.end == End::Open).count(),
        pause.as_millis(),
    );
    // The killed host comes back for the scenarios that follow.
    cluster.start_host(victim)?;
    cluster.wait_placed(Duration::from_secs(30), true).await?;
    Ok(())
}

/// One member entering at each live host of `cluster` says one thing in
/// turn: each line reaches every member (the room's owner pushes to the
/// other hosts' doors). Returns the lines delivered.
pub(crate) async fn one_room_at_every_host(cluster: &TestCluster) -> Result<usize> {
    let mut members = Vec::new();
    for host in cluster.live() {
        members.push(Ws::connect(host.client.base(), "/room/across/ws").await?);
    }
    let mut delivered = 0;
    for speaker in 0..members.len() {
        let text = format!("hello from {speaker}");
        members[speaker].send(&text).await?;
        let line = format!("{}:{text}", speaker + 1);
        for (i, member) in members.iter_mut().enumerate() {
            let got = member.text().await?;
            ensure!(got == line, "member {i} got {got:?}, not {line:?}");
            delivered += 1;
        }
    }
    Ok(delivered)
}
