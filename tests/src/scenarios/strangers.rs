//! Strangers at a worker's door: many connections to a worker's endpoint
//! that never authenticate (some announce a huge frame and keep sending,
//! some send nothing) while real requests go through the router to an
//! object on that worker. The requests are served, and the memory the
//! strangers hold in the worker stays small.

use super::*;

/// Strangers announcing a frame of 16 MiB (the default frame bound), then
/// sending [`SENT_PER_STRANGER`] bytes of it.
const FULL_SIZE: usize = 40;
/// Strangers announcing a frame of 4 GiB, then sending the same.
const FOUR_GIB: usize = 40;
/// Strangers that connect and send nothing.
const SILENT: usize = 120;
/// What an announcing stranger sends after its prefix, if the worker takes
/// it: 40 of them buffered would be 160 MiB.
const SENT_PER_STRANGER: usize = 4 * 1024 * 1024;
/// How much more resident memory the worker may hold with every stranger
/// connected than before they came.
const GROWTH_BOUND: u64 = 64 * 1024 * 1024;
/// Real requests made while the strangers are connected.
const REAL_REQUESTS: u64 = 20;

/// A connection to a worker's endpoint (`unix:/path` or `tcp:host:port`).
enum Raw {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Raw {
    async fn connect(endpoint: &str) -> Result<Raw> {
        if let Some(addr) = endpoint.strip_prefix("tcp:") {
            return Ok(Raw::Tcp(tokio::net::TcpStream::connect(addr).await?));
        }
        #[cfg(unix)]
        if let Some(path) = endpoint.strip_prefix("unix:") {
            return Ok(Raw::Unix(tokio::net::UnixStream::connect(path).await?));
        }
        Err(anyhow!(
            "an endpoint this scenario cannot reach: {endpoint}"
        ))
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            Raw::Tcp(s) => s.write_all(bytes).await,
            #[cfg(unix)]
            Raw::Unix(s) => s.write_all(bytes).await,
        }
    }
}

/// One stranger: connects, sends `prefix` as a frame's length prefix (if
/// any), then up to [`SENT_PER_STRANGER`] bytes until the worker stops
/// taking them. Returns the connection, still open.
async fn stranger(endpoint: String, prefix: Option<u32>) -> Result<Raw> {
    let mut raw = Raw::connect(&endpoint).await?;
    if let Some(prefix) = prefix
        && raw.write_all(&prefix.to_be_bytes()).await.is_ok()
    {
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        // A failed write is the worker closing on us: the point.
        while sent < SENT_PER_STRANGER && raw.write_all(&chunk).await.is_ok() {
            sent += chunk.len();
        }
    }
    Ok(raw)
}

/// Process `pid`'s resident set in bytes, from `/proc`.
fn resident(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kib * 1024)
}

scenario!(fault_strangers, |w, t| {
    let c = w.client.clone();
    let worker = &first_worker(&c).await?;
    let endpoint = worker["endpoint"]
        .as_str()
        .context("a worker endpoint")?
        .to_owned();
    let pid = worker["pid"].as_u64().context("a worker pid")? as u32;
    let shard = worker["shards"][0].as_u64().context("a shard")? as u32;
    // An object on that worker; its name is left out of the transcript.
    let object = format!("counter/{}", name_on("COUNTER", "stranger-", shard));
    let path = format!("/{object}/increment");
    let first = c.post(&path).await?;
    ensure!(
        first.status == 200,
        "before the strangers: {} {}",
        first.status,
        first.text()
    );
    let start: u64 = first.text().parse()?;
    t.fact(
        "the object is on the flooded worker",
        owner_pid(&c, &object).await? == pid,
    );
    let before = resident(pid)?;

    let full_size = 16 * 1024 * 1024u32;
    let mut kinds = Vec::new();
    for i in 0..FULL_SIZE.max(FOUR_GIB).max(SILENT) {
        if i < FULL_SIZE {
            kinds.push(Some(full_size));
        }
        if i < FOUR_GIB {
            kinds.push(Some(u32::MAX));
        }
        if i < SILENT {
            kinds.push(None);
        }
    }
    let strangers: Vec<_> = kinds
        .into_iter()
        .map(|prefix| tokio::spawn(stranger(endpoint.clone(), prefix)))
        .collect();
    // Real requests while the strangers connect and send.
    let mut served = 0u64;
    let mut in_order = true;
    for n in 1..=REAL_REQUESTS {
        let answer = c.post(&path).await?;
        if answer.status == 200 {
            served += 1;
            in_order &= answer.text().parse::<u64>().ok() == Some(start + n);
        }
    }
    let mut open = Vec::new();
    for stranger in strangers {
        open.push(stranger.await??);
    }
    // Every stranger has done its worst and is still connected.
    let after_flood = c.post(&path).await?;
    let held = resident(pid)?;
    let mib = |bytes: u64| bytes / (1024 * 1024);
    t.figure("worker_rss_before_mib", mib(before));
    t.figure("worker_rss_with_strangers_mib", mib(held));
    t.fact("strangers connected", open.len());
    t.fact("200 answers while strangers connected", served);
    t.fact(
        "requests served while strangers connected",
        served == REAL_REQUESTS && in_order,
    );
    t.fact(
        "served after every stranger had sent",
        after_flood.status == 200
            && after_flood.text().parse::<u64>().ok() == Some(start + REAL_REQUESTS + 1),
    );
    t.fact(
        "worker memory held by strangers under 64 MiB",
        held.saturating_sub(before) < GROWTH_BOUND,
    );
    drop(open);
    t.fact("the worker is unaffected", process_alive(pid));
    Ok(())
});
