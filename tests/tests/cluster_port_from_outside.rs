//! A cluster host's transport port (`--advertise`) against hostile peers:
//! strangers that connect and say nothing (or start a TLS ClientHello and
//! stall), peers with a certificate of the cluster's CA but without the
//! token, and a peer that has both (anyone holding a certificate of the
//! cluster's CA reads the token from etcd, as here) and then misbehaves.
//!
//! Each test starts its own etcd member, PostgreSQL and one odo host on
//! loopback (`odo_tests::cluster`, TLS everywhere), all torn down however
//! the test ends; skipped, saying why, where etcd or PostgreSQL is not
//! installed (`ODO_REQUIRE_CLUSTER` makes that a failure). Run by `cargo
//! xtask test-cluster` (and ci), not by `cargo test`.

#![cfg(target_os = "linux")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use odo_cluster::{HostTls, TlsFiles};
use odo_core::Frame;
use odo_core::codec;
use odo_core::wire::{Control, Hello, Message, PROTOCOL_VERSION, Request, Response};
use odo_tests::cluster::{self, ClusterSpec, TestCluster};
use odo_tests::topology::proc_memory;
use odo_transport::upgrade::{TcpUpgrade, Upgraded};
use odo_transport::{Channel, ClientConfig, Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The host's cap on connections in their handshake
/// (`odo_transport::ServerConfig::max_unauthenticated`'s default).
const UNAUTHENTICATED_CAP: usize = 64;

fn spec(hosts: usize) -> ClusterSpec {
    ClusterSpec {
        binary: env!("CARGO_BIN_EXE_odo-test-server").into(),
        etcd_members: 1,
        shards: 4,
        lease_ttl_s: 3,
        tls: true,
        storage: "fjall".into(),
        request_timeout_ms: None,
        expected_hosts: Some(hosts),
        netns: false,
    }
}

/// Runs `test` against a fresh cluster of `hosts` hosts (all placed);
/// prints the hosts' logs when it fails. Everything is torn down when this
/// returns or unwinds (the cluster's `Drop`).
fn run(name: &str, hosts: usize, test: impl AsyncFnOnce(&mut TestCluster) -> Result<()>) {
    if !cluster::available_or_skip(name) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let result: Result<()> = runtime.block_on(async {
        let mut cluster = TestCluster::start(spec(hosts))?;
        for i in 0..hosts {
            cluster.start_host(i)?;
        }
        cluster.wait_placed(Duration::from_secs(30), false).await?;
        let result = test(&mut cluster).await;
        if result.is_err() {
            for host in cluster.live() {
                let log = host.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "--- {} ({} log lines, last 40):",
                    host.id,
                    log.lines().count()
                );
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        result
    });
    // Connections the test still held close with the runtime.
    drop(runtime);
    if let Err(e) = result {
        panic!("{name}: {e:#}");
    }
}

/// Open descriptors of process `pid`, and how many of them are sockets.
fn descriptors(pid: u32) -> (usize, usize) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut all = 0;
    let mut sockets = 0;
    for entry in dir.flatten() {
        all += 1;
        if std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    (all, sockets)
}

fn sockets(pid: u32) -> usize {
    descriptors(pid).1
}

/// Sets process `pid`'s descriptor limit (soft and hard) to `limit`.
fn limit_descriptors(pid: u32, limit: usize) -> Result<()> {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .context("a pid")?;
    let limit = Some(limit as u64);
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: limit,
            maximum: limit,
        },
    )
    .context("prlimit(RLIMIT_NOFILE)")?;
    Ok(())
}

/// Connections waiting in the accept queue of the listener on `port`
/// (`/proc/net/tcp`: a listening socket's rx_queue).
fn accept_queue(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[3] != "0A" {
            continue;
        }
        let Some((_, p)) = fields[1].split_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        if let Some((_, rx)) = fields[4].split_once(':') {
            return usize::from_str_radix(rx, 16).unwrap_or(0);
        }
    }
    0
}

