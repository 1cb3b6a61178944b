//! Which request goes where: object routes ([`IdExtractor`], by default
//! [`PathRoutes`]) and plain routes no object serves ([`PlainRoutes`]). Kept
//! apart from the HTTP server and from the forwarder.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Method;
use odo_core::{Namespace, ObjectAddress};

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
            return Ok(Some(ObjectAddress::of_id(namespace.name(), id)));
        }
        if name.len() > self.max_name_bytes {
            return Err(RouteError::BadObject(format!(
                "object name of {} bytes is over the {}-byte limit",
                name.len(),
                self.max_name_bytes
            )));
        }
        Ok(Some(ObjectAddress::named(namespace.name(), name)))
    }
}

/// What a plain route answers: a request no object serves (health checks,
/// static pages), as a plain async function of the request.
pub type PlainHandler =
    Arc<dyn Fn(http::Request<Bytes>) -> BoxFuture<'static, http::Response<Bytes>> + Send + Sync>;

/// Routes that no object serves, matched on method and exact path before
/// any object route. The demo registers `GET /hello` this way.
///
/// ```
/// use bytes::Bytes;
/// use odo_router::PlainRoutes;
///
/// let routes = PlainRoutes::default().route(http::Method::GET, "/hello", |_request| async {
///     http::Response::new(Bytes::from_static(b"hello"))
/// });
/// assert!(routes.get(&http::Method::GET, "/hello").is_some());
/// assert!(routes.get(&http::Method::POST, "/hello").is_none());
/// ```
#[derive(Clone, Default)]
pub struct PlainRoutes {
    routes: HashMap<(Method, String), PlainHandler>,
}

impl fmt::Debug for PlainRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.routes.keys()).finish()
    }
}

impl PlainRoutes {
    /// Answers `method` `path` with `handler`.
    pub fn route<F, Fut>(mut self, method: Method, path: &str, handler: F) -> Self
    where
        F: Fn(http::Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<Bytes>> + Send + 'static,
    {
        let handler: PlainHandler = Arc::new(move |request| Box::pin(handler(request)));
        self.routes.insert((method, path.to_owned()), handler);
        self
    }

    /// The handler of `method` `path`, if one is routed.
    pub fn get(&self, method: &Method, path: &str) -> Option<&PlainHandler> {
        self.routes.get(&(method.clone(), path.to_owned()))
    }

    /// Whether no route is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
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
}
