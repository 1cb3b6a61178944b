//! The worker's record of a shard's sockets (the [`SocketBook`]): per
//! object, the sockets it accepted with their tags, attachments and accept
//! order, its auto-response pair, and the hand-overs from front doors
//! coming in parts. It outlives the objects' activations.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use odo_core::ObjectId;
use odo_core::socket::SocketRecord;

use super::lock;

/// A socket: the front door holding it and its number there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SocketKey {
    pub(crate) door: Arc<str>,
    pub(crate) id: u64,
}

/// What the worker keeps of one accepted socket.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Accept order, for listings.
    seq: u64,
    pub(super) tags: Arc<[String]>,
    pub(super) attachment: Option<Bytes>,
    pub(super) auto_response_ms: Option<u64>,
}

/// One object's sockets.
#[derive(Debug, Default)]
pub(super) struct ObjectSockets {
    pub(super) entries: HashMap<SocketKey, Entry>,
    pub(super) order: BTreeMap<u64, SocketKey>,
    next_seq: u64,
    pub(super) auto_response: Option<(String, String)>,
    /// The leading parts of a message that came in several frames.
    partial: Option<(SocketKey, BytesMut)>,
    /// Hand-overs coming in parts (one per front door): the records so
    /// far, taken at the last part.
    handing: Vec<Handing>,
}

/// A hand-over from one front door, while its parts come.
#[derive(Debug)]
struct Handing {
    door: Arc<str>,
    records: Vec<SocketRecord>,
    /// The accept order when its first part came: sockets accepted since
    /// (through `fetch`, while the parts came) are not in the door's
    /// records yet, and stay.
    from_seq: u64,
}

/// Why a part of a hand-over was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncRefused {
    /// A later part whose first never came here (the object moved between
    /// them): the door starts again.
    NoFirstPart,
    /// More records than an object may have sockets.
    TooMany,
}

impl ObjectSockets {
    pub(super) fn insert(
        &mut self,
        key: SocketKey,
        tags: Arc<[String]>,
        attachment: Option<Bytes>,
    ) {
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.seq);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, key.clone());
        self.entries.insert(
            key,
            Entry {
                seq,
                tags,
                attachment,
                auto_response_ms: None,
            },
        );
    }

    pub(super) fn remove(&mut self, key: &SocketKey) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.seq);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.auto_response.is_none()
            && self.partial.is_none()
            && self.handing.is_empty()
    }
}

/// The sockets of every object of one shard, as the worker knows them.
/// It outlives the objects' activations (hibernation); it goes with the
/// shard, and the front doors hand it to the shard's next holder.
#[derive(Debug, Default)]
pub(crate) struct SocketBook {
    pub(super) objects: Mutex<HashMap<ObjectId, ObjectSockets>>,
    doors: Mutex<Vec<Arc<str>>>,
    /// Hand-overs coming in parts, over every object: while there is
    /// none, [`SocketBook::end_handing`] takes no lock.
    handing: std::sync::atomic::AtomicUsize,
}

impl SocketBook {
    /// One shared string per front door.
    pub(crate) fn door(&self, endpoint: &str) -> Arc<str> {
        let mut doors = lock(&self.doors);
        if let Some(door) = doors.iter().find(|d| &***d == endpoint) {
            return door.clone();
        }
        let door: Arc<str> = Arc::from(endpoint);
        doors.push(door.clone());
        door
    }

    fn with<R>(&self, object: &ObjectId, f: impl FnOnce(&mut ObjectSockets) -> R) -> R {
        let mut objects = lock(&self.objects);
        let sockets = objects.entry(*object).or_default();
        let result = f(sockets);
        if sockets.is_empty() {
            objects.remove(object);
        }
        result
    }

    /// Notes when the front door last answered `key`'s auto-response.
    pub(crate) fn set_auto_response_ms(&self, object: &ObjectId, key: &SocketKey, at: u64) {
        self.with(object, |s| {
            if let Some(entry) = s.entries.get_mut(key) {
                entry.auto_response_ms = Some(at);
            }
        });
    }

