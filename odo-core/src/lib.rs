//! odo-core: the ids, wire messages and frame codec that every odo process
//! shares.
//!
//! This crate owns:
//! - [`ObjectId`] and [`Namespace`]: how objects are named
//!   ([`Namespace::id_from_name`], [`Namespace::new_unique_id`],
//!   [`Namespace::id_from_string`]) and which virtual shard they fall in;
//! - [`wire`]: the messages that cross processes (fetch requests and
//!   responses, RPC calls, alarm events, control messages between registry
//!   and worker, and the typed [`WireError`]s callers act on);
//! - [`codec`]: the frame layout, as pure functions over `bytes`;
//! - [`launch`]: the command line a registry starts a worker process with;
//! - [`placement`]: shard placement, epochs, failover and restarts as an
//!   I/O-free state machine, and the [`placement::PlacementSource`] trait
//!   forwarders follow;
//! - [`retry`]: which failed attempts a forwarder sends again, and when;
//! - [`socket`]: the events and outputs of client WebSockets, relayed
//!   between the front door that holds them and their objects.
//!
//! It does no I/O and knows nothing of sockets, tokio, storage or HTTP: the
//! transport moves the frames this crate encodes.
//!
//! ```
//! use bytes::Bytes;
//! use odo_core::wire::{CallMeta, FetchRequest, Frame, HttpHead, Message, Request, Target};
//! use odo_core::{Namespace, ObjectAddress, codec};
//!
//! let ns = Namespace::new("COUNTER");
//! let id = ns.id_from_name("hot");
//! let frame = Frame {
//!     request_id: 7,
//!     message: Message::Request(Request::Fetch(FetchRequest {
//!         target: Target { object: ObjectAddress::named("COUNTER", "hot"), shard: id.shard(4), epoch: 1 },
//!         meta: CallMeta { deadline_ms: 30_000, chain: vec![] },
//!         head: HttpHead {
//!             method: "POST".into(),
//!             uri: "/counter/hot/increment".into(),
//!             headers: vec![("accept".into(), b"*/*".to_vec())],
//!         },
//!     })),
//!     body: Bytes::from_static(b"payload"),
//! };
//! let bytes = codec::encode(&frame)?;
//! assert_eq!(codec::decode(bytes)?, frame);
//! # Ok::<(), odo_core::codec::CodecError>(())
//! ```

mod address;
pub mod codec;
mod id;
pub mod launch;
pub mod placement;
pub mod retry;
pub mod socket;
pub mod wire;

pub use address::ObjectAddress;
pub use id::{IdError, Namespace, NamespaceTag, ObjectId};
pub use wire::{Frame, WireError};

/// The directory of a data directory that holds the shards' stores, one
/// per shard: `<data>/shards/<shard>`. The storage backends keep their
/// files there; the registry looks there for shard data.
pub const SHARDS_DIR: &str = "shards";
