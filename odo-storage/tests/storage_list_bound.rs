//! Listings hold a bounded answer: a listing that would answer more than
//! `max_list_entries` entries or `max_list_bytes` bytes is refused (never
//! cut short), the scan stops as soon as the bound is crossed, and paging
//! with `limit` and `start_after` (or `end`, walking down) reaches every key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use odo_core::{Namespace, ObjectId};
use odo_storage::{
    Backend, Backends, KeyRange, ListOptions, MemoryBackend, ObjectBatch, ObjectTurns, ScanLimit,
    ShardSpec, StorageError, Store, StoreOptions,
};
use proptest::prelude::*;

fn options(max_entries: usize, max_bytes: usize) -> StoreOptions {
    let mut options = StoreOptions::default();
    options.max_list_entries = max_entries;
    options.max_list_bytes = max_bytes;
    options
}

fn id() -> ObjectId {
    Namespace::new("LIST").id_from_name("bounded")
}

/// Writes `keys` (value `v-{key}`), committed and durable.
async fn durable(storage: &mut ObjectTurns, keys: impl IntoIterator<Item = String>) {
    for key in keys {
        storage.put(&key, format!("v-{key}")).await.unwrap();
    }
    storage.commit_turn().unwrap().await.unwrap();
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k{i:05}")).collect()
}

fn too_large(result: &Result<Vec<(String, Bytes)>, StorageError>) -> bool {
    matches!(result, Err(StorageError::ListTooLarge { .. }))
}

fn listed(result: Result<Vec<(String, Bytes)>, StorageError>) -> Vec<String> {
    result.unwrap().into_iter().map(|(k, _)| k).collect()
}

#[tokio::test]
async fn an_answer_over_the_bound_is_refused_and_pages_reach_every_key() {
    for factory in Backends::builtin().iter() {
        let fjall = factory.name();
        let dir = tempfile::tempdir().unwrap();
        let backend = factory
            .open(ShardSpec::new(dir.path(), 0, 1))
            .await
            .unwrap();
        let store = Store::open_shared(backend, options(10, 1 << 20)).unwrap();
        let mut storage = store.object(id());
        durable(&mut storage, keys(20)).await;
        // Five more in flight and in the turn: the bound counts the answer.
        storage.put("k00020", "v").await.unwrap();
        storage.put("k00021", "v").await.unwrap();
        storage.delete("k00003").await.unwrap();

        let error = storage.list(&ListOptions::default()).await;
        assert!(too_large(&error), "{fjall}: {error:?}");
        let message = error.unwrap_err().to_string();
        assert!(
            message.contains("limit") && message.contains("start_after"),
            "{message}"
        );
        // A limit over the bound is refused too when the answer is larger.
        let over = ListOptions {
            limit: Some(11),
            ..ListOptions::default()
        };
        assert!(too_large(&storage.list(&over).await));

        // Upwards: pages of 10, each after the last key of the one before.
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = listed(
                storage
                    .list(&ListOptions {
                        start_after: after.clone(),
                        limit: Some(10),
                        ..ListOptions::default()
                    })
                    .await,
            );
            if page.is_empty() {
                break;
            }
            after = page.last().cloned();
            all.extend(page);
        }
        let mut expected: Vec<String> = keys(22);
        expected.retain(|k| k != "k00003");
        assert_eq!(all, expected, "{fjall}");

        // Downwards: each page ends below the last key of the one before.
        let mut down = Vec::new();
        let mut end: Option<String> = None;
        loop {
            let page = listed(
                storage
                    .list(&ListOptions {
                        end: end.clone(),
                        reverse: true,
                        limit: Some(7),
                        ..ListOptions::default()
                    })
                    .await,
            );
            if page.is_empty() {
                break;
            }
            end = page.last().cloned();
            down.extend(page);
        }
        expected.reverse();
        assert_eq!(down, expected, "{fjall}");
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn the_byte_bound_counts_keys_and_values() {
    let store = Store::open(MemoryBackend::new(), options(1000, 1024)).unwrap();
    let mut storage = store.object(id());
    for i in 0..5 {
        storage
            .put(&format!("b{i}"), Bytes::from(vec![b'x'; 400]))
            .await
            .unwrap();
    }
    storage.commit_turn().unwrap().await.unwrap();
    let limit = |n| ListOptions {
        limit: Some(n),
        ..ListOptions::default()
    };
    assert_eq!(listed(storage.list(&limit(2)).await).len(), 2);
    assert!(too_large(&storage.list(&limit(3)).await));
    assert!(too_large(&storage.list(&ListOptions::default()).await));
}

/// A backend that counts the entries its scans return.
#[derive(Debug)]
struct CountingScans {
    inner: MemoryBackend,
    scanned: Arc<AtomicUsize>,
}

impl Backend for CountingScans {
    fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
        self.inner.get(object, key)
    }
    fn scan(
        &self,
        object: &ObjectId,
        range: &KeyRange,
        reverse: bool,
        limit: ScanLimit,
    ) -> Result<Vec<(String, Bytes)>, StorageError> {
        let page = self.inner.scan(object, range, reverse, limit)?;
        self.scanned.fetch_add(page.len(), Ordering::SeqCst);
        Ok(page)
    }
    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.inner.alarm(object)
    }
    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.due_alarms(now_ms, limit)
    }
    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        self.inner.commit(writes)
    }
    fn close(&self) -> Result<(), StorageError> {
        self.inner.close()
    }
}