/// Waits (up to `within`) until the host took every connection waiting in
/// its accept queue.
async fn accepted_all(port: u16, within: Duration) {
    let give_up = Instant::now() + within;
    while accept_queue(port) > 0 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// TLS with a certificate the cluster's CA signed for `name` (what any
/// holder of a cluster certificate can present).
fn cluster_cert(cluster: &TestCluster, name: &str) -> Result<HostTls> {
    let ca = cluster.ca().context("the cluster has no TLS")?;
    let (cert, key) = ca.issue(name, &["127.0.0.1"])?;
    Ok(HostTls::from_files(&TlsFiles {
        ca: ca.cert_path(),
        cert,
        key,
    })?)
}

async fn tls_connect(tls: &HostTls, addr: SocketAddr) -> Result<Upgraded> {
    let tcp = TcpStream::connect(addr).await?;
    Ok(tls.connect(tcp, &addr.ip().to_string()).await?)
}

/// Reads each of `streams` to its end (the host closed it), until
/// `give_up`: how many ended.
async fn read_to_end_by(streams: &mut [Upgraded], give_up: tokio::time::Instant) -> usize {
    let mut ended = 0;
    for io in streams {
        let mut buf = [0u8; 256];
        let end = tokio::time::timeout_at(give_up, async {
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if end.is_ok() {
            ended += 1;
        }
    }
    ended
}

/// `frame` with its length prefix, as on the wire.
fn framed(frame: &Frame) -> Vec<u8> {
    let bytes = codec::encode(frame).expect("encode");
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

fn hello(token: &str) -> Vec<u8> {
    framed(&Frame {
        request_id: 0,
        message: Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.into(),
            peer: "intruder".into(),
        }),
        body: Bytes::new(),
    })
}

/// A request every host answers at once, without touching an object: a
/// control message (refused: "this endpoint serves objects").
fn control_request(id: u64) -> Vec<u8> {
    framed(&Frame {
        request_id: id,
        message: Message::Request(Request::Control(Control::AssignShard {
            shard: 0,
            epoch: 0,
        })),
        body: Bytes::new(),
    })
}

async fn read_frame(io: &mut (impl AsyncReadExt + Unpin)) -> Result<Frame> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut buf).await?;
    Ok(codec::decode(Bytes::from(buf))?)
}

/// The cluster's transport token, as anyone holding a certificate of the
/// cluster's CA reads it: from etcd (its JSON gateway, over TLS).
async fn cluster_token(cluster: &TestCluster, tls: &HostTls) -> Result<String> {
    use data_encoding::BASE64;
    let addr: SocketAddr = cluster.etcd[0].spec.client().parse()?;
    let mut io = tls_connect(tls, addr).await?;
    let body = format!(
        "{{\"key\":\"{}\"}}",
        BASE64.encode(b"/odo/test/config/token")
    );
    let request = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    io.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    let value = text
        .split("\"value\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .with_context(|| format!("no token in etcd's answer: {text}"))?;
    Ok(String::from_utf8(BASE64.decode(value.as_bytes())?)?)
}

/// A TLS connection with a cluster certificate that passed the handshake
/// with the cluster's token.
async fn authenticated(tls: &HostTls, addr: SocketAddr, token: &str) -> Result<Upgraded> {
    let mut io = tls_connect(tls, addr).await?;
    io.write_all(&hello(token)).await?;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut io)).await??;
    match answer.message {
        Message::Welcome(_) => Ok(io),
        other => bail!("the host answered the hello with {other:?}"),
    }
}

