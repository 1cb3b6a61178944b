//! The unit of change (one object's writes) and key ranges: the vocabulary
//! shared by the object API, the group-commit thread and the backends.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

/// What happens to an object's alarm in a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AlarmChange {
    /// The alarm is left as it is.
    #[default]
    Keep,
    /// The alarm is set to this time (milliseconds since the Unix epoch).
    Set(u64),
    /// The alarm is removed.
    Delete,
}

/// The writes of one object: one turn's, a transaction's, or several turns
/// merged by the group-commit thread.
///
/// Applying a batch means: if `clear`, delete every data key of the object;
/// then apply `entries` (`Some` puts, `None` deletes); then apply `alarm`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectBatch {
    /// Delete all of the object's data first (`delete_all`).
    pub clear: bool,
    /// Key to new value (`Some`) or deletion (`None`), in key order.
    pub entries: BTreeMap<String, Option<Bytes>>,
    /// The alarm change.
    pub alarm: AlarmChange,
}

impl ObjectBatch {
    /// Whether applying the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.clear && self.entries.is_empty() && self.alarm == AlarmChange::Keep
    }

    /// Folds `later` (applied after `self`) into `self`, so that applying
    /// the result equals applying `self` then `later`.
    pub fn merge(&mut self, later: ObjectBatch) {
        if later.clear {
            self.clear = true;
            self.entries = later.entries;
        } else {
            self.entries.extend(later.entries);
        }
        if later.alarm != AlarmChange::Keep {
            self.alarm = later.alarm;
        }
    }

    /// Like [`merge`](Self::merge), from a borrowed batch.
    pub fn merge_ref(&mut self, later: &ObjectBatch) {
        if later.clear {
            self.clear = true;
            self.entries.clear();
        }
        self.entries.extend(
            later
                .entries
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        if later.alarm != AlarmChange::Keep {
            self.alarm = later.alarm;
        }
    }
}

/// A range of one object's keys, compared as UTF-8 bytes (Rust's `str`
/// order). Built from [`ListOptions`](crate::ListOptions), with the prefix
/// already folded into the bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// The lower bound.
    pub lower: Bound<String>,
    /// The upper bound.
    pub upper: Bound<String>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self {
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &str) -> bool {
        let above = match &self.lower {
            Bound::Included(lower) => key >= lower.as_str(),
            Bound::Excluded(lower) => key > lower.as_str(),
            Bound::Unbounded => true,
        };
        let below = match &self.upper {
            Bound::Included(upper) => key <= upper.as_str(),
            Bound::Excluded(upper) => key < upper.as_str(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// Whether no key can lie in the range (lower bound above the upper).
    pub fn is_empty(&self) -> bool {
        match (&self.lower, &self.upper) {
            (Bound::Unbounded, _) | (_, Bound::Unbounded) => false,
            (Bound::Included(l), Bound::Included(u)) => l > u,
            (Bound::Included(l), Bound::Excluded(u))
            | (Bound::Excluded(l), Bound::Included(u))
            | (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        }
    }

    /// The bounds as a tuple usable with `BTreeMap::range`, or `None` when
    /// the range is empty (`BTreeMap::range` panics on inverted bounds).
    pub fn as_bounds(&self) -> Option<(Bound<&str>, Bound<&str>)> {
        if self.is_empty() {
            return None;
        }
        Some((as_ref(&self.lower), as_ref(&self.upper)))
    }
}

fn as_ref(bound: &Bound<String>) -> Bound<&str> {
    match bound {
        Bound::Included(s) => Bound::Included(s.as_str()),
        Bound::Excluded(s) => Bound::Excluded(s.as_str()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest string greater than every string starting with `prefix`,
/// or `None` if there is none (empty, or only `char::MAX`). UTF-8 byte
/// order is code point order, so incrementing the last character that can
/// be incremented gives exactly that bound, and it is still a `String`.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut out = prefix.to_string();
    while let Some(last) = out.pop() {
        let next = match u32::from(last) + 1 {
            0xd800 => Some('\u{e000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            out.push(next);
            return Some(out);
        }
    }
    None
}

/// The smallest byte string greater than every byte string starting with
/// `prefix`, or `None` if there is none (empty or all `0xff`).
#[cfg(feature = "fjall")]
pub(crate) fn bytes_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}
