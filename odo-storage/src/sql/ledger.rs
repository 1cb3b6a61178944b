//! The size of a shard's SQL history, and which history goes first when
//! it is over its cap ([`SqlOptions::max_history_bytes`]). Plain data, no
//! I/O: `trim.rs` measures and folds, this decides.
//!
//! An object's history is its log records (each kept until it is folded
//! into the object's base file) plus its base file. Over the cap, the
//! oldest history of the shard goes first: its oldest records, across
//! its objects, until what they weigh (less what folding them adds to
//! their objects' base files) brings the shard to 7/8 of the cap. A
//! record folds only once the database file holds it, synced
//! (`sql/synced`): the log is what recovery replays after that point.
//!
//! [`SqlOptions::max_history_bytes`]: super::SqlOptions::max_history_bytes

use std::collections::HashMap;

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

    /// The objects that keep records, and what their history weighs.
    pub(crate) fn with_records(&self) -> Vec<(ObjectId, ObjectHistory)> {
        let mut objects: Vec<_> = self
            .objects
            .iter()
            .filter(|(_, h)| h.oldest_ms.is_some())
            .map(|(id, h)| (*id, *h))
            .collect();
        objects.sort_unstable_by_key(|(id, h)| (h.oldest_ms, *id));
        objects
    }
}

/// The bytes a trim of a shard with `total` bytes of history must take
/// away, with its `cap`: down to 7/8 of the cap, so that a shard at its
/// cap is not trimmed again at every catch-up; 0 when under the cap.
pub(crate) fn trim_need(total: u64, cap: u64) -> u64 {
    if total <= cap {
        return 0;
    }
    total - (cap - cap / 8)
}

/// What one object can give to a trim: its records that may fold (synced
/// in its file), oldest first, as (time, record number, bytes); and what
/// its base file would grow by if it folded any (about the database's
/// size less the base's).
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) id: ObjectId,
    pub(crate) growth: u64,
    pub(crate) records: Vec<(u64, u64, u64)>,
}

/// Which records a trim folds: the shard's oldest, across its objects,
/// until they pay for `need` bytes (the records' bytes, less the growth
/// of each base they go into) or none are left. Answers, per object, the
/// last record to fold; an object whose records taken would not pay for
/// its base's growth is left out (folding it would grow the history).
pub(crate) fn plan_trim(candidates: &[Candidate], need: u64) -> Vec<(ObjectId, u64)> {
    let mut all: Vec<(u64, usize, u64, u64)> = candidates
        .iter()
        .enumerate()
        .flat_map(|(at, c)| c.records.iter().map(move |&(t, seq, b)| (t, at, seq, b)))
        .collect();
    all.sort_unstable();
    let mut taken: Vec<Option<(u64, u64)>> = vec![None; candidates.len()];
    let mut freed: i128 = 0;
    for (_, at, seq, bytes) in all {
        if freed >= i128::from(need) {
            break;
        }
        let slot = &mut taken[at];
        if slot.is_none() {
            freed -= i128::from(candidates[at].growth);
        }
        let (_, sum) = slot.get_or_insert((0, 0));
        *slot = Some((seq, *sum + bytes));
        freed += i128::from(bytes);
    }
    candidates
        .iter()
        .zip(taken)
        .filter_map(|(c, t)| {
            let (upto, bytes) = t?;
            (bytes > c.growth).then_some((c.id, upto))
        })
        .collect()
}

/// Which records of one object a fold takes: fed the object's records in
/// order (oldest first), it takes them while they are at most `upto` and
/// older than `before_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FoldPlan {
    synced: u64,
    before_ms: u64,
    /// The last record taken (0: none).
    pub(crate) upto: u64,
    /// Bytes of the records taken.
    pub(crate) bytes: u64,
    /// When the first record left committed, once one was offered.
    pub(crate) next_ms: Option<u64>,
}

impl FoldPlan {
    /// A plan taking records up to `upto`, committed before `before_ms`.
    pub(crate) fn new(upto: u64, before_ms: u64) -> Self {
        Self {
            synced: upto,
            before_ms,
            upto: 0,
            bytes: 0,
            next_ms: None,
        }
    }

