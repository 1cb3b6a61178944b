//! Messages a worker sends in parts: one larger than a push travels as a
//! first `Send` with `more`, then `Send`s with `continued` (and `more` on
//! all but the last). The door puts the parts together, in one buffer per
//! message, and learns when a message was cut off (its worker died between
//! two parts, or their connection broke): the rest never comes, and the
//! worker's next message to the same sockets starts afresh. Such a
//! message's sockets missed it, so the door closes them (1012) rather than
//! let a gap pass unseen, and it never glues a lost part to the next
//! message. A cut is seen when the next message to the same sockets
//! starts, when a part comes whose start never came (or that continues
//! another list of sockets, or another message: every part names its
//! message, so parts of two senders are never joined), and, failing
//! these, when the rest has not come for a while ([`Parts::cut_stale`],
//! from the door's idle sweep).
//!
//! I/O-free: [`Parts`] only says what to send and which sockets to close.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

/// The messages being put together, by their first socket (a worker sends
/// a message's parts one after the other, so one message per first socket
/// is in flight at a time).
#[derive(Debug, Default)]
pub(super) struct Parts {
    by_first: HashMap<u64, Partial>,
}

#[derive(Debug)]
struct Partial {
    /// Its name from its sender ([`Flow::message`]).
    message: u64,
    binary: bool,
    sockets: Vec<u64>,
    bytes: BytesMut,
    /// When its last part came, on the door's clock.
    touched_ms: u64,
}

/// Where a `Send`'s payload stands in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flow {
    /// The message continues in a later `Send`.
    pub(super) more: bool,
    /// The payload continues an earlier `Send`.
    pub(super) continued: bool,
    /// The message's name from its sender: a continuation joins only the
    /// message of the same name.
    pub(super) message: u64,
}

/// What one `Send` came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Added {
    /// A whole message to send to the `Send`'s sockets: binary, its bytes.
    pub(super) whole: Option<(bool, Bytes)>,
    /// Sockets that missed a message (cut off, or whose start never came):
    /// to be closed.
    pub(super) cut: Vec<u64>,
}

impl Parts {
    /// Adds the payload of one `Send` to `sockets` (not empty), at
    /// `now_ms` on the door's clock.
    pub(super) fn add(
        &mut self,
        sockets: &[u64],
        binary: bool,
        part: Bytes,
        flow: Flow,
        now_ms: u64,
    ) -> Added {
        let Flow {
            more,
            continued,
            message,
        } = flow;
        let Some(&first) = sockets.first() else {
            return Added::default();
        };
        if !continued {
            // A message starts: one still being put together for these
            // sockets was cut off.
            let cut = self
                .by_first
                .remove(&first)
                .map(|stale| stale.sockets)
                .unwrap_or_default();
            if !more {
                return Added {
                    whole: Some((binary, part)),
                    cut,
                };
            }
            let mut bytes = BytesMut::with_capacity(part.len() * 2);
            bytes.extend_from_slice(&part);
            self.by_first.insert(
                first,
                Partial {
                    message,
                    binary,
                    sockets: sockets.to_vec(),
                    bytes,
                    touched_ms: now_ms,
                },
            );
            return Added { whole: None, cut };
        }
        let Some(partial) = self
            .by_first
            .get_mut(&first)
            .filter(|p| p.sockets == sockets && p.message == message)
        else {
            // The rest of a message whose start this door never got (or
            // that of another message than the one being put together for
            // these sockets, from another sender, say: that one stays).
            return Added {
                whole: None,
                cut: sockets.to_vec(),
            };
        };
        // Appended in place: each part is copied once.
        partial.bytes.extend_from_slice(&part);
        partial.touched_ms = now_ms;
        if more {
            return Added::default();
        }
        let done = self
            .by_first
            .remove(&first)
            .map(|p| (p.binary, p.bytes.freeze()));
        Added {
            whole: done,
            cut: Vec::new(),
        }
    }

    /// Drops the messages whose last part came `stale_ms` or more before
    /// `now_ms`: their rest will not come. Returns their sockets, which
    /// missed them.
    pub(super) fn cut_stale(&mut self, now_ms: u64, stale_ms: u64) -> Vec<u64> {
        let mut cut = Vec::new();
        self.by_first.retain(|_, partial| {
            let live = now_ms.saturating_sub(partial.touched_ms) < stale_ms;
            if !live {
                cut.append(&mut partial.sockets);
            }
            live
        });
        cut
    }

    /// `socket` is gone: a message it started is dropped if none of its
    /// sockets is open any more (`open` says which are).
    pub(super) fn socket_gone(&mut self, socket: u64, open: impl Fn(u64) -> bool) {
        if let Some(partial) = self.by_first.get(&socket)
            && !partial.sockets.iter().any(|&s| s != socket && open(s))
        {
            self.by_first.remove(&socket);
        }
    }

