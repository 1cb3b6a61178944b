//! What an object's SQL may do: the authorizer that refuses what
//! Cloudflare refuses, the limits, and the mapping of SQLite's errors to
//! typed ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::limits::Limit;

use super::error::SqlError;

/// The most bound parameters of one statement.
pub const MAX_SQL_PARAMETERS: usize = 100;
/// The most columns of a table (and of an index or a result).
pub const MAX_SQL_COLUMNS: usize = 100;
/// The longest statement text, in bytes (100 KB).
pub const MAX_SQL_STATEMENT_BYTES: usize = 100_000;
/// The largest string, blob or row, in bytes (2 MB).
pub const MAX_SQL_ROW_BYTES: usize = 2_000_000;
/// The most bytes of rows one statement may answer (128 MiB, Cloudflare's
/// memory limit of an isolate), counted as they take memory (each value's
/// slot, each row's vector, and the bytes of strings and blobs): a cursor
/// holds its rows, and a statement that answered more would take its
/// worker's memory, with every object on it.
pub const MAX_SQL_RESULT_BYTES: usize = 128 * 1024 * 1024;

/// An odo statement's text: [`OWN`] and `$text`.
macro_rules! own {
    ($text:literal) => {
        concat!("/*odo*/ ", $text)
    };
}
pub(crate) use own;

/// The comment that begins every statement odo keeps prepared on an
/// object's connection. SQLite authorizes a statement once, when it is
/// prepared, and the connection's cache hands a prepared statement to
/// whoever asks with the same text; so the object's SQL may not begin
/// with this mark, and cannot reach odo's own statements (which the
/// authorizer let through as odo's) by typing their text.
pub(crate) const OWN: &str = own!("");

/// Whether the object's `query` claims to be odo's own (see [`OWN`]).
pub(crate) fn claims_own(query: &str) -> bool {
    query.trim_start().starts_with(OWN.trim_end())
}

/// The pragmas an object may run: those that only read the schema or
/// check the database, and the few settings of a connection that change
/// no durable state (as workerd allows).
const ALLOWED_PRAGMAS: &[&str] = &[
    "data_version",
    "defer_foreign_keys",
    "foreign_key_check",
    "foreign_key_list",
    "foreign_keys",
    "index_info",
    "index_list",
    "index_xinfo",
    "legacy_alter_table",
    "optimize",
    "quick_check",
    "case_sensitive_like",
    "recursive_triggers",
    "reverse_unordered_selects",
    "table_info",
    "table_list",
    "table_xinfo",
];

/// The virtual table modules an object may use.
const ALLOWED_MODULES: &[&str] = &["fts5", "rtree", "rtree_i32"];

/// The prefix of the tables odo keeps in every object's database.
pub(crate) const RESERVED_PREFIX: &str = "_odo_";

/// What the authorizer refused last, so the error can say why.
#[derive(Debug, Clone)]
struct Refusal {
    what: String,
    hint: &'static str,
}

/// The authorizer's state: whether odo's own statements are running
/// (they may touch the reserved tables and manage transactions), and what
/// it last refused.
#[derive(Debug, Clone, Default)]
pub(crate) struct Guard {
    internal: Arc<AtomicBool>,
    refused: Arc<Mutex<Option<Refusal>>>,
    deadline: Arc<Deadline>,
    /// The frames the WAL holds after the last commit that appended any,
    /// plus one (SQLite's WAL hook); 0: none since taken.
    commit_frames: Arc<AtomicU64>,
    /// The object's statement alters a table (it may rename one into a
    /// reserved name, which the authorizer cannot see).
    altering: Arc<AtomicBool>,
    /// The authorizer's calls for the object's statement being prepared.
    checks: Arc<AtomicU64>,
}

/// The most authorizer calls one `exec` of the object (all of its
/// statements) may make while it is prepared (about one per table and
/// column named, views expanded). Preparing is outside the time limit (SQLite's progress
/// handler does not run then), and views nested in views can make it
/// take minutes: a statement past this is refused instead. An ordinary
/// statement makes tens or hundreds.
pub(crate) const MAX_AUTHORIZER_CHECKS: u64 = 20_000;

/// The time limit of the object's statement running now.
#[derive(Debug, Default)]
struct Deadline {
    /// Nanoseconds since [`origin`], plus one; 0: no limit running.
    at: AtomicU64,
    limit_ms: AtomicU64,
    /// The progress handler interrupted the statement.
    fired: AtomicBool,
}

/// SQLite virtual-machine steps between two looks at the clock.
const STEPS_PER_CHECK: i32 = 1000;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

