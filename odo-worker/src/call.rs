//! What a call between objects carries and how it fails: the caller's
//! scope (deadline and call chain), the [`Cluster`] that delivers calls,
//! and [`CallError`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use odo_core::{ObjectAddress, ObjectId, WireError};
use odo_transport::forward::ForwardError;
use tokio::time::Instant;

use crate::types::{Request, Response};

/// Why a call to an object failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The call was not answered: the object's side answered with an
    /// error, it could not be reached, or its outcome is unknown
    /// ([`ForwardError::outcome`] says which, and whether a retry is safe).
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The arguments or result did not encode or decode.
    #[error("rpc encoding: {0}")]
    Encoding(String),
    /// A stub minted inside an object was called directly, bypassing the
    /// output gate.
    #[error(
        "inside an object, call other objects through ctx.fetch / ctx.call so the output gate holds"
    )]
    Ungated,
}

impl From<WireError> for CallError {
    fn from(error: WireError) -> Self {
        CallError::Forward(ForwardError::Object(error))
    }
}

/// The deadline of calls that start outside any caller's deadline (calls
/// from a program holding the runtime, or made by an alarm handler).
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(30);

/// The most objects a chain of calls may hold, each waiting on the next
/// (16, as Cloudflare's subrequest depth): a call that would make it
/// longer is refused at once with [`WireError::CallTooDeep`]. Every hop
/// carries the whole chain, and every object of it waits, so an unbounded
/// chain cost memory quadratic in its length (one request of 3,000 hops
/// took 350 MB in each worker).
pub const MAX_CALL_DEPTH: usize = 16;

/// What a call inherits from the event that makes it: the time left and
/// the objects waiting on it.
///
/// Every event an object handles runs within one: the caller's remaining
/// deadline (never a fresh default per hop) and the call chain. A call to
/// an object already in the chain would wait on itself, and is refused at
/// once with [`WireError::CallCycle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallScope {
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// The objects whose turns wait on this call, outermost first.
    pub chain: Arc<[ObjectId]>,
}

impl CallScope {
    /// A scope outside any object, ending `timeout` from now.
    pub fn outside(timeout: Duration) -> Self {
        Self::outside_until(Instant::now() + timeout.min(odo_transport::MAX_DEADLINE))
    }

    /// A scope outside any object (a request from the front door), ending
    /// at `deadline`.
    pub fn outside_until(deadline: Instant) -> Self {
        Self {
            deadline,
            chain: Arc::from([]),
        }
    }

    /// The scope of calls made by `id` while it handles an event of this
    /// scope: same deadline, `id` added to the chain.
    pub fn entered(&self, id: ObjectId) -> Self {
        let mut chain = Vec::with_capacity(self.chain.len() + 1);
        chain.extend_from_slice(&self.chain);
        chain.push(id);
        Self {
            deadline: self.deadline,
            chain: chain.into(),
        }
    }

    /// Whether a call from this scope to `target` would wait on itself
    /// (the error then names the cycle), or make the chain longer than
    /// [`MAX_CALL_DEPTH`].
    pub fn check_cycle(&self, target: &ObjectId) -> Result<(), WireError> {
        // Checked first: a chain longer than the bound can only be forged
        // (by a peer), and is refused without being echoed back (400,000
        // ids came back as a 12.8 MB cycle error).
        if self.chain.len() >= MAX_CALL_DEPTH {
            return Err(WireError::CallTooDeep {
                depth: u32::try_from(self.chain.len() + 1).unwrap_or(u32::MAX),
                max: MAX_CALL_DEPTH as u32,
            });
        }
        if self.chain.contains(target) {
            let mut chain = self.chain.to_vec();
            chain.push(*target);
            return Err(WireError::CallCycle { chain });
        }
        Ok(())
    }
}

/// Where an object's turn notes the calls it waits on: the object table,
/// which refuses a call that would queue behind the very turn waiting on it
/// (two requests whose calls cross).
pub(crate) trait Waits: Send + Sync + std::fmt::Debug {
    /// The running turn of object `id` waits on `target` from now.
    fn begin(&self, id: ObjectId, target: ObjectId);
    /// It no longer does.
    fn end(&self, target: ObjectId);
}

/// A call the running turn of an object waits on, noted until it drops.
#[derive(Debug)]
pub(crate) struct WaitGuard {
    waits: Arc<dyn Waits>,
    target: ObjectId,
}

impl WaitGuard {
    pub(crate) fn new(waits: &Arc<dyn Waits>, id: ObjectId, target: ObjectId) -> Self {
        waits.begin(id, target);
        Self {
            waits: waits.clone(),
            target,
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.waits.end(self.target);
    }
}

/// Delivers calls to objects. The runtime implements it for objects it
/// hosts; a worker process implements it by forwarding to the owning worker.
pub trait Cluster: Send + Sync + 'static {
    /// Sends an HTTP request to an object, within `scope`.
    fn fetch(
        &self,
        target: ObjectAddress,
        request: Request,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Response, CallError>>;

    /// Calls an RPC method of an object with encoded arguments, within
    /// `scope`; returns the encoded result.
    fn call(
        &self,
        target: ObjectAddress,
        method: String,
        args: Bytes,
        scope: CallScope,
    ) -> BoxFuture<'static, Result<Bytes, CallError>>;
}

#[cfg(test)]
mod tests {
    use odo_core::Namespace;

    use super::*;

    fn ids(n: usize) -> Vec<ObjectId> {
        let namespace = Namespace::new("PROBE");
        (0..n)
            .map(|i| namespace.id_from_name(&i.to_string()))
            .collect()
    }

    fn scope(chain: &[ObjectId]) -> CallScope {
        CallScope {
            deadline: Instant::now() + Duration::from_secs(1),
            chain: Arc::from(chain),
        }
    }

    #[test]
    fn a_cycle_within_the_bound_names_its_chain() {
        let chain = ids(3);
        match scope(&chain).check_cycle(&chain[1]) {
            Err(WireError::CallCycle { chain: named }) => assert_eq!(named.len(), 4),
            other => panic!("{other:?}"),
        }
    }

    /// Only a peer can send a chain longer than the bound: refused as too
    /// deep, not echoed back whole in a cycle error.
    #[test]
    fn a_forged_chain_past_the_bound_is_too_deep_even_with_a_cycle() {
        let chain = ids(MAX_CALL_DEPTH * 100);
        assert!(matches!(
            scope(&chain).check_cycle(&chain[5]),
            Err(WireError::CallTooDeep { .. })
        ));
    }
}
