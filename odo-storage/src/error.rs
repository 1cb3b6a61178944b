//! The one error type of the crate.

use std::path::PathBuf;
use std::sync::Arc;

/// The underlying error of a [`StorageError::Backend`] or
/// [`StorageError::Corruption`]: whatever the storage engine reported,
/// kept whole so that callers can walk the source chain (or downcast it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in odo-storage.
///
/// The first four variants are caused by the caller's input and say which
/// limit was exceeded; the others come from the store itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The backend does not offer this.
    #[error("the storage backend does not support {what}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// A key is longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES).
    #[error("storage key is {len} bytes, the limit is {max} bytes")]
    KeyTooLarge {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is longer than [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES).
    #[error("storage value is {len} bytes, the limit is {max} bytes")]
    ValueTooLarge {
        /// The value's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A multi-key call names more than [`MAX_KEYS_PER_CALL`](crate::MAX_KEYS_PER_CALL) keys.
    #[error("{count} keys in one call, the limit is {max}; split the call")]
    TooManyKeys {
        /// How many keys were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The options given to `list` contradict each other.
    #[error("invalid list options: {0}")]
    InvalidListOptions(&'static str),
    /// A listing's answer would hold more than a listing may hold in memory
    /// ([`StoreOptions::max_list_entries`](crate::StoreOptions) entries or
    /// [`StoreOptions::max_list_bytes`](crate::StoreOptions) bytes). It is
    /// refused, never cut short: list in pages.
    #[error(
        "the listing would exceed {max_entries} entries or {max_bytes} bytes: list in pages, with `limit` (at most {max_entries}) and each next page starting after the last key of the one before (`start_after`)"
    )]
    ListTooLarge {
        /// The most entries a listing may answer.
        max_entries: usize,
        /// The most bytes of keys and values a listing may answer.
        max_bytes: usize,
    },
    /// A value could not be encoded or decoded by the typed helpers.
    #[error("could not {action} the value of key {key:?}: {source}")]
    Serialization {
        /// `"encode"` or `"decode"`.
        action: &'static str,
        /// The key concerned.
        key: String,
        /// What the codec said.
        #[source]
        source: postcard::Error,
    },
    /// Another process (or another store in this process) holds the store
    /// directory.
    #[error("store directory {dir} is locked by {}", holder_name(*.holder_pid))]
    Locked {
        /// The locked directory.
        dir: PathBuf,
        /// The holder's process id, when it could be read from the lock file.
        holder_pid: Option<u32>,
    },
    /// An I/O error outside the storage engine (lock file, directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed a check (bad journal, bad format version, a key
    /// that is not UTF-8...): the directory needs attention, retrying will
    /// not help.
    #[error("corrupt store: {context}{}", colon(.source))]
    Corruption {
        /// What was found.
        context: String,
        /// The engine's own error, when it reported one.
        #[source]
        source: Option<BoxError>,
    },
    /// Any other failure of the storage engine, including a failed write
    /// or fsync (after which fjall refuses further writes until it is
    /// opened again, which `FjallBackend` does
    /// itself).
    #[error("storage engine error while {context}: {source}")]
    Backend {
        /// What was being done.
        context: String,
        /// What the engine said.
        #[source]
        source: BoxError,
    },
    /// An object's SQL failed (see [`SqlError`](crate::SqlError)).
    #[cfg(feature = "sql")]
    #[error(transparent)]
    Sql(#[from] crate::sql::SqlError),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The shard was given to a newer holder: a networked backend refused a
    /// commit (or an open) carrying an epoch older than the newest it has
    /// recorded for the shard. Nothing of the refused commit was written.
    /// Retrying will not help: this holder must let the shard go.
    #[error(
        "shard {shard} is fenced: this holder has epoch {epoch}, the newest recorded is {newest}; the shard moved to another holder"
    )]
    Fenced {
        /// The shard.
        shard: u32,
        /// The epoch this holder carries.
        epoch: u64,
        /// The newest epoch recorded for the shard.
        newest: u64,
    },
    /// A commit of this object's writes failed, so its later writes were
    /// never made durable either. The object must be reset: drop its
    /// [`ObjectStorage`](crate::ObjectStorage) and take a new one.
    #[error("commit failed: {0}")]
    CommitFailed(#[source] Arc<StorageError>),
}

fn holder_name(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("process {pid}"),
        None => "another process (pid unknown)".to_string(),
    }
}

/// `": {source}"`, or nothing.
fn colon(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map_or_else(String::new, |source| format!(": {source}"))
}

impl StorageError {
    /// An [`Io`](Self::Io) error: `source` while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A [`Backend`](Self::Backend) error: the engine's `source` (an error
    /// value, or a message as a `&str` or `String`) while doing `context`.
    pub fn backend(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A [`Corruption`](Self::Corruption) found by a check of the stored
    /// data itself (no engine error behind it).
    pub fn corruption(context: impl Into<String>) -> Self {
        Self::Corruption {
            context: context.into(),
            source: None,
        }
    }

    /// A [`Corruption`](Self::Corruption) the engine reported as `source`.
    pub fn corruption_from(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Corruption {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}
