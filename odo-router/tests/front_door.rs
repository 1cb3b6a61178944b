//! The front door's connection limits, over real loopback sockets: the
//! connection cap answers at once instead of leaving a client in silence,
//! a half-sent request head and an idle kept-alive connection are closed
//! (HTTP/1.1 and HTTP/2), and an idle connection is not mistaken for a slow
//! head.

mod common;

use std::time::Duration;

use common::{GUARD, Read, Served, answer_head, connect, hello, read_some, read_to_close};
use odo_router::RouterConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_the_connection_cap_is_answered_at_once() {
    let served = Served::start(RouterConfig {
        max_connections: 4,
        ..RouterConfig::default()
    })
    .await;
    // Four clients hold every permit: each was served once, so each holds
    // an accepted connection.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(served.addr).await;
        assert_eq!(hello(&mut stream).await, "HTTP/1.1 200 OK");
        holders.push(stream);
    }
    // The fifth is answered 503 and closed, instead of waiting in the
    // accept queue.
    let mut fifth = connect(served.addr).await;
    fifth
        .write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_to_close(&mut fifth, GUARD).await;
    eprintln!(
        "fifth client at the cap: {} bytes, closed={closed}, after {:?}",
        answer.len(),
        started.elapsed()
    );
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        answer.starts_with("http/1.1 503 "),
        "no 503 for the client over the cap within {GUARD:?}: {answer:?}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert!(answer.contains("\r\nretry-after: "), "{answer:?}");
    assert!(closed, "the refused connection was not closed");
    // The holders were not disturbed.
    assert_eq!(hello(&mut holders[0]).await, "HTTP/1.1 200 OK");
    // One holder leaves: service resumes for a new client once the server
    // has seen the close.
    drop(holders.pop());
    let deadline = Instant::now() + GUARD;
    loop {
        let mut stream = connect(served.addr).await;
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (answer, _) = read_to_close(&mut stream, GUARD).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            answer.starts_with("HTTP/1.1 503 "),
            "neither served nor refused: {answer:?}"
        );
        assert!(
            Instant::now() < deadline,
            "still refused {GUARD:?} after a holder left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(holders);
    served.stop().await;
}

