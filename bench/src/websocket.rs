//! `cargo xtask bench websocket`: the room contract over WebSockets,
//! `odo serve` (fjall, fsync on) against Cloudflare's workerd serving the
//! same contract (`Room` on the Hibernation API, SQLite, fsync on), in
//! alternation in one run. A Rust load client (tokio-tungstenite):
//!
//! 1. Fan-out: 100 rooms of 10 members, each member sending as soon as its
//!    own echo is back: durable messages/s, deliveries/s, p50/p99 from send
//!    to the sender's echo.
//! 2. Idle: 10,000 sockets over 1,000 rooms left alone until every object
//!    sleeps (shown for odo: `live_objects` 0): memory per socket over all
//!    the server's processes, then the first message into each sleeping
//!    room (p50/p99, its durable write included). The sockets open in two
//!    halves, each left until every object sleeps: what one more idle
//!    socket costs is the RSS the second half added, per socket (what the
//!    first half added also holds what a server takes once, warming up,
//!    whatever the number of sockets); the RSS over all sockets against a
//!    server just started is shown beside it.
//! 3. odo only: a worker SIGKILLed in the middle of run 1: sockets dropped,
//!    echoed messages missing from the history, the longest pause a sender saw.
//! 4. One big room: 10,000 members, one sender, 100-byte messages:
//!    deliveries/s. The sender keeps 16 messages in flight
//!    (`ODO_BENCH_WS_WINDOW`; 1 waits for each echo before the next send).
//!
//! `DURATION` (default 5s) sets runs 1, 3 and 4; `ODO_BENCH_WS_IDLE` (default
//! 10000) the sockets of runs 2 and 4; `ODO_BENCH_WS_RUNS` (default
//! `fanout,idle,kill,big`) which runs to make, for example
//! `ODO_BENCH_WS_RUNS=big cargo xtask bench websocket`.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::e2e::cpu::{process_rss, tree_rss};
use crate::e2e::servers::{self as e2e, Pinning, Running, Server};
use crate::stats::{Latencies, ratio};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Messages the big room's sender keeps in flight by default
/// (`ODO_BENCH_WS_WINDOW`).
const BIG_ROOM_WINDOW: u64 = 16;

/// A bound on any one wait of the load client.
const GUARD: Duration = Duration::from_secs(30);

/// What one fan-out run measured.
#[derive(Debug, Default, Clone)]
struct FanOut {
    messages_per_s: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Sockets that ended, by how.
    ended: HashMap<String, u64>,
    /// The longest a sender waited for an echo.
    longest_pause_ms: f64,
    /// Echoed messages per room: (N, text).
    echoed: Vec<Vec<(u64, String)>>,
}

