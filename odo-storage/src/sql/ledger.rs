//! The size of a shard's SQL history, and which history goes first when
//! it is over its cap ([`SqlOptions::max_history_bytes`]). Plain data, no
//! I/O: `trim.rs` measures and folds, this decides.
//!
//! An object's history is its log records (each kept until it is folded
//! into the object's base file) plus its base file. Over the cap, the
//! oldest history of the shard goes first: the object whose oldest kept
//! record is the oldest folds its records, oldest first, until the shard
//! is back under the cap or its oldest kept record is no longer the
//! shard's oldest; then the next oldest object does, and so on. A record
//! folds only once the database file holds it, synced (`sql/synced`):
//! the log is what recovery replays after that point.
//!
//! [`SqlOptions::max_history_bytes`]: super::SqlOptions::max_history_bytes

use std::collections::{HashMap, HashSet};

use odo_core::ObjectId;

/// What the history of one object weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ObjectHistory {
    /// Bytes of its log records.
    pub(crate) records: u64,
    /// Bytes of its base file.
    pub(crate) base: u64,
    /// When its oldest kept record committed; `None` when it keeps none
    /// (its history is its base file alone, which no trim can shrink).
    pub(crate) oldest_ms: Option<u64>,
}

impl ObjectHistory {
    /// What it weighs.
    pub(crate) fn bytes(&self) -> u64 {
        self.records + self.base
    }
}

/// The history of every SQLite-backed object of a shard that the store
/// has measured, and the trims done.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    objects: HashMap<ObjectId, ObjectHistory>,
    /// Whether every object of the shard was measured (not only the ones
    /// opened since the store opened).
    pub(crate) censused: bool,
    /// Trims done (one fold of one object each).
    pub(crate) trims: u64,
    /// Bytes the trims took away.
    pub(crate) trimmed_bytes: u64,
}

/// One step of a trim: fold the history of `id` older than `before_ms`,
/// at most `need` bytes of records past what the shard must lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trim {
    pub(crate) id: ObjectId,
    /// Bytes the shard is over its cap.
    pub(crate) need: u64,
    /// Records committed at or after this time stay (the next oldest
    /// object's oldest record: past it, that object's history is older).
    pub(crate) before_ms: u64,
}

impl Ledger {
    /// Records what an object's history weighs, as measured.
    pub(crate) fn set(&mut self, id: ObjectId, history: ObjectHistory) {
        if history == ObjectHistory::default() {
            self.objects.remove(&id);
        } else {
            self.objects.insert(id, history);
        }
    }

    /// Whether `id` was measured.
    pub(crate) fn knows(&self, id: &ObjectId) -> bool {
        self.objects.contains_key(id)
    }

    /// A new record of `bytes`, committed at `time_ms`.
    pub(crate) fn add_record(&mut self, id: ObjectId, bytes: u64, time_ms: u64) {
        let entry = self.objects.entry(id).or_default();
        entry.records += bytes;
        entry.oldest_ms.get_or_insert(time_ms);
    }

    /// A fold of `id` took `records` bytes of records away and made its
    /// base file `base` bytes; its oldest kept record is now `oldest_ms`.
    /// Answers the bytes the history lost (negative: it grew, the new base
    /// being larger than the records folded).
    pub(crate) fn folded(
        &mut self,
        id: ObjectId,
        records: u64,
        base: u64,
        oldest_ms: Option<u64>,
        trim: bool,
    ) -> i64 {
        let entry = self.objects.entry(id).or_default();
        let before = entry.bytes();
        entry.records = entry.records.saturating_sub(records);
        entry.base = base;
        entry.oldest_ms = oldest_ms;
        let lost = before as i64 - entry.bytes() as i64;
        if trim {
            self.trims += 1;
            self.trimmed_bytes = self.trimmed_bytes.saturating_add_signed(lost);
        }
        lost
    }

    /// Bytes of history of the shard.
    pub(crate) fn total(&self) -> u64 {
        self.objects.values().map(ObjectHistory::bytes).sum()
    }

    /// Objects with history.
    pub(crate) fn objects(&self) -> usize {
        self.objects.len()
    }

    /// The history of `id`, as last measured.
    pub(crate) fn get(&self, id: &ObjectId) -> Option<ObjectHistory> {
        self.objects.get(id).copied()
    }

    /// The next step of bringing the shard under `cap` (skipping the
    /// objects in `skip`, which could not fold): the object with the
    /// oldest kept record; `None` when the shard is under its cap or
    /// nothing is left to fold.
    pub(crate) fn next_trim(&self, cap: u64, skip: &HashSet<ObjectId>) -> Option<Trim> {
        let total = self.total();
        if total <= cap {
            return None;
        }
        let mut candidates: Vec<(u64, ObjectId)> = self
            .objects
            .iter()
            .filter(|(id, _)| !skip.contains(id))
            .filter_map(|(id, h)| Some((h.oldest_ms?, *id)))
            .collect();
        candidates.sort_unstable();
        let (oldest, id) = *candidates.first()?;
        let next = candidates.get(1).map_or(u64::MAX, |(t, _)| *t);
        Some(Trim {
            id,
            need: total - cap,
            // At least the oldest record goes.
            before_ms: next.max(oldest.saturating_add(1)),
        })
    }
}

/// Which records of one object a fold takes: fed the object's records in
/// order (oldest first), it takes them while they are synced, older than
/// the bound, and still needed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldPlan {
    synced: u64,
    before_ms: u64,
    need: u64,
    /// The last record taken (0: none).
    pub(crate) upto: u64,
    /// Bytes of the records taken.
    pub(crate) bytes: u64,
    /// When the first record left committed, once one was offered.
    pub(crate) next_ms: Option<u64>,
}

