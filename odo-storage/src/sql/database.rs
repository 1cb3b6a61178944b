//! One object's SQLite database: its connection, its turn (the implicit
//! transaction), its local commits and their log records, recovery from
//! the shard's log, and the lazy catch-up (checkpoint) of its file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use odo_core::ObjectId;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, StatementStatus};

use super::cursor::{Cursor, SqlValue};
use super::error::SqlError;
use super::guard::{
    Guard, MAX_SQL_PARAMETERS, MAX_SQL_RESULT_BYTES, MAX_SQL_STATEMENT_BYTES, OWN, RESERVED_HINT,
    claims_own, own,
};
use super::log;
use super::wal::{MAX_RECORD_BYTES, Record, WalTail, replay};
use crate::backend::{Backend, ScanLimit};
use crate::batch::AlarmChange;
use crate::error::StorageError;

/// The page size of every object database.
pub(crate) const PAGE_SIZE: u64 = 4096;
/// Prepared statements kept per object.
const STATEMENT_CACHE: usize = 64;

/// The SQL database of one SQLite-backed object, as its code sees it:
/// [`exec`](Self::exec), [`transaction_sync`](Self::transaction_sync) and
/// [`database_size`](Self::database_size). Every statement runs in the
/// turn's implicit transaction, which the runtime commits (or rolls back)
/// with the turn's other writes.
///
/// Reached with [`ObjectStorage::sql`](crate::ObjectStorage::sql).
#[derive(Debug)]
pub struct SqlStorage {
    pub(crate) id: ObjectId,
    pub(crate) path: PathBuf,
    pub(crate) conn: Option<Connection>,
    pub(crate) guard: Guard,
    pub(crate) wal: WalTail,
    in_txn: bool,
    /// Why SQLite rolled the turn's transaction back, if it did.
    aborted: Option<String>,
    savepoints: usize,
    /// The sequence number the next log record gets.
    pub(crate) next_seq: u64,
    /// Records up to this one are in the database file and synced, as the
    /// log's marker says (or will, once the turn that carries it commits).
    pub(crate) synced: u64,
    /// Records up to this one are in the file and synced (set by the
    /// background sync after a checkpoint), not yet in the log's marker.
    pub(crate) fsynced: Arc<AtomicU64>,
    pub(crate) max_bytes: u64,
    /// How long one `exec` may run, in milliseconds.
    pub(crate) max_statement_ms: u64,
    /// The most bytes of pages one turn may write.
    pub(crate) max_turn_bytes: u64,
    /// The turn's change of the alarm (for the shard's alarm index), found
    /// when it commits.
    pub(crate) alarm: AlarmChange,
    /// Whether the turn touched the alarm.
    pub(crate) alarm_dirty: bool,
    /// Whether the reserved key-value table exists, when known.
    pub(crate) kv_table: Option<bool>,
    /// The commit time of the last record (records' times only grow).
    pub(crate) last_time: u64,
    /// This view's claim on the database while it is open. Last, so that
    /// it is released after the connection is closed.
    claim: Option<super::claim::Claim>,
}

/// What a recovery found in the log.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) conn: Connection,
    /// The commit time of the last record.
    pub(crate) last_time: u64,
    pub(crate) next_seq: u64,
    pub(crate) synced: u64,
}

impl SqlStorage {
    pub(crate) fn new(id: ObjectId, dir: &Path, limits: &super::SqlOptions) -> Self {
        let path = dir.join(format!("{id}.sqlite"));
        Self {
            id,
            wal: WalTail::new(&path),
            path,
            conn: None,
            guard: Guard::default(),
            in_txn: false,
            aborted: None,
            savepoints: 0,
            next_seq: 1,
            synced: 0,
            fsynced: Arc::new(AtomicU64::new(0)),
            max_bytes: limits.max_database_bytes,
            max_statement_ms: limits.max_statement_ms,
            // No more than a record may hold, whatever was asked.
            max_turn_bytes: limits.max_turn_bytes.min(MAX_RECORD_BYTES as u64),
            alarm: AlarmChange::Keep,
            alarm_dirty: false,
            kv_table: None,
            last_time: 0,
            claim: None,
        }
    }

    /// Whether the database is open (recovered).
    pub(crate) fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    pub(crate) fn opened(&mut self, recovered: Recovered, claim: super::claim::Claim) {
        self.claim = Some(claim);
        self.reopened(recovered);
    }

