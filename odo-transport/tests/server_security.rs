//! Where and how servers listen: private socket directories, private
//! sockets, stale sockets, sockets removed under a running server,
//! loopback-only TCP.
// These tests exercise Unix sockets next to TCP; on other platforms the
// crate's own code is compile-checked, and TCP is covered by the
// multi-process matrix.
#![cfg(unix)]

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use common::*;
use odo_transport::{BindError, Endpoint, Server, ServerConfig};

fn unix_endpoint(path: &Path) -> Endpoint {
    Endpoint::Unix(path.to_owned())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn a_missing_socket_directory_is_created_private_and_the_socket_is_private() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("nested").join("run");
    let socket = dir.join("worker.sock");
    let server = start_at(&unix_endpoint(&socket), None, server_config(), echo()).await;
    assert_eq!(mode(&dir), 0o700, "socket directory mode");
    assert!(
        std::fs::metadata(&socket)
            .expect("socket")
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&socket), 0o600, "socket mode");
    assert_serving(&server.endpoint).await;
    server.stop().await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[tokio::test]
async fn a_socket_directory_others_can_enter_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("shared");
    std::fs::create_dir(&dir).expect("mkdir");
    for open in [0o755, 0o750, 0o701, 0o770] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).expect("chmod");
        let error = Server::bind(&unix_endpoint(&dir.join("s.sock")), server_config())
            .await
            .expect_err("refused");
        match error {
            BindError::DirectoryNotPrivate { dir: ref d, mode } => {
                assert_eq!(d, &dir);
                assert_eq!(mode, open);
            }
            other => panic!("mode {open:o}: expected DirectoryNotPrivate, got {other:?}"),
        }
        assert!(error.to_string().contains("chmod 700"), "{error}");
    }
    assert!(!dir.join("s.sock").exists());
}

#[tokio::test]
async fn a_socket_path_under_a_file_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let file = root.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let error = Server::bind(&unix_endpoint(&file.join("s.sock")), server_config())
        .await
        .expect_err("refused");
    assert!(
        matches!(error, BindError::NotADirectory { .. }),
        "{error:?}"
    );
}

fn private_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("run");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    (root, dir)
}

#[tokio::test]
async fn a_stale_socket_is_replaced_when_nothing_listens() {
    let (_root, dir) = private_dir();
    let socket = dir.join("w.sock");
    // A socket file whose listener is gone, as a crashed server leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let server = start_at(&unix_endpoint(&socket), None, server_config(), echo()).await;
    assert_serving(&server.endpoint).await;
    server.stop().await;
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_live_socket_is_not_replaced() {
    let (_root, dir) = private_dir();
    let socket = dir.join("w.sock");
    let endpoint = unix_endpoint(&socket);
    let first = start_at(&endpoint, None, server_config(), echo()).await;
    let error = Server::bind(&endpoint, server_config())
        .await
        .expect_err("in use");
    assert!(matches!(error, BindError::AddrInUse { .. }), "{error:?}");
    // The first server is untouched.
    assert_serving(&first.endpoint).await;
    first.stop().await;
}

/// A cleaner of temporary files removes the socket's directory, socket and
/// all, under a running server: the server makes both again (the
/// directory private) within its check interval, and a channel connected
/// before keeps working.
#[tokio::test]
async fn a_socket_removed_under_a_running_server_is_made_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("run");
    let socket = dir.join("w.sock");
    let mut config = server_config();
    config.socket_file_check = std::time::Duration::from_millis(20);
    let server = start_at(&unix_endpoint(&socket), None, config, echo()).await;
    let before = connect(&server.endpoint).await;
    std::fs::remove_dir_all(&dir).expect("the cleaner");
    let removed = std::time::Instant::now();
    while !socket.exists() {
        assert!(
            removed.elapsed() < std::time::Duration::from_secs(10),
            "the socket was not made again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(mode(&dir), 0o700, "socket directory mode");
    assert_eq!(mode(&socket), 0o600, "socket mode");
    assert_serving(&server.endpoint).await;
    let (_, body) = before
        .call(request(2), bytes::Bytes::from_static(b"old"), LONG)
        .await
        .expect("a channel connected before still works");
    assert_eq!(body, "old");
    server.stop().await;
    assert!(
        !socket.exists(),
        "the new socket file is removed at shutdown"
    );
}

#[tokio::test]
async fn a_regular_file_at_the_socket_path_is_left_alone() {
    let (_root, dir) = private_dir();
    let path = dir.join("not-a-socket");
    std::fs::write(&path, b"precious").expect("write");
    let error = Server::bind(&unix_endpoint(&path), server_config())
        .await
        .expect_err("refused");
    assert!(matches!(error, BindError::NotASocket { .. }), "{error:?}");
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
}

#[tokio::test]
async fn non_loopback_tcp_is_refused_by_default() {
    for endpoint in ["tcp:0.0.0.0:0", "tcp:[::]:0"] {
        let endpoint: Endpoint = endpoint.parse().expect("endpoint");
        let error = Server::bind(&endpoint, server_config())
            .await
            .expect_err("refused");
        assert!(matches!(error, BindError::NonLoopback { .. }), "{error:?}");
        assert!(error.to_string().contains("allow_non_loopback"), "{error}");
    }
}

#[tokio::test]
async fn non_loopback_tcp_binds_when_allowed() {
    let mut config = server_config();
    config.allow_non_loopback = true;
    let server = Server::bind(&"tcp:0.0.0.0:0".parse().expect("endpoint"), config)
        .await
        .expect("allowed");
    let Endpoint::Tcp { port, .. } = server.endpoint() else {
        panic!("tcp endpoint");
    };
    assert_ne!(*port, 0);
}

#[tokio::test]
async fn localhost_binds_loopback_and_reports_the_real_port() {
    let server = start_at(
        &"tcp:localhost:0".parse().expect("endpoint"),
        None,
        server_config(),
        echo(),
    )
    .await;
    let Endpoint::Tcp { host, port } = &server.endpoint else {
        panic!("tcp endpoint");
    };
    assert!(host.parse::<std::net::IpAddr>().expect("ip").is_loopback());
    assert_ne!(*port, 0);
    assert_serving(&server.endpoint).await;
    server.stop().await;
}

#[tokio::test]
async fn an_empty_token_is_refused() {
    let error = Server::bind(&Endpoint::tcp_loopback_any_port(), ServerConfig::new(""))
        .await
        .expect_err("refused");
    assert!(matches!(error, BindError::Config { .. }), "{error:?}");
}
