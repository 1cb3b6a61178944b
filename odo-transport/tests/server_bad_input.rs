//! Bad input over real sockets: each closes only the offending connection,
//! and the server goes on serving others.
// These tests exercise Unix sockets next to TCP; on other platforms the
// crate's own code is compile-checked, and TCP is covered by the
// multi-process matrix.
#![cfg(unix)]

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use odo_core::Frame;
use odo_core::codec::{self, FORMAT_VERSION};
use odo_core::wire::{Message, PROTOCOL_VERSION, Refused, Response, Welcome};
use odo_transport::{CallError, Channel, ClientConfig, ConnectError, ConnectStage, Endpoint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Sends `bytes` as the first thing on a connection; the server logs a line
/// containing `reason`.
async fn before_handshake(kind: Kind, bytes: &[u8], reason: &str) {
    let (logs, _guard) = Logs::capture();
    let server = start_echo(kind).await;
    send_and_expect_close(&server.endpoint, bytes).await;
    logs.assert_line(&["WARN", "dropping connection", reason]);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

/// Completes the handshake on a raw connection, then sends `bytes`; the
/// server logs a line containing `reason`.
async fn after_handshake(kind: Kind, bytes: &[u8], reason: &str) {
    let (logs, _guard) = Logs::capture();
    let server = start_echo(kind).await;
    let mut stream = raw(&server.endpoint).await;
    stream.write_all(&good_hello()).await.expect("hello");
    let welcome = read_frame(&mut stream).await.expect("welcome");
    assert!(
        matches!(welcome.message, Message::Welcome(_)),
        "{welcome:?}"
    );
    // A good request first, to show the connection was live.
    stream
        .write_all(&request_frame(1, b"ok"))
        .await
        .expect("request");
    let answer = read_frame(&mut stream).await.expect("answer");
    assert_eq!(
        (answer.request_id, answer.body.as_ref()),
        (1, b"ok".as_ref())
    );
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    assert_closed_by_server(stream).await;
    logs.assert_line(&["WARN", "dropping connection", reason]);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

fn garbage() -> &'static [u8] {
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
}

fn truncated() -> Bytes {
    // The prefix promises 100 bytes; 10 follow, then the client stops.
    let mut buf = BytesMut::new();
    buf.put_u32(100);
    buf.put_slice(&[1; 10]);
    buf.freeze()
}

fn over_the_bound() -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32(64 * 1024 * 1024);
    buf.put_slice(&[0; 64]);
    buf.freeze()
}

/// A well-formed frame whose header byte at `offset` is replaced.
fn with_header_byte(offset: usize, value: u8) -> Bytes {
    let mut frame = BytesMut::from(
        codec::encode(&Frame {
            request_id: 9,
            message: Message::Request(request(9)),
            body: Bytes::from_static(b"x"),
        })
        .expect("encode")
        .as_ref(),
    );
    frame[offset] = value;
    prefixed(&frame)
}

fn unknown_kind() -> Bytes {
    with_header_byte(1, 200)
}

fn unknown_format_version() -> Bytes {
    with_header_byte(0, FORMAT_VERSION + 1)
}

/// A truncated frame must end the stream: write it, then half-close.
async fn truncated_then_eof(kind: Kind, handshake_first: bool) {
    let (logs, _guard) = Logs::capture();
    let server = start_echo(kind).await;
    let mut stream = raw(&server.endpoint).await;
    if handshake_first {
        stream.write_all(&good_hello()).await.expect("hello");
        read_frame(&mut stream).await.expect("welcome");
    }
    stream.write_all(&truncated()).await.expect("write");
    stream.shutdown().await.expect("half-close");
    assert_closed_by_server(stream).await;
    logs.assert_line(&["WARN", "dropping connection", "truncated frame"]);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_bytes_close_the_connection() {
    // "GET " read as a length prefix is over a gigabyte.
    before_handshake(Kind::Tcp, garbage(), "over the").await;
    before_handshake(Kind::Unix, garbage(), "over the").await;
    after_handshake(Kind::Tcp, garbage(), "over the").await;
    after_handshake(Kind::Unix, garbage(), "over the").await;
    // Short garbage inside a valid prefix.
    let short = prefixed(b"0123456789abcdefghijklmnop");
    before_handshake(Kind::Tcp, &short, "malformed first frame").await;
    after_handshake(Kind::Unix, &short, "malformed frame").await;
}

#[tokio::test]
async fn a_truncated_frame_closes_the_connection() {
    truncated_then_eof(Kind::Tcp, false).await;
    truncated_then_eof(Kind::Unix, true).await;
}

#[tokio::test]
async fn a_length_prefix_over_the_bound_closes_the_connection() {
    // Before the handshake, the bound is the handshake's own size.
    before_handshake(
        Kind::Tcp,
        &over_the_bound(),
        "over the 669-byte handshake bound",
    )
    .await;
    after_handshake(
        Kind::Unix,
        &over_the_bound(),
        "over the 16777216-byte bound",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_frame_kind_closes_the_connection() {
    before_handshake(Kind::Tcp, &unknown_kind(), "unknown frame kind 200").await;
    after_handshake(Kind::Tcp, &unknown_kind(), "unknown frame kind 200").await;
    after_handshake(Kind::Unix, &unknown_kind(), "unknown frame kind 200").await;
}

#[tokio::test]
async fn an_unknown_format_version_closes_the_connection() {
    before_handshake(
        Kind::Unix,
        &unknown_format_version(),
        "unsupported frame format version",
    )
    .await;
    after_handshake(
        Kind::Tcp,
        &unknown_format_version(),
        "unsupported frame format version",
    )
    .await;
}

#[tokio::test]
async fn a_second_hello_after_the_handshake_closes_the_connection() {
    after_handshake(Kind::Tcp, &good_hello(), "unexpected Hello frame").await;
}

async fn refused_hello(hello: Bytes, expected: Refused, reason: &str) {
    let (logs, _guard) = Logs::capture();
    let server = start_echo(Kind::Tcp).await;
    let mut stream = raw(&server.endpoint).await;
    stream.write_all(&hello).await.expect("hello");
    let answer = read_frame(&mut stream).await.expect("refusal");
    assert_eq!(answer.message, Message::Refused(expected));
    assert_closed_by_server(stream).await;
    logs.assert_line(&["WARN", "handshake refused", reason]);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_refused() {
    refused_hello(
        hello("not-the-token", PROTOCOL_VERSION),
        Refused::BadToken,
        "wrong cluster token",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused() {
    refused_hello(
        hello(TOKEN, PROTOCOL_VERSION + 1),
        Refused::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 1,
        },
        "protocol version mismatch",
    )
    .await;
}

#[tokio::test]
async fn a_request_before_the_handshake_is_refused() {
    refused_hello(
        request_frame(1, b"sneaky"),
        Refused::NotAHandshake,
        "got a Request frame",
    )
    .await;
}

#[tokio::test]
async fn a_channel_with_a_wrong_token_gets_a_typed_error() {
    let server = start_echo(Kind::Unix).await;
    let error = Channel::connect(&server.endpoint, ClientConfig::new("wrong"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            ConnectError::Refused {
                reason: Refused::BadToken,
                ..
            }
        ),
        "{error:?}"
    );
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_deadline() {
    for kind in [Kind::Tcp, Kind::Unix] {
        let (logs, _guard) = Logs::capture();
        let mut config = server_config();
        config.handshake_timeout = Duration::from_millis(200);
        let server = start(kind, config, echo()).await;
        // Connects and sends nothing.
        let silent = raw(&server.endpoint).await;
        assert_closed_by_server(silent).await;
        logs.assert_line(&["WARN", "no handshake in time"]);
        assert_serving(&server.endpoint).await;
        server.stop().await;
    }
}

/// A fake server on a raw listener, answering the first frame with
/// `answer` (or nothing).
async fn fake_server(answer: Option<Bytes>) -> (Endpoint, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut first = [0u8; 4];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await;
        match answer {
            Some(bytes) => {
                let _ = stream.write_all(&bytes).await;
                // Keep the connection open until the client gives up.
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
            }
            None => {
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
            }
        }
    });
    let endpoint = Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    (endpoint, task)
}

#[tokio::test]
async fn a_server_speaking_another_version_is_a_typed_error() {
    let welcome = encoded(&Frame {
        request_id: 0,
        message: Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION + 1,
            peer: "future server".into(),
        }),
        body: Bytes::new(),
    });
    let (endpoint, fake) = fake_server(Some(welcome)).await;
    let error = Channel::connect(&endpoint, client_config())
        .await
        .expect_err("mismatch");
    assert!(
        matches!(error, ConnectError::VersionMismatch { ours: PROTOCOL_VERSION, theirs, .. } if theirs == PROTOCOL_VERSION + 1),
        "{error:?}"
    );
    fake.await.expect("fake server");
}

#[tokio::test]
async fn a_server_answering_garbage_is_a_typed_error() {
    let (endpoint, fake) = fake_server(Some(Bytes::from_static(b"\0\0\0\x05hello"))).await;
    let error = Channel::connect(&endpoint, client_config())
        .await
        .expect_err("garbage");
    assert!(matches!(error, ConnectError::Protocol { .. }), "{error:?}");
    fake.await.expect("fake server");
}

#[tokio::test]
async fn a_silent_server_hits_the_client_handshake_deadline() {
    let (endpoint, fake) = fake_server(None).await;
    let mut config = client_config();
    config.handshake_timeout = Duration::from_millis(200);
    let error = Channel::connect(&endpoint, config)
        .await
        .expect_err("timeout");
    assert!(
        matches!(
            error,
            ConnectError::Timeout {
                stage: ConnectStage::Handshake,
                ..
            }
        ),
        "{error:?}"
    );
    fake.await.expect("fake server");
}

#[tokio::test]
async fn a_server_sending_a_bad_frame_fails_the_call_as_a_protocol_error() {
    // The fake server welcomes us, reads the request, then answers garbage.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, mut write) = stream.into_split();
        let mut read: Box<dyn RawStream> = Box::new(tokio::io::join(read, tokio::io::sink()));
        read_frame(&mut read).await.expect("hello");
        let welcome = encoded(&Frame {
            request_id: 0,
            message: Message::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                peer: "fake".into(),
            }),
            body: Bytes::new(),
        });
        write.write_all(&welcome).await.expect("welcome");
        let request = read_frame(&mut read).await.expect("request");
        write
            .write_all(&with_header_byte(1, 77))
            .await
            .expect("garbage");
        let _ = request;
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut sink).await;
    });
    let endpoint = Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let channel = Channel::connect(&endpoint, client_config())
        .await
        .expect("connect");
    let error = channel
        .call(request(1), Bytes::new(), LONG)
        .await
        .expect_err("garbage");
    assert!(matches!(error, CallError::Protocol { .. }), "{error:?}");
    assert!(!error.is_retryable());
    channel.closed().await;
    drop(channel);
    fake.await.expect("fake server");
}

#[tokio::test]
async fn a_response_for_the_right_call_is_still_matched_after_garbage_elsewhere() {
    // Regression guard: a garbage connection does not disturb a live channel
    // on the same server.
    let server = start_echo(Kind::Unix).await;
    let channel = connect(&server.endpoint).await;
    send_and_expect_close(&server.endpoint, garbage()).await;
    let (response, body) = channel
        .call(request(5), Bytes::from_static(b"mine"), LONG)
        .await
        .expect("call");
    assert_eq!((response, body.as_ref()), (Response::Rpc, b"mine".as_ref()));
    drop(channel);
    server.stop().await;
}