impl Guard {
    /// Installs the authorizer and the limits on `conn`.
    pub(crate) fn install(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
        conn.set_limit(
            Limit::SQLITE_LIMIT_VARIABLE_NUMBER,
            MAX_SQL_PARAMETERS as i32,
        )?;
        conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, MAX_SQL_COLUMNS as i32)?;
        conn.set_limit(
            Limit::SQLITE_LIMIT_SQL_LENGTH,
            MAX_SQL_STATEMENT_BYTES as i32,
        )?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_SQL_ROW_BYTES as i32)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        let deadline = self.deadline.clone();
        conn.progress_handler(STEPS_PER_CHECK, Some(move || deadline.passed()))?;
        let frames = self.commit_frames.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            frames.store(u64::try_from(pages).unwrap_or(0) + 1, Ordering::Relaxed);
            Ok(())
        }))?;
        let guard = self.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| guard.authorize(ctx)))
    }

    /// The frames the WAL holds after the last commit that appended any,
    /// if one did since the last call.
    pub(crate) fn take_commit_frames(&self) -> Option<u64> {
        self.commit_frames.swap(0, Ordering::Relaxed).checked_sub(1)
    }

    /// Runs `f` (the object's statement) under a time limit of
    /// `limit_ms`: past it, SQLite interrupts the statement, and
    /// [`error`](Self::error) says so.
    pub(crate) fn timed<T>(&self, limit_ms: u64, f: impl FnOnce() -> T) -> T {
        let deadline = &self.deadline;
        deadline.fired.store(false, Ordering::Relaxed);
        deadline.limit_ms.store(limit_ms, Ordering::Relaxed);
        let at = now_ns().saturating_add(limit_ms.saturating_mul(1_000_000));
        deadline.at.store(at, Ordering::Relaxed);
        let out = f();
        deadline.at.store(0, Ordering::Relaxed);
        out
    }

    /// Runs `f` as odo's own code (not the object's).
    pub(crate) fn internal<T>(&self, f: impl FnOnce() -> T) -> T {
        let was = self.internal.swap(true, Ordering::SeqCst);
        let out = f();
        self.internal.store(was, Ordering::SeqCst);
        out
    }

    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if self.internal.load(Ordering::SeqCst) {
            return Authorization::Allow;
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) >= MAX_AUTHORIZER_CHECKS {
            *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(Refusal {
                what: "a statement this complex".to_owned(),
                hint: "it names too many tables and columns once its views are expanded: split it, or flatten nested views",
            });
            return Authorization::Deny;
        }
        match &ctx.action {
            // Statistics of a reserved table would hold its keys
            // (`sqlite_stat4` samples): `ANALYZE` (plain, naming it, or
            // from `PRAGMA optimize`) skips it.
            AuthAction::Analyze { table_name } if reserved(table_name) => {
                return Authorization::Ignore;
            }
            AuthAction::AlterTable { .. } => self.altering.store(true, Ordering::SeqCst),
            _ => {}
        }
        match refusal(&ctx.action) {
            None => Authorization::Allow,
            Some(refusal) => {
                *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
                Authorization::Deny
            }
        }
    }

    /// Forgets the last refusal (before a statement is prepared).
    pub(crate) fn clear(&self) {
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.altering.store(false, Ordering::SeqCst);
        self.checks.store(0, Ordering::Relaxed);
    }

    /// Whether the object's statement since [`clear`](Self::clear) was
    /// authorized to alter a table.
    pub(crate) fn altered(&self) -> bool {
        self.altering.load(Ordering::SeqCst)
    }

    /// The typed error for what SQLite reported.
    pub(crate) fn error(&self, error: rusqlite::Error, max_bytes: u64) -> SqlError {
        use rusqlite::ErrorCode;
        if let Some(refusal) = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return SqlError::Refused {
                what: refusal.what,
                hint: refusal.hint,
            };
        }
        let message = error.to_string();
        match error.sqlite_error_code() {
            Some(ErrorCode::OperationInterrupted)
                if self.deadline.fired.swap(false, Ordering::Relaxed) =>
            {
                SqlError::StatementTimedOut {
                    limit_ms: self.deadline.limit_ms.load(Ordering::Relaxed),
                }
            }
            Some(ErrorCode::TooBig) => SqlError::TooBig {
                max: MAX_SQL_ROW_BYTES,
            },
            Some(ErrorCode::DiskFull) => SqlError::DatabaseFull { max_bytes },
            _ if message.contains("too many columns") => SqlError::TooManyColumns {
                max: MAX_SQL_COLUMNS,
            },
            _ if message.contains("too many SQL variables")
                || message.contains("variable number must be between") =>
            {
                SqlError::TooManyParameters {
                    count: MAX_SQL_PARAMETERS + 1,
                    max: MAX_SQL_PARAMETERS,
                }
            }
            _ if message.contains("string or blob too big") => SqlError::TooBig {
                max: MAX_SQL_ROW_BYTES,
            },
            _ => SqlError::Sqlite(error),
        }
    }
}

