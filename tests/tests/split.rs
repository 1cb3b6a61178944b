//! Shards that grow: a data directory with fewer shards than workers has
//! its shards split at startup. Here the split is crashed at every step,
//! for real: a child process (this test binary, re-run as `child`) runs
//! the split on a real store and SIGKILLs itself at the Nth event (before
//! or after each backend commit, and before or after each copy or prune),
//! then another child finishes the split, and the test checks every object
//! (its data and alarm) is in exactly its shard, unchanged.
//!
//! The split runs before any worker, so "no two live instances" comes down
//! to every object being in one shard only, which is checked too.
//!
//! Unix only: the children kill themselves with SIGKILL.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use odo::StorageSplitter;
use odo_core::{Namespace, ObjectId};
use odo_registry::{DataDirLock, ShardAt, ShardSplitter, SplitFuture};
use odo_storage::{
    AlarmChange, Backend, BackendFactory, Durability, FjallFactory, FjallOptions, KeyRange,
    ObjectBatch, OpenFuture, ScanLimit, ShardSpec, StorageError,
};
use odo_tests::backend::test_server_backends;

/// Set for a child: `<backend> <data dir> <workers> <kill at event, or 0>`.
const CHILD: &str = "ODO_SPLIT_CHILD";
/// The workers the server is started with: from 1 shard to 4, two
/// doublings.
const WORKERS: u32 = 4;

/// Counts the split's events and kills the process at the chosen one.
#[derive(Debug)]
struct Fuse {
    events: AtomicU64,
    kill_at: u64,
}

impl Fuse {
    fn tick(&self) {
        let n = self.events.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.kill_at {
            // SIGKILL: nothing of this process runs after it.
            let me = rustix::process::getpid();
            let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
            loop {
                std::thread::park();
            }
        }
    }
}

/// A backend whose commits tick the fuse before and after.
#[derive(Debug)]
struct Fused {
    inner: Arc<dyn Backend>,
    fuse: Arc<Fuse>,
}

impl Backend for Fused {
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
        self.inner.scan(object, range, reverse, limit)
    }
    fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
        self.inner.alarm(object)
    }
    fn due_alarms(&self, now_ms: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
        self.inner.due_alarms(now_ms, limit)
    }
    fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
        self.fuse.tick();
        let committed = self.inner.commit(writes);
        self.fuse.tick();
        committed
    }
    fn close(&self) -> Result<(), StorageError> {
        self.inner.close()
    }
    fn objects(
        &self,
        after: Option<&ObjectId>,
        limit: usize,
    ) -> Result<Vec<ObjectId>, StorageError> {
        self.inner.objects(after, limit)
    }
}

#[derive(Debug)]
struct FusedFactory {
    inner: Arc<dyn BackendFactory>,
    fuse: Arc<Fuse>,
}

impl BackendFactory for FusedFactory {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn durable(&self) -> bool {
        true
    }
    fn open(&self, shard: ShardSpec) -> OpenFuture {
        let opening = self.inner.open(shard);
        let fuse = self.fuse.clone();
        Box::pin(async move {
            let inner = opening.await?;
            Ok(Arc::new(Fused { inner, fuse }) as Arc<dyn Backend>)
        })
    }
}

/// A splitter whose steps tick the fuse before and after.
#[derive(Debug)]
struct FusedSplitter {
    inner: StorageSplitter,
    fuse: Arc<Fuse>,
}

impl ShardSplitter for FusedSplitter {
    fn copy(&self, data_dir: &Path, from: ShardAt, to: ShardAt, shard_count: u32) -> SplitFuture {
        self.fuse.tick();
        let step = self.inner.copy(data_dir, from, to, shard_count);
        let fuse = self.fuse.clone();
        Box::pin(async move {
            let done = step.await;
            fuse.tick();
            done
        })
    }
    fn prune(&self, data_dir: &Path, shard: ShardAt, shard_count: u32) -> SplitFuture {
        self.fuse.tick();
        let step = self.inner.prune(data_dir, shard, shard_count);
        let fuse = self.fuse.clone();
        Box::pin(async move {
            let done = step.await;
            fuse.tick();
            done
        })
    }
}

