//! Graceful shutdown and the connection limit.
// These tests exercise Unix sockets next to TCP; on other platforms the
// crate's own code is compile-checked, and TCP is covered by the
// multi-process matrix.
#![cfg(unix)]

mod common;

use bytes::Bytes;
use common::*;
use odo_core::wire::Response;
use odo_transport::{Channel, ConnectError, handler_fn};
use tokio::sync::{mpsc, oneshot};

/// A handler that reports each request it starts and answers when the test
/// releases it.
fn gated_handler() -> (
    impl odo_transport::Handler,
    mpsc::UnboundedReceiver<oneshot::Sender<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = handler_fn(move |_request, body: Bytes| {
        let tx = tx.clone();
        async move {
            let (release, released) = oneshot::channel();
            let _ = tx.send(release);
            let _ = released.await;
            (Response::Rpc, body)
        }
    });
    (handler, rx)
}

async fn graceful_shutdown_finishes_in_flight(kind: Kind) {
    let (handler, mut started) = gated_handler();
    let mut server = start(kind, server_config(), handler).await;
    let channel = connect(&server.endpoint).await;
    let call = {
        let channel = channel.clone();
        tokio::spawn(async move {
            channel
                .call(request(1), Bytes::from_static(b"in flight"), LONG)
                .await
        })
    };
    let release = started.recv().await.expect("the handler started");
    server.begin_stop();
    server.stopping().await;
    // The server no longer accepts.
    let error = Channel::connect(&server.endpoint, client_config())
        .await
        .expect_err("not accepting");
    assert!(matches!(error, ConnectError::Io { .. }), "{error:?}");
    let _ = release.send(());
    let (response, body) = call
        .await
        .expect("call task")
        .expect("the in-flight call is answered");
    assert_eq!(
        (response, body.as_ref()),
        (Response::Rpc, b"in flight".as_ref())
    );
    server.join().await;
    // After a drained shutdown the connection closes.
    channel.closed().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request_over_unix() {
    graceful_shutdown_finishes_in_flight(Kind::Unix).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_request_over_tcp() {
    graceful_shutdown_finishes_in_flight(Kind::Tcp).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_dropped_and_logged() {
    let (logs, _guard) = Logs::capture();
    let mut config = server_config();
    config.max_connections = 1;
    let server = start(Kind::Tcp, config, echo()).await;
    let first = connect(&server.endpoint).await;
    let error = Channel::connect(&server.endpoint, client_config())
        .await
        .expect_err("over the limit");
    assert!(
        matches!(
            error,
            ConnectError::ClosedDuringHandshake { .. } | ConnectError::Io { .. }
        ),
        "{error:?}"
    );
    logs.assert_line(&["WARN", "connection limit reached"]);
    // The first connection still works, and its slot frees when it closes.
    let (_, body) = first
        .call(request(1), Bytes::from_static(b"first"), LONG)
        .await
        .expect("first still served");
    assert_eq!(body, "first");
    first.close();
    drop(first);
    loop {
        match Channel::connect(&server.endpoint, client_config()).await {
            Ok(channel) => {
                drop(channel);
                break;
            }
            // The server has not reaped the first connection yet: each
            // attempt is a round trip that lets it run.
            Err(_) => continue,
        }
    }
    server.stop().await;
}
