//! An open transaction of an object's storage ([`Transaction`]): the
//! same operations as [`ObjectStorage`], on a buffer of its own.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ListOptions, ObjectStorage};
use crate::error::StorageError;

/// An open transaction (see [`ObjectStorage::transaction`]): the same
/// operations, on a buffer that joins the turn only if the transaction
/// succeeds.
#[derive(Debug)]
pub struct Transaction<'a> {
    pub(super) storage: &'a mut ObjectStorage,
    pub(super) depth: usize,
    pub(super) committed: bool,
    /// The savepoint of a SQLite-backed object's transaction.
    #[cfg(feature = "sql")]
    pub(super) savepoint: Option<String>,
}

impl Transaction<'_> {
    pub(super) fn commit(&mut self) {
        self.storage.layers.truncate(self.depth + 1);
        if let Some(layer) = self.storage.layers.pop() {
            let below = self.storage.top();
            below.merge(layer);
        }
        #[cfg(feature = "sql")]
        if let Some(name) = self.savepoint.take() {
            self.storage.sql_release(&name, true);
        }
        self.committed = true;
    }

    /// See [`ObjectStorage::get`].
    pub async fn get(&mut self, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.storage.get(key).await
    }

    /// See [`ObjectStorage::get_many`].
    pub async fn get_many<K: AsRef<str>>(
        &mut self,
        keys: &[K],
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.storage.get_many(keys).await
    }

    /// See [`ObjectStorage::get_typed`].
    pub async fn get_typed<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        self.storage.get_typed(key).await
    }

    /// See [`ObjectStorage::put`].
    pub async fn put(&mut self, key: &str, value: impl Into<Bytes>) -> Result<(), StorageError> {
        self.storage.put(key, value).await
    }

    /// See [`ObjectStorage::put_typed`].
    pub async fn put_typed<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        self.storage.put_typed(key, value).await
    }

    /// See [`ObjectStorage::put_many`].
    pub async fn put_many<K, V>(
        &mut self,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), StorageError>
    where
        K: Into<String>,
        V: Into<Bytes>,
    {
        self.storage.put_many(entries).await
    }

    /// See [`ObjectStorage::delete`].
    pub async fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        self.storage.delete(key).await
    }

    /// See [`ObjectStorage::delete_many`].
    pub async fn delete_many<K: AsRef<str>>(&mut self, keys: &[K]) -> Result<usize, StorageError> {
        self.storage.delete_many(keys).await
    }

    /// See [`ObjectStorage::delete_all`].
    pub async fn delete_all(&mut self) -> Result<(), StorageError> {
        self.storage.delete_all().await
    }

    /// See [`ObjectStorage::list`].
    pub async fn list(
        &mut self,
        options: &ListOptions,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        self.storage.list(options).await
    }

    /// See [`ObjectStorage::get_alarm`].
    pub async fn get_alarm(&mut self) -> Result<Option<u64>, StorageError> {
        self.storage.get_alarm().await
    }

    /// See [`ObjectStorage::set_alarm`].
    pub async fn set_alarm(&mut self, time_ms: u64) -> Result<(), StorageError> {
        self.storage.set_alarm(time_ms).await
    }

    /// See [`ObjectStorage::delete_alarm`].
    pub async fn delete_alarm(&mut self) -> Result<(), StorageError> {
        self.storage.delete_alarm().await
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.storage.layers.truncate(self.depth);
            #[cfg(feature = "sql")]
            if let Some(name) = self.savepoint.take() {
                self.storage.sql_release(&name, false);
            }
        }
    }
}
