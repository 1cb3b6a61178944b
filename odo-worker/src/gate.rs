//! The output gate of a live object ([`Gate`]): its replies, held until
//! the writes before them are durable, and the way its handlers are run
//! while the gate goes on releasing ([`drive`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use futures_util::FutureExt;
use odo_core::WireError;
use odo_storage::CommitWait;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until};

use crate::mailbox::Outcome;
use crate::socket::{DoorOutput, WebSocketDoors};

pub(crate) type Reply = oneshot::Sender<Result<Outcome, WireError>>;

/// A reply held in the [`Gate`]: its commit, and the WebSocket outputs of
/// its turn, which leave before it.
struct Held {
    durable: Option<CommitWait>,
    reply: Reply,
    result: Result<Outcome, WireError>,
    outputs: Vec<DoorOutput>,
}

/// Replies waiting for durability, in the order their turns ran.
///
/// Each reply waits for its own turn's [`CommitWait`], which covers every
/// earlier write of the object made through the same storage view. A reply
/// whose commit failed is answered `ObjectReset` instead; the turns that ran
/// on its state fail with it, because their commits are refused once an
/// earlier commit of their view failed.
pub(crate) struct Gate {
    held: VecDeque<Held>,
    doors: Option<Arc<dyn WebSocketDoors>>,
}

impl Gate {
    /// An empty gate, whose replies' WebSocket outputs go to `doors`.
    pub(crate) fn new(doors: Option<Arc<dyn WebSocketDoors>>) -> Self {
        Self {
            held: VecDeque::new(),
            doors,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Queues a reply behind `durable` (and behind every earlier reply).
    pub(crate) fn hold(
        &mut self,
        durable: Option<CommitWait>,
        reply: Reply,
        result: Result<Outcome, WireError>,
    ) {
        self.hold_with(durable, reply, result, Vec::new());
    }

    /// Queues a reply and its turn's WebSocket outputs behind `durable`
    /// (and behind every earlier reply): the outputs leave, in order, when
    /// it is durable, and the reply once the front doors took them.
    pub(crate) fn hold_with(
        &mut self,
        durable: Option<CommitWait>,
        reply: Reply,
        result: Result<Outcome, WireError>,
        outputs: Vec<DoorOutput>,
    ) {
        let held = Held {
            durable,
            reply,
            result,
            outputs,
        };
        if held.durable.is_none() && self.held.is_empty() {
            self.answer(held, Ok(()));
        } else {
            self.held.push_back(held);
        }
    }

    /// Sends a held reply whose commit ended with `durable`, after handing
    /// its outputs to the front doors (only if the commit succeeded).
    fn answer(&self, held: Held, durable: Result<(), odo_storage::StorageError>) {
        let Held {
            reply,
            result,
            outputs,
            ..
        } = held;
        let result = match durable {
            Ok(()) => result,
            Err(reason) => {
                let _ = reply.send(Err(WireError::OutcomeUnknown {
                    reason: format!("a commit this answer waited for failed: {reason}"),
                }));
                return;
            }
        };
        if outputs.is_empty() {
            let _ = reply.send(result);
            return;
        }
        let Some(doors) = &self.doors else {
            let _ = reply.send(Err(WireError::Internal {
                message: "WebSocket outputs but no front door to take them".into(),
            }));
            return;
        };
        let taken: Vec<_> = outputs
            .into_iter()
            .map(|o| doors.submit(&o.door, o.output, o.body))
            .collect();
        tokio::spawn(async move {
            let all = futures_util::future::join_all(taken).await;
            let result = if all.into_iter().all(|ok| ok) {
                result
            } else {
                Err(WireError::OutcomeUnknown {
                    reason: "a front door did not take the turn's WebSocket outputs".into(),
                })
            };
            let _ = reply.send(result);
        });
    }

    /// Waits for the oldest held commit, then releases every reply whose
    /// commit has completed, in order.
    pub(crate) async fn release(&mut self) {
        let first = match self.held.front() {
            Some(Held {
                durable: Some(durable),
                ..
            }) => durable.clone().wait().await,
            _ => Ok(()),
        };
        self.answer_front(first);
        // Release what is already done without another trip through the
        // event loop.
        while let Some(Held { durable, .. }) = self.held.front() {
            let done = match durable {
                None => Ok(()),
                Some(d) => match d.clone().wait().now_or_never() {
                    Some(done) => done,
                    None => return,
                },
            };
            self.answer_front(done);
        }
    }

    fn answer_front(&mut self, durable: Result<(), odo_storage::StorageError>) {
        let Some(held) = self.held.pop_front() else {
            return;
        };
        self.answer(held, durable);
    }
}

/// Runs `fut` while releasing the gate, so replies leave as soon as their
/// commits are durable even while a long turn runs.
///
/// Every poll of the object's code is watched ([`crate::stall`]), so a
/// poll that never returns shows in the worker's heartbeats.
///
/// `cut`: when the turn is given up. `None` if `fut` is still pending
/// then: it is dropped (a handler that waits forever must not hold its
/// object for good). Its timer starts only if the first poll of `fut`
/// does not finish it.
pub(crate) async fn drive<F: Future>(
    fut: F,
    gate: &mut Gate,
    cut: Option<Instant>,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut fut = std::future::poll_fn(move |cx| crate::stall::poll_watched(fut.as_mut(), cx));
    let timer = sleep_until(cut.unwrap_or_else(Instant::now));
    let mut timer = pin!(timer);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = gate.release(), if !gate.is_empty() => {}
            () = &mut timer, if cut.is_some() => return None,
        }
    }
}
