//! The door's bound on the body bytes it holds over every connection
//! (`RouterConfig::max_held_body_bytes`): request bodies past it are
//! refused before they reach their object, large answers past it are
//! dropped, and what the door held is given back. Before it, nothing
//! bounded the sum: one HTTP/2 connection held 200 bodies of 1 MiB (234 MB
//! of the door's memory), eight of them 1.6 GB.

mod common;

use std::net::SocketAddr;

use common::{GUARD, answer_head, connect, read_to_close};
use odo_router::RouterConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const KIB: usize = 1024;

fn budget(bytes: usize) -> RouterConfig {
    RouterConfig {
        max_held_body_bytes: bytes,
        ..RouterConfig::default()
    }
}

/// The door's `odo_http_held_body_bytes`.
async fn held(addr: SocketAddr) -> usize {
    let mut stream = connect(addr).await;
    stream
        .write_all(b"GET /_odo/metrics HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut stream, GUARD).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .lines()
        .find_map(|l| l.strip_prefix("odo_http_held_body_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no held bytes in the metrics: {answer}"))
}

/// Waits until the door holds `wanted(bytes)`.
async fn until_held(addr: SocketAddr, wanted: impl Fn(usize) -> bool, what: &str) {
    let began = Instant::now();
    loop {
        let now = held(addr).await;
        if wanted(now) {
            return;
        }
        assert!(
            began.elapsed() < GUARD,
            "{what}: the door holds {now} bytes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A POST to `/echo/{name}` declaring `declared` bytes of body and sending
/// `sent` of them; the rest never comes.
async fn partial_post(addr: SocketAddr, name: &str, declared: usize, sent: usize) -> TcpStream {
    let mut stream = connect(addr).await;
    let head =
        format!("POST /echo/{name} HTTP/1.1\r\nhost: t\r\ncontent-length: {declared}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; sent]).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_budget_is_refused_before_its_object_and_the_bytes_come_back() {
    let served = common::Served::start(budget(1024 * KIB)).await;
    // Three bodies of 300 KiB being read: 900 KiB held.
    let mut holders = Vec::new();
    for i in 0..3 {
        holders.push(partial_post(served.addr, &format!("h{i}"), 1024 * KIB, 300 * KIB).await);
    }
    until_held(served.addr, |b| b >= 900 * KIB, "three partial bodies").await;
    // A fourth cannot be held: 503, safe to send again.
    let mut fourth = partial_post(served.addr, "fourth", 1024 * KIB, 300 * KIB).await;
    let head = answer_head(&mut fourth).await;
    assert!(head.starts_with("http/1.1 503 "), "{head}");
    assert!(head.contains("\r\nx-odo-error: busy\r\n"), "{head}");
    assert!(head.contains("\r\nx-odo-retryable: true\r\n"), "{head}");
    // The holders leave: every byte comes back, and a whole body fits again.
    drop(holders);
    drop(fourth);
    until_held(served.addr, |b| b == 0, "the holders left").await;
    let mut whole = partial_post(served.addr, "whole", 300 * KIB, 300 * KIB).await;
    let head = answer_head(&mut whole).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_past_the_budget_is_dropped_and_a_small_one_is_not() {
    let served = common::Served::start(budget(256 * KIB)).await;
    let holder = partial_post(served.addr, "holder", 1024 * KIB, 100 * KIB).await;
    until_held(served.addr, |b| b >= 100 * KIB, "a partial body").await;
    let ask = |times: usize| async move {
        let mut stream = connect(served.addr).await;
        let body = vec![b'y'; 50 * KIB];
        let head = format!(
            "POST /echo/big HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\nx-echo-times: {times}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        answer_head(&mut stream).await
    };
    // 200 KiB of answer with 100 KiB held: past the budget, dropped. Its
    // object ran, so the client is told the outcome is unknown.
    let head = ask(4).await;
    assert!(head.starts_with("http/1.1 502 "), "{head}");
    assert!(
        head.contains("\r\nx-odo-error: outcome-unknown\r\n"),
        "{head}"
    );
    // 50 KiB is small: taken whatever the budget says.
    let head = ask(1).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    // Once the holder leaves, the large answer fits.
    drop(holder);
    until_held(served.addr, |b| b == 0, "the holder left").await;
    let head = ask(4).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    served.stop().await;
}
