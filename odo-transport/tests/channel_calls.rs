//! Calls over a real connection: multiplexing, deadlines, cancellation and
//! what a call reports when its connection dies.
// These tests exercise Unix sockets next to TCP; on other platforms the
// crate's own code is compile-checked, and TCP is covered by the
// multi-process matrix.
#![cfg(unix)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use odo_core::wire::{Response, WireError};
use odo_transport::{CallError, Channel, ClientConfig, CloseReason, MAX_DEADLINE, handler_fn};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// A handler that reports each request it starts, then never answers, and
/// reports when its future is dropped.
fn stuck_handler() -> (
    impl odo_transport::Handler,
    mpsc::UnboundedReceiver<&'static str>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |_request, _body| {
        let tx = tx.clone();
        async move {
            let _signal = DropSignal(Some(tx.clone()));
            let _ = tx.send("started");
            std::future::pending::<(Response, Bytes)>().await
        }
    });
    (handler, rx)
}

async fn many_concurrent_calls(kind: Kind) {
    let server = start_echo(kind).await;
    let channel = connect(&server.endpoint).await;
    let mut calls = JoinSet::new();
    for n in 0..10_000u64 {
        let channel = channel.clone();
        calls.spawn(async move {
            let body = Bytes::from(format!("call number {n}"));
            let (response, echoed) = channel
                .call(request(n), body.clone(), LONG)
                .await
                .expect("call answered");
            assert_eq!(response, Response::Rpc);
            assert_eq!(echoed, body, "call {n} got someone else's response");
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("call task");
    }
    assert_eq!(channel.calls_in_flight(), 0);
    drop(channel);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_over_unix_each_get_their_own_response() {
    many_concurrent_calls(Kind::Unix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_over_tcp_each_get_their_own_response() {
    many_concurrent_calls(Kind::Tcp).await;
}

#[tokio::test]
async fn large_bodies_round_trip() {
    let server = start_echo(Kind::Unix).await;
    let channel = connect(&server.endpoint).await;
    let body = Bytes::from(
        (0..4 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let (_, echoed) = channel
        .call(request(1), body.clone(), LONG)
        .await
        .expect("call");
    assert_eq!(echoed, body);
    server.stop().await;
}

async fn deadline_then_cancel(kind: Kind) {
    let (handler, mut events) = stuck_handler();
    let server = start(kind, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    let error = channel
        .call(request(1), Bytes::new(), Duration::from_millis(100))
        .await
        .expect_err("the handler never answers");
    let CallError::DeadlineExceeded { written, .. } = error else {
        panic!("expected DeadlineExceeded, got {error:?}");
    };
    assert!(!error.is_retryable() || !written);
    if written {
        // The request reached the server; the cancel frame that followed
        // drops the handler.
        assert_eq!(events.recv().await, Some("started"));
        assert_eq!(events.recv().await, Some("dropped"));
    }
    assert_eq!(channel.calls_in_flight(), 0);
    assert!(
        !channel.is_closed(),
        "a deadline does not close the channel"
    );
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn deadline_exceeded_cancels_the_handler_over_unix() {
    deadline_then_cancel(Kind::Unix).await;
}

#[tokio::test]
async fn deadline_exceeded_cancels_the_handler_over_tcp() {
    deadline_then_cancel(Kind::Tcp).await;
}

#[tokio::test]
async fn a_short_deadline_behind_a_long_one_still_expires() {
    let (handler, mut events) = stuck_handler();
    let server = start(Kind::Unix, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    // The first call's deadline is as far away as a deadline can be; the
    // second's comes much sooner, and must be noticed although nothing was
    // due before it.
    let patient = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.call(request(1), Bytes::new(), MAX_DEADLINE).await })
    };
    assert_eq!(events.recv().await, Some("started"));
    let short = Duration::from_millis(100);
    let error = tokio::time::timeout(LONG / 2, channel.call(request(2), Bytes::new(), short))
        .await
        .expect("the short deadline fired before the long one")
        .expect_err("the handler never answers");
    assert!(
        matches!(error, CallError::DeadlineExceeded { deadline, written: true, .. } if deadline == short),
        "{error:?}"
    );
    assert_eq!(channel.calls_in_flight(), 1, "the patient call still waits");
    patient.abort();
    let _ = patient.await;
    assert_eq!(channel.calls_in_flight(), 0);
    drop(channel);
    server.stop().await;
}

/// Answered calls and calls that expire, interleaved on one channel, with
/// deadlines that expire out of the order the calls were made.
async fn mixed_deadlines(kind: Kind) {
    const ANSWERED: u64 = 400;
    const STUCK: u64 = 200;
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel();
    let handler = handler_fn(move |_request, body: Bytes| {
        let dropped_tx = dropped_tx.clone();
        async move {
            if body.as_ref() == b"stuck" {
                let _signal = DropSignal(Some(dropped_tx));
                std::future::pending::<()>().await;
            }
            (Response::Rpc, body)
        }
    });
    let server = start(kind, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    let mut calls = JoinSet::new();
    for n in 0..ANSWERED + STUCK {
        let channel = channel.clone();
        calls.spawn(async move {
            if n % 3 == 0 && n / 3 < STUCK {
                // 20 to 400 ms, in a scrambled order.
                let deadline = Duration::from_millis(20 + (n * 37) % 381);
                let error = channel
                    .call(request(n), Bytes::from_static(b"stuck"), deadline)
                    .await
                    .expect_err("a stuck call expires");
                assert!(
                    matches!(error, CallError::DeadlineExceeded { deadline: d, written: true, .. } if d == deadline),
                    "call {n}: {error:?}"
                );
            } else {
                let body = Bytes::from(format!("call {n}"));
                let (_, echoed) = channel
                    .call(request(n), body.clone(), LONG)
                    .await
                    .expect("answered");
                assert_eq!(echoed, body);
            }
        });
    }
    let everything = async {
        while let Some(done) = calls.join_next().await {
            done.expect("call task");
        }
        // Each expired call's cancel frame dropped its handler.
        for _ in 0..STUCK {
            assert_eq!(dropped.recv().await, Some("dropped"));
        }
    };
    tokio::time::timeout(LONG, everything)
        .await
        .expect("every call ends and every stuck handler is cancelled");
    assert_eq!(channel.calls_in_flight(), 0);
    drop(channel);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_and_expiring_calls_interleave_over_unix() {
    mixed_deadlines(Kind::Unix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_and_expiring_calls_interleave_over_tcp() {
    mixed_deadlines(Kind::Tcp).await;
}

#[tokio::test]
async fn a_deadline_beyond_the_maximum_means_no_deadline() {
    let server = start_echo(Kind::Unix).await;
    let channel = connect(&server.endpoint).await;
    for deadline in [
        MAX_DEADLINE,
        MAX_DEADLINE + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let (_, echoed) = channel
            .call(request(1), Bytes::from_static(b"forever"), deadline)
            .await
            .expect("answered");
        assert_eq!(echoed, Bytes::from_static(b"forever"));
    }
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn calls_fail_instead_of_hanging_once_the_channels_runtime_is_gone() {
    let server = start_echo(Kind::Unix).await;
    // Connected on a runtime of its own, which then shuts down and takes
    // the channel's tasks (reader, writer, deadline watcher) with it.
    let endpoint = server.endpoint.clone();
    let channel = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(connect(&endpoint))
    })
    .await
    .expect("the connecting thread");
    let answer = tokio::time::timeout(
        LONG,
        channel.call(request(1), Bytes::new(), Duration::from_millis(100)),
    )
    .await
    .expect("the call ends instead of hanging");
    let error = answer.expect_err("the channel is gone");
    assert!(error.is_retryable(), "never sent: {error:?}");
    assert!(channel.is_closed());
    drop(channel);
    server.stop().await;
}

async fn dropped_caller_cancels(kind: Kind) {
    let (handler, mut events) = stuck_handler();
    let server = start(kind, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    let caller = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.call(request(1), Bytes::new(), LONG).await })
    };
    assert_eq!(events.recv().await, Some("started"));
    caller.abort();
    assert!(caller.await.expect_err("aborted").is_cancelled());
    assert_eq!(
        events.recv().await,
        Some("dropped"),
        "the handler observes the cancel"
    );
    assert_eq!(channel.calls_in_flight(), 0);
    // The channel keeps working for other calls (this one also gets stuck,
    // so give it a short deadline).
    let error = channel
        .call(request(2), Bytes::new(), Duration::from_millis(50))
        .await
        .expect_err("stuck");
    assert!(
        matches!(error, CallError::DeadlineExceeded { .. }),
        "{error:?}"
    );
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn dropped_caller_cancels_the_handler_over_unix() {
    dropped_caller_cancels(Kind::Unix).await;
}

#[tokio::test]
async fn dropped_caller_cancels_the_handler_over_tcp() {
    dropped_caller_cancels(Kind::Tcp).await;
}

async fn killed_connection(kind: Kind) {
    let (handler, mut events) = stuck_handler();
    let mut config = server_config();
    // Shutdown aborts the stuck handler at once, dropping the connection.
    config.shutdown_grace = Duration::ZERO;
    let mut server = start(kind, config, handler).await;
    let channel = connect(&server.endpoint).await;
    let caller = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.call(request(1), Bytes::new(), LONG).await })
    };
    assert_eq!(events.recv().await, Some("started"));
    server.begin_stop();
    let error = caller
        .await
        .expect("caller")
        .expect_err("connection killed");
    assert!(matches!(error, CallError::Lost { .. }), "{error:?}");
    assert!(!error.is_retryable());
    assert!(error.was_written());
    channel.closed().await;
    assert!(channel.is_closed());
    assert!(channel.close_reason().is_some());

    let error = channel
        .call(request(2), Bytes::new(), LONG)
        .await
        .expect_err("closed");
    assert!(
        matches!(error, CallError::Closed { .. } | CallError::NotSent { .. }),
        "{error:?}"
    );
    assert!(error.is_retryable());
    server.join().await;
}

#[tokio::test]
async fn killed_connection_fails_written_calls_as_lost_over_unix() {
    killed_connection(Kind::Unix).await;
}

#[tokio::test]
async fn killed_connection_fails_written_calls_as_lost_over_tcp() {
    killed_connection(Kind::Tcp).await;
}

#[tokio::test]
async fn calls_after_close_are_closed_and_retryable() {
    let server = start_echo(Kind::Tcp).await;
    let channel = connect(&server.endpoint).await;
    let clone = channel.clone();
    channel.close();
    clone.closed().await;
    let error = clone
        .call(request(1), Bytes::new(), LONG)
        .await
        .expect_err("closed");
    assert_eq!(
        error,
        CallError::Closed {
            endpoint: server.endpoint.clone(),
            reason: CloseReason::Local
        }
    );
    assert!(error.is_retryable());
    drop((channel, clone));
    server.stop().await;
}

#[tokio::test]
async fn oversized_request_is_refused_before_sending() {
    let server = start_echo(Kind::Tcp).await;
    let mut config = ClientConfig::new(TOKEN);
    config.max_frame_len = 1024;
    let channel = Channel::connect(&server.endpoint, config)
        .await
        .expect("connect");
    let error = channel
        .call(request(1), Bytes::from(vec![0; 2048]), LONG)
        .await
        .expect_err("too large");
    assert!(
        matches!(error, CallError::TooLarge { max: 1024, .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    let (_, body) = channel
        .call(request(2), Bytes::from_static(b"small"), LONG)
        .await
        .expect("the channel still works");
    assert_eq!(body, "small");
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn oversized_response_becomes_an_error_response() {
    let mut config = server_config();
    config.max_frame_len = 1024;
    let handler =
        handler_fn(|_request, _body| async { (Response::Rpc, Bytes::from(vec![7; 4096])) });
    let server = start(Kind::Tcp, config, handler).await;
    let channel = connect(&server.endpoint).await;
    let (response, _) = channel
        .call(request(1), Bytes::new(), LONG)
        .await
        .expect("answered");
    assert!(
        matches!(response, Response::Error(WireError::Internal { ref message }) if message.contains("exceeds")),
        "{response:?}"
    );
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_an_internal_error() {
    let handler = handler_fn(|_request, body: Bytes| async move {
        if body == "panic" {
            panic!("handler bug");
        }
        (Response::Rpc, body)
    });
    let server = start(Kind::Unix, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    let (response, _) = channel
        .call(request(1), Bytes::from_static(b"panic"), LONG)
        .await
        .expect("answered");
    assert!(
        matches!(response, Response::Error(WireError::Internal { .. })),
        "{response:?}"
    );
    let (_, body) = channel
        .call(request(2), Bytes::from_static(b"fine"), LONG)
        .await
        .expect("still serving");
    assert_eq!(body, "fine");
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn server_peer_name_comes_from_the_handshake() {
    let server = start_echo(Kind::Tcp).await;
    let channel = connect(&server.endpoint).await;
    assert_eq!(channel.server_peer(), "test server");
    assert_eq!(channel.endpoint(), &server.endpoint);
    drop(channel);
    server.stop().await;
}

/// A server that completes the handshake and then never reads again, so
/// the client's socket fills up.
async fn deaf_server() -> (
    odo_transport::Endpoint,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    use odo_core::Frame;
    use odo_core::wire::{Message, PROTOCOL_VERSION, Welcome};
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release, released) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut stream: Box<dyn RawStream> = Box::new(stream);
        read_frame(&mut stream).await.expect("hello");
        let welcome = encoded(&Frame {
            request_id: 0,
            message: Message::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                peer: "deaf".into(),
            }),
            body: Bytes::new(),
        });
        stream.write_all(&welcome).await.expect("welcome");
        // Hold the connection open, reading nothing, until the test is done.
        let _ = released.await;
    });
    let endpoint = odo_transport::Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    (endpoint, release, task)
}

#[tokio::test]
async fn requests_never_written_fail_as_not_sent_and_written_ones_as_lost() {
    let (endpoint, release, server) = deaf_server().await;
    let channel = connect(&endpoint).await;
    const CALLS: u64 = 2_000;
    let mut calls = JoinSet::new();
    for n in 0..CALLS {
        let channel = channel.clone();
        calls.spawn(async move {
            channel
                .call(request(n), Bytes::from(vec![0; 16 * 1024]), LONG)
                .await
        });
    }
    // Every call is registered (written, or queued behind a full socket)
    // once each task has run up to its wait.
    while channel.calls_in_flight() < CALLS as usize {
        tokio::task::yield_now().await;
    }
    channel.close();
    let (mut lost, mut not_sent) = (0, 0);
    while let Some(done) = calls.join_next().await {
        match done.expect("call task") {
            Err(error @ CallError::Lost { .. }) => {
                assert!(!error.is_retryable());
                lost += 1;
            }
            Err(error @ CallError::NotSent { .. }) => {
                assert!(error.is_retryable());
                not_sent += 1;
            }
            other => panic!("expected Lost or NotSent, got {other:?}"),
        }
    }
    // 32 MiB cannot fit in the socket buffers of a peer that never reads,
    // and the first 16 KiB request surely does.
    assert!(lost > 0, "some requests were written");
    assert!(not_sent > 0, "some requests were still queued");
    let _ = release.send(());
    server.await.expect("deaf server");
}
