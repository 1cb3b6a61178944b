//! The HTTP front door: hyper 1 (HTTP/1.1, and HTTP/2 when the client asks
//! for it), limits, admin endpoints; which request goes where is
//! `routes.rs`, and reaching the object is the [`ObjectService`]'s.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::budget::{BodyBudget, Claim, SMALL_ANSWER_BYTES};
use crate::headers::is_hop_by_hop;
use crate::metrics::Metrics;
use crate::routes::{IdExtractor, PlainRoutes, RouteError};
use crate::service::{ForwardError, ObjectService};
use crate::status::{busy_response, error_response};
use crate::ws::{Door, Upgrade, is_upgrade};

/// Limits and timings of the front door. `Default` gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The largest request body; larger ones answer 413. Default 1 MiB.
    pub max_body_bytes: usize,
    /// How long a request may take end to end; then 504. Default 30 s.
    pub request_deadline: Duration,
    /// The longest object name in a URL, in bytes; longer ones answer 400.
    /// Default 256.
    pub max_name_bytes: usize,
    /// The most HTTP connections open at once. A client over the cap is
    /// answered at once, `503` with `Retry-After: 1` and
    /// `Connection: close`, and closed, never left waiting in silence.
    /// Default 10,000.
    pub max_connections: usize,
    /// How long shutdown waits for open requests. Default 10 s.
    pub shutdown_grace: Duration,
    /// How long a client has to send a whole request head: on a new
    /// connection, counted from when it was accepted; on a kept-alive
    /// HTTP/1.1 connection, from the first byte of the next request. Then
    /// the connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with nothing to do: an HTTP/1.1
    /// connection kept alive between requests, an HTTP/2 connection with no
    /// request in progress, or a response the client does not read. Then it
    /// is closed (gracefully: HTTP/2 sends `GOAWAY`). Default 60 s.
    pub idle_timeout: Duration,
    /// The body bytes the door may hold at once over every connection:
    /// request bodies being read and answers not yet sent. Past it a new
    /// request, or a body being read, is answered 503 (`x-odo-error:
    /// busy`, safe to send again) before it reaches its object, and an
    /// answer over 64 KiB is dropped (502, `outcome-unknown`: its object
    /// ran). Answers up to 64 KiB are always taken. Default 256 MiB.
    pub max_held_body_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_deadline: Duration::from_secs(30),
            max_name_bytes: 256,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_held_body_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Information for the admin endpoints.
pub trait Admin: Send + Sync + 'static {
    /// `GET /_odo/workers`: each worker's pid, endpoint, shards, state,
    /// restarts and figures, as JSON (fresh where the implementation can
    /// ask; otherwise saying how old they are).
    fn workers(&self) -> futures_util::future::BoxFuture<'_, serde_json::Value>;

    /// Appends process-level metrics (live objects, restarts, commit
    /// batches) in the Prometheus text format.
    fn metrics(&self, out: &mut String);
}

type Body = Full<Bytes>;

/// The HTTP front door.
pub struct Router {
    extractor: Arc<dyn IdExtractor>,
    plain: PlainRoutes,
    service: Arc<dyn ObjectService>,
    admin: Option<Arc<dyn Admin>>,
    door: Option<Door>,
    config: RouterConfig,
    metrics: Metrics,
    budget: Arc<BodyBudget>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// [`answer`], its body's bytes taken from the door's budget into `claim`
/// (which held the request's body; those bytes are given back): the claim
/// travels in the response's extensions until hyper has taken the whole
/// body to send (`accept.rs`). A large answer the budget cannot hold is
/// dropped: 502, its outcome unknown to the client.
fn hold_answer(response: http::Response<Bytes>, mut claim: Claim) -> http::Response<Body> {
    claim.shrink_to(0);
    let len = response.body().len();
    if len <= SMALL_ANSWER_BYTES {
        claim.grow(len);
    } else if !claim.try_grow(len) {
        tracing::warn!(
            bytes = len,
            "an answer dropped: the door holds too many body bytes (max_held_body_bytes)"
        );
        return error_response(&ForwardError::Lost(
            "the answer was dropped: the server holds too many unsent answers".into(),
        ));
    }
    let mut response = answer(response);
    response.extensions_mut().insert(Arc::new(claim));
    response
}

/// An object's (or a plain route's) answer as the front door sends it:
/// without connection-level headers or a length hyper computes itself.
fn answer(response: http::Response<Bytes>) -> http::Response<Body> {
    let mut response = response.map(Full::new);
    strip_connection_headers(response.headers_mut());
    response.headers_mut().remove(CONTENT_LENGTH);
    response
}

/// Removes the headers that belong to one connection only.
fn strip_connection_headers(headers: &mut HeaderMap) {
    let names: Vec<_> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn json(value: &impl serde::Serialize) -> http::Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render JSON: {e}\n"),
        ),
    }
}

