//! The key-value API and the alarm of a SQLite-backed object, in reserved
//! tables of its own database, so they commit (and are restored) with its
//! SQL.
//!
//! `_odo_kv (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID`: SQLite
//! compares TEXT with its BINARY collation, `memcmp` of the UTF-8 bytes,
//! which is the order every backend lists keys in. `_odo_alarm` holds at
//! most one row, the alarm's time; the turn's alarm change also goes to
//! the shard's alarm index through the group commit.

use std::ops::Bound;

use bytes::Bytes;
use rusqlite::OptionalExtension;

use super::database::SqlStorage;
use super::guard::own;
use crate::batch::KeyRange;
use crate::error::StorageError;

const CREATE_KV: &str =
    "CREATE TABLE IF NOT EXISTS _odo_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID";
const CREATE_ALARM: &str = "CREATE TABLE IF NOT EXISTS _odo_alarm (id INTEGER PRIMARY KEY CHECK (id = 0), time INTEGER NOT NULL)";

/// What `sqlite_schema` holds for each of odo's reserved tables (SQLite
/// keeps the `CREATE` text without `IF NOT EXISTS`).
fn reserved_table_sql(name: &str) -> Option<String> {
    let create = match name {
        "_odo_kv" => CREATE_KV,
        "_odo_alarm" => CREATE_ALARM,
        _ => return None,
    };
    Some(create.replacen("IF NOT EXISTS ", "", 1))
}

impl SqlStorage {
    /// Whether the schema's reserved names are only odo's tables, as odo
    /// made them: no table of the object's renamed into one (with its
    /// triggers, which odo's own writes would fire), no other object on
    /// one.
    pub(crate) fn reserved_names_intact(&mut self) -> Result<bool, StorageError> {
        let rows: Vec<(String, String, Option<String>)> = self.with_conn(|conn| {
            conn.prepare(
                "SELECT type, name, sql FROM sqlite_schema
                 WHERE name LIKE '\\_odo\\_%' ESCAPE '\\' OR tbl_name LIKE '\\_odo\\_%' ESCAPE '\\'",
            )?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect()
        })?;
        Ok(rows.iter().all(|(kind, name, sql)| match kind.as_str() {
            "table" => sql.is_some() && *sql == reserved_table_sql(name),
            // A table's own automatic index.
            "index" => sql.is_none(),
            _ => false,
        }))
    }

    /// Runs `f` on the connection as odo's own code, inside the turn's
    /// transaction.
    fn with_conn<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StorageError> {
        self.begin()?;
        let guard = self.guard.clone();
        let max_bytes = self.max_bytes;
        let conn = self.conn()?;
        let result = guard.internal(|| f(conn));
        // A write past the database's limit (or an I/O error) may roll
        // the whole turn back: it cannot go on.
        let rolled_back = conn.is_autocommit();
        result.map_err(|e| {
            let error = guard.error(e, max_bytes);
            if rolled_back {
                self.abort(error.to_string());
            }
            error.into()
        })
    }

    /// Whether a reserved table exists (read without writing).
    fn has_table(&mut self, name: &str) -> Result<bool, StorageError> {
        self.with_conn(|conn| {
            conn.prepare_cached(own!(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?"
            ))?
            .exists([name])
        })
    }

    /// Makes sure the key-value table exists; `false` when reading found
    /// none (so there is nothing to read).
    fn kv_table(&mut self, create: bool) -> Result<bool, StorageError> {
        if self.kv_table == Some(true) {
            return Ok(true);
        }
        let exists = self.has_table("_odo_kv")?;
        if !exists && create {
            self.with_conn(|conn| conn.execute_batch(CREATE_KV))?;
        }
        let exists = exists || create;
        self.kv_table = Some(exists);
        Ok(exists)
    }

    pub(crate) fn kv_get(&mut self, key: &str) -> Result<Option<Bytes>, StorageError> {
        if !self.kv_table(false)? {
            return Ok(None);
        }
        self.with_conn(|conn| {
            conn.prepare_cached(own!("SELECT value FROM _odo_kv WHERE key = ?"))?
                .query_row([key], |row| row.get::<_, Vec<u8>>(0))
                .optional()
        })
        .map(|value| value.map(Bytes::from))
    }

    pub(crate) fn kv_put(&mut self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.kv_table(true)?;
        self.with_conn(|conn| {
            conn.prepare_cached(own!(
                "INSERT OR REPLACE INTO _odo_kv (key, value) VALUES (?, ?)"
            ))?
            .execute(rusqlite::params![key, value])
        })?;
        Ok(())
    }

    /// Deletes `key`; whether it existed.
    pub(crate) fn kv_delete(&mut self, key: &str) -> Result<bool, StorageError> {
        if !self.kv_table(false)? {
            return Ok(false);
        }
        let deleted = self.with_conn(|conn| {
            conn.prepare_cached(own!("DELETE FROM _odo_kv WHERE key = ?"))?
                .execute([key])
        })?;
        Ok(deleted > 0)
    }

