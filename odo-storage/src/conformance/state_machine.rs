//! The model-based test: random operation sequences against a `BTreeMap`.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use odo_core::ObjectId;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{Harness, object_id, runtime};
use crate::{
    ListOptions, MAX_KEY_BYTES, MAX_KEYS_PER_CALL, MAX_VALUE_BYTES, ObjectStorage, ObjectTurns,
};
use crate::{StorageError, Store, StoreOptions, Transaction};

const OBJECTS: usize = 2;
const DEFAULT_CASES: u32 = 256;
const MAX_OPS: usize = 40;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, String, u8),
    PutMany(usize, Vec<(String, u8)>),
    Get(usize, String),
    GetMany(usize, Vec<String>),
    Delete(usize, String),
    DeleteMany(usize, Vec<String>),
    DeleteAll(usize),
    List(usize, ListOptions),
    SetAlarm(usize, u64),
    DeleteAlarm(usize),
    GetAlarm(usize),
    /// Exceeds one limit (0..5); nothing may change.
    Oversize(usize, u8),
    /// Runs the inner operations in a transaction that fails after
    /// `fail_after` of them, if given.
    Transaction(usize, Vec<Op>, Option<usize>),
    /// Ends the object's turn: commit (then maybe wait) or roll back.
    EndTurn {
        object: usize,
        commit: bool,
        wait: bool,
    },
    /// Waits for every object's in-flight commits, then reads the alarm
    /// index.
    DueAlarms(u64),
    /// Waits for every object's in-flight commits, then lists one page of
    /// the store's objects: after the given object (if any), at most
    /// `limit` (a backend that cannot list them is let off).
    Objects(Option<usize>, usize),
    /// Drops every turn buffer, closes the store and reopens it.
    Reopen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    Value(Option<Vec<u8>>),
    Entries(Vec<(String, Vec<u8>)>),
    Bool(bool),
    Count(usize),
    Alarm(Option<u64>),
    Alarms(Vec<(ObjectId, u64)>),
    Objects(Vec<ObjectId>),
    /// The backend does not offer the operation: agrees with any outcome.
    Unsupported,
    Transaction(Vec<Outcome>, bool),
    Error(String),
}

fn value(v: u8) -> Vec<u8> {
    // Includes empty values, which must not read as absent.
    vec![v; usize::from(v % 4)]
}

fn kind(error: &StorageError) -> String {
    match error {
        StorageError::KeyTooLarge { .. } => "KeyTooLarge".into(),
        StorageError::ValueTooLarge { .. } => "ValueTooLarge".into(),
        StorageError::TooManyKeys { .. } => "TooManyKeys".into(),
        StorageError::InvalidListOptions(_) => "InvalidListOptions".into(),
        // Anything else is a failure of the backend: report it in full.
        other => other.to_string(),
    }
}

fn error(kind: &str) -> Outcome {
    Outcome::Error(kind.to_string())
}

fn entries(list: Vec<(String, Bytes)>) -> Outcome {
    Outcome::Entries(list.into_iter().map(|(k, v)| (k, v.to_vec())).collect())
}

fn outcome<T>(result: Result<T, StorageError>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
    match result {
        Ok(value) => ok(value),
        Err(error) => Outcome::Error(kind(&error)),
    }
}

// ---------------------------------------------------------------- strategies

fn key() -> impl Strategy<Value = String> {
    // Mostly a few keys, so that writes, deletes and lists collide often.
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "a_b"]).prop_map(String::from),
        2 => prop::sample::select(vec!["A_b", "é"]).prop_map(String::from),
        2 => prop::sample::select(vec!["", "ab", "axb", "中", "z"]).prop_map(String::from),
        1 => "[abA_]{1,2}",
    ]
}

fn list_options() -> impl Strategy<Value = ListOptions> {
    (
        prop::option::weighted(0.2, key()),
        prop::option::weighted(0.15, key()),
        prop::option::weighted(0.2, key()),
        prop::option::weighted(
            0.2,
            prop::sample::select(vec!["", "a", "a_", "A", "é", "b"]),
        ),
        any::<bool>(),
        prop::option::weighted(0.6, prop_oneof![1 => Just(0usize), 8 => 1usize..4]),
    )
        .prop_map(
            |(start, start_after, end, prefix, reverse, limit)| ListOptions {
                start,
                start_after,
                end,
                prefix: prefix.map(String::from),
                reverse,
                limit,
            },
        )
}