    /// Messages being put together.
    pub(super) fn len(&self) -> usize {
        self.by_first.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(binary: bool, text: &str) -> Option<(bool, Bytes)> {
        Some((binary, Bytes::from(text.to_owned())))
    }

    impl Parts {
        /// `add` for a message of one sender (named 1).
        fn add_one(
            &mut self,
            sockets: &[u64],
            binary: bool,
            part: Bytes,
            more: bool,
            continued: bool,
            now_ms: u64,
        ) -> Added {
            let flow = Flow {
                more,
                continued,
                message: 1,
            };
            self.add(sockets, binary, part, flow, now_ms)
        }
    }

    /// Two senders' messages in parts to the same sockets (a host that
    /// lost the object pushing late beside its new owner): a part is
    /// joined only to its own message; one of another message is dropped
    /// and its sockets named.
    #[test]
    fn parts_of_two_senders_are_never_joined() {
        let mut parts = Parts::default();
        let flow = |more, continued, message| Flow {
            more,
            continued,
            message,
        };
        let bytes = |b: &'static [u8]| Bytes::from_static(b);
        // The new owner starts a message; the old one's late rest comes.
        parts.add(&[1, 2], false, bytes(b"new-"), flow(true, false, 20), 0);
        let added = parts.add(&[1, 2], false, bytes(b"old-tail"), flow(false, true, 10), 0);
        assert_eq!((added.whole, added.cut), (None, vec![1, 2]));
        // The new owner's message is still whole at its end.
        let added = parts.add(&[1, 2], false, bytes(b"end"), flow(false, true, 20), 0);
        assert_eq!(added.whole, whole(false, "new-end"));
        assert_eq!(parts.len(), 0);
    }

    #[test]
    fn a_whole_message_passes_and_parts_are_joined() {
        let mut parts = Parts::default();
        let added = parts.add_one(&[1, 2], false, Bytes::from_static(b"hi"), false, false, 0);
        assert_eq!(added.whole, whole(false, "hi"));
        assert!(added.cut.is_empty());
        assert_eq!(
            parts.add_one(&[1, 2], true, Bytes::from_static(b"a"), true, false, 0),
            Added::default()
        );
        assert_eq!(
            parts.add_one(&[1, 2], true, Bytes::from_static(b"b"), true, true, 0),
            Added::default()
        );
        let added = parts.add_one(&[1, 2], true, Bytes::from_static(b"c"), false, true, 0);
        assert_eq!(added.whole, whole(true, "abc"));
        assert_eq!(parts.len(), 0);
    }

    #[test]
    fn a_cut_off_message_is_dropped_and_its_sockets_named() {
        let mut parts = Parts::default();
        parts.add_one(&[1, 2], false, Bytes::from_static(b"lost"), true, false, 0);
        let added = parts.add_one(&[1], false, Bytes::from_static(b"next"), false, false, 0);
        assert_eq!(added.whole, whole(false, "next"));
        assert_eq!(added.cut, vec![1, 2]);
        let added = parts.add_one(&[3], false, Bytes::from_static(b"tail"), false, true, 0);
        assert_eq!(added.whole, None);
        assert_eq!(added.cut, vec![3]);
        parts.add_one(&[4, 5], false, Bytes::from_static(b"x"), true, false, 0);
        // The rest of a message to other sockets than the one being put
        // together for 4: dropped, and that one stays.
        let added = parts.add_one(&[4], false, Bytes::from_static(b"y"), false, true, 0);
        assert_eq!((added.whole, added.cut), (None, vec![4]));
        assert_eq!(parts.len(), 1);
        parts.add_one(&[4, 5], false, Bytes::from_static(b"z"), true, true, 10);
        assert_eq!(parts.cut_stale(50, 50), Vec::<u64>::new());
        assert_eq!(parts.cut_stale(60, 50), vec![4, 5]);
        assert_eq!(parts.len(), 0);
    }

    #[test]
    fn a_message_outlives_its_first_socket_while_another_is_open() {
        let mut parts = Parts::default();
        parts.add_one(&[1, 2], false, Bytes::from_static(b"a"), true, false, 0);
        parts.socket_gone(1, |s| s == 2);
        let added = parts.add_one(&[1, 2], false, Bytes::from_static(b"b"), false, true, 0);
        assert_eq!(added.whole, whole(false, "ab"));
        parts.add_one(&[1, 2], false, Bytes::from_static(b"a"), true, false, 0);
        parts.socket_gone(1, |_| false);
        assert_eq!(parts.len(), 0);
    }

    /// The `Send`s a worker makes of a message cut into at most `n` parts
    /// (payload, `more`, `continued`), of which the first `sent` reached
    /// the door.
    fn sends(text: &[u8], n: usize, sent: usize) -> Vec<(Bytes, bool, bool)> {
        let size = text.len().div_ceil(n).max(1);
        let chunks: Vec<&[u8]> = text.chunks(size).collect();
        let count = chunks.len().max(1);
        let chunks = if chunks.is_empty() {
            vec![text]
        } else {
            chunks
        };
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| (Bytes::copy_from_slice(c), i + 1 < count, i > 0))
            .take(sent)
            .collect()
    }

    proptest! {
        /// Against a model: of messages sent in parts, some cut off after
        /// any number of their parts, exactly the complete ones arrive,
        /// whole and in order, and each cut one names its sockets once
        /// the next message starts.
        #[test]
        fn only_complete_messages_arrive_and_cut_ones_are_named(
            messages in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), 1usize..5, 0usize..6),
                1..20,
            )
        ) {
            let mut parts = Parts::default();
            let mut arrived = Vec::new();
            let mut expected = Vec::new();
            let mut cuts = 0;
            let mut expected_cuts = 0;
            let mut pending_cut = false;
            for (text, n, sent) in &messages {
                let all = sends(text, *n, usize::MAX);
                let sent = (*sent).min(all.len());
                for (part, more, continued) in all.into_iter().take(sent) {
                    let added = parts.add_one(&[7], true, part, more, continued, 0);
                    if !added.cut.is_empty() {
                        cuts += 1;
                    }
                    if let Some((_, bytes)) = added.whole {
                        arrived.push(bytes.to_vec());
                    }
                }
                if sent > 0 && pending_cut {
                    expected_cuts += 1;
                }
                let complete = sent == sends(text, *n, usize::MAX).len();
                if complete {
                    expected.push(text.clone());
                }
                if sent > 0 {
                    pending_cut = !complete;
                }
            }
            prop_assert_eq!(arrived, expected);
            prop_assert_eq!(cuts, expected_cuts);
        }
    }
}
