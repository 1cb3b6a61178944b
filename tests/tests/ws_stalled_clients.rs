//! Clients that stop reading cost the front door a bounded amount of
//! memory: each socket's send buffer (`--websocket-send-buffer-bytes`),
//! then the door closes it with 1008, while the members that read keep
//! receiving. The front door is the server's main process; its resident
//! memory is read from `/proc` (peak against the level before the flood),
//! a memory bound, not a timing.

use anyhow::{Context as _, Result, bail, ensure};
use odo_tests::http::HttpClient;
use odo_tests::topology::{ServerSpec, proc_memory};
use odo_tests::ws::{Got, Ws};

/// Clients that never read.
const STALLED: usize = 50;
/// Members that read every message.
const READERS: usize = 2;
/// The send buffer per socket the server is given.
const SEND_BUFFER: u64 = 256 * 1024;
/// 64 KiB messages per broadcast turn (one turn's sends reach the door
/// together, so a reading socket's buffer must hold them): 192 KiB.
const PER_ROUND: usize = 3;
/// Rounds at most: 256 MiB of broadcasts, far past what the stalled
/// sockets may hold (the kernel's socket buffers, then the send buffer).
const MAX_ROUNDS: usize = 256 * 1024 / (64 * PER_ROUND);
/// What the front door may grow by besides the stalled sockets' buffers:
/// the messages in flight to the readers, the transport's frame buffers,
/// the allocator's free lists.
const SLACK: u64 = 16 << 20;

/// Reads until `done`, counting the 64 KiB messages before it.
async fn round(ws: &mut Ws) -> Result<usize> {
    let mut chunks = 0;
    loop {
        match ws.next().await? {
            Got::Text(t) if t == "done" => return Ok(chunks),
            Got::Text(t) if t.len() == 64 * 1024 => chunks += 1,
            other => bail!("a reading member got {other}"),
        }
    }
}

/// Closes with 1008 the object heard of, from its log.
async fn closed_1008(c: &HttpClient) -> Result<usize> {
    let log = c.get("/probe/stall/wslog").await?.text();
    Ok(log.lines().filter(|l| l.starts_with("close 1008")).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_cost_the_front_door_no_more_than_their_send_buffers() -> Result<()> {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: reading the front door's memory needs Linux's /proc");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    spec.extra_args = vec![
        "--websocket-send-buffer-bytes".into(),
        SEND_BUFFER.to_string(),
    ];
    let server = spec.start(dir.path())?;
    let c = HttpClient::new(&server.base);
    let path = "/probe/stall/ws";
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(Ws::connect(&server.base, path).await?);
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        stalled.push(Ws::connect(&server.base, path).await?);
    }
    // Every socket accepted and known to the object before the flood.
    ensure!(
        readers[0].ask("sockets").await? == (READERS + STALLED).to_string(),
        "not every socket was accepted"
    );
    let before = proc_memory(server.pid, "VmRSS")?;
    // The peak from here on (best effort: without it the peak since the
    // server started counts, which only overstates the growth).
    let _ = std::fs::write(format!("/proc/{}/clear_refs", server.pid), "5");
    let mut rounds = 0;
    let mut closed = 0;
    while closed < STALLED && rounds < MAX_ROUNDS {
        readers[0].send(&format!("broadcast:{PER_ROUND}")).await?;
        for reader in &mut readers {
            ensure!(
                round(reader).await? == PER_ROUND,
                "a reading member missed messages"
            );
        }
        rounds += 1;
        closed = closed_1008(&c).await?;
    }
    let peak = proc_memory(server.pid, "VmHWM")?;
    let growth = peak.saturating_sub(before);
    let bound = STALLED as u64 * SEND_BUFFER + SLACK;
    eprintln!(
        "front door: {} KiB before, peak {} KiB, growth {} KiB (bound {} KiB) after {rounds} rounds of {} KiB to {} sockets",
        before / 1024,
        peak / 1024,
        growth / 1024,
        bound / 1024,
        PER_ROUND * 64,
        READERS + STALLED
    );
    ensure!(
        closed == STALLED,
        "{closed} of {STALLED} stalled clients closed with 1008 after {rounds} rounds"
    );
    ensure!(
        growth <= bound,
        "the front door grew by {growth} bytes with {STALLED} stalled clients, over {bound}"
    );
    // The readers are still served, alone now.
    readers[0].send(&format!("broadcast:{PER_ROUND}")).await?;
    for reader in &mut readers {
        ensure!(
            round(reader).await? == PER_ROUND,
            "a reading member missed messages after the stalled ones went"
        );
    }
    ensure!(
        readers[0].ask("sockets").await? == READERS.to_string(),
        "the object still lists stalled sockets"
    );
    // Each stalled client, reading at last, finds what was buffered and
    // then the door's close: 1008.
    for (i, ws) in stalled.iter_mut().enumerate() {
        let end = ws
            .until_end()
            .await
            .with_context(|| format!("stalled client {i}"))?;
        ensure!(
            matches!(end, Got::Close(1008, _)),
            "stalled client {i} ended with {end}, not 1008"
        );
    }
    for reader in readers {
        reader.close(1000).await?;
    }
    drop(server);
    Ok(())
}
