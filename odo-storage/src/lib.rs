//! odo-storage owns the storage of Durable Objects: the per-object API
//! ([`ObjectStorage`]), the [`Backend`] trait with its `memory` and `fjall`
//! backends, the [`BackendFactory`] that opens a backend by name for each
//! shard and the [`Backends`] registry of them, group commit ([`Store`])
//! and the alarm index; it does not run objects, schedule alarms or hold
//! the output gate (that is odo-worker, which awaits the [`CommitWait`]
//! this crate hands back).
//!
//! # Features
//!
//! - `fjall` (default): the durable `FjallBackend` and its factory. Turn
//!   default features off to bring your own backend without compiling
//!   fjall.
//! - `conformance`: the backend conformance suite (below).
//!
//! # Shape
//!
//! - A [`Backends`] maps names (`--storage NAME`) to [`BackendFactory`]s;
//!   a factory opens one shard's [`Backend`] ([`ShardSpec`]: its number,
//!   epoch and data directory).
//! - A [`Store`] is one shard's store: a [`Backend`] plus a commit thread.
//!   Every object's turn is handed to that thread, which merges all pending
//!   turns into one atomic backend commit (one fsync) and then releases
//!   each turn's [`CommitWait`].
//! - An [`ObjectStorage`] is one object's view: what its code sees. Writes
//!   are buffered in the turn; reads see them merged over the object's
//!   in-flight (committed, not yet durable) turns, over a small read cache,
//!   over the backend. It has no way to end a turn: [`ObjectTurns`], which
//!   the runtime holds, does ([`ObjectTurns::commit_turn`] hands the turn to
//!   the commit thread, [`ObjectTurns::rollback_turn`] drops it).
//! - Reads call the backend on the calling task's thread (fjall reads are
//!   mostly memtable and block-cache hits); commits never run on the async
//!   executor.
//!
//! Limits: keys up to [`MAX_KEY_BYTES`], values up to [`MAX_VALUE_BYTES`],
//! [`MAX_KEYS_PER_CALL`] keys per multi-key call; each is a typed
//! [`StorageError`].
//!
//! ```
//! use odo_core::Namespace;
//! use odo_storage::{MemoryBackend, Store, StoreOptions};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = Store::open(MemoryBackend::new(), StoreOptions::default())?;
//! let mut storage = store.object(Namespace::new("COUNTER").id_from_name("hot"));
//!
//! // One turn: reads see the turn's own writes.
//! storage.put_typed("count", &1u64).await?;
//! assert_eq!(storage.get_typed::<u64>("count").await?, Some(1));
//!
//! // End of turn: submit, then (output gate) wait until durable.
//! let durable = storage.commit_turn().expect("the turn wrote something");
//! durable.await?;
//!
//! store.close().await?;
//! # Ok::<(), odo_storage::StorageError>(())
//! # }).unwrap();
//! ```
//!
//! # Conformance
//!
//! With the `conformance` feature, the `conformance` module runs any backend through
//! a model-based property test, a durability test and (for durable
//! backends) a real SIGKILL crash test. To check a new backend, wrap its
//! factory in `conformance::FactoryHarness` (or implement
//! `conformance::Harness`: how to open it on a directory, whether it is
//! durable) and call `conformance::state_machine`, `durability` and `crash`
//! from integration tests; the module docs show the few lines needed.

mod backend;
mod batch;
mod error;
mod factory;
#[cfg(feature = "fjall")]
mod fjall_backend;
mod listing;
mod memory;
mod object;
pub mod split;
#[cfg(feature = "sql")]
mod sql;
mod store;
mod turns;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{Backend, ScanLimit};
pub use batch::{AlarmChange, KeyRange, ObjectBatch};
pub use error::{BoxError, StorageError};
#[cfg(feature = "fjall")]
pub use factory::FjallFactory;
pub use factory::{
    BackendFactory, Backends, BackendsError, MAX_BACKEND_NAME_BYTES, MemoryFactory, OpenFuture,
    ShardSpec, open_blocking, open_ready,
};
#[cfg(feature = "fjall")]
pub use fjall_backend::{Durability, FjallBackend, FjallOptions};
pub use listing::ListOptions;
pub use memory::MemoryBackend;
pub use object::{ObjectStorage, Transaction};
#[cfg(feature = "sql")]
pub use sql::{
    Cursor, MAX_SQL_COLUMNS, MAX_SQL_PARAMETERS, MAX_SQL_RESULT_BYTES, MAX_SQL_ROW_BYTES,
    MAX_SQL_STATEMENT_BYTES, Row, SqlError, SqlHistoryStats, SqlLimits, SqlOptions, SqlStorage,
    SqlValue,
};
pub use store::{CommitStats, CommitWait, Store, StoreOptions};
pub use turns::ObjectTurns;

/// The longest key, in bytes of UTF-8 (2 KiB).
pub const MAX_KEY_BYTES: usize = 2 * 1024;
/// The longest value, in bytes (128 KiB).
pub const MAX_VALUE_BYTES: usize = 128 * 1024;
/// The most keys in one `get_many`, `put_many` or `delete_many` call.
pub const MAX_KEYS_PER_CALL: usize = 128;