    /// Closes the connection of a view going away and hands over its
    /// claim, to be held until the work on the file that outlives the
    /// view is done (its synced marker on the way).
    pub(crate) fn close_keeping_claim(&mut self) -> Option<super::claim::Claim> {
        self.conn = None;
        self.claim.take()
    }

    /// Takes a newly recovered connection, keeping the claim.
    pub(crate) fn reopened(&mut self, recovered: Recovered) {
        self.conn = Some(recovered.conn);
        self.next_seq = recovered.next_seq;
        self.last_time = self.last_time.max(recovered.last_time);
        self.synced = recovered.synced;
        self.fsynced.store(recovered.synced, Ordering::SeqCst);
        // The recovery removed the old WAL file: read the new one.
        self.wal = WalTail::new(&self.path);
    }

    /// Runs `query` with `params` in the turn's transaction and answers
    /// its rows.
    ///
    /// Several statements separated by `;` run in order when there are no
    /// parameters; the answer is the last one's.
    ///
    /// # Errors
    ///
    /// [`SqlError`] (inside [`StorageError::Sql`]): a refused statement, a
    /// limit, or SQLite's own error. A failed statement changes nothing;
    /// the turn goes on.
    pub fn exec(&mut self, query: &str, params: &[SqlValue]) -> Result<Cursor, StorageError> {
        if query.len() > MAX_SQL_STATEMENT_BYTES {
            return Err(SqlError::StatementTooLong {
                len: query.len(),
                max: MAX_SQL_STATEMENT_BYTES,
            }
            .into());
        }
        if params.len() > MAX_SQL_PARAMETERS {
            return Err(SqlError::TooManyParameters {
                count: params.len(),
                max: MAX_SQL_PARAMETERS,
            }
            .into());
        }
        if claims_own(query) {
            return Err(SqlError::Refused {
                what: OWN.trim_end().to_owned(),
                hint: "a statement that begins with this comment is odo's own: remove the comment",
            }
            .into());
        }
        self.begin()?;
        let (max_bytes, max_ms) = (self.max_bytes, self.max_statement_ms);
        let guard = self.guard.clone();
        let conn = self.conn()?;
        guard.clear();
        let changes_before = conn.total_changes();
        let result = guard.timed(max_ms, || match conn.prepare_cached(query) {
            Ok(mut statement) => run(conn, &mut statement, params),
            Err(rusqlite::Error::MultipleStatement) if params.is_empty() => run_batch(conn, query),
            // rusqlite prepares the rest of the text to tell whether there
            // is more than one statement, which fails when a later
            // statement needs what an earlier one creates: run them one by
            // one (a single statement fails again, with its own error).
            Err(_) if params.is_empty() => run_batch(conn, query),
            Err(e) => Err(e.into()),
        });
        let wrote = conn.total_changes() != changes_before;
        let mut rolled_back = conn.is_autocommit();
        let mut result = result.map_err(|e| match e {
            RunError::Sqlite(e) => guard.error(e, max_bytes),
            RunError::TooLarge => SqlError::ResultTooLarge {
                max: MAX_SQL_RESULT_BYTES,
            },
        });
        // A table renamed into a reserved name (the authorizer sees only
        // the old name) is refused.
        let renamed_into_reserved =
            guard.altered() && !rolled_back && !self.reserved_names_intact()?;
        if renamed_into_reserved {
            result = Err(SqlError::Refused {
                what: "ALTER TABLE into a reserved name".to_owned(),
                hint: RESERVED_HINT,
            });
        }
        // What the statement did cannot be undone alone (a rename; the
        // changes of a writing statement, made before its rows are read):
        // its turn fails.
        let undo = match &result {
            Err(SqlError::ResultTooLarge { .. }) => wrote,
            Err(SqlError::Refused { .. }) => renamed_into_reserved,
            _ => false,
        };
        if undo && !rolled_back {
            if let Err(error) = self.internal(own!("ROLLBACK")) {
                tracing::error!(%error, id = %self.id, "rolling back a turn's SQL failed");
            }
            rolled_back = true;
        }
        result.map_err(|error| {
            if rolled_back {
                self.abort(error.to_string());
            }
            error.into()
        })
    }

