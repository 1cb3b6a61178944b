//! The router's forwarding, against real worker endpoints (odo-transport
//! servers on loopback that answer as a script says): retry on `Moved` and
//! on calls never written, no retry once written, the deadline passed on,
//! and what each failure answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use odo_core::placement::{Changed, PlacementSource, ShardLocation, ShardOwner};
use odo_core::wire::{FetchResponse, Request, Response};
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_router::{ClusterService, ForwardError, ObjectService, Outcome};
use odo_transport::{ClientConfig, Endpoint, Server, ServerConfig, handler_fn};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

const TOKEN: &str = "forwarding-test-token";

/// A placement the test changes by hand: every shard at one endpoint (or
/// none), at one epoch.
struct Placement {
    table: watch::Sender<(u64, Option<String>, u64)>,
}

impl Placement {
    fn new(owner: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            table: watch::Sender::new((1, owner.map(str::to_owned), 1)),
        })
    }

    /// Moves every shard to `owner` at a new epoch.
    fn move_to(&self, owner: Option<&str>) {
        self.table.send_modify(|(version, endpoint, epoch)| {
            *version += 1;
            *epoch += 1;
            *endpoint = owner.map(str::to_owned);
        });
    }
}

impl PlacementSource for Placement {
    fn shard_count(&self) -> u32 {
        1
    }

    fn version(&self) -> u64 {
        self.table.borrow().0
    }

    fn locate(&self, _id: &ObjectId) -> ShardLocation {
        let (version, endpoint, epoch) = self.table.borrow().clone();
        ShardLocation {
            version,
            shard: 0,
            epoch,
            owner: endpoint.map(|endpoint| ShardOwner {
                endpoint,
                pid: None,
            }),
        }
    }

    fn changed(&self, seen: u64) -> Changed<'_> {
        let mut table = self.table.subscribe();
        Box::pin(async move {
            let _ = table.wait_for(|t| t.0 != seen).await;
        })
    }
}

/// What a scripted worker does with each call.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Answers 200 with the body "ok".
    Answer,
    /// Answers `Moved`.
    Moved,
    /// Answers `Overloaded`.
    Overloaded,
    /// Never answers (the call is written and then lost when the worker
    /// goes away).
    Hang,
}

