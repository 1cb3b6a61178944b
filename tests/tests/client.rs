//! The Rust client API and the registry as a library: an in-process
//! registry starts real worker processes (the test server binary in its
//! worker role), and a `Client` reaches objects without HTTP.

use std::sync::Arc;

use bytes::Bytes;
use odo_registry::{Registry, RegistryConfig, TransportKind, WorkerCommand};
use odo_router::{Client, ClusterService};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fetches_and_calls_objects_on_worker_processes() {
    let dir = tempfile::tempdir().unwrap();
    let command = WorkerCommand {
        program: env!("CARGO_BIN_EXE_odo-test-server").into(),
        args: Vec::new(),
    };
    let mut config = RegistryConfig::new(command, dir.path().join("data"));
    config.workers = 2;
    config.transport = TransportKind::Tcp;
    let registry = Registry::start(config).await.unwrap();
    registry.ready().await.unwrap();
    assert_eq!(registry.workers().len(), 2);

    let transport = odo_transport::ClientConfig::new(registry.token());
    let client = Client::new(Arc::new(ClusterService::new(
        registry.placement_source(),
        transport,
    )));
    let counters = client.namespace("COUNTER");
    let stub = counters.get_by_name("embedded");
    let request = http::Request::post("/counter/embedded/increment")
        .body(Bytes::new())
        .unwrap();
    let response = stub.fetch(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "1");
    // Typed RPC: the demo counter's `add` and `get`.
    let total: u64 = stub.call("add", &41u64).await.unwrap();
    assert_eq!(total, 42);
    let read: u64 = stub.call("get", &()).await.unwrap();
    assert_eq!(read, 42);
    // The same object by id, parsed from text in upper case.
    let id = counters
        .id_from_string(&stub.id().to_string().to_uppercase())
        .unwrap();
    let read: u64 = counters.get(id).call("get", &()).await.unwrap();
    assert_eq!(read, 42);
    // Unknown methods are the caller's error.
    let err = stub.call::<u64, u64>("nope", &1).await.unwrap_err();
    assert!(err.to_string().contains("unknown method"), "{err}");
    assert!(!err.retryable());
    assert_eq!(err.outcome(), odo_router::Outcome::Failed);
    // A class no worker hosts was never delivered.
    let err = client
        .namespace("NOBODY")
        .get_by_name("x")
        .call::<u64, u64>("add", &1)
        .await
        .unwrap_err();
    assert_eq!(err.outcome(), odo_router::Outcome::NotDelivered, "{err}");
    // Ids of another namespace are refused before any request.
    assert!(
        counters
            .id_from_string(&client.namespace("KV").new_unique_id().to_string())
            .is_err()
    );
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_workers_serve_the_same_contract_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let spec = odo_tests::topology::ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), 0);
    let server = spec.start(dir.path()).unwrap();
    let c = odo_tests::http::HttpClient::new(&server.base);
    assert_eq!(c.get("/hello").await.unwrap().text(), "hello");
    assert_eq!(
        c.post("/counter/local/increment").await.unwrap().text(),
        "1"
    );
    assert_eq!(
        c.post("/counter/local/increment").await.unwrap().text(),
        "2"
    );
    let who: serde_json::Value =
        serde_json::from_slice(&c.get("/counter/local/whoami").await.unwrap().body).unwrap();
    assert_eq!(
        who["pid"].as_u64().unwrap() as u32,
        server.pid,
        "objects live in the main process"
    );
    assert_eq!(
        c.send("PUT", "/kv/local/k", &[], "v").await.unwrap().status,
        204
    );
    assert_eq!(
        c.get("/kv/local?prefix=k").await.unwrap().text(),
        r#"[["k","v"]]"#
    );
    // The object's handler failed: 500, not safe to retry blindly.
    let failed = c.post("/probe/local/fail").await.unwrap();
    assert_eq!(failed.status, 500);
    assert_eq!(failed.header("x-odo-retryable"), ["false"]);
    // HTTP/2 when the client asks for it (prior knowledge, h2c).
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::post(format!("{}/counter/local/increment", server.base))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = h2.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "3");
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // Restarted on the same data, state is there.
    let server = spec.start(dir.path()).unwrap();
    let c = odo_tests::http::HttpClient::new(&server.base);
    assert_eq!(c.get("/counter/local").await.unwrap().text(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opens_websockets_to_an_object() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let dir = tempfile::tempdir().unwrap();
    let command = WorkerCommand {
        program: env!("CARGO_BIN_EXE_odo-test-server").into(),
        args: Vec::new(),
    };
    let mut config = RegistryConfig::new(command, dir.path().join("data"));
    config.workers = 2;
    config.transport = TransportKind::Tcp;
    let registry = Registry::start(config).await.unwrap();
    registry.ready().await.unwrap();
    let service = Arc::new(ClusterService::new(
        registry.placement_source(),
        odo_transport::ClientConfig::new(registry.token()),
    ));
    // The client's own front door, where workers send the sockets' outputs.
    let server = odo_transport::Server::bind(
        &"tcp:127.0.0.1:0".parse().unwrap(),
        odo_transport::ServerConfig::new(registry.token()),
    )
    .await
    .unwrap();
    let door = odo_router::Door::new(
        odo_router::WebSocketConfig::default(),
        server.endpoint().to_string(),
        service.clone(),
    );
    let handler_door = door.clone();
    let handler = odo_transport::handler_fn(move |request, body| {
        let answer = handler_door.handle_request(request, body);
        async move { answer }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(Arc::new(handler), async move {
        let _ = stopped.await;
    }));
    let client = Client::new(service).with_websockets(door.clone());
    let room = client.namespace("ROOM").get_by_name("embedded");
    let open = || room.websocket(http::Request::get("/room/embedded/ws").body(()).unwrap());
    let mut a = open().await.unwrap();
    let mut b = open().await.unwrap();
    a.send(Message::text("from rust")).await.unwrap();
    for ws in [&mut a, &mut b] {
        let got = ws.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text("1:from rust"));
    }
    // Not an upgrade route: the object's answer comes back as the refusal.
    let refused = room
        .websocket(
            http::Request::get("/room/embedded/history")
                .body(())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            odo_router::ClientError::WebSocketRefused { status: 200, .. }
        ),
        "{refused}"
    );
    a.close(None).await.unwrap();
    drop(b);
    door.shutdown().await;
    let _ = stop.send(());
    serving.await.unwrap();
    registry.shutdown().await;
}