    /// Runs `f` atomically inside the turn: if it returns `Err`, every
    /// change it made is rolled back (and the turn goes on); if `Ok`, its
    /// changes join the turn. Nests.
    pub fn transaction_sync<T, E>(
        &mut self,
        f: impl FnOnce(&mut SqlStorage) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StorageError>,
    {
        self.begin()?;
        let name = format!("odo_tx_{}", self.savepoints);
        self.internal(&format!("{OWN}SAVEPOINT {name}"))?;
        self.savepoints += 1;
        let result = f(self);
        self.savepoints -= 1;
        match &result {
            Ok(_) => self.internal(&format!("{OWN}RELEASE {name}"))?,
            Err(_) => {
                self.internal(&format!("{OWN}ROLLBACK TO {name}"))?;
                self.internal(&format!("{OWN}RELEASE {name}"))?;
                self.kv_table = None;
            }
        }
        result
    }

    /// The database's size in bytes (its pages, as the turn sees them).
    pub fn database_size(&mut self) -> Result<u64, StorageError> {
        let guard = self.guard.clone();
        let conn = self.conn()?;
        let pages: i64 = guard
            .internal(|| conn.query_row("PRAGMA page_count", [], |row| row.get(0)))
            .map_err(sqlite)?;
        Ok(pages.max(0) as u64 * PAGE_SIZE)
    }

    pub(crate) fn conn(&mut self) -> Result<&mut Connection, StorageError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::backend("using an object's database", "it is not open"))
    }

    /// Runs odo's own statement: one, without rows. Prepared once per
    /// connection (`BEGIN` and `COMMIT` run every turn; parsing them each
    /// time was a tenth of a small turn's CPU).
    pub(crate) fn internal(&mut self, sql: &str) -> Result<(), StorageError> {
        debug_assert!(
            sql.starts_with(OWN),
            "odo's statement {sql:?} lacks its mark"
        );
        let guard = self.guard.clone();
        let conn = self.conn()?;
        guard
            .internal(|| conn.prepare_cached(sql)?.execute([]))
            .map(drop)
            .map_err(sqlite)
    }

    /// Opens the turn's transaction, if it is not open.
    pub(crate) fn begin(&mut self) -> Result<(), StorageError> {
        if let Some(cause) = &self.aborted {
            return Err(SqlError::TurnRolledBack {
                cause: cause.clone(),
            }
            .into());
        }
        if !self.in_txn {
            self.internal(own!("BEGIN"))?;
            self.in_txn = true;
        } else if self.conn()?.is_autocommit() {
            // SQLite rolled the turn's transaction back under a statement
            // whose caller did not say so: nothing more may run outside it.
            let cause = "SQLite rolled the turn's transaction back".to_owned();
            self.abort(cause.clone());
            return Err(SqlError::TurnRolledBack { cause }.into());
        }
        Ok(())
    }

    /// Notes that SQLite rolled the turn's transaction back (`cause`):
    /// every later statement of the turn fails, and so does its commit.
    pub(crate) fn abort(&mut self, cause: String) {
        self.aborted.get_or_insert(cause);
    }

    /// Why SQLite rolled the turn's transaction back, if it did.
    pub(crate) fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// Whether the turn has an open transaction.
    pub(crate) fn in_turn(&self) -> bool {
        self.in_txn
    }

    /// Commits the turn's transaction locally (no sync) and answers the log
    /// record of what it wrote, if it wrote anything.
    pub(crate) fn commit_local(&mut self) -> Result<Option<Record>, StorageError> {
        if !self.in_txn {
            return Ok(None);
        }
        self.in_txn = false;
        if let Some(cause) = self.aborted.take() {
            self.kv_table = None;
            self.alarm_dirty = false;
            return Err(SqlError::TurnRolledBack { cause }.into());
        }
        if std::mem::take(&mut self.alarm_dirty) {
            self.in_txn = true;
            self.alarm = match self.alarm_get() {
                Ok(Some(time)) => AlarmChange::Set(time),
                Ok(None) => AlarmChange::Delete,
                Err(error) => {
                    self.rollback();
                    return Err(error);
                }
            };
            self.in_txn = false;
        }
        // SQLite says how many frames the WAL holds after a commit that
        // appended any (its WAL hook). A commit that appended none (a turn
        // that only read, or wrote nothing) has no record, and what the WAL
        // holds past the last commit is then not its: the pages a failed
        // turn spilled there before it rolled back.
        self.guard.take_commit_frames();
        if let Err(error) = self.internal(own!("COMMIT")) {
            let _ = self.internal(own!("ROLLBACK"));
            self.kv_table = None;
            return Err(error);
        }
        let Some(frames) = self.guard.take_commit_frames() else {
            return Ok(None);
        };
        let max = self.max_turn_bytes;
        self.wal
            .next_commit(crate::sql::now_ms(), frames, max)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::FileTooLarge => {
                    SqlError::TurnTooLarge { max_bytes: max }.into()
                }
                _ => StorageError::io("reading the pages of a local commit", e),
            })
    }

    /// Drops the turn's transaction.
    pub(crate) fn rollback(&mut self) {
        self.alarm = AlarmChange::Keep;
        self.alarm_dirty = false;
        if self.in_txn {
            self.in_txn = false;
            if self.aborted.take().is_some() {
                self.kv_table = None;
                return;
            }
            self.kv_table = None;
            if let Err(error) = self.internal(own!("ROLLBACK")) {
                tracing::error!(%error, id = %self.id, "rolling back a turn's SQL failed");
            }
        }
    }

    /// Copies the WAL into the database file and empties it (no sync).
    /// Only when every local commit is durable in the log.
    pub(crate) fn checkpoint(&mut self) -> Result<(), StorageError> {
        let guard = self.guard.clone();
        checkpoint(self.conn()?, &guard)?;
        self.wal.reset();
        Ok(())
    }

    /// [`checkpoint`](Self::checkpoint), on a blocking thread: the
    /// connection (and the claim, which outlives it) go there and come
    /// back. If the wait is given up (the turn's future dropped), they are
    /// dropped there, connection first, and the next opening waits for
    /// the claim.
    pub(crate) async fn checkpoint_off_thread(&mut self) -> Result<(), StorageError> {
        let (Some(conn), claim) = (self.conn.take(), self.claim.take()) else {
            return Err(StorageError::backend(
                "checkpointing an object's database",
                "it is not open",
            ));
        };
        let open = Open { conn, claim };
        let guard = self.guard.clone();
        let (open, result) = tokio::task::spawn_blocking(move || {
            let mut open = open;
            let result = checkpoint(&mut open.conn, &guard);
            (open, result)
        })
        .await
        .map_err(|e| StorageError::backend("checkpointing an object's database", e))?;
        self.conn = Some(open.conn);
        self.claim = open.claim;
        result?;
        self.wal.reset();
        Ok(())
    }
}

