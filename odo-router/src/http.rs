//! The HTTP front door: hyper 1 (HTTP/1.1, and HTTP/2 when the client asks
//! for it), object routing, limits, admin endpoints.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use odo_core::Namespace;
use odo_core::wire::{Header, HttpHead};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::warn;

use crate::metrics::Metrics;
use crate::service::{ForwardError, ObjectAddress, ObjectService};
use crate::status::error_response;

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
        }
    }
}

/// Why a URL does not name an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No class is routed at this path (404).
    #[error("no class is served at {0:?}")]
    UnknownClass(String),
    /// The object part of the path is malformed (400).
    #[error("{0}")]
    BadObject(String),
}

/// Finds the object a request is for. The default, [`PathRoutes`], reads
/// `/{class}/{name}/...`; library users can plug in their own (a header, a
/// host name, a query parameter).
pub trait IdExtractor: Send + Sync + 'static {
    /// The object the request is for; `Ok(None)` when the path is not an
    /// object route at all (the router answers 404).
    fn extract(&self, parts: &http::request::Parts) -> Result<Option<ObjectAddress>, RouteError>;
}

/// Routes `/{segment}/{name}/...` to the class registered for `segment`,
/// and the object `id_from_name(name)`; a name written `id:<64 hex>` is an
/// object id instead (`id_from_string`, so ids of another class are
/// refused). Names are the raw path segment: data, never a file path.
#[derive(Debug, Clone)]
pub struct PathRoutes {
    classes: HashMap<String, Namespace>,
    max_name_bytes: usize,
}

impl PathRoutes {
    /// No routes yet; names up to `max_name_bytes`.
    pub fn new(max_name_bytes: usize) -> Self {
        Self {
            classes: HashMap::new(),
            max_name_bytes,
        }
    }

    /// Routes `/{segment}/...` to `class`.
    pub fn route(mut self, segment: &str, class: &str) -> Self {
        self.classes
            .insert(segment.to_owned(), Namespace::new(class));
        self
    }
}