    /// Offers the next record; answers whether the plan wants more.
    pub(crate) fn offer(&mut self, seq: u64, time_ms: u64, bytes: u64) -> bool {
        if seq > self.synced || time_ms >= self.before_ms {
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

    /// A shard's candidates: records with growing times (ties across
    /// objects), numbered from 1.
    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            (
                prop::collection::vec((0u64..20, 1u64..100), 0..30),
                0u64..150,
            ),
            1..6,
        )
        .prop_map(|objects| {
            objects
                .into_iter()
                .enumerate()
                .map(|(n, (records, growth))| {
                    let mut time = 0;
                    Candidate {
                        id: id(n),
                        growth,
                        records: records
                            .into_iter()
                            .enumerate()
                            .map(|(at, (step, bytes))| {
                                time += step;
                                (time, at as u64 + 1, bytes)
                            })
                            .collect(),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn a_trim_takes_the_shards_oldest_records_until_they_pay_for_the_need(
            candidates in candidates(),
            need in 0u64..3000,
        ) {
            let plan = plan_trim(&candidates, need);
            let upto = |c: &Candidate| plan.iter().find(|(id, _)| *id == c.id).map_or(0, |p| p.1);
            let mut freed: i128 = 0;
            let mut newest_taken = None;
            let mut oldest_left = None;
            for c in &candidates {
                let upto = upto(c);
                let taken: Vec<_> = c.records.iter().filter(|r| r.1 <= upto).collect();
                let bytes: u64 = taken.iter().map(|r| r.2).sum();
                if upto > 0 {
                    // A record the object has; worth its base's growth.
                    prop_assert!(c.records.iter().any(|r| r.1 == upto));
                    prop_assert!(bytes > c.growth);
                    freed += i128::from(bytes) - i128::from(c.growth);
                    newest_taken = newest_taken.max(taken.last().map(|r| r.0));
                }
                if let Some(left) = c.records.iter().find(|r| r.1 > upto) {
                    // Objects left out for their growth aside, nothing
                    // older than a record taken stays.
                    if upto > 0 || c.growth == 0 {
                        oldest_left = Some(oldest_left.map_or(left.0, |o: u64| o.min(left.0)));
                    }
                }
            }
            if let (Some(taken), Some(left)) = (newest_taken, oldest_left) {
                prop_assert!(taken <= left, "took a record of {taken}, left one of {left}");
            }
            // Enough, unless nothing worth folding is left.
            let everything = candidates.iter().all(|c| upto(c) == c.records.last().map_or(0, |r| r.1) || c.records.iter().map(|r| r.2).sum::<u64>() <= c.growth);
            prop_assert!(freed >= i128::from(need) || everything || plan.len() < candidates.len(),
                "freed {freed} of {need}");
            if need == 0 {
                prop_assert!(plan.is_empty());
            }
        }

        #[test]
        fn without_base_growth_a_trim_frees_what_it_needs_oldest_first(
            mut candidates in candidates(),
            need in 0u64..3000,
        ) {
            for c in &mut candidates {
                c.growth = 0;
            }
            let plan = plan_trim(&candidates, need);
            let mut taken = Vec::new();
            let mut left = Vec::new();
            for c in &candidates {
                let upto = plan.iter().find(|(id, _)| *id == c.id).map_or(0, |p| p.1);
                for r in &c.records {
                    if r.1 <= upto { taken.push(*r) } else { left.push(*r) }
                }
            }
            let freed: u64 = taken.iter().map(|r| r.2).sum();
            prop_assert!(freed >= need || left.is_empty(), "freed {freed} of {need}");
            // Every record taken is needed: without the newest, too little.
            if let Some(newest) = taken.iter().map(|r| r.0).max() {
                prop_assert!(left.iter().all(|r| r.0 >= newest));
                let before: u64 = taken.iter().filter(|r| r.0 < newest).map(|r| r.2).sum();
                prop_assert!(before < need);
            }
        }
    }

    #[test]
    fn the_ledger_follows_measures_records_and_folds() {
        let mut ledger = Ledger::default();
        ledger.set(
            id(0),
            ObjectHistory {
                records: 6,
                base: 4,
                oldest_ms: Some(5),
            },
        );
        ledger.add_record(id(1), 7, 9);
        assert_eq!(ledger.total(), 17);
        assert_eq!(
            ledger
                .with_records()
                .iter()
                .map(|o| o.0)
                .collect::<Vec<_>>(),
            vec![id(0), id(1)]
        );
        assert_eq!(ledger.folded(id(0), 6, 5, None, true), 5);
        assert_eq!(
            (ledger.total(), ledger.trims, ledger.trimmed_bytes),
            (12, 1, 5)
        );
        assert_eq!(ledger.with_records().len(), 1);
        ledger.set(id(1), ObjectHistory::default());
        assert_eq!((ledger.total(), ledger.objects()), (5, 1));
        assert_eq!(trim_need(10, 16), 0);
        assert_eq!(trim_need(20, 16), 6);
    }
}
