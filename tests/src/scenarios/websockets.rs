//! WebSockets against the real server: the room's contract and fan-out,
//! ordering per socket, hibernation (the object evicted, its sockets kept,
//! tags and attachments intact), the auto-response answered without a
//! wake-up, a client that vanishes, a SIGKILLed worker under 100 open
//! sockets (none dropped but those with a message in flight to the
//! worker, closed with 1012, whose clients reconnect; no message stored or
//! broadcast twice), and shutdown (1001).

use std::collections::{BTreeMap, HashMap};

use anyhow::bail;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{GUARD, Got, Ws};

use super::*;

/// Live objects over every worker, as the workers say now.
async fn live_objects(c: &HttpClient) -> Result<u64> {
    let workers: serde_json::Value = serde_json::from_slice(&c.get("/_odo/workers").await?.body)?;
    Ok(workers
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["live_objects"].as_u64()).sum())
        .unwrap_or(0))
}

/// The room's history as `(N, M)` pairs.
pub(super) async fn history(c: &HttpClient, room: &str) -> Result<Vec<(u64, String)>> {
    let answer = c.get(&format!("/room/{room}/history?limit=1000")).await?;
    ensure!(answer.status == 200, "history: {}", answer.text());
    Ok(serde_json::from_slice(&answer.body)?)
}

/// Reads `ws` until it has the echo `N:text`; returns every line read.
pub(super) async fn until_echo(ws: &mut Ws, text: &str) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        match ws.next().await? {
            Got::Text(line) => {
                let mine = line.split_once(':').is_some_and(|(_, m)| m == text);
                seen.push(line);
                if mine {
                    return Ok(seen);
                }
            }
            other => bail!("waiting for the echo of {text:?}: {other}"),
        }
    }
}

scenario!(ws_room, |w, t| {
    let c = w.client.clone();
    let base = c.base().to_owned();
    t.get(&c, "/room/lobby/ws").await?;
    t.get(&c, "/room/lobby/history").await?;
    t.get(&c, "/room/lobby/history?limit=0").await?;
    let page = c.get("/room/lobby").await?;
    t.fact(
        "chat page",
        format!("{} {:?}", page.status, page.header("content-type")),
    );
    let unknown = Ws::connect(&base, "/nope/lobby/ws").await;
    t.fact(
        "upgrade to an unknown class",
        unknown.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Ws::connect(&base, "/room/lobby/ws").await?);
    }
    // Fan-out: each member's message reaches all three, sender included.
    for i in 0..3 {
        members[i].send(&format!("hello from {i}")).await?;
        for (j, member) in members.iter_mut().enumerate() {
            let line = member.text().await?;
            t.fact(&format!("member {j} got"), line);
        }
    }
    // Ordering per socket: twenty at once, stored and delivered in order.
    for k in 0..20 {
        members[0].send(&format!("burst {k}")).await?;
    }
    for (j, member) in members.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..20 {
            got.push(member.text().await?);
        }
        let expected: Vec<String> = (0..20).map(|k| format!("{}:burst {k}", k + 4)).collect();
        t.fact(
            &format!("member {j} got the burst in order"),
            got == expected,
        );
    }
    t.get(&c, "/room/lobby/history?limit=3").await?;
    // A binary message closes its socket with 1003; the others stay.
    members[2].send_message(Message::binary(vec![1, 2])).await?;
    let third = members.pop().ok_or_else(|| anyhow!("no member"))?;
    let mut third = third;
    t.fact("binary message", third.until_end().await?);
    members[1].send("still here").await?;
    t.fact("after the binary", members[0].text().await?);
    for member in members {
        t.fact("member closes", member.close(1000).await?);
    }
    Ok(())
});

