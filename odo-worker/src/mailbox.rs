//! One object's queue of events, and what an event comes to.

use std::collections::VecDeque;

use bytes::Bytes;
use odo_core::WireError;
use tokio::sync::oneshot;

use crate::call::CallScope;
use crate::rpc::RpcCall;
use crate::socket::{SocketKey, WebSocketMessage};
use crate::types::{AlarmInfo, Request, Response};

/// An event for one object, with where to send its outcome.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) kind: EventKind,
    pub(crate) reply: oneshot::Sender<Result<Outcome, WireError>>,
    /// The caller's deadline and chain, inherited by the calls the handler
    /// makes.
    pub(crate) scope: CallScope,
}

#[derive(Debug)]
pub(crate) enum EventKind {
    Fetch(Request),
    Call(RpcCall),
    Alarm(AlarmInfo),
    /// Deletes the alarm if it is still set for this time (after its last
    /// retry failed).
    ClearAlarm(u64),
    /// An event of one of the object's WebSockets.
    Socket(SocketKey, SocketIn),
}

impl EventKind {
    /// Whether a caller waits for this event's answer until its deadline
    /// (requests, calls, socket events), and stops waiting there; the
    /// alarm scheduler waits for an alarm until it ends.
    pub(crate) fn has_caller(&self) -> bool {
        matches!(self, Self::Fetch(_) | Self::Call(_) | Self::Socket(..))
    }
}

/// What happened on a socket, as the object's handlers take it.
#[derive(Debug)]
pub(crate) enum SocketIn {
    Message(WebSocketMessage),
    Close {
        code: u16,
        reason: String,
        was_clean: bool,
    },
    Error(String),
}

#[derive(Debug)]
pub(crate) enum Outcome {
    Fetch(Response),
    Call(Bytes),
    /// The alarm handler ran and succeeded.
    AlarmRan,
    /// The alarm was no longer set for that time: nothing ran.
    AlarmStale,
    Done,
}

/// One object's queue of events, bounded. Senders push while holding the
/// object table's lock; the actor pops. Unlike a channel it allocates
/// nothing while empty, so an idle object costs a few pointers.
#[derive(Debug)]
pub(crate) struct Mailbox {
    queue: std::sync::Mutex<VecDeque<Event>>,
    ready: tokio::sync::Notify,
    capacity: usize,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: std::sync::Mutex::new(VecDeque::new()),
            ready: tokio::sync::Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event`; `false` (and the event dropped) when the queue is
    /// full.
    pub(crate) fn push(&self, event: Event) -> bool {
        let mut queue = self.queue();
        if queue.len() >= self.capacity {
            return false;
        }
        queue.push_back(event);
        drop(queue);
        // Keeps a permit if the actor is not waiting yet.
        self.ready.notify_one();
        true
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Events that may still be queued before the queue is full.
    pub(crate) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queue().len())
    }

    /// Drops every queued event (their callers see the object stop).
    pub(crate) fn clear(&self) {
        drop(self.take_all());
    }

    /// Takes out the queued events `refuse` gives an error for, and
    /// answers each with it.
    pub(crate) fn refuse_where(&self, mut refuse: impl FnMut(&Event) -> Option<WireError>) {
        let mut refused = Vec::new();
        self.queue().retain_mut(|event| match refuse(event) {
            Some(error) => {
                refused.push((
                    std::mem::replace(&mut event.reply, oneshot::channel().0),
                    error,
                ));
                false
            }
            None => true,
        });
        for (reply, error) in refused {
            let _ = reply.send(Err(error));
        }
    }

    /// Takes every queued event, to answer them without running them.
    pub(crate) fn take_all(&self) -> VecDeque<Event> {
        std::mem::take(&mut *self.queue())
    }

    /// The next event. Cancel-safe: an event is taken only when returned.
    pub(crate) async fn recv(&self) -> Event {
        loop {
            {
                let mut queue = self.queue();
                if let Some(event) = queue.pop_front() {
                    if queue.is_empty() {
                        // Give the memory back between bursts.
                        queue.shrink_to_fit();
                    }
                    return event;
                }
            }
            self.ready.notified().await;
        }
    }
}
