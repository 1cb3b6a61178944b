//! Stubs: how one object (or any program holding a [`Runtime`](crate::Runtime))
//! calls another object, wherever it lives.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::{Namespace, ObjectAddress, ObjectId, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::call::{CallError, CallScope, Cluster};
use crate::types::{Request, Response, is_reserved_method};

/// A handle on one namespace: mints ids and stubs.
#[derive(Clone)]
pub struct NamespaceHandle {
    namespace: Namespace,
    class: Arc<str>,
    cluster: Arc<dyn Cluster>,
    inside_object: bool,
    timeout: Duration,
}

impl fmt::Debug for NamespaceHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceHandle")
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl NamespaceHandle {
    pub(crate) fn new(
        class: &str,
        cluster: Arc<dyn Cluster>,
        inside_object: bool,
        timeout: Duration,
    ) -> Self {
        Self {
            namespace: Namespace::new(class),
            class: Arc::from(class),
            cluster,
            inside_object,
            timeout,
        }
    }

    /// The namespace, for minting and parsing ids.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A stub for the object called `name`.
    pub fn get_by_name(&self, name: &str) -> Stub {
        self.stub(ObjectAddress {
            class: self.class.clone(),
            id: self.namespace.id_from_name(name),
            name: Some(Arc::from(name)),
        })
    }

    /// A stub for the object with this id.
    pub fn get(&self, id: ObjectId) -> Stub {
        self.stub(ObjectAddress {
            class: self.class.clone(),
            id,
            name: None,
        })
    }

    fn stub(&self, target: ObjectAddress) -> Stub {
        Stub {
            target,
            cluster: self.cluster.clone(),
            inside_object: self.inside_object,
            timeout: self.timeout,
        }
    }
}

/// A handle on one object, for fetch and typed RPC calls.
#[derive(Clone)]
pub struct Stub {
    target: ObjectAddress,
    cluster: Arc<dyn Cluster>,
    inside_object: bool,
    /// The deadline of a call made through this stub from outside any
    /// object (calls from inside carry their event's scope instead).
    timeout: Duration,
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
    pub fn target(&self) -> &ObjectAddress {
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
        self.fetch_unchecked(request, CallScope::outside(self.timeout))
            .await
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

    pub(crate) async fn fetch_unchecked(
        &self,
        request: Request,
        scope: CallScope,
    ) -> Result<Response, CallError> {
        self.cluster
            .fetch(self.target.clone(), request, scope)
            .await
    }

    pub(crate) fn encode_call<A: Serialize>(method: &str, args: &A) -> Result<Bytes, CallError> {
        if is_reserved_method(method) {
            return Err(WireError::BadRequest {
                message: format!("{method:?} is a reserved method name"),
            }
            .into());
        }
        postcard::to_allocvec(args)
            .map(Bytes::from)
            .map_err(|e| CallError::Encoding(e.to_string()))
    }

    pub(crate) async fn call_encoded<R: DeserializeOwned>(
        &self,
        method: &str,
        args: Bytes,
        scope: CallScope,
    ) -> Result<R, CallError> {
        let result = self
            .cluster
            .call(self.target.clone(), method.to_owned(), args, scope)
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
        self.call_encoded(method, args, CallScope::outside(self.timeout))
            .await
    }
}