scenario!(ws_hibernation, |w, t| {
    let c = w.client.clone();
    let base = c.base().to_owned();
    let mut a = Ws::connect(&base, "/probe/hib/ws?tag=a&tag=b").await?;
    let mut b = Ws::connect(&base, "/probe/hib/ws?tag=b").await?;
    t.fact("too many tags", {
        let tags: String = (0..11).map(|i| format!("&tag=t{i}")).collect();
        Ws::connect(&base, &format!("/probe/hib/ws?{tags}"))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    t.fact("a tag over 256 bytes", {
        let tag = "t".repeat(257);
        Ws::connect(&base, &format!("/probe/hib/ws?tag={tag}"))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    t.fact("attach a", a.ask("attach:alice").await?);
    // An attachment over 16 KiB fails its turn: nothing is sent, the
    // socket's attachment stays as it was.
    a.send(&format!("attach:{}", "x".repeat(16 * 1024))).await?;
    t.fact("attach b", b.ask("attach:bob").await?);
    t.fact("auto", a.ask("auto:ping=pong").await?);
    let first = a.ask("whoami").await?;
    t.fact("list before", a.ask("list").await?);
    // Hibernation: the object is evicted while both sockets stay open.
    let asleep = eventually(GUARD, async || Ok(live_objects(&c).await? == 0)).await?;
    t.fact("evicted with its sockets open", asleep);
    // The auto-response is answered by the front door, the object asleep.
    t.fact("auto-response", a.ask("ping").await?);
    t.fact(
        "still asleep after the auto-response",
        live_objects(&c).await? == 0,
    );
    t.fact("auto-response noted", a.ask("autots").await?);
    let second = b.ask("whoami").await?;
    t.fact("a new activation", first != second);
    t.fact("list after", b.ask("list").await?);
    t.fact("tagged b", a.ask("count:b").await?);
    t.fact("tagged a", a.ask("count:a").await?);
    // A clean close, then a client that vanishes without a close frame:
    // the object hears of both and no longer lists them.
    t.fact("b closes", b.close(1000).await?);
    // The object heard of b before a goes (the log's order is compared).
    t.fact(
        "b's close logged",
        logged(&c, "/probe/hib/wslog", "close 1000").await?,
    );
    drop(a.into_inner());
    let logged = eventually(GUARD, async || {
        Ok(c.get("/probe/hib/wslog").await?.text().lines().count() >= 2)
    })
    .await?;
    t.fact("both closes logged", logged);
    t.get(&c, "/probe/hib/wslog").await?;
    // The object closes a socket itself.
    let mut d = Ws::connect(&base, "/probe/hib/ws").await?;
    d.send("close").await?;
    t.fact("closed by the object", d.until_end().await?);
    Ok(())
});

scenario!(ws_sigkill_worker, |w, t| {
    const SOCKETS: usize = 100;
    const SENDERS: usize = 10;
    let c = w.client.clone();
    let base = c.base().to_owned();
    let room = "kill";
    let mut listeners = Vec::new();
    for _ in 0..SOCKETS - SENDERS {
        listeners.push(Ws::connect(&base, &format!("/room/{room}/ws")).await?);
    }
    let victim = owner_pid(&c, &format!("room/{room}")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let path = format!("/room/{room}/ws");
        // The senders already running keep the room busy: with the
        // matrix's short object queue, an upgrade may meet it full and be
        // answered 503 (never delivered), which a client sends again.
        let mut ws = Ws::reconnect(&base, &path).await?;
        let (stop, echoed, base) = (stop.clone(), echoed.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            // Sends until told to stop; returns what was echoed, how its
            // sockets ended, and its last socket if still open. A socket
            // closed with 1012 (its last message's outcome unknown) is
            // replaced, as a real client would reconnect, and its message
            // is not sent again.
            let mut acked = Vec::new();
            let mut ends = Vec::new();
            for k in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return Ok::<_, anyhow::Error>((acked, ends, Some(ws)));
                }
                let text = format!("s{i}-{k}");
                ws.send(&text).await?;
                loop {
                    match ws.next().await? {
                        Got::Text(line) if line.split_once(':').is_some_and(|(_, m)| m == text) => {
                            acked.push(text.clone());
                            echoed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Got::Text(_) => {}
                        end @ Got::Close(1012, _) => {
                            ends.push(end.to_string());
                            ws = Ws::reconnect(&base, &path).await?;
                            break;
                        }
                        end => {
                            ends.push(end.to_string());
                            return Ok((acked, ends, None));
                        }
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
    ensure!(progress(50).await?, "the senders made no progress");
    signal(victim, Signal::Kill)?;
    let after_kill = echoed.load(Ordering::SeqCst);
    let moved = eventually(GUARD, async || {
        Ok(owner_pid(&c, &format!("room/{room}"))
            .await
            .ok()
            .is_some_and(|p| p != victim))
    })
    .await?;
    t.fact("re-placed", moved);
    let resumed = progress(after_kill + 50).await?;
    t.fact("messages flow again", resumed);
    stop.store(true, Ordering::SeqCst);
    let mut acked_all = Vec::new();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut open_senders = Vec::new();
    for sender in senders {
        let (acked, closed, ws) = sender.await??;
        acked_all.extend(acked);
        for end in closed {
            *ends.entry(end).or_default() += 1;
        }
        open_senders.extend(ws);
    }
    t.figure("senders closed", format!("{ends:?}"));
    t.fact(
        "a sender's socket ends only with 1012",
        ends.keys().all(|e| e.starts_with("close 1012")),
    );
    // One more message: every listener still open gets it.
    let mut last = open_senders
        .pop()
        .ok_or_else(|| anyhow!("every sender was closed"))?;
    last.send("the end").await?;
    let mut dropped = 0;
    let mut twice = 0;
    let mut seen_by_listeners: Vec<String> = Vec::new();
    for listener in &mut listeners {
        match until_echo(listener, "the end").await {
            Ok(lines) => {
                let mut ns = HashMap::new();
                for line in &lines {
                    let (n, m) = line.split_once(':').unwrap_or(("", line));
                    if ns.insert(n.to_owned(), ()).is_some() {
                        twice += 1;
                    }
                    seen_by_listeners.push(m.to_owned());
                }
            }
            Err(_) => dropped += 1,
        }
    }
    t.fact("no listener socket dropped", dropped == 0);
    t.fact("no message delivered twice to a socket", twice == 0);
    let history = history(&c, room).await?;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (_, m) in &history {
        *counts.entry(m.as_str()).or_default() += 1;
    }
    t.fact(
        "history holds no message twice",
        counts.values().all(|&n| n == 1),
    );
    t.fact(
        "history holds every echoed message",
        acked_all.iter().all(|m| counts.contains_key(m.as_str())),
    );
    t.fact(
        "history holds every message a listener saw",
        seen_by_listeners
            .iter()
            .all(|m| counts.contains_key(m.as_str())),
    );
    let numbers: Vec<u64> = history.iter().map(|(n, _)| *n).collect();
    t.fact(
        "history numbers ascend without gaps",
        numbers.windows(2).all(|p| p[1] == p[0] + 1),
    );
    t.figure("messages", history.len());
    Ok(())
});

scenario!(ws_large_message, |w, t| {
    let base = w.client.base().to_owned();
    // The largest message (32 MiB), several wire frames each way.
    const LARGEST: usize = 32 * 1024 * 1024;
    let mut ws = Ws::connect(&base, "/probe/large/ws").await?;
    let largest: Vec<u8> = (0..LARGEST).map(|i| (i % 251) as u8).collect();
    ws.send_message(Message::binary(largest.clone())).await?;
    t.fact(
        "32 MiB echoed intact",
        ws.next().await? == Got::Binary(largest),
    );
    t.fact("closes", ws.close(1000).await?);
    Ok(())
});

scenario!(ws_shutdown, |w, t| {
    let base = w.client.base().to_owned();
    let mut ws = Ws::connect(&base, "/room/bye/ws").await?;
    ws.send("before").await?;
    t.fact("echo", ws.text().await?);
    w.restart()?;
    t.fact("at shutdown", ws.until_end().await?);
    Ok(())
});

/// `--max-websockets` of the limits scenario's server.
const MAX_SOCKETS: usize = 2 * PER_OBJECT + 1;
/// The sockets one object may accept there.
const PER_OBJECT: usize = 3;
/// `--websocket-max-message-bytes` there.
const MAX_MESSAGE: usize = 64 * 1024;
/// `--websocket-object-buffer` there.
const OBJECT_BUFFER: usize = 4;

/// The object's WebSocket log, once it holds a line starting with `line`.
async fn logged(c: &HttpClient, path: &str, line: &str) -> Result<bool> {
    eventually(GUARD, async || {
        Ok(c.get(path)
            .await?
            .text()
            .lines()
            .any(|l| l.starts_with(line)))
    })
    .await
}

scenario!(ws_limits, |w, t| {
    let dir = tempfile::tempdir()?;
    let mut spec = w.spec.clone();
    spec.extra_args.extend(
        [
            "--max-websockets",
            &MAX_SOCKETS.to_string(),
            "--max-connections",
            "2",
            "--websocket-max-message-bytes",
            &MAX_MESSAGE.to_string(),
            "--websocket-send-buffer-bytes",
            &MAX_MESSAGE.to_string(),
            "--websocket-idle-timeout-ms",
            "300",
            "--websocket-object-buffer",
            &OBJECT_BUFFER.to_string(),
            // The worker SIGSTOPped below is not to be taken for a stuck
            // one on a busy machine (it was killed within the default 2 s
            // once, and its SIGCONT found no process).
            "--heartbeat-timeout-ms",
            "20000",
        ]
        .map(str::to_owned),
    );
    spec.env
        .push(("ODO_TEST_WS_PER_OBJECT".into(), PER_OBJECT.to_string()));
    let server = spec.start(dir.path())?;
    let c = HttpClient::new(&server.base);
    let base = server.base.clone();

    // Sockets per object, then sockets in all: a clear refusal, at once.
    let mut held = Vec::new();
    for _ in 0..PER_OBJECT {
        held.push(Ws::connect(&base, "/probe/cap-a/ws").await?);
    }
    let refused = Ws::connect(&base, "/probe/cap-a/ws").await;
    t.fact(
        "one socket over the object's cap",
        refused.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    for _ in 0..PER_OBJECT {
        held.push(Ws::connect(&base, "/room/cap-r/ws").await?);
    }
    let refused = Ws::connect(&base, "/room/cap-r/ws").await;
    t.fact(
        "the room over the object's cap",
        refused.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    held.push(Ws::connect(&base, "/probe/cap-b/ws").await?);
    let refused = Ws::connect(&base, "/probe/cap-d/ws").await;
    t.fact(
        "one socket over the server's cap",
        refused.err().map(|e| e.to_string()).unwrap_or_default(),
    );
    // The HTTP connection cap (2) does not count upgraded sockets.
    t.get(&c, "/hello").await?;
    let first = held.remove(0);
    t.fact("a socket closes", first.close(1000).await?);
    let again = eventually(GUARD, async || {
        Ok(Ws::connect(&base, "/probe/cap-d/ws").await.is_ok())
    })
    .await?;
    t.fact("a new socket once one closed", again);
    drop(held);

    // Message size: the largest passes both ways, one byte more is 1009.
    // (Once the door has let the sockets just dropped go.)
    let mut m = None;
    eventually(GUARD, async || {
        m = Ws::connect(&base, "/probe/size/ws").await.ok();
        Ok(m.is_some())
    })
    .await?;
    let mut m = m.ok_or_else(|| anyhow!("the dropped sockets were never let go"))?;
    let largest: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
    m.send_message(Message::binary(largest.clone())).await?;
    t.fact(
        "the largest message echoed intact",
        m.next().await? == Got::Binary(largest),
    );
    m.send_message(Message::binary(vec![0u8; MAX_MESSAGE + 1]))
        .await?;
    t.fact("one byte over", m.until_end().await?);
    t.fact(
        "the object heard",
        logged(&c, "/probe/size/wslog", "close 1009").await?,
    );

    // Ping answered by the front door; a reading client outlives the idle
    // timeout (it answers the door's pings), a silent one does not.
    let mut p = Ws::connect(&base, "/probe/idle/ws").await?;
    p.send_message(Message::Ping(b"hi".to_vec().into())).await?;
    t.fact("ping", format!("{:?}", p.next_raw().await?));
    let silent = Ws::connect(&base, "/probe/idle/ws").await?;
    // `p` reads (and so answers pings) while the silent one is closed.
    let half_open = tokio::select! {
        closed = logged(&c, "/probe/idle/wslog", "close 1006 clean=false left=1") => closed?,
        got = p.next() => bail!("the reading client got {}", got?),
    };
    t.fact("a silent client closed as half-open", half_open);
    t.fact(
        "the reading client still open",
        p.ask("count:").await.is_ok(),
    );
    drop(silent);

    // Malformed frames: an unmasked client frame is a protocol error.
    let mut bad = Ws::connect(&base, "/probe/bad/ws").await?;
    bad.raw().write_all(&[0x81, 0x02, b'h', b'i']).await?;
    t.fact("an unmasked frame", bad.until_end().await?);
    t.fact(
        "the object got an error event",
        logged(&c, "/probe/bad/wslog", "error").await?,
    );
    let mut bad = Ws::connect(&base, "/probe/bad/ws").await?;
    bad.raw().write_all(&[0x83, 0x80, 0, 0, 0, 0]).await?;
    t.fact("a reserved opcode", bad.until_end().await?);

    // A client that stops reading: its queue fills, it is closed with 1008.
    let mut slow = Ws::connect(&base, "/probe/slow/ws").await?;
    slow.send("flood:256").await?;
    t.fact(
        "the object closed the reader",
        logged(&c, "/probe/slow/wslog", "close 1008").await?,
    );
    t.fact("a client that stopped reading", slow.until_end().await?);

    // The object's worker stopped: messages wait in the object's buffer,
    // one more closes the socket with 1013; after SIGCONT the object hears.
    let mut s = Ws::connect(&base, "/probe/stopped/ws").await?;
    t.fact("before the stop", s.ask("count:").await?);
    let pid = owner_pid(&c, "probe/stopped").await?;
    signal(pid, Signal::Stop)?;
    let mut ended = None;
    for k in 0..OBJECT_BUFFER + 2 {
        if s.send(&format!("attach:{k}")).await.is_err() {
            break;
        }
    }
    // The door closes it at once, the worker still stopped.
    if let Ok(end) = s.until_end().await {
        ended = Some(end);
    }
    signal(pid, Signal::Cont)?;
    t.fact(
        "a message over the object's buffer",
        ended.map(|e| e.to_string()).unwrap_or_default(),
    );
    t.fact(
        "the object heard",
        logged(&c, "/probe/stopped/wslog", "close 1013").await?,
    );
    drop(server);
    Ok(())
});
