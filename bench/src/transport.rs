//! The `transport` benchmark: odo's [`Channel`] against a raw
//! length-prefixed tokio echo over the same socket type, in one run.
//!
//! For UDS and TCP it measures round-trip latency with one call in flight
//! (64 B and 16 KiB bodies) and throughput with 64 calls in flight (64 B
//! bodies), and prints odo/raw for each (latency: lower is better, target
//! within 1.5x; throughput: higher is better, target at least 0.8x).
//!
//! Throughput has two raw baselines. The first, which the target is set
//! against, is a raw client that writes each request as it is made (one
//! write per frame, the echo server batching its answers): what plain
//! tokio code does without a multiplexer. The second is the socket's
//! ceiling: one task pumping frames with every free slot of the window in
//! a single write, paying nothing per call. odo pays, per call, what 64
//! independent callers need (an envelope encoded and decoded on both ends,
//! a slot, a wake-up), so its ratio to the ceiling says how much of the
//! socket the per-call work leaves.
//!
//! Each measurement runs [`ROUNDS`] short rounds, each measuring odo and
//! then raw back to back; the round with the median odo/raw ratio is shown.
//! A burst of load from elsewhere on the machine (or a change in how fast
//! idle cores wake up, which dominates one-call-in-flight latency in a VM)
//! then skews both sides of a pair alike instead of one side alone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use odo_core::Namespace;
use odo_core::wire::{CallMeta, Request, Response, RpcCall, Target};
use odo_transport::{Channel, ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, oneshot};

use crate::stats::{Latencies, ratio, us};

/// How long each round of a measurement runs (after a short warm-up).
const MEASURE: Duration = Duration::from_millis(400);
const WARM_UP: Duration = Duration::from_millis(100);
/// Rounds per measurement, alternating odo and raw.
const ROUNDS: usize = 5;
/// A call or echo taking this long means something is stuck: fail loudly.
const STALL: Duration = Duration::from_secs(10);
/// Calls in flight for the throughput measurements.
const IN_FLIGHT: usize = 64;
const TOKEN: &str = "bench-token";

pub(crate) fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the benchmark runtime")?;
    runtime.block_on(async {
        let dir = tempfile::tempdir().context("temp dir for sockets")?;
        let socket_dir = dir.path().join("run");
        println!(
            "{:<5} {:<22} {:>22} {:>22} {:>8}",
            "net", "measurement", "odo", "raw", "odo/raw"
        );
        #[cfg(unix)]
        {
            let uds_odo = Endpoint::Unix(socket_dir.join("odo.sock"));
            let uds_raw = Endpoint::Unix(socket_dir.join("raw.sock"));
            compare("uds", &uds_odo, &uds_raw).await?;
        }
        #[cfg(not(unix))]
        {
            let _ = socket_dir;
            println!("uds   skipped: this platform has no Unix sockets");
        }
        let tcp = Endpoint::tcp_loopback_any_port();
        compare("tcp", &tcp, &tcp).await?;
        println!("targets: latency odo/raw <= 1.50x, throughput odo/raw >= 0.80x");
        Ok(())
    })
}

/// Runs every measurement for one socket type.
async fn compare(net: &str, odo_at: &Endpoint, raw_at: &Endpoint) -> anyhow::Result<()> {
    let odo = OdoSide::start(odo_at).await?;
    let raw = RawSide::start(raw_at).await?;
    for size in [64, 16 * 1024] {
        let body = Bytes::from(vec![0x5a; size]);
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let mut odo_lat = latency(|| odo.call(body.clone())).await?;
            let mut raw_lat = latency(|| raw.call(body.clone())).await?;
            rounds.push((
                odo_lat.percentile(50.0),
                odo_lat.percentile(99.0),
                raw_lat.percentile(50.0),
                raw_lat.percentile(99.0),
            ));
        }
        rounds.sort_by(|a, b| {
            let ra = a.0.as_secs_f64() / a.2.as_secs_f64();
            let rb = b.0.as_secs_f64() / b.2.as_secs_f64();
            ra.total_cmp(&rb)
        });
        let (o50, o99, r50, r99) = rounds[ROUNDS / 2];
        println!(
            "{net:<5} {:<22} {:>22} {:>22} {:>8}",
            format!("latency {} p50/p99 µs", human(size)),
            format!("{}/{}", us(o50), us(o99)),
            format!("{}/{}", us(r50), us(r99)),
            ratio(o50.as_secs_f64(), r50.as_secs_f64()),
        );
    }
    let body = Bytes::from(vec![0x5a; 64]);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let (odo_rate, latencies) = odo.throughput(body.clone()).await?;
        let raw_rate = raw.throughput(body.clone(), Writes::PerFrame).await?;
        let ceiling = raw.throughput(body.clone(), Writes::Batched).await?;
        rounds.push((odo_rate, raw_rate, ceiling, latencies));
    }
    rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (odo_rate, raw_rate, ceiling, mut under_load) = rounds.swap_remove(ROUNDS / 2);
    println!(
        "{net:<5} {:<22} {:>22} {:>22} {:>8}",
        format!("{IN_FLIGHT} in flight calls/s"),
        format!("{odo_rate:.0}"),
        format!("{raw_rate:.0}"),
        ratio(odo_rate, raw_rate),
    );
    println!(
        "{net:<5} {:<22} {:>22} {:>22} {:>8}",
        "  vs batched raw pump",
        "",
        format!("{ceiling:.0}"),
        ratio(odo_rate, ceiling),
    );
    println!(
        "{net:<5} {:<22} {:>22}   ({} calls)",
        format!("{IN_FLIGHT} in flight p50/p99 µs"),
        format!(
            "{}/{}",
            us(under_load.percentile(50.0)),
            us(under_load.percentile(99.0))
        ),
        under_load.len(),
    );
    odo.stop().await;
    raw.stop().await;
    Ok(())
}