impl Deadline {
    /// Whether the running statement is past its limit (SQLite's progress
    /// handler: `true` interrupts it).
    fn passed(&self) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        if at != 0 && now_ns() >= at {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

fn reserved(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX)
}

fn refused(what: impl Into<String>, hint: &'static str) -> Option<Refusal> {
    Some(Refusal {
        what: what.into(),
        hint,
    })
}

const TRANSACTION_HINT: &str =
    "every turn is one implicit transaction; use `transaction_sync` for an atomic part of a turn";
pub(crate) const RESERVED_HINT: &str = "tables named `_odo_*` are odo's own";
const TEMP_HINT: &str = "temporary schema objects are not kept; create an ordinary one";

/// SQLite's tables of pages, which show every table of the database.
const PAGE_TABLES: [&str; 2] = ["dbstat", "sqlite_dbpage"];

/// What an object's statement may not do, Cloudflare's rules.
fn refusal(action: &AuthAction<'_>) -> Option<Refusal> {
    use AuthAction as A;
    match *action {
        A::Transaction { operation } => refused(
            match operation {
                TransactionOperation::Begin => "BEGIN",
                TransactionOperation::Rollback => "ROLLBACK",
                // SQLite names COMMIT (and END) so; RELEASE is a savepoint's.
                _ => "COMMIT",
            },
            TRANSACTION_HINT,
        ),
        A::Savepoint { .. } => refused("SAVEPOINT", TRANSACTION_HINT),
        A::Attach { .. } => refused("ATTACH", "an object has exactly one database"),
        A::Detach { .. } => refused("DETACH", "an object has exactly one database"),
        A::CreateTempTable { .. } => refused("CREATE TEMP TABLE", TEMP_HINT),
        A::CreateTempIndex { .. } => refused("CREATE TEMP INDEX", TEMP_HINT),
        A::CreateTempView { .. } => refused("CREATE TEMP VIEW", TEMP_HINT),
        A::CreateTempTrigger { .. } => refused("CREATE TEMP TRIGGER", TEMP_HINT),
        A::DropTempTable { .. }
        | A::DropTempIndex { .. }
        | A::DropTempView { .. }
        | A::DropTempTrigger { .. } => refused("DROP of a temporary object", TEMP_HINT),
        A::CreateVtable { module_name, .. }
            if !ALLOWED_MODULES
                .iter()
                .any(|m| m.eq_ignore_ascii_case(module_name)) =>
        {
            refused(
                format!("virtual table module {module_name:?}"),
                "only fts5 and rtree virtual tables are allowed",
            )
        }
        // Reading the page size is harmless, and rtree reads it.
        A::Pragma {
            pragma_name,
            pragma_value: None,
        } if pragma_name.eq_ignore_ascii_case("page_size") => None,
        A::Pragma { pragma_name, .. }
            if !ALLOWED_PRAGMAS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(pragma_name)) =>
        {
            refused(
                format!("PRAGMA {pragma_name}"),
                "only pragmas that read the schema or check the database are allowed (table_info, table_list, index_list, foreign_keys, quick_check, optimize, ...)",
            )
        }
        // Page statistics (and raw pages) cover every table, odo's own
        // among them: their sizes say how many keys an object keeps.
        A::Read { table_name, .. }
            if PAGE_TABLES
                .iter()
                .any(|t| t.eq_ignore_ascii_case(table_name)) =>
        {
            refused(
                format!("reading {table_name}"),
                "page statistics would show odo's own tables; `database_size()` gives the database's size",
            )
        }
        A::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            refused("load_extension", "extensions cannot be loaded")
        }
        A::CreateTable { table_name }
        | A::DropTable { table_name }
        | A::Insert { table_name }
        | A::Delete { table_name }
        | A::Read { table_name, .. }
        | A::Update { table_name, .. }
        | A::AlterTable { table_name, .. }
        | A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::CreateTrigger { table_name, .. }
        | A::DropTrigger { table_name, .. }
        | A::CreateView {
            view_name: table_name,
        }
        | A::DropView {
            view_name: table_name,
        }
        | A::CreateVtable { table_name, .. }
        | A::DropVtable { table_name, .. }
            if reserved(table_name) =>
        {
            refused(format!("table {table_name:?}"), RESERVED_HINT)
        }
        A::CreateIndex { index_name, .. } | A::DropIndex { index_name, .. }
            if reserved(index_name) =>
        {
            refused(format!("index {index_name:?}"), RESERVED_HINT)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_ignore_case() {
        for name in ["_odo_kv", "_ODO_x", "_Odo_"] {
            assert!(reserved(name), "{name}");
        }
        for name in ["odo_kv", "_od", "kv_odo_", ""] {
            assert!(!reserved(name), "{name}");
        }
    }
}
