//! The server's bound on answers a peer has not read, its bound on requests
//! running at once, and its check on frames that stop arriving
//! (`Connection::run`): what they stop, and the
//! honest traffic they must not break (a review found the first versions
//! losing every call of a burst).

#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use odo_core::Frame;
use odo_core::wire::{Message, Response};
use odo_transport::handler_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers a request whose body is `big` with `size` bytes at once (no
/// waiting: the server polls it in place, inside its corked window), any
/// other request with its own body.
fn big_answers(size: usize) -> impl odo_transport::Handler {
    let big = Bytes::from(vec![7u8; size]);
    handler_fn(move |_request, body: Bytes| {
        let big = big.clone();
        async move {
            if body.as_ref() == b"big" {
                (Response::Rpc, big)
            } else {
                (Response::Rpc, body)
            }
        }
    })
}

/// Makes `n` calls at once on `channel`, each with `body` and `timeout`:
/// every one must be answered.
async fn all_answered(
    channel: &odo_transport::Channel,
    n: u64,
    body: &'static [u8],
    timeout: Duration,
    context: &str,
) {
    let calls = (0..n).map(|i| channel.call(request(i), Bytes::from_static(body), timeout));
    let began = Instant::now();
    let results = futures_util::future::join_all(calls).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{context}{} of {n} calls failed after {:?}: {:?}",
        failed.len(),
        began.elapsed(),
        failed.first()
    );
}

async fn handshake(stream: &mut Box<dyn RawStream>) {
    stream.write_all(&good_hello()).await.expect("hello");
    let welcome = read_frame(stream).await.expect("welcome");
    assert!(
        matches!(welcome.message, Message::Welcome(_)),
        "{welcome:?}"
    );
}

/// Three pipelined requests in one write (what a Channel does with
/// concurrent calls): two whose answers are 5 MiB each, then a small one.
/// The server corks while whole requests remain buffered; after the
/// second answer 10 MiB are queued, corked, past the 8 MiB bound. It once
/// stopped reading there (the only thing that uncorked the sink) and
/// waited for the writer, which does not write while corked: nothing was
/// ever sent, and the stall check then dropped the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_whose_answers_cross_the_bound_are_answered() {
    let mut config = server_config();
    config.frame_stall_timeout = Duration::from_secs(1);
    let server = start(Kind::Unix, config, big_answers(5 * 1024 * 1024)).await;
    let mut stream = raw(&server.endpoint).await;
    handshake(&mut stream).await;
    let mut burst = Vec::new();
    burst.extend_from_slice(&request_frame(1, b"big"));
    burst.extend_from_slice(&request_frame(2, b"big"));
    burst.extend_from_slice(&request_frame(3, b"small"));
    stream.write_all(&burst).await.expect("requests");
    let began = Instant::now();
    let mut answered = Vec::new();
    while answered.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream)).await {
            Ok(Some(frame)) => answered.push(frame.request_id),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    assert_eq!(
        answered.len(),
        3,
        "answers {answered:?}; the connection ended (or went silent) after {:?}",
        began.elapsed()
    );
}

/// The same through an ordinary `Channel`: concurrent calls whose answers
/// add up past the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_large_answers_through_a_channel() {
    let mut config = server_config();
    config.frame_stall_timeout = Duration::from_secs(1);
    let server = start(Kind::Unix, config, big_answers(1024 * 1024)).await;
    let channel = connect(&server.endpoint).await;
    all_answered(&channel, 32, b"big", Duration::from_secs(10), "").await;
}

/// An honest peer on a slow link: it asks for a 2 MiB answer, then sends
/// its next request (a 64 KiB body) whole, and reads at about 1.3 MB/s.
/// The server stops reading while more than 1 MiB is unsent; the part of
/// the next request it had already read sits in its buffer, unchanged, and
/// the stall check once took that for a stalled frame and dropped the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_taken_for_a_stalled_frame() {
    let mut config = server_config();
    config.frame_stall_timeout = Duration::from_millis(300);
    config.max_unsent_bytes = 1024 * 1024;
    let server = start(Kind::Unix, config, big_answers(2 * 1024 * 1024)).await;
    let mut stream = raw(&server.endpoint).await;
    handshake(&mut stream).await;
    let second = encoded(&Frame {
        request_id: 2,
        message: Message::Request(request(2)),
        body: Bytes::from(vec![1u8; 64 * 1024]),
    });
    // The first request and the start of the second in one write, the rest
    // of the second right after: everything is sent.
    let mut first = request_frame(1, b"big").to_vec();
    first.extend_from_slice(&second[..100]);
    stream.write_all(&first).await.expect("first");
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream.write_all(&second[100..]).await.expect("second");
    let began = Instant::now();
    // Reads 64 KiB every 50 ms.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    while began.elapsed() < Duration::from_secs(30) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        // Two whole answers read?
        let mut at = 0;
        let mut frames = 0;
        while got.len() >= at + 4 {
            let len = u32::from_be_bytes(got[at..at + 4].try_into().unwrap()) as usize;
            if got.len() < at + 4 + len {
                break;
            }
            at += 4 + len;
            frames += 1;
        }
        if frames == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "closed: {closed}; read {} KiB in {:?}, not both answers",
        got.len() / 1024,
        began.elapsed()
    );
}