/// What one idle run measured.
#[derive(Debug, Default, Clone)]
struct Idle {
    /// RSS over all the server's processes that the second half of the
    /// sockets added, per socket.
    bytes_per_socket: f64,
    /// The share of the server's main process (odo: the front door).
    main_bytes_per_socket: f64,
    /// RSS that all sockets added to a server just started, per socket.
    all_bytes_per_socket: f64,
    main_all_bytes_per_socket: f64,
    asleep: Option<bool>,
    first_p50_ms: f64,
    first_p99_ms: f64,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let root = e2e::workspace_root();
    let shared = std::env::var_os("ODO_BENCH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/bench"));
    raise_fd_limit();
    let odo = e2e::odo_binary(&root)?;
    let workerd = match e2e::workerd_binary(&root, &shared) {
        Ok(w) => Some(w),
        Err(e) => {
            println!("workerd unavailable: {e:#}");
            None
        }
    };
    let duration = Duration::from_secs_f64(
        std::env::var("DURATION")
            .ok()
            .and_then(|d| d.trim_end_matches('s').parse().ok())
            .unwrap_or(5.0),
    );
    let idle_sockets: usize = std::env::var("ODO_BENCH_WS_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let start = |server: Server| -> anyhow::Result<Running> {
        match server {
            Server::Odo => e2e::start_odo(&odo, Pinning::None, false),
            Server::Workerd => {
                e2e::start_workerd(workerd.as_ref().context("no workerd")?, Pinning::None)
            }
            Server::Limit | Server::OdoSql => {
                bail!("{} is not part of the WebSocket benchmark", server.name())
            }
        }
    };
    let servers: Vec<Server> = if workerd.is_some() {
        vec![Server::Odo, Server::Workerd, Server::Odo, Server::Workerd]
    } else {
        vec![Server::Odo, Server::Odo]
    };
    println!(
        "websocket: odo serve --workers 2 (fjall, SyncData) and workerd (SQLite, fsync), alternating; \
         fan-out {}s per run",
        duration.as_secs_f64()
    );

    let runs = std::env::var("ODO_BENCH_WS_RUNS").unwrap_or_else(|_| "fanout,idle,kill,big".into());
    let wanted = |name: &str| runs.split(',').any(|r| r == name);

    // 1. Fan-out.
    let mut fan: HashMap<&str, Vec<FanOut>> = HashMap::new();
    for &server in servers.iter().filter(|_| wanted("fanout")) {
        let running = start(server)?;
        let result = rt.block_on(fan_out(&running.base, 100, 10, duration, None));
        running.stop();
        let result = result?;
        println!(
            "  fan-out {:8} {:>9.0} msg/s {:>10.0} deliveries/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            server.name(),
            result.messages_per_s,
            result.deliveries_per_s,
            result.p50_ms,
            result.p99_ms
        );
        fan.entry(server.name()).or_default().push(result);
    }
    let mean = |runs: &[FanOut], f: fn(&FanOut) -> f64| {
        runs.iter().map(f).sum::<f64>() / runs.len().max(1) as f64
    };
    if let (Some(o), Some(w)) = (fan.get("odo"), fan.get("workerd")) {
        println!(
            "  fan-out odo/workerd: msg/s {} (goal >= 10x), p99 {} (goal < 1x)",
            ratio(mean(o, |r| r.messages_per_s), mean(w, |r| r.messages_per_s)),
            ratio(mean(o, |r| r.p99_ms), mean(w, |r| r.p99_ms)),
        );
    }

    // 2. Idle sockets, then the first message into each sleeping room.
    for server in if !wanted("idle") {
        vec![]
    } else if workerd.is_some() {
        vec![Server::Odo, Server::Workerd]
    } else {
        vec![Server::Odo]
    } {
        let running = start(server)?;
        let result = rt.block_on(idle(&running, server, idle_sockets, idle_sockets / 10));
        running.stop();
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                println!("  idle {:8} failed: {e:#}", server.name());
                continue;
            }
        };
        println!(
            "  idle {:8} {} sockets: {:>7.0} bytes/socket for the second half (goal <= 2048; \
             main process {:.0}); {:.0} over all against a fresh server (main {:.0}); \
             asleep: {}, first message p50 {:.2} ms p99 {:.2} ms (goal p99 < 5 ms)",
            server.name(),
            idle_sockets,
            result.bytes_per_socket,
            result.main_bytes_per_socket,
            result.all_bytes_per_socket,
            result.main_all_bytes_per_socket,
            match result.asleep {
                Some(true) => "shown (live_objects 0)",
                Some(false) => "NOT all asleep",
                None => "not shown (workerd says nothing)",
            },
            result.first_p50_ms,
            result.first_p99_ms
        );
    }

    // 3. A worker SIGKILLed in the middle of a fan-out run (odo only).
    if wanted("kill") {
        kill_run(&rt, start(Server::Odo)?, duration)?;
    }

    // 4. One big room.
    for server in if !wanted("big") {
        vec![]
    } else if workerd.is_some() {
        vec![Server::Odo, Server::Workerd]
    } else {
        vec![Server::Odo]
    } {
        let running = start(server)?;
        let result = rt.block_on(big_room(&running.base, idle_sockets, duration));
        running.stop();
        match result {
            Ok(rate) => println!(
                "  big room {:8} {idle_sockets} members: {rate:>10.0} deliveries/s (goal >= 300k)",
                server.name(),
            ),
            Err(e) => println!("  big room {:8} failed: {e:#}", server.name()),
        }
    }
    Ok(())
}

