//! SQLite-backed objects (feature `sql`).
//!
//! Each SQLite-backed object owns one SQLite database (rusqlite with its
//! bundled SQLite), a file `<sql dir>/<object id>.sqlite` in WAL mode. A
//! turn is one implicit transaction on it. At the end of a turn the
//! transaction commits *locally* (no sync), the pages it wrote are read
//! from the WAL as one record, and the record goes into the shard's group
//! commit as a write of the object in the shard's backend (see `log.rs`):
//! one backend batch and one fsync carry the SQL records and the key-value
//! writes of every object of the shard. The output gate waits for that
//! commit, as for key-value storage.
//!
//! The database file catches up lazily: when the WAL has grown and every
//! local commit is durable in the log (and when the object is dropped),
//! the WAL is checkpointed into the file and the file is synced, both off
//! the async threads (on a drop, the checkpoint runs on the dropping
//! thread), and the next commit records the synced point and drops
//! the records up to it. On open the WAL is forgotten and the records
//! after the synced point are replayed into the file, so what the file
//! holds past its last sync, or what a failed group commit left in the
//! WAL, never counts: the log alone says what is durable.

mod bookmarks;
mod claim;
mod cursor;
mod database;
mod error;
mod folding;
mod guard;
mod history;
mod kv;
mod ledger;
mod log;
mod trim;
mod turns;
mod wal;

use std::path::PathBuf;

pub use cursor::{Cursor, Row, SqlValue};
pub use database::SqlStorage;
pub use error::SqlError;
pub use guard::{
    MAX_SQL_COLUMNS, MAX_SQL_PARAMETERS, MAX_SQL_RESULT_BYTES, MAX_SQL_ROW_BYTES,
    MAX_SQL_STATEMENT_BYTES,
};
pub use trim::SqlHistoryStats;

pub(crate) use claim::Claims;
pub(crate) use database::{record_entry, recover, sync_file};
pub(crate) use log::{SYNCED_KEY, record_key, synced_value};
pub(crate) use trim::ShardHistory;

/// Options of the SQLite-backed objects of a store (in
/// [`StoreOptions::sql`](crate::StoreOptions)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqlOptions {
    /// Where the objects' database files live; `None`: a private temporary
    /// directory of the store, removed when it closes (in memory where
    /// `/dev/shm` exists), for stores whose backend keeps nothing either.
    pub dir: Option<PathBuf>,
    /// The largest database of one object, in bytes; a write past it fails
    /// with [`SqlError::DatabaseFull`]. Default: 10 GB.
    pub max_database_bytes: u64,
    /// How long one `exec` of an object's SQL may run, in milliseconds;
    /// past it the statement is interrupted with
    /// [`SqlError::StatementTimedOut`]. Keep it under the registry's stall
    /// limit (10 s by default), which kills a worker whose thread a
    /// statement holds longer. Default: 5,000.
    pub max_statement_ms: u64,
    /// The most bytes of pages one turn may write (its log record); a
    /// turn that wrote more fails at its end with
    /// [`SqlError::TurnTooLarge`], and the object is reset to its last
    /// durable state. Default and most: 1 GiB (what a record may hold).
    pub max_turn_bytes: u64,
    /// WAL bytes after which the database file catches up (a checkpoint
    /// once every local commit is durable). Default: 4 MiB.
    pub checkpoint_wal_bytes: u64,
    /// WAL bytes after which the next turn first waits for the object's
    /// commits to be durable, so the catch-up can run. Default: 64 MiB.
    pub max_wal_bytes: u64,
    /// After each catch-up's sync, also keep a copy of the file as it was
    /// synced (`<file>.synced`). For crash tests that throw away what a
    /// file wrote since its last sync; off by default.
    pub keep_synced_copies: bool,
    /// How long each object's history is kept for point-in-time recovery
    /// ([`ObjectStorage::bookmark_for_time`](crate::ObjectStorage::bookmark_for_time)),
    /// in milliseconds; 0 keeps none (log records go once the file has
    /// them). Default: 30 days, as Cloudflare.
    pub history_ms: u64,
    /// The most bytes of history (log records kept for point-in-time
    /// recovery, and base files) a shard keeps, across its objects. Over
    /// it, the oldest history of the shard is folded away first, whatever
    /// the window ([`history_ms`](Self::history_ms)) allows; what each
    /// object still holds is
    /// [`ObjectStorage::oldest_bookmark`](crate::ObjectStorage::oldest_bookmark),
    /// what the shard holds [`Store::sql_history`](crate::Store::sql_history).
    /// Default: 1 GiB.
    pub max_history_bytes: u64,
    /// Why this store does not serve SQLite-backed objects, if it does
    /// not: opening one fails with [`SqlError::NotServed`] saying so. For
    /// stores whose shards move between hosts (PostgreSQL in cluster
    /// mode), where an object's database files, which live on one host,
    /// would be left behind. Default: `None` (served).
    ///
    /// [`SqlError::NotServed`]: crate::SqlError::NotServed
    pub refused: Option<String>,
}