    /// Whether the worker knows socket `key` of `object` (it was accepted
    /// here, or a front door handed it over).
    pub(crate) fn knows(&self, object: &ObjectId, key: &SocketKey) -> bool {
        lock(&self.objects)
            .get(object)
            .is_some_and(|s| s.entries.contains_key(key))
    }

    /// The sockets front door `door` holds, of every object of the shard.
    pub(crate) fn at_door(&self, door: &str) -> Vec<(ObjectId, u64)> {
        let mut out: Vec<(ObjectId, u64)> = lock(&self.objects)
            .iter()
            .flat_map(|(id, s)| {
                s.entries
                    .keys()
                    .filter(|k| &*k.door == door)
                    .map(move |k| (*id, k.id))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// An event of `door` for `object` that is not part of a hand-over:
    /// a hand-over from that door still coming in parts was given up (the
    /// door sends its parts before the event they precede), so its parts
    /// are let go.
    pub(crate) fn end_handing(&self, object: &ObjectId, door: &Arc<str>) {
        use std::sync::atomic::Ordering;
        if self.handing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut objects = lock(&self.objects);
        if let Some(s) = objects.get_mut(object)
            && !s.handing.is_empty()
        {
            let before = s.handing.len();
            s.handing.retain(|h| h.door != *door);
            self.handing
                .fetch_sub(before - s.handing.len(), Ordering::Relaxed);
            if s.is_empty() {
                objects.remove(object);
            }
        }
    }

    /// Forgets a socket (it closed).
    pub(crate) fn remove(&self, object: &ObjectId, key: &SocketKey) {
        self.with(object, |s| s.remove(key));
    }

    /// Replaces what is known of the sockets `door` holds for `object`,
    /// with `records` and those of the earlier parts of the same hand-over
    /// (`continued`); with `more`, only keeps them until the last part.
    /// Sockets accepted here since the first part came stay. Fails for a
    /// later part whose first never came, and past `max_records`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sync(
        &self,
        object: &ObjectId,
        door: &Arc<str>,
        mut records: Vec<SocketRecord>,
        auto_response: Option<(String, String)>,
        more: bool,
        continued: bool,
        max_records: usize,
    ) -> Result<(), SyncRefused> {
        self.with(object, |s| {
            let earlier = s
                .handing
                .iter()
                .position(|h| h.door == *door)
                .map(|at| s.handing.swap_remove(at));
            if earlier.is_some() {
                self.handing
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let from_seq = match (continued, earlier) {
                (false, _) => s.next_seq,
                (true, None) => return Err(SyncRefused::NoFirstPart),
                (true, Some(mut earlier)) => {
                    earlier.records.append(&mut records);
                    records = earlier.records;
                    earlier.from_seq
                }
            };
            if records.len() > max_records {
                return Err(SyncRefused::TooMany);
            }
            if more {
                self.handing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                s.handing.push(Handing {
                    door: door.clone(),
                    records,
                    from_seq,
                });
                return Ok(());
            }
            let stale: Vec<SocketKey> = s
                .entries
                .iter()
                .filter(|(k, e)| k.door == *door && e.seq < from_seq)
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                s.remove(&key);
            }
            for record in records {
                let key = SocketKey {
                    door: door.clone(),
                    id: record.socket,
                };
                s.insert(
                    key.clone(),
                    record.tags.into(),
                    record.attachment.map(Bytes::from),
                );
                if let Some(entry) = s.entries.get_mut(&key) {
                    entry.auto_response_ms = record.auto_response_ms;
                }
            }
            if auto_response.is_some() {
                s.auto_response = auto_response;
            }
            Ok(())
        })
    }

    /// Adds a leading part of a message; `false` when the message would
    /// exceed `max` bytes (the parts are dropped).
    pub(crate) fn add_part(
        &self,
        object: &ObjectId,
        key: &SocketKey,
        first: bool,
        part: &[u8],
        max: usize,
    ) -> bool {
        self.with(object, |s| {
            let buffer = match &mut s.partial {
                Some((k, buffer)) if k == key && !first => buffer,
                _ => &mut s.partial.insert((key.clone(), BytesMut::new())).1,
            };
            if buffer.len() + part.len() > max {
                s.partial = None;
                return false;
            }
            buffer.extend_from_slice(part);
            true
        })
    }

    /// The whole message whose last part is `last`.
    pub(crate) fn complete(&self, object: &ObjectId, key: &SocketKey, last: Bytes) -> Bytes {
        self.with(object, |s| match s.partial.take() {
            Some((k, mut buffer)) if k == *key => {
                buffer.extend_from_slice(&last);
                buffer.freeze()
            }
            other => {
                s.partial = other;
                last
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(socket: u64) -> SocketRecord {
        SocketRecord {
            socket,
            tags: vec![format!("t{socket}")],
            attachment: Some(vec![socket as u8]),
            auto_response_ms: None,
        }
    }

    fn known(book: &SocketBook, object: &ObjectId, door: &Arc<str>) -> Vec<u64> {
        let mut ids: Vec<u64> = book
            .at_door(door)
            .into_iter()
            .filter(|(o, _)| o == object)
            .map(|(_, id)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A hand-over in parts replaces the door's records only at its last
    /// part, with every part's records, keeping sockets accepted here
    /// since it began; another door's hand-over between them does not mix
    /// in; a later part without a first is refused, and so are more
    /// records than an object may have sockets.
    #[test]
    fn a_hand_over_in_parts_is_taken_whole_at_its_last_part() {
        let book = SocketBook::default();
        let object = odo_core::Namespace::new("ROOM").id_from_name("r");
        let (a, b) = (book.door("a"), book.door("b"));
        book.sync(&object, &a, vec![record(1)], None, false, false, 100)
            .unwrap();
        book.sync(
            &object,
            &a,
            vec![record(2), record(3)],
            None,
            true,
            false,
            100,
        )
        .unwrap();
        book.sync(&object, &b, vec![record(9)], None, false, false, 100)
            .unwrap();
        book.sync(&object, &a, vec![record(4)], None, true, true, 100)
            .unwrap();
        assert_eq!(
            known(&book, &object, &a),
            vec![1],
            "nothing taken before the last part"
        );
        // Accepted here while the parts came: not in the door's records,
        // and kept.
        book.with(&object, |s| {
            let key = SocketKey {
                door: a.clone(),
                id: 7,
            };
            s.insert(key, Arc::from(Vec::<String>::new()), None);
        });
        let pair = Some(("ping".to_owned(), "pong".to_owned()));
        book.sync(&object, &a, vec![record(5)], pair, false, true, 100)
            .unwrap();
        assert_eq!(known(&book, &object, &a), vec![2, 3, 4, 5, 7]);
        assert_eq!(known(&book, &object, &b), vec![9]);
        assert_eq!(
            book.sync(&object, &a, vec![record(6)], None, false, true, 100),
            Err(SyncRefused::NoFirstPart)
        );
        // A hand-over the door gave up (its next event came): its parts go.
        book.sync(&object, &a, vec![record(8)], None, true, false, 100)
            .unwrap();
        book.end_handing(&object, &a);
        assert_eq!(
            book.sync(&object, &a, vec![record(9)], None, false, true, 100),
            Err(SyncRefused::NoFirstPart)
        );
        let many: Vec<SocketRecord> = (10..20).map(record).collect();
        assert_eq!(
            book.sync(&object, &a, many, None, false, false, 9),
            Err(SyncRefused::TooMany)
        );
        assert_eq!(known(&book, &object, &a), vec![2, 3, 4, 5, 7]);
    }
}