fn object() -> impl Strategy<Value = usize> {
    // Mostly one object, so that its turns build on each other; the other
    // checks isolation and multi-object batches.
    prop_oneof![3 => Just(0), 1 => 1..OBJECTS]
}

/// Operations allowed inside a transaction.
fn inner_op() -> BoxedStrategy<Op> {
    Union::new_weighted(vec![
        (
            6,
            (object(), key(), any::<u8>())
                .prop_map(|(o, k, v)| Op::Put(o, k, v))
                .boxed(),
        ),
        (
            2,
            (object(), vec((key(), any::<u8>()), 0..4))
                .prop_map(|(o, e)| Op::PutMany(o, e))
                .boxed(),
        ),
        (
            3,
            (object(), key()).prop_map(|(o, k)| Op::Get(o, k)).boxed(),
        ),
        (
            1,
            (object(), vec(key(), 0..4))
                .prop_map(|(o, k)| Op::GetMany(o, k))
                .boxed(),
        ),
        (
            3,
            (object(), key())
                .prop_map(|(o, k)| Op::Delete(o, k))
                .boxed(),
        ),
        (
            1,
            (object(), vec(key(), 0..4))
                .prop_map(|(o, k)| Op::DeleteMany(o, k))
                .boxed(),
        ),
        (1, object().prop_map(Op::DeleteAll).boxed()),
        (
            5,
            (object(), list_options())
                .prop_map(|(o, l)| Op::List(o, l))
                .boxed(),
        ),
        (
            1,
            (object(), 0u64..50)
                .prop_map(|(o, t)| Op::SetAlarm(o, t))
                .boxed(),
        ),
        (1, object().prop_map(Op::DeleteAlarm).boxed()),
        (1, object().prop_map(Op::GetAlarm).boxed()),
        (
            1,
            (object(), 0u8..5)
                .prop_map(|(o, w)| Op::Oversize(o, w))
                .boxed(),
        ),
    ])
    .boxed()
}

fn op() -> BoxedStrategy<Op> {
    Union::new_weighted(vec![
        (20, inner_op()),
        (
            2,
            (object(), vec(inner_op(), 0..6), prop::option::of(0usize..7))
                .prop_map(|(o, ops, fail)| {
                    // Inner operations act on the transaction's object.
                    let ops = ops.into_iter().map(|op| retarget(op, o)).collect();
                    Op::Transaction(o, ops, fail)
                })
                .boxed(),
        ),
        (
            5,
            (
                object(),
                prop::bool::weighted(0.8),
                prop::bool::weighted(0.7),
            )
                .prop_map(|(object, commit, wait)| Op::EndTurn {
                    object,
                    commit,
                    wait,
                })
                .boxed(),
        ),
        (1, (0u64..60).prop_map(Op::DueAlarms).boxed()),
        (
            1,
            (prop::option::of(0..OBJECTS), 1usize..4)
                .prop_map(|(after, limit)| Op::Objects(after, limit))
                .boxed(),
        ),
        (1, Just(Op::Reopen).boxed()),
    ])
    .boxed()
}

fn retarget(op: Op, o: usize) -> Op {
    match op {
        Op::Put(_, k, v) => Op::Put(o, k, v),
        Op::PutMany(_, e) => Op::PutMany(o, e),
        Op::Get(_, k) => Op::Get(o, k),
        Op::GetMany(_, k) => Op::GetMany(o, k),
        Op::Delete(_, k) => Op::Delete(o, k),
        Op::DeleteMany(_, k) => Op::DeleteMany(o, k),
        Op::DeleteAll(_) => Op::DeleteAll(o),
        Op::List(_, l) => Op::List(o, l),
        Op::SetAlarm(_, t) => Op::SetAlarm(o, t),
        Op::DeleteAlarm(_) => Op::DeleteAlarm(o),
        Op::GetAlarm(_) => Op::GetAlarm(o),
        Op::Oversize(_, w) => Op::Oversize(o, w),
        other => other,
    }
}