fn kill_run(
    rt: &tokio::runtime::Runtime,
    running: Running,
    duration: Duration,
) -> anyhow::Result<()> {
    let result = rt.block_on(async {
        let base = running.base.clone();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(duration / 2).await;
            let pid = first_worker_pid(&base)?;
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            anyhow::ensure!(killed.success(), "kill -KILL {pid} failed");
            anyhow::Ok(pid)
        });
        let result = fan_out(&running.base, 100, 10, duration, None).await?;
        let pid = killer.await??;
        let lost = lost_from_history(&running.base, &result.echoed).await?;
        anyhow::Ok((result, pid, lost))
    });
    running.stop();
    let (result, pid, lost) = result?;
    let dropped: u64 = result
        .ended
        .iter()
        .filter(|(how, _)| !how.starts_with("close 1012"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "  kill: worker {pid} SIGKILLed mid-run: {:.0} msg/s; sockets dropped {dropped} (goal 0), \
         closed 1012 (outcome unknown) {}, echoed messages missing from history {lost} (goal 0), \
         longest pause {:.0} ms",
        result.messages_per_s,
        result.ended.get("close 1012").copied().unwrap_or(0),
        result.longest_pause_ms
    );

    Ok(())
}

async fn connect(base: &str, path: &str) -> anyhow::Result<Ws> {
    let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
    // tungstenite zero-fills its read buffer up to `read_buffer_size`
    // before every read (128 KiB by default): with 1,000 sockets each
    // reading small frames, that memset was a fifth of the machine's CPU,
    // taken from the server under test. 4 KiB holds a frame of the
    // contract's messages.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
    let (ws, _) = tokio::time::timeout(GUARD, connect)
        .await
        .map_err(|_| anyhow!("upgrade of {path}: no answer"))??;
    Ok(ws)
}

/// Connects `count` sockets, `parallel` at a time.
async fn connect_many(base: &str, paths: Vec<String>) -> anyhow::Result<Vec<Ws>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(50) {
        let batch = chunk.iter().map(|p| connect(base, p));
        for ws in futures_util::future::join_all(batch).await {
            out.push(ws?);
        }
    }
    Ok(out)
}

