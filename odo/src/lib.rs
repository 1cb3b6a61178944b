//! odo: Open Durable Objects, a self-hostable implementation of the
//! Cloudflare Durable Objects model.
//!
//! This facade crate owns the [`App`] builder that turns object classes into
//! a server (a registry with worker processes, or an in-process runtime,
//! behind the HTTP front door), the `odo` binary with its [`demo`] classes,
//! and re-exports of what a user writes against. The pieces live in their
//! own crates: odo-core (ids, wire), odo-transport, odo-storage, odo-worker
//! (the object runtime), odo-registry (processes and placement) and
//! odo-router (HTTP and the client API).
//!
//! See [`App`] for a server around your own classes in a few lines, and
//! [`App::backend`] for a storage backend of your own. The default feature
//! `fjall` brings the durable fjall backend (the default `--storage`);
//! without it, nothing of fjall is compiled. The feature `postgres`
//! registers the PostgreSQL backend (odo-postgres) as `postgres`, with
//! `odo serve --storage postgres --postgres-url URL`. The feature
//! `cluster` (odo-cluster; needs `protoc` to build the etcd client) adds
//! `odo serve --cluster etcd://... --cluster-name NAME --advertise IP:PORT`:
//! hosts that share shards through etcd.

mod admin;
mod app;
mod cli;
mod local;
mod signals;
#[cfg(all(feature = "cluster", not(target_os = "linux")))]
compile_error!("odo's `cluster` feature (odo-cluster) is built on Linux only");
#[cfg(feature = "cluster")]
mod cluster;
pub mod demo;
#[cfg(feature = "postgres")]
mod postgres;
pub mod room;
mod split;
mod websockets;

pub use admin::RegistryAdmin;
pub use app::{App, OdoError, ServeOptions};
pub use odo_core::{Namespace, ObjectId};
pub use odo_registry::TransportKind;
pub use odo_router::{Client, RouterConfig};
/// odo-storage: the object storage API and what a storage backend
/// implements ([`storage::Backend`], [`storage::BackendFactory`]), for
/// [`App::backend`].
pub use odo_storage as storage;
pub use odo_storage::{ListOptions, SqlLimits, SqlValue};
pub use odo_worker::{
    AlarmInfo, ClassStorage, Context, DurableObject, ObjectError, Request, Response, RpcCall,
    RpcReply, RuntimeConfig, Stub, WebSocket, WebSocketError, WebSocketMessage,
    is_websocket_upgrade,
};
pub use split::StorageSplitter;

/// The demo server's app: `Counter` under `/counter`, the SQLite-backed
/// `SqlCounter` under `/sqlcounter`, `Kv` under `/kv`, the chat
/// [`room::Room`] under `/room`, and the plain route
/// `GET /hello`, which no object serves.
pub fn demo_app() -> App {
    demo_app_on(ClassStorage::KeyValue)
}

/// [`demo_app`] with `Counter` and `Kv` on `storage` (the test suite runs
/// every scenario with them SQLite-backed too); `SqlCounter` is always
/// SQLite-backed.
pub fn demo_app_on(storage: ClassStorage) -> App {
    App::new()
        .class_as("counter", "COUNTER", storage, demo::Counter::create)
        .sqlite_class::<demo::SqlCounter>("sqlcounter", "SQL_COUNTER")
        .class_as("kv", "KV", storage, demo::Kv::create)
        .class::<room::Room>("room", "ROOM")
        .route(http::Method::GET, "/hello", |_request| async {
            let mut response = http::Response::new(bytes::Bytes::from_static(b"hello"));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        })
}