// --------------------------------------------------------------------- model

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ObjectState {
    data: BTreeMap<String, Vec<u8>>,
    alarm: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct ModelObject {
    /// What committed turns left (durable or in flight).
    committed: ObjectState,
    /// `committed` plus the current turn's writes.
    current: ObjectState,
}

fn model_list(data: &BTreeMap<String, Vec<u8>>, o: &ListOptions) -> Outcome {
    if o.start.is_some() && o.start_after.is_some() || o.limit == Some(0) {
        return error("InvalidListOptions");
    }
    let mut items: Vec<(String, Vec<u8>)> = data
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            o.start.as_deref().is_none_or(|s| k >= s)
                && o.start_after.as_deref().is_none_or(|s| k > s)
                && o.end.as_deref().is_none_or(|e| k < e)
                && o.prefix.as_deref().is_none_or(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if o.reverse {
        items.reverse();
    }
    if let Some(limit) = o.limit {
        items.truncate(limit);
    }
    Outcome::Entries(items)
}

fn model_oversize(which: u8) -> Outcome {
    match which {
        0 => error("KeyTooLarge"),
        2 | 3 => error("TooManyKeys"),
        _ => error("ValueTooLarge"),
    }
}

/// Applies an operation allowed in a transaction to `state`.
fn model_inner(state: &mut ObjectState, op: &Op) -> Outcome {
    match op {
        Op::Put(_, k, v) => {
            state.data.insert(k.clone(), value(*v));
            Outcome::Done
        }
        Op::PutMany(_, entries) => {
            for (k, v) in entries {
                state.data.insert(k.clone(), value(*v));
            }
            Outcome::Done
        }
        Op::Get(_, k) => Outcome::Value(state.data.get(k).cloned()),
        Op::GetMany(_, keys) => {
            let found: BTreeMap<_, _> = keys
                .iter()
                .filter_map(|k| state.data.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            Outcome::Entries(found.into_iter().collect())
        }
        Op::Delete(_, k) => Outcome::Bool(state.data.remove(k).is_some()),
        Op::DeleteMany(_, keys) => Outcome::Count(
            keys.iter()
                .filter(|k| state.data.remove(*k).is_some())
                .count(),
        ),
        Op::DeleteAll(_) => {
            *state = ObjectState::default();
            Outcome::Done
        }
        Op::List(_, o) => model_list(&state.data, o),
        Op::SetAlarm(_, t) => {
            state.alarm = Some(*t);
            Outcome::Done
        }
        Op::DeleteAlarm(_) => {
            state.alarm = None;
            Outcome::Done
        }
        Op::GetAlarm(_) => Outcome::Alarm(state.alarm),
        Op::Oversize(_, which) => model_oversize(*which),
        Op::Transaction(..)
        | Op::EndTurn { .. }
        | Op::DueAlarms(_)
        | Op::Objects(..)
        | Op::Reopen => error("not allowed in a transaction"),
    }
}

fn model_apply(model: &mut [ModelObject], op: &Op, durable: bool) -> Outcome {
    match op {
        Op::Transaction(o, ops, fail_after) => {
            let saved = model[*o].current.clone();
            let mut outcomes = Vec::new();
            let mut failed = false;
            for (i, inner) in ops.iter().enumerate() {
                if *fail_after == Some(i) {
                    failed = true;
                    break;
                }
                outcomes.push(model_inner(&mut model[*o].current, inner));
            }
            if *fail_after == Some(ops.len()) {
                failed = true;
            }
            if failed {
                model[*o].current = saved;
            }
            Outcome::Transaction(outcomes, !failed)
        }
        Op::EndTurn { object, commit, .. } => {
            let m = &mut model[*object];
            if *commit {
                m.committed = m.current.clone();
            } else {
                m.current = m.committed.clone();
            }
            Outcome::Done
        }
        Op::DueAlarms(now) => {
            let mut due: Vec<(ObjectId, u64)> = model
                .iter()
                .enumerate()
                .filter_map(|(n, m)| m.committed.alarm.map(|t| (object_id(n), t)))
                .filter(|(_, t)| t <= now)
                .collect();
            due.sort_by_key(|(id, t)| (*t, *id));
            Outcome::Alarms(due)
        }
        Op::Objects(after, limit) => {
            let after = after.map(object_id);
            let mut ids: Vec<ObjectId> = model
                .iter()
                .enumerate()
                .filter(|(_, m)| !m.committed.data.is_empty() || m.committed.alarm.is_some())
                .map(|(n, _)| object_id(n))
                .filter(|id| after.is_none_or(|after| *id > after))
                .collect();
            ids.sort();
            ids.truncate(*limit);
            Outcome::Objects(ids)
        }
        Op::Reopen => {
            for m in model.iter_mut() {
                if !durable {
                    m.committed = ObjectState::default();
                }
                m.current = m.committed.clone();
            }
            Outcome::Done
        }
        inner => {
            let o = object_of(inner);
            model_inner(&mut model[o].current, inner)
        }
    }
}

fn object_of(op: &Op) -> usize {
    match op {
        Op::Put(o, ..)
        | Op::PutMany(o, _)
        | Op::Get(o, _)
        | Op::GetMany(o, _)
        | Op::Delete(o, _)
        | Op::DeleteMany(o, _)
        | Op::DeleteAll(o)
        | Op::List(o, _)
        | Op::SetAlarm(o, _)
        | Op::DeleteAlarm(o)
        | Op::GetAlarm(o)
        | Op::Oversize(o, _)
        | Op::Transaction(o, ..) => *o,
        Op::EndTurn { object, .. } => *object,
        Op::DueAlarms(_) | Op::Objects(..) | Op::Reopen => 0,
    }
}

// ---------------------------------------------------------------- the system

/// The operations shared by an object's storage and a transaction.
trait Storage {
    async fn get(&mut self, key: &str) -> Result<Option<Bytes>, StorageError>;
    async fn get_many(&mut self, keys: &[String]) -> Result<Vec<(String, Bytes)>, StorageError>;
    async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), StorageError>;
    async fn put_many(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), StorageError>;
    async fn delete(&mut self, key: &str) -> Result<bool, StorageError>;
    async fn delete_many(&mut self, keys: &[String]) -> Result<usize, StorageError>;
    async fn delete_all(&mut self) -> Result<(), StorageError>;
    async fn list(&mut self, o: &ListOptions) -> Result<Vec<(String, Bytes)>, StorageError>;
    async fn set_alarm(&mut self, time: u64) -> Result<(), StorageError>;
    async fn delete_alarm(&mut self) -> Result<(), StorageError>;
    async fn get_alarm(&mut self) -> Result<Option<u64>, StorageError>;
}

macro_rules! impl_storage {
    ($t:ty) => {
        impl Storage for $t {
            async fn get(&mut self, key: &str) -> Result<Option<Bytes>, StorageError> {
                <$t>::get(self, key).await
            }
            async fn get_many(
                &mut self,
                keys: &[String],
            ) -> Result<Vec<(String, Bytes)>, StorageError> {
                <$t>::get_many(self, keys).await
            }
            async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
                <$t>::put(self, key, value).await
            }
            async fn put_many(
                &mut self,
                entries: Vec<(String, Vec<u8>)>,
            ) -> Result<(), StorageError> {
                <$t>::put_many(self, entries).await
            }
            async fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
                <$t>::delete(self, key).await
            }
            async fn delete_many(&mut self, keys: &[String]) -> Result<usize, StorageError> {
                <$t>::delete_many(self, keys).await
            }
            async fn delete_all(&mut self) -> Result<(), StorageError> {
                <$t>::delete_all(self).await
            }
            async fn list(
                &mut self,
                o: &ListOptions,
            ) -> Result<Vec<(String, Bytes)>, StorageError> {
                <$t>::list(self, o).await
            }
            async fn set_alarm(&mut self, time: u64) -> Result<(), StorageError> {
                <$t>::set_alarm(self, time).await
            }
            async fn delete_alarm(&mut self) -> Result<(), StorageError> {
                <$t>::delete_alarm(self).await
            }
            async fn get_alarm(&mut self) -> Result<Option<u64>, StorageError> {
                <$t>::get_alarm(self).await
            }
        }
    };
}