/// Reads until the echo of `text`; counts every message read.
async fn until_echo(
    ws: &mut Ws,
    text: &str,
    delivered: &AtomicU64,
) -> anyhow::Result<Result<u64, String>> {
    loop {
        let next = tokio::time::timeout(GUARD, ws.next())
            .await
            .map_err(|_| anyhow!("no echo"))?;
        match next {
            Some(Ok(Message::Text(line))) => {
                delivered.fetch_add(1, Ordering::Relaxed);
                if let Some((n, m)) = line.split_once(':')
                    && m == text
                {
                    return Ok(Ok(n.parse().unwrap_or(0)));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return Ok(Err(format!("close {code}")));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Ok(Err("dropped".into())),
        }
    }
}

async fn fan_out(
    base: &str,
    rooms: usize,
    members: usize,
    duration: Duration,
    _unused: Option<()>,
) -> anyhow::Result<FanOut> {
    let tag = std::process::id();
    let paths: Vec<String> = (0..rooms * members)
        .map(|i| format!("/room/fan-{tag}-{}/ws", i % rooms))
        .collect();
    let sockets = connect_many(base, paths).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (delivered, stop) = (delivered.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::with_capacity(1024);
            let mut echoed = Vec::new();
            let mut longest = Duration::ZERO;
            let mut end = None;
            for k in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let text = format!("m{i}-{k}");
                let sent = Instant::now();
                if ws.send(Message::text(text.clone())).await.is_err() {
                    end = Some("dropped".to_owned());
                    break;
                }
                match until_echo(&mut ws, &text, &delivered).await {
                    Ok(Ok(n)) => {
                        let took = sent.elapsed();
                        longest = longest.max(took);
                        latencies.push(took);
                        echoed.push((n, text));
                    }
                    Ok(Err(how)) => {
                        end = Some(how);
                        break;
                    }
                    Err(_) => {
                        end = Some("no echo".to_owned());
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (i % rooms, latencies, echoed, longest, end)
        }));
    }
    tokio::time::sleep(duration).await;
    let delivered_in_window = delivered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Latencies::with_capacity(1 << 16);
    let mut result = FanOut {
        echoed: vec![Vec::new(); rooms],
        ..FanOut::default()
    };
    let mut messages = 0u64;
    for task in tasks {
        let (room, latencies, echoed, longest, end) = task.await?;
        messages += echoed.len() as u64;
        all.extend(latencies);
        result.echoed[room].extend(echoed);
        result.longest_pause_ms = result.longest_pause_ms.max(longest.as_secs_f64() * 1e3);
        if let Some(end) = end {
            *result.ended.entry(end).or_default() += 1;
        }
    }
    result.messages_per_s = messages as f64 / elapsed;
    result.deliveries_per_s = delivered_in_window as f64 / duration.as_secs_f64();
    if all.len() > 0 {
        result.p50_ms = all.percentile(50.0).as_secs_f64() * 1e3;
        result.p99_ms = all.percentile(99.0).as_secs_f64() * 1e3;
    }
    Ok(result)
}

/// Echoed messages the history does not hold, over every room.
async fn lost_from_history(base: &str, echoed: &[Vec<(u64, String)>]) -> anyhow::Result<u64> {
    let tag = std::process::id();
    let mut lost = 0;
    for (room, messages) in echoed.iter().enumerate() {
        let body = http_get(base, &format!("/room/fan-{tag}-{room}/history?limit=1000"))?;
        let history: Vec<(u64, String)> = serde_json::from_str(&body)?;
        let stored: HashMap<u64, &str> = history.iter().map(|(n, m)| (*n, m.as_str())).collect();
        let first = history.first().map_or(u64::MAX, |(n, _)| *n);
        let last = history.last().map_or(0, |(n, _)| *n);
        for (n, m) in messages {
            if *n > last || (*n >= first && stored.get(n) != Some(&m.as_str())) {
                lost += 1;
            }
        }
    }
    Ok(lost)
}

async fn idle(
    running: &Running,
    server: Server,
    sockets: usize,
    rooms: usize,
) -> anyhow::Result<Idle> {
    let tag = std::process::id();
    let pid = running.child.id();
    let before = (tree_rss(pid), process_rss(pid));
    let paths: Vec<String> = (0..sockets)
        .map(|i| format!("/room/idle-{tag}-{}/ws", i % rooms))
        .collect();
    let half = sockets / 2;
    let mut all = connect_many(&running.base, paths[..half].to_vec()).await?;
    let asleep_first = all_asleep(running, server).await?;
    let middle = settled_rss(pid).await;
    all.extend(connect_many(&running.base, paths[half..].to_vec()).await?);
    // Every room woke again (its accepts); now all sleep.
    let asleep = all_asleep(running, server).await?;
    let after = settled_rss(pid).await;
    let asleep = asleep.map(|a| a && asleep_first == Some(true));
    let per = |from: u64, to: u64, n: usize| to.saturating_sub(from) as f64 / n.max(1) as f64;
    let mut first = Latencies::with_capacity(rooms);
    let delivered = AtomicU64::new(0);
    for (room, ws) in all.iter_mut().take(rooms).enumerate() {
        let text = format!("wake {room}");
        let sent = Instant::now();
        ws.send(Message::text(text.clone())).await?;
        match until_echo(ws, &text, &delivered).await? {
            Ok(_) => first.push(sent.elapsed()),
            Err(how) => bail!("room {room}: {how}"),
        }
    }
    drop(all);
    Ok(Idle {
        bytes_per_socket: per(middle.0, after.0, sockets - half),
        main_bytes_per_socket: per(middle.1, after.1, sockets - half),
        all_bytes_per_socket: per(before.0, after.0, sockets),
        main_all_bytes_per_socket: per(before.1, after.1, sockets),
        asleep,
        first_p50_ms: first.percentile(50.0).as_secs_f64() * 1e3,
        first_p99_ms: first.percentile(99.0).as_secs_f64() * 1e3,
    })
}

/// The RSS of `pid` with its descendants, and of `pid` alone, once it has
/// settled (an allocator gives back what the objects that just went to
/// sleep freed a while later): two reads 500 ms apart within 64 KiB, or
/// the last of 20.
async fn settled_rss(pid: u32) -> (u64, u64) {
    let mut last = (tree_rss(pid), process_rss(pid));
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (tree_rss(pid), process_rss(pid));
        let settled = now.0.abs_diff(last.0) < 64 * 1024 && now.1.abs_diff(last.1) < 64 * 1024;
        last = now;
        if settled {
            break;
        }
    }
    last
}

