//! odo-worker: the object runtime, where Durable Objects live.
//!
//! This crate owns the [`DurableObject`] trait a user implements, the
//! [`Context`] its handlers see (storage, alarm, stubs to other objects,
//! background tasks), and the [`Runtime`] that activates objects, runs one
//! event at a time per object, holds responses until their writes are durable
//! (the output gate), fires alarms and evicts idle objects.
//!
//! It does not own storage engines (odo-storage), sockets and framing
//! (odo-transport), placement (odo-registry) or HTTP (odo-router).
//!
//! See [`Runtime`] for an example.

mod actor;
mod class;
mod cluster;
mod config;
mod context;
mod object;
mod process;
mod runtime;
mod stall;
mod stub;
pub mod wire;

pub use class::{ClassError, Classes};
pub use config::{AlarmRetry, RuntimeConfig};
pub use context::Context;
pub use object::{
    AlarmInfo, DurableObject, ObjectError, Request, Response, RpcCall, RpcReply, is_reserved_method,
};
pub use odo_core::ObjectAddress;
pub use cluster::ObjectRouter;
pub use process::{ObjectHandler, WorkerError, read_token, serve};
pub use runtime::{Runtime, ShardError, now_ms};
pub use stub::{CallError, CallScope, Cluster, DEFAULT_CALL_DEADLINE, NamespaceHandle, Stub};
