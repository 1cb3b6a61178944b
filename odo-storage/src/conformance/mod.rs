//! The backend conformance suite: any [`Backend`] run through the same
//! checks as the built-in ones.
//!
//! To check a new backend, wrap its [`BackendFactory`] in a
//! [`FactoryHarness`] (or implement [`Harness`]: how to open the backend on
//! a directory, and whether it is durable) and call, each from its own
//! `#[test]`:
//!
//! 1. [`state_machine`]: random sequences of every operation (list with
//!    every option combination, transactions that fail half way,
//!    `delete_all`, alarms, turns committed or rolled back, close and
//!    reopen) compared step by step with a `BTreeMap` model. The case count
//!    is 256 unless `PROPTEST_CASES` says otherwise.
//! 2. [`durability`]: write, close, reopen, compare.
//! 3. [`crash`] (durable backends): a child process commits and
//!    acknowledges writes, is killed with SIGKILL, and every acknowledged
//!    write must be there after reopening, with no commit half there.
//!
//! [`MemoryHarness`] and `FjallHarness` (with the `fjall` feature) are the
//! harnesses of the built-in backends. For a new one, in
//! `tests/conformance_mine.rs`:
//!
//! ```no_run
//! use odo_storage::MemoryFactory;
//! use odo_storage::conformance::{self, FactoryHarness};
//!
//! let harness = FactoryHarness::new(MemoryFactory); // your factory here
//!
//! // Each in its own #[test] function:
//! conformance::state_machine(&harness);
//! conformance::durability(&harness);
//! // The argument is the name of the #[test] function making this call.
//! conformance::crash(&harness, "my_backend_survives_sigkill");
//! ```

mod crash;
mod intercept;
#[cfg(feature = "sql")]
mod sql_crash;
#[cfg(feature = "sql")]
mod sql_restore_crash;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use odo_core::{Namespace, ObjectId};

use crate::{
    Backend, BackendFactory, ListOptions, MemoryBackend, ShardSpec, StorageError, Store,
    StoreOptions,
};
#[cfg(feature = "fjall")]
use crate::{FjallBackend, FjallOptions};

pub use crash::crash;
pub use intercept::{CommitHook, CommitValve, InterceptCommits, OpenOnDrop};
#[cfg(feature = "sql")]
pub use sql_crash::{sql_crash, sql_crash_checking_history};
#[cfg(feature = "sql")]
pub use sql_restore_crash::sql_restore_crash;
pub use state_machine::state_machine;

/// How the suite opens the backend under test.
pub trait Harness {
    /// The backend under test.
    type Backend: Backend;

    /// Opens the backend on `dir`: an empty directory for a new store, or
    /// the directory of a store that was closed (or whose process was
    /// killed) to reopen it.
    fn open(&self, dir: &Path) -> Result<Self::Backend, StorageError>;

    /// Whether the backend keeps its data across reopening (and crashes).
    /// A non-durable backend must come back empty.
    fn durable(&self) -> bool;

    /// Environment variables the [`crash`] test's child process needs
    /// besides the parent's (which it inherits): where a networked
    /// backend's server is, say. Default: none.
    fn child_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The options of the store on `dir`.
    fn store_options(&self, dir: &Path) -> StoreOptions {
        let _ = dir;
        StoreOptions::default()
    }

    /// Whether an object is in the backend's listing of its objects
    /// ([`Backend::objects`]) exactly when it has keys or an alarm, as the
    /// model says. Not so for SQLite-backed objects, whose log stays in the
    /// backend when their database is empty: the suite then leaves the
    /// listing out.
    fn objects_are_their_keys(&self) -> bool {
        true
    }

    /// The storage of object `id` in `store`: key-value-backed, unless the
    /// harness runs SQLite-backed objects.
    fn object(&self, store: &Store, id: ObjectId) -> crate::ObjectTurns {
        store.object(id)
    }
}

/// Runs the suite on SQLite-backed objects over the backend of `inner`:
/// their key-value API and alarm live in each object's database, and the
/// backend holds the shard's log (feature `sql`).
#[cfg(feature = "sql")]
#[derive(Debug, Default, Clone)]
pub struct SqlHarness<H> {
    /// The harness of the shard's backend.
    pub inner: H,
    /// Keep a copy of each database file as it was last synced
    /// (`<file>.synced`), so the crash test can throw away what the file
    /// wrote since ([`sql_crash`]).
    pub keep_synced_copies: bool,
    /// The shard's cap on SQL history
    /// ([`SqlOptions::max_history_bytes`](crate::SqlOptions::max_history_bytes));
    /// `None`: the default.
    pub max_history_bytes: Option<u64>,
}

#[cfg(feature = "sql")]
impl<H: Harness> Harness for SqlHarness<H> {
    type Backend = H::Backend;

    fn open(&self, dir: &Path) -> Result<Self::Backend, StorageError> {
        self.inner.open(dir)
    }

    fn durable(&self) -> bool {
        self.inner.durable()
    }

    fn child_env(&self) -> Vec<(String, String)> {
        self.inner.child_env()
    }

    fn store_options(&self, dir: &Path) -> StoreOptions {
        let mut options = self.inner.store_options(dir);
        if self.durable() {
            options.sql.dir = Some(dir.join("sql"));
        }
        // Small, so that the files catch up often.
        options.sql.checkpoint_wal_bytes = 64 * 1024;
        options.sql.keep_synced_copies = self.keep_synced_copies;
        if let Some(cap) = self.max_history_bytes {
            options.sql.max_history_bytes = cap;
        }
        options
    }