#[tokio::test]
async fn the_scan_stops_as_soon_as_the_bound_is_crossed() {
    let scanned = Arc::new(AtomicUsize::new(0));
    let backend = CountingScans {
        inner: MemoryBackend::new(),
        scanned: scanned.clone(),
    };
    let store = Store::open(backend, options(10, 1 << 20)).unwrap();
    let mut storage = store.object(id());
    for chunk in keys(50_000).chunks(100) {
        storage
            .put_many(chunk.iter().map(|k| (k.clone(), Bytes::from_static(b"v"))))
            .await
            .unwrap();
        storage.commit_turn().unwrap().await.unwrap();
    }
    scanned.store(0, Ordering::SeqCst);
    assert!(too_large(&storage.list(&ListOptions::default()).await));
    let read = scanned.load(Ordering::SeqCst);
    // One page at most: the scan did not walk the 50,000 keys.
    assert!(read <= 1024, "{read} entries scanned");
}

/// Where a key is written before the listing.
#[derive(Debug, Clone, Copy)]
enum Layer {
    Durable,
    InFlight,
    Turn,
}

fn layer() -> impl Strategy<Value = Layer> {
    prop_oneof![
        Just(Layer::Durable),
        Just(Layer::InFlight),
        Just(Layer::Turn)
    ]
}

proptest! {
    /// The answer equals the model's whenever it fits the bound, and is
    /// refused exactly when it would not.
    #[test]
    fn listings_match_the_model_or_are_refused(
        writes in prop::collection::vec((0u8..40, layer(), prop::option::weighted(0.8, 0usize..60)), 0..80),
        max_entries in 1usize..15,
        limit in prop::option::of(1usize..25),
        reverse: bool,
        start_after in prop::option::of(0u8..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let store = Store::open(MemoryBackend::new(), options(max_entries, 1 << 20)).unwrap();
            let mut storage = store.object(id());
            let mut model: BTreeMap<String, Bytes> = BTreeMap::new();
            // Durable first, then in flight (the store is not waited on),
            // then the turn: each layer in the order generated.
            for wanted in [0, 1, 2] {
                for (key, layer, value) in &writes {
                    let index = match layer { Layer::Durable => 0, Layer::InFlight => 1, Layer::Turn => 2 };
                    if index != wanted { continue; }
                    let key = format!("k{key:02}");
                    match value {
                        Some(len) => {
                            let value = Bytes::from(vec![b'v'; *len]);
                            storage.put(&key, value.clone()).await.unwrap();
                            model.insert(key, value);
                        }
                        None => {
                            storage.delete(&key).await.unwrap();
                            model.remove(&key);
                        }
                    }
                }
                match wanted {
                    0 => { if let Some(wait) = storage.commit_turn() { wait.await.unwrap(); } }
                    1 => { let _ = storage.commit_turn(); }
                    _ => {}
                }
            }
            let options = ListOptions {
                start_after: start_after.map(|k| format!("k{k:02}")),
                reverse,
                limit,
                ..ListOptions::default()
            };
            let mut expected: Vec<(String, Bytes)> = model
                .into_iter()
                .filter(|(k, _)| options.start_after.as_ref().is_none_or(|a| k > a))
                .collect();
            if reverse { expected.reverse(); }
            expected.truncate(limit.unwrap_or(usize::MAX));
            let got = storage.list(&options).await;
            if expected.len() > max_entries {
                prop_assert!(too_large(&got), "{got:?}");
            } else {
                prop_assert_eq!(got.unwrap(), expected);
            }
            Ok(())
        })?;
    }
}