/// A worker endpoint on loopback, answering by its script; counts calls and
/// records the deadline each call carried.
struct Worker {
    endpoint: String,
    calls: Arc<AtomicUsize>,
    deadlines: Arc<Mutex<Vec<u64>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    async fn start(script: Script) -> Worker {
        let endpoint: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
        let server = Server::bind(&endpoint, ServerConfig::new(TOKEN))
            .await
            .unwrap();
        let endpoint = server.endpoint().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let deadlines = Arc::new(Mutex::new(Vec::new()));
        let (counted, recorded) = (calls.clone(), deadlines.clone());
        let handler = handler_fn(move |request: Request, _body: Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            if let Request::Fetch(fetch) = &request {
                recorded.lock().unwrap().push(fetch.meta.deadline_ms);
            }
            async move {
                match script {
                    Script::Answer => (
                        Response::Fetch(FetchResponse {
                            status: 200,
                            headers: vec![("x-worker".into(), b"yes".to_vec())],
                        }),
                        Bytes::from_static(b"ok"),
                    ),
                    Script::Moved => (
                        Response::Error(WireError::Moved { epoch: 99 }),
                        Bytes::new(),
                    ),
                    Script::Overloaded => (Response::Error(WireError::Overloaded), Bytes::new()),
                    Script::Hang => std::future::pending().await,
                }
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(Arc::new(handler), async move {
            let _ = stopped.await;
        }));
        Worker {
            endpoint,
            calls,
            deadlines,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Goes away at once, dropping its connections (calls in flight are
    /// lost).
    async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn service(placement: &Arc<Placement>) -> ClusterService {
    ClusterService::new(placement.clone(), ClientConfig::new(TOKEN))
}

fn object() -> ObjectAddress {
    ObjectAddress::named("COUNTER", "hot")
}

fn get() -> http::Request<Bytes> {
    http::Request::builder()
        .uri("/counter/hot")
        .body(Bytes::new())
        .unwrap()
}

async fn fetch(
    service: &ClusterService,
    within: Duration,
) -> Result<http::Response<Bytes>, ForwardError> {
    let deadline = Instant::now() + within;
    tokio::time::timeout(
        within + Duration::from_secs(10),
        service.fetch(object(), get(), deadline),
    )
    .await
    .expect("the forwarder keeps its deadline")
}

#[tokio::test]
async fn moved_is_retried_at_the_new_owner() {
    let old = Worker::start(Script::Moved).await;
    let new = Worker::start(Script::Answer).await;
    let placement = Placement::new(Some(&old.endpoint));
    let service = service(&placement);
    let mover = {
        let placement = placement.clone();
        let calls = old.calls.clone();
        let to = new.endpoint.clone();
        tokio::spawn(async move {
            while calls.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            placement.move_to(Some(&to));
        })
    };
    let response = fetch(&service, Duration::from_secs(10)).await.unwrap();
    mover.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body(), "ok");
    assert_eq!(response.headers()["x-worker"], "yes");
    assert!(old.calls() >= 1);
    assert_eq!(new.calls(), 1);
}

#[tokio::test]
async fn a_call_never_written_is_retried_until_a_worker_takes_it() {
    // Nothing listens at the first owner: the call is never written.
    let gone = Worker::start(Script::Answer).await;
    let nowhere = gone.endpoint.clone();
    gone.kill().await;
    let worker = Worker::start(Script::Answer).await;
    let placement = Placement::new(Some(&nowhere));
    let service = service(&placement);
    let later = {
        let placement = placement.clone();
        let to = worker.endpoint.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            placement.move_to(Some(&to));
        })
    };
    let response = fetch(&service, Duration::from_secs(10)).await.unwrap();
    later.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(worker.calls(), 1);
}

#[tokio::test]
async fn a_call_written_and_then_lost_is_never_retried() {
    let hanging = Worker::start(Script::Hang).await;
    let other = Worker::start(Script::Answer).await;
    let placement = Placement::new(Some(&hanging.endpoint));
    let service = service(&placement);
    let call = {
        let service = service.clone();
        tokio::spawn(async move { fetch(&service, Duration::from_secs(10)).await })
    };
    while hanging.calls() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The owner dies with the call; the placement already points elsewhere.
    placement.move_to(Some(&other.endpoint));
    hanging.kill().await;
    let error = call.await.unwrap().unwrap_err();
    assert!(matches!(error, ForwardError::Lost(_)), "{error:?}");
    assert_eq!(error.outcome(), Outcome::Unknown);
    assert!(!error.retryable());
    assert_eq!(other.calls(), 0, "a written call must not be sent again");
}

#[tokio::test]
async fn the_callers_remaining_deadline_travels_with_the_call() {
    let worker = Worker::start(Script::Answer).await;
    let placement = Placement::new(Some(&worker.endpoint));
    let response = fetch(&service(&placement), Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = worker.deadlines.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(sent[0] > 0 && sent[0] <= 1500, "{sent:?}");
}

#[tokio::test]
async fn each_failure_says_what_happened() {
    // Answered with an error: no retry, the error as it is.
    let overloaded = Worker::start(Script::Overloaded).await;
    let placement = Placement::new(Some(&overloaded.endpoint));
    let error = fetch(&service(&placement), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error, ForwardError::Object(WireError::Overloaded));
    assert_eq!(overloaded.calls(), 1);
    assert!(error.retryable());

    // No owner until the deadline: never delivered, safe to retry.
    let placement = Placement::new(None);
    let error = fetch(&service(&placement), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(error, ForwardError::Unavailable(_)), "{error:?}");
    assert_eq!(error.outcome(), Outcome::NotDelivered);

    // Written, no answer by the deadline: outcome unknown.
    let hanging = Worker::start(Script::Hang).await;
    let placement = Placement::new(Some(&hanging.endpoint));
    let error = fetch(&service(&placement), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(error, ForwardError::Deadline { written: true });
    assert_eq!(error.outcome(), Outcome::Unknown);
}