/// The child: prepares the shards for [`WORKERS`] workers, printing the
/// number of events and the shard count if it lives to the end.
#[test]
fn child() {
    let Ok(args) = std::env::var(CHILD) else {
        return;
    };
    let args: Vec<&str> = args.split(' ').collect();
    let [backend, dir, kill_at] = args[..] else {
        panic!("bad {CHILD}: {args:?}");
    };
    let fuse = Arc::new(Fuse {
        events: AtomicU64::new(0),
        kill_at: kill_at.parse().unwrap(),
    });
    let factory = FusedFactory {
        inner: factory(backend),
        fuse: fuse.clone(),
    };
    let splitter = FusedSplitter {
        inner: StorageSplitter::new(Arc::new(factory)),
        fuse: fuse.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = DataDirLock::acquire(Path::new(dir)).unwrap();
    let shards = runtime
        .block_on(lock.prepare_shards(1, WORKERS, Some(&splitter)))
        .unwrap();
    println!(
        "split-child: events {} shards {shards}",
        fuse.events.load(Ordering::SeqCst)
    );
}

/// Runs a child; `Some(events)` if it finished, `None` if it was killed.
fn run_child(backend: &str, dir: &Path, kill_at: u64) -> Option<u64> {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads", "1"])
        .env(CHILD, format!("{backend} {} {kill_at}", dir.display()))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        let line = stdout
            .lines()
            .find_map(|l| Some(l.split_once("split-child: events ")?.1))
            .unwrap_or_else(|| panic!("no summary from the child: {stdout}"));
        let (events, shards) = line.split_once(" shards ").unwrap();
        assert_eq!(shards, WORKERS.to_string(), "{stdout}");
        return Some(events.parse().unwrap());
    }
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        output.status.signal(),
        Some(9),
        "the child failed instead of being killed at event {kill_at}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    None
}

/// Every object's data (key order) and alarm.
type Contents = BTreeMap<ObjectId, (Vec<(String, Bytes)>, Option<u64>)>;

fn contents(store: &dyn Backend) -> Contents {
    let all = ScanLimit {
        entries: usize::MAX,
        bytes: usize::MAX,
    };
    let mut out = Contents::new();
    let mut after = None;
    loop {
        let page = store.objects(after.as_ref(), 100).unwrap();
        let Some(&last) = page.last() else {
            return out;
        };
        for id in page {
            let data = store.scan(&id, &KeyRange::all(), false, all).unwrap();
            out.insert(id, (data, store.alarm(&id).unwrap()));
        }
        after = Some(last);
    }
}

/// The backend's factory. fjall without fsync: the crashes here are of the
/// process (SIGKILL), which the OS page cache survives, so a sync buys
/// nothing here and costs most of the test's time.
fn factory(backend: &str) -> Arc<dyn BackendFactory> {
    match backend {
        "fjall" => Arc::new(FjallFactory {
            options: FjallOptions::with_durability(Durability::Buffer),
        }),
        other => test_server_backends().get(other).unwrap().clone(),
    }
}

async fn open(backend: &str, dir: &Path, shard: u32) -> Arc<dyn Backend> {
    factory(backend)
        .open(ShardSpec::new(dir, shard, 1))
        .await
        .unwrap()
}

/// A new data directory of one shard holding 600 small objects (some with
/// an alarm, some with only an alarm) and, if `big`, one of 1.2 MB, which
/// takes more than one commit to copy. Returns what it holds.
async fn populate(backend: &str, dir: &Path, big: bool) -> Contents {
    assert_eq!(
        DataDirLock::acquire(dir).unwrap().shard_count(1).unwrap(),
        1
    );
    let store = open(backend, dir, 0).await;
    let ns = Namespace::new("SPLIT");
    let mut writes = Vec::new();
    for i in 0..600u64 {
        let mut batch = ObjectBatch::default();
        for k in 0..(i % 4) {
            let value = Bytes::from(format!("{i}:{k}"));
            batch.entries.insert(format!("key{k}"), Some(value));
        }
        if i % 7 == 0 {
            batch.alarm = AlarmChange::Set(1_000_000 + i);
        }
        writes.push((ns.id_from_name(&i.to_string()), Arc::new(batch)));
    }
    if big {
        let mut batch = ObjectBatch::default();
        for k in 0..40 {
            let value = Bytes::from(vec![k as u8; 30_000]);
            batch.entries.insert(format!("{k:03}"), Some(value));
        }
        writes.push((ns.id_from_name("big"), Arc::new(batch)));
    }
    store.commit(&writes).unwrap();
    let held = contents(&*store);
    store.close().unwrap();
    let with_something = (0..600).filter(|i| i % 4 != 0 || i % 7 == 0).count();
    let expected = with_something + usize::from(big);
    assert_eq!(held.len(), expected, "objects with nothing are absent");
    held
}

