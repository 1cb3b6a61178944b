//! A real worker process, driven over the transport by a test playing the
//! registry: shard assignment with epochs, `Moved`, and acknowledged writes
//! that survive SIGKILL.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::launch::WorkerLaunch;
use odo_core::wire::{
    CallMeta, Control, ControlReply, FetchRequest, HttpHead, Request, Response, Target,
};
use odo_core::{Namespace, ObjectAddress, WireError};
use odo_storage::{FjallBackend, FjallOptions, Store, StoreOptions};
use odo_transport::{Channel, ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::sync::mpsc;

const TOKEN: &str = "test-cluster-token";

/// Kills and reaps the child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Registry {
    hellos: mpsc::UnboundedReceiver<(u32, String)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    endpoint: Endpoint,
}

/// A stand-in registry: accepts worker hellos and reports them.
async fn registry(dir: &std::path::Path) -> Registry {
    let endpoint: Endpoint = format!("unix:{}", dir.join("run/registry.sock").display())
        .parse()
        .unwrap();
    let server = Server::bind(&endpoint, ServerConfig::new(TOKEN))
        .await
        .unwrap();
    let (tx, hellos) = mpsc::unbounded_channel();
    let handler = handler_fn(move |request, _body| {
        let tx = tx.clone();
        async move {
            if let Request::Control(Control::WorkerHello { pid, endpoint, .. }) = request {
                let _ = tx.send((pid, endpoint));
                (Response::Control(ControlReply::Ack), Bytes::new())
            } else {
                (
                    Response::Error(WireError::BadRequest {
                        message: "registry stand-in".into(),
                    }),
                    Bytes::new(),
                )
            }
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(Arc::new(handler), async move {
        let _ = stopped.await;
    }));
    Registry {
        hellos,
        stop: Some(stop),
        endpoint,
    }
}

fn spawn_worker(dir: &std::path::Path, registry: &Endpoint) -> ChildGuard {
    let launch = WorkerLaunch {
        index: 0,
        registry: registry.to_string(),
        listen: format!("unix:{}", dir.join("run/worker-0.sock").display()),
        data_dir: dir.join("data").display().to_string(),
        storage: "fjall".to_owned(),
        shard_count: 1,
        parent_pid: std::process::id(),
        websocket_max_message_bytes: 32 << 20,
    };
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_odo-test-worker"))
            .args(launch.to_args())
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn the worker"),
    );
    // The token on standard input, as a registry hands it over.
    let mut stdin = child.0.stdin.take().expect("a pipe to the worker");
    std::io::Write::write_all(&mut stdin, &odo_core::launch::encode_token(TOKEN).unwrap())
        .expect("hand over the token");
    drop(stdin);
    child
}

fn fetch(method: &str, name: &str, epoch: u64) -> Request {
    Request::Fetch(FetchRequest {
        target: Target {
            object: ObjectAddress::named("COUNTER", name),
            shard: 0,
            epoch,
        },
        meta: CallMeta {
            deadline_ms: 10_000,
            chain: vec![],
        },
        head: HttpHead {
            method: method.into(),
            uri: if method == "POST" {
                format!("/counter/{name}/increment")
            } else {
                format!("/counter/{name}")
            },
            headers: vec![],
        },
    })
}

async fn call(
    channel: &Channel,
    request: Request,
) -> Result<(Response, Bytes), odo_transport::CallError> {
    channel
        .call(request, Bytes::new(), Duration::from_secs(10))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_of_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry(dir.path()).await;
    let mut child = spawn_worker(dir.path(), &registry.endpoint);
    let (pid, endpoint) = registry.hellos.recv().await.expect("the worker says hello");
    assert_eq!(pid, child.0.id());
    let endpoint: Endpoint = endpoint.parse().unwrap();
    let channel = Channel::connect(&endpoint, ClientConfig::new(TOKEN))
        .await
        .unwrap();

    // Before any assignment the worker serves nothing.
    let (answer, _) = call(&channel, fetch("GET", "c", 1)).await.unwrap();
    assert_eq!(answer, Response::Error(WireError::Moved { epoch: 0 }));
    let assign = Request::Control(Control::AssignShard { shard: 0, epoch: 3 });
    assert_eq!(
        call(&channel, assign).await.unwrap().0,
        Response::Control(ControlReply::Ack)
    );
    // A request stamped with an old epoch is answered Moved.
    let (answer, _) = call(&channel, fetch("GET", "c", 2)).await.unwrap();
    assert_eq!(answer, Response::Error(WireError::Moved { epoch: 3 }));
    let (answer, _) = call(&channel, fetch("GET", "c", 3)).await.unwrap();
    assert!(
        matches!(answer, Response::Fetch(ref f) if f.status == 200),
        "{answer:?}"
    );
    let heartbeat = Request::Control(Control::Heartbeat { now_ms: 0 });
    assert!(matches!(
        call(&channel, heartbeat).await.unwrap().0,
        Response::Control(ControlReply::Stats(_))
    ));

    // Increment from 8 concurrent clients; SIGKILL the worker after 300
    // acknowledgements, with more in flight.
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<u64>();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let channel = channel.clone();
        let acks_tx = acks_tx.clone();
        clients.push(tokio::spawn(async move {
            loop {
                match call(&channel, fetch("POST", "c", 3)).await {
                    Ok((Response::Fetch(head), body)) if head.status == 200 => {
                        let value: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
                        if acks_tx.send(value).is_err() {
                            return;
                        }
                    }
                    // The worker died: everything after is unknown or unsent.
                    Err(_) => return,
                    Ok(other) => panic!("unexpected answer {other:?}"),
                }
            }
        }));
    }
    drop(acks_tx);
    let mut acknowledged = Vec::new();
    while let Some(value) = acks.recv().await {
        acknowledged.push(value);
        if acknowledged.len() == 300 {
            child.0.kill().unwrap();
            child.0.wait().unwrap();
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(acknowledged.len() >= 300);
    let highest = *acknowledged.iter().max().unwrap();

    // Reopen the dead worker's store: every acknowledged increment is there.
    let store = Store::open(
        FjallBackend::open(dir.path().join("data/shards/0"), FjallOptions::default()).unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut object = store.object(Namespace::new("COUNTER").id_from_name("c"));
    let stored: u64 = object.get_typed("count").await.unwrap().unwrap();
    assert!(
        stored >= highest,
        "acknowledged value {highest} lost: the store holds {stored}"
    );
    store.close().await.unwrap();
    drop(registry.stop.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_exits_cleanly_when_the_registry_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = registry(dir.path()).await;
    let mut child = spawn_worker(dir.path(), &registry.endpoint);
    let (_, endpoint) = registry.hellos.recv().await.unwrap();
    let channel = Channel::connect(&endpoint.parse().unwrap(), ClientConfig::new(TOKEN))
        .await
        .unwrap();
    let assign = Request::Control(Control::AssignShard { shard: 0, epoch: 1 });
    call(&channel, assign).await.unwrap();
    let (answer, _) = call(&channel, fetch("POST", "d", 1)).await.unwrap();
    assert!(matches!(answer, Response::Fetch(_)), "{answer:?}");
    // Stopping the registry's server closes the worker's control channel.
    let _ = registry.stop.take().unwrap().send(());
    let status = tokio::task::spawn_blocking(move || {
        let status = child.0.wait();
        (status, child)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(status.success(), "the worker must exit cleanly: {status:?}");
    // It closed its store on the way out: reopening works at once.
    let store = Store::open(
        FjallBackend::open(dir.path().join("data/shards/0"), FjallOptions::default()).unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut object = store.object(Namespace::new("COUNTER").id_from_name("d"));
    assert_eq!(object.get_typed::<u64>("count").await.unwrap(), Some(1));
    store.close().await.unwrap();
}
