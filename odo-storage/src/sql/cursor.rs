//! What a statement answers: typed values, rows and the cursor over them.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::types::{ToSqlOutput, ValueRef};
use serde::de::DeserializeOwned;

use super::error::SqlError;

/// One SQL value, as SQLite types it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `NULL`.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Bytes.
    Blob(Bytes),
}

impl SqlValue {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The float, if this is one (an integer converts).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Real(x) => Some(*x),
            Self::Integer(n) => Some(*n as f64),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a blob.
    pub fn as_blob(&self) -> Option<&Bytes> {
        match self {
            Self::Blob(b) => Some(b),
            _ => None,
        }
    }

    /// Whether this is `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }

    pub(crate) fn from_ref(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(n) => Self::Integer(n),
            ValueRef::Real(x) => Self::Real(x),
            ValueRef::Text(t) => Self::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Self::Blob(Bytes::copy_from_slice(b)),
        }
    }

    /// The value as JSON, for the serde helpers: a blob becomes an array of
    /// bytes.
    fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Null => serde_json::Value::Null,
            Self::Integer(n) => serde_json::Value::from(*n),
            Self::Real(x) => serde_json::Value::from(*x),
            Self::Text(s) => serde_json::Value::from(s.as_str()),
            Self::Blob(b) => serde_json::Value::from(b.to_vec()),
        }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Integer(n) => ValueRef::Integer(*n),
            Self::Real(x) => ValueRef::Real(*x),
            Self::Text(s) => ValueRef::Text(s.as_bytes()),
            Self::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

macro_rules! from_integer {
    ($($t:ty),*) => {$(
        impl From<$t> for SqlValue {
            fn from(n: $t) -> Self {
                Self::Integer(i64::from(n))
            }
        }
    )*};
}
from_integer!(i8, i16, i32, i64, u8, u16, u32, bool);

impl From<f64> for SqlValue {
    fn from(x: f64) -> Self {
        Self::Real(x)
    }
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<Bytes> for SqlValue {
    fn from(b: Bytes) -> Self {
        Self::Blob(b)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(b: Vec<u8>) -> Self {
        Self::Blob(b.into())
    }
}

impl From<&[u8]> for SqlValue {
    fn from(b: &[u8]) -> Self {
        Self::Blob(Bytes::copy_from_slice(b))
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

/// Builds the parameters of [`SqlStorage::exec`](crate::SqlStorage::exec):
/// `sql_params![1, "a", None::<i64>]` is a `[SqlValue; 3]`.
#[macro_export]
macro_rules! sql_params {
    () => { [] as [$crate::SqlValue; 0] };
    ($($value:expr),+ $(,)?) => { [$($crate::SqlValue::from($value)),+] };
}

/// One row of a [`Cursor`]: its values by column.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<SqlValue>,
}

impl Row {
    /// The value of column `name`, if the row has that column.
    pub fn get(&self, name: &str) -> Option<&SqlValue> {
        let at = self.columns.iter().position(|c| c == name)?;
        self.values.get(at)
    }

    /// The values, in column order.
    pub fn values(&self) -> &[SqlValue] {
        &self.values
    }

    /// The column names, in order.
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// Maps the row into `T` with serde, field by column name: integers,
    /// reals, text and `NULL` (as `None`) map as JSON would; a blob maps
    /// to a sequence of bytes (`Vec<u8>`).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, SqlError> {
        let map: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .cloned()
            .zip(self.values.iter().map(SqlValue::to_json))
            .collect();
        serde_json::from_value(serde_json::Value::Object(map)).map_err(SqlError::Decode)
    }
}

/// What [`SqlStorage::exec`](crate::SqlStorage::exec) answers: the rows of
/// the statement (all read when it ran), its column names, and how many
/// rows it read and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub(crate) columns: Arc<[String]>,
    pub(crate) rows: Vec<Vec<SqlValue>>,
    pub(crate) rows_read: u64,
    pub(crate) rows_written: u64,
}

impl Cursor {
    /// The column names, in order.
    pub fn column_names(&self) -> &[String] {
        &self.columns
    }

    /// Rows the statement read: those it returned plus the rows it stepped
    /// over in full scans (SQLite's own count).
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }

    /// Rows the statement inserted, updated or deleted.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// The rows, each as values in column order.
    pub fn raw(&self) -> impl Iterator<Item = &[SqlValue]> {
        self.rows.iter().map(Vec::as_slice)
    }

    /// The rows, each as values in column order, owned.
    pub fn into_raw(self) -> Vec<Vec<SqlValue>> {
        self.rows
    }

    /// The rows.
    pub fn to_vec(&self) -> Vec<Row> {
        self.rows
            .iter()
            .map(|values| Row {
                columns: self.columns.clone(),
                values: values.clone(),
            })
            .collect()
    }

    /// The one row of the answer.
    ///
    /// # Errors
    ///
    /// [`SqlError::NotOneRow`] unless there is exactly one row.
    pub fn one(&self) -> Result<Row, SqlError> {
        match self.rows.as_slice() {
            [values] => Ok(Row {
                columns: self.columns.clone(),
                values: values.clone(),
            }),
            rows => Err(SqlError::NotOneRow { rows: rows.len() }),
        }
    }

    /// Every row mapped into `T` (see [`Row::deserialize`]).
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<Vec<T>, SqlError> {
        self.to_vec().iter().map(Row::deserialize).collect()
    }

    /// The one row mapped into `T`: [`one`](Self::one) then
    /// [`Row::deserialize`].
    pub fn one_as<T: DeserializeOwned>(&self) -> Result<T, SqlError> {
        self.one()?.deserialize()
    }
}
