//! The front door's limits against the real server: a stalled request head
//! is closed while other clients are served, an idle kept-alive connection
//! is not mistaken for a stalled head, and a client over the connection cap
//! is answered at once.
//!
//! It runs its own server of the cell (same backend, transport and workers)
//! with a short header-read timeout and a cap of a few connections, so the
//! limits show up quickly and the shared topology keeps its defaults.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// `--header-read-timeout-ms` of this scenario's server.
const HEADER_READ_MS: u64 = 500;
/// `--max-connections` of this scenario's server.
const MAX_CONNECTIONS: usize = 4;
/// A bound on every wait here: a failure guard, not a timing.
const GUARD: Duration = Duration::from_secs(10);

/// An HTTP/1.1 answer read off a raw socket.
struct RawAnswer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `method path` (kept alive, no body) on `stream` and reads one
/// answer (its body by `content-length`).
async fn exchange(stream: &mut TcpStream, method: &str, path: &str) -> Result<RawAnswer> {
    let request = format!("{method} {path} HTTP/1.1\r\nhost: odo\r\ncontent-length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    let body = raw[end + 4..end + 4 + length].to_vec();
                    return Ok(RawAnswer {
                        status_line,
                        headers,
                        body,
                    });
                }
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(anyhow!(
                    "{method} {path}: closed before a whole answer: {:?}",
                    String::from_utf8_lossy(&raw)
                ));
            }
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUARD, read)
        .await
        .with_context(|| format!("{method} {path}: no answer within {GUARD:?}"))?
}

/// Reads until the server closes `stream`: what it sent, or `None` if it
/// did not close within the guard.
async fn until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match tokio::time::timeout(GUARD, stream.read_to_end(&mut got)).await {
        Ok(_) => Some(got),
        Err(_) => None,
    }
}

/// A connection that was served `GET /hello`, so it holds a place under the
/// cap; retried while the server still counts connections closed earlier.
async fn holder(addr: &str) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        let mut stream = TcpStream::connect(addr).await?;
        let answer = exchange(&mut stream, "GET", "/hello").await;
        match answer {
            Ok(answer) if answer.status_line == "HTTP/1.1 200 OK" => return Ok(stream),
            _ if start.elapsed() < GUARD => tokio::time::sleep(Duration::from_millis(25)).await,
            Ok(answer) => return Err(anyhow!("no place under the cap: {}", answer.status_line)),
            Err(e) => return Err(e),
        }
    }
}

fn show(answer: &RawAnswer) -> String {
    format!(
        "{} {:?}",
        answer.status_line,
        String::from_utf8_lossy(&answer.body)
    )
}

scenario!(front_door_limits, |w, t| {
    let dir = tempfile::tempdir()?;
    let mut spec = w.spec.clone();
    spec.extra_args.extend([
        "--header-read-timeout-ms".to_owned(),
        HEADER_READ_MS.to_string(),
        "--max-connections".to_owned(),
        MAX_CONNECTIONS.to_string(),
    ]);
    let server = spec.start(dir.path())?;
    let addr = server
        .base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("base URL {}", server.base))?
        .to_owned();

    // Half a request head, then nothing: closed without an answer, while
    // another connection is served.
    let mut half = TcpStream::connect(&addr).await?;
    half.write_all(b"GET /hello HTTP/1.1\r\nhost: od").await?;
    let mut other = TcpStream::connect(&addr).await?;
    t.fact(
        "GET /hello meanwhile",
        show(&exchange(&mut other, "GET", "/hello").await?),
    );
    t.fact(
        "POST /counter/front-door/increment meanwhile",
        show(&exchange(&mut other, "POST", "/counter/front-door/increment").await?),
    );
    let closed = until_closed(&mut half).await;
    t.fact(
        "half a head: closed by the server without an answer",
        closed.as_deref() == Some(&[][..]),
    );
    // Nothing at all: closed too.
    let mut mute = TcpStream::connect(&addr).await?;
    let closed = until_closed(&mut mute).await;
    t.fact(
        "no head at all: closed by the server",
        closed.as_deref() == Some(&[][..]),
    );
    // A kept-alive connection idle for longer than the header timeout is
    // idle, not slow: it is still served.
    tokio::time::sleep(Duration::from_millis(3 * HEADER_READ_MS)).await;
    t.fact(
        "GET /counter/front-door after idling 3x the header timeout",
        show(&exchange(&mut other, "GET", "/counter/front-door").await?),
    );
    drop(other);

    // The cap: every place held, the next client is answered at once.
    let mut holders = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        holders.push(holder(&addr).await?);
    }
    let mut over = TcpStream::connect(&addr).await?;
    let answer = exchange(&mut over, "GET", "/hello").await?;
    t.fact("over the cap", show(&answer));
    t.fact(
        "over the cap: retry-after",
        answer.header("retry-after").unwrap_or("-"),
    );
    t.fact(
        "over the cap: connection",
        answer.header("connection").unwrap_or("-"),
    );
    t.fact(
        "over the cap: then closed",
        until_closed(&mut over).await.is_some(),
    );
    let mut first = holders.remove(0);
    t.fact(
        "a holder is still served",
        show(&exchange(&mut first, "GET", "/hello").await?),
    );
    // One holder leaves: a new client gets its place.
    drop(first);
    let mut next = holder(&addr).await?;
    t.fact(
        "after a holder left, a new client is served",
        show(&exchange(&mut next, "GET", "/counter/front-door").await?),
    );
    drop(next);
    drop(holders);
    drop(server);
    Ok(())
});
