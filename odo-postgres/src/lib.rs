//! odo-postgres owns odo's PostgreSQL storage backend: a [`Backend`] whose
//! shards live in one schema of a PostgreSQL database that every host of a
//! cluster can reach, so a shard survives the loss of the host that served
//! it. It does not decide who holds a shard (the registry or the cluster's
//! placement does, and hands the epoch in through
//! [`ShardSpec`](odo_storage::ShardSpec)); it makes sure that only the
//! newest holder's commits land.
//!
//! - **Registered like any backend**: [`PostgresFactory`], named
//!   `postgres` (`odo serve --storage postgres --postgres-url ...`).
//! - **Group commit**: every batch the store's commit thread hands over is
//!   one PostgreSQL transaction: the fence, then at most five statements
//!   (deletes of whole objects, key deletes, key upserts, alarm sets, alarm
//!   deletes) each carrying every object of the batch as arrays, pipelined
//!   on the connection, then `COMMIT`. With PostgreSQL's default
//!   `synchronous_commit = on`, `COMMIT` returns once the WAL is flushed:
//!   that is the acknowledgement (see `DURABILITY.md`).
//! - **Fencing**: opening a shard records its epoch unless a newer one is
//!   recorded; every commit's first statement checks, under a share lock
//!   on the shard's row, that the epoch is still this holder's. A paused or
//!   partitioned holder that lost the shard has every later commit refused
//!   ([`StorageError::Fenced`](odo_storage::StorageError::Fenced)), its
//!   writes never land, and the objects waiting on them are reset.
//! - **Connections**: one for reads, one for commits (a read never runs
//!   inside a commit's transaction), each made again with backoff when it
//!   breaks; every statement has a timeout ([`PostgresConfig`]). A read
//!   that loses its connection is tried once more; a commit is not (its
//!   outcome is unknown: the objects are reset and the answer says so).
//! - **Threads**: [`Backend`] is synchronous; each backend runs a small
//!   tokio runtime of its own (one thread) and callers wait for its
//!   answers (see [`PostgresBackend`]).
//! - **TLS** (feature `tls`): rustls, with the CA and an optional client
//!   certificate from PEM files ([`TlsFiles`]).
//!
//! The backend speaks the PostgreSQL protocol and plain SQL (`UNNEST`,
//! `ON CONFLICT`, `FOR SHARE`), which distributed SQL engines that speak
//! it (CockroachDB, YugabyteDB) also accept; only PostgreSQL is tested.
//!
//! [`Backend`]: odo_storage::Backend

mod backend;
mod config;
mod conn;
mod error;
mod factory;
mod sql;
mod tls;

pub use backend::PostgresBackend;
pub use config::{
    DEFAULT_SCHEMA, MAX_SCHEMA_BYTES, PostgresConfig, SCHEMA_ENV, TLS_CA_ENV, TLS_CERT_ENV,
    TLS_KEY_ENV, TlsFiles, URL_ENV,
};
pub use error::PostgresError;
pub use factory::{NAME, PostgresFactory};