impl FoldPlan {
    /// A plan taking records up to `synced`, committed before `before_ms`,
    /// until `need` bytes are taken (`u64::MAX`: no limit).
    pub(crate) fn new(synced: u64, before_ms: u64, need: u64) -> Self {
        Self {
            synced,
            before_ms,
            need,
            upto: 0,
            bytes: 0,
            next_ms: None,
        }
    }

    /// Offers the next record; answers whether the plan wants more.
    pub(crate) fn offer(&mut self, seq: u64, time_ms: u64, bytes: u64) -> bool {
        if seq > self.synced || time_ms >= self.before_ms || self.bytes >= self.need {
            self.next_ms = Some(time_ms);
            return false;
        }
        self.upto = seq;
        self.bytes += bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: usize) -> ObjectId {
        odo_core::Namespace::new("L").id_from_name(&n.to_string())
    }

    /// One object of the model shard: records (time, bytes), oldest
    /// first, of which the first `synced` may fold; and its base.
    #[derive(Debug, Clone)]
    struct Model {
        records: Vec<(u64, u64)>,
        synced: usize,
        base: u64,
        folded: Vec<(u64, u64)>,
    }

    fn shard() -> impl Strategy<Value = Vec<Model>> {
        prop::collection::vec(
            (
                prop::collection::vec((0u64..50, 1u64..100), 0..30),
                0usize..30,
                0u64..200,
            )
                .prop_map(|(mut records, synced, base)| {
                    // Times grow with records.
                    let mut time = 0;
                    for r in &mut records {
                        time += r.0;
                        r.0 = time;
                    }
                    let synced = synced.min(records.len());
                    Model {
                        records,
                        synced,
                        base,
                        folded: Vec::new(),
                    }
                }),
            1..6,
        )
    }

    /// The trim loop of `trim.rs`, on the model: measure, then fold as
    /// the ledger says until it says stop.
    fn run(shard: &mut [Model], cap: u64) -> Ledger {
        let mut ledger = Ledger::default();
        for (n, m) in shard.iter().enumerate() {
            ledger.set(
                id(n),
                ObjectHistory {
                    records: m.records.iter().map(|r| r.1).sum::<u64>(),
                    base: m.base,
                    oldest_ms: m.records.first().map(|r| r.0),
                },
            );
        }
        let mut skip = HashSet::new();
        while let Some(trim) = ledger.next_trim(cap, &skip) {
            let n = (0..shard.len()).find(|n| id(*n) == trim.id).unwrap();
            let m = &mut shard[n];
            let mut plan = FoldPlan::new(m.synced as u64, trim.before_ms, trim.need);
            for (at, (time, bytes)) in m.records.iter().enumerate() {
                if !plan.offer(at as u64 + 1, *time, *bytes) {
                    break;
                }
            }
            if plan.upto == 0 {
                skip.insert(trim.id);
                continue;
            }
            let taken: Vec<_> = m.records.drain(..plan.upto as usize).collect();
            m.synced -= taken.len();
            m.folded.extend(taken);
            let lost = ledger.folded(
                trim.id,
                plan.bytes,
                m.base,
                m.records.first().map(|r| r.0),
                true,
            );
            assert_eq!(lost, plan.bytes as i64);
        }
        ledger
    }

    proptest! {
        #[test]
        fn trims_bring_the_shard_under_its_cap_oldest_history_first(
            mut shard in shard(),
            cap in 0u64..2000,
        ) {
            let before: u64 = shard.iter().map(|m| m.base + m.records.iter().map(|r| r.1).sum::<u64>()).sum();
            let ledger = run(&mut shard, cap);
            let after: u64 = shard.iter().map(|m| m.base + m.records.iter().map(|r| r.1).sum::<u64>()).sum();
            // The ledger follows what is there.
            prop_assert_eq!(ledger.total(), after);
            prop_assert_eq!(ledger.trimmed_bytes, before - after);
            // Under the cap, or nothing left that may fold.
            let foldable = shard.iter().any(|m| m.synced > 0);
            prop_assert!(after <= cap || !foldable, "{after} > {cap} with history left to fold");
            // Nothing folded while under the cap.
            if before <= cap {
                prop_assert_eq!(ledger.trims, 0);
            }
            // Oldest first: no record left that may fold is older than one
            // that was folded.
            let newest_folded = shard.iter().flat_map(|m| m.folded.iter().map(|r| r.0)).max();
            let oldest_foldable = shard
                .iter()
                .flat_map(|m| m.records[..m.synced].iter().map(|r| r.0))
                .min();
            if let (Some(folded), Some(kept)) = (newest_folded, oldest_foldable) {
                prop_assert!(folded <= kept, "folded a record of {folded}, kept one of {kept}");
            }
            // Records that may not fold stay.
            for m in &shard {
                prop_assert!(m.synced <= m.records.len());
            }
        }
    }

    #[test]
    fn under_the_cap_or_with_only_bases_nothing_trims() {
        let mut ledger = Ledger::default();
        ledger.set(
            id(0),
            ObjectHistory {
                records: 6,
                base: 4,
                oldest_ms: Some(5),
            },
        );
        assert_eq!(ledger.next_trim(10, &HashSet::new()), None);
        assert_eq!(
            ledger.next_trim(4, &HashSet::new()),
            Some(Trim {
                id: id(0),
                need: 6,
                before_ms: u64::MAX
            })
        );
        ledger.set(
            id(0),
            ObjectHistory {
                records: 6,
                base: 4,
                oldest_ms: None,
            },
        );
        assert_eq!(ledger.next_trim(4, &HashSet::new()), None);
        ledger.set(id(0), ObjectHistory::default());
        assert_eq!((ledger.total(), ledger.objects()), (0, 0));
    }
}
