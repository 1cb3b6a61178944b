//! A failed turn must not lose an earlier turn's acknowledged write.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Objects driven at once.
const OBJECTS: usize = 100;

/// The status of a `POST path` written on `stream` (`Connection: close`,
/// read to the end).
async fn answer_of(mut stream: TcpStream) -> Result<u16> {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .context("no answer within 30 s")??;
    let head = String::from_utf8_lossy(&raw);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {head:?}"))
}

async fn post_on(stream: &mut TcpStream, path: &str) -> Result<()> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: odo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(())
}

scenario!(reset_keeps_acknowledged_writes, |w, t| {
    let c = w.client.clone();
    let addr = c
        .base()
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("base URL {}", c.base()))?
        .to_owned();
    // For each object: three open connections, then `incr`, `fail`, `incr`
    // written back to back, so the failed turn runs while the first
    // increment's commit is in flight.
    let mut objects = Vec::new();
    for i in 0..OBJECTS {
        let mut streams = Vec::new();
        for _ in 0..3 {
            let stream = TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            streams.push(stream);
        }
        objects.push((format!("race{i}"), streams));
    }
    let mut pending = Vec::new();
    for (name, mut streams) in objects {
        for (stream, action) in streams.iter_mut().zip(["incr", "fail", "incr"]) {
            post_on(stream, &format!("/probe/{name}/{action}")).await?;
        }
        pending.push((name, streams));
    }
    let mut acknowledged = 0u64;
    let mut counted = 0u64;
    let mut failed_answers = std::collections::BTreeMap::new();
    let mut lost_in = 0usize;
    for (name, streams) in pending {
        let mut statuses = Vec::new();
        for stream in streams {
            statuses.push(answer_of(stream).await?);
        }
        let ok = [statuses[0], statuses[2]]
            .iter()
            .filter(|&&s| s == 200)
            .count() as u64;
        *failed_answers.entry(statuses[1]).or_insert(0u64) += 1;
        let n: u64 = c
            .get(&format!("/probe/{name}/n"))
            .await?
            .text()
            .parse()
            .context("reading n")?;
        acknowledged += ok;
        counted += n;
        if n < ok {
            lost_in += 1;
        }
    }
    t.fact("objects", OBJECTS);
    t.fact("increments answered 200", acknowledged);
    t.fact("increments counted", counted);
    t.fact(
        "status of every failing turn",
        format!("{failed_answers:?}"),
    );
    t.fact("every acknowledged increment counted", lost_in == 0);
    Ok(())
});
