//! The memory a socket keeps at the door after a large message: resident
//! memory of this test's own process, measured in a child run of it with
//! a fixed mmap threshold (glibc then gives every freed allocation of
//! 128 KiB or more back at once), a bound, not a timing.

mod scripted;

use std::time::Duration;

use scripted::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The process's resident memory, MiB (glibc returns every freed
/// allocation of 128 KiB or more to the system at once when run with
/// MALLOC_MMAP_THRESHOLD_=131072, which the test sets for itself).
fn live_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / (1 << 20) as f64
}

/// Runs the measurement in a child of this binary with a fixed mmap
/// threshold (so resident memory follows live large allocations).
#[test]
fn an_idle_socket_keeps_no_buffer_of_a_large_message_it_sent() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "measure", "--nocapture", "--include-ignored"])
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the measurement failed"
    );
}

/// Eight clients each send one 3 MiB message (raw frames, so the client
/// side keeps no buffer of it), read its echo (raw, discarded), and go
/// idle: the door keeps no buffer of those messages. Before, it held
/// about 24 MiB more until the sockets closed: tungstenite's read buffer
/// kept the allocation of the largest frame (`BytesMut` reclaims it
/// whole) for the socket's life, uncounted by the door's bound.
#[ignore = "run by an_idle_socket_keeps_no_buffer_of_a_large_message_it_sent"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure() {
    const LEN: usize = 3 << 20;
    let s = setup();
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(s.open().await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = live_mib();
    for ws in &mut sockets {
        let io = ws.get_mut();
        {
            // A binary message in one masked frame (mask key 0).
            let mut frame = vec![0x82, 0x80 | 127];
            frame.extend((LEN as u64).to_be_bytes());
            frame.extend([0, 0, 0, 0]);
            frame.resize(frame.len() + LEN, b'a');
            io.write_all(&frame).await.unwrap();
        }
        // Its echo, "echo:" + 3 MiB in a text frame with a 10-byte header.
        let mut left = 10 + 5 + LEN;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = tokio::time::timeout(GUARD, io.read(&mut buf[..left.min(64 * 1024)]))
                .await
                .expect("the echo comes")
                .unwrap();
            assert!(n > 0, "the door ended the socket");
            left -= n;
        }
    }
    s.service.calls.lock().unwrap().clear();
    let start = std::time::Instant::now();
    while s.door.held_message_bytes() != 0 && start.elapsed() < GUARD {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = live_mib();
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = live_mib();
    eprintln!(
        "live: {before:.1} MiB before, {idle:.1} MiB with 8 idle sockets (door holds {} bytes), {closed:.1} MiB once closed",
        s.door.held_message_bytes()
    );
    assert!(
        idle - before < 6.0,
        "8 idle sockets that each sent one 3 MiB message keep {:.1} MiB (the door counts {} bytes held; once closed: {:.1} MiB)",
        idle - before,
        s.door.held_message_bytes(),
        closed - before
    );
}
