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

// The modules form a ladder (see `layering` below): each uses only the
// ones below it, none the ones above.
mod activation;
mod actor;
mod alarms;
mod call;
mod class;
mod cluster;
mod config;
mod context;
mod doors;
mod error;
mod gate;
mod mailbox;
mod object;
mod process;
mod rpc;
mod runtime;
mod socket;
mod stall;
mod stub;
mod table;
mod types;
pub mod wire;

pub use activation::now_ms;
pub use call::{CallError, CallScope, Cluster, DEFAULT_CALL_DEADLINE, MAX_CALL_DEPTH};
pub use class::{ClassError, Classes};
pub use cluster::ObjectRouter;
pub use config::{AlarmRetry, RuntimeConfig};
pub use context::Context;
pub use doors::{DoorAlive, RemoteDoors};
pub use error::ObjectError;
pub use object::DurableObject;
pub use odo_core::ObjectAddress;
pub use process::{ObjectHandler, WorkerError, read_token, serve};
pub use rpc::{RpcCall, RpcReply};
pub use runtime::{Runtime, ShardError};
pub use socket::{
    MAX_ATTACHMENT_BYTES, MAX_AUTO_RESPONSE_CHARS, MAX_CLOSE_REASON_BYTES, MAX_SOCKETS_PER_OBJECT,
    MAX_TAG_BYTES, MAX_TAGS, WebSocket, WebSocketDoors, WebSocketError, WebSocketMessage,
    is_websocket_upgrade,
};
pub use stub::{NamespaceHandle, Stub};
pub use types::{AlarmInfo, ClassStorage, Request, Response, is_reserved_method};

/// The module ladder, bottom first: a module may use only the modules
/// before it. The test below reads the sources and holds every module to
/// it, so no two modules ever import each other.
#[cfg(test)]
mod layering {
    const LADDER: &[(&str, &str)] = &[
        ("activation", include_str!("activation.rs")),
        ("stall", include_str!("stall.rs")),
        ("types", include_str!("types.rs")),
        ("call", include_str!("call.rs")),
        ("config", include_str!("config.rs")),
        (
            "socket",
            concat!(
                include_str!("socket/mod.rs"),
                include_str!("socket/book.rs"),
                include_str!("socket/view.rs")
            ),
        ),
        ("error", include_str!("error.rs")),
        ("rpc", include_str!("rpc.rs")),
        ("stub", include_str!("stub.rs")),
        ("wire", include_str!("wire.rs")),
        ("context", include_str!("context.rs")),
        ("object", include_str!("object.rs")),
        ("mailbox", include_str!("mailbox.rs")),
        ("table", include_str!("table.rs")),
        ("gate", include_str!("gate.rs")),
        ("actor", include_str!("actor.rs")),
        ("class", include_str!("class.rs")),
        ("alarms", include_str!("alarms.rs")),
        (
            "runtime",
            concat!(
                include_str!("runtime/mod.rs"),
                include_str!("runtime/sockets.rs")
            ),
        ),
        ("cluster", include_str!("cluster.rs")),
        ("doors", include_str!("doors.rs")),
        ("process", include_str!("process.rs")),
    ];

    #[test]
    fn modules_use_only_the_modules_below_them() {
        let rank = |name: &str| LADDER.iter().position(|(module, _)| *module == name);
        for (at, (module, source)) in LADDER.iter().enumerate() {
            for used in source.split("crate::").skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Re-exports at the crate root (`crate::Context` in docs).
                let Some(used_at) = rank(&name) else { continue };
                assert!(
                    used_at < at,
                    "{module} uses {name}, which is not below it in the ladder"
                );
            }
        }
    }
}