/// Whether the peer closed `tcp` (EOF or reset), without waiting.
fn closed_by_peer(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tcp.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Strangers that open a TCP connection to the transport port and stall
/// inside their TLS ClientHello (slowloris) must be held to the cap on
/// connections in their handshake, as strangers after TLS are: a new one
/// closes the oldest. The cap was once checked only after TLS, so each
/// of them held a socket (and a task) for the whole handshake timeout
/// (5 s), however many came.
#[test]
fn strangers_stalled_in_tls_are_held_to_the_unauthenticated_cap() {
    run(
        "strangers_stalled_in_tls_are_held_to_the_unauthenticated_cap",
        1,
        async |cluster| {
            const STRANGERS: usize = 400;
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            let before = sockets(pid);
            let began = Instant::now();
            let mut strangers = Vec::new();
            for _ in 0..STRANGERS {
                let mut tcp = TcpStream::connect(addr).await?;
                // The first bytes of a TLS record holding a ClientHello,
                // then nothing.
                tcp.write_all(&[0x16, 0x03, 0x01]).await?;
                strangers.push(tcp);
            }
            let opened = began.elapsed();
            accepted_all(addr.port(), Duration::from_secs(2)).await;
            // Well before the handshake timeout (5 s from each accept):
            // by now every stranger but the newest 64 should be closed.
            let check_until = began + Duration::from_millis(3500);
            let mut open = STRANGERS;
            let mut held = 0;
            while Instant::now() < check_until {
                open = strangers.iter().filter(|t| !closed_by_peer(t)).count();
                held = sockets(pid).saturating_sub(before);
                if open <= UNAUTHENTICATED_CAP + 8 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "{STRANGERS} strangers stalled in their ClientHello (opened in {} ms): {} ms after the first, {open} still open, the host holds {held} more sockets than before ({before})",
                opened.as_millis(),
                began.elapsed().as_millis(),
            );
            ensure!(
                open <= UNAUTHENTICATED_CAP + 8,
                "{open} of {STRANGERS} strangers stalled in their TLS handshake are still connected {} ms after the first (the host holds {held} more sockets): the cap of {UNAUTHENTICATED_CAP} connections in their handshake does not apply during TLS",
                began.elapsed().as_millis()
            );
            Ok(())
        },
    );
}

/// What that costs: a host with the 1024 descriptors systemd gives a
/// service by default (odo does not raise its soft limit) and 1,100
/// strangers that connect and say nothing. A real peer (the cluster's
/// certificate and token) must still get in and be answered: the cap on
/// strangers exists so that they "can never keep a real peer out". Once
/// the host ran out of descriptors (its log filled with "accept failed")
/// and the real peer was not even accepted.
#[test]
fn silent_strangers_do_not_lock_a_real_peer_out() {
    run(
        "silent_strangers_do_not_lock_a_real_peer_out",
        1,
        async |cluster| {
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            limit_descriptors(pid, 1024)?;
            let tls = cluster_cert(cluster, "peer")?;
            let token = cluster_token(cluster, &tls).await?;
            let (in_use, _) = descriptors(pid);
            let began = Instant::now();
            let mut strangers = Vec::new();
            for _ in 0..1100 {
                strangers.push(TcpStream::connect(addr).await?);
            }
            accepted_all(addr.port(), Duration::from_millis(500)).await;
            let (during, _) = descriptors(pid);
            let endpoint: Endpoint = format!("tcp:{addr}").parse()?;
            let config = ClientConfig {
                peer_name: "peer".into(),
                upgrade: Some(Arc::new(tls)),
                connect_timeout: Duration::from_secs(3),
                handshake_timeout: Duration::from_secs(3),
                ..ClientConfig::new(token)
            };
            let asked = Instant::now();
            let answered = async {
                let channel = Channel::connect(&endpoint, config).await?;
                let request = Request::Control(Control::AssignShard { shard: 0, epoch: 0 });
                let (response, _) = channel
                    .call(request, Bytes::new(), Duration::from_secs(2))
                    .await?;
                anyhow::Ok(response)
            }
            .await;
            let took = asked.elapsed();
            let accept_failed = h0
                .log_text()
                .lines()
                .filter(|l| l.contains("accept failed"))
                .count();
            println!(
                "h0 at 1024 descriptors ({in_use} in use): 1100 silent strangers opened ({} ms in), h0 holds {during} descriptors; a real peer: {} after {} ms; h0 logged \"accept failed\" {accept_failed} times",
                asked.duration_since(began).as_millis(),
                match &answered {
                    Ok(r) => format!("answered ({})", matches!(r, Response::Error(_))),
                    Err(e) => format!("failed: {e:#}"),
                },
                took.as_millis(),
            );
            drop(strangers);
            ensure!(
                answered.is_ok(),
                "a real peer could not reach h0 while 1100 strangers said nothing: {:#}",
                answered.err().map(|e| format!("{e:#}")).unwrap_or_default()
            );
            Ok(())
        },
    );
}

/// A peer with a certificate of the cluster's CA but not the token:
/// refused at the odo handshake (a wrong token) or dropped at the
/// handshake timeout (nothing sent). Once the host has closed such a
/// connection it must hold nothing of it, whether or not the peer ever
/// closes its end. The TLS bridge's task (`upgrade::bridge`, then a
/// `copy_bidirectional`) once kept waiting to read from the peer after the
/// connection was gone, holding its TCP socket and the bridge's end of
/// the socket pair for as long as the peer stayed silent: forever.
#[test]
fn peers_the_host_dropped_after_tls_hold_no_descriptors() {
    run(
        "peers_the_host_dropped_after_tls_hold_no_descriptors",
        1,
        async |cluster| {
            const PEERS: usize = 40;
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            let tls = cluster_cert(cluster, "intruder")?;
            let before = sockets(pid);
            let mut held = Vec::new();
            for i in 0..PEERS {
                let mut io = tls_connect(&tls, addr).await?;
                if i % 2 == 0 {
                    io.write_all(&hello("not-the-cluster-token")).await?;
                }
                held.push(io);
            }
            let peak = sockets(pid).saturating_sub(before);
            // Each is closed by the host: refused at once, or at the
            // handshake timeout (5 s). Read each to its end; keep them
            // open on this side.
            let give_up = tokio::time::Instant::now() + Duration::from_secs(9);
            let ended = read_to_end_by(&mut held, give_up).await;
            ensure!(
                ended == PEERS,
                "only {ended} of {PEERS} connections were closed by h0"
            );
            let settle = Instant::now() + Duration::from_secs(3);
            let mut still = sockets(pid).saturating_sub(before);
            while still > 4 && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(50)).await;
                still = sockets(pid).saturating_sub(before);
            }
            println!(
                "{PEERS} peers with a cluster certificate but no token (half refused, half silent): h0 held {peak} more sockets at most; after closing all of them it still holds {still} more than before ({before})"
            );
            drop(held);
            ensure!(
                still <= 4,
                "h0 closed all {PEERS} connections, yet still holds {still} more sockets than before they came (about two per connection: its TCP socket and the TLS bridge's end of the socket pair)"
            );
            Ok(())
        },
    );
}

