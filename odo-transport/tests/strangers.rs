//! What a stranger (a connection that has not completed the handshake) can
//! cost: frames before the handshake are bounded to the handshake's size,
//! and unauthenticated connections have their own small cap, so they never
//! take a real peer's place.
// These tests exercise Unix sockets next to TCP; on other platforms the
// crate's own code is compile-checked, and TCP is covered by the
// multi-process matrix.
#![cfg(unix)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use odo_core::Frame;
use odo_core::wire::{Hello, Message, PROTOCOL_VERSION, Refused, Response};
use odo_transport::{
    BindError, Channel, ClientConfig, ConnectError, DEFAULT_MAX_UNAUTHENTICATED, Endpoint,
    MAX_HANDSHAKE_FRAME_LEN, MAX_PEER_NAME_LEN, MAX_TOKEN_LEN, Server, ServerConfig,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A failure guard far below the handshake timeouts the tests configure:
/// what must happen "at once" happens well within it.
const AT_ONCE: Duration = Duration::from_secs(10);
/// A handshake timeout no test waits for.
const NEVER: Duration = Duration::from_secs(600);

fn patient_server() -> ServerConfig {
    let mut config = server_config();
    config.handshake_timeout = NEVER;
    config
}

/// Connects a real channel and makes a call, within [`AT_ONCE`].
async fn connect_and_call(endpoint: &Endpoint, n: u64) -> Channel {
    let channel = tokio::time::timeout(AT_ONCE, Channel::connect(endpoint, client_config()))
        .await
        .expect("a real peer connects at once")
        .expect("a real peer connects");
    let body = Bytes::from(format!("call {n}"));
    let (response, answer) =
        tokio::time::timeout(AT_ONCE, channel.call(request(n), body.clone(), LONG))
            .await
            .expect("answered at once")
            .expect("answered");
    assert_eq!((response, answer), (Response::Rpc, body));
    channel
}

async fn silent_strangers(endpoint: &Endpoint, n: usize) -> Vec<Box<dyn RawStream>> {
    let mut strangers = Vec::with_capacity(n);
    for _ in 0..n {
        strangers.push(raw(endpoint).await);
    }
    strangers
}

async fn strangers_never_take_a_peers_place(kind: Kind) {
    let mut config = patient_server();
    config.max_connections = 4;
    let server = start(kind, config, echo()).await;
    // More silent strangers than there are places for real peers (but
    // fewer than the unauthenticated cap: none of them is closed).
    let strangers = silent_strangers(&server.endpoint, 16).await;
    let mut peers = Vec::new();
    for n in 0..4 {
        peers.push(connect_and_call(&server.endpoint, n).await);
    }
    drop(strangers);
    drop(peers);
    server.stop().await;
}

#[tokio::test]
async fn silent_strangers_never_take_a_real_peers_place_over_tcp() {
    strangers_never_take_a_peers_place(Kind::Tcp).await;
}

#[tokio::test]
async fn silent_strangers_never_take_a_real_peers_place_over_unix() {
    strangers_never_take_a_peers_place(Kind::Unix).await;
}

async fn a_peer_gets_in_past_a_full_stranger_cap(kind: Kind) {
    let (logs, _guard) = Logs::capture();
    let mut config = patient_server();
    config.max_unauthenticated = 8;
    config.max_connections = 8;
    let server = start(kind, config, echo()).await;
    let established = connect_and_call(&server.endpoint, 0).await;
    // The unauthenticated cap full of silent strangers, and more waiting.
    let strangers = silent_strangers(&server.endpoint, 24).await;
    // A new real peer is served at once: it does not wait for a stranger's
    // handshake timeout.
    let newcomer = connect_and_call(&server.endpoint, 1).await;
    let (_, body) = established
        .call(request(2), Bytes::from_static(b"still"), LONG)
        .await
        .expect("an established peer is untouched");
    assert_eq!(body, "still");
    logs.assert_line(&["WARN", "too many unauthenticated connections"]);
    drop(strangers);
    drop((established, newcomer));
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_real_peer_gets_in_while_strangers_fill_the_unauthenticated_cap_over_tcp() {
    a_peer_gets_in_past_a_full_stranger_cap(Kind::Tcp).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_real_peer_gets_in_while_strangers_fill_the_unauthenticated_cap_over_unix() {
    a_peer_gets_in_past_a_full_stranger_cap(Kind::Unix).await;
}

async fn over_the_handshake_bound(kind: Kind) {
    let (logs, _guard) = Logs::capture();
    let server = start(kind, patient_server(), echo()).await;
    let mut stream = raw(&server.endpoint).await;
    let prefix = u32::try_from(MAX_HANDSHAKE_FRAME_LEN + 1).expect("small");
    stream
        .write_all(&prefix.to_be_bytes())
        .await
        .expect("prefix");
    // Nothing follows the prefix: the server closes on the prefix alone.
    let mut rest = Vec::new();
    tokio::time::timeout(
        AT_ONCE,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
    )
    .await
    .expect("the server closes at once")
    .expect("a clean close");
    assert!(rest.is_empty(), "no answer but the close: {rest:?}");
    logs.assert_line(&[
        "WARN",
        "dropping connection",
        &format!("over the {MAX_HANDSHAKE_FRAME_LEN}-byte handshake bound"),
    ]);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_prefix_just_over_the_handshake_bound_closes_at_once_over_tcp() {
    over_the_handshake_bound(Kind::Tcp).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_prefix_just_over_the_handshake_bound_closes_at_once_over_unix() {
    over_the_handshake_bound(Kind::Unix).await;
}

/// The largest handshake frame there is: the longest token and peer name,
/// and a protocol version that takes postcard's longest varint.
fn largest_hello() -> Bytes {
    encoded(&Frame {
        request_id: 0,
        message: Message::Hello(Hello {
            protocol_version: u32::MAX,
            token: "t".repeat(MAX_TOKEN_LEN),
            peer: "p".repeat(MAX_PEER_NAME_LEN),
        }),
        body: Bytes::new(),
    })
}

#[tokio::test]
async fn a_handshake_frame_at_the_bound_is_read() {
    let hello = largest_hello();
    assert_eq!(
        hello.len(),
        4 + MAX_HANDSHAKE_FRAME_LEN,
        "a frame at the bound"
    );
    for kind in [Kind::Tcp, Kind::Unix] {
        let server = start(kind, patient_server(), echo()).await;
        let mut stream = raw(&server.endpoint).await;
        stream.write_all(&hello).await.expect("hello");
        // Read and judged: refused for its version, not dropped for its size.
        let answer = tokio::time::timeout(AT_ONCE, read_frame(&mut stream))
            .await
            .expect("answered at once")
            .expect("a refusal");
        assert_eq!(
            answer.message,
            Message::Refused(Refused::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: u32::MAX
            })
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn the_longest_token_and_names_complete_the_handshake() {
    let token = "k".repeat(MAX_TOKEN_LEN);
    let mut config = patient_server();
    config.token = token.clone();
    config.peer_name = "s".repeat(MAX_PEER_NAME_LEN);
    let server = start(Kind::Unix, config, echo()).await;
    let client = ClientConfig {
        peer_name: "c".repeat(MAX_PEER_NAME_LEN),
        ..ClientConfig::new(token)
    };
    let channel = Channel::connect(&server.endpoint, client)
        .await
        .expect("the longest legitimate handshake fits the bound");
    assert_eq!(channel.server_peer(), "s".repeat(MAX_PEER_NAME_LEN));
    let (_, body) = channel
        .call(request(1), Bytes::from_static(b"long names"), LONG)
        .await
        .expect("call");
    assert_eq!(body, "long names");
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn longer_peer_names_are_cut_to_fit_the_handshake() {
    // Multi-byte characters: the cut falls on a character boundary.
    let long = "é".repeat(MAX_PEER_NAME_LEN);
    let mut config = patient_server();
    config.peer_name = long.clone();
    let server = start(Kind::Tcp, config, echo()).await;
    let client = ClientConfig {
        peer_name: long.clone(),
        ..client_config()
    };
    let channel = Channel::connect(&server.endpoint, client)
        .await
        .expect("a long name does not fail the handshake");
    let name = channel.server_peer();
    assert!(name.len() <= MAX_PEER_NAME_LEN, "{} bytes", name.len());
    assert!(name.len() >= MAX_PEER_NAME_LEN - 1, "{} bytes", name.len());
    assert!(long.starts_with(name));
    drop(channel);
    server.stop().await;
}

#[tokio::test]
async fn a_server_announcing_a_huge_handshake_answer_is_refused_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut first = [0u8; 4];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await;
        let prefix = u32::try_from(MAX_HANDSHAKE_FRAME_LEN + 1).expect("small");
        let _ = stream.write_all(&prefix.to_be_bytes()).await;
        // Keep the connection open until the client gives up.
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
    });
    let endpoint = Endpoint::Tcp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let mut config = client_config();
    config.handshake_timeout = NEVER;
    let error = tokio::time::timeout(AT_ONCE, Channel::connect(&endpoint, config))
        .await
        .expect("the client gives up at once")
        .expect_err("refused");
    assert!(
        matches!(&error, ConnectError::Protocol { reason, .. } if reason.contains("handshake bound")),
        "{error:?}"
    );
    fake.await.expect("fake server");
}

#[tokio::test]
async fn a_token_over_the_handshake_limit_is_a_configuration_error() {
    let long = "k".repeat(MAX_TOKEN_LEN + 1);
    let error = Server::bind(
        &Endpoint::tcp_loopback_any_port(),
        ServerConfig::new(long.clone()),
    )
    .await
    .expect_err("refused");
    assert!(matches!(error, BindError::Config { .. }), "{error:?}");
    assert!(error.to_string().contains("MAX_TOKEN_LEN"), "{error}");
    let server = start_echo(Kind::Tcp).await;
    let error = Channel::connect(&server.endpoint, ClientConfig::new(long))
        .await
        .expect_err("refused");
    assert!(matches!(error, ConnectError::Config { .. }), "{error:?}");
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_connections_have_a_small_default_cap_of_their_own() {
    let config = ServerConfig::new(TOKEN);
    assert_eq!(config.max_unauthenticated, DEFAULT_MAX_UNAUTHENTICATED);
    assert_eq!(DEFAULT_MAX_UNAUTHENTICATED, 64);
    assert!(config.max_unauthenticated < config.max_connections);
    let mut zero = server_config();
    zero.max_unauthenticated = 0;
    let error = Server::bind(&Endpoint::tcp_loopback_any_port(), zero)
        .await
        .expect_err("refused");
    assert!(matches!(error, BindError::Config { .. }), "{error:?}");
}