impl Router {
    /// A front door that finds objects with `extractor` and reaches them
    /// through `service`.
    pub fn new(
        extractor: Arc<dyn IdExtractor>,
        service: Arc<dyn ObjectService>,
        config: RouterConfig,
    ) -> Self {
        Self {
            extractor,
            plain: PlainRoutes::default(),
            service,
            admin: None,
            door: None,
            budget: BodyBudget::new(config.max_held_body_bytes),
            config,
            metrics: Metrics::default(),
        }
    }

    /// Serves `routes` (requests no object serves) before any object route.
    pub fn with_plain_routes(mut self, routes: PlainRoutes) -> Self {
        self.plain = routes;
        self
    }

    /// Terminates WebSockets with `door`: an upgrade request for an object
    /// goes to the object, which may accept it. Without a door, upgrade
    /// requests reach objects as plain requests.
    pub fn with_websockets(mut self, door: Door) -> Self {
        self.door = Some(door);
        self
    }

    /// Serves `/_odo/workers` and process metrics from `admin`.
    pub fn with_admin(mut self, admin: Arc<dyn Admin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Accepts connections on `listener` until `shutdown` resolves, then
    /// stops accepting and lets open requests finish (up to the configured
    /// grace period). Accept errors back off, clients over the connection
    /// cap are answered 503 at once, and every connection is bounded by the
    /// header-read and idle timeouts (see [`RouterConfig`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let config = self.config.clone();
        crate::accept::serve(self, config, listener, shutdown).await;
    }