/// An authenticated peer (the cluster's certificate and token, both in
/// every host's hands) that sends requests and reads the answers slowly:
/// the host must stop reading its requests once it holds more than some
/// bounded amount of unsent answers for it. The connection's frame sink
/// once queued every answer (its queue had no bound and the read loop
/// never waited for it), so the host's memory grew as fast as the peer
/// could send.
#[test]
fn answers_a_peer_does_not_read_are_bounded() {
    run(
        "answers_a_peer_does_not_read_are_bounded",
        1,
        async |cluster| {
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            let tls = cluster_cert(cluster, "intruder")?;
            let token = cluster_token(cluster, &tls).await?;
            let io = authenticated(&tls, addr, &token).await?;
            let rss_before = proc_memory(pid, "VmRSS")?;
            let (mut reader, mut writer) = tokio::io::split(io);
            let end = tokio::time::Instant::now() + Duration::from_secs(6);
            // Reads 128 KiB four times a second: the connection stays
            // open (its window opens now and then), the answers pile up.
            let slow_reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 128 * 1024];
                let (mut read, mut closed) = (0usize, false);
                while tokio::time::Instant::now() < end {
                    match tokio::time::timeout(Duration::from_millis(100), reader.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            closed = true;
                            break;
                        }
                        Ok(Ok(n)) => read += n,
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                (read, closed)
            });
            let sender = tokio::spawn(async move {
                let mut id = 1u64;
                let mut sent = 0usize;
                while tokio::time::Instant::now() < end {
                    let mut batch = Vec::with_capacity(64 * 1024);
                    for _ in 0..4096 {
                        batch.extend_from_slice(&control_request(id));
                        id += 1;
                    }
                    match tokio::time::timeout_at(end, writer.write_all(&batch)).await {
                        Ok(Ok(())) => sent += 4096,
                        _ => break,
                    }
                }
                (sent, writer)
            });
            let mut peak = rss_before;
            while tokio::time::Instant::now() < end {
                peak = peak.max(proc_memory(pid, "VmRSS").unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (read, closed) = slow_reader.await?;
            let (sent, writer) = sender.await?;
            drop(writer);
            let grew = peak.saturating_sub(rss_before);
            println!(
                "an authenticated peer sent {sent} requests in 6 s and read {} KiB of answers: h0's RSS {} MiB -> peak {} MiB (+{} MiB)",
                read / 1024,
                rss_before >> 20,
                peak >> 20,
                grew >> 20
            );
            // Served all along (not dropped, which would pass the bound
            // too): answers came, and the connection is still open.
            ensure!(read > 0, "the peer read no answers ({sent} requests taken)");
            ensure!(
                !closed,
                "h0 closed the connection of a peer that reads slowly"
            );
            ensure!(
                grew < 64 << 20,
                "h0's memory grew by {} MiB holding answers its peer does not read ({sent} requests taken, {} KiB of answers read)",
                grew >> 20,
                read / 1024
            );
            Ok(())
        },
    );
}