/// As the worker's handler does (its first poll queues the event and
/// waits): every answer comes from a spawned task, on another thread.
/// Answers that land while the server is still corked over a burst of
/// buffered requests can cross the bound just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_answered_by_tasks_through_a_channel() {
    let mut config = server_config();
    config.frame_stall_timeout = Duration::from_secs(1);
    let big = Bytes::from(vec![7u8; 64 * 1024]);
    let handler = handler_fn(move |_request, _body: Bytes| {
        let big = big.clone();
        async move {
            tokio::task::yield_now().await;
            (Response::Rpc, big)
        }
    });
    let server = start(Kind::Unix, config, handler).await;
    let channel = connect(&server.endpoint).await;
    for round in 0..20 {
        all_answered(
            &channel,
            400,
            b"x",
            Duration::from_secs(8),
            &format!("round {round}: "),
        )
        .await;
    }
}

/// A peer that stops in the middle of a frame (its head says 1 MiB, 1 KiB
/// came) is dropped once the frame makes no progress for the stall
/// timeout; it held the buffer for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_stops_arriving_drops_its_connection() {
    let mut config = server_config();
    config.frame_stall_timeout = Duration::from_millis(200);
    let server = start(Kind::Unix, config, echo()).await;
    let mut stream = raw(&server.endpoint).await;
    handshake(&mut stream).await;
    stream
        .write_all(&(1024u32 * 1024).to_be_bytes())
        .await
        .expect("head");
    stream.write_all(&[0u8; 1024]).await.expect("some of it");
    let began = Instant::now();
    assert_closed_by_server(stream).await;
    assert!(began.elapsed() < LONG, "{:?}", began.elapsed());
}

/// A peer that sends requests and never reads the answers: the server
/// stops reading its requests once more than the bound is unsent, so it
/// runs a handful of them, not all of those waiting in its socket (each
/// answer 1 MiB: it queued every one, without end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_read_is_not_served_past_the_bound() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut config = server_config();
    config.max_unsent_bytes = 4 * 1024 * 1024;
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = ran.clone();
    let big = Bytes::from(vec![7u8; 1024 * 1024]);
    let handler = handler_fn(move |_request, _body: Bytes| {
        counted.fetch_add(1, Ordering::SeqCst);
        let big = big.clone();
        async move { (Response::Rpc, big) }
    });
    let server = start(Kind::Unix, config, handler).await;
    let mut stream = raw(&server.endpoint).await;
    handshake(&mut stream).await;
    let mut burst = Vec::new();
    for id in 1..=200 {
        burst.extend_from_slice(&request_frame(id, b"x"));
    }
    stream.write_all(&burst).await.expect("requests");
    // Until the count stops moving (the server waits for room).
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = ran.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    // The bound (4 MiB) and what the two sockets' buffers took.
    assert!(
        last < 50,
        "{last} of 200 requests run for a peer that reads nothing"
    );
    // It reads now: every request is answered.
    let mut answered = 0;
    while answered < 200 {
        tokio::time::timeout(LONG, read_frame(&mut stream))
            .await
            .expect("in time")
            .expect("an answer");
        answered += 1;
    }
}

/// A peer that sends requests faster than they end: 100 requests whose
/// handlers wait until the test lets them go, one at a time, then one that
/// answers at once. With `max_requests_in_flight` 8 the server runs 8 at
/// most and reads the next frames only as they end, so the quick one is
/// read (and answered) only after 93 of the others. Without the bound it
/// started all 100 waiting handlers at once, a task and a body each, and
/// answered the quick one before any of them ended: an authenticated peer
/// made the server hold as many as it liked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_bound_on_running_ones_wait_unread() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    const BOUND: usize = 8;
    const WAITING: u64 = 100;
    let gate = Arc::new(Semaphore::new(0));
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = {
        let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
        handler_fn(move |_request, body: Bytes| {
            let (gate, running, most) = (gate.clone(), running.clone(), most.clone());
            async move {
                if body.as_ref() == b"wait" {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    gate.acquire().await.expect("the gate").forget();
                    running.fetch_sub(1, Ordering::SeqCst);
                }
                (Response::Rpc, body)
            }
        })
    };
    let mut config = server_config();
    config.max_requests_in_flight = BOUND;
    // The frames held unread (part of them in the server's read buffer)
    // must not be taken for a stalled one while the handlers hold.
    config.frame_stall_timeout = Duration::from_millis(100);
    let server = start(Kind::Unix, config, handler).await;
    let mut stream = raw(&server.endpoint).await;
    handshake(&mut stream).await;
    let mut burst = Vec::new();
    for id in 1..=WAITING {
        burst.extend_from_slice(&request_frame(id, b"wait"));
    }
    burst.extend_from_slice(&request_frame(WAITING + 1, b"now"));
    stream.write_all(&burst).await.expect("requests");
    let began = Instant::now();
    while running.load(Ordering::SeqCst) < BOUND {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "the handlers never started"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Held at the bound for several stall checks.
    tokio::time::sleep(Duration::from_millis(350)).await;

    let mut answered = Vec::new();
    while answered.len() as u64 <= WAITING {
        gate.add_permits(1);
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("no answer after {answered:?}"))
            .unwrap_or_else(|| panic!("the connection ended after {answered:?}"));
        answered.push(frame.request_id);
    }
    let quick = answered.iter().position(|&id| id == WAITING + 1);
    assert!(
        quick.is_some_and(|at| at as u64 >= WAITING - BOUND as u64),
        "the quick request was answered {quick:?}th; answers {answered:?}"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        BOUND,
        "requests running at once"
    );
    server.stop().await;
}

/// The bound must be at least 1.
#[tokio::test]
async fn a_bound_of_zero_requests_in_flight_is_refused() {
    let mut config = server_config();
    config.max_requests_in_flight = 0;
    let (endpoint, _dir) = endpoint_for(Kind::Unix);
    let refused = odo_transport::Server::bind(&endpoint, config).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("max_requests_in_flight")),
        "{:?}",
        refused.err()
    );
}