/// Copies the files under `from` into `to`, directories included.
fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Checks the directory has 4 shards, each holding exactly its objects of
/// `expected`.
async fn verify(backend: &str, dir: &Path, expected: &Contents, context: &str) {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("odo-cluster.json")).unwrap()).unwrap();
    assert_eq!(record["shard_count"], WORKERS, "{context}: {record}");
    assert_eq!(record["format"], 1, "{context}: {record}");
    assert!(record.get("split").is_none(), "{context}: {record}");
    let mut seen = Contents::new();
    for shard in 0..WORKERS {
        let store = open(backend, dir, shard).await;
        let held = contents(&*store);
        store.close().unwrap();
        for (id, content) in held {
            assert_eq!(id.shard(WORKERS), shard, "{context}: {id} in shard {shard}");
            assert!(seen.insert(id, content).is_none(), "{context}: {id} twice");
        }
    }
    if &seen != expected {
        let lost = expected.keys().filter(|id| !seen.contains_key(id)).count();
        let changed = expected
            .iter()
            .filter(|(id, c)| seen.get(id).is_some_and(|s| s != *c))
            .count();
        panic!("{context}: {lost} objects lost, {changed} changed");
    }
}

/// `big`: with an object too big for one commit of the copy (left out for
/// the test backend, whose debug-build encoder takes seconds over it; the
/// copying code is the same for every backend).
async fn crash_at_every_step(backend: &str, big: bool) {
    let clean = tempfile::tempdir().unwrap();
    let expected = populate(backend, clean.path(), big).await;
    let events = run_child(backend, clean.path(), 0).expect("a child without a fuse finishes");
    verify(backend, clean.path(), &expected, "no crash").await;
    assert!(events >= 20, "{events} events: the split did too little");
    // A finished split is not run again.
    assert_eq!(run_child(backend, clean.path(), 0), Some(0));

    // Every run starts from a copy of one populated directory.
    let template = tempfile::tempdir().unwrap();
    let populated = populate(backend, template.path(), big).await;
    assert_eq!(populated, expected);
    for kill_at in 1..=events {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        assert_eq!(run_child(backend, dir.path(), kill_at), None);
        // The next start crashes too, halfway through what is left.
        let second = kill_at / 2 + 1;
        run_child(backend, dir.path(), second);
        let finished = run_child(backend, dir.path(), 0).is_some();
        assert!(finished, "backend {backend}: the split never finished");
        verify(
            backend,
            dir.path(),
            &expected,
            &format!("{backend}, killed at event {kill_at}, then at {second}"),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fjall_split_killed_at_every_step_loses_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    crash_at_every_step("fjall", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logfile_split_killed_at_every_step_loses_nothing() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    crash_at_every_step("logfile", false).await;
}

/// A backend that cannot list its objects never splits: the server runs
/// with the shards it has, and the directory is left as it was.
#[tokio::test]
async fn a_backend_that_cannot_split_keeps_its_shards() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    #[derive(Debug)]
    struct Unlisted(odo_storage::MemoryBackend);
    impl Backend for Unlisted {
        fn get(&self, object: &ObjectId, key: &str) -> Result<Option<Bytes>, StorageError> {
            self.0.get(object, key)
        }
        fn scan(
            &self,
            object: &ObjectId,
            range: &KeyRange,
            reverse: bool,
            limit: ScanLimit,
        ) -> Result<Vec<(String, Bytes)>, StorageError> {
            self.0.scan(object, range, reverse, limit)
        }
        fn alarm(&self, object: &ObjectId) -> Result<Option<u64>, StorageError> {
            self.0.alarm(object)
        }
        fn due_alarms(&self, now: u64, limit: usize) -> Result<Vec<(ObjectId, u64)>, StorageError> {
            self.0.due_alarms(now, limit)
        }
        fn commit(&self, writes: &[(ObjectId, Arc<ObjectBatch>)]) -> Result<(), StorageError> {
            self.0.commit(writes)
        }
        fn close(&self) -> Result<(), StorageError> {
            self.0.close()
        }
    }
    #[derive(Debug)]
    struct UnlistedFactory;
    impl BackendFactory for UnlistedFactory {
        fn name(&self) -> &str {
            "unlisted"
        }
        fn durable(&self) -> bool {
            false
        }
        fn open(&self, _shard: ShardSpec) -> OpenFuture {
            odo_storage::open_ready(Unlisted(odo_storage::MemoryBackend::new()))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let lock = DataDirLock::acquire(dir.path()).unwrap();
    assert_eq!(lock.shard_count(2).unwrap(), 2);
    let splitter = StorageSplitter::new(Arc::new(UnlistedFactory));
    assert_eq!(lock.prepare_shards(2, 8, Some(&splitter)).await.unwrap(), 2);
    assert_eq!(lock.shard_count(2).unwrap(), 2);
    // Without a splitter at all, the same.
    assert_eq!(lock.prepare_shards(2, 8, None).await.unwrap(), 2);
}
