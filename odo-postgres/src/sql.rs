//! The schema and every statement the backend runs, as text.
//!
//! One schema holds every shard of one odo cluster:
//!
//! | table | key | columns |
//! | --- | --- | --- |
//! | `odo_shards` | `shard` | `epoch`: the newest epoch any holder opened the shard at (the fence) |
//! | `odo_data` | `(shard, object, key)` | `value` (`bytea`); keys are `bytea` so they order by their UTF-8 bytes |
//! | `odo_alarms` | `(shard, object)` | `at` (milliseconds since the Unix epoch); indexed by `(shard, at, object)` |
//!
//! Statements take the shard as `$1` so every read and write stays inside
//! the shard's range of the primary keys.

/// The format of the tables; recorded in `odo_meta` and checked on open.
pub(crate) const FORMAT: i32 = 1;

/// Makes the schema and tables if missing. Run under
/// `pg_advisory_xact_lock` so that workers opening shards at once do not
/// race on `CREATE ... IF NOT EXISTS` (which is not safe under concurrency
/// in PostgreSQL).
pub(crate) fn create(schema: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.odo_meta (
             name text PRIMARY KEY,
             value integer NOT NULL);
         INSERT INTO {schema}.odo_meta VALUES ('format', {FORMAT}) ON CONFLICT (name) DO NOTHING;
         CREATE TABLE IF NOT EXISTS {schema}.odo_shards (
             shard integer PRIMARY KEY,
             epoch bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {schema}.odo_data (
             shard integer NOT NULL,
             object bytea NOT NULL,
             key bytea NOT NULL,
             value bytea NOT NULL,
             PRIMARY KEY (shard, object, key));
         CREATE TABLE IF NOT EXISTS {schema}.odo_alarms (
             shard integer NOT NULL,
             object bytea NOT NULL,
             at bigint NOT NULL,
             PRIMARY KEY (shard, object));
         CREATE INDEX IF NOT EXISTS odo_alarms_due ON {schema}.odo_alarms (shard, at, object);"
    )
}

/// The key of the advisory lock taken while creating the schema.
pub(crate) const SETUP_LOCK: i64 = 0x6f64_6f5f_7363_6865; // "odo_sche"

/// `$1` format name -> its value.
pub(crate) fn format(schema: &str) -> String {
    format!("SELECT value FROM {schema}.odo_meta WHERE name = 'format'")
}

/// Claims shard `$1` at epoch `$2`: records it unless a newer one is
/// recorded. Returns a row only when the claim holds.
pub(crate) fn claim(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.odo_shards AS s (shard, epoch) VALUES ($1, $2)
         ON CONFLICT (shard) DO UPDATE SET epoch = EXCLUDED.epoch
         WHERE s.epoch <= EXCLUDED.epoch
         RETURNING epoch"
    )
}

/// The newest epoch recorded for shard `$1`.
pub(crate) fn newest(schema: &str) -> String {
    format!("SELECT epoch FROM {schema}.odo_shards WHERE shard = $1")
}

/// The fence, first statement of every commit's transaction: a share lock
/// on shard `$1`'s row until the transaction ends, so a newer claim (an
/// `UPDATE` of the row) waits for this commit, or this commit sees the
/// newer epoch and is refused. Refused means an error, `division_by_zero`
/// ([`FENCED`]: the row count is 0), at execution, never at planning: it
/// aborts the transaction, so the writes pipelined behind it fail and the
/// `COMMIT` sent with them rolls back. One round trip per commit.
pub(crate) fn fence(schema: &str) -> String {
    format!(
        "SELECT 1 / count(*)::integer FROM (
             SELECT epoch FROM {schema}.odo_shards WHERE shard = $1 AND epoch = $2 FOR SHARE
         ) AS holds"
    )
}

/// The error the fence raises when the shard's epoch is not the one the
/// commit carries.
pub(crate) const FENCED: tokio_postgres::error::SqlState =
    tokio_postgres::error::SqlState::DIVISION_BY_ZERO;

pub(crate) fn get(schema: &str) -> String {
    format!("SELECT value FROM {schema}.odo_data WHERE shard = $1 AND object = $2 AND key = $3")
}

/// A page of one object's keys: `$3`..`$6` are the bounds (`NULL` for
/// none: `>=`, `>`, `<`, `<=`), `$7` the most rows.
pub(crate) fn scan(schema: &str, reverse: bool) -> String {
    let order = if reverse { "DESC" } else { "ASC" };
    format!(
        "SELECT key, value FROM {schema}.odo_data
         WHERE shard = $1 AND object = $2
           AND ($3::bytea IS NULL OR key >= $3)
           AND ($4::bytea IS NULL OR key > $4)
           AND ($5::bytea IS NULL OR key < $5)
           AND ($6::bytea IS NULL OR key <= $6)
         ORDER BY key {order}
         LIMIT $7"
    )
}

pub(crate) fn alarm(schema: &str) -> String {
    format!("SELECT at FROM {schema}.odo_alarms WHERE shard = $1 AND object = $2")
}

pub(crate) fn due(schema: &str) -> String {
    format!(
        "SELECT object, at FROM {schema}.odo_alarms
         WHERE shard = $1 AND at <= $2 ORDER BY at, object LIMIT $3"
    )
}

/// Deletes every key of the objects `$2` (`delete_all`).
pub(crate) fn clear(schema: &str) -> String {
    format!("DELETE FROM {schema}.odo_data WHERE shard = $1 AND object = ANY($2)")
}

/// Deletes the keys `$3` of the objects `$2` (pairwise).
pub(crate) fn delete(schema: &str) -> String {
    format!(
        "DELETE FROM {schema}.odo_data AS d
         USING UNNEST($2::bytea[], $3::bytea[]) AS gone(object, key)
         WHERE d.shard = $1 AND d.object = gone.object AND d.key = gone.key"
    )
}

/// Writes the values `$4` of the keys `$3` of the objects `$2`
/// (pairwise; no pair twice).
pub(crate) fn upsert(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.odo_data (shard, object, key, value)
         SELECT $1, object, key, value FROM UNNEST($2::bytea[], $3::bytea[], $4::bytea[])
             AS new(object, key, value)
         ON CONFLICT (shard, object, key) DO UPDATE SET value = EXCLUDED.value"
    )
}

/// Sets the alarms of the objects `$2` to the times `$3` (pairwise).
pub(crate) fn set_alarms(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.odo_alarms (shard, object, at)
         SELECT $1, object, at FROM UNNEST($2::bytea[], $3::bigint[]) AS new(object, at)
         ON CONFLICT (shard, object) DO UPDATE SET at = EXCLUDED.at"
    )
}

/// Removes the alarms of the objects `$2`.
pub(crate) fn delete_alarms(schema: &str) -> String {
    format!("DELETE FROM {schema}.odo_alarms WHERE shard = $1 AND object = ANY($2)")
}