impl IdExtractor for PathRoutes {
    fn extract(&self, parts: &http::request::Parts) -> Result<Option<ObjectAddress>, RouteError> {
        let mut segments = parts.uri.path().trim_start_matches('/').split('/');
        let Some(segment) = segments.next().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let namespace = self
            .classes
            .get(segment)
            .ok_or_else(|| RouteError::UnknownClass(segment.to_owned()))?;
        let name = segments.next().filter(|s| !s.is_empty()).ok_or_else(|| {
            RouteError::BadObject(format!("missing object name after /{segment}/"))
        })?;
        if let Some(hex) = name.strip_prefix("id:") {
            let id = namespace
                .id_from_string(hex)
                .map_err(|e| RouteError::BadObject(format!("malformed object id: {e}")))?;
            return Ok(Some(ObjectAddress {
                class: namespace.name().to_owned(),
                id,
                name: None,
            }));
        }
        if name.len() > self.max_name_bytes {
            return Err(RouteError::BadObject(format!(
                "object name of {} bytes is over the {}-byte limit",
                name.len(),
                self.max_name_bytes
            )));
        }
        Ok(Some(ObjectAddress {
            class: namespace.name().to_owned(),
            id: namespace.id_from_name(name),
            name: Some(name.to_owned()),
        }))
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
    service: Arc<dyn ObjectService>,
    admin: Option<Arc<dyn Admin>>,
    config: RouterConfig,
    metrics: Metrics,
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

/// Connection-level headers that must not cross a proxy.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// Headers as the wire carries them: every value, in order.
pub(crate) fn headers_to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// Appends wire headers to `into`, skipping ones that are not valid HTTP
/// and the ones hyper computes itself.
pub(crate) fn headers_from_wire(headers: &[Header], into: &mut HeaderMap) {
    for (name, value) in headers {
        if is_hop_by_hop(name) || name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            (Ok(name), Ok(value)) => {
                into.append(name, value);
            }
            _ => warn!(header = %name, "dropping an invalid header from an object's response"),
        }
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
            service,
            admin: None,
            config,
            metrics: Metrics::default(),
        }
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
        parts: http::request::Parts,
        body: Incoming,
        started: Instant,
    ) -> (String, http::Response<Body>) {
        let path = parts.uri.path();
        if path == "/hello" && parts.method == Method::GET {
            return ("-".into(), text(StatusCode::OK, "hello"));
        }
        if let Some(admin_path) = path.strip_prefix("/_odo/") {
            return ("-".into(), self.admin(admin_path).await);
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
        let class = object.class.clone();
        let max = self.config.max_body_bytes;
        let too_large = || {
            let mut response = text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the {max}-byte limit\n"),
            );
            // The rest of the body is never read, so the connection cannot
            // carry another request: say so, or a client reusing it races
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
            return (class, too_large());
        }
        let deadline = started + self.config.request_deadline;
        let body = match tokio::time::timeout_at(deadline, Limited::new(body, max).collect()).await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return (class, too_large());
            }
            Ok(Err(e)) => {
                return (
                    class,
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the body: {e}\n"),
                    ),
                );
            }
            Err(_) => {
                return (
                    class,
                    error_response(&ForwardError::Deadline { written: false }),
                );
            }
        };
        let envelope = HttpHead {
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.to_string()),
            headers: headers_to_wire(&parts.headers),
        };
        let forwarded = tokio::time::timeout_at(
            deadline,
            self.service.fetch(object, envelope, body, deadline),
        )
        .await;
        let response = match forwarded {
            Ok(Ok((head, body))) => {
                let mut response = http::Response::new(Full::new(body));
                *response.status_mut() =
                    StatusCode::from_u16(head.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                headers_from_wire(&head.headers, response.headers_mut());
                response
            }
            Ok(Err(error)) => error_response(&error),
            // The service gave up at the same deadline it was given; this
            // is its backstop, and the call may have been sent.
            Err(_) => error_response(&ForwardError::Deadline { written: true }),
        };
        (class, response)
    }

    async fn admin(&self, path: &str) -> http::Response<Body> {
        if path == "metrics" {
            let mut out = String::new();
            self.metrics.render(&mut out);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn extract(path: &str) -> Result<Option<ObjectAddress>, RouteError> {
        let routes = PathRoutes::new(8).route("counter", "COUNTER");
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = path.parse().unwrap();
        routes.extract(&parts)
    }

    #[test]
    fn path_routing() {
        let ns = Namespace::new("COUNTER");
        let named = extract("/counter/hot/increment").unwrap().unwrap();
        assert_eq!(named.id, ns.id_from_name("hot"));
        assert_eq!(named.name.as_deref(), Some("hot"));
        assert_eq!(extract("/").unwrap(), None);
        assert_eq!(
            extract("/nope/x"),
            Err(RouteError::UnknownClass("nope".into()))
        );
        assert!(matches!(extract("/counter"), Err(RouteError::BadObject(_))));
        assert!(matches!(
            extract("/counter/"),
            Err(RouteError::BadObject(_))
        ));
        assert!(
            matches!(extract("/counter/123456789"), Err(RouteError::BadObject(m)) if m.contains("limit"))
        );
        let id = ns.id_from_name("x");
        let by_id = extract(&format!("/counter/id:{}", id.to_string().to_uppercase()))
            .unwrap()
            .unwrap();
        assert_eq!((by_id.id, by_id.name), (id, None));
        let foreign = Namespace::new("KV").id_from_name("x");
        assert!(
            matches!(extract(&format!("/counter/id:{foreign}")), Err(RouteError::BadObject(m)) if m.contains("another namespace"))
        );
        assert!(matches!(
            extract("/counter/id:abc"),
            Err(RouteError::BadObject(_))
        ));
    }

    #[test]
    fn headers_keep_repeats_and_drop_hop_by_hop() {
        let mut map = HeaderMap::new();
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        map.append("connection", HeaderValue::from_static("keep-alive"));
        let wire = headers_to_wire(&map);
        assert_eq!(
            wire,
            vec![
                ("x-a".to_owned(), b"1".to_vec()),
                ("x-a".to_owned(), b"2".to_vec())
            ]
        );
        let mut back = HeaderMap::new();
        headers_from_wire(
            &[
                ("x-b".into(), b"1".to_vec()),
                ("x-b".into(), b"2".to_vec()),
                ("content-length".into(), b"99".to_vec()),
                ("bad name".into(), b"v".to_vec()),
            ],
            &mut back,
        );
        assert_eq!(back.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(back.len(), 2);
    }
}