/// Waits until every odo object sleeps (`live_objects` 0, within two
/// minutes: whether they did); workerd says nothing of its objects, so it
/// gets 15 s (`None`).
async fn all_asleep(running: &Running, server: Server) -> anyhow::Result<Option<bool>> {
    match server {
        Server::Odo | Server::OdoSql => {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(120) {
                if live_objects(&running.base)? == 0 {
                    return Ok(Some(true));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Some(false))
        }
        Server::Workerd | Server::Limit => {
            tokio::time::sleep(Duration::from_secs(15)).await;
            Ok(None)
        }
    }
}

async fn big_room(base: &str, members: usize, duration: Duration) -> anyhow::Result<f64> {
    let tag = std::process::id();
    let path = format!("/room/big-{tag}/ws");
    let mut sockets = connect_many(base, vec![path; members]).await?;
    let mut sender = sockets.pop().context("no member")?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut ws in sockets {
        let (delivered, stop) = (delivered.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) | Err(_) => {}
                    Ok(Some(Err(_)) | None) => break,
                }
            }
        }));
    }
    // The sender keeps up to `window` messages in flight (sent, its own
    // echo not back yet), as a chat client that does not wait for one
    // message's echo before typing the next: the room's turns and the
    // door's writes may then batch, as they would under real load.
    let window: u64 = std::env::var("ODO_BENCH_WS_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BIG_ROOM_WINDOW)
        .max(1);
    let body = "x".repeat(90);
    let own = AtomicU64::new(0);
    let started = Instant::now();
    let (mut sent, mut echoed) = (0u64, 0u64);
    let text = |k: u64| format!("{k:09}{body}");
    while started.elapsed() < duration || echoed < sent {
        while sent - echoed < window && started.elapsed() < duration {
            sender.feed(Message::text(text(sent))).await?;
            sent += 1;
        }
        sender.flush().await?;
        if until_echo(&mut sender, &text(echoed), &own).await?.is_err() {
            bail!("the sender was closed");
        }
        echoed += 1;
    }
    let rate = (delivered.load(Ordering::Relaxed) + own.load(Ordering::Relaxed)) as f64
        / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    Ok(rate)
}

/// `GET path` on `base`, the body.
fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(GUARD))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("no HTTP answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

fn live_objects(base: &str) -> anyhow::Result<u64> {
    let workers: serde_json::Value = serde_json::from_str(&http_get(base, "/_odo/workers")?)?;
    Ok(workers
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["live_objects"].as_u64()).sum())
        .unwrap_or(0))
}

fn first_worker_pid(base: &str) -> anyhow::Result<u32> {
    let workers: serde_json::Value = serde_json::from_str(&http_get(base, "/_odo/workers")?)?;
    workers
        .as_array()
        .and_then(|ws| ws.iter().find_map(|w| w["pid"].as_u64()))
        .map(|p| p as u32)
        .context("no worker pid")
}

/// Raises the open-file limit to its hard limit: every socket is a
/// descriptor.
fn raise_fd_limit() {
    #[cfg(unix)]
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    #[cfg(unix)]
    {
        let limit = getrlimit(Resource::Nofile);
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}
