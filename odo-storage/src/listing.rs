//! Listings: what an object asks for ([`ListOptions`]), and the backend's
//! keys merged with the object's writes that are not in the backend yet,
//! read in bounded pages off the async threads, and refused as soon as the
//! answer would cross its bound.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use odo_core::ObjectId;

use crate::backend::{Backend, ScanLimit};
use crate::batch::{KeyRange, prefix_successor};
use crate::error::StorageError;

/// The options of [`ObjectStorage::list`](crate::ObjectStorage::list). Keys are compared by their UTF-8
/// bytes.
///
/// `start` (inclusive) or `start_after` (exclusive) is the lower bound and
/// `end` (exclusive) the upper bound, whatever the direction; `reverse`
/// walks the same range from the top; `limit` counts from the walking end;
/// `prefix` is a literal, case-sensitive byte prefix. Giving both `start`
/// and `start_after`, or a `limit` of 0, is
/// [`StorageError::InvalidListOptions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// The first key to include.
    pub start: Option<String>,
    /// Include only keys after this one.
    pub start_after: Option<String>,
    /// Include only keys before this one.
    pub end: Option<String>,
    /// Include only keys starting with this.
    pub prefix: Option<String>,
    /// Walk from the highest key down.
    pub reverse: bool,
    /// The most keys to return.
    pub limit: Option<usize>,
}

impl ListOptions {
    /// Checks the options and folds them into one range of keys.
    pub fn key_range(&self) -> Result<KeyRange, StorageError> {
        if self.start.is_some() && self.start_after.is_some() {
            return Err(StorageError::InvalidListOptions(
                "give `start` or `start_after`, not both",
            ));
        }
        if self.limit == Some(0) {
            return Err(StorageError::InvalidListOptions(
                "`limit` must be at least 1",
            ));
        }
        let mut lower = match (&self.start, &self.start_after) {
            (Some(start), _) => Bound::Included(start.clone()),
            (None, Some(after)) => Bound::Excluded(after.clone()),
            (None, None) => Bound::Unbounded,
        };
        let mut upper = match &self.end {
            Some(end) => Bound::Excluded(end.clone()),
            None => Bound::Unbounded,
        };
        if let Some(prefix) = &self.prefix {
            lower = tighter(lower, Bound::Included(prefix.clone()), true);
            if let Some(next) = prefix_successor(prefix) {
                upper = tighter(upper, Bound::Excluded(next), false);
            }
        }
        Ok(KeyRange { lower, upper })
    }
}

/// The tighter of two lower bounds (`lower`) or two upper bounds.
fn tighter(a: Bound<String>, b: Bound<String>, lower: bool) -> Bound<String> {
    let (ka, kb) = match (&a, &b) {
        (Bound::Unbounded, _) => return b,
        (_, Bound::Unbounded) => return a,
        (Bound::Included(ka) | Bound::Excluded(ka), Bound::Included(kb) | Bound::Excluded(kb)) => {
            (ka, kb)
        }
    };
    if ka == kb {
        return if matches!(a, Bound::Excluded(_)) {
            a
        } else {
            b
        };
    }
    if (ka > kb) == lower { a } else { b }
}

/// One backend page: at most this many entries...
const PAGE_ENTRIES: usize = 1024;
/// ...or about this many bytes of keys and values.
const PAGE_BYTES: usize = 1024 * 1024;

/// The most a listing may hold in memory (see
/// [`StoreOptions`](crate::StoreOptions)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerBound {
    pub(crate) entries: usize,
    pub(crate) bytes: usize,
}

/// The size of an entry, as the byte bound counts it.
fn cost(key: &str, value: &Bytes) -> usize {
    key.len() + value.len()
}

/// The entries of `range` in walk order: the backend's, with `overlay`
/// (the object's own not-yet-durable writes, `None` a deletion, in walk
/// order) laid over them, and none of the backend's when `hide_backend`
/// (a `delete_all` in the overlay). At most `want` entries; an answer that
/// would cross `bound` is refused with [`StorageError::ListTooLarge`] as
/// soon as it does, so memory stays bounded by `bound` plus one page.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn merged(
    backend: &Arc<dyn Backend>,
    object: ObjectId,
    range: KeyRange,
    reverse: bool,
    overlay: Vec<(String, Option<Bytes>)>,
    hide_backend: bool,
    want: usize,
    bound: AnswerBound,
) -> Result<Vec<(String, Bytes)>, StorageError> {
    let mut out: Vec<(String, Bytes)> = Vec::new();
    let mut bytes = 0usize;
    let mut overlay = overlay.into_iter().peekable();
    let mut pages = Pages {
        backend: backend.clone(),
        object,
        next: Some(range).filter(|_| !hide_backend),
        reverse,
        buffered: VecDeque::new(),
    };
    while out.len() < want {
        let base_next = pages.peek().await?;
        let from_overlay = match (base_next, overlay.peek()) {
            (None, None) => break,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(base), Some((key, _))) => {
                if reverse {
                    key.as_str() >= base
                } else {
                    key.as_str() <= base
                }
            }
        };
        let entry = if from_overlay {
            let Some((key, value)) = overlay.next() else {
                break;
            };
            // The overlay's write replaces (or deletes) the backend's.
            if pages.peek().await? == Some(key.as_str()) {
                pages.pop();
            }
            match value {
                Some(value) => (key, value),
                None => continue,
            }
        } else {
            match pages.pop() {
                Some(entry) => entry,
                None => break,
            }
        };
        bytes += cost(&entry.0, &entry.1);
        out.push(entry);
        if out.len() > bound.entries || bytes > bound.bytes {
            return Err(StorageError::ListTooLarge {
                max_entries: bound.entries,
                max_bytes: bound.bytes,
            });
        }
    }
    Ok(out)
}

/// The backend's entries of a range, one bounded page at a time, each read
/// on a blocking thread.
struct Pages {
    backend: Arc<dyn Backend>,
    object: ObjectId,
    /// The part of the range not read yet; `None` once it is exhausted.
    next: Option<KeyRange>,
    reverse: bool,
    buffered: VecDeque<(String, Bytes)>,
}

impl Pages {
    /// The key of the next entry, reading a page if none is buffered.
    async fn peek(&mut self) -> Result<Option<&str>, StorageError> {
        if self.buffered.is_empty() {
            self.fill().await?;
        }
        Ok(self.buffered.front().map(|(k, _)| k.as_str()))
    }

    fn pop(&mut self) -> Option<(String, Bytes)> {
        self.buffered.pop_front()
    }

    async fn fill(&mut self) -> Result<(), StorageError> {
        let Some(range) = self.next.take() else {
            return Ok(());
        };
        let (backend, object, reverse) = (self.backend.clone(), self.object, self.reverse);
        let limit = ScanLimit {
            entries: PAGE_ENTRIES,
            bytes: PAGE_BYTES,
        };
        let scan_range = range.clone();
        let page =
            tokio::task::spawn_blocking(move || backend.scan(&object, &scan_range, reverse, limit))
                .await
                .map_err(|e| StorageError::backend("scanning keys", e))??;
        let page_bytes: usize = page.iter().map(|(k, v)| cost(k, v)).sum();
        let more = page.len() >= PAGE_ENTRIES || page_bytes >= PAGE_BYTES;
        if more && let Some((last, _)) = page.last() {
            let after = Bound::Excluded(last.clone());
            self.next = Some(if reverse {
                KeyRange {
                    lower: range.lower,
                    upper: after,
                }
            } else {
                KeyRange {
                    lower: after,
                    upper: range.upper,
                }
            });
        }
        self.buffered.extend(page);
        Ok(())
    }
}
