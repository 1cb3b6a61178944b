//! Hostile clients against the front door's WebSockets, each writing
//! frames by hand: what tungstenite as a client would never send (a
//! message left unfinished, an object's close never answered, a flood of
//! messages for a busy object). Each test failed before its fix.
//!
//! Memory is read from `/proc` (the front door is the server's main
//! process), a bound, not a timing; every wait is bounded by the test
//! client's guard.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use odo_tests::http::HttpClient;
use odo_tests::topology::{RunningServer, ServerSpec, proc_memory};
use odo_tests::ws::{Got, Ws, client_frame, server_frame};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const BINARY: u8 = 2;
const CONTINUATION: u8 = 0;
const TEXT: u8 = 1;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// Messages begun and never finished count against the door's bound on
/// the messages it holds (`--websocket-door-buffer-bytes`): before, 32
/// sockets each holding 4 MiB of an unfinished message grew the door by
/// 128 MiB with a door buffer of 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_count_against_the_door_buffer() -> Result<()> {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: reading the front door's memory needs Linux's /proc");
        return Ok(());
    }
    const SOCKETS: usize = 32;
    const LIMIT: usize = 4 << 20;
    /// What the door may grow by besides the bound: its sockets, the
    /// allocator's free lists.
    const SLACK: u64 = 16 << 20;
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = [
        "--websocket-max-message-bytes",
        &LIMIT.to_string(),
        "--websocket-door-buffer-bytes",
        &LIMIT.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let server = spec.start(dir.path())?;
    let mut sockets = Vec::new();
    for i in 0..SOCKETS {
        sockets.push(Ws::connect(&server.base, &format!("/probe/part{}/ws", i % 4)).await?);
    }
    let before = proc_memory(server.pid, "VmRSS")?;
    let chunk = vec![b'a'; 64 * 1024];
    let mut refused = 0;
    for ws in &mut sockets {
        // All of a message but its last two 64 KiB fragments.
        let mut bytes = client_frame(BINARY, false, &chunk);
        for _ in 1..LIMIT / chunk.len() - 2 {
            bytes.extend(client_frame(CONTINUATION, false, &chunk));
        }
        // A ping after the fragments: its pong says all of them were read.
        bytes.extend(client_frame(PING, true, b"p"));
        if ws.raw().write_all(&bytes).await.is_err() {
            refused += 1;
            continue;
        }
        loop {
            match ws.next_raw().await {
                Ok(Some(Message::Pong(_))) => break,
                Ok(Some(Message::Close(_)) | None) | Err(_) => {
                    refused += 1;
                    break;
                }
                Ok(Some(_)) => {}
            }
        }
    }
    let growth = proc_memory(server.pid, "VmRSS")?.saturating_sub(before);
    let bound = LIMIT as u64 + SLACK;
    ensure!(
        growth <= bound,
        "{SOCKETS} unfinished messages grew the front door by {} KiB, over the door buffer + slack \
         ({} KiB); {refused} sockets were refused",
        growth / 1024,
        bound / 1024
    );
    ensure!(
        refused >= SOCKETS - 2,
        "only {refused} of {SOCKETS} sockets were refused though the door holds one message"
    );
    // Once the sockets are gone, the door holds nothing for them.
    drop(sockets);
    let client = HttpClient::new(&server.base);
    let start = Instant::now();
    loop {
        let metrics = client.get("/_odo/metrics").await?.text();
        if metrics.lines().any(|l| l == "odo_websocket_held_bytes 0") {
            return Ok(());
        }
        ensure!(
            start.elapsed() < odo_tests::ws::GUARD,
            "the door still counts bytes held for sockets that are gone: {:?}",
            metrics
                .lines()
                .find(|l| l.starts_with("odo_websocket_held_bytes"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message left unfinished is not held forever by a client that
/// answers pings (or sends pongs): with no new part of it for the idle
/// timeout, the socket is closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_message_is_not_held_forever() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = vec!["--websocket-idle-timeout-ms".into(), "1000".into()];
    let server = spec.start(dir.path())?;
    let mut ws = Ws::connect(&server.base, "/probe/held/ws").await?;
    ws.raw()
        .write_all(&client_frame(BINARY, false, b"first "))
        .await?;
    // Five idle timeouts, a pong every quarter of one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if ws
            .raw()
            .write_all(&client_frame(PONG, true, b""))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = ws
        .raw()
        .write_all(&client_frame(CONTINUATION, true, b"last"))
        .await;
    let got = ws.next().await?;
    ensure!(
        matches!(got, Got::Close(1008, _) | Got::Dropped),
        "a message begun 5 idle timeouts ago, not continued since: the client got {got}"
    );
    let log = HttpClient::new(&server.base)
        .get("/probe/held/wslog")
        .await?
        .text();
    ensure!(
        log.lines().any(|l| l.starts_with("close 1008")),
        "the object was not told of the close: {log:?}"
    );
    Ok(())
}

/// After the object closes a socket, what its client sends is not
/// relayed, and a client that never answers the close frame is let go
/// after a short grace: the object gets its close event and no longer
/// lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_close_ends_the_socket_though_the_client_never_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = vec!["--websocket-idle-timeout-ms".into(), "1000".into()];
    let server = spec.start(dir.path())?;
    let mut ws = Ws::connect(&server.base, "/probe/kick/ws").await?;
    // Read by hand from here on: tungstenite would answer the close frame.
    let raw = ws.raw();
    raw.write_all(&client_frame(TEXT, true, b"close")).await?;
    match server_frame(raw).await? {
        Some((CLOSE, payload)) if payload.starts_with(&4000u16.to_be_bytes()) => {}
        other => bail!("expected the object's close 4000, got {other:?}"),
    }
    // Five idle timeouts of messages, never answering the close.
    let start = Instant::now();
    let mut sent = 0u32;
    while start.elapsed() < Duration::from_secs(5) {
        let frame = client_frame(TEXT, true, format!("put:k{sent}").as_bytes());
        if raw.write_all(&frame).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut other = Ws::connect(&server.base, "/probe/kick/ws").await?;
    let count = other.ask("sockets").await?;
    let first = other.ask("has:k0").await?;
    let log = HttpClient::new(&server.base)
        .get("/probe/kick/wslog")
        .await?
        .text();
    ensure!(
        count == "1" && first == "k0 stored: no" && log.lines().count() == 1,
        "5 s after the object closed a socket it still has {count} sockets; \
         the first message sent after its close: {first:?}; its close events: {log:?}"
    );
    Ok(())
}

/// A client that floods a busy object is closed with 1013 and its queued
/// messages go with it: before, they stayed, so the next innocent sender
/// found the object's queue full and was closed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_does_not_get_its_neighbours_closed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    let server = spec.start(dir.path())?;
    let path = "/probe/room/ws";
    let mut busy = Ws::connect(&server.base, path).await?;
    let mut flooder = Ws::connect(&server.base, path).await?;
    let mut neighbour = Ws::connect(&server.base, path).await?;
    // The object is busy for a moment (a slow turn).
    let file = dir.path().join("release");
    busy.send(&format!("waitfile:{}", file.display())).await?;
    let started = dir.path().join("release.started");
    let start = Instant::now();
    while !started.exists() {
        ensure!(
            start.elapsed() < odo_tests::ws::GUARD,
            "the slow turn never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More than the object's queue holds (1,024 events by default).
    let flood: Vec<u8> = (0..1100)
        .flat_map(|_| client_frame(TEXT, true, b"sockets"))
        .collect();
    flooder.raw().write_all(&flood).await?;
    let flooder_end = flooder.until_end().await?;
    ensure!(
        matches!(flooder_end, Got::Close(1013, _)),
        "the flooder got {flooder_end}"
    );
    neighbour.send("whoami").await?;
    std::fs::write(&file, b"")?;
    ensure!(
        busy.text().await? == "released",
        "the slow turn did not end"
    );
    match neighbour.next().await? {
        Got::Text(_) => Ok(()),
        got => {
            bail!("the flooder got {flooder_end}; its neighbour, sending one message, got {got}")
        }
    }
}

/// An upgrade whose `Sec-WebSocket-Key` is not 16 bytes in base64 is
/// refused with 400 before it reaches the object (RFC 6455, 4.2.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_malformed_key_is_refused() -> Result<()> {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    let server = spec.start(dir.path())?;
    let addr = server.base.trim_start_matches("http://").to_owned();
    for key in ["x", "dGhlIHNhbXBsZSBub25jZR==", &"QUFB".repeat(1000)] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await?;
        let request = format!(
            "GET /probe/keys/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        tokio::time::timeout(odo_tests::ws::GUARD, stream.read_exact(&mut head)).await??;
        let status = String::from_utf8_lossy(&head);
        ensure!(
            status == "HTTP/1.1 400",
            "an upgrade with the key {:?} was answered {status:?}",
            &key[..key.len().min(30)]
        );
    }
    // A well-formed one is accepted.
    let mut ws = Ws::connect(&server.base, "/probe/keys/ws").await?;
    ensure!(ws.ask("sockets").await? == "1");
    Ok(())
}

/// A masked client frame whose length is written in the 64-bit form
/// whatever it is (RFC 6455 asks for the minimal form; tungstenite
/// accepts any).
fn client_frame_long_length(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | 127];
    frame.extend((payload.len() as u64).to_be_bytes());
    frame.extend([0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn start(extra: &[&str], dir: &std::path::Path) -> Result<RunningServer> {
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = extra.iter().map(|s| (*s).to_owned()).collect();
    spec.start(dir)
}

async fn held_bytes(server: &RunningServer) -> Result<u64> {
    let metrics = HttpClient::new(&server.base)
        .get("/_odo/metrics")
        .await?
        .text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("odo_websocket_held_bytes "))
        .unwrap_or("odo_websocket_held_bytes ?")
        .to_owned();
    Ok(line
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or(u64::MAX))
}

/// Writes `bytes`, then a ping, and waits for its pong: all of `bytes`
/// was read by the door.
async fn write_and_sync(ws: &mut Ws, bytes: &[u8]) -> Result<()> {
    ws.raw().write_all(bytes).await?;
    ws.raw()
        .write_all(&client_frame(PING, true, b"sync"))
        .await?;
    loop {
        match ws.next_raw().await? {
            Some(Message::Pong(_)) => return Ok(()),
            Some(Message::Close(frame)) => bail!("closed while syncing: {frame:?}"),
            None => bail!("dropped while syncing"),
            Some(_) => {}
        }
    }
}

/// Empty parts of a message are no bytes of it: before, the door counted
/// every frame's header, without bound (tungstenite's limit counts the
/// payload), so one socket holding one byte of a message in a million
/// empty parts made the door "full", and every other socket's messages
/// were refused with 1013.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_fragments_do_not_count_as_held_bytes() -> Result<()> {
    // One byte of a message, then a million empty parts of it (6 MB).
    let mut bytes = client_frame(BINARY, false, b"x");
    for _ in 0..1_000_000 {
        bytes.extend(client_frame(CONTINUATION, false, b""));
    }
    let (held, got) = attack_then_innocent(&bytes).await?;
    ensure!(
        held < 64 * 1024 && got == Got::Text("1".into()),
        "a socket holding 1 byte of an unfinished message: odo_websocket_held_bytes {held}; \
         an innocent socket of another object sending 7 bytes got {got}"
    );
    Ok(())
}

/// A server with a door buffer of 4 MiB, a socket that sends `bytes` (all
/// of them read), then a socket of another object that asks a question:
/// the bytes the door says it holds, and what the second socket got.
async fn attack_then_innocent(bytes: &[u8]) -> Result<(u64, Got)> {
    const LIMIT: usize = 4 << 20;
    let dir = tempfile::tempdir()?;
    let server = start(
        &["--websocket-door-buffer-bytes", &LIMIT.to_string()],
        dir.path(),
    )?;
    let mut attacker = Ws::connect(&server.base, "/probe/attacker/ws").await?;
    write_and_sync(&mut attacker, bytes).await?;
    let held = held_bytes(&server).await?;
    let mut innocent = Ws::connect(&server.base, "/probe/innocent/ws").await?;
    innocent.send("sockets").await?;
    Ok((held, innocent.next().await?))
}

/// Pongs are no message bytes, however their length is written: before,
/// a pong with its length in the 64-bit form (which tungstenite accepts)
/// left 8 bytes counted, with no message begun at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_length_pongs_do_not_count_as_held_bytes() -> Result<()> {
    let mut bytes = Vec::new();
    for _ in 0..700_000 {
        bytes.extend(client_frame_long_length(PONG, true, b""));
    }
    let (held, got) = attack_then_innocent(&bytes).await?;
    ensure!(
        held == 0 && got == Got::Text("1".into()),
        "a socket that sent only pongs: odo_websocket_held_bytes {held}; \
         an innocent socket of another object sending 7 bytes got {got}"
    );
    Ok(())
}

/// A message trickled in (a byte of it every quarter of the idle timeout)
/// cannot take the door's bound from complete messages: messages still
/// arriving may hold half of it at most. Before, one socket held all of
/// it for as long as it liked, and every other socket's messages were
/// refused with 1013 meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_message_does_not_hold_the_door_forever() -> Result<()> {
    const LIMIT: usize = 4 << 20;
    let dir = tempfile::tempdir()?;
    let server = start(
        &[
            "--websocket-door-buffer-bytes",
            &LIMIT.to_string(),
            "--websocket-max-message-bytes",
            &LIMIT.to_string(),
            "--websocket-idle-timeout-ms",
            "1000",
        ],
        dir.path(),
    )?;
    let mut attacker = Ws::connect(&server.base, "/probe/attacker/ws").await?;
    // Refused (1013) past half the bound, as it should be.
    let _ = write_and_sync(
        &mut attacker,
        &client_frame(BINARY, false, &vec![b'a'; LIMIT - 512]),
    )
    .await;
    // Eight idle timeouts, a byte of the message every quarter of one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A byte of the message, and a pong (so the idle sweep hears it).
        let mut trickle = client_frame(CONTINUATION, false, b"a");
        trickle.extend(client_frame(PONG, true, b""));
        if attacker.raw().write_all(&trickle).await.is_err() {
            break;
        }
    }
    let held = held_bytes(&server).await?;
    let mut innocent = Ws::connect(&server.base, "/probe/innocent/ws").await?;
    innocent
        .send_message(Message::binary(vec![b'b'; 1024]))
        .await?;
    let got = innocent.next().await?;
    ensure!(
        matches!(&got, Got::Binary(b) if b.len() == 1024),
        "8 idle timeouts after a message was begun (a byte of it every 250 ms), \
         odo_websocket_held_bytes {held}; an innocent 1 KiB message got {got}"
    );
    Ok(())
}

/// The object sends a lot, then closes the socket: a client that reads
/// slowly (a slow link, a busy program) gets all of it and the close
/// frame, since the close grace starts once the close frame was written
/// (before, a second after it was queued: the messages before it were
/// cut off, and the object heard 1006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_all_the_object_sent_before_its_close() -> Result<()> {
    const MESSAGES: usize = 320; // 20 MiB of 64 KiB messages
    let dir = tempfile::tempdir()?;
    let server = start(
        &[
            "--websocket-send-buffer-bytes",
            &(64usize << 20).to_string(),
        ],
        dir.path(),
    )?;
    let mut ws = Ws::connect(&server.base, "/probe/slow/ws").await?;
    ws.send(&format!("flood:{MESSAGES}")).await?;
    ws.send("close").await?;
    // The client reads 3 s later (a slow link, a busy program).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut texts = 0;
    let end = loop {
        match ws.next().await? {
            Got::Text(_) => texts += 1,
            end => break end,
        }
    };
    let log = HttpClient::new(&server.base)
        .get("/probe/slow/wslog")
        .await?
        .text();
    ensure!(
        texts == MESSAGES && matches!(end, Got::Close(4000, _)),
        "the client got {texts} of {MESSAGES} messages, then {end}; the object heard {log:?}"
    );
    Ok(())
}

/// A client sending one large message slowly in one frame (as a browser
/// does) cannot answer the door's ping until the frame ends: the
/// message's bytes count as hearing from it. Before, only whole messages
/// did, so two idle timeouts into the upload the socket was dropped as
/// half-open though its bytes kept coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_single_frame_upload_is_not_taken_for_half_open() -> Result<()> {
    const LEN: usize = 48 * 1024;
    let dir = tempfile::tempdir()?;
    let server = start(&["--websocket-idle-timeout-ms", "1000"], dir.path())?;
    let mut ws = Ws::connect(&server.base, "/probe/upload/ws").await?;
    let frame = client_frame(BINARY, true, &vec![b'u'; LEN]);
    // 1 KiB every 100 ms: about 5 idle timeouts for the frame.
    let start = Instant::now();
    for chunk in frame.chunks(1024) {
        if let Err(e) = ws.raw().write_all(chunk).await {
            bail!(
                "the upload was cut {:?} into it, bytes flowing all along: {e}",
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = ws.next().await?;
    ensure!(
        matches!(&got, Got::Binary(b) if b.len() == LEN),
        "a 48 KiB message uploaded over {:?} in one frame: the client got {got}",
        start.elapsed()
    );
    Ok(())
}
