//! The trait a user implements for an object class.

use std::future::Future;

use crate::context::Context;
use crate::error::ObjectError;
use crate::rpc::{RpcCall, RpcReply};
use crate::socket::{WebSocket, WebSocketMessage};
use crate::types::{AlarmInfo, Request, Response};

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

    /// Handles a message one of the object's WebSockets received: a turn
    /// like any other, in arrival order per socket. An evicted object is
    /// activated again for it. The default ignores it.
    fn websocket_message(
        &mut self,
        ctx: &mut Context,
        ws: WebSocket,
        message: WebSocketMessage,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, ws, message);
        async { Ok(()) }
    }

    /// Handles the close of one of the object's WebSockets: the client
    /// closed it (`was_clean`), its connection dropped (1006), or the front
    /// door closed it (a limit: 1008, 1009, 1012, 1013; shutdown: 1001).
    /// `ws` is no longer among [`Context::websockets`]. The default does
    /// nothing.
    fn websocket_close(
        &mut self,
        ctx: &mut Context,
        ws: WebSocket,
        code: u16,
        reason: String,
        was_clean: bool,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, ws, code, reason, was_clean);
        async { Ok(()) }
    }

    /// Handles a failure of one of the object's WebSockets (a protocol
    /// error, a reset connection); the socket is closed and no longer among
    /// [`Context::websockets`]. The default does nothing.
    fn websocket_error(
        &mut self,
        ctx: &mut Context,
        ws: WebSocket,
        error: String,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send {
        let _ = (ctx, ws, error);
        async { Ok(()) }
    }
}