/// A connection and the claim that must outlive it (fields drop in
/// order).
struct Open {
    conn: Connection,
    claim: Option<super::claim::Claim>,
}

/// Copies the WAL of `conn` into its file and empties it (no sync).
fn checkpoint(conn: &mut Connection, guard: &Guard) -> Result<(), StorageError> {
    guard
        .internal(|| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .map_err(sqlite)
        .and_then(|busy| match busy {
            0 => Ok(()),
            _ => Err(StorageError::backend(
                "checkpointing an object's database",
                "the checkpoint could not complete",
            )),
        })
}

fn sqlite(error: rusqlite::Error) -> StorageError {
    StorageError::Sql(SqlError::Sqlite(error))
}

/// Why a statement's rows could not be read.
enum RunError {
    Sqlite(rusqlite::Error),
    /// More than [`MAX_SQL_RESULT_BYTES`].
    TooLarge,
}

impl From<rusqlite::Error> for RunError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

/// The `width` values of `row`, counted into `bytes` (the statement's
/// rows so far), past [`MAX_SQL_RESULT_BYTES`] an error.
fn read_row(
    row: &rusqlite::Row<'_>,
    width: usize,
    bytes: &mut usize,
) -> Result<Vec<SqlValue>, RunError> {
    let mut values = Vec::with_capacity(width);
    // What the row costs in memory: its vector, each value's slot, and
    // the bytes of its strings and blobs (an empty value costs its slot).
    *bytes += std::mem::size_of::<Vec<SqlValue>>();
    for at in 0..width {
        let value = row.get_ref(at)?;
        *bytes += std::mem::size_of::<SqlValue>()
            + match value {
                rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => b.len(),
                _ => 0,
            };
        if *bytes > MAX_SQL_RESULT_BYTES {
            return Err(RunError::TooLarge);
        }
        values.push(SqlValue::from_ref(value));
    }
    Ok(values)
}

fn run(
    conn: &Connection,
    statement: &mut rusqlite::CachedStatement<'_>,
    params: &[SqlValue],
) -> Result<Cursor, RunError> {
    let columns: Arc<[String]> = statement.column_names().map(str::to_owned).collect();
    let width = columns.len();
    // `changes()` is the last INSERT, UPDATE or DELETE's, stale after any
    // other statement: count what this one changed instead.
    let before = conn.total_changes();
    let mut rows = Vec::new();
    {
        let mut answer = statement.query(rusqlite::params_from_iter(params.iter()))?;
        let mut bytes = 0;
        while let Some(row) = answer.next()? {
            rows.push(read_row(row, width, &mut bytes)?);
        }
    }
    let scanned = statement.get_status(StatementStatus::FullscanStep).max(0) as u64;
    statement.reset_status(StatementStatus::FullscanStep);
    let rows_written = conn.total_changes() - before;
    Ok(Cursor {
        columns,
        rows_read: (rows.len() as u64).max(scanned),
        rows,
        rows_written,
    })
}

fn run_batch(conn: &Connection, query: &str) -> Result<Cursor, RunError> {
    let mut batch = rusqlite::Batch::new(conn, query);
    let mut last = Cursor {
        columns: Arc::from(Vec::new()),
        rows: Vec::new(),
        rows_read: 0,
        rows_written: 0,
    };
    let (mut read, mut written) = (0, 0);
    while let Some(mut statement) = rusqlite::fallible_iterator::FallibleIterator::next(&mut batch)?
    {
        let columns: Arc<[String]> = statement.column_names().map(str::to_owned).collect();
        let before = conn.total_changes();
        let mut rows = Vec::new();
        {
            let mut answer = statement.query([])?;
            let mut bytes = 0;
            while let Some(row) = answer.next()? {
                rows.push(read_row(row, columns.len(), &mut bytes)?);
            }
        }
        read += rows.len() as u64;
        written += conn.total_changes() - before;
        last = Cursor {
            columns,
            rows,
            rows_read: 0,
            rows_written: 0,
        };
    }
    last.rows_read = read;
    last.rows_written = written;
    Ok(last)
}

/// Brings the database file of `id` at `path` up to date from the log and
/// opens it: forgets the WAL (what it holds past the last checkpoint is in
/// the log, or was never durable), replays every record after the synced
/// marker, in order, then opens the connection. Blocking.
pub(crate) fn recover(
    backend: &dyn Backend,
    id: &ObjectId,
    path: &Path,
    max_bytes: u64,
    guard: &Guard,
) -> Result<Recovered, StorageError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io(
                    format!("removing {}", Path::new(&side).display()),
                    e,
                ));
            }
        }
    }
    let synced = log::synced(backend, id)?;
    // Records up to the base are folded away; the next one comes after
    // them even if the synced marker lags behind.
    let base = super::history::base(backend, id)?;
    let mut last = synced.max(base).max(log::last_seq(backend, id)?);
    let mut from = synced + 1;
    loop {
        let page = backend.scan(
            id,
            &log::records_from(from),
            false,
            ScanLimit {
                entries: 256,
                bytes: 16 * 1024 * 1024,
            },
        )?;
        let Some((key, _)) = page.last() else { break };
        let next = log::seq_of(key)? + 1;
        let mut records = Vec::with_capacity(page.len());
        for (key, value) in page {
            let seq = log::seq_of(&key)?;
            last = last.max(seq);
            records.push(Record::decode(value).ok_or_else(|| {
                StorageError::corruption(format!("log record {seq} of object {id}"))
            })?);
        }
        replay(path, &records).map_err(|e| {
            StorageError::io(format!("replaying the log into {}", path.display()), e)
        })?;
        from = next;
    }
    let conn = open(path, max_bytes, guard)?;
    let last_time = super::history::last_time(backend, id)?;
    Ok(Recovered {
        conn,
        last_time,
        next_seq: last + 1,
        synced,
    })
}

fn open(path: &Path, max_bytes: u64, guard: &Guard) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(sqlite)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(sqlite)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(sqlite)?;
    let max_pages = (max_bytes / PAGE_SIZE).max(1);
    // Temporary tables (the b-trees of DISTINCT, GROUP BY, ORDER BY
    // without an index, a recursive query's queue) spill to temporary
    // files past their page cache, not to the heap: one statement over
    // hundreds of megabytes must not take the worker's memory, and every
    // object of the worker with it (tests/tests/sql_memory.rs).
    // Temporary files are unlinked at once and live in TMPDIR.
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = OFF;
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA temp_store = FILE;
         PRAGMA max_page_count = {max_pages};"
    ))
    .map_err(sqlite)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(sqlite)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::corruption(format!(
            "{} is not in WAL mode ({mode})",
            path.display()
        )));
    }
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    guard.install(&mut conn).map_err(sqlite)?;
    Ok(conn)
}

/// Syncs the database file at `path` (after a checkpoint). Blocking.
pub(crate) fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .sync_data()
}

/// The log entries of a turn that wrote `record` as number `seq`.
pub(crate) fn record_entry(seq: u64, record: &Record) -> (String, Option<Bytes>) {
    (log::record_key(seq), Some(record.encode()))
}