impl Default for SqlOptions {
    fn default() -> Self {
        let limits = SqlLimits::default();
        Self {
            dir: None,
            max_database_bytes: limits.max_database_bytes,
            max_statement_ms: limits.max_statement_ms,
            max_turn_bytes: wal::MAX_RECORD_BYTES as u64,
            checkpoint_wal_bytes: 4 * 1024 * 1024,
            max_wal_bytes: 64 * 1024 * 1024,
            keep_synced_copies: false,
            history_ms: limits.history_ms,
            max_history_bytes: limits.max_history_bytes,
            refused: None,
        }
    }
}

impl SqlOptions {
    /// These options with `limits`' size limit and history.
    pub fn with_limits(mut self, limits: SqlLimits) -> Self {
        self.max_database_bytes = limits.max_database_bytes;
        self.max_statement_ms = limits.max_statement_ms;
        self.history_ms = limits.history_ms;
        self.max_history_bytes = limits.max_history_bytes;
        self
    }
}

/// What an operator sets for every SQLite-backed object of a host: the
/// largest database, the longest statement, and how much history is kept
/// for point-in-time recovery. The parts of [`SqlOptions`] that do not depend on the shard
/// (its directory) or the deployment (whether it serves such objects);
/// `Default` gives the documented defaults, those of [`SqlOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// [`SqlOptions::max_database_bytes`]. Default: 10 GB.
    pub max_database_bytes: u64,
    /// [`SqlOptions::max_statement_ms`]. Default: 5,000.
    pub max_statement_ms: u64,
    /// [`SqlOptions::history_ms`]. Default: 30 days.
    pub history_ms: u64,
    /// [`SqlOptions::max_history_bytes`]. Default: 1 GiB.
    pub max_history_bytes: u64,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            max_database_bytes: 10_000_000_000,
            max_statement_ms: 5_000,
            history_ms: 30 * 24 * 60 * 60 * 1000,
            max_history_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// The directory of a store's object databases: the one configured, or a
/// private temporary one made on first use.
#[derive(Debug)]
pub(crate) struct SqlDir {
    fixed: Option<PathBuf>,
    temporary: std::sync::OnceLock<tempfile::TempDir>,
}

impl SqlDir {
    pub(crate) fn new(fixed: Option<PathBuf>) -> Self {
        Self {
            fixed,
            temporary: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn path(&self) -> Result<PathBuf, crate::StorageError> {
        if let Some(dir) = &self.fixed {
            return Ok(dir.clone());
        }
        if let Some(dir) = self.temporary.get() {
            return Ok(dir.path().to_path_buf());
        }
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let made = tempfile::Builder::new()
            .prefix("odo-sql-")
            .tempdir_in(&base)
            .map_err(|e| {
                crate::StorageError::io(format!("making a directory in {}", base.display()), e)
            })?;
        // Another thread may have made one first: keep the first.
        Ok(self.temporary.get_or_init(|| made).path().to_path_buf())
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