fn timeouts(header_read_ms: u64, idle_ms: u64) -> RouterConfig {
    RouterConfig {
        header_read_timeout: Duration::from_millis(header_read_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        ..RouterConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_not_sent_in_time_is_closed() {
    let served = Served::start(timeouts(300, 60_000)).await;
    // Half a head, then nothing.
    let mut half = connect(served.addr).await;
    half.write_all(b"GET /hello HTTP/1.1\r\nhost: te")
        .await
        .unwrap();
    // Nothing at all.
    let mut mute = connect(served.addr).await;
    // A head trickled a byte at a time, never finished.
    let mut trickle = connect(served.addr).await;
    trickle.write_all(b"GET /hello HTTP/1.1\r\n").await.unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.into_split();
    let trickler = tokio::spawn(async move {
        while trickle_write.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Meanwhile others are served.
    let mut other = connect(served.addr).await;
    assert_eq!(hello(&mut other).await, "HTTP/1.1 200 OK");
    assert_eq!(
        read_some(&mut half, GUARD).await,
        Read::Closed,
        "half a head"
    );
    assert_eq!(read_some(&mut mute, GUARD).await, Read::Closed, "no head");
    let mut buf = [0u8; 16];
    let trickled = tokio::time::timeout(
        GUARD,
        tokio::io::AsyncReadExt::read(&mut trickle_read, &mut buf),
    )
    .await;
    assert!(
        matches!(trickled, Ok(Ok(0)) | Ok(Err(_))),
        "a trickled head was not closed: {trickled:?}"
    );
    trickler.abort();
    assert_eq!(hello(&mut other).await, "HTTP/1.1 200 OK");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let served = Served::start(timeouts(60_000, 300)).await;
    let mut stream = connect(served.addr).await;
    assert_eq!(hello(&mut stream).await, "HTTP/1.1 200 OK");
    assert_eq!(read_some(&mut stream, GUARD).await, Read::Closed);
    served.stop().await;
}

/// The header timeout is not an idle timeout: a kept-alive connection that
/// waits longer than it between requests is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_outlives_the_header_timeout() {
    let served = Served::start(timeouts(200, 60_000)).await;
    let mut stream = connect(served.addr).await;
    assert_eq!(hello(&mut stream).await, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hello(&mut stream).await, "HTTP/1.1 200 OK");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let served = Served::start(timeouts(60_000, 300)).await;
    let stream = connect(served.addr).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/echo/h2", served.addr))
        .body(Full::new(bytes::Bytes::from_static(b"over h2")))
        .unwrap();
    let response = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .expect("an answer within the guard")
        .expect("an answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"over h2");
    // No more requests: the server closes the connection.
    let ended = tokio::time::timeout(GUARD, connection).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection stayed open past {GUARD:?}"
    );
    served.stop().await;
}

/// A client that sends a body over the limit is answered 413 and may finish
/// sending its body: the door reads and discards it before closing, so the
/// close is an orderly end of file, never a reset that could destroy the
/// answer before the client has read it (a client writing its whole body
/// first, as most do, would otherwise see a broken pipe instead of 413).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_answered_and_drained_before_the_close() {
    let served = Served::start(RouterConfig::default()).await;
    let max = RouterConfig::default().max_body_bytes;
    for declared in [true, false] {
        let mut stream = connect(served.addr).await;
        let body = vec![b'x'; max + 64 * 1024];
        let head = if declared {
            format!(
                "PUT /echo/a HTTP/1.1\r\nhost: test\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
        } else {
            "PUT /echo/a HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        let (first, rest) = body.split_at(max + 1024);
        let chunk = |part: &[u8]| {
            if declared {
                part.to_vec()
            } else {
                let mut framed = format!("{:x}\r\n", part.len()).into_bytes();
                framed.extend_from_slice(part);
                framed.extend_from_slice(b"\r\n");
                framed
            }
        };
        stream.write_all(&chunk(first)).await.unwrap();
        // The answer comes before the body is all sent.
        let head = answer_head(&mut stream).await;
        assert!(head.starts_with("http/1.1 413"), "{head}");
        let mut buf = [0u8; 4096];
        // The rest of the body is taken, and the close is orderly.
        stream
            .write_all(&chunk(rest))
            .await
            .expect("the rest of the body is read");
        if !declared {
            stream
                .write_all(b"0\r\n\r\n")
                .await
                .expect("the last chunk");
        }
        let end = loop {
            match tokio::time::timeout(GUARD, stream.read(&mut buf))
                .await
                .expect("the close within the guard")
            {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        assert!(
            end.is_ok(),
            "declared {declared}: reset instead of a close: {end:?}"
        );
    }
    served.stop().await;
}

/// An HTTP/2 client that asks for two large answers, never reads them (it
/// never opens its windows past the first 64 KiB), and pings the door
/// every 50 ms: the answers are given up, and the connection closed, one
/// idle timeout after they last made progress. Every ping makes the door
/// write its acknowledgement, and the door once took those writes for an
/// answer going out: a client could keep 200 unread answers per connection
/// in the door's memory for as long as it liked (1.9 GB with one
/// connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_http2_answers_are_given_up_though_the_client_pings() {
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

    let served = Served::start(timeouts(60_000, 300)).await;
    let stream = connect(served.addr).await;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .keep_alive_interval(Duration::from_millis(50))
        .keep_alive_timeout(GUARD)
        .keep_alive_while_idle(true);
    let (sender, connection) = builder
        .handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/2 handshake");
    let mut connection = tokio::spawn(connection);
    let big = bytes::Bytes::from(vec![b'x'; RouterConfig::default().max_body_bytes]);
    let ask = |name: &str| {
        let mut sender = sender.clone();
        let request = http::Request::post(format!("http://{}/echo/{name}", served.addr))
            .body(Full::new(big.clone()))
            .unwrap();
        async move { sender.send_request(request).await }
    };
    let (first, second) = tokio::time::timeout(GUARD, async { tokio::join!(ask("a"), ask("b")) })
        .await
        .expect("answers within the guard");
    let (first, second) = (first.expect("an answer"), second.expect("an answer"));
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    // The bodies are never read.
    let started = Instant::now();
    let ended = tokio::time::timeout(GUARD, &mut connection).await;
    assert!(
        ended.is_ok(),
        "a connection whose answers were never read stayed open for {:?}",
        started.elapsed()
    );
    drop((first, second));
    connection.abort();
    served.stop().await;
}