    /// Answers one request.
    pub async fn handle(&self, request: http::Request<Incoming>) -> http::Response<Body> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let (class, response) = self.route(parts, body, started).await;
        self.metrics
            .record(&class, response.status().as_u16(), started.elapsed());
        response
    }

    async fn route(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        started: Instant,
    ) -> (String, http::Response<Body>) {
        let path = parts.uri.path().to_owned();
        if let Some(admin_path) = path.strip_prefix("/_odo/") {
            return ("-".into(), self.admin(admin_path).await);
        }
        let deadline = started + self.config.request_deadline;
        if let Some(handler) = self.plain.get(&parts.method, &path) {
            let handler = handler.clone();
            if self.budget.is_spent() {
                return ("-".into(), busy_response());
            }
            let mut claim = self.budget.claim();
            return match self.read_body(&parts, body, deadline, &mut claim).await {
                Ok(body) => {
                    let request = http::Request::from_parts(parts, body);
                    let response = handler(request).await;
                    ("-".into(), hold_answer(response, claim))
                }
                Err(response) => ("-".into(), response),
            };
        }
        let object = match self.extractor.extract(&parts) {
            Ok(Some(object)) => object,
            Ok(None) => return ("-".into(), text(StatusCode::NOT_FOUND, "not found\n")),
            Err(RouteError::UnknownClass(segment)) => {
                return (
                    "-".into(),
                    text(StatusCode::NOT_FOUND, format!("unknown class {segment}\n")),
                );
            }
            Err(RouteError::BadObject(message)) => {
                return (
                    "-".into(),
                    text(StatusCode::BAD_REQUEST, format!("{message}\n")),
                );
            }
        };
        let class = object.class.to_string();
        // Only a front door names the socket an object may accept.
        parts.headers.remove(odo_core::socket::UPGRADE_DOOR_HEADER);
        parts
            .headers
            .remove(odo_core::socket::UPGRADE_SOCKET_HEADER);
        if let Some(door) = &self.door
            && is_upgrade(&parts.headers)
        {
            parts.uri = parts
                .uri
                .path_and_query()
                .and_then(|pq| pq.as_str().parse().ok())
                .unwrap_or_else(|| http::Uri::from_static("/"));
            let response = match door.upgrade(object, parts, deadline).await {
                Upgrade::Switch(response) => response.map(Full::new),
                Upgrade::Answer(response) => answer(response),
                Upgrade::Failed(error) => error_response(&error),
            };
            return (class, response);
        }
        if self.budget.is_spent() {
            return (class, busy_response());
        }
        let mut claim = self.budget.claim();
        let body = match self.read_body(&parts, body, deadline, &mut claim).await {
            Ok(body) => body,
            Err(response) => return (class, response),
        };
        // The object sees the path and query as sent, and no header that
        // belongs to this connection only.
        parts.uri = parts
            .uri
            .path_and_query()
            .and_then(|pq| pq.as_str().parse().ok())
            .unwrap_or_else(|| http::Uri::from_static("/"));
        strip_connection_headers(&mut parts.headers);
        let request = http::Request::from_parts(parts, body);
        let forwarded =
            tokio::time::timeout_at(deadline, self.service.fetch(object, request, deadline)).await;
        let response = match forwarded {
            Ok(Ok(response)) => hold_answer(response, claim),
            Ok(Err(error)) => error_response(&error),
            // The service gave up at the same deadline it was given; this
            // is its backstop, and the call may have been sent.
            Err(_) => error_response(&ForwardError::Deadline { written: true }),
        };
        (class, response)
    }

    /// Reads the request body up to the limit and the deadline, its bytes
    /// taken from the door's budget into `claim`; the answer to give
    /// instead when it cannot. A body over the limit is answered 413 at
    /// once (one the budget cannot hold, 503) and the rest of it is read
    /// and discarded in the background ([`linger`]), so the connection's
    /// close is orderly.
    async fn read_body(
        &self,
        parts: &http::request::Parts,
        mut body: Incoming,
        deadline: Instant,
        claim: &mut Claim,
    ) -> Result<Bytes, http::Response<Body>> {
        let max = self.config.max_body_bytes;
        let too_large = |body: Incoming, declared: Option<u64>| {
            linger(body, declared);
            let mut response = text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the {max}-byte limit\n"),
            );
            // The connection cannot carry another request after a body
            // the door did not take: say so, or a client reusing it races
            // the close.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            response
        };
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return Err(too_large(body, declared));
        }
        let mut collected = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(error_response(&ForwardError::Deadline { written: false })),
                Ok(None) => return Ok(collected.freeze()),
                Ok(Some(Err(e))) => {
                    return Err(text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}\n"),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if collected.len() + data.len() > max {
                    return Err(too_large(body, None));
                }
                if !claim.try_grow(data.len()) {
                    linger(body, declared);
                    let mut response = busy_response();
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    return Err(response);
                }
                collected.extend_from_slice(&data);
            }
        }
    }

    async fn admin(&self, path: &str) -> http::Response<Body> {
        if path == "metrics" {
            let mut out = String::new();
            self.metrics.render(&mut out);
            out.push_str(
                "# HELP odo_http_held_body_bytes Request and answer body bytes the front door holds (max_held_body_bytes bounds them).\n",
            );
            out.push_str("# TYPE odo_http_held_body_bytes gauge\n");
            out.push_str(&format!(
                "odo_http_held_body_bytes {}\n",
                self.budget.held()
            ));
            if let Some(door) = &self.door {
                door.render_metrics(&mut out);
            }
            if let Some(admin) = &self.admin {
                admin.metrics(&mut out);
            }
            let mut response = text(StatusCode::OK, out);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return response;
        }
        if path == "workers" {
            return match &self.admin {
                Some(admin) => json(&admin.workers().await),
                None => json(&serde_json::json!([])),
            };
        }
        if let Some(rest) = path.strip_prefix("placement/") {
            // Reuse the object routing: /_odo/placement/{class}/{name}.
            let uri: http::Uri = match format!("/{rest}").parse() {
                Ok(uri) => uri,
                Err(_) => return text(StatusCode::BAD_REQUEST, "malformed path\n"),
            };
            let (mut parts, ()) = http::Request::new(()).into_parts();
            parts.uri = uri;
            return match self.extractor.extract(&parts) {
                Ok(Some(object)) => {
                    let location = self.service.locate(&object.id);
                    json(&serde_json::json!({
                        "class": object.class,
                        "id": object.id.to_string(),
                        "shard": location.as_ref().map(|l| l.shard),
                        "epoch": location.as_ref().map(|l| l.epoch),
                        "pid": location.as_ref().and_then(|l| l.pid),
                    }))
                }
                Ok(None) => text(StatusCode::NOT_FOUND, "not found\n"),
                Err(RouteError::UnknownClass(segment)) => {
                    text(StatusCode::NOT_FOUND, format!("unknown class {segment}\n"))
                }
                Err(RouteError::BadObject(message)) => {
                    text(StatusCode::BAD_REQUEST, format!("{message}\n"))
                }
            };
        }
        text(StatusCode::NOT_FOUND, "not found\n")
    }
}

/// The most of a refused body the door reads and discards after its 413,
/// and for how long: a client that writes its whole body before reading
/// (most do) then reads the answer and an orderly close. Without it the
/// door would close with unread bytes in its receive buffer, which makes
/// the kernel reset the connection, and a reset can destroy the 413 before
/// the client reads it. A body declared larger than this is not drained:
/// the connection closes at once.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Reads and discards what is left of a refused request body, in the
/// background, within [`LINGER_BYTES`] and [`LINGER_TIME`]; then drops it
/// (hyper closes the connection after its answer either way).
fn linger(mut body: Incoming, declared: Option<u64>) {
    if declared.is_some_and(|len| len > LINGER_BYTES) {
        return;
    }
    tokio::spawn(async move {
        let mut read = 0u64;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += data.len() as u64;
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
