//! What can go wrong with an object's SQL.

/// An error of the SQL API. Each limit and each refused kind of statement
/// is its own variant; what SQLite itself reports (a syntax error, a
/// constraint) is [`SqlError::Sqlite`], with SQLite's message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlError {
    /// The statement is of a kind an object may not run.
    #[error("{what} is not allowed in an object's SQL: {hint}")]
    Refused {
        /// What was refused (`"BEGIN"`, `"PRAGMA journal_mode"`, ...).
        what: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// More bound parameters than the limit.
    #[error("{count} bound parameters, the limit is {max}")]
    TooManyParameters {
        /// How many the statement has or was given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A table, index or result with more columns than the limit.
    #[error("more than {max} columns (a table, an index or a result)")]
    TooManyColumns {
        /// The limit.
        max: usize,
    },
    /// Statement text longer than the limit.
    #[error("the statement is {len} bytes, the limit is {max} bytes")]
    StatementTooLong {
        /// The statement's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string, blob or row larger than the limit.
    #[error("a string, blob or row is larger than the limit of {max} bytes")]
    TooBig {
        /// The limit.
        max: usize,
    },
    /// A statement ran past its time limit and was interrupted (what it
    /// did is undone; the turn goes on, unless SQLite rolled its
    /// transaction back). A statement that never ends would otherwise
    /// stall its worker's thread until the registry killed the worker,
    /// with every object on it.
    #[error("the statement ran longer than its limit of {limit_ms} ms and was interrupted")]
    StatementTimedOut {
        /// The limit, in milliseconds.
        limit_ms: u64,
    },
    /// A statement answered more bytes of rows than
    /// [`MAX_SQL_RESULT_BYTES`](crate::MAX_SQL_RESULT_BYTES). What a
    /// reading statement did is nothing; a writing one fails its turn (its
    /// changes are made before its rows are read).
    #[error("the statement answered more than {max} bytes of rows")]
    ResultTooLarge {
        /// The limit.
        max: usize,
    },
    /// A turn wrote more pages than one log record may hold
    /// ([`SqlOptions::max_turn_bytes`](crate::SqlOptions::max_turn_bytes)):
    /// it fails, and the object is reset to its last durable state.
    #[error("the turn wrote more than {max_bytes} bytes of pages: split it into smaller turns")]
    TurnTooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// The object's database would grow past its limit.
    #[error("the object's database is full: its limit is {max_bytes} bytes")]
    DatabaseFull {
        /// The limit.
        max_bytes: u64,
    },
    /// [`Cursor::one`](crate::Cursor::one) on an answer that is not exactly
    /// one row.
    #[error("expected exactly one row, the statement answered {rows}")]
    NotOneRow {
        /// How many rows it answered.
        rows: usize,
    },
    /// A row could not be mapped into the asked type.
    #[error("could not map a row: {0}")]
    Decode(#[source] serde_json::Error),
    /// SQLite-backed objects are not served by this store
    /// ([`SqlOptions::refused`](super::SqlOptions::refused)).
    #[error("SQLite-backed objects are not served here: {why}")]
    NotServed {
        /// Why.
        why: String,
    },
    /// The object's class is key-value-backed: it has no SQL database.
    #[error("this object's class is key-value-backed; register it as SQLite-backed to use SQL")]
    NotSqlBacked,
    /// SQLite rolled the turn's whole transaction back after an error (as
    /// it may after a full database or an I/O error): the turn cannot go
    /// on, and fails when it ends.
    #[error("the turn's transaction was rolled back after an earlier error: {cause}")]
    TurnRolledBack {
        /// The error that rolled it back.
        cause: String,
    },
    /// A string that is not a bookmark of this object.
    #[error("{0:?} is not a bookmark of this object")]
    BadBookmark(String),
    /// A bookmark or time before the oldest point the object's history
    /// still holds (or after its last commit).
    #[error("{asked} is outside the object's history, which starts at bookmark {oldest}")]
    OutsideHistory {
        /// The bookmark or time asked for.
        asked: String,
        /// The oldest bookmark available.
        oldest: String,
    },
    /// SQLite refused or failed the statement.
    #[error("{0}")]
    Sqlite(#[source] rusqlite::Error),
}
