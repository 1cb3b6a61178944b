//! One open database per object at a time, within a store.
//!
//! A view of a SQLite-backed object holds its database's claim from the
//! moment it opens the database until its connection is closed. A new
//! view of the same object (the next activation after an eviction, or the
//! fresh view that replaces one whose commit failed) may be made before
//! the old one is gone: it waits for the claim before it recovers the
//! file, so two connections never write one file.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use odo_core::ObjectId;
use tokio::sync::Notify;

use crate::error::StorageError;

/// The objects whose database is open in a view, in one store.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    open: Mutex<HashSet<ObjectId>>,
    released: Notify,
}

/// The right to open one object's database; released on drop.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Arc<Claims>,
    id: ObjectId,
}

impl Claims {
    fn try_take(self: &Arc<Self>, id: ObjectId) -> Option<Claim> {
        let taken = self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        taken.then(|| Claim {
            claims: self.clone(),
            id,
        })
    }

    /// The claim of `id`, once no other view holds it.
    pub(crate) async fn take(self: &Arc<Self>, id: ObjectId) -> Claim {
        loop {
            let mut released = std::pin::pin!(self.released.notified());
            released.as_mut().enable();
            if let Some(claim) = self.try_take(id) {
                return claim;
            }
            released.await;
        }
    }

    /// The claim of `id` now, or an error naming why not (outside a
    /// runtime, where waiting is not possible).
    pub(crate) fn take_now(self: &Arc<Self>, id: ObjectId) -> Result<Claim, StorageError> {
        self.try_take(id).ok_or_else(|| {
            StorageError::backend(
                "opening an object's database",
                "another view of the object still has it open",
            )
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_claim_waits_for_the_first() {
        let claims = Arc::new(Claims::default());
        let id = odo_core::Namespace::new("SQL").id_from_name("a");
        let first = claims.take(id).await;
        assert!(claims.take_now(id).is_err());
        let waiter = tokio::spawn({
            let claims = claims.clone();
            async move { claims.take(id).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let second = waiter.await.unwrap();
        drop(second);
        assert!(claims.take_now(id).is_ok());
    }
}
