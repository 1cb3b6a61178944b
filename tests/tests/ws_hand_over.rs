//! A room too large for one wire frame survives its worker's crash. When
//! an object's worker dies, the front door hands the new worker the
//! records of the object's sockets (tags, attachments) before the object's
//! next event. Those of 1,100 sockets with 16,000-byte attachments pass
//! one frame (16 MiB), so the door hands them over in parts, and the new
//! worker takes them all at the last part. Before, the worker refused the
//! one large hand-over and the door closed every socket of the room with
//! 1011.

use anyhow::{Context as _, Result, anyhow, ensure};
use odo_tests::http::HttpClient;
use odo_tests::topology::{ServerSpec, Signal, signal};
use odo_tests::ws::{Got, Ws};

const SOCKETS: usize = 1_100;
/// Each socket's attachment: a string of this many characters (its JSON
/// under the 16 KiB limit).
const ATTACHMENT: usize = 16_000;

async fn ask(ws: &mut Ws, text: &str) -> Result<String> {
    ws.send(text).await?;
    match ws.next().await? {
        Got::Text(answer) => Ok(answer),
        other => Err(anyhow!("{text:?} was answered {other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_larger_than_a_frame_is_handed_to_its_new_worker_in_parts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 1);
    spec.storage = "memory".into();
    let server = spec.start(dir.path())?;
    let c = HttpClient::new(&server.base);
    let path = "/probe/big-room/ws";
    let mut sockets = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let mut ws = Ws::connect(&server.base, path)
            .await
            .with_context(|| format!("socket {i}"))?;
        let value = format!("{i:05}{}", "a".repeat(ATTACHMENT - 5));
        ensure!(ask(&mut ws, &format!("attach:{value}")).await? == "attached");
        sockets.push(ws);
    }
    let victim = c.owner_pid("probe/big-room").await?;
    signal(victim, Signal::Kill)?;
    // Once the object is placed on a new worker: a message sent to the
    // dying one would have an unknown outcome (1012), which is another
    // test's business.
    let start = std::time::Instant::now();
    loop {
        if matches!(c.owner_pid("probe/big-room").await, Ok(pid) if pid != victim) {
            break;
        }
        ensure!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the object was never placed again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The next event reaches the object on its new worker, after the
    // hand-over of every socket's record.
    let answer = ask(&mut sockets[0], "sockets").await?;
    ensure!(
        answer == SOCKETS.to_string(),
        "the new worker knows {answer} sockets"
    );
    ensure!(
        c.owner_pid("probe/big-room").await? != victim,
        "a new worker"
    );
    // Every record came whole, in accept order.
    let list = ask(&mut sockets[1], "list").await?;
    let attachments: Vec<&str> = list
        .split(',')
        .map(|row| row.trim_start_matches('='))
        .collect();
    ensure!(attachments.len() == SOCKETS, "{} listed", attachments.len());
    for (i, attachment) in attachments.iter().enumerate() {
        ensure!(
            attachment.len() == ATTACHMENT && attachment.starts_with(&format!("{i:05}")),
            "socket {i}'s attachment came back as {} bytes",
            attachment.len()
        );
    }
    drop(sockets);
    server.terminate()?;
    Ok(())
}