    /// Up to `limit` entries of `range`, stopping after the entry that
    /// brings the bytes to `max_bytes`; the flag says whether more were
    /// left.
    pub(crate) fn kv_list(
        &mut self,
        range: &KeyRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        if range.is_empty() || !self.kv_table(false)? {
            return Ok(Vec::new());
        }
        let mut sql = String::from(own!("SELECT key, value FROM _odo_kv WHERE 1"));
        let mut params: Vec<&str> = Vec::new();
        match &range.lower {
            Bound::Included(key) => {
                sql.push_str(" AND key >= ?");
                params.push(key);
            }
            Bound::Excluded(key) => {
                sql.push_str(" AND key > ?");
                params.push(key);
            }
            Bound::Unbounded => {}
        }
        match &range.upper {
            Bound::Included(key) => {
                sql.push_str(" AND key <= ?");
                params.push(key);
            }
            Bound::Excluded(key) => {
                sql.push_str(" AND key < ?");
                params.push(key);
            }
            Bound::Unbounded => {}
        }
        sql.push_str(if reverse {
            " ORDER BY key DESC LIMIT ?"
        } else {
            " ORDER BY key LIMIT ?"
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(|conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let mut bound: Vec<&dyn rusqlite::ToSql> =
                params.iter().map(|p| p as &dyn rusqlite::ToSql).collect();
            bound.push(&limit);
            let rows = statement.query_map(bound.as_slice(), |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Bytes::from(row.get::<_, Vec<u8>>(1)?),
                ))
            })?;
            rows.collect()
        })
    }

    pub(crate) fn alarm_get(&mut self) -> Result<Option<u64>, StorageError> {
        if !self.has_table("_odo_alarm")? {
            return Ok(None);
        }
        self.with_conn(|conn| {
            conn.prepare_cached(own!("SELECT time FROM _odo_alarm WHERE id = 0"))?
                .query_row([], |row| row.get::<_, i64>(0))
                .optional()
        })
        .map(|time| time.map(|t| t.max(0) as u64))
    }

    pub(crate) fn alarm_set(&mut self, time_ms: u64) -> Result<(), StorageError> {
        let time = i64::try_from(time_ms).unwrap_or(i64::MAX);
        self.with_conn(|conn| {
            conn.execute_batch(CREATE_ALARM)?;
            conn.prepare_cached(own!(
                "INSERT OR REPLACE INTO _odo_alarm (id, time) VALUES (0, ?)"
            ))?
            .execute([time])
        })?;
        self.alarm_dirty = true;
        Ok(())
    }

    pub(crate) fn alarm_delete(&mut self) -> Result<(), StorageError> {
        if self.has_table("_odo_alarm")? {
            self.with_conn(|conn| conn.execute("DELETE FROM _odo_alarm", []))?;
        }
        self.alarm_dirty = true;
        Ok(())
    }

    /// Removes the object's whole database (every table, index, view and
    /// trigger, odo's own included) and its alarm, in the turn.
    pub(crate) fn delete_everything(&mut self) -> Result<(), StorageError> {
        // Triggers first: the drops below run as odo's own statements, and
        // a trigger the object planted (fired by a foreign key's cascade)
        // would run with them.
        let triggers: Vec<String> = self.with_conn(|conn| {
            conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger'")?
                .query_map([], |row| row.get(0))?
                .collect()
        })?;
        for name in triggers {
            let statement = format!("DROP TRIGGER IF EXISTS \"{}\"", name.replace('"', "\"\""));
            self.with_conn(|conn| conn.execute_batch(&statement))?;
        }
        loop {
            let names: Vec<(String, String)> = self.with_conn(|conn| {
                conn.prepare(
                    "SELECT type, name FROM sqlite_schema
                     WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                     ORDER BY type = 'table', sql LIKE 'CREATE VIRTUAL%' DESC",
                )?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
            })?;
            if names.is_empty() {
                break;
            }
            let mut dropped = 0;
            for (kind, name) in &names {
                let statement = format!(
                    "DROP {} IF EXISTS \"{}\"",
                    if kind == "view" { "VIEW" } else { "TABLE" },
                    name.replace('"', "\"\"")
                );
                // A virtual table's shadow tables go with it: dropping one
                // of them first may be refused, and is retried.
                if self
                    .with_conn(|conn| conn.execute_batch(&statement))
                    .is_ok()
                {
                    dropped += 1;
                }
            }
            if dropped == 0 {
                return Err(StorageError::backend(
                    "deleting an object's database",
                    format!("{} schema objects could not be dropped", names.len()),
                ));
            }
        }
        self.kv_table = Some(false);
        self.alarm_dirty = true;
        Ok(())
    }
}