fn human(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// One call at a time for [`MEASURE`], after a warm-up.
async fn latency<F, Fut>(mut call: F) -> anyhow::Result<Latencies>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        call().await?;
    }
    let mut samples = Latencies::with_capacity(100_000);
    let start = Instant::now();
    while start.elapsed() < MEASURE {
        let t = Instant::now();
        call().await?;
        samples.push(t.elapsed());
    }
    Ok(samples)
}

/// odo's server (echo handler) and one channel to it.
struct OdoSide {
    channel: Channel,
    request: Request,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl OdoSide {
    async fn start(endpoint: &Endpoint) -> anyhow::Result<OdoSide> {
        let server = Server::bind(endpoint, ServerConfig::new(TOKEN)).await?;
        let endpoint = server.endpoint().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let echo = handler_fn(|_request, body| async move { (Response::Rpc, body) });
        let serving = tokio::spawn(server.serve(Arc::new(echo), async move {
            let _ = stopped.await;
        }));
        let channel = Channel::connect(&endpoint, ClientConfig::new(TOKEN)).await?;
        let ns = Namespace::new("BENCH");
        let id = ns.id_from_name("object");
        // A realistic envelope: what a router sends for an RPC call.
        let request = Request::Rpc(RpcCall {
            target: Target {
                object: odo_core::ObjectAddress {
                    class: "BENCH".into(),
                    id,
                    name: Some("object".into()),
                },
                shard: id.shard(16),
                epoch: 1,
            },
            meta: CallMeta::default(),
            method: "echo".into(),
        });
        Ok(OdoSide {
            channel,
            request,
            stop,
            serving,
        })
    }

    async fn call(&self, body: Bytes) -> anyhow::Result<()> {
        let len = body.len();
        let (_, answer) = self.channel.call(self.request.clone(), body, STALL).await?;
        anyhow::ensure!(
            answer.len() == len,
            "odo echo returned {} bytes",
            answer.len()
        );
        Ok(())
    }

    /// Calls per second with [`IN_FLIGHT`] callers on the one channel, and
    /// the latencies of the calls measured.
    async fn throughput(&self, body: Bytes) -> anyhow::Result<(f64, Latencies)> {
        let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let end = Instant::now() + WARM_UP + MEASURE;
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..IN_FLIGHT {
            let channel = self.channel.clone();
            let request = self.request.clone();
            let body = body.clone();
            let measuring = measuring.clone();
            callers.spawn(async move {
                let mut latencies = Latencies::with_capacity(16 * 1024);
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    channel.call(request.clone(), body.clone(), STALL).await?;
                    if measuring.load(Ordering::Relaxed) {
                        // Counted per caller (no shared counter to contend on).
                        latencies.push(t.elapsed());
                    }
                }
                anyhow::Ok(latencies)
            });
        }
        tokio::time::sleep(WARM_UP).await;
        measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let mut latencies = Latencies::default();
        while let Some(caller) = callers.join_next().await {
            latencies.extend(caller??);
        }
        let rate = latencies.len() as f64 / start.elapsed().as_secs_f64();
        Ok((rate, latencies))
    }

    async fn stop(self) {
        drop(self.channel);
        let _ = self.stop.send(());
        let _ = self.serving.await;
    }
}

/// A raw tokio stream of either socket type.
trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> RawStream for T {}

/// A raw length-prefixed echo server (plain tokio reads and writes) and
/// connections to it.
struct RawSide {
    endpoint: Endpoint,
    /// One connection for the latency measurements.
    conn: tokio::sync::Mutex<Box<dyn RawStream>>,
    accept: tokio::task::JoinHandle<()>,
    _socket: Option<std::path::PathBuf>,
}

