//! Stubs: how one object (or any program holding a [`Runtime`](crate::Runtime))
//! calls another object, wherever it lives.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use odo_core::{Namespace, ObjectId, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::object::{Request, Response, is_reserved_method};

/// Why a call to an object failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The object's side answered with an error (reset, overloaded, unknown
    /// class, moved, bad request).
    #[error(transparent)]
    Object(#[from] WireError),
    /// The object could not be reached (its worker is down or restarting).
    #[error("object unavailable: {0}")]
    Unavailable(String),
    /// The arguments or result did not encode or decode.
    #[error("rpc encoding: {0}")]
    Encoding(String),
    /// A stub minted inside an object was called directly, bypassing the
    /// output gate.
    #[error(
        "inside an object, call other objects through ctx.fetch / ctx.call so the output gate holds"
    )]
    Ungated,
}

/// Delivers calls to objects. The runtime implements it for objects it
/// hosts; a worker process implements it by forwarding to the owning worker.
pub trait Cluster: Send + Sync + 'static {
    /// Sends an HTTP request to an object.
    fn fetch(
        &self,
        target: ObjectRef,
        request: Request,
    ) -> BoxFuture<'static, Result<Response, CallError>>;

    /// Calls an RPC method of an object with encoded arguments; returns the
    /// encoded result.
    fn call(
        &self,
        target: ObjectRef,
        method: String,
        args: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, CallError>>;
}

/// Names one object: its class and id, and its name when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// The class (namespace) name.
    pub class: Arc<str>,
    /// The object id.
    pub id: ObjectId,
    /// The name the id was derived from, if any.
    pub name: Option<Arc<str>>,
}

/// A handle on one namespace: mints ids and stubs.
#[derive(Clone)]
pub struct NamespaceHandle {
    namespace: Namespace,
    class: Arc<str>,
    cluster: Arc<dyn Cluster>,
    inside_object: bool,
}

impl fmt::Debug for NamespaceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceHandle")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl NamespaceHandle {
    pub(crate) fn new(class: &str, cluster: Arc<dyn Cluster>, inside_object: bool) -> Self {
        Self {
            namespace: Namespace::new(class),
            class: Arc::from(class),
            cluster,
            inside_object,
        }
    }

    /// The namespace, for minting and parsing ids.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A stub for the object called `name`.
    pub fn get_by_name(&self, name: &str) -> Stub {
        self.stub(ObjectRef {
            class: self.class.clone(),
            id: self.namespace.id_from_name(name),
            name: Some(Arc::from(name)),
        })
    }

    /// A stub for the object with this id.
    pub fn get(&self, id: ObjectId) -> Stub {
        self.stub(ObjectRef {
            class: self.class.clone(),
            id,
            name: None,
        })
    }

    fn stub(&self, target: ObjectRef) -> Stub {
        Stub {
            target,
            cluster: self.cluster.clone(),
            inside_object: self.inside_object,
        }
    }
}

/// A handle on one object, for fetch and typed RPC calls.
#[derive(Clone)]
pub struct Stub {
    target: ObjectRef,
    cluster: Arc<dyn Cluster>,
    inside_object: bool,
}

impl fmt::Debug for Stub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stub")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Stub {
    /// The object this stub calls.
    pub fn target(&self) -> &ObjectRef {
        &self.target
    }

    /// Sends an HTTP request to the object.
    ///
    /// Inside an object, call [`Context::fetch`](crate::Context::fetch)
    /// instead: it holds the call until the caller's writes are durable (the
    /// output gate). Called directly on a stub minted inside an object, this
    /// fails with [`CallError::Ungated`].
    pub async fn fetch(&self, request: Request) -> Result<Response, CallError> {
        self.check_ungated()?;
        self.fetch_unchecked(request).await
    }

    /// Calls RPC method `method` with `args`, decoding the result as `R`.
    ///
    /// Inside an object, call [`Context::call`](crate::Context::call)
    /// instead (see [`Stub::fetch`]).
    pub async fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, CallError> {
        self.check_ungated()?;
        self.call_unchecked(method, args).await
    }

    fn check_ungated(&self) -> Result<(), CallError> {
        if self.inside_object {
            Err(CallError::Ungated)
        } else {
            Ok(())
        }
    }

    pub(crate) async fn fetch_unchecked(&self, request: Request) -> Result<Response, CallError> {
        self.cluster.fetch(self.target.clone(), request).await
    }

    pub(crate) fn encode_call<A: Serialize>(method: &str, args: &A) -> Result<Bytes, CallError> {
        if is_reserved_method(method) {
            return Err(CallError::Object(WireError::BadRequest {
                message: format!("{method:?} is a reserved method name"),
            }));
        }
        postcard::to_allocvec(args)
            .map(Bytes::from)
            .map_err(|e| CallError::Encoding(e.to_string()))
    }

    pub(crate) async fn call_encoded<R: DeserializeOwned>(
        &self,
        method: &str,
        args: Bytes,
    ) -> Result<R, CallError> {
        let result = self
            .cluster
            .call(self.target.clone(), method.to_owned(), args)
            .await?;
        postcard::from_bytes(&result)
            .map_err(|e| CallError::Encoding(format!("result of {method:?}: {e}")))
    }

    async fn call_unchecked<A: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<R, CallError> {
        let args = Self::encode_call(method, args)?;
        self.call_encoded(method, args).await
    }
}
