//! The crate's error type, and how it becomes a [`StorageError`].

use odo_storage::StorageError;

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresError {
    /// The configuration is unusable (checked before connecting).
    #[error("{0}")]
    Config(String),
    /// A TLS file could not be read or used.
    #[error("TLS towards PostgreSQL: {context}")]
    Tls {
        /// What was being done.
        context: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// No connection could be made within the reconnect timeout.
    #[error("cannot reach PostgreSQL after {attempts} attempt(s) over {waited_ms} ms")]
    Unreachable {
        /// Connection attempts made.
        attempts: u32,
        /// How long it kept trying.
        waited_ms: u64,
        /// The last attempt's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement failed (the database's own error, with its SQLSTATE).
    #[error("PostgreSQL refused {context}")]
    Query {
        /// What was being done.
        context: &'static str,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A statement did not finish within the query timeout; its connection
    /// was dropped.
    #[error("{context} took longer than {timeout_ms} ms; the connection was dropped")]
    Timeout {
        /// What was being done.
        context: &'static str,
        /// The timeout.
        timeout_ms: u64,
    },
    /// A commit or an open carried an epoch older than the newest recorded
    /// for the shard: the shard has a newer holder.
    #[error("shard {shard} is fenced: epoch {epoch} < newest {newest}")]
    Fenced {
        /// The shard.
        shard: u32,
        /// The epoch carried.
        epoch: u64,
        /// The newest recorded.
        newest: u64,
    },
    /// A value read back is not what odo wrote (a key that is not UTF-8,
    /// an object id of the wrong length, a negative time).
    #[error("corrupt row in PostgreSQL: {0}")]
    Corrupt(String),
    /// A number does not fit PostgreSQL's signed 64-bit integers.
    #[error("{what} {value} does not fit a PostgreSQL bigint")]
    OutOfRange {
        /// What the number is.
        what: &'static str,
        /// The number.
        value: u64,
    },
    /// The backend was closed.
    #[error("the PostgreSQL backend is closed")]
    Closed,
}

impl PostgresError {
    /// Whether the error means the connection is gone (so the next call
    /// must reconnect).
    pub(crate) fn broke_connection(&self) -> bool {
        match self {
            Self::Query { source, .. } => source.is_closed() || source.code().is_none(),
            Self::Timeout { .. } | Self::Unreachable { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { context, source }
    }
}

impl From<PostgresError> for StorageError {
    fn from(error: PostgresError) -> Self {
        match error {
            PostgresError::Fenced {
                shard,
                epoch,
                newest,
            } => StorageError::Fenced {
                shard,
                epoch,
                newest,
            },
            PostgresError::Closed => StorageError::Closed,
            PostgresError::Corrupt(what) => StorageError::corruption(what),
            other => StorageError::backend("talking to PostgreSQL", other),
        }
    }
}
