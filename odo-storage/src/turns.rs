//! Control of an object's turns: what the runtime holds, and the object's
//! code never sees.

use std::ops::{Deref, DerefMut};

use crate::object::ObjectStorage;
use crate::store::CommitWait;

/// One object's storage together with control of its turns: what a
/// runtime holds for a live object (from [`Store::object`](crate::Store::object)).
///
/// It derefs to the [`ObjectStorage`] view, which is all the object's code
/// gets: that view has no way to commit, roll back or inspect the turn, so
/// object code cannot break the turn rules (a turn commits only when the
/// runtime ends it, and a failed turn's writes never land).
///
/// ```
/// use odo_core::Namespace;
/// use odo_storage::{MemoryBackend, Store, StoreOptions};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Store::open(MemoryBackend::new(), StoreOptions::default())?;
/// let mut turns = store.object(Namespace::new("COUNTER").id_from_name("hot"));
/// // The object's code writes through the view...
/// turns.storage().put_typed("count", &1u64).await?;
/// // ...and the runtime ends the turn and holds the answer until durable.
/// let durable = turns.commit_turn().expect("the turn wrote something");
/// durable.await?;
/// # store.close().await?;
/// # Ok::<(), odo_storage::StorageError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ObjectTurns {
    storage: ObjectStorage,
}

impl ObjectTurns {
    pub(crate) fn new(storage: ObjectStorage) -> Self {
        Self { storage }
    }

    /// The view the object's code gets.
    pub fn storage(&mut self) -> &mut ObjectStorage {
        &mut self.storage
    }

    /// Gets the object ready for its next turn: opens a SQLite-backed
    /// object's database (replaying the shard's log into it when needed)
    /// off the async threads, or lets its file catch up. Nothing for a
    /// key-value object. Call it before each turn.
    pub async fn prepare(&mut self) -> Result<(), crate::StorageError> {
        #[cfg(feature = "sql")]
        {
            self.storage.prepare().await
        }
        #[cfg(not(feature = "sql"))]
        {
            Ok(())
        }
    }

    /// Ends a successful turn: hands its writes to the group-commit thread
    /// and returns at once.
    ///
    /// The returned [`CommitWait`] resolves when this turn's writes and
    /// every earlier write of the object are durable: the output gate. It is
    /// `None` when the turn wrote nothing and nothing earlier is still in
    /// flight, so a response may leave at once.
    pub fn commit_turn(&mut self) -> Option<CommitWait> {
        self.storage.commit_turn()
    }

    /// A wait for every committed turn of this object, without ending the
    /// current turn; `None` when nothing is in flight. This is the output
    /// gate for a response whose turn wrote nothing.
    pub fn pending_commit(&mut self) -> Option<CommitWait> {
        self.storage.pending_commit()
    }

    /// Ends a failed turn: drops every write it made. Earlier turns that
    /// committed stay, in flight or not.
    pub fn rollback_turn(&mut self) {
        self.storage.rollback_turn();
    }

    /// Whether a commit of this object has failed. Every later call then
    /// fails with [`StorageError::CommitFailed`](crate::StorageError), and
    /// no turn committed through this handle can still become durable:
    /// reset the object and take a new handle from
    /// [`Store::object`](crate::Store::object), which reads only what is
    /// durable.
    pub fn has_failed(&self) -> bool {
        self.storage.has_failed()
    }

    /// Whether the current turn asked for a point-in-time restore
    /// ([`ObjectStorage::on_next_session_restore_bookmark`]): once its
    /// commit is durable, the runtime starts the object again with a new
    /// view (from [`Store::sql_object`](crate::Store::sql_object)), whose
    /// opening does the restore. Call it before
    /// [`commit_turn`](Self::commit_turn).
    pub fn restore_asked(&self) -> bool {
        #[cfg(feature = "sql")]
        {
            self.storage.restore_asked()
        }
        #[cfg(not(feature = "sql"))]
        {
            false
        }
    }

    /// Why the current turn cannot commit, if SQLite rolled its whole
    /// transaction back after an error (a full database, say): the turn
    /// must then fail (nothing of it is written; the object is reset)
    /// rather than commit. Call it before [`commit_turn`](Self::commit_turn).
    pub fn turn_rolled_back(&self) -> Option<String> {
        #[cfg(feature = "sql")]
        {
            self.storage
                .sql
                .as_deref()
                .and_then(|sql| sql.aborted().map(str::to_owned))
        }
        #[cfg(not(feature = "sql"))]
        {
            None
        }
    }

    /// Whether the current turn has written anything.
    pub fn has_turn_writes(&self) -> bool {
        self.storage.has_turn_writes()
    }

    /// How many committed turns of this object are not durable yet.
    pub fn in_flight_turns(&mut self) -> usize {
        self.storage.in_flight_turns()
    }
}

impl Deref for ObjectTurns {
    type Target = ObjectStorage;

    fn deref(&self) -> &ObjectStorage {
        &self.storage
    }
}

impl DerefMut for ObjectTurns {
    fn deref_mut(&mut self) -> &mut ObjectStorage {
        &mut self.storage
    }
}
