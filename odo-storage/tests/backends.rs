//! The registry of backends by name: what `--storage NAME` looks up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use odo_storage::{
    BackendFactory, Backends, BackendsError, MemoryBackend, MemoryFactory, OpenFuture, ShardSpec,
    StorageError, open_blocking, open_ready,
};

/// A factory named `name` that remembers the epoch of its last opening.
#[derive(Debug, Default)]
struct Named {
    name: &'static str,
    last_epoch: Arc<AtomicU64>,
}

impl Named {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }
}

impl BackendFactory for Named {
    fn name(&self) -> &str {
        self.name
    }

    fn durable(&self) -> bool {
        false
    }

    fn open(&self, shard: ShardSpec) -> OpenFuture {
        self.last_epoch.store(shard.epoch, Ordering::SeqCst);
        open_ready(MemoryBackend::new())
    }
}

#[test]
fn the_builtin_backends_are_fjall_with_its_feature_and_memory() {
    let backends = Backends::builtin();
    let names: Vec<&str> = backends.names().collect();
    if cfg!(feature = "fjall") {
        assert_eq!(names, ["fjall", "memory"]);
        assert!(backends.get("fjall").unwrap().durable());
    } else {
        assert_eq!(names, ["memory"]);
    }
    assert!(!backends.get("memory").unwrap().durable());
    assert!(Backends::new().names().next().is_none());
}

#[test]
fn an_unknown_name_is_an_error_listing_the_registered_ones() {
    let mut backends = Backends::builtin();
    backends.register(Named::new("mine")).unwrap();
    let error = backends.get("nosuch").unwrap_err();
    let mut known: Vec<String> = Backends::builtin().names().map(String::from).collect();
    known.push("mine".into());
    assert_eq!(
        error,
        BackendsError::Unknown {
            name: "nosuch".into(),
            known: known.clone(),
        }
    );
    assert_eq!(
        error.to_string(),
        format!(
            "unknown storage backend \"nosuch\"; the registered backends are: {}",
            known.join(", ")
        )
    );
    assert_eq!(backends.get("mine").unwrap().name(), "mine");
}

#[test]
fn a_second_backend_of_the_same_name_is_refused_and_the_first_stays() {
    let mut backends = Backends::new();
    let first = Named::new("twice");
    let first_epochs = first.last_epoch.clone();
    backends.register(first).unwrap();
    assert_eq!(
        backends.register(Named::new("twice")),
        Err(BackendsError::Duplicate {
            name: "twice".into()
        })
    );
    assert_eq!(
        Backends::builtin().register(MemoryFactory),
        Err(BackendsError::Duplicate {
            name: "memory".into()
        })
    );
    assert_eq!(backends.names().collect::<Vec<_>>(), ["twice"]);
    // The one registered first is the one that opens.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let factory = backends.get("twice").unwrap().clone();
    runtime
        .block_on(factory.open(ShardSpec::new("/nonexistent", 2, 7)))
        .unwrap();
    assert_eq!(first_epochs.load(Ordering::SeqCst), 7);
}

#[test]
fn names_that_do_not_fit_a_command_line_are_refused() {
    for bad in ["", "Fjall", "my backend", "-x", "../x", "ä"] {
        let mut backends = Backends::new();
        let name: &'static str = String::leak(bad.to_owned());
        assert_eq!(
            backends.register(Named::new(name)),
            Err(BackendsError::InvalidName { name: bad.into() }),
            "{bad:?}"
        );
    }
}

#[test]
fn a_shard_lives_in_its_numbered_directory() {
    let spec = ShardSpec::new("/data", 12, 3);
    assert_eq!(spec.dir(), std::path::Path::new("/data/shards/12"));
    assert_eq!((spec.shard, spec.epoch), (12, 3));
}

#[tokio::test]
async fn an_opening_that_panics_is_an_error_with_its_cause() {
    let opening =
        open_blocking(|| -> Result<MemoryBackend, StorageError> { panic!("the disk caught fire") });
    let error = opening.await.unwrap_err();
    assert!(matches!(error, StorageError::Backend { .. }), "{error:?}");
    let source = std::error::Error::source(&error).expect("a source");
    let join = source
        .downcast_ref::<tokio::task::JoinError>()
        .expect("the task's own error");
    assert!(join.is_panic());
}

#[cfg(feature = "fjall")]
#[tokio::test]
async fn the_fjall_factory_opens_each_shard_in_its_directory() {
    use odo_storage::{Store, StoreOptions};

    let dir = tempfile::tempdir().unwrap();
    let factory = Backends::builtin().get("fjall").unwrap().clone();
    let backend = factory
        .open(ShardSpec::new(dir.path(), 3, 1))
        .await
        .unwrap();
    assert!(dir.path().join("shards/3/fjall").is_dir());
    // The directory is the shard's: a second opening is refused.
    let again = factory.open(ShardSpec::new(dir.path(), 3, 2)).await;
    assert!(
        matches!(again, Err(StorageError::Locked { .. })),
        "{again:?}"
    );
    let store = Store::open_shared(backend, StoreOptions::default()).unwrap();
    store.close().await.unwrap();
}