/// A host out of file descriptors (whatever took them) retries its accept
/// every 50 ms, and logs a warning each time: 20 lines a second for as long
/// as it lasts, while the same server logs strangers it drops at most once
/// per 5 s (and odo's HTTP front door rate-limits its accept errors too,
/// `odo-router/tests/accept_errors.rs`). Here h0 is left only a few
/// descriptors beyond those it uses, and strangers connect.
#[test]
fn accept_failures_are_logged_at_a_sane_rate() {
    run(
        "accept_failures_are_logged_at_a_sane_rate",
        1,
        async |cluster| {
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            let (in_use, _) = descriptors(pid);
            let limit = in_use + 16;
            limit_descriptors(pid, limit)?;
            let before = h0.log_text().lines().count();
            let mut strangers = Vec::new();
            for _ in 0..64 {
                strangers.push(TcpStream::connect(addr).await?);
            }
            let watched = Duration::from_secs(3);
            tokio::time::sleep(watched).await;
            let log = h0.log_text();
            let lines: Vec<&str> = log.lines().skip(before).collect();
            let accept_failed = lines.iter().filter(|l| l.contains("accept failed")).count();
            println!(
                "h0 limited to {limit} descriptors ({in_use} in use), 64 strangers: {} log lines in {} s, {accept_failed} of them \"accept failed\"",
                lines.len(),
                watched.as_secs()
            );
            drop(strangers);
            ensure!(
                accept_failed >= 1,
                "no accept failed: the test did not take h0's descriptors ({} log lines)",
                lines.len()
            );
            ensure!(
                accept_failed <= 2,
                "h0 logged \"accept failed\" {accept_failed} times in {} s while out of descriptors",
                watched.as_secs()
            );
            Ok(())
        },
    );
}

/// An authenticated peer that announces a frame of the maximum size (16
/// MiB), sends all but its last bytes and goes silent: the reader has
/// reserved and filled the whole frame, and nothing ever ends the wait, so
/// each such connection holds 16 MiB for good (up to 1024 connections:
/// 16 GiB). "Every wait has an end" (ARCHITECTURE.md): a frame that has
/// begun must be finished in bounded time (here: 10 s) or the connection
/// dropped. Idle connections between frames are not concerned.
#[test]
fn a_frame_cut_in_the_middle_is_not_held_forever() {
    run(
        "a_frame_cut_in_the_middle_is_not_held_forever",
        1,
        async |cluster| {
            const PEERS: usize = 4;
            let h0 = cluster.host(0).context("h0")?;
            let (pid, addr) = (h0.server.pid, h0.advertise);
            let tls = cluster_cert(cluster, "intruder")?;
            let token = cluster_token(cluster, &tls).await?;
            let rss_before = proc_memory(pid, "VmRSS")?;
            let mut cut = Vec::new();
            for _ in 0..PEERS {
                let mut io = authenticated(&tls, addr, &token).await?;
                let len: u32 = 16 * 1024 * 1024;
                io.write_all(&len.to_be_bytes()).await?;
                io.write_all(&vec![0u8; len as usize - 4096]).await?;
                io.flush().await?;
                cut.push(io);
            }
            let stalled = Instant::now();
            let rss_stalled = proc_memory(pid, "VmRSS")?;
            // Each connection should be dropped within 10 s of its stall.
            let give_up = tokio::time::Instant::now() + Duration::from_secs(12);
            let dropped = read_to_end_by(&mut cut, give_up).await;
            let rss_after = proc_memory(pid, "VmRSS")?;
            println!(
                "{PEERS} authenticated peers stalled 4 KiB short of a 16 MiB frame: h0's RSS {} -> {} MiB; {} ms later {dropped} dropped, RSS {} MiB",
                rss_before >> 20,
                rss_stalled >> 20,
                stalled.elapsed().as_millis(),
                rss_after >> 20
            );
            drop(cut);
            ensure!(
                dropped == PEERS,
                "{} of {PEERS} connections stalled in the middle of a 16 MiB frame were still held after {} ms (h0's RSS {} MiB, {} before they came)",
                PEERS - dropped,
                stalled.elapsed().as_millis(),
                rss_after >> 20,
                rss_before >> 20
            );
            Ok(())
        },
    );
}