    fn objects_are_their_keys(&self) -> bool {
        false
    }

    fn object(&self, store: &Store, id: ObjectId) -> crate::ObjectTurns {
        store
            .sql_object(id)
            .expect("the store has a directory for SQLite-backed objects")
    }
}

/// The harness of [`MemoryBackend`] (not durable).
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type Backend = MemoryBackend;

    fn open(&self, _dir: &Path) -> Result<MemoryBackend, StorageError> {
        Ok(MemoryBackend::new())
    }

    fn durable(&self) -> bool {
        false
    }
}

/// The harness of [`FjallBackend`] with the given options.
#[cfg(feature = "fjall")]
#[derive(Debug, Default, Clone)]
pub struct FjallHarness {
    /// The options every open uses.
    pub options: FjallOptions,
}

#[cfg(feature = "fjall")]
impl Harness for FjallHarness {
    type Backend = FjallBackend;

    fn open(&self, dir: &Path) -> Result<FjallBackend, StorageError> {
        FjallBackend::open(dir, self.options.clone())
    }

    fn durable(&self) -> bool {
        true
    }
}

/// The harness of any [`BackendFactory`]: each open is the factory's
/// opening of shard 0 (at [`epoch`](Self::epoch)) of a data directory that
/// is the suite's directory, and the factory says whether it is durable.
/// So the suite checks the backend exactly as a server opens it.
#[derive(Debug, Clone)]
pub struct FactoryHarness<F> {
    /// The factory under test.
    pub factory: F,
    /// The epoch every open passes (default 1).
    pub epoch: u64,
    /// What [`Harness::child_env`] returns (default none).
    pub child_env: Vec<(String, String)>,
}

impl<F: BackendFactory> FactoryHarness<F> {
    /// The harness of `factory`.
    pub fn new(factory: F) -> Self {
        Self {
            factory,
            epoch: 1,
            child_env: Vec::new(),
        }
    }
}

impl<F: BackendFactory> Harness for FactoryHarness<F> {
    type Backend = Arc<dyn Backend>;

    fn open(&self, dir: &Path) -> Result<Arc<dyn Backend>, StorageError> {
        let opening = self.factory.open(ShardSpec::new(dir, 0, self.epoch));
        // A thread of its own: the suite may call this from inside its own
        // runtime, where blocking on another one is not allowed.
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime().block_on(opening))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn durable(&self) -> bool {
        self.factory.durable()
    }

    fn child_env(&self) -> Vec<(String, String)> {
        self.child_env.clone()
    }
}

fn object_id(n: usize) -> ObjectId {
    Namespace::new("CONFORMANCE").id_from_name(&n.to_string())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds")
}

/// Writes to several objects over several turns (puts, deletes,
/// `delete_all`, alarms; the last turn not awaited), closes the store,
/// reopens it, and compares every object's data and alarm and the alarm
/// index with what was written (or with nothing, for a non-durable
/// backend).
///
/// # Panics
///
/// Panics on any difference (it is a test).
pub fn durability<H: Harness>(harness: &H) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = runtime();
    rt.block_on(async {
        let store = Store::open(
            harness.open(dir.path()).expect("open"),
            harness.store_options(dir.path()),
        )
        .expect("store");
        for n in 0..3 {
            let mut s = harness.object(&store, object_id(n));
            for turn in 0..4u8 {
                for k in 0..20u8 {
                    let key = format!("key-{k:02}");
                    s.put(&key, vec![turn, k, n as u8]).await.expect("put");
                }
                s.delete("key-03").await.expect("delete");
                if turn == 1 && n == 2 {
                    s.delete_all().await.expect("delete_all");
                }
                s.set_alarm(1_000 + n as u64).await.expect("set_alarm");
                let wait = s.commit_turn().expect("wrote");
                if turn < 3 {
                    wait.await.expect("durable");
                }
            }
            if n == 1 {
                s.delete_alarm().await.expect("delete_alarm");
                drop(s.commit_turn());
            }
        }
        store.close().await.expect("close");
        drop(store);

        let store = Store::open(
            harness.open(dir.path()).expect("reopen"),
            harness.store_options(dir.path()),
        )
        .expect("store");
        let durable = harness.durable();
        for n in 0..3 {
            let mut s = harness.object(&store, object_id(n));
            let listed = s.list(&ListOptions::default()).await.expect("list");
            let expected: Vec<(String, bytes::Bytes)> = if durable {
                (0..20u8)
                    .filter(|k| *k != 3)
                    .map(|k| (format!("key-{k:02}"), vec![3, k, n as u8].into()))
                    .collect()
            } else {
                Vec::new()
            };
            assert_eq!(listed, expected, "data of object {n} after reopen");
            let alarm = s.get_alarm().await.expect("alarm");
            let expected_alarm = (durable && n != 1).then_some(1_000 + n as u64);
            assert_eq!(alarm, expected_alarm, "alarm of object {n} after reopen");
        }
        let due = store.due_alarms(u64::MAX, 10).expect("due alarms");
        let expected: Vec<(ObjectId, u64)> = if durable {
            vec![(object_id(0), 1_000), (object_id(2), 1_002)]
        } else {
            Vec::new()
        };
        assert_eq!(due, expected, "alarm index after reopen");
        store.close().await.expect("close");
    });
}
