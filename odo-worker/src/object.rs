//! The trait a user implements for an object class, and the values its
//! handlers take and return.

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::Context;

/// An HTTP request delivered to an object's [`DurableObject::fetch`].
pub type Request = http::Request<Bytes>;

/// The HTTP response an object's [`DurableObject::fetch`] returns.
pub type Response = http::Response<Bytes>;

/// An object class: the code behind every object of one namespace.
///
/// The runtime creates one instance per live object ([`DurableObject::create`]),
/// runs [`DurableObject::init`] to completion before its first event, then
/// delivers events (fetch, RPC calls, alarms) one at a time, in arrival
/// order. A handler that returns an error or panics resets the object: the
/// instance is dropped, the writes of the failed turn are discarded, and the
/// next event activates a fresh instance.
///
/// ```
/// use bytes::Bytes;
/// use odo_worker::{Context, DurableObject, ObjectError, Request, Response};
///
/// struct Counter;
///
/// impl DurableObject for Counter {
///     fn create(_ctx: &Context) -> Self {
///         Counter
///     }
///
///     async fn fetch(&mut self, ctx: &mut Context, _req: Request) -> Result<Response, ObjectError> {
///         let storage = ctx.storage();
///         let n: u64 = storage.get_typed("n").await?.unwrap_or(0) + 1;
///         storage.put_typed("n", &n).await?;
///         Ok(Response::new(Bytes::from(n.to_string())))
///     }
/// }
/// ```
pub trait DurableObject: Send + Sized + 'static {
    /// Builds the instance when the object activates. Synchronous and cheap:
    /// put asynchronous set-up (reading storage) in [`DurableObject::init`].
    fn create(ctx: &Context) -> Self;

    /// Runs once, to completion, before the instance's first event (the
    /// equivalent of `blockConcurrencyWhile` in a Cloudflare constructor).
    /// An error resets the object and fails the event that activated it.
    fn init(&mut self, ctx: &mut Context) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles an HTTP request.
    fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> impl Future<Output = Result<Response, ObjectError>> + Send;

    /// Handles a typed RPC call. Dispatch on [`RpcCall::method`], decode the
    /// arguments with [`RpcCall::args`], answer with [`RpcReply::new`]. The
    /// default answers every method with [`ObjectError::UnknownMethod`].
    fn call(
        &mut self,
        ctx: &mut Context,
        call: RpcCall,
    ) -> impl Future<Output = Result<RpcReply, ObjectError>> + Send {
        let _ = ctx;
        async move { Err(ObjectError::UnknownMethod(call.method)) }
    }

    /// Handles the object's alarm. On success the alarm is cleared, unless
    /// the handler set a new one; on error it is retried with exponential
    /// backoff.
    fn alarm(
        &mut self,
        ctx: &mut Context,
        alarm: AlarmInfo,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, alarm);
        async { Ok(()) }
    }
}

/// Method names no RPC call may use: they are the runtime's own events, or
/// start with an underscore (kept for the runtime's future use).
pub fn is_reserved_method(name: &str) -> bool {
    name.is_empty()
        || name.starts_with('_')
        || matches!(name, "fetch" | "alarm" | "init" | "create" | "call")
}

/// An RPC call as the object receives it.
#[derive(Debug, Clone)]
pub struct RpcCall {
    /// The method name.
    pub method: String,
    /// The arguments, postcard-encoded by the caller's stub.
    pub args: Bytes,
}

impl RpcCall {
    /// Decodes the arguments as `T`.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, ObjectError> {
        postcard::from_bytes(&self.args)
            .map_err(|e| ObjectError::BadArguments(format!("arguments of {:?}: {e}", self.method)))
    }
}

/// The encoded result of an RPC call.
#[derive(Debug, Clone)]
pub struct RpcReply(pub(crate) Bytes);

impl RpcReply {
    /// Encodes `value` as the result.
    pub fn new<T: Serialize>(value: &T) -> Result<Self, ObjectError> {
        postcard::to_allocvec(value)
            .map(|v| RpcReply(Bytes::from(v)))
            .map_err(|e| ObjectError::Failed(format!("cannot encode the result: {e}")))
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// What an alarm handler is told about the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// When the alarm was due, milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
    /// How many earlier runs of this alarm failed (0 on the first run).
    pub retry_count: u32,
}

/// Why a handler failed. Any error resets the object, except
/// [`ObjectError::UnknownMethod`] and [`ObjectError::BadArguments`], which
/// are the caller's mistakes and leave the instance as it was.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// A storage operation failed (a limit, or the backend).
    #[error(transparent)]
    Storage(#[from] odo_storage::StorageError),
    /// No RPC method of that name.
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    /// RPC arguments that do not decode.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// A call to another object failed.
    #[error(transparent)]
    Call(#[from] crate::stub::CallError),
    /// Anything else the handler reports.
    #[error("{0}")]
    Failed(String),
}

impl ObjectError {
    /// An error with a message, for handlers.
    pub fn msg(message: impl fmt::Display) -> Self {
        ObjectError::Failed(message.to_string())
    }

    /// Whether this error resets the object.
    pub fn resets(&self) -> bool {
        !matches!(
            self,
            ObjectError::UnknownMethod(_) | ObjectError::BadArguments(_)
        )
    }
}