impl RawSide {
    async fn start(endpoint: &Endpoint) -> anyhow::Result<RawSide> {
        let (accept, endpoint, socket) = match endpoint {
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let _ = std::fs::remove_file(path);
                let listener = tokio::net::UnixListener::bind(path)?;
                let accept = tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(raw_echo(stream));
                    }
                });
                (accept, endpoint.clone(), Some(path.clone()))
            }
            Endpoint::Tcp { host, port } => {
                let listener = tokio::net::TcpListener::bind((host.as_str(), *port)).await?;
                let local = listener.local_addr()?;
                let accept = tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(raw_echo(stream));
                    }
                });
                let endpoint = Endpoint::Tcp {
                    host: local.ip().to_string(),
                    port: local.port(),
                };
                (accept, endpoint, None)
            }
            #[cfg(windows)]
            Endpoint::Pipe(_) => anyhow::bail!("the raw baseline has no named-pipe variant"),
        };
        let conn = raw_connect(&endpoint).await?;
        Ok(RawSide {
            endpoint,
            conn: tokio::sync::Mutex::new(conn),
            accept,
            _socket: socket,
        })
    }

    async fn call(&self, body: Bytes) -> anyhow::Result<()> {
        tokio::time::timeout(STALL, self.call_inner(body))
            .await
            .context("raw echo stalled")?
    }

    async fn call_inner(&self, body: Bytes) -> anyhow::Result<()> {
        let mut conn = self.conn.lock().await;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        conn.write_all(&frame).await?;
        let len = conn.read_u32().await? as usize;
        let mut answer = vec![0; len];
        conn.read_exact(&mut answer).await?;
        anyhow::ensure!(len == body.len(), "raw echo returned {len} bytes");
        Ok(())
    }

    /// Frames per second with [`IN_FLIGHT`] requests pipelined on one
    /// connection: a writer task sends while fewer than 64 are outstanding,
    /// a reader task counts the echoes.
    async fn throughput(&self, body: Bytes, writes: Writes) -> anyhow::Result<f64> {
        let conn = raw_connect(&self.endpoint).await?;
        let (read, write) = tokio::io::split(conn);
        let window = Arc::new(Semaphore::new(IN_FLIGHT));
        let end = Instant::now() + WARM_UP + MEASURE;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let writer = {
            let window = window.clone();
            tokio::spawn(keep_window_full(write, window, frame, writes))
        };
        let reader = tokio::spawn(async move {
            let mut read = BufReader::new(read);
            let mut buf = vec![0; 64 * 1024];
            let mut received = 0u64;
            let mut counted = 0u64;
            let measure_from = Instant::now() + WARM_UP;
            let mut start = None;
            loop {
                let len = match tokio::time::timeout(STALL, read.read_u32())
                    .await
                    .context("raw echo stalled")?
                {
                    Ok(len) => len as usize,
                    Err(_) => break,
                };
                read.read_exact(&mut buf[..len]).await?;
                received += 1;
                window.add_permits(1);
                if Instant::now() >= measure_from {
                    start.get_or_insert_with(Instant::now);
                    counted += 1;
                }
                if Instant::now() >= end {
                    break;
                }
            }
            let elapsed = start.map(|s| s.elapsed()).unwrap_or_default();
            anyhow::Ok((received, counted, elapsed))
        });
        let (_received, counted, elapsed) = reader.await??;
        writer.abort();
        Ok(counted as f64 / elapsed.as_secs_f64().max(1e-9))
    }

    async fn stop(self) {
        self.accept.abort();
        if let Some(path) = &self._socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How the raw client writes its pipelined requests.
#[derive(Debug, Clone, Copy)]
enum Writes {
    /// One write per frame, as each request is made.
    PerFrame,
    /// Every free slot of the window in one write.
    Batched,
}

/// Writes `frame` whenever the window has room, until aborted. (Stopping on
/// its own clock could leave the reader waiting for the echo of nothing.)
async fn keep_window_full(
    mut write: impl tokio::io::AsyncWrite + Unpin,
    window: Arc<Semaphore>,
    frame: Vec<u8>,
    writes: Writes,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(IN_FLIGHT * frame.len());
    loop {
        window.acquire().await?.forget();
        match writes {
            Writes::PerFrame => write.write_all(&frame).await?,
            Writes::Batched => {
                batch.clear();
                batch.extend_from_slice(&frame);
                while let Ok(permit) = window.try_acquire() {
                    permit.forget();
                    batch.extend_from_slice(&frame);
                }
                write.write_all(&batch).await?;
            }
        }
    }
}

async fn raw_connect(endpoint: &Endpoint) -> anyhow::Result<Box<dyn RawStream>> {
    Ok(match endpoint {
        #[cfg(unix)]
        Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        #[cfg(windows)]
        Endpoint::Pipe(_) => anyhow::bail!("the raw baseline has no named-pipe variant"),
    })
}

/// Echoes length-prefixed frames: reads through a buffer, writes through a
/// buffer flushed whenever no more input is already buffered.
async fn raw_echo<S: RawStream>(stream: S) {
    let (read, write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let mut write = BufWriter::new(write);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let Ok(len) = read.read_u32().await else {
            return;
        };
        let len = len as usize;
        if len > buf.len() {
            buf.resize(len, 0);
        }
        if read.read_exact(&mut buf[..len]).await.is_err() {
            return;
        }
        if write.write_u32(len as u32).await.is_err() || write.write_all(&buf[..len]).await.is_err()
        {
            return;
        }
        if read.buffer().is_empty() && write.flush().await.is_err() {
            return;
        }
    }
}