impl_storage!(ObjectStorage);
impl_storage!(Transaction<'_>);

async fn apply_inner<S: Storage>(s: &mut S, op: &Op) -> Outcome {
    match op {
        Op::Put(_, k, v) => outcome(s.put(k, value(*v)).await, |()| Outcome::Done),
        Op::PutMany(_, e) => {
            let e = e.iter().map(|(k, v)| (k.clone(), value(*v))).collect();
            outcome(s.put_many(e).await, |()| Outcome::Done)
        }
        Op::Get(_, k) => outcome(s.get(k).await, |v| Outcome::Value(v.map(|v| v.to_vec()))),
        Op::GetMany(_, keys) => outcome(s.get_many(keys).await, entries),
        Op::Delete(_, k) => outcome(s.delete(k).await, Outcome::Bool),
        Op::DeleteMany(_, keys) => outcome(s.delete_many(keys).await, Outcome::Count),
        Op::DeleteAll(_) => outcome(s.delete_all().await, |()| Outcome::Done),
        Op::List(_, o) => outcome(s.list(o).await, entries),
        Op::SetAlarm(_, t) => outcome(s.set_alarm(*t).await, |()| Outcome::Done),
        Op::DeleteAlarm(_) => outcome(s.delete_alarm().await, |()| Outcome::Done),
        Op::GetAlarm(_) => outcome(s.get_alarm().await, Outcome::Alarm),
        Op::Oversize(_, which) => {
            let result = match which {
                0 => s.put(&"k".repeat(MAX_KEY_BYTES + 1), vec![1]).await,
                1 => s.put("big", vec![0; MAX_VALUE_BYTES + 1]).await,
                2 => {
                    let many = (0..=MAX_KEYS_PER_CALL)
                        .map(|i| (format!("many{i}"), vec![1]))
                        .collect();
                    s.put_many(many).await
                }
                3 => {
                    let keys: Vec<String> = (0..=MAX_KEYS_PER_CALL)
                        .map(|i| format!("many{i}"))
                        .collect();
                    s.get_many(&keys).await.map(|_| ())
                }
                _ => {
                    // One bad value spoils the whole call.
                    let mixed = vec![
                        ("a".to_string(), vec![9]),
                        ("big".to_string(), vec![0; MAX_VALUE_BYTES + 1]),
                    ];
                    s.put_many(mixed).await
                }
            };
            outcome(result, |()| Outcome::Done)
        }
        Op::Transaction(..)
        | Op::EndTurn { .. }
        | Op::DueAlarms(_)
        | Op::Objects(..)
        | Op::Reopen => error("not allowed in a transaction"),
    }
}

struct System {
    store: Store,
    objects: Vec<ObjectTurns>,
}

impl System {
    fn open<H: Harness>(harness: &H, dir: &Path) -> Result<Self, TestCaseError> {
        let backend = harness
            .open(dir)
            .map_err(|e| TestCaseError::fail(format!("opening the backend: {e}")))?;
        // A tiny cache, so that eviction is exercised too.
        let options = StoreOptions {
            object_cache_bytes: 256,
            ..harness.store_options(dir)
        };
        let store = Store::open(backend, options)
            .map_err(|e| TestCaseError::fail(format!("opening the store: {e}")))?;
        let objects = (0..OBJECTS)
            .map(|n| harness.object(&store, object_id(n)))
            .collect();
        Ok(Self { store, objects })
    }

    /// Waits for every object's in-flight commits.
    async fn settle(&mut self) -> Result<(), TestCaseError> {
        for s in &mut self.objects {
            if let Some(pending) = s.pending_commit()
                && let Err(e) = pending.await
            {
                return Err(TestCaseError::fail(format!("commit failed: {e}")));
            }
        }
        Ok(())
    }

    async fn apply<H: Harness>(
        &mut self,
        harness: &H,
        dir: &Path,
        op: &Op,
    ) -> Result<Outcome, TestCaseError> {
        Ok(match op {
            Op::Transaction(o, ops, fail_after) => {
                let mut outcomes = Vec::new();
                let result: Result<(), ()> = self.objects[*o]
                    .transaction(async |tx| {
                        for (i, inner) in ops.iter().enumerate() {
                            if *fail_after == Some(i) {
                                return Err(());
                            }
                            outcomes.push(apply_inner(tx, inner).await);
                        }
                        if *fail_after == Some(ops.len()) {
                            return Err(());
                        }
                        Ok(())
                    })
                    .await;
                Outcome::Transaction(outcomes, result.is_ok())
            }
            Op::EndTurn {
                object,
                commit,
                wait,
            } => {
                let s = &mut self.objects[*object];
                if *commit {
                    let pending = s.commit_turn();
                    if let (true, Some(pending)) = (*wait, pending)
                        && let Err(e) = pending.await
                    {
                        return Err(TestCaseError::fail(format!("commit failed: {e}")));
                    }
                } else {
                    s.rollback_turn();
                }
                Outcome::Done
            }
            Op::DueAlarms(now) => {
                self.settle().await?;
                outcome(self.store.due_alarms(*now, 100), Outcome::Alarms)
            }
            Op::Objects(after, limit) => {
                self.settle().await?;
                let after = after.map(object_id);
                match self.store.backend().objects(after.as_ref(), *limit) {
                    Err(StorageError::Unsupported { .. }) => Outcome::Unsupported,
                    listed => outcome(listed, Outcome::Objects),
                }
            }
            Op::Reopen => {
                self.objects.clear();
                if let Err(e) = self.store.close().await {
                    return Err(TestCaseError::fail(format!("close failed: {e}")));
                }
                *self = System::open(harness, dir)?;
                Outcome::Done
            }
            inner => apply_inner(self.objects[object_of(inner)].storage(), inner).await,
        })
    }
}

async fn run_case<H: Harness>(harness: &H, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut system = System::open(harness, dir.path())?;
    let mut model = vec![ModelObject::default(); OBJECTS];
    for (step, op) in ops.iter().enumerate() {
        if matches!(op, Op::Objects(..)) && !harness.objects_are_their_keys() {
            continue;
        }
        let real = system.apply(harness, dir.path(), op).await?;
        let expected = model_apply(&mut model, op, harness.durable());
        if real != expected && real != Outcome::Unsupported {
            return Err(TestCaseError::fail(format!(
                "step {step}: {op:?}\n  backend: {real:?}\n  model:   {expected:?}"
            )));
        }
    }
    for (n, m) in model.iter().enumerate() {
        let s = &mut system.objects[n];
        let all = outcome(s.list(&ListOptions::default()).await, entries);
        let alarm = outcome(s.get_alarm().await, Outcome::Alarm);
        let expected = model_list(&m.current.data, &ListOptions::default());
        if all != expected || alarm != Outcome::Alarm(m.current.alarm) {
            return Err(TestCaseError::fail(format!(
                "final state of object {n}: {all:?} {alarm:?}, model {:?}",
                m.current
            )));
        }
    }
    system
        .store
        .close()
        .await
        .map_err(|e| TestCaseError::fail(format!("close failed: {e}")))
}

/// Runs random operation sequences through a [`Store`] on the backend and
/// compares every result with a `BTreeMap` model. 256 cases of up to 40
/// operations unless `PROPTEST_CASES` is set.
///
/// # Panics
///
/// Panics with the (shrunk) failing sequence when the backend and the
/// model disagree.
pub fn state_machine<H: Harness>(harness: &H) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let rt = runtime();
    let strategy = vec(op(), 1..MAX_OPS);
    let result = runner.run(&strategy, |ops| rt.block_on(run_case(harness, &ops)));
    if let Err(error) = result {
        panic!("{error}");
    }
}
